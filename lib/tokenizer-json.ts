// A Hugging Face tokenizer.json (the fast tokenizer of google/umt5-xxl) turned back into the
// SentencePiece ModelProto it was made from, so that SentencePiece itself (lib/tokenizer.ts)
// runs it. tokenizer.json is an export of a SentencePiece model (transformers
// convert_slow_tokenizer.py SpmConverter): a Unigram model with the pieces and their scores, the
// normalizer's precompiled_charsmap, and the whitespace handling restated as normalizers and a
// Metaspace pre-tokenizer. Each of those maps back onto one ModelProto field; anything else
// (BPE, WordPiece, lowercasing, byte-level) has no SentencePiece equivalent and is refused.
import { describeValue, WanError } from './errors';

// Field numbers and enums of google/sentencepiece src/sentencepiece_model.proto.
const MODEL = { pieces: 1, trainerSpec: 2, normalizerSpec: 3 } as const;
const PIECE = { piece: 1, score: 2, type: 3 } as const;
const PIECE_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, byte: 6 } as const;
const TRAINER = {
  modelType: 3, vocabSize: 4, byteFallback: 35, unkId: 40, bosId: 41, eosId: 42, padId: 43, unkPiece: 45,
} as const;
const UNIGRAM = 1;
const NORMALIZER = { name: 1, precompiledCharsmap: 2, addDummyPrefix: 3, removeExtraWhitespaces: 4, escapeWhitespaces: 5 } as const;

const METASPACE = '\u2581';  // '▁': SentencePiece's only whitespace symbol
const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;  // as SentencePiece names them (PieceToByte)

// Protobuf wire format: varints (wire type 0), fixed32 (5), length-delimited (2).
class ProtoWriter {
  private buf: Buffer;
  private len = 0;

  constructor(capacity = 64) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(grown, 0, 0, this.len);
    this.buf = grown;
  }

  private varint(value: number): void {
    this.reserve(10);
    if (value < 0) {  // a negative int32 is written as a 10-byte varint, as a 64-bit value
      let v = BigInt.asUintN(64, BigInt(value));
      for (; v >= 0x80n; v >>= 7n) this.buf[this.len++] = Number(v & 0x7fn) | 0x80;
      this.buf[this.len++] = Number(v);
      return;
    }
    for (; value >= 0x80; value = Math.floor(value / 128)) this.buf[this.len++] = (value & 0x7f) | 0x80;
    this.buf[this.len++] = value;
  }

  int(field: number, value: number): this {
    this.varint((field << 3) | 0);
    this.varint(value);
    return this;
  }

  bool(field: number, value: boolean): this {
    return this.int(field, value ? 1 : 0);
  }

  float(field: number, value: number): this {
    this.varint((field << 3) | 5);
    this.reserve(4);
    this.len = this.buf.writeFloatLE(value, this.len);
    return this;
  }

  bytes(field: number, value: Uint8Array | string): this {
    const data = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    this.varint((field << 3) | 2);
    this.varint(data.length);
    this.reserve(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
    return this;
  }

  finish(): Uint8Array {
    return new Uint8Array(this.buf.buffer, this.buf.byteOffset, this.len);
  }
}

interface Piece { piece: string; score: number; type: number }
interface Normalization { charsmap: Uint8Array; addDummyPrefix: boolean; removeExtraWhitespaces: boolean }

/** Whether a tokenizer file is a tokenizer.json (JSON text) rather than a serialized ModelProto:
 * named .json, or '{' ... '}' around its text. A ModelProto starts with 0x0a (field 1,
 * length-delimited) and ends inside its normalizer_spec, never with '}'. */
export function isTokenizerJson(bytes: Uint8Array, file: string): boolean {
  if (/\.json$/i.test(file)) return true;
  const space = (b: number) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
  let i = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;  // a UTF-8 BOM
  let j = bytes.length - 1;
  while (i < j && space(bytes[i])) i++;
  while (j > i && space(bytes[j])) j--;
  return bytes[i] === 0x7b && bytes[j] === 0x7d;
}

