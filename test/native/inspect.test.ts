// inspectCheckpoint: what a checkpoint holds, from its header alone. The real Wan2.1 checkpoints
// are synthesised from shared/manifests as sparse safetensors files (a real header, then a data
// section that is one hole), so that gigabytes of declared tensors cost a few kilobytes of disk.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { inspectCheckpoint, loadCheckpoint } from '../../lib/index';
import type { CheckpointInfo } from '../../lib/index';
import { DIFFUSERS_RENAME, ELEMENT_SIZE, manifestsDir, tempDir, toDiffusers, weightsDir, writeSparseSafetensors } from '../helpers';

const dir = tempDir('wan-inspect-');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

// ------------------------------------------------------------------------------------ helpers

interface Entry { key: string; shape: number[]; dtype?: string }  // dtype defaults to BF16

interface Manifest {
  name: string;
  num_tensors: number;
  num_params: number;
  config: Record<string, any>;
  tensors: { key: string; shape: number[] }[];
}

const manifests = new Map<string, Manifest>();
function manifest(name: string): Manifest {
  let m = manifests.get(name);
  if (!m) {
    m = JSON.parse(fs.readFileSync(path.join(manifestsDir, `${name}.json`), 'utf8')) as Manifest;
    manifests.set(name, m);
  }
  return m;
}

const elements = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// Writes the 8-byte header length and the JSON header (contiguous data_offsets, padded to 8
// bytes like the reference writer), then extends the file to its full size without writing:
// the data section is a hole, but the parser's offset checks see a file of the right length.
function writeSparse(name: string, entries: Entry[], metadata?: Record<string, string>): string {
  return writeSparseSafetensors(path.join(dir, name), entries, metadata);
}

function headerLength(file: string): number {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(8);
    fs.readSync(fd, b, 0, 8, 0);
    return Number(b.readBigUInt64LE(0));
  } finally {
    fs.closeSync(fd);
  }
}

// Inspects a synthesised file and removes it (they are holes, but need not outlive their test).
async function inspectSparse(name: string, entries: Entry[], metadata?: Record<string, string>): Promise<CheckpointInfo> {
  const file = writeSparse(name, entries, metadata);
  try {
    return await inspectCheckpoint(file);
  } finally {
    fs.rmSync(file, { force: true });
  }
}

async function rejectsSparse(t: tap.Test, name: string, entries: Entry[], message: (file: string) => RegExp, what?: string) {
  const file = writeSparse(name, entries);
  try {
    await t.rejects(inspectCheckpoint(file), { code: 'WAN_BAD_CHECKPOINT', message: message(file) }, what ?? 'refused');
  } finally {
    fs.rmSync(file, { force: true });
  }
}

const withPrefix = (entries: Entry[], prefix: string): Entry[] => entries.map((e) => ({ ...e, key: prefix + e.key }));

const TEXT_LEN_WARNING = 'text_len is not stored in the weights; assuming 512';

// What inspect must infer for a Wan DiT, from its official configuration. num_heads and
// text_len are only reported for release dims (head dim 128; text_len assumed).
function ditConfig(c: Record<string, any>, release: boolean): Record<string, number> {
  const out: Record<string, number> = {
    dim: c.dim, in_dim: c.in_dim, out_dim: c.out_dim, ffn_dim: c.ffn_dim, freq_dim: c.freq_dim,
    text_dim: c.text_dim, num_layers: c.num_layers,
    patch_t: c.patch_size[0], patch_h: c.patch_size[1], patch_w: c.patch_size[2],
    qk_norm: c.qk_norm ? 1 : 0, cross_attn_norm: c.cross_attn_norm ? 1 : 0,
  };
  if (release) Object.assign(out, { num_heads: c.num_heads, text_len: c.text_len });
  if (c.model_type === 'i2v' || c.model_type === 'flf2v') out.image_dim = 1280;  // MLPProj(1280, dim)
  if (c.model_type === 'flf2v') out.flf_pos_tokens = 514;                         // 2 x 257 CLIP tokens
  return out;
}

function umt5Config(c: Record<string, any>): Record<string, number> {
  return {
    vocab_size: c.vocab_size, dim: c.dim, dim_attn: c.dim_attn, dim_ffn: c.dim_ffn, num_heads: c.num_heads,
    num_buckets: c.num_buckets, num_layers: c.encoder_layers, shared_pos: c.shared_pos ? 1 : 0,
  };
}

function clipConfig(c: Record<string, any>): Record<string, number> {
  const out: Record<string, number> = {
    vision_dim: c.vision_dim, patch_size: c.patch_size, image_size: c.image_size, vision_layers: c.vision_layers,
    vision_mlp_dim: c.vision_dim * c.vision_mlp_ratio, embed_dim: c.embed_dim,
    vocab_size: c.vocab_size, text_dim: c.text_dim, text_layers: c.text_layers, max_text_len: c.max_text_len,
  };
  if (c.vision_dim === 1280) out.vision_heads = c.vision_heads;
  return out;
}

