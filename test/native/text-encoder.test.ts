// umT5 against the official T5Encoder's numbers (shared/golden/golden_t5), and its tokenizer
// against the SentencePiece library's own encoding.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { loadSafetensors, promptWeights, saveSafetensors, Tensor, TextEncoder } from '../../lib/index';
import { decodeE4m3fn, encodeE4m3fn, goldenDir, maxAbsDiff, tempDir, toNumbers, weightsDir } from '../helpers';

const TOLERANCE = 1e-5;
const dir = tempDir('wan-t5-');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

async function golden() {
  return (await loadSafetensors(path.join(goldenDir, 'golden_t5.safetensors'))).tensors;
}

t.test('encoder output and intermediates, from the F32 and the BF16 file', async (t) => {
  const g = await golden();
  for (const dtype of ['f32', 'bf16']) {
    const enc = await TextEncoder.load(path.join(weightsDir, `tiny_umt5_enc.${dtype}.safetensors`));
    t.match(enc.config, { vocab: 256, dim: 32, dimAttn: 32, dimFfn: 64, numHeads: 4, numLayers: 2, numBuckets: 32, sharedPos: false });
    for (const c of ['a', 'b']) {
      const out = await enc.encodeTokens(g.get(`${c}.ids`)!, g.get(`${c}.mask`)!);
      const err = maxAbsDiff(out, g.get(`${c}.out`)!);
      t.ok(err <= TOLERANCE, `${dtype} case ${c}: max abs error ${err.toExponential(2)} <= ${TOLERANCE}`);
    }
    const { intermediates } = await enc.trace(g.get('a.ids')!, g.get('a.mask')!);
    for (const name of ['token_embedding_out', 'block0_pos_bias', 'block0_out', 'block1_pos_bias', 'block1_out']) {
      const err = maxAbsDiff(intermediates.get(name)!, g.get(`im.${name}`)!);
      t.ok(err <= TOLERANCE, `${dtype} ${name}: max abs error ${err.toExponential(2)}`);
    }
    enc.dispose();
  }
});

