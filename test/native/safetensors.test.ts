// safetensors reading and writing, checked against the files Python wrote in shared/golden.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { loadCheckpoint, loadSafetensors, saveSafetensors, Tensor } from '../../lib/index';
import { buildSafetensors, decodeRaw, goldenDir, readRawSafetensors, tempDir, toNumbers, weightsDir } from '../helpers';

const DTYPE_NAME: Record<string, string> = { F64: 'f64', F32: 'f32', BF16: 'bf16', I64: 'i64', I32: 'i32', U8: 'u8', BOOL: 'bool' };

const goldenFiles = [
  ...fs.readdirSync(goldenDir).filter((f) => f.endsWith('.safetensors')).map((f) => path.join(goldenDir, f)),
  ...fs.readdirSync(weightsDir).filter((f) => f.endsWith('.safetensors')).map((f) => path.join(weightsDir, f)),
];

t.test('every shared golden file loads and reads back what Python wrote', async (t) => {
  t.ok(goldenFiles.length >= 15, `${goldenFiles.length} golden files`);
  const index = JSON.parse(fs.readFileSync(path.join(goldenDir, 'index.json'), 'utf8'));
  let tensors = 0, values = 0;
  for (const file of goldenFiles) {
    const raw = readRawSafetensors(file);
    const { tensors: loaded, metadata } = await loadSafetensors(file);
    t.same(metadata, raw.metadata ?? {}, `${path.basename(file)}: metadata`);
    t.same([...loaded.keys()].sort(), Object.keys(raw.header).sort(), `${path.basename(file)}: keys`);
    const listed = index.files[path.relative(goldenDir, file)];
    if (listed?.num_tensors !== undefined) t.equal(loaded.size, listed.num_tensors, `${path.basename(file)}: count matches index.json`);
    let mismatched = 0;
    for (const [name, entry] of Object.entries(raw.header)) {
      const x = loaded.get(name)!;
      if (x.dtype !== DTYPE_NAME[entry.dtype] || x.shape.join() !== entry.shape.join()) mismatched++;
      const want = decodeRaw(entry.dtype, raw.data.subarray(entry.data_offsets[0], entry.data_offsets[1]));
      const got = toNumbers(x.toTypedArray());
      if (got.length !== want.length || got.some((v, i) => !Object.is(v, want[i]))) mismatched++;
      tensors++;
      values += want.length;
    }
    t.equal(mismatched, 0, `${path.basename(file)}: dtype, shape and every value equal the raw bytes`);
  }
  t.comment(`${tensors} tensors, ${values} values compared exactly`);
});

t.test('the golden index agrees on dtypes and shapes', async (t) => {
  const index = JSON.parse(fs.readFileSync(path.join(goldenDir, 'index.json'), 'utf8'));
  const { tensors } = await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const listed = index.files['golden_dit_t2v.safetensors'].tensors;
  const names: Record<string, string> = { float32: 'f32', float64: 'f64', int64: 'i64' };
  for (const [name, info] of Object.entries<any>(listed)) {
    t.same(tensors.get(name)?.shape, info.shape, `${name} shape`);
    t.equal(tensors.get(name)?.dtype, names[info.dtype], `${name} dtype`);
  }
  t.same(toNumbers(tensors.get('a.t')!.toTypedArray()), [999]);
  t.same(toNumbers(tensors.get('a.seq_len')!.toTypedArray()), [18]);
});

