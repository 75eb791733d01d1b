// A Hugging Face tokenizer.json read as the SentencePiece model it was exported from. Tiny
// Unigram models are trained here with Debian's spm_train; the tokenizer.json of each is built
// by this test from the .model file (its own protobuf reader, not lib/tokenizer-json.ts), shaped
// like google/umt5-xxl's; ids are checked against spm_encode, SentencePiece's command line.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { TextEncoder } from '../../lib/index';
import { cleanText } from '../../lib/tokenizer';
import { isTokenizerJson, sentencePieceFromTokenizerJson } from '../../lib/tokenizer-json';
import { tempDir, toNumbers, weightsDir } from '../helpers';

const dir = tempDir('wan-tokjson-');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

const ENCODER = path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors');  // vocab 256
const EXTRA_IDS = 3;  // umT5's tokenizer.json appends <extra_id_N> past the SentencePiece vocabulary

// ---- the reference: a protobuf reader for sentencepiece_model.proto (fields as in that file) ----

interface SpmModel {
  pieces: { piece: string; score: number; type: number }[];  // type: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, BYTE 6
  modelType: number; unkId: number; byteFallback: boolean;
  charsmap: Buffer; addDummyPrefix: boolean; removeExtraWhitespaces: boolean; escapeWhitespaces: boolean;
}

function* fields(buf: Buffer): Generator<[number, number | bigint | Buffer]> {
  let i = 0;
  const varint = () => {
    let v = 0n, shift = 0n;
    for (;;) {
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint()), field = key >> 3, wire = key & 7;
    if (wire === 0) yield [field, varint()];
    else if (wire === 5) { yield [field, buf.readFloatLE(i)]; i += 4; }
    else if (wire === 1) { i += 8; }
    else if (wire === 2) { const n = Number(varint()); yield [field, buf.subarray(i, i + n)]; i += n; }
    else throw new Error(`wire type ${wire}`);
  }
}

function readModel(bytes: Buffer): SpmModel {
  const m: SpmModel = { pieces: [], modelType: 1, unkId: 0, byteFallback: false, charsmap: Buffer.alloc(0),
                        addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true };
  const int32 = (v: unknown) => Number(BigInt.asIntN(32, v as bigint));
  for (const [f, v] of fields(bytes)) {
    if (f === 1) {
      const p = { piece: '', score: 0, type: 1 };
      for (const [g, w] of fields(v as Buffer)) {
        if (g === 1) p.piece = (w as Buffer).toString('utf8');
        if (g === 2) p.score = w as number;
        if (g === 3) p.type = Number(w);
      }
      m.pieces.push(p);
    } else if (f === 2) {
      for (const [g, w] of fields(v as Buffer)) {
        if (g === 3) m.modelType = Number(w);
        if (g === 35) m.byteFallback = w !== 0n;
        if (g === 40) m.unkId = int32(w);
      }
    } else if (f === 3) {
      for (const [g, w] of fields(v as Buffer)) {
        if (g === 2) m.charsmap = Buffer.from(w as Buffer);
        if (g === 3) m.addDummyPrefix = w !== 0n;
        if (g === 4) m.removeExtraWhitespaces = w !== 0n;
        if (g === 5) m.escapeWhitespaces = w !== 0n;
      }
    }
  }
  return m;
}

