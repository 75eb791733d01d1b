// Random-weight checkpoints at the real Wan2.1 shapes, for the benchmarks and the VAE memory
// test: every key and shape of a real checkpoint comes from shared/manifests/*.json (no
// download), the values from crypto.randomFillSync under per-tensor init rules.
//
// A checkpoint is written once (streamed chunk by chunk, fsync'd, then renamed into place) and
// reused while its size and header bytes match, so the header of a given setting must never
// change: the generator strings below are those of the files already written by the benches.
//
// Layers, bottom-up: fp8 codes; the safetensors layout; the writer and ensureCheckpoint (any
// tensor list, each tensor with its dtype and init rule); then the models (DiT, VAE, umT5).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const repoRoot = path.resolve(__dirname, '..', '..');

/** How a benchmark stores every tensor of a DiT (also the file-name suffix). */
export type Storage = 'f32' | 'bf16' | 'fp8';
/** A safetensors dtype that the synthesiser writes. */
export type Dtype = 'F32' | 'BF16' | 'F8_E4M3';
export const STORAGE_DTYPE: Record<Storage, Dtype> = { f32: 'F32', bf16: 'BF16', fp8: 'F8_E4M3' };
const BYTES: Record<Dtype, number> = { F32: 4, BF16: 2, F8_E4M3: 1 };

export interface TensorSpec { key: string; shape: number[] }

/**
 * The values of one tensor; every random one is drawn from crypto.randomFillSync in file order.
 *   uniform: U(-bound, bound) from one 32-bit word w per value, as float64 then rounded to f32.
 *     `form` picks the float expression, which decides the last bit of ~2.4e-4 of the values:
 *     'scale-shift' w * (2 bound / 2^32) - bound (the DiT and umT5 files), 'shift-scale'
 *     (w / 2^32 * 2 - 1) * bound (the VAE files).
 *   normal: N(0, std) by Box-Muller on pairs of words (a chunk of odd length ends in a 0).
 *   bf16-codes: BF16 only; one random 16-bit word per value with the exponent forced to
 *     120..123 (sign and mantissa random), so 2^-7 <= |x| < 2^-3, every value finite.
 *   scale: an F32 scalar after an F8_E4M3 weight: that weight's absmax / 448, the weight then
 *     being stored as the codes of weight / scale (ComfyUI's scaled fp8).
 *   empty: no values (a shape with a 0, such as the `scaled_fp8` marker).
 */
export type Init =
  | { kind: 'zero' }
  | { kind: 'one' }
  | { kind: 'uniform'; bound: number; form: 'scale-shift' | 'shift-scale' }
  | { kind: 'normal'; std: number }
  | { kind: 'bf16-codes' }
  | { kind: 'scale' }
  | { kind: 'empty' };

export interface TensorPlan extends TensorSpec { dtype: Dtype; init: Init }

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Every spec in one dtype, each with the init rule `initOf` gives it. */
export function withInit(specs: TensorSpec[], dtype: Dtype, initOf: (spec: TensorSpec) => Init): TensorPlan[] {
  return specs.map((s) => ({ key: s.key, shape: s.shape, dtype, init: initOf(s) }));
}

// Variance 1/fan_in, so that activations keep their scale through the layers.
const fanInBound = (shape: number[]) => Math.sqrt(3 / numel(shape.slice(1)));

// ---------------------------------------------------------------- where things live

/** The shared/manifests file `name` (WAN_SHARED_DIR, else ../shared beside the repository root). */
export function manifestPath(name: string): string {
  const rel = path.join('manifests', name);
  const candidates = [
    ...(process.env.WAN_SHARED_DIR ? [path.join(process.env.WAN_SHARED_DIR, rel)] : []),
    path.resolve(repoRoot, '..', 'shared', rel),
    path.resolve(repoRoot, 'shared', rel),
  ];
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found) throw new Error(`bench/synthesize: manifest ${name} not found; looked for ${candidates.join(', ')} (set WAN_SHARED_DIR)`);
  return found;
}