t.test('save then load round-trips every dtype, metadata and an 8-byte aligned data section', async (t) => {
  const dir = tempDir();
  const file = path.join(dir, 'all.safetensors');
  const tensors = new Map<string, Tensor>([
    ['f64', Tensor.fromTypedArray(new Float64Array([1.5, -2]), [2])],
    ['f32', Tensor.fromTypedArray(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3])],
    ['f16', Tensor.fromTypedArray(new Uint16Array([0x3c00, 0x7c00]), [2], 'f16')],
    ['bf16', Tensor.fromTypedArray(new Uint16Array([0x3f80, 0x4049, 0x0001]), [3], 'bf16')],
    ['e4m3', Tensor.fromTypedArray(new Uint8Array([0x38, 0x7e, 0x01]), [3], 'f8_e4m3fn')],
    ['e5m2', Tensor.fromTypedArray(new Uint8Array([0x3c, 0x7c]), [2], 'f8_e5m2')],
    ['i64', Tensor.fromTypedArray(new BigInt64Array([-1n, 1n << 40n]), [2])],
    ['i32', Tensor.fromTypedArray(new Int32Array([7]), [1])],
    ['i16', Tensor.fromTypedArray(new Int16Array([-3]), [1])],
    ['i8', Tensor.fromTypedArray(new Int8Array([-4]), [1])],
    ['u8', Tensor.fromTypedArray(new Uint8Array([250]), [1])],
    ['bool', Tensor.fromTypedArray(new Uint8Array([1, 0]), [2], 'bool')],
    ['empty', Tensor.fromTypedArray(new Float32Array(0), [0, 4])],
    ['strange "name"\n', Tensor.fromTypedArray(new Float32Array([9]), [1])],
  ]);
  await saveSafetensors(file, tensors, { format: 'pt', note: 'ünïcode "quoted"' });
  const raw = readRawSafetensors(file);
  t.equal(raw.metadata?.note, 'ünïcode "quoted"', 'independent JSON.parse reads the metadata');
  t.equal((8 + Number(fs.readFileSync(file).readBigUInt64LE(0))) % 8, 0, 'data section is 8-byte aligned');
  t.same(raw.header.e4m3, { dtype: 'F8_E4M3', shape: [3], data_offsets: raw.header.e4m3.data_offsets });
  const back = await loadSafetensors(file);
  t.same(back.metadata, { format: 'pt', note: 'ünïcode "quoted"' });
  for (const [name, x] of tensors) {
    const y = back.tensors.get(name)!;
    t.equal(y.dtype, x.dtype, `${name} dtype`);
    t.same(y.shape, x.shape, `${name} shape`);
    t.same(toNumbers(y.toTypedArray()), toNumbers(x.toTypedArray()), `${name} values`);
  }
  t.same(fs.readdirSync(dir), ['all.safetensors'], 'no temporary file is left behind');
});

t.test('a failed save leaves the previous file intact and no temporary file', async (t) => {
  const dir = tempDir();
  const file = path.join(dir, 'keep.safetensors');
  await saveSafetensors(file, { a: Tensor.fromTypedArray(new Float32Array([1]), [1]) });
  const before = fs.readFileSync(file);
  const disposed = Tensor.fromTypedArray(new Float32Array([2]), [1]);
  disposed.dispose();
  await t.rejects(saveSafetensors(file, { a: disposed }), { code: 'WAN_INVALID_TENSOR', message: /tensor 'a' has been disposed/ });
  await t.rejects(saveSafetensors(path.join(dir, 'missing', 'x.safetensors'), { a: Tensor.fromTypedArray(new Float32Array([1]), [1]) }),
    { code: 'WAN_IO', message: /cannot create temporary file/ });
  await t.rejects(saveSafetensors(file, { a: 3 as any }), { code: 'WAN_INVALID_TENSOR', message: /tensor 'a' is not a Tensor/ });
  await t.rejects(saveSafetensors(file, {}, { n: 1 as any }), { code: 'WAN_INVALID_OPTION', message: "Expected a string for metadata 'n' but received 1 of type number" });
  const controller = new AbortController();
  controller.abort();
  await t.rejects(saveSafetensors(file, { a: Tensor.fromTypedArray(new Float32Array([5]), [1]) }, {}, { signal: controller.signal }),
    { code: 'WAN_ABORTED' });
  t.ok(fs.readFileSync(file).equals(before), 'the old file is unchanged');
  t.same(fs.readdirSync(dir), ['keep.safetensors'], 'no temporary file is left behind');
});