function vaeConfig(c: Record<string, any>): Record<string, number> {
  return { dim: c.dim, z_dim: c.z_dim, decoder_dim: c.dim * c.dim_mult[c.dim_mult.length - 1] };
}

// ------------------------------------------------------------- the real checkpoints, full size

interface Expected {
  manifest: string;
  family: string;
  variant: string;
  task: string;
  config: (m: Manifest) => Record<string, number>;
  warnings: string[];
  firstLine: RegExp;
}

const DIT14 = (task: string) => ({ family: 'wan-dit', variant: '14B', task, warnings: [TEXT_LEN_WARNING] });
const real: Expected[] = [
  { manifest: 'wan2.1_t2v_1.3B_dit', family: 'wan-dit', variant: '1.3B', task: 't2v', warnings: [TEXT_LEN_WARNING],
    config: (m) => ditConfig(m.config, true), firstLine: /^model\s+wan-dit \(1\.3B, t2v\)$/ },
  { manifest: 'wan2.1_t2v_14B_dit', ...DIT14('t2v'), config: (m) => ditConfig(m.config, true), firstLine: /^model\s+wan-dit \(14B, t2v\)$/ },
  { manifest: 'wan2.1_i2v_14B_480P_dit', ...DIT14('i2v'), config: (m) => ditConfig(m.config, true), firstLine: /^model\s+wan-dit \(14B, i2v\)$/ },
  { manifest: 'wan2.1_i2v_14B_720P_dit', ...DIT14('i2v'), config: (m) => ditConfig(m.config, true), firstLine: /^model\s+wan-dit \(14B, i2v\)$/ },
  { manifest: 'wan2.1_flf2v_14B_720P_dit', ...DIT14('flf2v'), config: (m) => ditConfig(m.config, true), firstLine: /^model\s+wan-dit \(14B, flf2v\)$/ },
  { manifest: 'wan2.1_vae', family: 'wan-vae', variant: 'wan2.1', task: '', warnings: [],
    config: (m) => vaeConfig(m.config), firstLine: /^model\s+wan-vae \(wan2\.1\)$/ },
  { manifest: 'umt5_xxl_encoder', family: 'umt5', variant: 'xxl', task: '', warnings: [],
    config: (m) => umt5Config(m.config), firstLine: /^model\s+umt5 \(xxl\)$/ },
  { manifest: 'clip_xlm_roberta_vit_h_14', family: 'clip-vision', variant: 'vit-h-14', task: '', warnings: [],
    config: (m) => clipConfig(m.config), firstLine: /^model\s+clip-vision \(vit-h-14\)$/ },
];

// The released 14B DiTs (and umT5 repackaged as safetensors) are larger than the memory of many
// machines; like the real releases they are sharded here (diffusers' 5 GB shards) and inspected
// through their index. Smaller ones are single files.
const SHARD_BYTES = 5e9;

