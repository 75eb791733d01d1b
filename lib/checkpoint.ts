// Checkpoint files: safetensors (single or sharded) and torch.save zip archives, read by
// memory-mapping them on the engine thread; tensors alias the mapping, nothing is copied.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { bridgeAbort } from './abort';
import { checkOptionNames, describeValue, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { native } from './native';
import { LongCallOptions, ProgressClock } from './progress';
import { Tensor } from './tensor';

export interface LoadCheckpointOptions extends LongCallOptions {
  /**
   * Read every page into memory before resolving (default true), so that the first use of a
   * weight does not stall on the disk. With false, pages are read when first touched.
   */
  populate?: boolean;
}

export interface LoadedCheckpoint {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

export interface CheckpointInfo {
  family: 'wan-dit' | 'wan-vae' | 'umt5' | 'clip-vision' | 'unknown';
  variant: string;       // DiT '1.3B' | '14B' | 'tiny' ...; VAE 'wan2.1'; umT5 'xxl'; '' when unknown
  task: string;          // DiT 't2v' | 'i2v' | 'flf2v' | 'vace'; '' otherwise
  layout: string;        // 'official' | 'comfyui' | 'diffusers' | 'hf-t5' | 'hf-clip' | 'open-clip' ...
  keyPrefix: string;     // the prefix stripped from every key, '' when none
  quantization: string;  // 'none' | 'fp8_e4m3fn' | 'fp8_e4m3fn_scaled' | ...
  dtypes: Record<string, number>;
  numTensors: number;
  numParams: number;
  config: Record<string, number>;  // inferred from shapes
  warnings: string[];
  summary: string;       // the human-readable report `wan-native inspect` prints
}

type PathArg = string | string[];

const SHARD_INDEX = /\.index\.json$/;

function checkPaths(p: unknown, what: string): string[] {
  const list = Array.isArray(p) ? p : [p];
  if (list.length === 0 || !list.every((x) => typeof x === 'string' && x.length > 0))
    throw invalidOption(`Expected a file path or a non-empty array of file paths for ${what} but received ${describeValue(p)}`);
  return list as string[];
}

const LOAD_OPTIONS = optionNames<LoadCheckpointOptions>()({ populate: true, signal: true, onProgress: true });

function checkOptions(options: LoadCheckpointOptions | undefined): LoadCheckpointOptions {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null)
    throw invalidOption(`Expected an object for options but received ${describeValue(options)}`);
  checkOptionNames(options, LOAD_OPTIONS);
  if (options.populate !== undefined && typeof options.populate !== 'boolean')
    throw invalidOption(`Expected a boolean for populate but received ${describeValue(options.populate)}`);
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function')
    throw invalidOption(`Expected a function for onProgress but received ${describeValue(options.onProgress)}`);
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal))
    throw invalidOption(`Expected an AbortSignal for signal but received ${describeValue(options.signal)}`);
  return options;
}

export interface ShardPlan {
  files: string[];
  expected?: { index: string; owner: Map<string, string> };  // key -> shard file from the index
}

// A Hugging Face shard index: {"metadata": {...}, "weight_map": {"key": "file.safetensors"}}.
async function readShardIndex(indexPath: string): Promise<ShardPlan> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await fs.promises.readFile(indexPath, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code) throw new WanError('WAN_IO', `${indexPath}: ${e.message}`);
    throw new WanError('WAN_BAD_CHECKPOINT', `${indexPath}: shard index is not valid JSON: ${e.message}`);
  }
  const weightMap = (parsed as { weight_map?: unknown })?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap))
    throw new WanError('WAN_BAD_CHECKPOINT', `${indexPath}: expected an object "weight_map" of tensor name -> shard file`);
  const dir = path.dirname(indexPath);
  const owner = new Map<string, string>();
  const files: string[] = [];
  for (const [key, file] of Object.entries(weightMap)) {
    if (typeof file !== 'string' || file.length === 0)
      throw new WanError('WAN_BAD_CHECKPOINT', `${indexPath}: weight_map entry '${key}' must name a shard file`);
    const resolved = path.resolve(dir, file);
    if (!files.includes(resolved)) files.push(resolved);
    owner.set(key, resolved);
  }
  if (files.length === 0) throw new WanError('WAN_BAD_CHECKPOINT', `${indexPath}: weight_map lists no tensors`);
  return { files, expected: { index: indexPath, owner } };
}

export async function planFiles(p: PathArg, what: string): Promise<ShardPlan> {
  const list = checkPaths(p, what);
  if (list.length === 1 && SHARD_INDEX.test(list[0])) return readShardIndex(list[0]);
  return { files: list.map((f) => path.resolve(f)) };
}

