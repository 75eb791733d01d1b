// A ComfyUI workflow as a checked graph: the API format (what ComfyUI's /prompt takes and
// "Export (API)" saves) read directly, the UI format (what "Save" writes, with positional
// widgets_values) converted to it first; then every node that leads to an output is validated
// and put in the order it runs.
import { describeValue, invalidOption, WanError } from './errors';
import { InputSpec, NODE_SPECS, NodeSpec, widgetNames } from './workflow-spec';

/** The API format: node id -> class and inputs; a link is [source node id, output slot]. */
export type ApiPrompt = Record<string, { class_type: string; inputs: Record<string, unknown>; _meta?: { title?: string } }>;

export interface LinkRef {
  node: string;
  slot: number;
}

export interface GraphNode {
  id: string;
  classType: string;
  title?: string;
  spec: NodeSpec;
  /** Widget values, defaults applied (an optional input without a default is absent). */
  values: Record<string, unknown>;
  /** Connected link inputs. */
  links: Record<string, LinkRef>;
}

export interface ParsedGraph {
  format: 'api' | 'ui';
  /** The nodes that lead to an output, validated, by id. */
  nodes: Map<string, GraphNode>;
  /** Output nodes (VHS_VideoCombine), in id order. */
  outputs: string[];
  /** The ids of `nodes` in the order they run: each after its inputs, deeper input chains first. */
  order: string[];
  /** Every node of the workflow (API format), run or not. */
  prompt: ApiPrompt;
  /** The workflow as given, when it was in UI format. */
  workflow?: Record<string, unknown>;
}

export function nodeName(id: string, classType: string): string {
  return `node ${id} (${classType})`;
}

