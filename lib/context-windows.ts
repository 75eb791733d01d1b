// Context windows (`contextOptions`): sampling a video longer than the model's window by
// denoising overlapping windows of latent frames and fusing their predictions, as
// kijai/ComfyUI-WanVideoWrapper's "WanVideo Context Options" node and sampler do (anchors.md
// b.11). Pure arithmetic on frame indices and Float32Arrays: no addon is needed.
//
// What follows the wrapper, and where:
//   pixel -> latent conversion, FreeNoise, prompt index, the per-step window loop:
//                             nodes_sampler.py WanVideoSampler.process ("Context windows",
//                             "#region context windowing")
//   the three schedules:      context_windows/context.py uniform_standard, uniform_looped,
//                             static_standard (themselves from AnimateDiff-Evolved)
//   the fuse weights:         context_windows/context.py create_window_mask
// Deviations are marked "Unlike the wrapper".
//
// Symbols: C channels, T latent frames of the whole video, H, W latent height and width; a
// window is the list of the latent frame indices it denoises, in the order the model sees them.

import { describeValue, invalidOption, WanError } from './errors';
import { roundHalfEven } from './numeric';

export type ContextSchedule = 'uniform_standard' | 'uniform_looped' | 'static_standard';
export type ContextFuse = 'linear' | 'pyramid';

export const CONTEXT_SCHEDULES: readonly ContextSchedule[] = ['uniform_standard', 'uniform_looped', 'static_standard'];
export const CONTEXT_FUSE_METHODS: readonly ContextFuse[] = ['linear', 'pyramid'];

/** The node's widgets, in pixel frames (4 pixel frames make one latent frame). */
export interface ContextOptions {
  /** context_schedule; 'uniform_standard'. */
  schedule?: ContextSchedule;
  /** context_frames: pixel frames per window; 81, 2..1000. */
  frames?: number;
  /** context_stride: pixel frames; 4, 4..100. Only the uniform schedules read it: latent stride s
   *  adds windows dilated by 2, 4, .. 2^(s-1) frames. */
  stride?: number;
  /** context_overlap: pixel frames shared by neighbouring windows; 16, 4..100. */
  overlap?: number;
  /** freenoise: each window after the first starts from the initial noise of the frames before it,
   *  shuffled (FreeNoise), rather than from fresh noise; true. */
  freenoise?: boolean;
  /** fuse_method: 'linear' (ramps over the overlap at inner window edges) or 'pyramid'
   *  (triangular weights peaking mid-window); 'linear'. */
  fuse?: ContextFuse;
}

/** The options in latent frames, as the sampler uses them. */
export interface ResolvedContextOptions {
  readonly schedule: ContextSchedule;
  readonly fuse: ContextFuse;
  readonly freenoise: boolean;
  /** Latent frames per window: (frames - 1) // 4 + 1. */
  readonly frames: number;
  /** Latent stride: stride // 4 (at least 1). */
  readonly stride: number;
  /** Latent overlap: overlap // 4 (at least 1, less than `frames`). */
  readonly overlap: number;
  /** uniform_looped: the video is treated as a loop, windows wrap from the last frame to the first. */
  readonly looped: boolean;
}

const DEFAULTS = { schedule: 'uniform_standard', frames: 81, stride: 4, overlap: 16, freenoise: true, fuse: 'linear' } as const;

// (n - 1) // 4 + 1: how the Wan VAE counts latent frames (the first pixel frame alone, then 4 a latent).
export function latentFramesOf(pixelFrames: number): number {
  return Math.floor((pixelFrames - 1) / 4) + 1;
}

function checkInteger(value: unknown, what: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max)
    throw invalidOption(`Expected an integer between ${min} and ${max} for ${what} but received ${describeValue(value)}`);
  return value;
}

function checkLatentFrames(latentFrames: unknown): number {
  if (typeof latentFrames !== 'number' || !Number.isInteger(latentFrames) || latentFrames < 1)
    throw invalidOption(`Expected a positive integer for latentFrames but received ${describeValue(latentFrames)}`);
  return latentFrames;
}

/**
 * Validates `contextOptions` and converts them to latent frames for a video of `latentFrames`
 * latent frames. Returns null when there are no options, or when a window would be longer than
 * the video (the wrapper's sampler then logs "Context frames is larger than total num_frames,
 * disabling context windows" and samples without windows; the video's pixel length is taken as
 * 4 (T - 1) + 1).
 */