/** The serialized SentencePiece ModelProto equivalent to a Unigram tokenizer.json (the file's
 * text or its parsed object); `source` names the file in errors. */
export function sentencePieceFromTokenizerJson(json: string | object, source: string): Uint8Array {
  const bad = (what: string) => new WanError('WAN_BAD_CHECKPOINT', `${source}: ${what}`);
  let root: unknown = json;
  if (typeof json === 'string') {
    try {
      root = JSON.parse(json.replace(/^\uFEFF/, ''));
    } catch (err) {
      throw bad(`not a valid tokenizer.json (${(err as Error).message})`);
    }
  }
  if (!isObject(root)) throw bad(`not a tokenizer.json: expected a JSON object but received ${describeValue(root)}`);
  const model = root.model;
  if (!isObject(model)) throw bad(`not a tokenizer.json: expected an object for model but received ${describeValue(model)}`);
  if (model.type !== 'Unigram')
    throw bad(`expected a Unigram model (a SentencePiece tokenizer such as umT5's) but model.type is ${describeValue(model.type)}`);

  const pieces = readPieces(model, root.added_tokens, bad);
  const norm = readNormalization(root.normalizer, root.pre_tokenizer, bad);

  const trainer = new ProtoWriter()
    .int(TRAINER.modelType, UNIGRAM)
    .int(TRAINER.vocabSize, pieces.length)
    .bool(TRAINER.byteFallback, model.byte_fallback === true);
  // unk is required (checked in readPieces); <s>, </s> and <pad> are informational for
  // encoding but keep the model describing itself as spm_train would have written it.
  const idOf = (name: string) => pieces.findIndex((p) => p.piece === name && p.type === PIECE_TYPE.control);
  const unkId = pieces.findIndex((p) => p.type === PIECE_TYPE.unknown);
  trainer.int(TRAINER.unkId, unkId).int(TRAINER.bosId, idOf('<s>')).int(TRAINER.eosId, idOf('</s>')).int(TRAINER.padId, idOf('<pad>'))
    .bytes(TRAINER.unkPiece, pieces[unkId].piece);

  const normalizer = new ProtoWriter()
    .bytes(NORMALIZER.name, norm.charsmap.length ? 'precompiled' : 'identity')
    .bool(NORMALIZER.addDummyPrefix, norm.addDummyPrefix)
    .bool(NORMALIZER.removeExtraWhitespaces, norm.removeExtraWhitespaces)
    .bool(NORMALIZER.escapeWhitespaces, true);
  if (norm.charsmap.length) normalizer.bytes(NORMALIZER.precompiledCharsmap, norm.charsmap);

  const proto = new ProtoWriter(1 << 20);
  for (const p of pieces) {
    const piece = new ProtoWriter().bytes(PIECE.piece, p.piece).float(PIECE.score, p.score);
    if (p.type !== PIECE_TYPE.normal) piece.int(PIECE.type, p.type);
    proto.bytes(MODEL.pieces, piece.finish());
  }
  proto.bytes(MODEL.trainerSpec, trainer.finish()).bytes(MODEL.normalizerSpec, normalizer.finish());
  return proto.finish();
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

// model.vocab ([piece, score] by id) with each piece's type: unk_id is UNKNOWN; an added token
// marked special is CONTROL (<pad>, </s>, umT5's <extra_id_N>), one not special USER_DEFINED
// (SpmConverter adds exactly those two SentencePiece types as added tokens); <0xNN> pieces of a
// byte_fallback model are BYTE. Added tokens past the vocabulary extend it, as their ids say.
function readPieces(model: Record<string, unknown>, addedTokens: unknown, bad: (what: string) => WanError): Piece[] {
  const vocab = model.vocab;
  if (!Array.isArray(vocab) || vocab.length === 0)
    throw bad(`expected a non-empty array of [piece, score] pairs for model.vocab but received ${describeValue(vocab)}`);
  const byteFallback = model.byte_fallback === true;
  const pieces: Piece[] = vocab.map((entry: unknown, id) => {
    if (!Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== 'string' || entry[0] === '' ||
        typeof entry[1] !== 'number' || !Number.isFinite(entry[1]))
      throw bad(`expected a [piece, score] pair (a non-empty string and a number) for model.vocab[${id}] but received ${JSON.stringify(entry)?.slice(0, 60)}`);
    return { piece: entry[0], score: entry[1], type: byteFallback && BYTE_PIECE.test(entry[0]) ? PIECE_TYPE.byte : PIECE_TYPE.normal };
  });

  const added = addedTokens ?? [];
  if (!Array.isArray(added)) throw bad(`expected an array for added_tokens but received ${describeValue(addedTokens)}`);
  const sorted = added.map((token: unknown, i) => {
    if (!isObject(token) || !Number.isSafeInteger(token.id) || (token.id as number) < 0 || typeof token.content !== 'string' || token.content === '')
      throw bad(`expected {id, content, special} for added_tokens[${i}] but received ${JSON.stringify(token)?.slice(0, 60)}`);
    return { id: token.id as number, content: token.content, special: token.special === true };
  }).sort((a, b) => a.id - b.id);
  for (const token of sorted) {
    if (token.id === pieces.length) pieces.push({ piece: token.content, score: 0, type: PIECE_TYPE.normal });
    else if (token.id > pieces.length)
      throw bad(`added token ${JSON.stringify(token.content)} has id ${token.id}, past the ${pieces.length} ids of model.vocab and the added tokens before it`);
    else if (pieces[token.id].piece !== token.content)
      throw bad(`added token ${JSON.stringify(token.content)} has id ${token.id}, which model.vocab names ${JSON.stringify(pieces[token.id].piece)}`);
    pieces[token.id].type = token.special ? PIECE_TYPE.control : PIECE_TYPE.userDefined;
  }

  const unkId = model.unk_id;
  if (!Number.isSafeInteger(unkId) || (unkId as number) < 0 || (unkId as number) >= vocab.length)
    throw bad(`expected the id of the unknown piece for model.unk_id (0..${vocab.length - 1}; SentencePiece needs one) but received ${describeValue(unkId)}`);
  pieces[unkId as number].type = PIECE_TYPE.unknown;

  // What SentencePiece refuses at load (model_interface.cc InitializePieces), said here with the
  // ids: a piece defined twice among the normal or among the reserved pieces, missing byte pieces.
  const seen = [new Map<string, number>(), new Map<string, number>()];
  pieces.forEach((p, id) => {
    const map = seen[p.type === PIECE_TYPE.normal || p.type === PIECE_TYPE.userDefined ? 0 : 1];
    const first = map.get(p.piece);
    if (first !== undefined) throw bad(`the piece ${JSON.stringify(p.piece)} has two ids, ${first} and ${id}`);
    map.set(p.piece, id);
  });
  if (byteFallback) {
    const bytes = pieces.filter((p) => p.type === PIECE_TYPE.byte).length;
    if (bytes !== 256) throw bad(`model.byte_fallback is true but model.vocab has ${bytes} of the 256 byte pieces <0x00>..<0xFF>`);
  }
  return pieces;
}

// The normalizer and pre-tokenizer SpmConverter writes, back to NormalizerSpec:
//   Precompiled {precompiled_charsmap}        -> precompiled_charsmap
//   Replace / {2,}/, Strip, WhitespaceSplit   -> remove_extra_whitespaces
//   Metaspace {prepend_scheme or add_prefix_space}, Prepend '▁' -> add_dummy_prefix
//   Replace ' ' -> '▁', Metaspace             -> escape_whitespaces (always on in SentencePiece)
function readNormalization(normalizer: unknown, preTokenizer: unknown, bad: (what: string) => WanError): Normalization {
  const out: Normalization = { charsmap: new Uint8Array(0), addDummyPrefix: false, removeExtraWhitespaces: false };
  const flatten = (node: unknown, where: string, list: string): { node: Record<string, unknown>; where: string }[] => {
    if (node === null || node === undefined) return [];
    if (!isObject(node)) throw bad(`expected an object for ${where} but received ${describeValue(node)}`);
    if (node.type !== 'Sequence') return [{ node, where }];
    if (!Array.isArray(node[list])) throw bad(`expected an array for ${where}.${list} but received ${describeValue(node[list])}`);
    return (node[list] as unknown[]).flatMap((child, i) => flatten(child, `${where}.${list}[${i}]`, list));
  };

  for (const { node, where } of flatten(normalizer, 'normalizer', 'normalizers')) {
    const pattern = isObject(node.pattern) ? node.pattern : {};
    if (node.type === 'Precompiled') {
      out.charsmap = decodeCharsmap(node.precompiled_charsmap, `${where}.precompiled_charsmap`, bad);
    } else if (node.type === 'Replace' && typeof pattern.Regex === 'string' && /^ (\{2,\}|\+)$/.test(pattern.Regex) &&
               (node.content === ' ' || node.content === METASPACE)) {
      out.removeExtraWhitespaces = true;
    } else if (node.type === 'Strip') {
      out.removeExtraWhitespaces = true;
    } else if (node.type === 'Replace' && pattern.String === ' ' && node.content === METASPACE) {
      // escape_whitespaces
    } else if (node.type === 'Prepend' && node.prepend === METASPACE) {
      out.addDummyPrefix = true;
    } else {
      throw bad(`${where} is ${describeNode(node)}, which SentencePiece has no equivalent of ` +
        `(expected Precompiled, Replace of ' {2,}', Strip or Prepend '${METASPACE}')`);
    }
  }

  for (const { node, where } of flatten(preTokenizer, 'pre_tokenizer', 'pretokenizers')) {
    if (node.type === 'WhitespaceSplit') {
      out.removeExtraWhitespaces = true;
    } else if (node.type === 'Metaspace') {
      if (node.replacement !== METASPACE)
        throw bad(`expected '${METASPACE}' for ${where}.replacement (SentencePiece's whitespace symbol) but received ${describeValue(node.replacement)}`);
      // tokenizers >= 0.14 write prepend_scheme ('first' differs from 'always' only after
      // split special tokens); older files add_prefix_space.
      const scheme = node.prepend_scheme ?? (node.add_prefix_space === false ? 'never' : 'always');
      if (scheme !== 'always' && scheme !== 'first' && scheme !== 'never')
        throw bad(`expected one of 'always', 'first', 'never' for ${where}.prepend_scheme but received ${describeValue(scheme)}`);
      out.addDummyPrefix = scheme !== 'never';
    } else {
      throw bad(`${where} is ${describeNode(node)}, which SentencePiece has no equivalent of (expected Metaspace or WhitespaceSplit)`);
    }
  }
  return out;
}

function describeNode(node: Record<string, unknown>): string {
  return typeof node.type === 'string' ? `a ${node.type}` : `an object without a type (${JSON.stringify(node).slice(0, 60)})`;
}

// precompiled_charsmap: base64 of [u32 LE trie size][Darts double-array trie][NUL-terminated
// normalized strings] (normalizer.cc DecodePrecompiledCharsMap). SentencePiece reads the trie
// without bounds checks, so the layout is checked here; null or '' means no normalization.
function decodeCharsmap(value: unknown, where: string, bad: (what: string) => WanError): Uint8Array {
  if (value === null || value === undefined || value === '') return new Uint8Array(0);
  if (typeof value !== 'string' || value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value))
    throw bad(`bad charsmap: expected a base64 string for ${where} but received ${describeValue(value)}`);
  const bytes = Buffer.from(value, 'base64');
  const trieSize = bytes.length >= 4 ? bytes.readUInt32LE(0) : -1;
  if (trieSize < 4 || trieSize % 4 !== 0 || 4 + trieSize >= bytes.length || bytes[bytes.length - 1] !== 0)
    throw bad(`bad charsmap: ${where} (${bytes.length} bytes) is not a SentencePiece precompiled charsmap ` +
      `(a 4-byte trie size, the trie, NUL-terminated strings)`);
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}