// The tokenizer.json transformers' SpmConverter (T5Converter) writes for such a model, as in
// google/umt5-xxl: Unigram vocab [piece, score], control and user-defined pieces as added
// tokens, the charsmap, whitespace squeezing as a Replace, the dummy prefix as Metaspace.
function tokenizerJson(m: SpmModel): object {
  const vocab: [string, number][] = m.pieces.map((p) => [p.piece, p.score]);
  for (let i = EXTRA_IDS - 1; i >= 0; i--) vocab.push([`<extra_id_${i}>`, 0]);
  const added = m.pieces.flatMap((p, id) => (p.type === 2 || p.type === 3 || p.type === 4
    ? [{ id, content: p.piece, single_word: false, lstrip: false, rstrip: false, normalized: false, special: p.type !== 4 }] : []));
  for (let id = m.pieces.length; id < vocab.length; id++)
    added.push({ id, content: vocab[id][0], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const normalizers: object[] = [];
  if (m.charsmap.length) normalizers.push({ type: 'Precompiled', precompiled_charsmap: m.charsmap.toString('base64') });
  if (m.removeExtraWhitespaces) normalizers.push({ type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' });
  const metaspace = { type: 'Metaspace', replacement: '\u2581', add_prefix_space: m.addDummyPrefix, prepend_scheme: m.addDummyPrefix ? 'always' : 'never' };
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: added,
    normalizer: normalizers.length ? { type: 'Sequence', normalizers } : null,
    pre_tokenizer: metaspace,
    post_processor: { type: 'TemplateProcessing', single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
                      pair: [], special_tokens: { '</s>': { id: '</s>', ids: [1], tokens: ['</s>'] } } },
    decoder: metaspace,
    model: { type: 'Unigram', unk_id: m.unkId, vocab, byte_fallback: m.byteFallback },
  };
}

// ---- models and texts ----

const WORDS = ['a', 'cat', 'walks', 'on', 'the', 'beach', 'at', 'sunset', 'camera', 'pans', 'slowly', 'over', 'waves', 'city', 'night',
  'neon', 'rain', 'café', 'niño', 'über', 'façade', 'crème', 'brûlée', 'Zürich', 'ÉTÉ', 'garçon', 'fiancée', '4K', '1080p', 'HDR,', 'slow-motion.'];

function trainModel(name: string, args: string[]): string | undefined {
  const corpus = path.join(dir, `${name}.txt`);
  const lines: string[] = [];
  for (let i = 0; i < 800; i++) lines.push(Array.from({ length: 9 }, (_, j) => WORDS[(i * 7 + j * 3 + (i >> 3)) % WORDS.length]).join(' '));
  fs.writeFileSync(corpus, lines.join('\n'));
  const r = spawnSync('spm_train', [`--input=${corpus}`, `--model_prefix=${path.join(dir, name)}`, '--model_type=unigram',
    '--character_coverage=1.0', '--pad_id=0', '--eos_id=1', '--unk_id=2', '--bos_id=-1', '--hard_vocab_limit=false', ...args], { encoding: 'utf8' });
  return r.status === 0 ? path.join(dir, `${name}.model`) : undefined;
}

// spm_encode's ids, one text a line (texts hold no newlines).
function spmEncode(model: string, texts: string[]): number[][] {
  const r = spawnSync('spm_encode', [`--model=${model}`, '--output_format=id'], { input: texts.join('\n') + '\n', encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`spm_encode failed: ${r.stderr}`);
  const lines = r.stdout.split('\n').slice(0, -1);
  if (lines.length !== texts.length) throw new Error(`spm_encode gave ${lines.length} lines for ${texts.length} texts`);
  return lines.map((line) => (line === '' ? [] : line.split(' ').map(Number)));
}

const HANDWRITTEN = [
  'a cat walks on the beach at sunset', '  the   city at\tnight  neon rain  ', 'café crème brûlée in Zürich', 'ÉTÉ garçon fiancée',
  'cafe\u0301 (a decomposed é)', 'ﬁancée ﬂoats', 'ＦＵＬＬ ｗｉｄｔｈ ｃａｔ', '① ② ③ camera', 'non\u00a0breaking\u3000spaces', 'x² and ½ and ™',
  '猫在海滩上散步', 'カメラがゆっくりパンする', 'καλημέρα κόσμε', 'привет мир', 'emoji 🐈 and 🌊🌅', 'a cat<sep>walks<sep>',
  '</s> and <pad> are plain text', '<extra_id_0> stays text', 'UPPER lower MiXeD', '4K 1080p HDR, slow-motion.', '...!!!???',
  '   ', 'a', 'über-über-über', 'tab\there', 'trailing space ', ' leading space', 'Ω ohm sign vs Ω omega', 'Å angstrom vs Å',
  '色调艳丽，过曝，静态，细节模糊不清', 'ｶﾀｶﾅ half-width', '\u200bzero\u200bwidth', 'x\u0000y control',
];

// Many more: words, unicode and whitespace runs drawn by a fixed linear congruential generator.
function generatedTexts(n: number): string[] {
  const extra = ['é', 'ñ', 'ü', '🐈', '猫', 'Ａ', 'ﬁ', '\u00a0', '\t', '  ', '   ', 'ß', 'Ö', 'ç', '½', '—', '“quoted”', '<sep>'];
  let seed = 12345;
  const rand = (k: number) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % k; };
  return Array.from({ length: n }, () => {
    const parts: string[] = [];
    for (let j = 0, len = 1 + rand(12); j < len; j++) {
      parts.push(rand(4) === 0 ? extra[rand(extra.length)] : WORDS[rand(WORDS.length)]);
      parts.push([' ', ' ', ' ', '', '  ', '\t', '   '][rand(7)]);
    }
    return parts.join('');
  });
}

const TEXTS = [...HANDWRITTEN, ...generatedTexts(300)];

// SentencePiece's WebAssembly build, the engine lib/tokenizer.ts runs, on raw text (no cleaning).
async function wasmEncode(model: Uint8Array, texts: string[]): Promise<number[][]> {
  const { SentencePieceProcessor } = await import('@sctg/sentencepiece-js');
  const processor = new SentencePieceProcessor();
  await processor.loadFromB64StringModel(Buffer.from(model).toString('base64'));
  return texts.map((text) => processor.encodeIds(text));
}

const MODELS: [string, string[]][] = [
  ['nfkc', ['--vocab_size=120', '--user_defined_symbols=<sep>']],  // spm_train's defaults: nmt_nfkc, dummy prefix, squeezing
  ['bytes', ['--vocab_size=400', '--byte_fallback=true']],  // umT5 falls back to UTF-8 bytes
  ['identity', ['--vocab_size=100', '--normalization_rule_name=identity', '--add_dummy_prefix=false', '--remove_extra_whitespaces=false']],
];

for (const [name, args] of MODELS) {
  t.test(`${name}: the converted model is the original one, and encodes as spm_encode`, async (t) => {
    const file = trainModel(name, args);
    if (!file) return t.fail('spm_train (Debian package sentencepiece) must be installed: scripts/setup.sh installs it');
    const original = readModel(fs.readFileSync(file));
    const json = tokenizerJson(original);
    const jsonText = JSON.stringify(json);
    t.ok(isTokenizerJson(Buffer.from(jsonText), 'any.name'), 'JSON is told apart from a ModelProto by content');
    t.notOk(isTokenizerJson(fs.readFileSync(file), 'spiece.model'), 'a ModelProto is not taken for JSON');
    const bytes = sentencePieceFromTokenizerJson(jsonText, 'tokenizer.json');
    t.same(sentencePieceFromTokenizerJson(json, 'tokenizer.json'), bytes, 'the parsed object converts the same as the text');

    // Field by field, read back with the reader above.
    const converted = readModel(Buffer.from(bytes));
    t.equal(converted.pieces.length, original.pieces.length + EXTRA_IDS);
    t.same(converted.pieces.slice(0, original.pieces.length), original.pieces, 'pieces, float32 scores and types');
    t.same(converted.pieces.slice(original.pieces.length).map((p) => p.type), new Array(EXTRA_IDS).fill(3), '<extra_id_N> are control pieces');
    t.match(converted, { modelType: 1, unkId: original.unkId, byteFallback: original.byteFallback, addDummyPrefix: original.addDummyPrefix,
                         removeExtraWhitespaces: original.removeExtraWhitespaces, escapeWhitespaces: true });
    t.ok(converted.charsmap.equals(original.charsmap), `the precompiled charsmap (${original.charsmap.length} bytes)`);
    if (name === 'bytes') t.equal(original.pieces.filter((p) => p.type === 6).length, 256, 'the model really has byte pieces');

    // Ids: the converted model under spm_encode and under the WebAssembly build, against the original under spm_encode.
    const convertedFile = path.join(dir, `${name}.converted.model`);
    fs.writeFileSync(convertedFile, bytes);
    const expected = spmEncode(file, TEXTS);
    const native = spmEncode(convertedFile, TEXTS);
    const wasm = await wasmEncode(bytes, TEXTS);
    const differ = (got: number[][]) => TEXTS.map((text, i) => ({ text, want: expected[i], got: got[i] })).filter((d) => d.want.join() !== d.got.join());
    t.same(differ(native), [], `spm_encode on the converted model: ${TEXTS.length} texts, all equal`);
    t.same(differ(wasm), [], `lib's SentencePiece (WebAssembly) on the converted model: ${TEXTS.length} texts, all equal`);
    // The texts do reach what the test is about: unknown pieces, byte pieces, user-defined pieces.
    const all = expected.flat();
    if (name === 'nfkc') {
      t.ok(all.includes(original.unkId), 'some texts encode to <unk>');
      t.ok(all.includes(original.pieces.findIndex((p) => p.piece === '<sep>')), 'the user-defined <sep> is matched');
    }
    if (name === 'bytes') t.ok(all.some((id) => original.pieces[id].type === 6), 'some texts fall back to bytes');
  });
}

t.test('TextEncoder finds a tokenizer.json beside the checkpoint or given as the option', async (t) => {
  const file = path.join(dir, 'nfkc.model');
  if (!fs.existsSync(file)) return t.fail('the nfkc model was not trained');
  const json = JSON.stringify(tokenizerJson(readModel(fs.readFileSync(file))), null, 2);
  const texts = ['a cat walks on the beach', '  café   crème &amp; brûlée  ', 'ＦＵＬＬ ①', '猫 🐈', 'the city at night '.repeat(6)];
  const textLen = 24;
  const expected = spmEncode(file, texts.map(cleanText)).map((ids) => {
    const row = [...ids.slice(0, textLen - 1), 1];
    return [...row, ...new Array(textLen - row.length).fill(0)];
  });
  t.ok(spmEncode(file, [cleanText(texts[4])])[0].length > textLen - 1, 'the long text is cut');

  const beside = fs.mkdtempSync(path.join(dir, 'beside-'));
  const checkpoint = path.join(beside, 'umt5.safetensors');
  fs.copyFileSync(ENCODER, checkpoint);
  fs.writeFileSync(path.join(beside, 'tokenizer.json'), json);
  const found = await TextEncoder.load(checkpoint, { textLen });
  t.equal(found.tokenizerSource, path.join(beside, 'tokenizer.json'));
  const ids = toNumbers(found.tokenize(texts).ids.toTypedArray());
  t.same(ids, expected.flat(), 'spm ids then </s>, cut and padded');
  found.dispose();

  // A spiece.model beside the checkpoint comes first.
  fs.copyFileSync(file, path.join(beside, 'spiece.model'));
  const preferred = await TextEncoder.load(checkpoint, { textLen });
  t.equal(preferred.tokenizerSource, path.join(beside, 'spiece.model'));
  t.same(toNumbers(preferred.tokenize(texts).ids.toTypedArray()), ids, 'the same ids from the spiece.model');
  preferred.dispose();

  // As the option, whatever its name: told apart from a spiece.model by content.
  const option = path.join(dir, 'umt5-tokenizer.bin');
  fs.writeFileSync(option, json);
  const given = await TextEncoder.load(ENCODER, { textLen, tokenizer: option });
  t.equal(given.tokenizerSource, option);
  t.same(toNumbers(given.tokenize(texts).ids.toTypedArray()), ids, 'the same ids from the option');
  given.dispose();

  const none = await TextEncoder.load(ENCODER);
  t.throws(() => none.tokenize(['x']), { code: 'WAN_BAD_CHECKPOINT',
    message: /no tokenizer: looked for the tokenizer option, a 'spiece_model' tensor in .*tiny_umt5_enc\.f32\.safetensors and .*weights\/spiece\.model or .*weights\/tokenizer\.json \(give the tokenizer option umT5's spiece\.model or tokenizer\.json\)/ });
  none.dispose();
});

t.test('a tokenizer.json that is not a SentencePiece Unigram model is a clear error naming the file', async (t) => {
  const file = path.join(dir, 'nfkc.model');
  if (!fs.existsSync(file)) return t.fail('the nfkc model was not trained');
  const good = tokenizerJson(readModel(fs.readFileSync(file))) as any;
  const write = (name: string, content: string) => { const f = path.join(dir, name); fs.writeFileSync(f, content); return f; };
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  const corrupt = write('corrupt.json', JSON.stringify(good).slice(0, 500));
  await t.rejects(TextEncoder.load(ENCODER, { tokenizer: corrupt }),
    { code: 'WAN_BAD_CHECKPOINT', message: new RegExp(`^${esc(corrupt)}: not a valid tokenizer\\.json \\(.*JSON`) });

  const bpe = { ...good, model: { type: 'BPE', vocab: { a: 0, b: 1 }, merges: ['a b'], unk_token: '<unk>', byte_fallback: false } };
  const bpeFile = write('bpe.json', JSON.stringify(bpe));
  await t.rejects(TextEncoder.load(ENCODER, { tokenizer: bpeFile }),
    { code: 'WAN_BAD_CHECKPOINT', message: `${bpeFile}: expected a Unigram model (a SentencePiece tokenizer such as umT5's) but model.type is "BPE" of type string` });

  // Beside the checkpoint too.
  const beside = fs.mkdtempSync(path.join(dir, 'bad-beside-'));
  fs.copyFileSync(ENCODER, path.join(beside, 'umt5.safetensors'));
  fs.writeFileSync(path.join(beside, 'tokenizer.json'), JSON.stringify(bpe));
  await t.rejects(TextEncoder.load(path.join(beside, 'umt5.safetensors')),
    { code: 'WAN_BAD_CHECKPOINT', message: new RegExp(`^${esc(path.join(beside, 'tokenizer.json'))}: expected a Unigram model`) });

  const convert = (json: unknown) => () => sentencePieceFromTokenizerJson(json as object, 'tok.json');
  const withModel = (patch: object) => ({ ...good, model: { ...good.model, ...patch } });
  const withNormalizer = (normalizer: unknown) => ({ ...good, normalizer });
  const cases: [string, unknown, RegExp | string][] = [
    ['a JSON array', '[1, 2]', 'tok.json: not a tokenizer.json: expected a JSON object but received an array of length 2'],
    ['no model', { version: '1.0' }, 'tok.json: not a tokenizer.json: expected an object for model but received undefined'],
    ['a WordPiece model', withModel({ type: 'WordPiece' }), /model\.type is "WordPiece" of type string$/],
    ['no vocab', withModel({ vocab: undefined }), 'tok.json: expected a non-empty array of [piece, score] pairs for model.vocab but received undefined'],
    ['a bad vocab entry', withModel({ vocab: [['<pad>', 0], ['x']] }), 'tok.json: expected a [piece, score] pair (a non-empty string and a number) for model.vocab[1] but received ["x"]'],
    ['no unk_id', withModel({ unk_id: null }), /^tok\.json: expected the id of the unknown piece for model\.unk_id \(0\.\.\d+; SentencePiece needs one\) but received null$/],
    ['a duplicate piece', withModel({ vocab: [...good.model.vocab, [good.model.vocab[10][0], -1]] }), /^tok\.json: the piece ".+" has two ids, \d+ and \d+$/],
    ['a byte_fallback model without byte pieces', withModel({ byte_fallback: true }), 'tok.json: model.byte_fallback is true but model.vocab has 0 of the 256 byte pieces <0x00>..<0xFF>'],
    ['an added token at another id', { ...good, added_tokens: [{ id: 5, content: '<mask>', special: true }] }, /^tok\.json: added token "<mask>" has id 5, which model\.vocab names "/],
    ['a charsmap that is not base64', withNormalizer({ type: 'Precompiled', precompiled_charsmap: 'not base64!' }),
      'tok.json: bad charsmap: expected a base64 string for normalizer.precompiled_charsmap but received "not base64!" of type string'],
    ['a truncated charsmap', withNormalizer({ type: 'Sequence', normalizers: [{ type: 'Precompiled', precompiled_charsmap: Buffer.from([0, 1, 0, 0, 1, 2, 3, 0]).toString('base64') }] }),
      'tok.json: bad charsmap: normalizer.normalizers[0].precompiled_charsmap (8 bytes) is not a SentencePiece precompiled charsmap (a 4-byte trie size, the trie, NUL-terminated strings)'],
    ['a Lowercase normalizer', withNormalizer({ type: 'Sequence', normalizers: [{ type: 'Lowercase' }] }),
      "tok.json: normalizer.normalizers[0] is a Lowercase, which SentencePiece has no equivalent of (expected Precompiled, Replace of ' {2,}', Strip or Prepend '\u2581')"],
    ['a ByteLevel pre-tokenizer', { ...good, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false } },
      'tok.json: pre_tokenizer is a ByteLevel, which SentencePiece has no equivalent of (expected Metaspace or WhitespaceSplit)'],
    ['another Metaspace replacement', { ...good, pre_tokenizer: { type: 'Metaspace', replacement: '_', prepend_scheme: 'always' } },
      "tok.json: expected '\u2581' for pre_tokenizer.replacement (SentencePiece's whitespace symbol) but received \"_\" of type string"],
  ];
  for (const [what, json, message] of cases)
    t.throws(convert(json), { code: 'WAN_BAD_CHECKPOINT', message }, what);

  // The shapes older and newer transformers write are read alike: WhitespaceSplit + Metaspace
  // with add_prefix_space, and Strip + Replace ' {2,}' -> '▁' with prepend_scheme 'first'.
  const reference = sentencePieceFromTokenizerJson(good, 'tok.json');
  const older = { ...good, normalizer: { type: 'Precompiled', precompiled_charsmap: good.normalizer.normalizers[0].precompiled_charsmap },
                  pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true }] } };
  const newer = { ...good, normalizer: { type: 'Sequence', normalizers: [good.normalizer.normalizers[0], { type: 'Strip', left: false, right: true },
                  { type: 'Replace', pattern: { Regex: ' {2,}' }, content: '\u2581' }] },
                  pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: true } };
  t.same(sentencePieceFromTokenizerJson(older, 'tok.json'), reference, 'the older shape');
  t.same(sentencePieceFromTokenizerJson(newer, 'tok.json'), reference, 'the newer shape');
});