function writeSparseCheckpoint(base: string, entries: Entry[]): { file: string; files: string[]; bytes: number } {
  const bytes = entries.reduce((n, e) => n + elements(e.shape) * ELEMENT_SIZE[e.dtype ?? 'BF16'], 0);
  if (bytes <= SHARD_BYTES) {
    const file = writeSparse(`${base}.safetensors`, entries, { format: 'pt' });
    return { file, files: [file], bytes };
  }
  const shards: Entry[][] = [[]];
  let used = 0;
  for (const e of entries) {
    const n = elements(e.shape) * ELEMENT_SIZE[e.dtype ?? 'BF16'];
    if (used + n > SHARD_BYTES && shards[shards.length - 1].length > 0) {
      shards.push([]);
      used = 0;
    }
    shards[shards.length - 1].push(e);
    used += n;
  }
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = shards.map((_, i) => `${base}-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const files = shards.map((list, i) => writeSparse(names[i], list, { format: 'pt' }));
  const weightMap: Record<string, string> = {};
  shards.forEach((list, i) => list.forEach((e) => { weightMap[e.key] = names[i]; }));
  const file = path.join(dir, `${base}.safetensors.index.json`);
  fs.writeFileSync(file, JSON.stringify({ metadata: { total_size: bytes }, weight_map: weightMap }));
  return { file, files: [...files, file], bytes };
}

async function inspectSparseCheckpoint(base: string, entries: Entry[]): Promise<CheckpointInfo> {
  const { file, files } = writeSparseCheckpoint(base, entries);
  try {
    return await inspectCheckpoint(file);
  } finally {
    for (const f of files) fs.rmSync(f, { force: true });
  }
}

t.test('every real Wan2.1 checkpoint, synthesised at full size from its manifest', async (t) => {
  for (const want of real) {
    const m = manifest(want.manifest);
    // The manifest agrees with itself (what the numbers below are checked against).
    t.equal(m.tensors.length, m.num_tensors, `${m.name}: manifest lists num_tensors keys`);
    t.equal(m.tensors.reduce((n, e) => n + elements(e.shape), 0), m.num_params, `${m.name}: manifest shapes sum to num_params`);

    const { file, files, bytes } = writeSparseCheckpoint(m.name, m.tensors);
    t.equal(bytes, 2 * m.num_params, `${m.name}: ${(bytes / 2 ** 30).toFixed(1)} GiB of bf16 data in ${files.length} file(s)`);
    let data = 0, disk = 0;
    for (const f of files) {
      const stat = fs.statSync(f);
      disk += stat.blocks * 512;
      if (f.endsWith('.safetensors')) data += stat.size - 8 - headerLength(f);
    }
    t.equal(data, bytes, `${m.name}: the data sections have their full size`);
    t.ok(disk < 16 * 2 ** 20, `${m.name}: but take ${disk} bytes of disk`);

    const info = await inspectCheckpoint(file);
    for (const f of files) fs.rmSync(f);
    t.equal(info.family, want.family, `${m.name}: family`);
    t.equal(info.variant, want.variant, `${m.name}: variant`);
    t.equal(info.task, want.task, `${m.name}: task`);
    if (want.family === 'wan-dit') t.equal(info.task, m.config.model_type, `${m.name}: task is the manifest's model_type`);
    t.equal(info.layout, 'official', `${m.name}: layout`);
    t.equal(info.keyPrefix, '', `${m.name}: no prefix`);
    t.equal(info.quantization, 'none', `${m.name}: quantization`);
    t.strictSame(info.dtypes, { bf16: m.num_tensors }, `${m.name}: dtypes`);
    t.equal(info.numTensors, m.num_tensors, `${m.name}: numTensors`);
    t.equal(info.numParams, m.num_params, `${m.name}: numParams`);
    t.strictSame(info.config, want.config(m), `${m.name}: config inferred from the shapes`);
    t.strictSame(info.warnings, want.warnings, `${m.name}: warnings`);
    const lines = info.summary.split('\n');
    t.match(lines[0], want.firstLine, `${m.name}: the summary starts by naming the model`);
    t.match(info.summary, /^layout\s+official$/m, `${m.name}: summary layout line`);
    t.match(info.summary, /^quantization\s+none$/m);
    t.match(info.summary, new RegExp(`^tensors\\s+${escape(m.num_tensors.toLocaleString('en-US'))}$`, 'm'));
    t.match(info.summary, new RegExp(`^parameters\\s+${escape(m.num_params.toLocaleString('en-US'))} \\(`, 'm'));
    t.match(info.summary, new RegExp(`^dtypes\\s+bf16 x${m.num_tensors}$`, 'm'));
    t.ok(info.summary.endsWith('\n'), `${m.name}: summary ends in a newline`);
  }
});

// Comfy-Org ships the 14B DiTs as single files (wan2.1_i2v_720p_14B_bf16.safetensors, 32.8 GB).
// Reading a header, or mapping the file for a lazy load, must not need memory for the whole
// file (csrc/io/mapped_file.cpp maps with MAP_NORESERVE for this).
t.test('a single-file 14B checkpoint larger than memory', async (t) => {
  const m = manifest('wan2.1_i2v_14B_720P_dit');
  const file = writeSparse('wan2.1_i2v_720p_14B_bf16.safetensors', m.tensors);
  const size = fs.statSync(file).size;
  await t.test(`${(size / 2 ** 30).toFixed(1)} GiB file, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB of memory`,
    async (t) => {
      const info = await inspectCheckpoint(file);
      t.equal(info.family, 'wan-dit');
      t.equal(info.variant, '14B');
      t.equal(info.task, 'i2v');
      t.equal(info.numParams, m.num_params);
      t.strictSame(info.config, ditConfig(m.config, true));
      const lazy = await loadCheckpoint(file, { populate: false });
      t.equal(lazy.tensors.size, m.tensors.length, 'a lazy load maps it too');
      for (const x of lazy.tensors.values()) x.dispose();
    });
  fs.rmSync(file);
});

t.test('the summary of the 1.3B model, line by line', async (t) => {
  const m = manifest('wan2.1_t2v_1.3B_dit');
  const info = await inspectSparse('summary.safetensors', m.tensors);
  t.equal(info.summary, [
    'model         wan-dit (1.3B, t2v)',
    'layout        official',
    'quantization  none',
    'tensors       825',
    'parameters    1,418,996,800 (1.42 B)',
    'dtypes        bf16 x825',
    'config',
    '  dim                 1536',
    '  in_dim              16',
    '  out_dim             16',
    '  ffn_dim             8960',
    '  freq_dim            256',
    '  text_dim            4096',
    '  num_heads           12',
    '  text_len            512',
    '  num_layers          30',
    '  patch_t             1',
    '  patch_h             2',
    '  patch_w             2',
    '  qk_norm             1',
    '  cross_attn_norm     1',
    'warnings',
    `  - ${TEXT_LEN_WARNING}`,
    '',
  ].join('\n'));
});

