// Runs ComfyUI workflows built from the WanVideoWrapper and VideoHelperSuite nodes natively:
// `npx wan-native run workflow.json`. The workflow is read in API format (ComfyUI's
// "Export (API)", node id -> { class_type, inputs }) or UI format ("Save": nodes, links and
// positional widgets_values), validated, and its nodes that lead to a VHS_VideoCombine run in
// order, each value freed as soon as no node still to run needs it.
//
// Nodes (lib/workflow-spec.ts has every input, default and range; lib/workflow-nodes.ts what
// each does): WanVideoModelLoader, LoadWanVideoT5TextEncoder, WanVideoVAELoader,
// LoadWanVideoClipTextEncoder, CLIPVisionLoader, WanVideoTextEncode, WanVideoClipVisionEncode,
// WanVideoImageToVideoEncode, WanVideoEmptyEmbeds, WanVideoBlockSwap, WanVideoTorchCompileSettings,
// WanVideoLoraSelect, WanVideoLoraBlockEdit, WanVideoContextOptions, WanVideoEnhanceAVideo,
// WanVideoSampler, WanVideoDecode, VHS_VideoCombine and LoadImage. Inputs the library cannot
// honour yet (the text encoder's fp8 quantization and the model's fp8 variants the library
// lacks, torch.compile, caches, SLG, RIFLEx, ...) are refused with a message naming the node and
// input, unless their value is the one that does nothing.
// LoRAs chained through prev_lora are merged into the model's weights at load, in chain order
// (or, with merge_loras false on all of them, applied at run time), their files looked up in the
// loras folders. Block swap applies as WanModel.load's blockSwap,
// blocks_to_swap clamped to the model's blocks as the wrapper clamps it.
// Placement: every model computes on RunWorkflowOptions.device (default: the GPU where there is
// one). The loaders' load_device, the nodes' force_offload, WanVideoTextEncode's model_to_offload
// and block swap's offload_img_emb / offload_txt_emb act as in the wrapper (lib/device.ts,
// Placement); WanVideoDecode offloads the VAE when done, as the wrapper's does. WanVideoTextEncode's
// device, use_non_blocking, low_mem_load and the encoders' precisions are accepted and have no
// effect.
//
// wan-native extensions, inputs the ComfyUI nodes do not have (in a UI workflow, extra
// widgets_values after the node's own):
//   WanVideoModelLoader.num_heads, .text_len   heads and text length of a model whose dims
//                                              are not a release's (WanModel.load numHeads, textLen)
//   LoadWanVideoClipTextEncoder.num_heads,     heads of a CLIP tower that is not ViT-H/14
//   CLIPVisionLoader.num_heads
//   LoadWanVideoT5TextEncoder.tokenizer        a spiece.model or tokenizer.json, a file name
//                                              resolved against the text_encoders folders
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { abortedError } from './abort';
import { checkDevice, resolveDevice, type Device } from './device';
import { describeValue, invalidOption, WanError } from './errors';
import type { Progress } from './progress';
import { checkValue, dependencies, GraphNode, nodeName, parseGraph, ParsedGraph } from './workflow-graph';
import { checkModelDirs, ModelDirs, ModelFolder, resolveModelFile } from './workflow-models';
import { prepareOutput } from './video';
import { EXECUTORS, Produced, videoCombineOptions } from './workflow-nodes';

export type { ParsedGraph, GraphNode, LinkRef, ApiPrompt } from './workflow-graph';
export type { ModelFolder, ModelDirs } from './workflow-models';
export { NODE_SPECS } from './workflow-spec';
export type { NodeSpec, InputSpec } from './workflow-spec';

export interface RunWorkflowOptions {
  /**
   * Folders the nodes' file names are looked up in, per ComfyUI model folder kind
   * (diffusion_models, text_encoders, vae, clip_vision, loras, and input for LoadImage), or one
   * list searched for every kind. A name is tried as a path relative to each folder, then as
   * a file name anywhere below them.
   */
  modelDirs?: ModelDirs;
  /** Where VHS_VideoCombine writes (save_output true); default `<cwd>/output`. */
  outputDir?: string;
  /** Where WanVideoTextEncode's use_disk_cache keeps embeddings; default `$XDG_CACHE_HOME/wan-native` or `~/.cache/wan-native`. */
  cacheDir?: string;
  /** Where the models compute (the loaders' main_device), as ModelLoaderOptions.device:
   * default 'auto', the GPU where this build sees one. */
  device?: Device;
  signal?: AbortSignal;
  /** Progress of the node running (a decode streamed into Video Combine reports under the decode node). */
  onProgress?: (e: { nodeId: string; classType: string; progress?: Progress }) => void;
  /** Called as each node starts. */
  onNodeStart?: (nodeId: string, classType: string) => void;
}