export function resolveContextOptions(options: ContextOptions | undefined, latentFrames: number): ResolvedContextOptions | null {
  const T = checkLatentFrames(latentFrames);
  if (options === undefined) return null;
  if (typeof options !== 'object' || options === null || Array.isArray(options))
    throw invalidOption(`Expected an object for contextOptions but received ${describeValue(options)}`);
  const schedule = options.schedule ?? DEFAULTS.schedule;
  if (!CONTEXT_SCHEDULES.includes(schedule))
    throw invalidOption(`Expected one of ${CONTEXT_SCHEDULES.join(', ')} for contextOptions.schedule but received ${describeValue(schedule)}`);
  const fuse = options.fuse ?? DEFAULTS.fuse;
  if (!CONTEXT_FUSE_METHODS.includes(fuse))
    throw invalidOption(`Expected one of ${CONTEXT_FUSE_METHODS.join(', ')} for contextOptions.fuse but received ${describeValue(fuse)}`);
  const freenoise = options.freenoise ?? DEFAULTS.freenoise;
  if (typeof freenoise !== 'boolean')
    throw invalidOption(`Expected a boolean for contextOptions.freenoise but received ${describeValue(freenoise)}`);
  // The node's ranges (WanVideoContextOptions.INPUT_TYPES).
  const frames = checkInteger(options.frames ?? DEFAULTS.frames, 'contextOptions.frames', 2, 1000);
  const stride = checkInteger(options.stride ?? DEFAULTS.stride, 'contextOptions.stride', 4, 100);
  const overlap = checkInteger(options.overlap ?? DEFAULTS.overlap, 'contextOptions.overlap', 4, 100);

  const resolved: ResolvedContextOptions = {
    schedule, fuse, freenoise,
    frames: latentFramesOf(frames),
    stride: Math.floor(stride / 4),
    overlap: Math.floor(overlap / 4),
    looped: schedule === 'uniform_looped',
  };
  // Windows advance by frames - overlap latent frames; the wrapper does not check this and then
  // loops forever (static_standard) or fails in range() (the uniform schedules).
  if (resolved.overlap >= resolved.frames)
    throw invalidOption(`Expected contextOptions.overlap (${overlap} pixel frames, ${resolved.overlap} latent) to be smaller than ` +
                        `contextOptions.frames (${frames} pixel frames, ${resolved.frames} latent)`);
  if (frames > 4 * (T - 1) + 1) return null;
  checkDilation(resolved, T, stride);
  return resolved;
}

// ---------------------------------------------------------------------------------------------
// Schedules (context_windows/context.py)

// ordered_halving(step): the bits of the step reversed as a 64-bit fraction: 0, 1/2, 1/4, 3/4,
// 1/8, .. so that window boundaries move to a new place every step.
export function orderedHalving(step: number): number {
  if (!Number.isSafeInteger(step) || step < 0)
    throw invalidOption(`Expected a non-negative integer for step but received ${describeValue(step)}`);
  let v = BigInt(step);
  let reversed = 0n;
  for (let i = 0; i < 64; i++) {
    reversed = (reversed << 1n) | (v & 1n);
    v >>= 1n;
  }
  // Number(bigint) rounds to nearest, as Python's int / int does; dividing by 2^64 is then exact.
  return Number(reversed) / 2 ** 64;
}

// Python's %, never negative for a positive modulus.
function pyMod(a: number, n: number): number {
  return ((a % n) + n) % n;
}

// How many dilation levels the uniform schedules use: min(stride, ceil(log2(T / size)) + 1)
// (T > size). Computed on integers, the smallest k with size * 2^k >= T, which is what the
// wrapper's np.ceil(np.log2(T / size)) gives for any T and size below 2^40.
function dilationLevels(o: ResolvedContextOptions, T: number): number {
  let k = 0;
  while (o.frames * 2 ** k < T) k++;
  return Math.min(o.stride, k + 1);
}

