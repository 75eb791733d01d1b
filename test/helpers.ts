// Shared by the tests: where the shared reference data lives, temporary folders, and an
// independent safetensors writer (so that reader tests do not trust our own writer).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Tensor } from '../lib/tensor';

export const repoRoot = path.resolve(__dirname, '..', '..');
export const sharedDir = process.env.WAN_SHARED_DIR ?? path.resolve(repoRoot, '..', 'shared');
export const goldenDir = path.join(sharedDir, 'golden');
export const weightsDir = path.join(goldenDir, 'weights');
export const manifestsDir = path.join(sharedDir, 'manifests');
export const fixturesDir = path.join(repoRoot, 'test', 'fixtures');

export function tempDir(prefix = 'wan-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export const ELEMENT_SIZE: Record<string, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export interface RawEntry { dtype: string; shape: number[]; data_offsets: [number, number] }

// Parses a safetensors header with JSON.parse: the reference for our C++ parser.
export function readRawSafetensors(file: string): { header: Record<string, RawEntry>; metadata?: Record<string, string>; data: Buffer } {
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const parsed = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  const metadata = parsed.__metadata__;
  delete parsed.__metadata__;
  return { header: parsed, metadata, data: bytes.subarray(8 + n) };
}

// Builds safetensors bytes from entries given as raw byte buffers.
export function buildSafetensors(tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }>,
                                 metadata?: Record<string, string>, headerPatch?: (h: any) => void): Buffer {
  const header: any = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const parts: Buffer[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    parts.push(Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength));
    offset += t.bytes.length;
  }
  headerPatch?.(header);
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json, 'utf8'), ...parts]);
}

// Decodes raw little-endian bytes of a safetensors dtype to numbers, as Python wrote them.
export function decodeRaw(dtype: string, bytes: Buffer): number[] {
  const copy = new Uint8Array(bytes).buffer;  // aligned, for the typed-array views below
  switch (dtype) {
    case 'F64': return Array.from(new Float64Array(copy));
    case 'F32': return Array.from(new Float32Array(copy));
    case 'BF16': {
      const bits = new Uint16Array(copy);
      const widened = new Uint32Array(bits.length);
      for (let i = 0; i < bits.length; i++) widened[i] = bits[i] << 16;
      return Array.from(new Float32Array(widened.buffer));
    }
    case 'I64': return Array.from(new BigInt64Array(copy), Number);
    case 'I32': return Array.from(new Int32Array(copy));
    case 'U8': case 'BOOL': return Array.from(new Uint8Array(copy));
    default: throw new Error(`decodeRaw: ${dtype} not handled`);
  }
}

// Largest |a - b| over all elements (Infinity when the sizes differ).
export function maxAbsDiff(a: { toTypedArray(): ArrayLike<number | bigint> }, b: { toTypedArray(): ArrayLike<number | bigint> }): number {
  const x = toNumbers(a.toTypedArray()), y = toNumbers(b.toTypedArray());
  let m = x.length === y.length ? 0 : Infinity;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  return m;
}

export function toNumbers(a: ArrayLike<number | bigint>): number[] {
  return Array.from(a as ArrayLike<number | bigint>, (v) => Number(v));
}

export interface SparseEntry { key: string; shape: number[]; dtype?: string }

// A safetensors file with a real header whose data section is a hole (ftruncate): the
// shapes of a full-size checkpoint without writing gigabytes. Values read as zeros.
export function writeSparseSafetensors(file: string, entries: SparseEntry[], metadata?: Record<string, string>): string {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const e of entries) {
    if (e.key in header) throw new Error(`writeSparseSafetensors: duplicate key ${e.key}`);
    const dtype = e.dtype ?? 'BF16';
    const bytes = e.shape.reduce((a, b) => a * b, 1) * ELEMENT_SIZE[dtype];
    header[e.key] = { dtype, shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  if (!Number.isSafeInteger(offset)) throw new Error('writeSparseSafetensors: size overflow');
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, 'utf8');
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, head);
    fs.ftruncateSync(fd, head.length + offset);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