// ------------------------------------------------------------------- the tiny golden weights

const tinyExpected: Record<string, (cfg: any) => { family: string; variant: string; task: string; config: Record<string, number>; warnings: RegExp[] }> = {
  tiny_t2v_dit: (c) => ({ family: 'wan-dit', variant: 'tiny', task: 't2v', config: ditConfig(c.config, false),
    warnings: [/^dim 64 matches no Wan release: num_heads and text_len are not stored in the weights/] }),
  tiny_i2v_dit: (c) => ({ family: 'wan-dit', variant: 'tiny', task: 'i2v', config: ditConfig(c.config, false),
    warnings: [/^dim 64 matches no Wan release/] }),
  tiny_umt5_enc: (c) => ({ family: 'umt5', variant: 'tiny', task: '', config: umt5Config(c.config), warnings: [] }),
  tiny_vae: (c) => ({ family: 'wan-vae', variant: 'wan2.1', task: '', config: vaeConfig(c.config),
    warnings: [/^dim 8, z_dim 16 match no released VAE$/] }),
  tiny_clip: (c) => ({ family: 'clip-vision', variant: 'tiny', task: '', config: clipConfig(c.config),
    warnings: [/^vision_dim 64 is not ViT-H's: vision_heads is not stored in the weights$/] }),
};

t.test('the tiny golden weights (real files)', async (t) => {
  for (const [base, expect] of Object.entries(tinyExpected)) {
    const cfg = JSON.parse(fs.readFileSync(path.join(weightsDir, `${base}.config.json`), 'utf8'));
    const numTensors = Object.keys(cfg.keys).length;
    const want = expect(cfg);
    if (want.family === 'wan-dit') t.equal(want.task, cfg.config.model_type);
    for (const [suffix, dtype] of [['bf16', 'bf16'], ['f32', 'f32']]) {
      const name = `${base}.${suffix}`;
      const info = await inspectCheckpoint(path.join(weightsDir, `${name}.safetensors`));
      t.equal(info.family, want.family, `${name}: family`);
      t.equal(info.variant, want.variant, `${name}: variant`);
      t.equal(info.task, want.task, `${name}: task`);
      t.equal(info.layout, 'official', `${name}: layout`);
      t.equal(info.keyPrefix, '', `${name}: prefix`);
      t.equal(info.quantization, 'none', `${name}: quantization`);
      t.strictSame(info.dtypes, { [dtype]: numTensors }, `${name}: dtypes`);
      t.equal(info.numTensors, numTensors, `${name}: numTensors`);
      t.equal(info.numParams, cfg.num_params, `${name}: numParams equals the config's num_params`);
      t.strictSame(info.config, want.config, `${name}: config`);
      t.equal(info.warnings.length, want.warnings.length, `${name}: ${info.warnings.length} warnings`);
      want.warnings.forEach((w, i) => t.match(info.warnings[i], w, `${name}: warning ${i}`));
      t.match(info.summary.split('\n')[0], /^model\s+\S+ \(/, `${name}: summary starts with the model`);
      t.match(info.summary, /^layout\s+official$/m);
    }
  }
});

// ----------------------------------------------------------------------------------- dialects

t.test('ComfyUI prefixes and all-in-one files', async (t) => {
  const m = manifest('wan2.1_t2v_1.3B_dit');
  const want = ditConfig(m.config, true);
  for (const prefix of ['model.diffusion_model.', 'diffusion_model.', 'model.']) {
    const info = await inspectSparse('prefixed.safetensors', withPrefix(m.tensors, prefix));
    t.equal(info.layout, 'comfyui', `${prefix}: layout`);
    t.equal(info.keyPrefix, prefix, `${prefix}: keyPrefix`);
    t.equal(info.family, 'wan-dit');
    t.equal(info.variant, '1.3B');
    t.equal(info.task, 't2v');
    t.strictSame(info.config, want, `${prefix}: config`);
    t.equal(info.numTensors, 825);
    t.equal(info.numParams, m.num_params);
    t.strictSame(info.warnings, [TEXT_LEN_WARNING]);
    t.match(info.summary, new RegExp(`^layout\\s+comfyui \\(prefix '${escape(prefix)}'\\)$`, 'm'));
  }

  // DiT + VAE + umT5 in one file: the DiT part is described, the rest is named.
  const vae = manifest('wan2.1_vae');
  const t5 = manifest('umt5_xxl_encoder');
  const info = await inspectSparse('all-in-one.safetensors', [
    ...withPrefix(m.tensors, 'model.diffusion_model.'), ...withPrefix(vae.tensors, 'vae.'),
    ...withPrefix(t5.tensors, 'text_encoders.umt5xxl.transformer.'),
  ]);
  t.equal(info.family, 'wan-dit');
  t.equal(info.variant, '1.3B');
  t.equal(info.layout, 'comfyui');
  t.strictSame(info.config, want, 'all-in-one: config of the DiT part');
  t.equal(info.numTensors, 825 + 194 + 242, 'numTensors counts the whole file');
  t.equal(info.numParams, m.num_params + vae.num_params + t5.num_params, 'numParams counts the whole file');
  t.strictSame(info.warnings, [TEXT_LEN_WARNING,
    "all-in-one file: also holds vae.* (194 tensors), text_encoders.* (242 tensors); only the 'model.diffusion_model.' part is described"]);

  // A VAE saved on its own under `vae.`.
  const vaeOnly = await inspectSparse('vae-prefixed.safetensors', withPrefix(vae.tensors, 'vae.'));
  t.equal(vaeOnly.family, 'wan-vae');
  t.equal(vaeOnly.variant, 'wan2.1');
  t.equal(vaeOnly.keyPrefix, 'vae.');
  t.equal(vaeOnly.layout, 'official');
  t.strictSame(vaeOnly.config, vaeConfig(vae.config));
  t.strictSame(vaeOnly.warnings, []);
});

// The 2-D linear weights of a DiT, which fp8 checkpoints store in fp8.
const isLinearWeight = (e: Entry) => e.key.endsWith('.weight') && e.shape.length === 2;

function fp8Entries(entries: Entry[], opts: { dtype?: string; scale?: 'scale_weight' | 'weight_scale'; skipScale?: string } = {}): Entry[] {
  const out: Entry[] = [];
  for (const e of entries) {
    if (!isLinearWeight(e)) {
      out.push(e);
      continue;
    }
    out.push({ ...e, dtype: opts.dtype ?? 'F8_E4M3' });
    if (opts.scale && e.key !== opts.skipScale)
      out.push({ key: `${e.key.slice(0, -'.weight'.length)}.${opts.scale}`, shape: [], dtype: 'F32' });
  }
  return out;
}

t.test('fp8 checkpoints: plain, ComfyUI scaled, and .weight_scale', async (t) => {
  const m = manifest('wan2.1_t2v_1.3B_dit');
  const config = ditConfig(m.config, true);
  const linear = m.tensors.filter(isLinearWeight).length;
  // 30 blocks x (4 self-attn + 4 cross-attn + 2 ffn) + text/time embeddings (2 + 2) + time_projection + head.
  t.equal(linear, 306, 'the 1.3B model has 306 linear weights');
  const other = m.num_tensors - linear;

  const check = (t: tap.Test, info: CheckpointInfo, what: string, want: {
    quantization: string; dtypes: Record<string, number>; numTensors: number; numParams: number; warnings: string[];
    layout?: string; keyPrefix?: string;
  }) => {
    t.equal(info.quantization, want.quantization, `${what}: quantization`);
    t.strictSame(info.dtypes, want.dtypes, `${what}: dtypes`);
    t.equal(info.numTensors, want.numTensors, `${what}: numTensors`);
    t.equal(info.numParams, want.numParams, `${what}: numParams`);
    t.strictSame(info.warnings, want.warnings, `${what}: warnings`);
    t.equal(info.layout, want.layout ?? 'official', `${what}: layout`);
    t.equal(info.keyPrefix, want.keyPrefix ?? '', `${what}: keyPrefix`);
    t.equal(info.family, 'wan-dit', `${what}: family`);
    t.equal(info.variant, '1.3B', `${what}: variant`);
    t.equal(info.task, 't2v', `${what}: task`);
    t.strictSame(info.config, config, `${what}: config unchanged by quantization`);
    t.match(info.summary, new RegExp(`^quantization\\s+${want.quantization}$`, 'm'), `${what}: summary`);
  };

  // ComfyUI (Comfy-Org): everything under the prefix, the marker included.
  check(t, await inspectSparse('comfy-scaled.safetensors', withPrefix([
    ...fp8Entries(m.tensors, { scale: 'scale_weight' }), { key: 'scaled_fp8', shape: [0], dtype: 'F8_E4M3' },
  ], 'model.diffusion_model.')), 'ComfyUI scaled fp8', {
    quantization: 'fp8_e4m3fn_scaled', dtypes: { bf16: other, f32: linear, f8_e4m3fn: linear + 1 },
    numTensors: m.num_tensors + linear + 1, numParams: m.num_params + linear, warnings: [TEXT_LEN_WARNING],
    layout: 'comfyui', keyPrefix: 'model.diffusion_model.',
  });
  // Kijai (WanVideo_comfy): official names, a bare marker.
  check(t, await inspectSparse('kijai-scaled.safetensors', [
    ...fp8Entries(m.tensors, { scale: 'scale_weight' }), { key: 'scaled_fp8', shape: [0], dtype: 'F8_E4M3' },
  ]), 'scaled fp8, bare marker', {
    quantization: 'fp8_e4m3fn_scaled', dtypes: { bf16: other, f32: linear, f8_e4m3fn: linear + 1 },
    numTensors: m.num_tensors + linear + 1, numParams: m.num_params + linear, warnings: [TEXT_LEN_WARNING],
  });
  // `.weight_scale` (other tools), no marker: the scales alone say "scaled".
  check(t, await inspectSparse('weight-scale.safetensors', fp8Entries(m.tensors, { scale: 'weight_scale' })), '.weight_scale', {
    quantization: 'fp8_e4m3fn_scaled', dtypes: { bf16: other, f32: linear, f8_e4m3fn: linear },
    numTensors: m.num_tensors + linear, numParams: m.num_params + linear, warnings: [TEXT_LEN_WARNING],
  });
  // Plain fp8 weights.
  check(t, await inspectSparse('fp8.safetensors', fp8Entries(m.tensors)), 'plain e4m3fn', {
    quantization: 'fp8_e4m3fn', dtypes: { bf16: other, f8_e4m3fn: linear },
    numTensors: m.num_tensors, numParams: m.num_params, warnings: [TEXT_LEN_WARNING],
  });
  check(t, await inspectSparse('e5m2.safetensors', fp8Entries(m.tensors, { dtype: 'F8_E5M2' })), 'plain e5m2', {
    quantization: 'fp8_e5m2', dtypes: { bf16: other, f8_e5m2: linear },
    numTensors: m.num_tensors, numParams: m.num_params, warnings: [TEXT_LEN_WARNING],
  });
  const mixed = fp8Entries(m.tensors).map((e) => (e.key === 'head.head.weight' ? { ...e, dtype: 'F8_E5M2' } : e));
  check(t, await inspectSparse('mixed.safetensors', mixed), 'both fp8 formats', {
    quantization: 'mixed', dtypes: { bf16: other, f8_e4m3fn: linear - 1, f8_e5m2: 1 },
    numTensors: m.num_tensors, numParams: m.num_params, warnings: [TEXT_LEN_WARNING],
  });

  // What the marker says: a float32 marker means e4m3fn; 2 elements disable fp8 matmul; a
  // marker naming the other format, a weight without its scale, and a marker without fp8
  // weights are reported.
  check(t, await inspectSparse('marker-2.safetensors', [
    ...fp8Entries(m.tensors, { scale: 'scale_weight' }), { key: 'scaled_fp8', shape: [2], dtype: 'F32' },
  ]), 'two-element float32 marker', {
    quantization: 'fp8_e4m3fn_scaled', dtypes: { bf16: other, f32: linear + 1, f8_e4m3fn: linear },
    numTensors: m.num_tensors + linear + 1, numParams: m.num_params + linear + 2,
    warnings: [TEXT_LEN_WARNING, 'the scaled_fp8 marker has 2 elements: its producer disabled fp8 matmul'],
  });
  check(t, await inspectSparse('marker-e5m2.safetensors', [
    ...fp8Entries(m.tensors, { scale: 'scale_weight', skipScale: 'head.head.weight' }),
    { key: 'scaled_fp8', shape: [0], dtype: 'F8_E5M2' },
  ]), 'e5m2 marker on e4m3fn weights, one scale missing', {
    quantization: 'fp8_e4m3fn_scaled', dtypes: { bf16: other, f32: linear - 1, f8_e4m3fn: linear, f8_e5m2: 1 },
    numTensors: m.num_tensors + linear, numParams: m.num_params + linear - 1,
    warnings: [TEXT_LEN_WARNING, 'the scaled_fp8 marker names fp8_e5m2 but the weights are fp8_e4m3fn',
      '1 fp8 weights have no scale_weight (scale 1 assumed)'],
  });
  check(t, await inspectSparse('marker-only.safetensors', [...m.tensors, { key: 'scaled_fp8', shape: [0], dtype: 'F8_E4M3' }]),
    'marker without fp8 weights', {
      quantization: 'none', dtypes: { bf16: m.num_tensors, f8_e4m3fn: 1 },
      numTensors: m.num_tensors + 1, numParams: m.num_params,
      warnings: [TEXT_LEN_WARNING, 'scale tensors present but no fp8 weights'],
    });
});

t.test('the forward diffusers renaming used below gives the names diffusers checkpoints have', async (t) => {
  t.equal(toDiffusers('blocks.3.cross_attn.k_img.weight'), 'blocks.3.attn2.add_k_proj.weight');
  t.equal(toDiffusers('blocks.3.cross_attn.norm_k_img.weight'), 'blocks.3.attn2.norm_added_k.weight');
  t.equal(toDiffusers('blocks.3.norm3.bias'), 'blocks.3.norm2.bias');
  t.equal(toDiffusers('blocks.3.modulation'), 'blocks.3.scale_shift_table');
  t.equal(toDiffusers('head.modulation'), 'scale_shift_table');
  t.equal(toDiffusers('img_emb.proj.4.weight'), 'condition_embedder.image_embedder.norm2.weight');
  t.equal(toDiffusers('blocks.0.self_attn.o.bias'), 'blocks.0.attn1.to_out.0.bias');
  t.equal(toDiffusers('patch_embedding.weight'), 'patch_embedding.weight');
});

t.test('diffusers WanTransformer3DModel names', async (t) => {
  for (const name of ['wan2.1_t2v_1.3B_dit', 'wan2.1_i2v_14B_480P_dit', 'wan2.1_flf2v_14B_720P_dit']) {
    const m = manifest(name);
    const renamed = m.tensors.map((e) => ({ ...e, key: toDiffusers(e.key) }));
    t.equal(new Set(renamed.map((e) => e.key)).size, m.num_tensors, `${name}: the renaming is one to one`);
    t.notOk(renamed.some((e) => /(^|\.)(self_attn|cross_attn|img_emb|time_embedding|text_embedding|modulation)\./.test(e.key + '.')),
      `${name}: no official module name is left`);
    // diffusers ships transformer/diffusion_pytorch_model(-0000i-of-0000n).safetensors.
    const info = await inspectSparseCheckpoint('diffusion_pytorch_model', renamed);
    t.equal(info.layout, 'diffusers', `${name}: layout`);
    t.equal(info.keyPrefix, '', `${name}: keyPrefix`);
    t.equal(info.family, 'wan-dit', `${name}: family`);
    t.equal(info.variant, m.config.dim === 1536 ? '1.3B' : '14B', `${name}: variant`);
    t.equal(info.task, m.config.model_type, `${name}: task`);
    t.strictSame(info.config, ditConfig(m.config, true), `${name}: config (cross_attn_norm 1 needs norm2 -> norm3)`);
    t.equal(info.numTensors, m.num_tensors, `${name}: numTensors`);
    t.equal(info.numParams, m.num_params, `${name}: numParams`);
    t.strictSame(info.dtypes, { bf16: m.num_tensors });
    t.equal(info.quantization, 'none');
    t.strictSame(info.warnings, [TEXT_LEN_WARNING], `${name}: warnings`);
    t.match(info.summary, /^layout\s+diffusers$/m);
  }
});

// Each diffusers name must land on exactly its official name: a file holding both the diffusers
// key and the official one (which the diffusers rules leave alone) must be refused as a
// collision naming that official key. norm2/norm3 cannot be probed so (the official norm3 is
// itself renamed); the config test above covers them.
t.test('each diffusers name maps to its official name (collision probes)', async (t) => {
  const m = manifest('wan2.1_flf2v_14B_720P_dit');
  const probes = m.tensors
    .map((e) => e.key)
    .filter((k) => !k.startsWith('blocks.') || k.startsWith('blocks.0.'))
    .filter((k) => !/\.norm[23]\./.test(k) && toDiffusers(k) !== k);
  // Top level: text/time embeddings 8, time_projection 2, head 3, img_emb 9; block 0:
  // modulation 1, self/cross q,k,v,o 16, their norm_q/norm_k 4, k_img/v_img 4, norm_k_img 1, ffn 4.
  t.equal(probes.length, 52, '52 distinct renamings in the top level and block 0 of FLF2V');
  for (const official of probes) {
    const diffusers = toDiffusers(official);
    await rejectsSparse(t, 'probe.safetensors', [
      { key: 'blocks.99.attn1.to_q.weight', shape: [1] },  // makes the file diffusers
      { key: diffusers, shape: [1] },
      { key: official, shape: [1] },
    ], (file) => new RegExp(`^${escape(file)}: tensors '(${escape(diffusers)}' and '${escape(official)}|${escape(official)}' and '${escape(diffusers)})' both map to '${escape(official)}'$`),
    `${diffusers} -> ${official}`);
  }
});

// Official Wan T5Encoder -> Hugging Face UMT5EncoderModel names.
function toHfT5(key: string): string {
  if (key === 'token_embedding.weight') return 'shared.weight';
  if (key === 'norm.weight') return 'encoder.final_layer_norm.weight';
  const b = /^blocks\.(\d+)\.(.*)$/.exec(key);
  if (!b) throw new Error(`toHfT5: ${key}`);
  const inner: Record<string, string> = {
    'attn.q.weight': 'layer.0.SelfAttention.q.weight', 'attn.k.weight': 'layer.0.SelfAttention.k.weight',
    'attn.v.weight': 'layer.0.SelfAttention.v.weight', 'attn.o.weight': 'layer.0.SelfAttention.o.weight',
    'pos_embedding.embedding.weight': 'layer.0.SelfAttention.relative_attention_bias.weight',
    'norm1.weight': 'layer.0.layer_norm.weight',
    'ffn.gate.0.weight': 'layer.1.DenseReluDense.wi_0.weight', 'ffn.fc1.weight': 'layer.1.DenseReluDense.wi_1.weight',
    'ffn.fc2.weight': 'layer.1.DenseReluDense.wo.weight', 'norm2.weight': 'layer.1.layer_norm.weight',
  };
  if (!(b[2] in inner)) throw new Error(`toHfT5: ${key}`);
  return `encoder.block.${b[1]}.${inner[b[2]]}`;
}

t.test('umT5 under Hugging Face T5 names, and the embedded tokenizer', async (t) => {
  const m = manifest('umt5_xxl_encoder');
  const config = umt5Config(m.config);
  const hf = m.tensors.map((e) => ({ ...e, key: toHfT5(e.key) }));
  const info = await inspectSparse('hf-t5.safetensors', hf);
  t.equal(info.layout, 'hf-t5');
  t.equal(info.keyPrefix, '');
  t.equal(info.family, 'umt5');
  t.equal(info.variant, 'xxl');
  t.equal(info.task, '');
  t.strictSame(info.config, config, 'config as for the official names');
  t.equal(info.numTensors, m.num_tensors);
  t.equal(info.numParams, m.num_params);
  t.strictSame(info.warnings, []);
  t.match(info.summary, /^model\s+umt5 \(xxl\)\nlayout\s+hf-t5\n/);

  // The tied `encoder.embed_tokens` copy is dropped, not a collision; decoder tensors are named.
  const embed = hf.find((e) => e.key === 'shared.weight')!;
  const tied = await inspectSparse('hf-t5-tied.safetensors', [
    ...hf, { key: 'encoder.embed_tokens.weight', shape: embed.shape },
    { key: 'decoder.block.0.layer.0.SelfAttention.q.weight', shape: [4096, 4096] },
    { key: 'decoder.final_layer_norm.weight', shape: [4096] },
  ]);
  t.equal(tied.family, 'umt5');
  t.strictSame(tied.config, config);
  t.equal(tied.numTensors, m.num_tensors + 3, 'numTensors counts every tensor in the file');
  t.equal(tied.numParams, m.num_params + elements(embed.shape) + 4096 * 4096 + 4096);
  t.strictSame(tied.warnings, ['holds 2 decoder tensors; only the encoder is used']);
  // Not a tie when the shapes differ: both would be token_embedding.weight.
  await rejectsSparse(t, 'hf-t5-untied.safetensors', [...hf, { key: 'encoder.embed_tokens.weight', shape: [32128, 4096] }],
    (file) => new RegExp(`^${escape(file)}: tensors '(shared\\.weight|encoder\\.embed_tokens\\.weight)' and '(shared\\.weight|encoder\\.embed_tokens\\.weight)' both map to 'token_embedding\\.weight'$`));

  // Comfy-Org umT5: official names plus the SentencePiece model as a uint8 tensor.
  const withSpiece = await inspectSparse('umt5-spiece.safetensors', [...m.tensors, { key: 'spiece_model', shape: [4548313], dtype: 'U8' }]);
  t.equal(withSpiece.family, 'umt5');
  t.equal(withSpiece.layout, 'official');
  t.strictSame(withSpiece.config, { ...config, spiece_model_bytes: 4548313 });
  t.strictSame(withSpiece.dtypes, { bf16: m.num_tensors, u8: 1 });
});

t.test('two keys that are one tensor after normalisation are refused, naming both and the file', async (t) => {
  const both = (a: string, b: string, to: string) => (file: string) =>
    new RegExp(`^${escape(file)}: tensors '(${escape(a)}' and '${escape(b)}|${escape(b)}' and '${escape(a)})' both map to '${escape(to)}'$`);
  await rejectsSparse(t, 'prefix-collision.safetensors', [
    { key: 'model.diffusion_model.patch_embedding.weight', shape: [1536, 16, 1, 2, 2] },
    { key: 'model.diffusion_model.head.head.weight', shape: [64, 1536] },
    { key: 'head.head.weight', shape: [64, 1536] },
  ], both('model.diffusion_model.head.head.weight', 'head.head.weight', 'head.head.weight'), 'prefixed and bare');
  await rejectsSparse(t, 'scale-collision.safetensors', [
    { key: 'blocks.0.ffn.0.weight', shape: [8960, 1536], dtype: 'F8_E4M3' },
    { key: 'blocks.0.ffn.0.scale_weight', shape: [], dtype: 'F32' },
    { key: 'blocks.0.ffn.0.weight_scale', shape: [], dtype: 'F32' },
  ], both('blocks.0.ffn.0.scale_weight', 'blocks.0.ffn.0.weight_scale', 'blocks.0.ffn.0.scale_weight'), '.scale_weight and .weight_scale');
  await rejectsSparse(t, 'diffusers-collision.safetensors', [
    { key: 'blocks.0.attn2.add_k_proj.weight', shape: [5120, 5120] },
    { key: 'blocks.0.cross_attn.k_img.weight', shape: [5120, 5120] },
  ], both('blocks.0.attn2.add_k_proj.weight', 'blocks.0.cross_attn.k_img.weight', 'blocks.0.cross_attn.k_img.weight'), 'diffusers and official');
});