// Whether the windows dilated by 2^level are valid for T frames, for every step. uniform_looped
// keeps a dilated window as it wraps around the loop, so its frames stay distinct while no two of
// them are a multiple of T apart: frames <= T / gcd(T, 2^level) (else [0, 2, 0] for T = 4).
// uniform_standard moves a window that wraps back to end on the last frame, which only stays in
// the video while the dilated window fits: (frames - 1) * 2^level + 1 <= T (else [3, 5, 3]).
// The wrapper makes such windows and its sampler then raises "Invalid context window indices";
// both conditions match where it does, for all steps, over every frames <= 16, overlap, stride
// <= 5 and T <= 4 * frames + 2 (checked against its context.py). Both only tighten as the level
// grows, and level 0 is always valid.
function dilationValid(o: ResolvedContextOptions, T: number, level: number): boolean {
  const dilation = 2 ** level;
  if (o.looped) return o.frames <= T / gcd(T, dilation);
  return (o.frames - 1) * dilation + 1 <= T;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

function checkDilation(o: ResolvedContextOptions, T: number, pixelStride: number): void {
  if (o.schedule === 'static_standard' || T <= o.frames) return;
  const levels = dilationLevels(o, T);
  for (let level = 1; level < levels; level++) {
    if (!dilationValid(o, T, level))
      throw invalidOption(`contextOptions.stride of ${pixelStride} pixel frames (${o.stride} latent) dilates ${o.schedule} windows of ` +
                          `${o.frames} latent frames by ${2 ** level}, which a video of ${T} latent frames cannot hold; use a ` +
                          `contextOptions.stride of at most ${4 * level + 3} or the static_standard schedule`);
  }
}

// uniform_standard and uniform_looped before uniform_standard's clean-up: for each dilation
// 1, 2, 4, .., windows of `frames` frames (spaced by the dilation) every frames*dilation - overlap
// frames, starting at an offset that ordered_halving moves each step, wrapping modulo T
// (closed_loop is always true in the sampler).
function uniformWindows(step: number, T: number, o: ResolvedContextOptions): number[][] {
  const windows: number[][] = [];
  const levels = dilationLevels(o, T);
  const halving = orderedHalving(step);
  for (let level = 0; level < levels; level++) {
    const dilation = 2 ** level;
    const pad = roundHalfEven(T * halving);
    const first = Math.floor(halving * dilation) + pad;
    const advance = o.frames * dilation - o.overlap;
    for (let j = first; j < T + pad; j += advance) {
      const w: number[] = [];
      for (let e = j; e < j + o.frames * dilation; e += dilation) w.push(e % T);
      windows.push(w);
    }
  }
  return windows;
}

// does_window_roll_over: the position where the frame index decreases, or -1.
function rollOverIndex(window: number[], T: number): number {
  let previous = -1;
  for (let i = 0; i < window.length; i++) {
    const v = pyMod(window[i], T);
    if (v < previous) return i;
    previous = v;
  }
  return -1;
}

// shift_window_to_end: keep the spacing, move the window so that it ends on the last frame.
function shiftWindowToEnd(window: number[], T: number): void {
  const start = window[0];
  for (let i = 0; i < window.length; i++) window[i] = pyMod(window[i] - start + T, T);
  const endDelta = T - window[window.length - 1] - 1;
  for (let i = 0; i < window.length; i++) window[i] += endDelta;
}

function sameWindow(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

// uniform_standard: the uniform windows, with every window that wraps past the end moved back to
// end on the last frame, a plain window inserted after it starting at the frame where it wrapped
// (unless the next window already covers that frame), then duplicates removed.
function uniformStandard(step: number, T: number, o: ResolvedContextOptions): number[][] {
  const windows = uniformWindows(step, T, o);
  const duplicates: number[] = [];
  for (let i = 0; i < windows.length; i++) {  // windows grows inside the loop, as in the wrapper
    const roll = rollOverIndex(windows[i], T);
    if (roll >= 0) {
      const rollValue = windows[i][roll];
      shiftWindowToEnd(windows[i], T);
      if (!windows[(i + 1) % windows.length].includes(rollValue)) {
        windows.splice(i + 1, 0, Array.from({ length: o.frames }, (_, k) => rollValue + k));
      }
    }
    for (let p = 0; p < i; p++) {
      if (sameWindow(windows[i], windows[p])) {
        duplicates.push(i);
        break;
      }
    }
  }
  for (let i = duplicates.length - 1; i >= 0; i--) windows.splice(duplicates[i], 1);
  return windows;
}

// Unlike the wrapper: with dilated windows (a latent stride of 2 or more) uniform_standard can
// leave a frame in no window (8 latent frames a window, overlap 2, stride 2, T = 18, step 2: frame 1),
// where the wrapper's sampler divides 0 by 0. Each such frame gets a plain window starting on it
// (moved back to end on the last frame if need be), as uniform_standard itself inserts after a
// window that wraps. With the default stride (1 latent) every frame is always covered.
function coverMissingFrames(windows: number[][], T: number, o: ResolvedContextOptions): number[][] {
  const covered = new Uint8Array(T);
  for (const w of windows) for (const f of w) covered[f] = 1;
  for (let f = 0; f < T; f++) {
    if (covered[f]) continue;
    const start = Math.min(f, T - o.frames);
    const w = Array.from({ length: o.frames }, (_, k) => start + k);
    for (const g of w) covered[g] = 1;
    windows.push(w);
  }
  return windows;
}

// static_standard: the same windows every step, `frames - overlap` apart, the last one moved
// back to end on the last frame.
function staticStandard(T: number, o: ResolvedContextOptions): number[][] {
  const windows: number[][] = [];
  const delta = o.frames - o.overlap;
  for (let start = 0; start < T; start += delta) {
    const ending = start + o.frames;
    const first = ending >= T ? start - (ending - T) : start;
    windows.push(Array.from({ length: o.frames }, (_, k) => first + k));
    if (ending >= T) break;
  }
  return windows;
}

/**
 * The windows to denoise at sampling step `step` (0-based, counted from the first step this
 * run samples, as the wrapper's `idx`): each the latent frame indices of one window, in the
 * order the model sees them. A video no longer than a window is one window [0, .., T - 1].
 * `numSteps` is passed as the wrapper passes it; none of the three schedules reads it.
 */
export function contextWindows(step: number, numSteps: number, latentFrames: number, o: ResolvedContextOptions): number[][] {
  const T = checkLatentFrames(latentFrames);
  if (typeof step !== 'number' || !Number.isInteger(step) || step < 0)
    throw invalidOption(`Expected a non-negative integer for step but received ${describeValue(step)}`);
  if (typeof numSteps !== 'number' || !Number.isInteger(numSteps) || numSteps < 1)
    throw invalidOption(`Expected a positive integer for numSteps but received ${describeValue(numSteps)}`);
  if (T <= o.frames) return [Array.from({ length: T }, (_, k) => k)];
  const windows = o.schedule === 'static_standard' ? staticStandard(T, o)
    : o.schedule === 'uniform_looped' ? uniformWindows(step, T, o)
    : coverMissingFrames(uniformStandard(step, T, o), T, o);
  // The sampler's own check ("Invalid context window indices"), plus repeated frames, which the
  // wrapper would scatter into with an undefined result. resolveContextOptions rules both out.
  for (const w of windows) {
    if (w.some((f) => f < 0 || f >= T) || new Set(w).size !== w.length)
      throw invalidOption(`contextOptions: the ${o.schedule} schedule made the invalid window [${w.join(', ')}] ` +
                          `for ${T} latent frames at step ${step}; use a smaller contextOptions.stride`);
  }
  return windows;
}

// ---------------------------------------------------------------------------------------------
// Fuse weights (context_windows/context.py create_window_mask)

// torch.linspace(start, end, n) in float32, by the formula of PyTorch's kernels: the first half
// counted up from start, the second half back from end, so that both ends are exact; each
// operation rounded to float32. n == 1 gives [start]. PyTorch's own results can differ from this
// by a few float32 ulps in the middle elements (its vectorised CPU kernel steps on from the start
// of each vector; on CUDA nvcc may fuse the multiply-add), never with the default overlap of 4
// latent frames.
function torchLinspace(start: number, end: number, n: number): Float32Array {
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const f = Math.fround;
  const step = f(f(end - start) / (n - 1));
  const halfway = Math.floor(n / 2);
  for (let i = 0; i < n; i++) out[i] = i < halfway ? f(start + f(step * i)) : f(end - f(step * (n - i - 1)));
  return out;
}

/**
 * The fuse weight of each frame of `window` (length window.length), as create_window_mask
 * makes the mask it multiplies the window's prediction by:
 * - linear: 1, with a ramp 0 -> 1 over the first `overlap` frames unless the window starts on
 *   frame 0, and a ramp 1 -> 0 over the last `overlap` frames unless it ends on the last frame;
 *   uniform_looped ramps both edges of a window that touches either end (it wraps).
 * - pyramid: 1, 2, .., m, .., 2, 1 divided by m (m = ceil(len / 2)); outside uniform_looped, the
 *   first `overlap` weights of a window that starts on frame 0 are raised to at least the ramp
 *   0 -> 1, and the last `overlap` of one that ends on the last frame to at least 1 -> 0.
 * Unlike the wrapper, the single window of a video no longer than a window weighs 1 everywhere:
 * there is nothing to fuse, so sampling equals sampling without windows exactly (the wrapper's
 * pyramid weights cancel only up to rounding, and its looped linear mask makes 0 / 0 there).
 */
export function windowWeights(window: readonly number[], latentFrames: number, o: ResolvedContextOptions): Float32Array {
  const T = checkLatentFrames(latentFrames);
  const n = window.length;
  const weights = new Float32Array(n).fill(1);
  if (n === 0) return weights;
  let min = Infinity;
  let max = -Infinity;
  for (const f of window) {
    min = Math.min(min, f);
    max = Math.max(max, f);
  }
  if (n === T && min === 0 && max === T - 1) return weights;
  const overlap = Math.min(o.overlap, n);
  if (o.fuse === 'pyramid') {
    const m = Math.ceil(n / 2);  // max_weight, for even and odd lengths alike
    for (let i = 0; i < n; i++) weights[i] = Math.min(i + 1, n - i) / m;  // float64 quotient, then float32 like torch.tensor
    if (!o.looped) {
      if (min === 0) {
        const ramp = torchLinspace(0, 1, overlap);
        for (let i = 0; i < overlap; i++) weights[i] = Math.max(weights[i], ramp[i]);
      }
      if (max === T - 1) {
        const ramp = torchLinspace(1, 0, overlap);
        for (let i = 0; i < overlap; i++) weights[n - overlap + i] = Math.max(weights[n - overlap + i], ramp[i]);
      }
    }
  } else {
    if (min > 0 || (o.looped && max === T - 1)) weights.set(torchLinspace(0, 1, overlap), 0);
    if (max < T - 1 || (o.looped && min === 0)) weights.set(torchLinspace(1, 0, overlap), n - overlap);
  }
  return weights;
}

/**
 * Which of `numPrompts` prompts (a positive prompt split on '|') conditions `window`: the video
 * is cut into numPrompts equal sections and the window takes the section of its last frame,
 * min(int(max(window) / (T / numPrompts)), numPrompts - 1).
 */
export function promptIndexForWindow(window: readonly number[], latentFrames: number, numPrompts: number): number {
  const T = checkLatentFrames(latentFrames);
  if (typeof numPrompts !== 'number' || !Number.isInteger(numPrompts) || numPrompts < 1)
    throw invalidOption(`Expected a positive integer for numPrompts but received ${describeValue(numPrompts)}`);
  if (window.length === 0) throw invalidOption('Expected a non-empty window');
  const sectionSize = T / numPrompts;
  return Math.min(Math.trunc(Math.max(...window) / sectionSize), numPrompts - 1);
}

// ---------------------------------------------------------------------------------------------
// Fusion

/**
 * Averages windowed predictions into one prediction for the whole video, as the sampler does
 * per step: noise_pred[:, c] += pred * mask; counter[:, c] += mask; noise_pred /= counter. The
 * arithmetic is float32 like the wrapper's tensors (each product, sum and quotient rounded to
 * float32), windows fused in the order they are added.
 */
export class WindowAccumulator {
  readonly shape: readonly [number, number, number, number];
  private readonly sum: Float32Array;     // [C, T, H, W]
  private readonly weight: Float32Array;  // [T]: the same for every channel and pixel
  private readonly covered: Uint32Array;  // [T]: windows that included the frame
  // Per frame, the plain sum [C, H, W] of the predictions added at weight 0: the fallback for a
  // frame that only ever gets weight 0 (see result()).
  private readonly unweighted = new Map<number, Float32Array>();

  constructor(shape: readonly [number, number, number, number]) {
    if (!Array.isArray(shape) || shape.length !== 4 || !shape.every((d) => Number.isInteger(d) && d > 0))
      throw invalidOption(`Expected [C, T, H, W] of positive integers for shape but received ${describeValue(shape)}`);
    this.shape = [shape[0], shape[1], shape[2], shape[3]];
    this.sum = new Float32Array(shape[0] * shape[1] * shape[2] * shape[3]);
    this.weight = new Float32Array(shape[1]);
    this.covered = new Uint32Array(shape[1]);
  }

  /** Adds the prediction of one window: `pred` is [C, window.length, H, W], `weights` one per frame. */
  add(window: readonly number[], pred: Float32Array, weights: Float32Array): void {
    const [C, T, H, W] = this.shape;
    const n = window.length;
    const HW = H * W;
    if (!window.every((f) => Number.isInteger(f) && f >= 0 && f < T))
      throw invalidOption(`Expected latent frame indices in 0..${T - 1} for window but received [${window.join(', ')}]`);
    if (!(pred instanceof Float32Array) || pred.length !== C * n * HW)
      throw invalidOption(`Expected a Float32Array of ${C * n * HW} elements ([${C}, ${n}, ${H}, ${W}]) for pred but received ${describeValue(pred)}` +
                          (pred instanceof Float32Array ? ` of ${pred.length}` : ''));
    if (!(weights instanceof Float32Array) || weights.length !== n || !weights.every((w) => w >= 0 && w < Infinity))
      throw invalidOption(`Expected a Float32Array of ${n} non-negative finite weights for weights but received ${describeValue(weights)}`);
    const f = Math.fround;
    for (let k = 0; k < n; k++) {
      const t = window[k];
      const w = weights[k];
      // A product and a sum of two float32 values computed in float64 and rounded once are the
      // correctly rounded float32 results, so this matches torch's float32 arithmetic exactly.
      for (let c = 0; c < C; c++) {
        const src = (c * n + k) * HW;
        const dst = (c * T + t) * HW;
        for (let i = 0; i < HW; i++) this.sum[dst + i] += f(pred[src + i] * w);
      }
      if (w === 0) {
        let plain = this.unweighted.get(t);
        if (!plain) this.unweighted.set(t, plain = new Float32Array(C * HW));
        for (let c = 0; c < C; c++) {
          const src = (c * n + k) * HW;
          for (let i = 0; i < HW; i++) plain[c * HW + i] += pred[src + i];
        }
      }
      this.weight[t] += w;
      this.covered[t]++;
    }
  }

  /**
   * The fused prediction [C, T, H, W]. Unlike the wrapper, a frame that every window covering it
   * weighs 0 (the linear ramp's first frame, in some dilated uniform_standard schedules) takes the
   * plain mean of those windows' predictions instead of 0 / 0. Throws if a frame was in no window.
   */
  result(): Float32Array {
    const [C, T, H, W] = this.shape;
    const HW = H * W;
    for (let t = 0; t < T; t++) {
      if (this.covered[t] === 0) throw new WanError('WAN_INTERNAL', `context windows: latent frame ${t} was in no window`);
    }
    const out = new Float32Array(this.sum.length);
    for (let t = 0; t < T; t++) {
      const d = this.weight[t];
      const plain = d === 0 ? this.unweighted.get(t) : undefined;
      for (let c = 0; c < C; c++) {
        const base = (c * T + t) * HW;
        if (plain) {
          for (let i = 0; i < HW; i++) out[base + i] = plain[c * HW + i] / this.covered[t];
        } else {
          for (let i = 0; i < HW; i++) out[base + i] = this.sum[base + i] / d;
        }
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// FreeNoise (nodes_sampler.py, from AnimateDiff-Evolved)

/** A permutation source with torch.randperm(n, generator)'s contract: the numbers 0..n-1 in some order. */
export type Randperm = (n: number) => ArrayLike<number | bigint>;

/**
 * PyTorch's CPU generator (torch.Generator().manual_seed(seed)): mt19937 seeded with the low 32
 * bits of the seed, and torch.randperm on it (the CPU kernel's swap of r[i] with
 * r[i + random() % (n - i)] for i < n - 1, which PyTorch keeps for every n below 2^32 / 20).
 */
export class TorchCpuGenerator {
  private readonly state = new Uint32Array(624);
  private index = 624;

  constructor(seed: number | bigint) {
    if (!((typeof seed === 'number' && Number.isSafeInteger(seed) && seed >= 0) ||
          (typeof seed === 'bigint' && seed >= 0n && seed < 1n << 64n)))
      throw invalidOption(`Expected an integer in 0..2^64-1 for seed but received ${describeValue(seed)}`);
    this.state[0] = Number(BigInt.asUintN(32, BigInt(seed)));
    for (let i = 1; i < 624; i++) {
      const prev = this.state[i - 1] ^ (this.state[i - 1] >>> 30);
      this.state[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
  }

  /** The next 32-bit output of mt19937. */
  nextUint32(): number {
    const s = this.state;
    if (this.index >= 624) {
      for (let i = 0; i < 624; i++) {
        const y = (s[i] & 0x80000000) | (s[(i + 1) % 624] & 0x7fffffff);
        s[i] = s[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = s[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  randperm(n: number): Int32Array {
    const r = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = 0; i < n - 1; i++) {
      const z = this.nextUint32() % (n - i);
      const saved = r[i];
      r[i] = r[i + z];
      r[i + z] = saved;
    }
    return r;
  }
}

function checkPermutation(perm: ArrayLike<number | bigint>, n: number): number[] {
  const out = Array.from({ length: perm?.length ?? 0 }, (_, i) => Number(perm[i]));
  const seen = new Set(out);
  if (out.length !== n || seen.size !== n || !out.every((v) => Number.isInteger(v) && v >= 0 && v < n))
    throw invalidOption(`Expected randperm(${n}) to return a permutation of 0..${n - 1} but received ${describeValue(perm)}`);
  return out;
}

/**
 * FreeNoise as a frame map: entry t is the frame of the original noise that latent frame t
 * takes. Each window after the first repeats the noise of the `frames - overlap` frames the
 * previous window does not share, shuffled: for start = 0, d, 2d, .. (d = frames - overlap,
 * start < T - frames) frames [start + frames, +d) take frames [start, +d) in the order
 * randperm(d) gives, the last run cut to the frames left. Runs apply in order, so a run can move
 * frames an earlier run placed, as the wrapper's in-place copies do.
 */
export function freeNoiseSources(latentFrames: number, o: ResolvedContextOptions, randperm: Randperm): Int32Array {
  const T = checkLatentFrames(latentFrames);
  const sources = Int32Array.from({ length: T }, (_, i) => i);
  const delta = o.frames - o.overlap;
  for (let start = 0; start < T - o.frames; start += delta) {
    const place = start + o.frames;
    const last = place - 1 + delta >= T;
    const n = last ? T - place : delta;
    const perm = checkPermutation(randperm(n), n);
    const moved = perm.map((p) => sources[start + p]);
    sources.set(moved, place);
    if (last) break;
  }
  return sources;
}

/**
 * Applies FreeNoise in place to the initial noise [C, T, H, W] (nothing to do unless
 * `o.freenoise`). The wrapper draws the permutations with torch.randperm from the generator that
 * drew the noise, continuing its stream: pass that generator's randperm to reproduce it. Given a
 * seed instead, the permutations come from a fresh TorchCpuGenerator(seed): deterministic, and
 * what torch.randperm gives on torch.Generator().manual_seed(seed), but not the wrapper's draws
 * (which follow the noise's).
 */
export function freeNoiseShuffle(noise: Float32Array, shape: readonly [number, number, number, number],
                                 o: ResolvedContextOptions, rng: number | bigint | Randperm): void {
  if (!Array.isArray(shape) || shape.length !== 4 || !shape.every((d) => Number.isInteger(d) && d > 0))
    throw invalidOption(`Expected [C, T, H, W] of positive integers for shape but received ${describeValue(shape)}`);
  const [C, T, H, W] = shape;
  if (!(noise instanceof Float32Array) || noise.length !== C * T * H * W)
    throw invalidOption(`Expected a Float32Array of ${C * T * H * W} elements for noise but received ${describeValue(noise)}`);
  if (!o.freenoise) return;
  let randperm: Randperm;
  if (typeof rng === 'function') {
    randperm = rng;
  } else {
    const generator = new TorchCpuGenerator(rng);
    randperm = (n) => generator.randperm(n);
  }
  const sources = freeNoiseSources(T, o, randperm);
  const original = noise.slice();
  const HW = H * W;
  for (let c = 0; c < C; c++) {
    for (let t = 0; t < T; t++) {
      if (sources[t] !== t) noise.set(original.subarray((c * T + sources[t]) * HW, (c * T + sources[t] + 1) * HW), (c * T + t) * HW);
    }
  }
}