function fail(message: string): never {
  throw invalidOption(message);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ComfyUI's rule: an input value that is a 2-element array [string, integer] is a link.
function asLink(v: unknown): LinkRef | undefined {
  if (!Array.isArray(v) || v.length !== 2) return undefined;
  const [node, slot] = v;
  if ((typeof node !== 'string' && typeof node !== 'number') || typeof slot !== 'number' || !Number.isInteger(slot)) return undefined;
  return { node: String(node), slot };
}

// ---------------------------------------------------------------------------------------------
// UI format -> API format

interface UiInput { name: string; type?: string; link: number | null; widget?: { name: string } }
interface UiNode {
  id: number | string; type: string; mode?: number; title?: string;
  inputs?: UiInput[]; outputs?: { name?: string; type?: string }[];
  widgets_values?: unknown[] | Record<string, unknown>;
}
interface UiLink { id: number; from: string; fromSlot: number; to: string; toSlot: number }

// Frontend-only nodes: no class behind them.
const UI_ONLY = new Set(['Note', 'MarkdownNote', 'PrimitiveNode', 'Reroute']);
const SEED_CONTROLS = new Set(['fixed', 'increment', 'decrement', 'randomize']);
const MODE_NEVER = 2;   // muted: never runs
const MODE_BYPASS = 4;  // bypassed: inputs pass through to outputs of the same type

function uiLinks(workflow: Record<string, unknown>): Map<number, UiLink> {
  const raw = workflow.links ?? [];
  if (!Array.isArray(raw)) fail(`UI workflow: expected an array for links but received ${describeValue(raw)}`);
  const links = new Map<number, UiLink>();
  for (const [i, l] of raw.entries()) {
    // [id, from node, from slot, to node, to slot, type], or the object form of newer frontends.
    const parts = Array.isArray(l) ? l : isObject(l) ? [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot] : [];
    const [id, from, fromSlot, to, toSlot] = parts as unknown[];
    if (typeof id !== 'number' || (typeof from !== 'number' && typeof from !== 'string') || typeof fromSlot !== 'number' ||
        (typeof to !== 'number' && typeof to !== 'string') || typeof toSlot !== 'number')
      fail(`UI workflow: links[${i}] is not [id, from node, from slot, to node, to slot, type]: ${describeValue(l)}`);
    links.set(id, { id, from: String(from), fromSlot, to: String(to), toSlot });
  }
  return links;
}

// widgets_values -> input values by name; `positions` records where each came from, for messages.
function mapWidgets(node: UiNode, spec: NodeSpec, positions: Map<string, string>): Record<string, unknown> {
  const where = nodeName(String(node.id), node.type);
  const values = node.widgets_values;
  const out: Record<string, unknown> = {};
  if (values === undefined || values === null) return out;
  if (isObject(values)) {
    for (const [name, v] of Object.entries(values)) {
      // VHS's preview state, and widgets of the UI alone (VHS's upload button).
      if (name === 'videopreview' || spec.uiOnlyWidgets?.some((w) => w.name === name)) continue;
      out[name] = v;
      positions.set(name, `widgets_values.${name}`);
    }
    return out;
  }
  if (!Array.isArray(values)) fail(`${where}: expected an array or an object for widgets_values but received ${describeValue(values)}`);
  if (spec.uiObjectWidgets)
    fail(`${where}: widgets_values is an array, which cannot be mapped to this node's inputs unambiguously ` +
      '(VideoHelperSuite stores them as an object by name); save the workflow with a current VideoHelperSuite or in API format');
  const { official, extensions } = widgetNames(spec);
  const names = [...official, ...extensions];
  let i = 0;
  for (const name of names) {
    if (i >= values.length) break;
    out[name] = values[i];
    positions.set(name, `widgets_values[${i}]`);
    i++;
    const input = spec.inputs.find((s) => s.name === name)!;
    // The frontend stores a seed's "control after generate" right after it.
    if (input.kind === 'INT' && input.u64 && typeof values[i] === 'string' && SEED_CONTROLS.has(values[i] as string)) i++;
    if (spec.uiOnlyWidgets?.some((w) => w.after === name) && i < values.length && typeof values[i] === 'string') i++;
  }
  if (i < values.length)
    fail(`${where}: widgets_values has ${values.length} values but the node has ${official.length} widgets ` +
      `(${official.join(', ')})${extensions.length ? ` and the wan-native extensions ${extensions.join(', ')}` : ''}; ` +
      'the workflow was saved by another version of the node: export it in API format');
  return out;
}

/** Converts a UI-format workflow to the API format, with where each widget value came from. */
export function uiToApi(workflow: Record<string, unknown>): { prompt: ApiPrompt; positions: Map<string, Map<string, string>> } {
  if (!Array.isArray(workflow.nodes)) fail(`UI workflow: expected an array for nodes but received ${describeValue(workflow.nodes)}`);
  const links = uiLinks(workflow);
  const nodes = new Map<string, UiNode>();
  for (const [i, n] of (workflow.nodes as unknown[]).entries()) {
    if (!isObject(n) || (typeof n.id !== 'number' && typeof n.id !== 'string') || typeof n.type !== 'string')
      fail(`UI workflow: nodes[${i}] has no id or type: ${describeValue(n)}`);
    if (nodes.has(String(n.id))) fail(`UI workflow: two nodes have the id ${n.id}`);
    nodes.set(String(n.id), n as unknown as UiNode);
  }

  // Where a value on an input really comes from: through reroutes and bypassed nodes. Returns
  // undefined when nothing reaches the input (a muted node, a bypass without a matching input)
  // and 'primitive' for a PrimitiveNode, whose value the target already holds in its widgets.
  const origin = (linkId: number, where: string, seen = new Set<number>()): LinkRef | 'primitive' | undefined => {
    const l = links.get(linkId);
    if (!l) fail(`${where}: refers to link ${linkId}, which is not in the workflow's links`);
    if (seen.has(linkId)) fail(`${where}: link ${linkId} loops through reroutes or bypassed nodes`);
    seen.add(linkId);
    const from = nodes.get(l.from);
    if (!from) return { node: l.from, slot: l.fromSlot };  // reported by the API validation
    if (from.type === 'PrimitiveNode') return 'primitive';
    if (from.mode === MODE_NEVER) return undefined;
    if (from.type === 'Reroute' || from.mode === MODE_BYPASS) {
      const type = from.outputs?.[l.fromSlot]?.type;
      const through = from.type === 'Reroute' ? from.inputs?.[0]
        : from.inputs?.find((i) => i.link != null && type !== undefined && i.type === type);
      if (!through || through.link == null) return undefined;
      return origin(through.link, where, seen);
    }
    return { node: l.from, slot: l.fromSlot };
  };

  const prompt: ApiPrompt = {};
  const positions = new Map<string, Map<string, string>>();
  for (const [id, n] of nodes) {
    if (UI_ONLY.has(n.type) || n.mode === MODE_NEVER || n.mode === MODE_BYPASS) continue;
    const spec = NODE_SPECS.get(n.type);
    const where = nodeName(id, n.type);
    const pos = new Map<string, string>();
    const inputs = spec ? mapWidgets(n, spec, pos) : {};
    for (const input of n.inputs ?? []) {
      if (!isObject(input) || input.link === null || input.link === undefined) continue;
      const name = input.widget?.name ?? input.name;
      const from = origin(input.link, `${where} input ${name}`);
      if (from === 'primitive') continue;
      if (from === undefined) {
        delete inputs[name];
        continue;
      }
      inputs[name] = [from.node, from.slot];
      pos.delete(name);
    }
    prompt[id] = { class_type: n.type, inputs, ...(n.title ? { _meta: { title: n.title } } : {}) };
    positions.set(id, pos);
  }
  return { prompt, positions };
}

// ---------------------------------------------------------------------------------------------
// Validation

/** A widget's value checked against its spec (its kind, range and options); also used at run
 * time for a widget whose value comes through a link. */
export function checkValue(input: InputSpec, value: unknown, where: string): unknown {
  const got = describeValue(value);
  switch (input.kind) {
    case 'INT': {
      if (input.u64 && typeof value === 'bigint') {
        if (value < 0n || value > (1n << 64n) - 1n) fail(`${where}: expected an integer between 0 and 2^64-1 but received ${value}`);
        return value;
      }
      if (typeof value !== 'number' || !Number.isInteger(value))
        fail(`${where}: expected an integer${input.u64 ? ' (or a BigInt)' : ''} but received ${got}`);
      if (input.u64 && !Number.isSafeInteger(value) && value > 0)
        fail(`${where}: ${value} is above 2^53-1, where JSON numbers lose digits; pass the workflow as an object with a BigInt seed`);
      if (value < input.min || value > (input.u64 ? Number.MAX_VALUE : input.max))
        fail(`${where}: expected an integer between ${input.min} and ${input.u64 ? '2^64-1' : input.max} but received ${got}`);
      return value;
    }
    case 'FLOAT':
      if (typeof value !== 'number' || !Number.isFinite(value)) fail(`${where}: expected a number but received ${got}`);
      if (value < input.min || value > input.max)
        fail(`${where}: expected a number between ${input.min} and ${input.max} but received ${got}`);
      return value;
    case 'BOOLEAN':
      if (typeof value !== 'boolean') fail(`${where}: expected a boolean but received ${got}`);
      return value;
    case 'STRING':
      if (typeof value !== 'string') fail(`${where}: expected a string but received ${got}`);
      return value;
    case 'FILE':
      if (typeof value !== 'string' || value === '') fail(`${where}: expected a file name but received ${got}`);
      return value;
    case 'COMBO': {
      const known = input.options.includes(value as string) || input.supported?.includes(value as string);
      if (!known) fail(`${where}: expected one of ${input.options.join(', ')} but received ${got}`);
      if (input.supported && !input.supported.includes(value as string))
        fail(`${where}: ${JSON.stringify(value)} is not available yet in wan-native (available: ${input.supported.join(', ')})`);
      return value;
    }
    case 'LINK':
      return value;
  }
}

// Widget kinds a link can feed (ComfyUI's widgets converted to inputs).
const LINKABLE_WIDGETS = new Set(['INT', 'FLOAT', 'BOOLEAN', 'STRING']);

const article = (type: string) => (/^[AEIOU]/.test(type) ? 'an' : 'a');

/** The type a link into an input must carry: a link input's type, or a linked widget's kind. */
export function linkType(input: InputSpec): string {
  return input.kind === 'LINK' ? input.type : input.kind;
}

function validateNode(id: string, entry: ApiPrompt[string], positions: Map<string, string> | undefined): GraphNode {
  const spec = NODE_SPECS.get(entry.class_type)!;
  const name = nodeName(id, entry.class_type);
  const values: Record<string, unknown> = {};
  const links: Record<string, LinkRef> = {};
  const where = (input: string) => `${name} input ${input}${positions?.has(input) ? ` (${positions.get(input)})` : ''}`;
  for (const key of Object.keys(entry.inputs)) {
    if (!spec.inputs.some((i) => i.name === key))
      fail(`${name}: unknown input ${key} (the node's inputs: ${spec.inputs.map((i) => i.name).join(', ')})`);
  }
  for (const input of spec.inputs) {
    const raw = entry.inputs[input.name];
    if (raw === undefined || raw === null) {
      if (input.required) fail(`${name}: missing required input ${input.name}`);
      if (input.kind !== 'LINK' && input.kind !== 'FILE' && input.default !== undefined) values[input.name] = input.default;
      continue;
    }
    const ref = asLink(raw);
    if (input.kind === 'LINK') {
      if (!ref) fail(`${where(input.name)}: expected a link [node id, output index] to a ${input.type} output but received ${describeValue(raw)}`);
      links[input.name] = ref;
      const why = input.refuse?.(raw);
      if (why) fail(`${where(input.name)}: ${why}`);
      continue;
    }
    if (ref) {
      // A widget turned into an input: its value comes from another node's INT, FLOAT, BOOLEAN or
      // STRING output when the node runs, and is checked then (workflow.ts).
      if (!LINKABLE_WIDGETS.has(input.kind))
        fail(`${where(input.name)}: expected a value of type ${input.kind} but received a link to node ${ref.node} (a ${input.kind} widget takes no link)`);
      if (spec.output)
        fail(`${where(input.name)}: a link (to node ${ref.node}) is not available yet in wan-native here: an output node's settings are read before the run`);
      links[input.name] = ref;
      continue;
    }
    values[input.name] = checkValue(input, raw, where(input.name));
    const why = input.refuse?.(values[input.name]);
    if (why) fail(`${where(input.name)}: ${why}`);
  }
  const why = spec.check?.(values, new Set(Object.keys(links)));
  if (why) fail(`${name}: ${why}`);
  return { id, classType: entry.class_type, title: entry._meta?.title, spec, values, links };
}

function checkPrompt(prompt: unknown): ApiPrompt {
  if (!isObject(prompt)) fail(`Expected a workflow object but received ${describeValue(prompt)}`);
  const ids = Object.keys(prompt);
  if (ids.length === 0) fail('the workflow has no nodes');
  for (const id of ids) {
    const entry = prompt[id];
    if (!isObject(entry) || typeof entry.class_type !== 'string')
      fail(`node ${id}: expected { class_type, inputs } but received ${describeValue(entry)}`);
    if (entry.inputs !== undefined && !isObject(entry.inputs))
      fail(`${nodeName(id, entry.class_type)}: expected an object for inputs but received ${describeValue(entry.inputs)}`);
    if (!NODE_SPECS.has(entry.class_type))
      fail(`${nodeName(id, entry.class_type)}: unknown node type "${entry.class_type}" (wan-native runs ${[...NODE_SPECS.keys()].join(', ')})`);
  }
  const out: ApiPrompt = {};
  for (const id of ids) {
    const entry = prompt[id] as Record<string, unknown>;
    out[id] = { ...(entry as ApiPrompt[string]), inputs: (entry.inputs as Record<string, unknown>) ?? {} };
  }
  return out;
}

// A cycle anywhere in the workflow, as ids in link order; links to missing nodes are ignored here.
function findCycle(prompt: ApiPrompt): string[] | undefined {
  const state = new Map<string, 1 | 2>();  // 1: on the stack, 2: done
  const stack: string[] = [];
  const visit = (id: string): string[] | undefined => {
    state.set(id, 1);
    stack.push(id);
    for (const v of Object.values(prompt[id].inputs)) {
      const ref = asLink(v);
      if (!ref || !(ref.node in prompt)) continue;
      if (state.get(ref.node) === 1) return [...stack.slice(stack.indexOf(ref.node)), ref.node];
      if (!state.has(ref.node)) {
        const found = visit(ref.node);
        if (found) return found;
      }
    }
    stack.pop();
    state.set(id, 2);
    return undefined;
  };
  for (const id of Object.keys(prompt)) {
    if (state.has(id)) continue;
    const found = visit(id);
    if (found) return found;
  }
  return undefined;
}

/**
 * Reads a workflow in API format ({ "<id>": { class_type, inputs } }, optionally wrapped as
 * { prompt: ... }) or UI format ({ nodes, links }), validates it and plans its run. Only the
 * nodes that lead to an output (VHS_VideoCombine) are validated and run, as ComfyUI does; every
 * node must be of a known type and the graph must have no cycle.
 */
export function parseGraph(json: unknown): ParsedGraph {
  if (!isObject(json)) fail(`Expected a workflow object (API or UI format) but received ${describeValue(json)}`);
  let format: 'api' | 'ui' = 'api';
  let prompt: ApiPrompt;
  let positions = new Map<string, Map<string, string>>();
  let workflow: Record<string, unknown> | undefined;
  if (Array.isArray(json.nodes)) {
    format = 'ui';
    workflow = json;
    ({ prompt, positions } = uiToApi(json));
    prompt = checkPrompt(prompt);
  } else {
    // ComfyUI's /prompt body wraps it ({ prompt, extra_data: { extra_pnginfo: { workflow } } }).
    const wrapped = isObject(json.prompt) && !('class_type' in json.prompt) ? json.prompt : json;
    prompt = checkPrompt(wrapped);
  }

  const cycle = findCycle(prompt);
  if (cycle) fail(`the workflow has a cycle: ${cycle.map((id) => nodeName(id, prompt[id].class_type)).join(' -> ')}`);

  const outputs = Object.keys(prompt).filter((id) => NODE_SPECS.get(prompt[id].class_type)!.output)
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  if (outputs.length === 0)
    fail(`the workflow has no output node (${[...NODE_SPECS.values()].filter((s) => s.output).map((s) => s.classType).join(', ')}): nothing would be made`);

  // Validate what leads to the outputs, following links from them.
  const nodes = new Map<string, GraphNode>();
  const pending = [...outputs];
  while (pending.length) {
    const id = pending.pop()!;
    if (nodes.has(id)) continue;
    const node = validateNode(id, prompt[id], positions.get(id));
    nodes.set(id, node);
    for (const [input, ref] of Object.entries(node.links)) {
      const name = `${nodeName(id, node.classType)} input ${input}`;
      const source = prompt[ref.node];
      if (!source) fail(`${name}: links to node ${ref.node}, which does not exist`);
      const spec = NODE_SPECS.get(source.class_type)!;
      const expected = linkType(node.spec.inputs.find((i) => i.name === input)!);
      if (ref.slot < 0 || ref.slot >= spec.outputs.length)
        fail(`${name}: links to output ${ref.slot} of ${nodeName(ref.node, source.class_type)}, which has ${spec.outputs.length} output(s)`);
      if (spec.outputs[ref.slot] !== expected)
        fail(`${name}: expected ${article(expected)} ${expected} but output ${ref.slot} of ${nodeName(ref.node, source.class_type)} is ${article(spec.outputs[ref.slot])} ${spec.outputs[ref.slot]}`);
      if (source.class_type === 'WanVideoSampler' && ref.slot === 1)
        fail(`${name}: denoised_samples (output 1 of ${nodeName(ref.node, source.class_type)}) is not available yet in wan-native: use samples (output 0)`);
      if (source.class_type === 'ImageResizeKJv2' && ref.slot === 3)
        fail(`${name}: the mask output of ${nodeName(ref.node, source.class_type)} is not available yet in wan-native`);
      if (source.class_type === 'LoadImage' && ref.slot === 1)
        fail(`${name}: the MASK output of ${nodeName(ref.node, source.class_type)} is not available yet in wan-native`);

      if (!isHint(node, input)) pending.push(ref.node);
    }
  }
  for (const [id, node] of nodes) if (node.classType === 'WanVideoModelLoader') checkLoraChain(id, node, nodes);
  return { format, nodes, outputs, order: planOrder(nodes, outputs), prompt, ...(workflow ? { workflow } : {}) };
}

// One model's LoRAs are all merged at load or all applied at run time (WanModel.load mergeLoras):
// the chain of WanVideoLoraSelect nodes feeding a model loader must agree on merge_loras.
function checkLoraChain(id: string, loader: GraphNode, nodes: Map<string, GraphNode>): void {
  const merges = new Map<boolean, string>();
  for (let ref = loader.links.lora; ref !== undefined;) {
    const select = nodes.get(ref.node)!;
    merges.set(select.values.merge_loras as boolean, nodeName(ref.node, select.classType));
    ref = select.links.prev_lora;
  }
  if (merges.size > 1)
    fail(`${nodeName(id, loader.classType)} input lora: its LoRAs mix merge_loras true (${merges.get(true)}) and false ` +
         `(${merges.get(false)}), and wan-native merges all of one model's LoRAs or none: give them the same merge_loras`);
}

/** A link whose value is never read, so that its source need not run first (model_to_offload). */
export function isHint(node: GraphNode, input: string): boolean {
  return node.spec.inputs.some((i) => i.name === input && i.hint);
}

/** The links a node reads, in input order. */
export function dependencies(node: GraphNode): [string, LinkRef][] {
  return Object.entries(node.links).filter(([input]) => !isHint(node, input));
}

// Outputs that hold a model's weights.
const HEAVY = new Set(['WANVIDEOMODEL', 'WANTEXTENCODER', 'WANVAE', 'CLIP_VISION']);

// Depth-first from each output, a node after its inputs. Of a node's inputs, those that bring
// a model run last, so that it is loaded just before the node that uses it; the others run
// longest chain first. That frees memory early: the text encoder is loaded, used and released
// before the diffusion model is loaded, and the VAE is loaded after sampling.
function planOrder(nodes: Map<string, GraphNode>, outputs: string[]): string[] {
  const heavy = (ref: LinkRef) => HEAVY.has(nodes.get(ref.node)!.spec.outputs[ref.slot]) ? 1 : 0;
  const depth = new Map<string, number>();
  const depthOf = (id: string): number => {
    let d = depth.get(id);
    if (d === undefined) {
      d = 1 + Math.max(0, ...dependencies(nodes.get(id)!).map(([, ref]) => depthOf(ref.node)));
      depth.set(id, d);
    }
    return d;
  };
  const order: string[] = [];
  const done = new Set<string>();
  const visit = (id: string) => {
    if (done.has(id)) return;
    done.add(id);
    const deps = dependencies(nodes.get(id)!).map(([, ref], i) => ({ ref, i, heavy: heavy(ref), depth: depthOf(ref.node) }));
    deps.sort((a, b) => a.heavy - b.heavy || b.depth - a.depth || a.i - b.i);
    for (const { ref } of deps) visit(ref.node);
    order.push(id);
  };
  for (const id of outputs) visit(id);
  if (order.length !== nodes.size) throw new WanError('WAN_INTERNAL', 'workflow: the run order misses nodes');
  return order;
}
