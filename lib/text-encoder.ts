// TextEncoder: umT5 (csrc/models/umt5) and its SentencePiece tokenizer (csrc/tokenizer).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { NativeTextEncoder } from '../types/native';
import { bridgeAbort } from './abort';
import { loadSafetensors, planFiles, saveSafetensors } from './checkpoint';
import { checkOptionNames, describeValue, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { memoryStatsOf, type MemoryStats } from './memory-planner';
import { checkDevice, checkLoadDevice, offloadingAfter, resolveDevice, type Device, type Placement } from './device';
import { native } from './native';
import { LongCallOptions, ProgressClock } from './progress';
import { Tensor } from './tensor';
import { cleanText, SentencePieceTokenizer } from './tokenizer';
import { isTokenizerJson, sentencePieceFromTokenizerJson } from './tokenizer-json';

/** The official Wan2.1 negative prompt (wan/configs/shared_config.py sample_neg_prompt). */
export const DEFAULT_NEGATIVE_PROMPT =
  '色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走';

export interface TextEncoderOptions extends LongCallOptions {
  /** A spiece.model or tokenizer.json to use; otherwise the checkpoint's own `spiece_model` tensor, then a spiece.model or tokenizer.json beside it. */
  tokenizer?: string;
  /** Tokens every prompt is padded or cut to (default 512, as Wan). */
  textLen?: number;
  /** Read the weights into memory at load (default true). */
  populate?: boolean;
  /** Where the encoder computes, in float32 (see ModelLoaderOptions.device): 'cpu' (default),
   * 'cuda', 'cuda:N' or 'auto'. Embeddings come back as CPU tensors. */
  device?: Device;
  /** Where the weights go at load (the wrapper's load_device): 'offload_device' (default, as the
   * wrapper), the CPU, from where the first use brings them to `device`, or 'main_device'. */
  loadDevice?: Placement;
}

export interface TextEmbeds {
  promptEmbeds: Tensor[];          // one [L_i, dim] per positive prompt, trimmed to its real length
  negativePromptEmbeds: Tensor[];  // the same for the negative prompt
}

export interface EncodeOptions extends LongCallOptions {
  /** Cache encodings on disk keyed by the encoder file and the prompt (WanVideoTextEncode use_disk_cache). */
  diskCache?: string;
  /** Offload the encoder when done (the wrapper's force_offload, default true): see offload(). */
  forceOffload?: boolean;
  /** The wrapper's prompt weights (default true): see promptWeights(). */
  promptWeights?: boolean;
}

/**
 * WanVideoTextEncode's `(text:weight)` syntax, as the wrapper reads it: every `(text:weight)` is
 * replaced by its text, and the prompt's whole embedding is then scaled by each weight (the
 * product of the weights of its different texts; a text given twice counts once, with its last
 * weight). Not a per-word emphasis: that is what the wrapper does.
 */
export function promptWeights(prompt: string): { text: string; scale: number } {
  const weights = new Map<string, number>();
  let text = prompt;
  for (const [whole, inner, weight] of prompt.matchAll(/\((.*?):([\d.]+)\)/g)) {
    const value = Number(weight);
    if (!Number.isFinite(value))
      throw invalidOption(`Expected a number for the weight of "${whole}" in the prompt but received "${weight}"`);
    text = text.split(whole).join(inner);
    weights.set(inner, value);
  }
  return { text, scale: [...weights.values()].reduce((a, b) => a * b, 1) };
}

// The tokenizer, wherever users have it: the tokenizer option (a spiece.model or a Hugging Face
// tokenizer.json, told apart by content), the checkpoint's own `spiece_model` tensor (ComfyUI),
// or a spiece.model, then a tokenizer.json, beside the checkpoint. A tokenizer.json becomes the
// SentencePiece model it was exported from (lib/tokenizer-json.ts), run by SentencePiece itself.
async function findTokenizer(option: string | undefined, handle: NativeTextEncoder, checkpoint: string): Promise<SentencePieceTokenizer | string> {
  const fromFile = (bytes: Buffer, file: string) => SentencePieceTokenizer.fromBytes(
    isTokenizerJson(bytes, file) ? sentencePieceFromTokenizerJson(bytes.toString('utf8'), file) : bytes, file);
  if (option) {
    const file = path.resolve(option);
    const bytes = await fs.promises.readFile(file).catch((err: NodeJS.ErrnoException) => {
      throw new WanError('WAN_IO', `tokenizer: cannot read ${file}: ${err.message}`);
    });
    return fromFile(bytes, file);
  }
  const embedded = handle.embeddedTokenizer();
  if (embedded) return SentencePieceTokenizer.fromBytes(embedded, `${checkpoint} (tensor 'spiece_model')`);
  const beside = ['spiece.model', 'tokenizer.json'].map((name) => path.join(path.dirname(checkpoint), name));
  for (const file of beside) if (fs.existsSync(file)) return fromFile(await fs.promises.readFile(file), file);
  return `no tokenizer: looked for the tokenizer option, a 'spiece_model' tensor in ${checkpoint} and ${beside.join(' or ')}` +
    " (give the tokenizer option umT5's spiece.model or tokenizer.json)";
}

const TEXT_ENCODER_OPTIONS = optionNames<TextEncoderOptions>()({
  tokenizer: true, textLen: true, populate: true, device: true, loadDevice: true, signal: true, onProgress: true,
});
const ENCODE_OPTIONS = optionNames<EncodeOptions>()({ diskCache: true, forceOffload: true, promptWeights: true, signal: true, onProgress: true });

export class TextEncoder {
  readonly config: ReturnType<NativeTextEncoder['config']> & { textLen: number };
  /** Where the tokenizer came from (a file, or the checkpoint's `spiece_model` tensor); null when none was found. */
  readonly tokenizerSource: string | null;
  readonly #files: string[];
  readonly #tokenizer: SentencePieceTokenizer | string;  // or why there is none
  #native: NativeTextEncoder | undefined;

  private constructor(handle: NativeTextEncoder, textLen: number, files: string[], tokenizer: SentencePieceTokenizer | string) {
    this.#native = handle;
    this.config = { ...handle.config(), textLen };
    this.#tokenizer = tokenizer;
    this.tokenizerSource = typeof tokenizer === 'string' ? null : tokenizer.source;
    this.#files = files;
  }

  /** Loads the official .pth, Kijai's umt5-xxl-enc-bf16.safetensors or ComfyUI's umt5_xxl_* files. */
  static load(file: string | string[], options: TextEncoderOptions = {}): Promise<TextEncoder> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkOptionNames(options, TEXT_ENCODER_OPTIONS);
      const textLen = options.textLen ?? 512;
      if (!Number.isSafeInteger(textLen) || textLen < 2)
        throw invalidOption(`Expected an integer >= 2 for textLen but received ${describeValue(options.textLen)}`);
      if (options.tokenizer !== undefined && (typeof options.tokenizer !== 'string' || options.tokenizer === ''))
        throw invalidOption(`Expected a file path for tokenizer but received ${describeValue(options.tokenizer)}`);
      if (options.device !== undefined) checkDevice(options.device);
      checkLoadDevice(options.loadDevice);
      const plan = await planFiles(file, 'path');
      const abort = bridgeAbort(options.signal);
      try {
        const handle = await native().loadTextEncoder(plan.files, {
          populate: options.populate ?? true, device: resolveDevice(options.device), loadDevice: options.loadDevice ?? 'offload_device',
        }, abort.flag);
        try {
          return new TextEncoder(handle, textLen, plan.files, await findTokenizer(options.tokenizer, handle, plan.files[0]));
        } catch (err) {
          handle.dispose();
          throw err;
        }
      } finally {
        abort.done();
      }
    })(), caller);
  }

  /** The bytes of the weights this model holds, by storage dtype (all resident), and where they are. */
  memoryStats(): MemoryStats {
    return memoryStatsOf(this.handle().memoryStats());
  }

  /** Returns the weights to the CPU after the calls already made; the next use brings them back (see Placement). */
  offload(): Promise<void> {
    const caller = new Error();
    return withCallerStack((async () => this.handle().offload())(), caller);
  }

  private handle(): NativeTextEncoder {
    if (!this.#native) throw new WanError('WAN_INVALID_OPTION', 'the TextEncoder has been disposed');
    return this.#native;
  }

  /** ids and mask, I64 [B, textLen]: cleaned, '</s>' appended, cut and padded as Wan's tokenizer does. */
  tokenize(texts: string[]): { ids: Tensor; mask: Tensor } {
    if (!Array.isArray(texts) || texts.length === 0 || !texts.every((x) => typeof x === 'string'))
      throw invalidOption(`Expected a non-empty array of strings for texts but received ${describeValue(texts)}`);
    this.handle();
    if (typeof this.#tokenizer === 'string') throw new WanError('WAN_BAD_CHECKPOINT', `TextEncoder: ${this.#tokenizer}`);
    return this.#tokenizer.tokenize(texts, this.config.textLen);
  }

  /** The encoder on explicit tokens: [B, L, dim]. */
  async encodeTokens(ids: Tensor, mask: Tensor, options: LongCallOptions = {}): Promise<Tensor> {
    return (await this.run(ids, mask, false, options)).output;
  }

  /** encodeTokens() with named intermediates (for debugging and tests). */
  async trace(ids: Tensor, mask: Tensor): Promise<{ output: Tensor; intermediates: Map<string, Tensor> }> {
    return this.run(ids, mask, true, {});
  }

  private run(ids: Tensor, mask: Tensor, trace: boolean, options: LongCallOptions) {
    const caller = new Error();
    return withCallerStack((async () => {
      const abort = bridgeAbort(options.signal);
      try {
        const r = await this.handle().encodeTokens(Tensor.handle(ids, 'ids'), Tensor.handle(mask, 'mask'), trace, abort.flag);
        return { output: new Tensor(r.output),
                 intermediates: new Map(Object.entries(r.trace ?? {}).map(([k, h]) => [k, new Tensor(h)])) };
      } finally {
        abort.done();
      }
    })(), caller);
  }

  /** Prompts to the embeddings the sampler takes: each [L_i, dim], trimmed to its real length.
   * Positive prompts may carry the wrapper's `(text:weight)` (promptWeights()). */
  encode(prompts: { positive: string | string[]; negative?: string }, options: EncodeOptions = {}): Promise<TextEmbeds> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkOptionNames(options, ENCODE_OPTIONS);
      const positive = Array.isArray(prompts?.positive) ? prompts.positive : [prompts?.positive];
      if (positive.length === 0 || !positive.every((p) => typeof p === 'string'))
        throw invalidOption(`Expected a string or an array of strings for positive but received ${describeValue(prompts?.positive)}`);
      const negative = prompts.negative ?? DEFAULT_NEGATIVE_PROMPT;
      if (typeof negative !== 'string') throw invalidOption(`Expected a string for negative but received ${describeValue(negative)}`);
      if (options.promptWeights !== undefined && typeof options.promptWeights !== 'boolean')
        throw invalidOption(`Expected a boolean for promptWeights but received ${describeValue(options.promptWeights)}`);
      // As WanVideoTextEncode: the positive prompts' weights, the negative prompt as it is.
      const weighted = positive.map((p) => (options.promptWeights === false ? { text: p, scale: 1 } : promptWeights(p)));
      const texts = [...weighted.map((w) => w.text), negative];
      const clock = new ProgressClock('encode', 1, options.onProgress);
      const embeds = await offloadingAfter(options.forceOffload, this, () => this.encodeCached(texts, options));
      clock.report(1);
      const promptEmbeds = embeds.slice(0, positive.length).map((e, i) => {
        if (weighted[i].scale === 1) return e;
        const shape = [...e.shape], scaled = (e.toTypedArray() as Float32Array).map((v) => v * weighted[i].scale);
        e.dispose();
        return Tensor.fromTypedArray(scaled, shape);
      });
      return { promptEmbeds, negativePromptEmbeds: embeds.slice(positive.length) };
    })(), caller);
  }

  // One batch through the encoder, rows trimmed to each prompt's length (T5EncoderModel.__call__).
  private async encodeBatch(texts: string[], options: LongCallOptions): Promise<Tensor[]> {
    const { ids, mask } = this.tokenize(texts);
    const out = await this.encodeTokens(ids, mask, options);
    const values = out.toTypedArray() as Float32Array;
    const masks = mask.toTypedArray() as BigInt64Array;
    const [, L, D] = out.shape;
    out.dispose();
    return texts.map((_, i) => {
      let len = 0;
      for (let j = 0; j < L; j++) len += Number(masks[i * L + j] > 0n);
      return Tensor.fromTypedArray(values.slice(i * L * D, (i * L + len) * D), [len, D]);
    });
  }

  private async encodeCached(texts: string[], options: EncodeOptions): Promise<Tensor[]> {
    // An entry that cannot be read (cut short, overwritten) is a cache miss: encoded again and
    // written over, rather than failing every later run that asks for it.
    const readCached = async (file: string): Promise<Tensor | undefined> => {
      try {
        const { tensors } = await loadSafetensors(file);
        for (const [k, t] of tensors) if (k !== 'embeds') t.dispose();
        return tensors.get('embeds');
      } catch (err) {
        if (err instanceof WanError && err.code === 'WAN_BAD_CHECKPOINT') return undefined;
        throw err;
      }
    };
    if (!options.diskCache) return this.encodeBatch(texts, options);
    if (typeof options.diskCache !== 'string')
      throw invalidOption(`Expected a folder path for diskCache but received ${describeValue(options.diskCache)}`);
    // Keyed by the encoder files (path, size, mtime), the tokenizer, textLen and the prompt as
    // cleaned (what the tokenizer reads: prompts that clean alike share an entry).
    const identity = this.#files.map((f) => { const s = fs.statSync(f); return `${f}:${s.size}:${s.mtimeMs}`; }).join('|');
    const keyOf = (text: string) => crypto.createHash('sha256')
      .update(JSON.stringify([identity, this.tokenizerSource, this.config.textLen, cleanText(text)])).digest('hex');
    await fs.promises.mkdir(options.diskCache, { recursive: true });
    const result: (Tensor | undefined)[] = [];
    const missing: number[] = [];
    for (const [i, text] of texts.entries()) {
      const file = path.join(options.diskCache, `${keyOf(text)}.safetensors`);
      result[i] = fs.existsSync(file) ? await readCached(file) : undefined;
      if (!result[i]) missing.push(i);
    }
    if (missing.length) {
      const fresh = await this.encodeBatch(missing.map((i) => texts[i]), options);
      for (const [j, i] of missing.entries()) {
        result[i] = fresh[j];
        await saveSafetensors(path.join(options.diskCache, `${keyOf(texts[i])}.safetensors`), { embeds: fresh[j] }, { prompt: texts[i] });
      }
    }
    return result as Tensor[];
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}