export interface WorkflowResult {
  /** Per output node: the files it wrote. */
  outputs: Record<string, { files?: string[] }>;
  /** Milliseconds each node ran, by node id (a decode streamed into Video Combine counts in the latter). */
  timings: Record<string, number>;
  /** What ran differently from ComfyUI, by node (e.g. torch.compile settings, which have no effect here). */
  warnings: string[];
}

/**
 * Reads a workflow in API format (optionally wrapped as { prompt }) or UI format, checks it and
 * plans its run: unknown node types, cycles, links to missing nodes or outputs, missing
 * required inputs, wrong types, out-of-range values and options wan-native cannot honour yet
 * are errors (WAN_INVALID_OPTION) naming the node and input. Only the nodes that lead to an
 * output node are checked beyond their type, and run.
 */
export function parseWorkflow(json: object): ParsedGraph {
  return parseGraph(json);
}

function readWorkflow(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new WanError('WAN_IO', `cannot read the workflow ${file}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw invalidOption(`the workflow ${file} is not JSON: ${(err as Error).message}`);
  }
}

function checkOptions(o: unknown): RunWorkflowOptions & { dirs: ModelDirs } {
  if (typeof o !== 'object' || o === null) throw invalidOption(`Expected an options object but received ${describeValue(o)}`);
  const r = o as RunWorkflowOptions;
  for (const key of ['outputDir', 'cacheDir'] as const) {
    if (r[key] !== undefined && (typeof r[key] !== 'string' || r[key] === ''))
      throw invalidOption(`Expected a folder path for ${key} but received ${describeValue(r[key])}`);
  }
  if (r.device !== undefined) checkDevice(r.device);
  if (r.signal !== undefined && !(r.signal instanceof AbortSignal))
    throw invalidOption(`Expected an AbortSignal for signal but received ${describeValue(r.signal)}`);
  for (const key of ['onProgress', 'onNodeStart'] as const) {
    if (r[key] !== undefined && typeof r[key] !== 'function')
      throw invalidOption(`Expected a function for ${key} but received ${describeValue(r[key])}`);
  }
  return { ...r, dirs: checkModelDirs(r.modelDirs) };
}

// A copy JSON can write: BigInt seeds become numbers where exact, else their digits as a string.
function jsonSafe(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value, (_, v) =>
    typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v));
}

function defaultCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'wan-native');
}

// Errors from a node name it, so that a message says where in the workflow it went wrong.
function inNode(err: unknown, node: GraphNode): unknown {
  if (!(err instanceof WanError) || err.code === 'WAN_ABORTED') return err;
  const prefix = nodeName(node.id, node.classType);
  if (err.message.startsWith(prefix)) return err;
  const wrapped = new WanError(err.code, `${prefix}: ${err.message}`);
  wrapped.stack = `${wrapped.name}: ${wrapped.message}\n${(err.stack ?? '').split('\n').slice(1).join('\n')}`;
  return wrapped;
}

// A node output and how many inputs still to run read it.
interface Slot {
  produced: Produced;
  refs: number;
  /** Outputs this one borrows from (Produced.retains), released with it. */
  holds: string[];
}

const keyOf = (node: string, slot: number) => `${node}:${slot}`;

function foldersOf(node: GraphNode, name: string): readonly ModelFolder[] {
  const input = node.spec.inputs.find((i) => i.name === name);
  if (input?.kind !== 'FILE') throw new WanError('WAN_INTERNAL', `${nodeName(node.id, node.classType)}: ${name} is not a file input`);
  return input.folders;
}

/**
 * Runs a workflow (a path to its JSON, or the parsed object) and resolves to the files each
 * output node wrote and each node's run time. Values are reference counted: a model, an
 * encoder or a tensor is disposed as soon as the last node that reads it has run.
 */
export async function runWorkflow(workflow: string | object, options: RunWorkflowOptions = {}): Promise<WorkflowResult> {
  const o = checkOptions(options);
  if (typeof workflow !== 'string' && (typeof workflow !== 'object' || workflow === null))
    throw invalidOption(`Expected a workflow file path or object but received ${describeValue(workflow)}`);
  const json = typeof workflow === 'string' ? readWorkflow(workflow) : workflow;
  const graph = parseGraph(json);
  if (o.signal?.aborted) throw abortedError();

  // As VHS: `prompt` is the API graph, `workflow` the UI one.
  const metadata: Record<string, unknown> = { prompt: jsonSafe(graph.prompt), ...(graph.workflow ? { workflow: jsonSafe(graph.workflow) } : {}) };

  // What the outputs need (ffmpeg, a folder that takes files), checked before the first node
  // runs: found at the end, it would cost the whole generation.
  for (const id of graph.order) {
    const node = graph.nodes.get(id)!;
    if (node.classType !== 'VHS_VideoCombine') continue;
    try {
      await prepareOutput(videoCombineOptions(node, o.outputDir, metadata));
    } catch (err) {
      throw inNode(err, node);
    }
  }

  // Readers of each output among the nodes that run.
  const readers = new Map<string, { node: GraphNode; input: string }[]>();
  for (const id of graph.order) {
    const node = graph.nodes.get(id)!;
    for (const [input, ref] of dependencies(node)) {
      const key = keyOf(ref.node, ref.slot);
      readers.set(key, [...(readers.get(key) ?? []), { node, input }]);
    }
  }

  const live = new Map<string, Slot>();
  // A widget fed by a link (a frame count from VHS_LoadVideo, say): the value the link brings,
  // checked as the widget's own value would have been.
  const linkedValue = (node: GraphNode, name: string): unknown => {
    const ref = node.links[name];
    const input = node.spec.inputs.find((i) => i.name === name)!;
    const where = `${nodeName(node.id, node.classType)} input ${name} (from node ${ref.node})`;
    const value = checkValue(input, live.get(keyOf(ref.node, ref.slot))?.produced.value, where);
    const why = input.refuse?.(value);
    if (why) throw new WanError('WAN_INVALID_OPTION', `${where}: ${why}`);
    return value;
  };
  const release = (key: string) => {
    const slot = live.get(key);
    if (!slot || --slot.refs > 0) return;
    live.delete(key);
    slot.produced.dispose?.();
    for (const held of slot.holds) release(held);
  };

  const result: WorkflowResult = { outputs: {}, timings: {}, warnings: [] };
  const textCacheDir = path.join(path.resolve(o.cacheDir ?? defaultCacheDir()), 'text-embeds');
  const device = resolveDevice(o.device ?? 'auto') as Device;
  try {
    for (const id of graph.order) {
      if (o.signal?.aborted) throw abortedError();
      const node = graph.nodes.get(id)!;
      o.onNodeStart?.(id, node.classType);
      const reader = readers.get(keyOf(id, 0)) ?? [];
      const started = performance.now();
      let produced: Produced[];
      try {
        produced = await EXECUTORS[node.classType]({
          node,
          value: <T>(name: string) => (name in node.links ? linkedValue(node, name) : node.values[name]) as T,
          input: <T>(name: string) => {
            const ref = node.links[name];
            return ref === undefined ? undefined : live.get(keyOf(ref.node, ref.slot))?.produced.value as T;
          },
          file: (name: string) => resolveModelFile(node.values[name] as string, foldersOf(node, name), o.dirs,
            `${nodeName(id, node.classType)} input ${name}`),
          signal: o.signal,
          onProgress: (progress: Progress) => o.onProgress?.({ nodeId: id, classType: node.classType, progress }),
          streamFrames: reader.length === 1 && reader[0].node.classType === 'VHS_VideoCombine',
          metadata,
          outputDir: o.outputDir,
          textCacheDir,
          device,
          warn: (message: string) => result.warnings.push(`${nodeName(id, node.classType)}: ${message}`),
        });
      } catch (err) {
        throw inNode(err, node);
      }
      result.timings[id] = performance.now() - started;

      produced.forEach((p, slot) => {
        const key = keyOf(id, slot);
        const holds = (p.retains ?? []).map((input) => keyOf(node.links[input].node, node.links[input].slot));
        for (const held of holds) live.get(held)!.refs++;
        const count = readers.get(key)?.length ?? 0;
        live.set(key, { produced: p, refs: Math.max(count, 1), holds });
        if (count === 0) release(key);  // read by nothing (an unused output): freed now
      });
      if (node.spec.output) result.outputs[id] = produced[0].value as { files?: string[] };
      for (const [, ref] of dependencies(node)) release(keyOf(ref.node, ref.slot));
    }
    return result;
  } finally {
    // After an error or an abort: free what is still held.
    for (const slot of live.values()) slot.produced.dispose?.();
    live.clear();
  }
}
