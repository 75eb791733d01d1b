// The text side of the demo model (tools/train-demo/README.md, step 1):
//  - a SentencePiece vocabulary of the demo's words (plus letters, so any lowercase word
//    still tokenizes), stored in the encoder file as ComfyUI does (`spiece_model`);
//  - a small umT5 encoder with random, frozen weights, whose relative-position biases are
//    set so that one head reads the previous word and one the next (see positionBias);
//  - every training prompt encoded by that file through TextEncoder, exactly as the demo
//    will encode it, into the prompt file the C++ trainer reads.
//
//   node dist/tools/train-demo/prepare.js <out-dir> [seed]
import * as fs from 'node:fs';
import * as path from 'node:path';

import { demoPrompt, readDemoSpec, trainingCombinations, DEMO_FILES } from '../../lib/demo';
import { native } from '../../lib/native';
import { saveSafetensors, Tensor, TextEncoder } from '../../lib/index';
import { sentencePieceFromTokenizerJson } from '../../lib/tokenizer-json';

const T5 = { dim: 64, dimAttn: 64, dimFfn: 128, heads: 4, layers: 2, buckets: 32 };
const TEXT_LEN = 16;  // the demo DiT's text_len (models/demo/demo.json)

// Unigram pieces: whole words score far above spelling them out letter by letter.
function vocabulary(words: string[]): Uint8Array {
  const letters = 'abcdefghijklmnopqrstuvwxyz'.split('');
  const vocab: [string, number][] = [['<pad>', 0], ['</s>', 0], ['<unk>', 0], ['\u2581', -8]];
  for (const w of words) vocab.push(['\u2581' + w, -1]);
  for (const l of letters) vocab.push([l, -10]);
  const tokenizer = {
    model: { type: 'Unigram', unk_id: 2, vocab, byte_fallback: false },
    added_tokens: [
      { id: 0, content: '<pad>', special: true },
      { id: 1, content: '</s>', special: true },
      { id: 2, content: '<unk>', special: true },
    ],
    normalizer: { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' },
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always' },
  };
  return sentencePieceFromTokenizerJson(tokenizer, 'demo vocabulary');
}

// T5's relative-position buckets (bidirectional, 32 buckets): offset 0 -> 0, -n -> n and
// +n -> 16 + n for small n. A random umT5 mixes its words weakly, so the embedding of "blue"
// would hardly say whether it names the shape ("a blue circle") or the background ("on a
// blue background"). With a strong bias, head 0 attends to the previous word, head 1 to
// the next and head 2 to itself (head 3 stays random), so after two layers every word
// carries its neighbours: the DiT can tell the two blues apart.
function positionBias(random: Float32Array): Float32Array {
  const out = Float32Array.from(random);
  const strong = 6;
  const bucketOf = (offset: number) => (offset > 0 ? 16 + offset : -offset);
  [[0, -1], [1, 1], [2, 0]].forEach(([head, offset]) => { out[bucketOf(offset) * T5.heads + head] += strong; });
  return out;
}

async function main(): Promise<void> {
  const outDir = path.resolve(process.argv[2] ?? 'models/demo');
  const seed = BigInt(process.argv[3] ?? '7');
  const spec = readDemoSpec();
  const combos = trainingCombinations(spec);
  const words = [...new Set(['a', 'on', 'background', 'moving',
    ...spec.data.colours.map((c) => c.name), ...spec.data.shapes, 'left', 'right', 'up', 'down',
    ...spec.data.motions, ...spec.data.backgrounds.map((b) => b.name)].flatMap((w) => w.split(' ')))];
  const spiece = vocabulary(words);
  const vocabSize = 4 + words.length + 26;

  // Weights as T5's own initialisation scales them (Mesh TF): embeddings N(0, 1), q
  // N(0, (dim * head_dim)^-1/2), k and v N(0, dim^-1/2), o N(0, dim_attn^-1/2), FFN
  // N(0, fan_in^-1/2); norms one.
  const generator = new (native().NoiseGenerator)(seed);
  const randn = (shape: number[], std: number) => {
    const values = generator.randn(shape).toTypedArray() as Float32Array;
    for (let i = 0; i < values.length; i++) values[i] *= std;
    return values;
  };
  const tensors: Record<string, Tensor> = {};
  const put = (name: string, shape: number[], values: Float32Array) => { tensors[name] = Tensor.fromTypedArray(values, shape); };
  const ones = (n: number) => new Float32Array(n).fill(1);
  put('token_embedding.weight', [vocabSize, T5.dim], randn([vocabSize, T5.dim], 1));
  const headDim = T5.dimAttn / T5.heads;
  for (let i = 0; i < T5.layers; i++) {
    const b = `blocks.${i}`;
    put(`${b}.norm1.weight`, [T5.dim], ones(T5.dim));
    put(`${b}.attn.q.weight`, [T5.dimAttn, T5.dim], randn([T5.dimAttn, T5.dim], (T5.dim * headDim) ** -0.5));
    put(`${b}.attn.k.weight`, [T5.dimAttn, T5.dim], randn([T5.dimAttn, T5.dim], T5.dim ** -0.5));
    put(`${b}.attn.v.weight`, [T5.dimAttn, T5.dim], randn([T5.dimAttn, T5.dim], T5.dim ** -0.5));
    put(`${b}.attn.o.weight`, [T5.dim, T5.dimAttn], randn([T5.dim, T5.dimAttn], T5.dimAttn ** -0.5));
    put(`${b}.norm2.weight`, [T5.dim], ones(T5.dim));
    put(`${b}.ffn.gate.0.weight`, [T5.dimFfn, T5.dim], randn([T5.dimFfn, T5.dim], T5.dim ** -0.5));
    put(`${b}.ffn.fc1.weight`, [T5.dimFfn, T5.dim], randn([T5.dimFfn, T5.dim], T5.dim ** -0.5));
    put(`${b}.ffn.fc2.weight`, [T5.dim, T5.dimFfn], randn([T5.dim, T5.dimFfn], T5.dimFfn ** -0.5));
    put(`${b}.pos_embedding.embedding.weight`, [T5.buckets, T5.heads], positionBias(randn([T5.buckets, T5.heads], 1)));
  }
  put('norm.weight', [T5.dim], ones(T5.dim));
  tensors.spiece_model = Tensor.fromTypedArray(spiece, [spiece.length], 'u8');
  fs.mkdirSync(outDir, { recursive: true });
  const t5File = path.join(outDir, DEMO_FILES.t5);
  await saveSafetensors(t5File, tensors, { 'wan_native.demo': 'umt5', 'wan_native.seed': String(seed) });

  // Every training prompt through the shipped encoder; row 0 is the empty prompt (CFG's
  // unconditional input, the demo's negative prompt).
  const encoder = await TextEncoder.load(t5File, { textLen: TEXT_LEN });
  const prompts = combos.map((c) => demoPrompt(c.attributes));
  const embeds: Tensor[] = [];
  for (let i = 0; i < prompts.length; i += 64) {
    const batch = prompts.slice(i, i + 64);
    const r = await encoder.encode({ positive: batch, negative: '' });
    if (i === 0) embeds.push(r.negativePromptEmbeds[0]);
    embeds.push(...r.promptEmbeds);
  }
  encoder.dispose();
  const longest = Math.max(...embeds.map((e) => e.shape[0]));
  const context = new Float32Array(embeds.length * longest * T5.dim);
  const lengths = new BigInt64Array(embeds.length);
  embeds.forEach((e, i) => {
    context.set(e.toTypedArray() as Float32Array, i * longest * T5.dim);
    lengths[i] = BigInt(e.shape[0]);
  });
  const attributes = new BigInt64Array(embeds.length * 4);
  attributes.fill(-1n, 0, 4);
  combos.forEach((c, i) => c.indices.forEach((v, j) => { attributes[(i + 1) * 4 + j] = BigInt(v); }));
  await saveSafetensors(path.join(outDir, 'prompts.safetensors'), {
    context: Tensor.fromTypedArray(context, [embeds.length, longest, T5.dim]),
    lengths: Tensor.fromTypedArray(lengths, [embeds.length]),
    attributes: Tensor.fromTypedArray(attributes, [embeds.length, 4]),
  }, { prompts: JSON.stringify(['', ...prompts]) });
  process.stdout.write(`${t5File}: vocabulary of ${vocabSize} pieces (${words.length} words); ` +
    `${prompts.length} training prompts encoded, up to ${longest} tokens\n`);
}

main().catch((err) => {
  process.stderr.write(`prepare: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