async function loadPlan(plan: ShardPlan, options: LoadCheckpointOptions): Promise<LoadedCheckpoint> {
  const abort = bridgeAbort(options.signal);
  const clock = new ProgressClock('load', plan.files.length, options.onProgress);
  const tensors = new Map<string, Tensor>();
  const source = new Map<string, string>();
  const metadata: Record<string, string> = {};
  try {
    clock.report(0);
    for (const [i, file] of plan.files.entries()) {
      const loaded = await native().loadCheckpoint(file, { populate: options.populate ?? true }, abort.flag);
      for (const [j, name] of loaded.names.entries()) {
        const previous = source.get(name);
        if (previous !== undefined)
          throw new WanError('WAN_BAD_CHECKPOINT', `${file}: tensor '${name}' also appears in ${previous}`);
        source.set(name, file);
        tensors.set(name, new Tensor(loaded.tensors[j]));
      }
      for (const [k, v] of Object.entries(loaded.metadata)) if (!(k in metadata)) metadata[k] = v;
      clock.report(i + 1);
    }
    if (plan.expected) {
      for (const [key, file] of plan.expected.owner) {
        const found = source.get(key);
        if (found !== file)
          throw new WanError('WAN_BAD_CHECKPOINT',
            `${plan.expected.index}: tensor '${key}' should be in ${file} but ` +
            (found ? `was found in ${found}` : 'is in no shard'));
      }
    }
  } catch (err) {
    for (const t of tensors.values()) t.dispose();
    throw err;
  } finally {
    abort.done();
  }
  return { tensors, metadata };
}

async function firstBytes(file: string, n: number): Promise<Buffer> {
  const handle = await fs.promises.open(file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new WanError('WAN_IO', `${file}: ${err.message}`);
  });
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await handle.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Loads a safetensors file, the shards of one (a list, or their `*.index.json`). */
export function loadSafetensors(p: PathArg, options?: LoadCheckpointOptions): Promise<LoadedCheckpoint> {
  const caller = new Error();
  return withCallerStack((async () => {
    const opts = checkOptions(options);
    const plan = await planFiles(p, 'path');
    for (const file of plan.files) {
      const head = await firstBytes(file, 9);
      if (head.length < 9 || head[8] !== 0x7b /* '{' */)
        throw new WanError('WAN_BAD_CHECKPOINT',
          `${file}: not a safetensors file (expected an 8-byte header length then '{'); use loadCheckpoint for .pth files`);
    }
    return loadPlan(plan, opts);
  })(), caller);
}

/** Loads a checkpoint of any supported format, told apart by content: safetensors (single or sharded) or .pth. */
export function loadCheckpoint(p: PathArg, options?: LoadCheckpointOptions): Promise<LoadedCheckpoint> {
  const caller = new Error();
  return withCallerStack((async () => loadPlan(await planFiles(p, 'path'), checkOptions(options)))(), caller);
}

/** Writes a safetensors file atomically: a temporary file beside it, then a rename. */
export function saveSafetensors(
  file: string,
  tensors: Map<string, Tensor> | Record<string, Tensor>,
  metadata: Record<string, string> = {},
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  const caller = new Error();
  return withCallerStack((async () => {
    if (typeof file !== 'string' || file.length === 0)
      throw invalidOption(`Expected a file path for path but received ${describeValue(file)}`);
    if (typeof tensors !== 'object' || tensors === null || Array.isArray(tensors))
      throw invalidOption(`Expected a Map or an object of named tensors for tensors but received ${describeValue(tensors)}`);
    const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
    if (typeof metadata !== 'object' || metadata === null)
      throw invalidOption(`Expected an object of strings for metadata but received ${describeValue(metadata)}`);
    for (const [k, v] of Object.entries(metadata))
      if (typeof v !== 'string')
        throw invalidOption(`Expected a string for metadata '${k}' but received ${describeValue(v)}`);
    const names = entries.map(([name]) => name);
    const handles = entries.map(([name, t]) => Tensor.handle(t, `tensor '${name}'`));
    const abort = bridgeAbort(options.signal);
    try {
      await native().saveSafetensors(file, names, handles, metadata, abort.flag);
    } finally {
      abort.done();
    }
  })(), caller);
}

/**
 * Reads headers only and says what the checkpoint is (family, variant, task, layout, dtypes,
 * quantization, config). Shards are inspected together, given as a list or their index.
 */
export function inspectCheckpoint(p: PathArg): Promise<CheckpointInfo> {
  const caller = new Error();
  return withCallerStack((async () => {
    const plan = await planFiles(p, 'path');
    const { text, ...info } = await native().inspectCheckpoint(plan.files);
    return { ...info, summary: text } as CheckpointInfo;
  })(), caller);
}