// Official -> diffusers names, as diffusers scripts/convert_wan_to_diffusers.py does it:
// TRANSFORMER_KEYS_RENAME_DICT applied in order with str.replace (so `cross_attn.k_img`
// becomes `attn2.to_k_img` and then `attn2.add_k_proj`, and norm2/norm3 swap via a placeholder).
export const DIFFUSERS_RENAME: [string, string][] = [
  ['time_embedding.0', 'condition_embedder.time_embedder.linear_1'],
  ['time_embedding.2', 'condition_embedder.time_embedder.linear_2'],
  ['text_embedding.0', 'condition_embedder.text_embedder.linear_1'],
  ['text_embedding.2', 'condition_embedder.text_embedder.linear_2'],
  ['time_projection.1', 'condition_embedder.time_proj'],
  ['head.modulation', 'scale_shift_table'],
  ['head.head', 'proj_out'],
  ['modulation', 'scale_shift_table'],
  ['ffn.0', 'ffn.net.0.proj'],
  ['ffn.2', 'ffn.net.2'],
  ['norm2', 'norm__placeholder'],
  ['norm3', 'norm2'],
  ['norm__placeholder', 'norm3'],
  ['img_emb.proj.0', 'condition_embedder.image_embedder.norm1'],
  ['img_emb.proj.1', 'condition_embedder.image_embedder.ff.net.0.proj'],
  ['img_emb.proj.3', 'condition_embedder.image_embedder.ff.net.2'],
  ['img_emb.proj.4', 'condition_embedder.image_embedder.norm2'],
  ['img_emb.emb_pos', 'condition_embedder.image_embedder.pos_embed'],
  ['self_attn.q', 'attn1.to_q'],
  ['self_attn.k', 'attn1.to_k'],
  ['self_attn.v', 'attn1.to_v'],
  ['self_attn.o', 'attn1.to_out.0'],
  ['self_attn.norm_q', 'attn1.norm_q'],
  ['self_attn.norm_k', 'attn1.norm_k'],
  ['cross_attn.q', 'attn2.to_q'],
  ['cross_attn.k', 'attn2.to_k'],
  ['cross_attn.v', 'attn2.to_v'],
  ['cross_attn.o', 'attn2.to_out.0'],
  ['cross_attn.norm_q', 'attn2.norm_q'],
  ['cross_attn.norm_k', 'attn2.norm_k'],
  ['attn2.to_k_img', 'attn2.add_k_proj'],
  ['attn2.to_v_img', 'attn2.add_v_proj'],
  ['attn2.norm_k_img', 'attn2.norm_added_k'],
];

export function toDiffusers(key: string): string {
  for (const [from, to] of DIFFUSERS_RENAME) key = key.split(from).join(to);
  return key;
}

// Float32 -> fp8 e4m3fn code, rounding to nearest (ties to even), saturating at +-448 (the
// way quantising tools write weights; never a NaN code). For tests that make fp8 files.
const E4M3_VALUES = Array.from({ length: 127 }, (_, c) => {
  const e = (c >> 3) & 0xf, m = c & 7;
  return e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
});
export function encodeE4m3fn(values: Float32Array): Uint8Array {
  const out = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i], a = Math.min(Math.abs(v), 448);
    let lo = 0, hi = 126;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (E4M3_VALUES[mid] <= a) lo = mid; else hi = mid - 1; }
    let code = lo;
    if (lo < 126) {
      const below = a - E4M3_VALUES[lo], above = E4M3_VALUES[lo + 1] - a;
      if (above < below || (above === below && (lo & 1) === 1)) code = lo + 1;
    }
    out[i] = code | (v < 0 ? 0x80 : 0);
  }
  return out;
}
export function decodeE4m3fn(code: number): number {
  const v = E4M3_VALUES[code & 0x7f];
  return code & 0x80 ? -v : v;
}

// mulberry32, then Box-Muller: the inputs are the same on every run.
export function normals(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return (((x ^ (x >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform())), a = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

export function randn(shape: number[], seed: number, dtype: 'f32' | 'bf16' = 'f32'): Tensor {
  return Tensor.fromTypedArray(normals(shape.reduce((a, b) => a * b, 1), seed), shape, dtype);
}

/** The sigmas Wan2.1's own generate.py samples with (wan/text2video.py), steps + 1 float32 values
 * ending in 0: unipc from FlowUniPCMultistepScheduler(shift=1).set_timesteps(steps, shift), dpm++
 * from get_sampling_sigmas(steps, shift). The scheduler names follow the wrapper, whose unipc and
 * dpm++ start a little higher; tests that compare with the official loop give these as sigmas. */
export function officialSigmas(name: 'unipc' | 'dpm++', o: { steps: number; shift: number }): number[] {
  const linspace = (a: number, b: number, n: number) => {
    const out = Array.from({ length: n }, (_, i) => i * ((b - a) / (n - 1)) + a);
    out[n - 1] = b;
    return out;
  };
  const top = name === 'unipc' ? Math.fround(1 - 0.001) : 1;  // float32 0.999: the training table's top sigma
  const shifted = (x: number) => (o.shift * x) / (1 + (o.shift - 1) * x);
  return [...linspace(top, 0, o.steps + 1).slice(0, o.steps).map((x) => Math.fround(shifted(x))), 0];
}