/** The tensors of a manifest, in its (the official state_dict) order. */
export function readManifest(name: string): TensorSpec[] {
  return (JSON.parse(fs.readFileSync(manifestPath(name), 'utf8')) as { tensors: TensorSpec[] }).tensors;
}

/** WAN_BENCH_DIR (default os.tmpdir()/wan-native-bench), created. */
export function benchDir(): string {
  const dir = process.env.WAN_BENCH_DIR ?? path.join(os.tmpdir(), 'wan-native-bench');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function defaultLog(line: string): void {
  process.stderr.write(`[bench/synthesize ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

// ---------------------------------------------------------------- e4m3fn codes

// e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, 0x7F/0xFF are NaN,
// largest finite 448 (0x7E). Codes 0x00..0x7E are increasing in value.
function e4m3Value(code: number): number {
  const e = (code >> 3) & 15, m = code & 7;
  const v = e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
  return code & 0x80 ? -v : v;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** The nearest e4m3fn code of a finite float32 value (ties to even), saturating at +-448. */
export function e4m3Encode(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= 448) return sign | 0x7e;
  if (a < 2 ** -6) {
    // Subnormals are multiples of 2^-9 (code = multiple); code 8 is 2^-6, the first normal.
    const q = a * 512, r = Math.floor(q), frac = q - r;
    return sign | (frac > 0.5 || (frac === 0.5 && (r & 1)) ? r + 1 : r);
  }
  f32Scratch[0] = a;
  const bits = u32Scratch[0];
  const rounded = (bits + 0x7ffff + ((bits >>> 20) & 1)) >>> 20;  // exponent and 3 mantissa bits
  const code = (((rounded >>> 3) - 127 + 7) << 3) | (rounded & 7);
  return sign | Math.min(code, 0x7e);
}

let e4m3Checked = false;

// Checks the encoder against a brute-force nearest search, once per process that writes fp8.
// The inputs are float32 values, as in the files: a float64 just below a midpoint can round to
// the midpoint in float32 and then, correctly, to the even code rather than the nearer one.
function checkE4m3(): void {
  if (e4m3Checked) return;
  const values = Array.from({ length: 0x7f }, (_, c) => e4m3Value(c));
  for (let i = 0; i < 200000; i++) {
    const x = Math.fround((Math.random() * 2 - 1) * (i % 2 ? 0.3 : 500) * (i % 7 === 0 ? 1e-3 : 1));
    const code = e4m3Encode(x), a = Math.min(Math.abs(x), 448);
    if ((code & 0x7f) === 0x7f) throw new Error(`e4m3Encode(${x}) gave a NaN code`);
    const best = Math.min(...values.map((v) => Math.abs(v - a)));
    if (Math.abs(Math.abs(e4m3Value(code)) - a) > best + 1e-12)
      throw new Error(`e4m3Encode(${x}) = 0x${code.toString(16)} is not the nearest code`);
  }
  e4m3Checked = true;
}

// ---------------------------------------------------------------- the safetensors layout

interface Layout { header: Buffer; fileSize: number; params: number }

// 8-byte LE header length, the JSON header padded with spaces to a multiple of 8 bytes, then the
// tensors' bytes back to back in list order.
function layout(tensors: TensorPlan[], generator: string): Layout {
  const entries: Record<string, unknown> = { __metadata__: { format: 'pt', generator } };
  let offset = 0, params = 0;
  for (const { key, shape, dtype, init } of tensors) {
    const n = numel(shape);
    entries[key] = { dtype, shape, data_offsets: [offset, offset + BYTES[dtype] * n] };
    offset += BYTES[dtype] * n;
    if (init.kind !== 'scale') params += n;
  }
  let json = JSON.stringify(entries);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const body = Buffer.from(json, 'utf8');
  const header = Buffer.alloc(8 + body.length);
  header.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(header, 8);
  return { header, fileSize: header.length + offset, params };
}

function existingMatches(file: string, want: Layout): boolean {
  try {
    if (fs.statSync(file).size !== want.fileSize) return false;
    const fd = fs.openSync(file, 'r');
    try {
      const head = Buffer.alloc(want.header.length);
      fs.readSync(fd, head, 0, head.length, 0);
      return head.equals(want.header);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- the writer

const CHUNK = 1 << 22;  // values generated at a time (a scaled fp8 weight is generated whole)

// Fills f32[0, n) with values of `init`, CHUNK values (and random words) at a time.
function fill(f32: Float32Array, n: number, init: Init, rnd: Uint32Array): void {
  for (let done = 0; done < n; done += CHUNK) {
    const m = Math.min(CHUNK, n - done);
    if (init.kind === 'zero' || init.kind === 'one') {
      f32.fill(init.kind === 'one' ? 1 : 0, done, done + m);
      continue;
    }
    crypto.randomFillSync(rnd, 0, m);
    if (init.kind === 'uniform') {
      const b = init.bound;
      if (init.form === 'scale-shift') {
        const s = (2 * b) / 2 ** 32;
        for (let i = 0; i < m; i++) f32[done + i] = rnd[i] * s - b;
      } else {
        for (let i = 0; i < m; i++) f32[done + i] = (rnd[i] / 2 ** 32 * 2 - 1) * b;
      }
    } else if (init.kind === 'normal') {
      const std = init.std;
      for (let i = 0; i + 1 < m; i += 2) {
        const r = Math.sqrt(-2 * Math.log((rnd[i] + 1) / 4294967297)) * std, t = (2 * Math.PI * rnd[i + 1]) / 2 ** 32;
        f32[done + i] = r * Math.cos(t);
        f32[done + i + 1] = r * Math.sin(t);
      }
      if (m % 2) f32[done + m - 1] = 0;
    } else {
      throw new Error(`bench/synthesize: no values for init ${init.kind}`);
    }
  }
}

// Streams the tensors to `fd` (never more than CHUNK values in memory, or one whole scaled fp8
// weight, whose absmax must be known before its first code).
function writeTensors(fd: number, tensors: TensorPlan[]): void {
  const scaled = (i: number) => tensors[i].dtype === 'F8_E4M3' && tensors[i + 1]?.init.kind === 'scale';
  const biggest = Math.max(CHUNK, ...tensors.filter((_, i) => scaled(i)).map((t) => numel(t.shape)));
  const f32 = new Float32Array(biggest), u32 = new Uint32Array(f32.buffer);
  const rnd = new Uint32Array(CHUNK), out16 = new Uint16Array(CHUNK), out8 = new Uint8Array(biggest);
  const write = (view: ArrayBufferView, bytes: number) => {
    const buf = Buffer.from(view.buffer, view.byteOffset, bytes);
    for (let done = 0; done < bytes;) done += fs.writeSync(fd, buf, done, bytes - done);
  };
  let lastScale = NaN;
  for (const [index, t] of tensors.entries()) {
    const n = numel(t.shape);
    if (t.init.kind === 'empty') continue;
    if (t.init.kind === 'scale') {
      write(new Float32Array([lastScale]), 4);
    } else if (t.init.kind === 'bf16-codes') {
      if (t.dtype !== 'BF16') throw new Error(`bench/synthesize: ${t.key}: bf16-codes needs dtype BF16, not ${t.dtype}`);
      for (let done = 0; done < n; done += CHUNK) {
        const m = Math.min(CHUNK, n - done);
        crypto.randomFillSync(out16, 0, m);
        for (let i = 0; i < m; i++) out16[i] = (out16[i] & 0x81ff) | 0x3c00;
        write(out16, 2 * m);
      }
    } else if (scaled(index)) {
      fill(f32, n, t.init, rnd);
      let absmax = 0;
      for (let i = 0; i < n; i++) absmax = Math.max(absmax, Math.abs(f32[i]));
      lastScale = Math.fround(absmax / 448);
      const inv = 1 / lastScale;
      for (let i = 0; i < n; i++) out8[i] = e4m3Encode(f32[i] * inv);
      write(out8, n);
    } else {
      for (let done = 0; done < n; done += CHUNK) {
        const m = Math.min(CHUNK, n - done);
        fill(f32, m, t.init, rnd);
        if (t.dtype === 'F32') {
          write(f32, 4 * m);
        } else if (t.dtype === 'BF16') {
          for (let i = 0; i < m; i++) {
            const b = u32[i];
            out16[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;  // round to nearest even
          }
          write(out16, 2 * m);
        } else {
          for (let i = 0; i < m; i++) out8[i] = e4m3Encode(f32[i]);
          write(out8, m);
        }
      }
    }
  }
}

export interface CheckpointOptions {
  /** The file name, inside `dir`. */
  name: string;
  tensors: TensorPlan[];
  /** __metadata__.generator of the header: part of what must match for a file to be reused. */
  generator: string;
  /** Default benchDir(). */
  dir?: string;
  /** One line when the file is reused or written; default stderr. */
  log?: (line: string) => void;
}

export interface Checkpoint {
  file: string;
  /** The file size. */
  bytes: number;
  /** Values, without the fp8 scales. */
  params: number;
  tensors: number;
  /** Seconds the write took; undefined when an existing file was reused. */
  writtenS?: number;
}

/** Writes the checkpoint, or reuses the file when its size and header bytes are the ones wanted. */
export function ensureCheckpoint(o: CheckpointOptions): Checkpoint {
  const log = o.log ?? defaultLog;
  const dir = o.dir ?? benchDir();
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, o.name);
  const want = layout(o.tensors, o.generator);
  const result: Checkpoint = { file, bytes: want.fileSize, params: want.params, tensors: o.tensors.length };
  if (existingMatches(file, want)) {
    log(`checkpoint ${file}: reused (${(want.fileSize / 1e9).toFixed(2)} GB)`);
    return result;
  }
  if (o.tensors.some((t) => t.dtype === 'F8_E4M3' && numel(t.shape) > 0)) checkE4m3();
  const t0 = performance.now();
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, want.header);
    writeTensors(fd, o.tensors);
    // Flushed before a benchmark reads it, so that no writeback runs during a measurement.
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  result.writtenS = (performance.now() - t0) / 1000;
  log(`checkpoint ${file}: written, ${(want.params / 1e9).toFixed(3)} B params, ${(want.fileSize / 1e9).toFixed(2)} GB in ${result.writtenS.toFixed(1)} s`);
  return result;
}

// ---------------------------------------------------------------- Wan2.1 T2V 1.3B DiT

export const DIT_MANIFEST = 'wan2.1_t2v_1.3B_dit.json';
const DIT_BLOCKS = 30;

/** The DiT rules: linear and conv weights U(+-sqrt(3/fan_in)), biases 0, norm weights 1, modulation U(+-sqrt(3/dim)). */
export function ditInit({ key, shape }: TensorSpec): Init {
  if (key.endsWith('.bias')) return { kind: 'zero' };
  if (shape.length === 1 && key.endsWith('.weight')) return { kind: 'one' };  // norm_q, norm_k, norm3
  if (key.endsWith('modulation')) return { kind: 'uniform', bound: Math.sqrt(3 / shape[shape.length - 1]), form: 'scale-shift' };
  return { kind: 'uniform', bound: fanInBound(shape), form: 'scale-shift' };
}

/** The 1.3B T2V DiT's tensors with only blocks 0..blocks-1 (default all 30). */
export function ditSpecs(blocks = DIT_BLOCKS): TensorSpec[] {
  return readManifest(DIT_MANIFEST).filter(({ key }) => {
    const m = /^blocks\.(\d+)\./.exec(key);
    return !m || Number(m[1]) < blocks;
  });
}

function checkStorage(storage: unknown): asserts storage is Storage {
  if (typeof storage !== 'string' || !(storage in STORAGE_DTYPE))
    throw new TypeError(`Expected one of ${Object.keys(STORAGE_DTYPE).map((s) => `"${s}"`).join(', ')} for storage but received ${JSON.stringify(storage)} of type ${typeof storage}`);
}

/**
 * Any DiT-shaped tensor list (bench/dit.ts's GEMM probe widens one tensor) under the DiT rules,
 * every tensor in `storage` (fp8: the nearest e4m3fn codes of the values, never 0x7F/0xFF),
 * as WAN_BENCH_DIR/<name>.<storage>.safetensors; `what` names it in the header. Returns its path.
 */
export function ensureDitLikeCheckpoint(o: { name: string; specs: TensorSpec[]; storage: Storage; what: string; log?: (line: string) => void }): string {
  checkStorage(o.storage);
  return ensureCheckpoint({
    name: `${o.name}.${o.storage}.safetensors`,
    tensors: withInit(o.specs, STORAGE_DTYPE[o.storage], ditInit),
    generator: `wan-native bench/dit.ts v1 (${o.what}; random ${o.storage}: weights U(+-sqrt(3/fan_in)), biases 0, norms 1, modulation U(+-sqrt(3/dim)))`,
    log: o.log,
  }).file;
}

/**
 * Writes (or reuses when size and header match) the 1.3B T2V DiT as bench/dit.ts synthesises it:
 * the manifest's keys (blocks: keep only blocks.0..blocks-1; default all 30), every tensor in
 * `storage`, in WAN_BENCH_DIR; returns its path (F32 5.7 GB, BF16 2.8 GB, F8_E4M3 1.4 GB at 30 blocks).
 */
export function ensureDitCheckpoint(o: { blocks?: number; storage: Storage; log?: (line: string) => void }): string {
  const blocks = o.blocks ?? DIT_BLOCKS;
  if (!Number.isInteger(blocks) || blocks < 1 || blocks > DIT_BLOCKS)
    throw new RangeError(`Expected an integer from 1 to ${DIT_BLOCKS} for blocks but received ${JSON.stringify(blocks)} of type ${typeof blocks}`);
  return ensureDitLikeCheckpoint({
    name: `dit-1.3B-${blocks}block${blocks > 1 ? 's' : ''}`,
    specs: ditSpecs(blocks),
    storage: o.storage,
    what: blocks === DIT_BLOCKS ? `1.3B, ${DIT_BLOCKS} blocks` : `1.3B, ${blocks} block(s)`,
    log: o.log,
  });
}

// ---------------------------------------------------------------- Wan2.1 VAE

/**
 * The Wan2.1 VAE (every key of Wan2.1_VAE.pth), all F32 (508 MB): conv weights
 * U(+-sqrt(3/fan_in)), RMS gammas 1, biases 0, as <dir>/wan2.1_vae.random.f32.safetensors
 * (dir default WAN_BENCH_DIR). `generator` names the writer in the header (each caller keeps
 * its own, so its existing file stays valid).
 */
export function ensureVaeCheckpoint(o: { generator: string; dir?: string; log?: (line: string) => void }): string {
  const init = ({ key, shape }: TensorSpec): Init =>
    key.endsWith('.gamma') ? { kind: 'one' }
      : key.endsWith('.bias') ? { kind: 'zero' }
      : { kind: 'uniform', bound: fanInBound(shape), form: 'shift-scale' };
  return ensureCheckpoint({
    name: 'wan2.1_vae.random.f32.safetensors',
    tensors: withInit(readManifest('wan2.1_vae.json'), 'F32', init),
    generator: o.generator, dir: o.dir, log: o.log,
  }).file;
}

// ---------------------------------------------------------------- umT5-XXL encoder

export type Umt5Storage = 'bf16' | 'fp8' | 'fp8-unscaled';
export const UMT5_LAYERS = 24, UMT5_VOCAB = 256384;

const UMT5_LINEAR = /^blocks\.\d+\.(attn\.[qkvo]|ffn\.(gate\.0|fc1|fc2))\.weight$/;

/**
 * The umT5-XXL encoder's tensors, the first `layers` blocks, the token embedding cut to `vocab` rows:
 *   bf16: every tensor BF16;
 *   fp8: the blocks' 2-D linear weights as F8_E4M3 codes of weight / scale, each followed by its
 *     F32 scalar `<layer>.scale_weight` (absmax / 448), a `scaled_fp8` marker (F8_E4M3, shape
 *     [0]) last, everything else BF16 (ComfyUI's umt5_xxl_fp8_e4m3fn_scaled with official names);
 *   fp8-unscaled: the same weights as plain e4m3fn codes of their values, no scales, no marker.
 * Values: linear weights U(+-sqrt(3/fan_in)), norm weights 1, relative position tables U(+-0.1),
 * token embedding N(0, 1) * 0.1.
 */
export function umt5Tensors(storage: Umt5Storage, layers: number, vocab: number): TensorPlan[] {
  const out: TensorPlan[] = [];
  for (const { key, shape: full } of readManifest('umt5_xxl_encoder.json')) {
    const m = /^blocks\.(\d+)\./.exec(key);
    if (m && Number(m[1]) >= layers) continue;
    const shape = key === 'token_embedding.weight' ? [vocab, full[1]] : full;
    const init: Init = key === 'token_embedding.weight' ? { kind: 'normal', std: 0.1 }
      : key.endsWith('pos_embedding.embedding.weight') ? { kind: 'uniform', bound: 0.1, form: 'scale-shift' }
      : shape.length === 1 ? { kind: 'one' }
      : { kind: 'uniform', bound: fanInBound(shape), form: 'scale-shift' };
    if (storage !== 'bf16' && UMT5_LINEAR.test(key)) {
      out.push({ key, shape, dtype: 'F8_E4M3', init });
      if (storage === 'fp8') out.push({ key: key.replace(/\.weight$/, '.scale_weight'), shape: [], dtype: 'F32', init: { kind: 'scale' } });
    } else {
      out.push({ key, shape, dtype: 'BF16', init });
    }
  }
  if (storage === 'fp8') out.push({ key: 'scaled_fp8', shape: [0], dtype: 'F8_E4M3', init: { kind: 'empty' } });
  return out;
}

/** WAN_BENCH_DIR/umt5-xxl-<layers>layers[-quick].<storage>.safetensors (-quick: a vocabulary cut below 256,384). */
export function umt5CheckpointPath(storage: Umt5Storage, layers = UMT5_LAYERS, vocab = UMT5_VOCAB): string {
  return path.join(benchDir(), `umt5-xxl-${layers}layers${vocab !== UMT5_VOCAB ? '-quick' : ''}.${storage}.safetensors`);
}

/** Writes (or reuses) the umT5-XXL encoder of umt5Tensors in WAN_BENCH_DIR (bf16 11.4 GB, fp8 6.7 GB at 24 layers). */
export function ensureUmt5Checkpoint(o: { storage: Umt5Storage; layers?: number; vocab?: number; log?: (line: string) => void }): Checkpoint {
  const layers = o.layers ?? UMT5_LAYERS, vocab = o.vocab ?? UMT5_VOCAB;
  return ensureCheckpoint({
    name: path.basename(umt5CheckpointPath(o.storage, layers, vocab)),
    tensors: umt5Tensors(o.storage, layers, vocab),
    generator: `wan-native bench/encoders.ts v1 (umT5-XXL, ${layers} layers, random ${o.storage})`,
    log: o.log,
  });
}