t.test('the relative position buckets of -511..511 equal the official table', async (t) => {
  const g = await golden();
  const enc = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'));
  // block0_pos_bias at length 512 looks up the bucket of (key - query); reading the table back
  // through a one-hot embedding recovers the buckets: make head h's table row b equal b.
  const ids = Tensor.fromTypedArray(new BigInt64Array(512), [1, 512]);
  const mask = Tensor.fromTypedArray(new BigInt64Array(512).fill(1n), [1, 512]);
  const weights = (await loadSafetensors(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'))).tensors;
  const table = new Float32Array(32 * 4);
  for (let b = 0; b < 32; b++) for (let h = 0; h < 4; h++) table[b * 4 + h] = b;
  weights.set('blocks.0.pos_embedding.embedding.weight', Tensor.fromTypedArray(table, [32, 4]));
  const file = path.join(dir, 'buckets.safetensors');
  await saveSafetensors(file, weights);
  const probe = await TextEncoder.load(file);
  const { intermediates } = await probe.trace(ids, mask);
  const bias = intermediates.get('block0_pos_bias')!.toTypedArray() as Float32Array;  // [1, 4, 512, 512]
  // Query 511 against keys 0..511 gives rel -511..0; query 0 against keys 1..511 gives 1..511.
  const buckets = [...Array.from({ length: 512 }, (_, k) => bias[511 * 512 + k]), ...Array.from({ length: 511 }, (_, k) => bias[k + 1])];
  t.same(buckets, toNumbers(g.get('rel_bucket_bidirectional_m511_p511')!.toTypedArray()));
  enc.dispose();
  probe.dispose();
});

t.test('Hugging Face T5 names load to the same numbers', async (t) => {
  const g = await golden();
  const weights = (await loadSafetensors(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'))).tensors;
  const hf = new Map<string, Tensor>();
  const rename: [RegExp, string][] = [
    [/^token_embedding\.weight$/, 'shared.weight'],
    [/^norm\.weight$/, 'encoder.final_layer_norm.weight'],
    [/^blocks\.(\d+)\.norm1\.weight$/, 'encoder.block.$1.layer.0.layer_norm.weight'],
    [/^blocks\.(\d+)\.attn\.([qkvo])\.weight$/, 'encoder.block.$1.layer.0.SelfAttention.$2.weight'],
    [/^blocks\.(\d+)\.pos_embedding\.embedding\.weight$/, 'encoder.block.$1.layer.0.SelfAttention.relative_attention_bias.weight'],
    [/^blocks\.(\d+)\.norm2\.weight$/, 'encoder.block.$1.layer.1.layer_norm.weight'],
    [/^blocks\.(\d+)\.ffn\.gate\.0\.weight$/, 'encoder.block.$1.layer.1.DenseReluDense.wi_0.weight'],
    [/^blocks\.(\d+)\.ffn\.fc1\.weight$/, 'encoder.block.$1.layer.1.DenseReluDense.wi_1.weight'],
    [/^blocks\.(\d+)\.ffn\.fc2\.weight$/, 'encoder.block.$1.layer.1.DenseReluDense.wo.weight'],
  ];
  for (const [k, v] of weights) {
    const rule = rename.find(([re]) => re.test(k));
    t.ok(rule, `${k} has a Hugging Face name`);
    hf.set(k.replace(rule![0], rule![1]), v);
  }
  const file = path.join(dir, 'umt5_hf.safetensors');
  await saveSafetensors(file, hf);
  const official = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'));
  const renamed = await TextEncoder.load(file);
  const a = await official.encodeTokens(g.get('a.ids')!, g.get('a.mask')!);
  const b = await renamed.encodeTokens(g.get('a.ids')!, g.get('a.mask')!);
  t.equal(maxAbsDiff(a, b), 0, 'identical outputs from both naming schemes');
});

// A tiny SentencePiece model trained here with Debian's spm_train (T5 conventions: pad 0,
// eos 1, unk 2), checked against spm_encode, the library's own command line.
function trainTokenizer(): string | undefined {
  const corpus = path.join(dir, 'corpus.txt');
  const lines: string[] = [];
  const words = ['a', 'cat', 'walks', 'on', 'the', 'beach', 'at', 'sunset', 'camera', 'pans', 'slowly', 'over', 'waves', 'city', 'night', 'neon', 'rain'];
  for (let i = 0; i < 600; i++) lines.push(Array.from({ length: 8 }, (_, j) => words[(i * 7 + j * 3) % words.length]).join(' '));
  fs.writeFileSync(corpus, lines.join('\n'));
  const r = spawnSync('spm_train', [`--input=${corpus}`, `--model_prefix=${path.join(dir, 'spiece')}`, '--vocab_size=40',
    '--model_type=unigram', '--character_coverage=1.0', '--pad_id=0', '--eos_id=1', '--unk_id=2', '--bos_id=-1'], { encoding: 'utf8' });
  return r.status === 0 ? path.join(dir, 'spiece.model') : undefined;
}

t.test('the tokenizer: SentencePiece ids, </s>, padding, truncation and the mask', async (t) => {
  const model = trainTokenizer();
  if (!model) return t.fail('spm_train (Debian package sentencepiece) must be installed: scripts/setup.sh installs it');
  const enc = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { tokenizer: model, textLen: 16 });
  t.equal(enc.tokenizerSource, model);
  const texts = ['a cat walks on the beach', '  the   city at\tnight &amp; neon rain  ', 'camera pans slowly over waves '.repeat(4)];
  const expected = spawnSync('spm_encode', [`--model=${model}`, '--output_format=id'],
    { input: texts.map((s) => s.replace(/&amp;/g, '&').replace(/\s+/g, ' ').trim()).join('\n'), encoding: 'utf8' })
    .stdout.trim().split('\n').map((line) => line.split(' ').map(Number));
  const { ids, mask } = enc.tokenize(texts);
  t.same(ids.shape, [3, 16]);
  t.equal(ids.dtype, 'i64');
  const idv = toNumbers(ids.toTypedArray()), mv = toNumbers(mask.toTypedArray());
  for (let i = 0; i < 3; i++) {
    const want = [...expected[i].slice(0, 15), 1];
    const row = idv.slice(i * 16, i * 16 + 16), mrow = mv.slice(i * 16, i * 16 + 16);
    t.same(row.slice(0, want.length), want, `text ${i}: spm ids then </s> (cut to 15 + </s>)`);
    t.same(row.slice(want.length), new Array(16 - want.length).fill(0), `text ${i}: padded with 0`);
    t.same(mrow, [...new Array(want.length).fill(1), ...new Array(16 - want.length).fill(0)], `text ${i}: mask`);
  }
  t.ok(expected[2].length > 15, 'the long text was really truncated');

  // The same model embedded as ComfyUI does, as a u8 `spiece_model` tensor in the checkpoint.
  const weights = (await loadSafetensors(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'))).tensors;
  const bytes = fs.readFileSync(model);
  weights.set('spiece_model', Tensor.fromTypedArray(new Uint8Array(bytes), [bytes.length], 'u8'));
  const embeddedFile = path.join(dir, 'umt5_with_spiece.safetensors');
  await saveSafetensors(embeddedFile, weights);
  const embedded = await TextEncoder.load(embeddedFile, { textLen: 16 });
  t.match(embedded.tokenizerSource, /umt5_with_spiece\.safetensors \(tensor 'spiece_model'\)$/);
  t.same(toNumbers(embedded.tokenize(texts).ids.toTypedArray()), idv, 'same ids from the embedded tokenizer');

  // encode(): batched prompts, trimmed to their lengths, the official negative prompt by default.
  const embeds = await enc.encode({ positive: [texts[0], texts[1]], negative: 'rain' });
  t.equal(embeds.promptEmbeds.length, 2);
  t.same(embeds.promptEmbeds[0].shape, [expected[0].length + 1, 32]);
  t.same(embeds.negativePromptEmbeds[0].shape, [2, 32], "'rain' and </s>");
  const direct = await enc.encodeTokens(ids, mask);
  const rows = toNumbers(direct.toTypedArray()).slice(0, (expected[0].length + 1) * 32);
  t.same(toNumbers(embeds.promptEmbeds[0].toTypedArray()), rows, 'encode() rows equal encodeTokens rows');

  // The disk cache: the second call reads what the first wrote.
  const cache = path.join(dir, 'cache');
  const first = await enc.encode({ positive: texts[0], negative: 'rain' }, { diskCache: cache });
  t.equal(fs.readdirSync(cache).length, 2);
  const second = await enc.encode({ positive: texts[0], negative: 'rain' }, { diskCache: cache });
  t.same(toNumbers(second.promptEmbeds[0].toTypedArray()), toNumbers(first.promptEmbeds[0].toTypedArray()));
  // A damaged entry is a miss: encoded again and written over, not an error on every later run.
  for (const f of fs.readdirSync(cache)) fs.writeFileSync(path.join(cache, f), 'overwritten by something else');
  const third = await enc.encode({ positive: texts[0], negative: 'rain' }, { diskCache: cache });
  t.same(toNumbers(third.promptEmbeds[0].toTypedArray()), toNumbers(first.promptEmbeds[0].toTypedArray()), 'damaged entries: encoded again');
  for (const f of fs.readdirSync(cache))
    t.same((await loadSafetensors(path.join(cache, f))).tensors.get('embeds')?.shape.length, 2, `${f}: rewritten`);

  // The wrapper's (text:weight): the text encoded without the syntax, the prompt's whole
  // embedding scaled by each weight; the negative prompt as written.
  const plain = (await enc.encode({ positive: 'a red car', negative: 'rain' })).promptEmbeds[0];
  const values = (x: Tensor) => toNumbers(x.toTypedArray());
  const scaledBy = (k: number) => values(plain).map((v) => Math.fround(v * k));
  const one = await enc.encode({ positive: 'a (red:1.5) car', negative: '(rain:2)' });
  t.same(values(one.promptEmbeds[0]), scaledBy(1.5), '(red:1.5): the embedding of the text alone, times 1.5');
  const asWritten = toNumbers(enc.tokenize(['(rain:2)']).mask.toTypedArray()).reduce((a, b) => a + b, 0);
  t.same(one.negativePromptEmbeds[0].shape, [asWritten, 32], 'the negative prompt is encoded as written (no weights)');
  const two = await enc.encode({ positive: 'a (red:1.5) (car:0.5)', negative: 'rain' });
  t.same(values(two.promptEmbeds[0]), scaledBy(0.75), 'two weights: times their product');
  const off = await enc.encode({ positive: 'a (red:1.5) car', negative: 'rain' }, { promptWeights: false });
  const offTokens = toNumbers(enc.tokenize(['a (red:1.5) car']).mask.toTypedArray()).reduce((a, b) => a + b, 0);
  t.same(off.promptEmbeds[0].shape, [offTokens, 32], 'promptWeights: false encodes the text as written');
  t.ok(offTokens > plain.shape[0], `(${offTokens} tokens against ${plain.shape[0]})`);
  await t.rejects(enc.encode({ positive: 'a (red:1.2.3) car' }), { code: 'WAN_INVALID_OPTION',
    message: 'Expected a number for the weight of "(red:1.2.3)" in the prompt but received "1.2.3"' });
});

t.test('promptWeights reads (text:weight) as the wrapper does', async (t) => {
  t.same(promptWeights('a cat'), { text: 'a cat', scale: 1 });
  t.same(promptWeights('a (red:1.5) car, (red:1.5) again'), { text: 'a red car, red again', scale: 1.5 }, 'every copy replaced; one text counts once');
  t.same(promptWeights('(a:2) (b:3) (a:0.5)'), { text: 'a b a', scale: 1.5 }, 'a text given twice: its last weight');
  // As Python's re.findall(r'\((.*?):([\d\.]+)\)', ...): the match starts at the first '(' and
  // runs to the first ':<number>)' after it.
  t.same(promptWeights('x (not a weight) (y:2)'), { text: 'x not a weight) (y', scale: 2 }, 'the wrapper\'s regex, quirks and all');
  t.same(promptWeights('(smile:)'), { text: '(smile:)', scale: 1 }, 'no number, no weight');
});

t.test('a missing or corrupt tokenizer is a clear error naming where it looked', async (t) => {
  const enc = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'));
  t.equal(enc.tokenizerSource, null);
  t.throws(() => enc.tokenize(['hello']), { code: 'WAN_BAD_CHECKPOINT', message: /no tokenizer: looked for the tokenizer option, a 'spiece_model' tensor in .*tiny_umt5_enc\.f32\.safetensors and .*weights\/spiece\.model/ });
  const corrupt = path.join(dir, 'corrupt.model');
  fs.writeFileSync(corrupt, 'not a protobuf at all');
  await t.rejects(TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { tokenizer: corrupt }),
    { code: 'WAN_BAD_CHECKPOINT', message: new RegExp(`${corrupt.replace(/[.]/g, '\\.')}: not a SentencePiece model`) });
  await t.rejects(TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { tokenizer: path.join(dir, 'nope.model') }),
    { code: 'WAN_IO', message: /tokenizer: cannot read .*nope\.model/ });
  await t.rejects(TextEncoder.load(path.join(weightsDir, 'tiny_vae.f32.safetensors')), { code: 'WAN_BAD_CHECKPOINT', message: /not a umT5 encoder: no tensor 'token_embedding\.weight'/ });
});

t.test('scaled fp8 (ComfyUI umt5_xxl_fp8_e4m3fn_scaled) computes what its dequantised values give', async (t) => {
  const g = await golden();
  const weights = (await loadSafetensors(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'))).tensors;
  const fp8 = new Map<string, Tensor>(), dequantised = new Map<string, Tensor>();
  for (const [k, v] of weights) {
    if (!(k.startsWith('blocks.') && v.shape.length === 2 && !k.includes('pos_embedding'))) {
      fp8.set(k, v);
      dequantised.set(k, v);
      continue;
    }
    const values = v.toTypedArray() as Float32Array;
    const scale = Math.fround(values.reduce((m, x) => Math.max(m, Math.abs(x)), 0) / 448);
    const codes = encodeE4m3fn(values.map((x) => x / scale));
    fp8.set(k, Tensor.fromTypedArray(codes, v.shape, 'f8_e4m3fn'));
    fp8.set(k.replace(/\.weight$/, '.scale_weight'), Tensor.fromTypedArray(new Float32Array([scale]), []));
    dequantised.set(k, Tensor.fromTypedArray(Float32Array.from(codes, (c) => Math.fround(decodeE4m3fn(c) * scale)), v.shape));
  }
  fp8.set('scaled_fp8', Tensor.fromTypedArray(new Uint8Array(0), [0], 'f8_e4m3fn'));
  const fp8File = path.join(dir, 'umt5_fp8_scaled.safetensors'), refFile = path.join(dir, 'umt5_dequantised.safetensors');
  await saveSafetensors(fp8File, fp8);
  await saveSafetensors(refFile, dequantised);
  const a = await (await TextEncoder.load(fp8File)).encodeTokens(g.get('a.ids')!, g.get('a.mask')!);
  const b = await (await TextEncoder.load(refFile)).encodeTokens(g.get('a.ids')!, g.get('a.mask')!);
  const err = maxAbsDiff(a, b);
  t.ok(err <= 1e-6, `max abs difference ${err.toExponential(2)} from the dequantised f32 file`);
});
