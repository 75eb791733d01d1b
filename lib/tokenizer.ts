// umT5's tokenizer: a SentencePiece model run by @sctg/sentencepiece-js (SentencePiece itself,
// compiled to WebAssembly; its ids equal spm_encode's), wrapped with what Wan's
// HuggingfaceTokenizer(clean='whitespace') adds: cleaning, '</s>', truncation, padding, mask.
// Debian's libsentencepiece cannot live in the addon: it exports its own copy of protobuf,
// which collides with the libprotobuf libtorch loads (a crash during dlopen).
import { decodeHTML } from 'entities';

import { WanError } from './errors';
import { Tensor } from './tensor';

interface SentencePieceProcessor {
  loadFromB64StringModel(b64: string): Promise<void>;
  encodeIds(text: string): number[];
}

// Wan's text cleaning (wan/modules/tokenizers.py, which the wrapper runs too):
// whitespace_clean(basic_clean(text)), where basic_clean is ftfy.fix_text, then html.unescape
// twice, then strip. ftfy's fixes are followed here one by one, except its repair of mojibake
// (UTF-8 read as Windows-1252, 'cafÃ©'), a statistical guesser of its own that is not ported:
// such text stays as it is. test/fixtures/tokenizer/clean_references.json holds what the
// official code makes of prompts that exercise each step.

// Windows-1252's characters for the bytes 0x80-0x9F; the five it leaves undefined stay as they
// are. Python's html.unescape maps numeric references to these code points the same way.
const CP1252: Record<number, string> = {
  0x80: '\u20ac', 0x82: '\u201a', 0x83: '\u0192', 0x84: '\u201e', 0x85: '\u2026', 0x86: '\u2020', 0x87: '\u2021',
  0x88: '\u02c6', 0x89: '\u2030', 0x8a: '\u0160', 0x8b: '\u2039', 0x8c: '\u0152', 0x8e: '\u017d', 0x91: '\u2018',
  0x92: '\u2019', 0x93: '\u201c', 0x94: '\u201d', 0x95: '\u2022', 0x96: '\u2013', 0x97: '\u2014', 0x98: '\u02dc',
  0x99: '\u2122', 0x9a: '\u0161', 0x9b: '\u203a', 0x9c: '\u0153', 0x9e: '\u017e', 0x9f: '\u0178',
};

// Python's html.unescape: numeric references (with or without ';') by its rules, names by the
// HTML5 table, a legacy name without ';' also as the prefix of a longer word ('&notit;' -> '¬it;').
function pythonUnescape(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(/&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g, (whole, body: string) => {
    if (body[0] !== '#') return decodeHTML(whole);
    const digits = body.replace(/;$/, '');
    const cp = digits[1] === 'x' || digits[1] === 'X' ? parseInt(digits.slice(2), 16) : parseInt(digits.slice(1), 10);
    if (cp === 0) return '\ufffd';
    if (cp === 0x0d) return '\r';
    if (cp >= 0x80 && cp <= 0x9f) return CP1252[cp] ?? String.fromCharCode(cp);
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return '\ufffd';
    // Python's _invalid_codepoints: controls and noncharacters are dropped.
    if ((cp >= 0x1 && cp <= 0x8) || cp === 0xb || (cp >= 0xe && cp <= 0x1f) || cp === 0x7f ||
        (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return '';
    return String.fromCodePoint(cp);
  });
}

// ftfy's fix_latin_ligatures (ligatures of Latin letters to their letters).
const LIGATURES: Record<string, string> = {
  '\u0132': 'IJ', '\u0133': 'ij', '\u0149': '\u02bcn', '\u01c4': 'D\u017d', '\u01c5': 'D\u017e', '\u01c6': 'd\u017e',
  '\u01c7': 'LJ', '\u01c8': 'Lj', '\u01c9': 'lj', '\u01ca': 'NJ', '\u01cb': 'Nj', '\u01cc': 'nj', '\u01f1': 'DZ',
  '\u01f2': 'Dz', '\u01f3': 'dz', '\ufb00': 'ff', '\ufb01': 'fi', '\ufb02': 'fl', '\ufb03': 'ffi', '\ufb04': 'ffl',
  '\ufb05': '\u017ft', '\ufb06': 'st',
};

// One pass of ftfy.fix_text's default fixes, in its order.
function ftfyPass(text: string): string {
  if (!text.includes('<')) text = pythonUnescape(text);  // unescape_html 'auto': not in HTML-like text
  return text
    .replace(/[\x80-\x9f]/g, (c) => CP1252[c.charCodeAt(0)] ?? c)                             // fix_c1_controls
    .replace(/[\u0132\u0133\u0149\u01c4-\u01cc\u01f1-\u01f3\ufb00-\ufb06]/g, (c) => LIGATURES[c] ?? c)  // fix_latin_ligatures
    .replace(/[\u3000\uff01-\uffef]/g, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')))   // fix_character_width
    .replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"')             // uncurl_quotes
    .replace(/\r\n|[\r\u2028\u2029\x85]/g, '\n')                                          // fix_line_breaks
    .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd')  // fix_surrogates
    .replace(/\x1b\[[0-9;]*[a-zA-Z]/g, '')                                                   // remove_terminal_escapes
    .replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, '')          // remove_control_chars
    .normalize('NFC');
}

// Python's \s in the regex module, which whitespace_clean uses (JavaScript's \s differs: it
// holds U+FEFF and lacks U+0085).
const WHITESPACE = /[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;
const strip = (text: string) => text.replace(/^[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g, '');

/** Wan's whitespace clean (tokenizers.py whitespace_clean(basic_clean(text))): ftfy's fixes but
 * its mojibake repair, HTML unescaped twice, whitespace runs to one space, trimmed. */
export function cleanText(text: string): string {
  let fixed = text;
  for (let pass = 0; pass < 8; pass++) {  // ftfy repeats its fixes until nothing changes
    const next = ftfyPass(fixed);
    if (next === fixed) break;
    fixed = next;
  }
  return strip(strip(pythonUnescape(pythonUnescape(fixed))).replace(WHITESPACE, ' '));
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