t.test('sharded checkpoints load from their index or a list, and shards are checked', async (t) => {
  const dir = tempDir();
  const source = readRawSafetensors(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'));
  const names = Object.keys(source.header);
  const shard = (list: string[]) => Object.fromEntries(list.map((n) => {
    const e = source.header[n];
    return [n, { dtype: e.dtype, shape: e.shape, bytes: source.data.subarray(e.data_offsets[0], e.data_offsets[1]) }];
  }));
  const half = Math.floor(names.length / 2);
  fs.writeFileSync(path.join(dir, 'model-00001-of-00002.safetensors'), buildSafetensors(shard(names.slice(0, half)), { format: 'pt' }));
  fs.writeFileSync(path.join(dir, 'model-00002-of-00002.safetensors'), buildSafetensors(shard(names.slice(half))));
  const weightMap = Object.fromEntries(names.map((n, i) => [n, i < half ? 'model-00001-of-00002.safetensors' : 'model-00002-of-00002.safetensors']));
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  fs.writeFileSync(indexFile, JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));

  const whole = await loadSafetensors(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'));
  const progress: number[] = [];
  const viaIndex = await loadSafetensors(indexFile, { onProgress: (p) => progress.push(p.step) });
  t.same(progress, [0, 1, 2], 'progress per shard');
  const viaList = await loadCheckpoint([path.join(dir, 'model-00001-of-00002.safetensors'), path.join(dir, 'model-00002-of-00002.safetensors')]);
  for (const loaded of [viaIndex, viaList]) {
    t.equal(loaded.tensors.size, whole.tensors.size);
    t.equal(loaded.metadata.format, 'pt');
    let differing = 0;
    for (const [name, x] of whole.tensors) {
      const want = toNumbers(x.toTypedArray());
      if (toNumbers(loaded.tensors.get(name)!.toTypedArray()).some((v, i) => v !== want[i])) differing++;
    }
    t.equal(differing, 0, 'every tensor equals the unsharded file');
  }

  // An index that puts a tensor in the wrong shard, one naming a tensor no shard has, and
  // two shards holding the same tensor.
  fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...weightMap, [names[0]]: 'model-00002-of-00002.safetensors' } }));
  await t.rejects(loadSafetensors(indexFile), { code: 'WAN_BAD_CHECKPOINT', message: new RegExp(`tensor '${names[0].replace(/\./g, '\\.')}' should be in .*00002.* but was found in .*00001`) });
  fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...weightMap, 'ghost.weight': 'model-00002-of-00002.safetensors' } }));
  await t.rejects(loadSafetensors(indexFile), { code: 'WAN_BAD_CHECKPOINT', message: /tensor 'ghost\.weight' should be in .* but is in no shard/ });
  fs.writeFileSync(indexFile, '{"weight_map": 3}');
  await t.rejects(loadSafetensors(indexFile), { code: 'WAN_BAD_CHECKPOINT', message: /expected an object "weight_map"/ });
  fs.writeFileSync(indexFile, '{nope');
  await t.rejects(loadSafetensors(indexFile), { code: 'WAN_BAD_CHECKPOINT', message: /shard index is not valid JSON/ });
  fs.writeFileSync(path.join(dir, 'dup.safetensors'), buildSafetensors(shard([names[0]])));
  await t.rejects(loadCheckpoint([path.join(dir, 'model-00001-of-00002.safetensors'), path.join(dir, 'dup.safetensors')]),
    { code: 'WAN_BAD_CHECKPOINT', message: new RegExp(`dup\\.safetensors: tensor '${names[0].replace(/\./g, '\\.')}' also appears in .*00001`) });
});

t.test('lazy loading (populate: false) reads the same values', async (t) => {
  const file = path.join(weightsDir, 'tiny_vae.bf16.safetensors');
  const eager = await loadSafetensors(file);
  const lazy = await loadSafetensors(file, { populate: false });
  const name = [...eager.tensors.keys()][5];
  t.same(toNumbers(lazy.tensors.get(name)!.toTypedArray()), toNumbers(eager.tensors.get(name)!.toTypedArray()));
});

t.test('misaligned data is copied, not read unaligned', async (t) => {
  // A hand-made file whose header is not padded: the f32 data starts at an odd offset.
  const json = JSON.stringify({ x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } });
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const data = Buffer.alloc(8);
  data.writeFloatLE(1.25, 0);
  data.writeFloatLE(-3, 4);
  const file = path.join(tempDir(), 'odd.safetensors');
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), data]));
  t.equal((8 + json.length) % 4 !== 0, true, 'the data really is misaligned');
  const { tensors } = await loadSafetensors(file);
  t.same(toNumbers(tensors.get('x')!.toTypedArray()), [1.25, -3]);
});

t.test('loadSafetensors refuses other formats and bad paths clearly', async (t) => {
  const pth = path.join(tempDir(), 'model.pth');
  fs.writeFileSync(pth, Buffer.from('PK\x03\x04 not really'));
  await t.rejects(loadSafetensors(pth), { code: 'WAN_BAD_CHECKPOINT', message: /model\.pth: not a safetensors file .* use loadCheckpoint/ });
  await t.rejects(loadSafetensors('/no/such/file.safetensors'), { code: 'WAN_IO', message: /\/no\/such\/file\.safetensors: .*no such file/i });
  await t.rejects(loadSafetensors(42 as any), { code: 'WAN_INVALID_OPTION', message: 'Expected a file path or a non-empty array of file paths for path but received 42 of type number' });
  await t.rejects(loadSafetensors([]), { code: 'WAN_INVALID_OPTION' });
  await t.rejects(loadSafetensors(pth, { populate: 'yes' as any }), { code: 'WAN_INVALID_OPTION', message: 'Expected a boolean for populate but received "yes" of type string' });
});
