// umT5's tokenizer: a SentencePiece model run by @sctg/sentencepiece-js (SentencePiece itself,
// compiled to WebAssembly; its ids equal spm_encode's), wrapped with what Wan's
// HuggingfaceTokenizer(clean='whitespace') adds: cleaning, '</s>', truncation, padding, mask.
// Debian's libsentencepiece cannot live in the addon: it exports its own copy of protobuf,
// which collides with the libprotobuf libtorch loads (a crash during dlopen).
import { WanError } from './errors';
import { Tensor } from './tensor';

interface SentencePieceProcessor {
  loadFromB64StringModel(b64: string): Promise<void>;
  encodeIds(text: string): number[];
}

// html.unescape for the entities prompts carry: numeric ones and the XML five plus &nbsp;.
const NAMED: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0' };
function unescapeHtml(text: string): string {
  return text.replace(/&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z]{2,6});/g, (entity, body: string) => {
    if (body[0] === '#') {
      const cp = body[1] === 'x' || body[1] === 'X' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
      return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : entity;
    }
    return NAMED[body] ?? entity;
  });
}

/** Wan's whitespace clean (tokenizers.py basic_clean + whitespace_clean), without ftfy's
 * mojibake repair: HTML entities unescaped twice, whitespace runs to one space, trimmed. */
export function cleanText(text: string): string {
  return unescapeHtml(unescapeHtml(text)).replace(/\s+/gu, ' ').trim();
}

export class SentencePieceTokenizer {
  readonly padId = 0;  // T5 conventions
  readonly eosId = 1;

  private constructor(private readonly processor: SentencePieceProcessor, readonly source: string) {}

  /** `model`: a serialized SentencePiece model (spiece.model, or ComfyUI's `spiece_model` tensor). */
  static async fromBytes(model: Uint8Array, source: string): Promise<SentencePieceTokenizer> {
    // An ES module: import() it (tsconfig's node16 module mode keeps import() in CommonJS output).
    const { SentencePieceProcessor } = await import('@sctg/sentencepiece-js');
    const processor = new SentencePieceProcessor() as SentencePieceProcessor;
    let problem: string | undefined;
    try {
      await processor.loadFromB64StringModel(Buffer.from(model.buffer, model.byteOffset, model.byteLength).toString('base64'));
      // A model that failed to parse loads silently and encodes everything to nothing.
      if (processor.encodeIds('probe').length === 0) problem = 'it encodes text to no tokens';
    } catch (err) {
      problem = String((err as Error)?.message ?? err);
    }
    if (problem) throw new WanError('WAN_BAD_CHECKPOINT', `${source}: not a SentencePiece model (${problem})`);
    return new SentencePieceTokenizer(processor, source);
  }

  /** Ids of one text after cleaning, without special tokens. */
  encode(text: string): number[] {
    return this.processor.encodeIds(cleanText(text));
  }

  /** ids and mask, I64 [B, textLen]: cut to textLen - 1 tokens, '</s>' appended, padded with 0. */
  tokenize(texts: string[], textLen: number): { ids: Tensor; mask: Tensor } {
    const ids = new BigInt64Array(texts.length * textLen);
    const mask = new BigInt64Array(texts.length * textLen);
    texts.forEach((text, i) => {
      const tokens = [...this.encode(text).slice(0, textLen - 1), this.eosId];
      tokens.forEach((id, j) => {
        ids[i * textLen + j] = BigInt(id);
        mask[i * textLen + j] = 1n;
      });
    });
    return { ids: Tensor.fromTypedArray(ids, [texts.length, textLen]), mask: Tensor.fromTypedArray(mask, [texts.length, textLen]) };
  }
}
