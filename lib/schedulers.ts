// Flow-matching schedulers: the sigma schedules and the update rules of the sampling loop.
//
// A flow model predicts the velocity v = noise - x0 at a noise level sigma, where the
// sample is x = (1 - sigma) * x0 + sigma * noise (so alpha = 1 - sigma). A schedule is a
// decreasing list of sigmas ending at 0; the DiT receives timestep = sigma * 1000.
//
//   unipc       Wan2.1 wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler: UniPC bh2,
//               order 2, predict_x0, lower_order_final.
//   dpm++       Wan2.1 wan/utils/fm_solvers.py FlowDPMSolverMultistepScheduler (dpmsolver++,
//               midpoint, order 2).
//   dpm++_sde   the same class with algorithm_type 'sde-dpmsolver++'.
//               All three set up as Kijai's ComfyUI-WanVideoWrapper does (wanvideo/schedulers
//               get_scheduler): the scheduler constructed with the shift, which moves the top
//               of its training table, then set_timesteps(steps), which shifts again. Wan2.1's
//               own generate.py constructs it with shift 1 instead (a top sigma of 0.9998 rather
//               than 0.99996 at shift 5, timesteps 1 lower at some steps); the tests give its
//               schedule as custom sigmas (test/helpers.ts officialSigmas).
//   euler       diffusers FlowMatchEulerDiscreteScheduler(shift).set_timesteps(steps), as the wrapper.
//   lcm         the wrapper's FlowMatchLCMScheduler (from diffusers): x0 = x - sigma*v, then
//               re-noised to the next sigma with fresh noise.
//   flowmatch_distill  the wrapper's fixed 4-step schedule for distilled (lightx2v-style)
//               models: timesteps 999/750/500/250 of FlowMatchScheduler's 1000-step training
//               schedule, shifted, stepped with Euler (FlowMatchScheduler.step).
//   flowmatch_causvid  the wrapper's fixed schedule for CausVid-distilled models: timesteps
//               999, 934, 862, 756, 603, 410, 250, 140, 74 (the first `steps` of them) for the
//               14B models, 1000/750/500/250 (4 steps only) for the others; no shift; Euler.
//   res_multistep  the wrapper's FlowMatchSchedulerResMultistep (ComfyUI's res_multistep, a
//               second-order exponential multistep solver on the data predictions): `steps`
//               sigmas picked from a 1000-point linspace(1, 0.003/1.002), shifted.
//
// Timesteps and sigmas are reproduced to the bit where the reference code defines them:
// numpy float64 arithmetic is plain JS arithmetic, torch float32 arithmetic is emulated with
// Math.fround. Sample updates run in float64 and are stored as float32 (the reference runs
// in float32; they agree to ~1e-6 on O(1) latents), except euler, lcm and flowmatch_distill,
// whose few float32 operations are emulated exactly.
import { describeValue, invalidOption, WanError } from './errors';
import { roundHalfEven } from './numeric';

type BetaBase = 'unipc' | 'dpm++' | 'dpm++_sde' | 'euler' | 'lcm';
export type SchedulerName = BetaBase | `${BetaBase}/beta` | 'flowmatch_distill' | 'flowmatch_causvid' | 'res_multistep';

export const SCHEDULER_NAMES: readonly SchedulerName[] = Object.freeze(['unipc', 'unipc/beta', 'dpm++', 'dpm++/beta',
  'dpm++_sde', 'dpm++_sde/beta', 'euler', 'euler/beta', 'flowmatch_distill', 'flowmatch_causvid', 'lcm', 'lcm/beta',
  'res_multistep'] as SchedulerName[]);

// Schedulers whose steps are fixed: no custom sigmas.
const FIXED_SCHEDULES: readonly SchedulerName[] = ['flowmatch_distill', 'flowmatch_causvid'];

/** The schedulers whose step() draws noise (once per step). */
export const STOCHASTIC_SCHEDULERS: readonly SchedulerName[] =
  Object.freeze(['dpm++_sde', 'dpm++_sde/beta', 'lcm', 'lcm/beta'] as SchedulerName[]);

export interface ScheduleOptions {
  /** Number of sampling steps (ignored when `sigmas` is given: then it is sigmas.length - 1). */
  steps: number;
  /** Timestep shift: sigma' = shift*sigma / (1 + (shift-1)*sigma) (not applied to custom sigmas). */
  shift: number;
  /** Custom sigmas, steps+1 values in [0, 1] (the wrapper's SIGMAS input), used as given. */
  sigmas?: number[];
  /** First step to run (0-based, as the wrapper's start_step); the schedule is cut before it. */
  startStep?: number;
  /** Step to stop before (as the wrapper's end_step), or -1 for the end. */
  endStep?: number;
  /** Denoise strength in (0, 1]; below 1 it sets startStep = steps - floor(steps*strength) - 1, as the wrapper. */
  denoiseStrength?: number;
  /** The wrapper's enhance_hf (WanVideoScheduler): the timesteps above half the highest are
   * kept, and a uniform tail of max(3, min(15, floor(0.2 n))) steps runs from that half to 0; the
   * number of steps changes. Cutting (startStep, endStep) comes after. */
  enhanceHf?: boolean;
  /** The DiT's width (model.config.dim; default 5120, as the wrapper's get_scheduler):
   * flowmatch_causvid's timesteps are the 14B models' at 5120, the 1.3B's otherwise. */
  transformerDim?: number;
}

export interface Schedule {
  /** What the DiT receives at each step to run: sigma*1000, integers for unipc, dpm++ and
   * dpm++_sde and for custom sigmas (int64 in the reference code), float32 values for euler,
   * lcm and flowmatch_distill (as the wrapper feeds them). */
  timesteps: number[];
  /** One more than timesteps: the noise level at each step and after the last (0 at the end of a full schedule). */
  sigmas: number[];
  /** Index of timesteps[0] in the full schedule (> 0 after startStep or denoiseStrength). */
  startStep: number;
  /** The full schedule's sigmas before cutting (for adding noise to init samples, previews). */
  fullSigmas: number[];
}

export interface FlowScheduler {
  readonly name: SchedulerName;
  readonly timesteps: number[];
  readonly sigmas: number[];
  /** The step index the next call to step() must pass (multistep schedulers keep history). */
  readonly stepIndex: number;
  /** One step: the model's flow prediction (velocity) at timesteps[i] for `sample`; returns the
   * next sample (new array). The first call may start at any i (history starts empty, as the
   * official schedulers started mid-schedule); unipc, dpm++ and dpm++_sde then need
   * i, i+1, ... in order. `noise` supplies standard normal noise for the stochastic
   * schedulers (dpm++_sde and lcm call it exactly once per step, even where its weight is 0,
   * as the reference code draws it every step from the sampler's generator). */
  step(modelOutput: Float32Array, i: number, sample: Float32Array, noise?: () => Float32Array): Float32Array;
}

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------
// Schedules

// numpy.linspace(start, stop, num) in float64: i*step + start, the last value set to stop.
function linspace(start: number, stop: number, num: number): number[] {
  const out: number[] = [];
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  for (let i = 0; i < num; i++) out.push(step === 0 ? start : i * step + start);
  if (num > 1) out[num - 1] = stop;
  return out;
}

// The shift in float64 (numpy arrays): shift*s / (1 + (shift-1)*s).
function shift64(s: number, shift: number): number {
  return (shift * s) / (1 + (shift - 1) * s);
}

// The same expression on a float32 torch tensor with a Python float scalar: every operation
// rounds to float32, and the scalars (shift, shift-1) are rounded to float32 first.
function shift32(s: number, shift: number): number {
  return f32(f32(f32(shift) * s) / f32(1 + f32(f32(shift - 1) * s)));
}

// float32(1 - 0.001): the largest sigma of the 1000-step training table that Wan's
// FlowUniPC/FlowDPM schedulers build (1 - linspace(1, 1/1000, 1000)[::-1], cast to float32).
const SIGMA_MAX_TRAIN = f32(1 - 0.001);

// torch.linspace(1, 0, 1001, dtype=float32)[[1, 250, 500, 750]]: the unshifted sigmas of the
// wrapper's flowmatch_distill timesteps 999, 750, 500, 250. torch 1.13's vectorised CPU
// linspace gives 0.49999994 (not 0.5) at index 500; kept bit-exact here.
const DISTILL_BASE_SIGMAS = [f32(0.999), 0.75, 0.4999999403953552, 0.25];

// flowmatch_causvid's timesteps (the wrapper's get_scheduler): the 14B models' (dim 5120), of
// which the first `steps` are run, and the others' (4 steps only).
const CAUSVID_14B_TIMESTEPS = [999, 934, 862, 756, 603, 410, 250, 140, 74];
const CAUSVID_TIMESTEPS = [1000, 750, 500, 250];
const causvidTimesteps = (dim: number | undefined) => ((dim ?? 5120) === 5120 ? CAUSVID_14B_TIMESTEPS : CAUSVID_TIMESTEPS);

// torch.linspace(start, end, steps) in float32 on the CPU, value for value as torch 1.13's
// kernel computes it (its AVX2 build; checked against python3-torch here): step = (end -
// start)/(steps - 1) in float32; vectors of 8, two per pass, each from a base start + step*i
// (a vector beginning in the first half) or end - step*(steps-1-i) (in the second), each a
// fused multiply-add, plus k*step rounded on its own; the values after the last whole pass one
// by one by the same base formula.
function torchLinspace32(start: number, end: number, steps: number): number[] {
  const a = f32(start), b = f32(end);
  const step = f32(f32(b - a) / (steps - 1));
  const halfway = Math.trunc(steps / 2), lanes = 8, vectorized = Math.floor(steps / (2 * lanes)) * 2 * lanes;
  // a*b + c rounded once: the product of two float32 values (here also a small integer) is exact in float64.
  const fused = (x: number, y: number, z: number) => f32(x * y + z);
  const at = (i: number) => (i < halfway ? fused(step, i, a) : fused(-step, steps - i - 1, b));
  const out: number[] = [];
  for (let i = 0; i < vectorized; i += lanes) {
    const base = at(i);
    for (let k = 0; k < lanes; k++) out.push(f32(base + f32(k * step)));
  }
  for (let i = vectorized; i < steps; i++) out.push(at(i));
  return out;
}

// log Gamma (Lanczos' approximation, g = 7, 9 terms: ~1e-15 relative for x > 0).
function logGamma(x: number): number {
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
    12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

// The regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz).
function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(a * Math.log(x) + b * Math.log(1 - x) - (logGamma(a) + logGamma(b) - logGamma(a + b)));
  const fraction = (x: number, a: number, b: number) => {
    const tiny = 1e-300;
    let c = 1, d = 1 - ((a + b) * x) / (a + 1);
    d = 1 / (Math.abs(d) < tiny ? tiny : d);
    let h = d;
    for (let m = 1; m <= 1000; m++) {
      for (const numerator of [(m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m)), (-(a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))]) {
        d = 1 + numerator * d;
        d = 1 / (Math.abs(d) < tiny ? tiny : d);
        c = 1 + numerator / c;
        if (Math.abs(c) < tiny) c = tiny;
        h *= d * c;
      }
      if (Math.abs(d * c - 1) < 1e-16) break;
    }
    return h;
  };
  return x < (a + 1) / (a + b + 2) ? (front * fraction(x, a, b)) / a : 1 - (front * fraction(1 - x, b, a)) / b;
}

// scipy.stats.beta.ppf(p, a, b): the x with I_x(a, b) = p, by bisection to the last bit.
function betaPpf(p: number, a: number, b: number): number {
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  let lo = 0, hi = 1;
  for (let i = 0; i < 200 && hi - lo > 0; i++) {
    const mid = (lo + hi) / 2;
    if (mid === lo || mid === hi) break;
    if (incompleteBeta(mid, a, b) < p) lo = mid; else hi = mid;
  }
  return (lo + hi) / 2;
}

// The /beta variants (use_beta_sigmas, "Beta Sampling is All You Need"): the schedule's N sigmas
// keep only their two ends, and the steps between are spaced by the Beta(0.6, 0.6) quantiles
// of 1 - linspace(0, 1, N).
function betaSigmas(s: number[]): number[] {
  const n = s.length, lo = s[n - 1], hi = s[0];
  return linspace(0, 1, n).map((u) => lo + betaPpf(1 - u, 0.6, 0.6) * (hi - lo));
}

function shiftedSchedule(name: SchedulerName, steps: number, shift: number, transformerDim?: number): { timesteps: number[]; sigmas: number[] } {
  const beta = name.endsWith('/beta');
  switch (name) {
    case 'unipc':
    case 'dpm++':
    case 'dpm++_sde':
    case 'unipc/beta':
    case 'dpm++/beta':
    case 'dpm++_sde/beta': {
      // wrapper: FlowUniPCMultistepScheduler(shift=shift).set_timesteps(steps, shift=shift) and
      // FlowDPMSolverMultistepScheduler(shift=shift).set_timesteps(steps), one schedule: the
      // constructor shifts the training table in float32 (so sigma_max = shift32(0.999)),
      // then set_timesteps spaces linspace(sigma_max, 0) and shifts again in float64 (and
      // /beta respaces them), timesteps from the float64 sigmas.
      const top = shift32(SIGMA_MAX_TRAIN, shift);
      let s = linspace(top, 0, steps + 1).slice(0, steps).map((x) => shift64(x, shift));
      if (beta) s = betaSigmas(s);
      return { timesteps: s.map((x) => Math.trunc(x * 1000)), sigmas: [...s.map(f32), 0] };
    }
    case 'euler':
    case 'lcm':
    case 'euler/beta':
    case 'lcm/beta': {
      // diffusers FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps) (the
      // wrapper's FlowMatchLCMScheduler is the same): sigma_max/min are the float32-shifted
      // ends of the training table (1 and 1/1000), spaced in timestep units (steps values,
      // no extra point), shifted again in float64 (and /beta respaces them, as diffusers since
      // it shifts first does), cast to float32; timesteps = sigma*1000 in float32.
      const hi = shift32(1, shift), lo = shift32(f32(1 / 1000), shift);
      let s = linspace(hi * 1000, lo * 1000, steps).map((t) => shift64(t / 1000, shift));
      if (beta) s = betaSigmas(s);
      const s32 = s.map(f32);
      return { timesteps: s32.map((x) => f32(x * 1000)), sigmas: [...s32, 0] };
    }
    case 'flowmatch_distill': {
      // wrapper: FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True) with 1000
      // training steps, timesteps (float32 sigma*1000) taken at 999/750/500/250 and
      // sigmas = timesteps/1000 (float32) plus a final 0.
      const t = DISTILL_BASE_SIGMAS.map((x) => f32(shift32(x, shift) * 1000));
      return { timesteps: t, sigmas: [...t.map((x) => f32(x / 1000)), 0] };
    }
    case 'flowmatch_causvid': {
      // wrapper: the listed timesteps (an int64 tensor, no shift), sigmas = timesteps / 1000
      // (float32) plus a final 0.
      const t = causvidTimesteps(transformerDim).slice(0, steps);
      return { timesteps: t, sigmas: [...t.map((x) => f32(x / 1000)), 0] };
    }
    case 'res_multistep': {
      // wrapper: FlowMatchSchedulerResMultistep(shift).set_timesteps(steps): of
      // torch.linspace(1, 0.003/1.002, 1000), the values at int(round(x * 1000/steps)) for x <
      // steps, then 0, as float32; shifted in float32; timesteps = sigmas * 1000 in float32.
      // (Its timesteps keep the final 0 too, so the wrapper calls the model once more at
      // sigma 0, and that step leaves the sample as it is; here the schedule has `steps` steps.)
      const table = torchLinspace32(1, 0.003 / 1.002, 1000);
      const ss = 1000 / steps;
      const s = [...Array.from({ length: steps }, (_, x) => table[roundHalfEven(x * ss)]), 0].map((x) => shift32(x, shift));
      return { timesteps: s.slice(0, -1).map((x) => f32(x * 1000)), sigmas: s };
    }
  }
}

function checkOptions(name: unknown, o: unknown): asserts o is ScheduleOptions {
  if (typeof name !== 'string' || !(SCHEDULER_NAMES as readonly string[]).includes(name))
    throw invalidOption(`Expected one of ${SCHEDULER_NAMES.join(', ')} for scheduler but received ${describeValue(name)}`);
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw invalidOption(`Expected an object for options but received ${describeValue(o)}`);
  const opt = o as Record<string, unknown>;
  if (opt.sigmas !== undefined) {
    const s = opt.sigmas;
    if (!Array.isArray(s) || s.length < 2 || !s.every((x) => typeof x === 'number' && x >= 0 && x <= 1))
      throw invalidOption(`Expected an array of at least 2 numbers in [0, 1] for sigmas but received ${describeValue(s)}`);
    // Denoising runs from noise towards 0: sigmas never rise. The last need not be 0 (the first
    // half of a split, as ComfyUI's SplitSigmas makes it, ends above 0), but some step must move.
    const rise = s.findIndex((x, i) => i > 0 && x > s[i - 1]);
    if (rise > 0 || s[0] === s[s.length - 1])
      throw invalidOption(`Expected values that never rise, the first above the last, for sigmas but received [${s.join(', ')}]` +
        (rise > 0 ? ` (${s[rise]} after ${s[rise - 1]})` : ''));
    if (FIXED_SCHEDULES.includes(name as SchedulerName))
      throw invalidOption(`Expected no sigmas for scheduler ${name} (its schedule is fixed) but received custom sigmas`);
  } else {
    if (!Number.isSafeInteger(opt.steps) || (opt.steps as number) < 1)
      throw invalidOption(`Expected a positive integer for steps but received ${describeValue(opt.steps)}`);
    if (typeof opt.shift !== 'number' || !(opt.shift > 0 && opt.shift <= 1000))
      throw invalidOption(`Expected a number in (0, 1000] for shift but received ${describeValue(opt.shift)}`);
    if (name === 'flowmatch_distill' && opt.steps !== 4)
      throw invalidOption(`Expected 4 for steps with scheduler flowmatch_distill but received ${describeValue(opt.steps)}`);
    if (name === 'flowmatch_causvid') {
      const timesteps = causvidTimesteps(opt.transformerDim as number | undefined);
      if (timesteps === CAUSVID_14B_TIMESTEPS ? (opt.steps as number) > timesteps.length : opt.steps !== 4)
        throw invalidOption(`Expected ${timesteps === CAUSVID_14B_TIMESTEPS ? `1..${timesteps.length}` : '4'} for steps with scheduler ` +
          `flowmatch_causvid and a model of dim ${opt.transformerDim ?? 5120} but received ${describeValue(opt.steps)}`);
    }
  }
  if (opt.startStep !== undefined && (!Number.isSafeInteger(opt.startStep) || (opt.startStep as number) < 0))
    throw invalidOption(`Expected a non-negative integer for startStep but received ${describeValue(opt.startStep)}`);
  if (opt.endStep !== undefined && (!Number.isSafeInteger(opt.endStep) || ((opt.endStep as number) < 1 && opt.endStep !== -1)))
    throw invalidOption(`Expected a positive integer or -1 for endStep but received ${describeValue(opt.endStep)}`);
  if (opt.transformerDim !== undefined && (!Number.isSafeInteger(opt.transformerDim) || (opt.transformerDim as number) < 1))
    throw invalidOption(`Expected a positive integer for transformerDim but received ${describeValue(opt.transformerDim)}`);
  if (opt.enhanceHf !== undefined && typeof opt.enhanceHf !== 'boolean')
    throw invalidOption(`Expected a boolean for enhanceHf but received ${describeValue(opt.enhanceHf)}`);
  if (opt.denoiseStrength !== undefined) {
    const d = opt.denoiseStrength;
    if (typeof d !== 'number' || !(d > 0 && d <= 1))
      throw invalidOption(`Expected a number in (0, 1] for denoiseStrength but received ${describeValue(d)}`);
    if (d < 1 && (opt.startStep ?? 0) !== 0)
      throw invalidOption(`Expected startStep 0 with denoiseStrength < 1 (it sets the start step) but received ${describeValue(opt.startStep)}`);
  }
}

// enhance_hf (the wrapper's get_scheduler): the timesteps above half the highest, then
// np.linspace(half, 0, tail, endpoint=False) in float32; sigmas the timesteps / 1000 in float32
// and a final 0.
function enhancedHighFrequencies(timesteps: number[]): { timesteps: number[]; sigmas: number[] } {
  const tail = Math.max(3, Math.min(15, Math.trunc(timesteps.length * 0.2)));
  const half = Math.max(...timesteps) * 0.5;
  const step = -half / tail;
  const kept = timesteps.filter((t) => t > half).map(f32);
  const enhanced = [...kept, ...Array.from({ length: tail }, (_, k) => f32(k * step + half))];
  return { timesteps: enhanced, sigmas: [...enhanced.map((t) => f32(t / 1000)), 0] };
}

/** The timesteps the DiT receives and the sigmas (one more, the last 0 for a full schedule)
 * of scheduler `name`. Custom `sigmas` replace the computed schedule (no shift applied,
 * timesteps = int(float32(sigma)*1000)), as the wrapper's SIGMAS input does. */
export function schedule(name: SchedulerName, o: ScheduleOptions): Schedule {
  checkOptions(name, o);
  let full: { timesteps: number[]; sigmas: number[] };
  if (o.sigmas !== undefined) {
    // wrapper _apply_custom_sigmas: sigmas kept (a float32 SIGMAS tensor), timesteps = int64(sigmas[:-1]*1000).
    const s = o.sigmas.map(f32);
    full = { timesteps: s.slice(0, -1).map((x) => Math.trunc(f32(x * 1000))), sigmas: s };
  } else {
    full = shiftedSchedule(name, o.steps, o.shift, o.transformerDim);
  }
  if (o.enhanceHf) full = enhancedHighFrequencies(full.timesteps);
  const n = full.timesteps.length;
  let startStep = o.startStep ?? 0;
  if (o.denoiseStrength !== undefined && o.denoiseStrength < 1)
    startStep = n - Math.trunc(n * o.denoiseStrength) - 1;  // as the wrapper's WanVideoSampler
  const endStep = o.endStep ?? -1;
  if (startStep >= n)
    throw invalidOption(`Expected startStep < ${n} (the number of steps) but received ${describeValue(startStep)}`);
  if (endStep !== -1 && endStep > n)
    throw invalidOption(`Expected endStep <= ${n} (the number of steps) or -1 but received ${describeValue(endStep)}`);
  if (endStep !== -1 && startStep >= endStep)
    throw invalidOption(`Expected startStep (${startStep}) < endStep but received endStep ${describeValue(endStep)}`);
  const end = endStep === -1 ? n : endStep;
  const timesteps = full.timesteps.slice(startStep, end);
  return { timesteps, sigmas: full.sigmas.slice(startStep, startStep + timesteps.length + 1), startStep, fullSigmas: full.sigmas };
}

// ---------------------------------------------------------------------------------------
// Steppers

// log-SNR of flow matching: lambda = log(alpha) - log(sigma), alpha = 1 - sigma.
// +Infinity at sigma 0 and -Infinity at sigma 1; the formulas below take those limits as
// torch does (exp(-inf) = 0, 1/inf = 0).
function lambda(sigma: number): number {
  return Math.log(1 - sigma) - Math.log(sigma);
}

abstract class BaseScheduler implements FlowScheduler {
  readonly timesteps: number[];
  readonly sigmas: number[];
  protected next = 0;
  private started = false;
  constructor(readonly name: SchedulerName, s: { timesteps: number[]; sigmas: number[] }, private readonly sequential: boolean) {
    this.timesteps = s.timesteps;
    this.sigmas = s.sigmas;
  }
  get stepIndex(): number { return this.next; }

  step(modelOutput: Float32Array, i: number, sample: Float32Array, noise?: () => Float32Array): Float32Array {
    const n = this.timesteps.length;
    if (!Number.isSafeInteger(i) || i < 0 || i >= n)
      throw invalidOption(`Expected a step index in 0..${n - 1} for ${this.name} step but received ${describeValue(i)}`);
    if (this.sequential && this.started && i !== this.next)
      throw invalidOption(`Expected step index ${this.next} for ${this.name} step (a multistep scheduler steps in order) but received ${i}`);
    if (!(modelOutput instanceof Float32Array) || !(sample instanceof Float32Array) || modelOutput.length !== sample.length)
      throw new WanError('WAN_INVALID_TENSOR',
        `Expected Float32Arrays of equal length for modelOutput and sample but received ${describeValue(modelOutput)} and ${describeValue(sample)}`);
    const out = this.update(modelOutput, i, sample, noise);
    this.next = i + 1;
    this.started = true;
    return out;
  }

  protected draw(noise: (() => Float32Array) | undefined, length: number): Float32Array {
    if (typeof noise !== 'function')
      throw invalidOption(`Expected a noise function for the ${this.name} scheduler (it is stochastic) but received ${describeValue(noise)}`);
    const z = noise();
    if (!(z instanceof Float32Array) || z.length !== length)
      throw new WanError('WAN_INVALID_TENSOR', `Expected noise() to return a Float32Array of length ${length} but received ${describeValue(z)}`);
    return z;
  }

  protected abstract update(v: Float32Array, i: number, x: Float32Array, noise?: () => Float32Array): Float32Array;
}

// fm_solvers_unipc.py FlowUniPCMultistepScheduler.step with solver_order 2, bh2, predict_x0,
// lower_order_final, no disabled corrector: the UniC corrector refines the current sample
// with the new model output, then the UniP predictor moves it to the next sigma.
class UniPCScheduler extends BaseScheduler {
  private m: (Float32Array | null)[] = [null, null];  // data predictions x0 of the last two steps, newest last
  private lastSample: Float32Array | null = null;    // the sample the previous predictor started from
  private lowerOrderNums = 0;
  private thisOrder = 1;

  protected update(v: Float32Array, i: number, sample: Float32Array): Float32Array {
    const n = this.timesteps.length;
    // convert_model_output: x0 from the uncorrected sample
    const sigma = this.sigmas[i];
    const x0 = new Float32Array(v.length);
    for (let k = 0; k < v.length; k++) x0[k] = sample[k] - sigma * v[k];

    let x = sample;
    if (i > 0 && this.lastSample !== null) x = this.correct(x0, i, this.lastSample, this.thisOrder);

    this.m = [this.m[1], x0];
    // lower_order_final: order 1 on the last step; warm-up: order 1 on the first
    this.thisOrder = Math.min(2, n - i, this.lowerOrderNums + 1);
    this.lastSample = x;
    const prev = this.predict(x, i, this.thisOrder);
    if (this.lowerOrderNums < 2) this.lowerOrderNums++;
    return prev;
  }

  // multistep_uni_p_bh_update: sigma[i] -> sigma[i+1]; order 2 uses rhos_p = 0.5.
  private predict(x: Float32Array, i: number, order: number): Float32Array {
    const st = this.sigmas[i + 1], s0 = this.sigmas[i];
    const at = 1 - st;
    const l0 = lambda(s0);
    const h = lambda(st) - l0;
    const hh = -h;                   // predict_x0
    const hPhi1 = Math.expm1(hh);    // h*phi_1(h) = e^h - 1
    const bH = Math.expm1(hh);       // bh2
    const m0 = this.m[1]!;
    const c = st / s0, c0 = at * hPhi1;
    const out = new Float32Array(x.length);
    if (order === 2) {
      const m1 = this.m[0]!;
      const rk = (lambda(this.sigmas[i - 1]) - l0) / h;
      const cD = at * bH * 0.5 / rk;  // alpha_t * B_h * rhos_p * D1, D1 = (m1 - m0) / rk
      for (let k = 0; k < x.length; k++) out[k] = c * x[k] - c0 * m0[k] - cD * (m1[k] - m0[k]);
    } else {
      for (let k = 0; k < x.length; k++) out[k] = c * x[k] - c0 * m0[k];
    }
    return out;
  }

  // multistep_uni_c_bh_update: redo sigma[i-1] -> sigma[i] from lastSample using the model
  // output at sigma[i] (modelT, as x0); order 2 solves the 2x2 system R rhos = b.
  private correct(modelT: Float32Array, i: number, last: Float32Array, order: number): Float32Array {
    const st = this.sigmas[i], s0 = this.sigmas[i - 1];
    const at = 1 - st;
    const l0 = lambda(s0);
    const h = lambda(st) - l0;
    const hh = -h;
    const hPhi1 = Math.expm1(hh);
    const bH = Math.expm1(hh);
    // b_k = h_phi_k * k! / B_h, h_phi_1 = hPhi1/hh - 1, h_phi_{k+1} = h_phi_k/hh - 1/(k+1)!
    let hPhiK = hPhi1 / hh - 1;
    let factorial = 1;
    const b: number[] = [];
    for (let k = 1; k <= order; k++) {
      b.push(hPhiK * factorial / bH);
      factorial *= k + 1;
      hPhiK = hPhiK / hh - 1 / factorial;
    }
    const m0 = this.m[1]!;
    const c = st / s0, c0 = at * hPhi1;
    const out = new Float32Array(last.length);
    if (order === 1) {
      const cT = at * bH * 0.5;  // rhos_c = [0.5]
      for (let k = 0; k < out.length; k++) out[k] = c * last[k] - c0 * m0[k] - cT * (modelT[k] - m0[k]);
    } else {
      const m1 = this.m[0]!;
      const rk = (lambda(this.sigmas[i - 2]) - l0) / h;
      // R = [[1, 1], [rk, 1]] (rows rks^0, rks^1 with rks = [rk, 1]), solved in closed form.
      // Where sigma[i-2] is 1 (custom sigmas from 1), rk = -inf: torch.linalg.solve returns
      // NaN there, this gives the limit rho0 = 0, rho1 = b0.
      const rho0 = (b[0] - b[1]) / (1 - rk), rho1 = b[0] - rho0;
      const cD = at * bH * rho0 / rk, cT = at * bH * rho1;
      for (let k = 0; k < out.length; k++)
        out[k] = c * last[k] - c0 * m0[k] - cD * (m1[k] - m0[k]) - cT * (modelT[k] - m0[k]);
    }
    return out;
  }
}

// fm_solvers.py FlowDPMSolverMultistepScheduler.step with solver_order 2, midpoint,
// final_sigmas_type 'zero' (first order on the last step), dpmsolver++ or sde-dpmsolver++.
class DPMSolverScheduler extends BaseScheduler {
  private m: (Float32Array | null)[] = [null, null];
  private lowerOrderNums = 0;
  constructor(name: SchedulerName, s: { timesteps: number[]; sigmas: number[] }, private readonly sde: boolean) {
    super(name, s, true);
  }

  protected update(v: Float32Array, i: number, x: Float32Array, noise?: () => Float32Array): Float32Array {
    const n = this.timesteps.length;
    const z = this.sde ? this.draw(noise, x.length) : null;  // drawn every step, as step() does
    const sigma = this.sigmas[i];
    const x0 = new Float32Array(v.length);
    for (let k = 0; k < v.length; k++) x0[k] = x[k] - sigma * v[k];
    this.m = [this.m[1], x0];

    const st = this.sigmas[i + 1], s0 = this.sigmas[i];
    const at = 1 - st;
    const h = lambda(st) - lambda(s0);
    const firstOrder = this.lowerOrderNums < 1 || i === n - 1;
    if (this.lowerOrderNums < 2) this.lowerOrderNums++;

    // second order: D1 = (m0 - m1) / r0 with r0 = h_0 / h; the midpoint rule weights it 0.5.
    let r = 0;
    const m1 = this.m[0];
    if (!firstOrder) {
      const h0 = lambda(s0) - lambda(this.sigmas[i - 1]);
      r = 1 / (h0 / h);
    }
    const out = new Float32Array(x.length);
    if (!this.sde) {
      const c = st / s0, cD = -at * (Math.exp(-h) - 1);
      for (let k = 0; k < out.length; k++) {
        const d1 = r === 0 ? 0 : r * (x0[k] - m1![k]);
        out[k] = c * x[k] + cD * x0[k] + 0.5 * cD * d1;
      }
    } else {
      const e2 = 1 - Math.exp(-2 * h);
      const c = (st / s0) * Math.exp(-h), cD = at * e2, cZ = st * Math.sqrt(e2);
      for (let k = 0; k < out.length; k++) {
        const d1 = r === 0 ? 0 : r * (x0[k] - m1![k]);
        out[k] = c * x[k] + cD * x0[k] + 0.5 * cD * d1 + cZ * z![k];
      }
    }
    return out;
  }
}

// diffusers FlowMatchEulerDiscreteScheduler.step (euler) and the wrapper's
// FlowMatchScheduler.step (flowmatch_distill): x + (sigma_next - sigma) * v, in float32.
class EulerScheduler extends BaseScheduler {
  constructor(name: SchedulerName, s: { timesteps: number[]; sigmas: number[] }) { super(name, s, false); }
  protected update(v: Float32Array, i: number, x: Float32Array): Float32Array {
    const dt = f32(this.sigmas[i + 1] - this.sigmas[i]);
    const out = new Float32Array(x.length);
    for (let k = 0; k < out.length; k++) out[k] = x[k] + f32(dt * v[k]);
    return out;
  }
}

// The wrapper's FlowMatchLCMScheduler.step: x0 = x - sigma*v, then
// (1 - sigma_next)*x0 + sigma_next*noise with fresh noise, in float32.
class LCMScheduler extends BaseScheduler {
  constructor(name: SchedulerName, s: { timesteps: number[]; sigmas: number[] }) { super(name, s, false); }
  protected update(v: Float32Array, i: number, x: Float32Array, noise?: () => Float32Array): Float32Array {
    const sigma = this.sigmas[i], next = this.sigmas[i + 1];
    const z = this.draw(noise, x.length);
    const keep = f32(1 - next);
    const out = new Float32Array(x.length);
    for (let k = 0; k < out.length; k++) {
      const x0 = f32(x[k] - f32(sigma * v[k]));
      out[k] = f32(keep * x0) + f32(next * z[k]);
    }
    return out;
  }
}

// The wrapper's FlowMatchSchedulerResMultistep.step (ComfyUI's res_multistep without noise): the
// data prediction x0 = x - sigma*v; an Euler step on the first step run and into sigma 0; else,
// in t = -log(sigma), h = t_next - t and c2 = (t_prev - t_old)/h (t_old that of the previous
// step's next sigma), x_next = e^-h x + h (b1 x0 + b2 x0_prev) with b1 = phi1(-h) - phi2(-h)/c2,
// b2 = phi2(-h)/c2, phi1(z) = expm1(z)/z, phi2(z) = (phi1(z) - 1)/z. The coefficients in float64,
// the update in float32 as the reference's tensors.
class ResMultistepScheduler extends BaseScheduler {
  private previousX0: Float32Array | null = null;
  private previousNext = 0;  // the last step's next sigma (old_sigma_next)
  constructor(name: SchedulerName, s: { timesteps: number[]; sigmas: number[] }) { super(name, s, true); }

  protected update(v: Float32Array, i: number, x: Float32Array): Float32Array {
    const sigma = this.sigmas[i], next = this.sigmas[i + 1], before = i > 0 ? this.sigmas[i - 1] : sigma;
    const x0 = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) x0[k] = f32(x[k] - f32(sigma * v[k]));
    const out = new Float32Array(x.length);
    if (next === 0 || this.previousX0 === null) {
      const dt = f32(next - sigma);
      for (let k = 0; k < out.length; k++) out[k] = f32(x[k] + f32(v[k] * dt));
    } else {
      const t = -Math.log(sigma), h = -Math.log(next) - t;
      const c2 = (-Math.log(before) + Math.log(this.previousNext)) / h;
      const phi1 = Math.expm1(-h) / -h, phi2 = (phi1 - 1) / -h;
      const decay = f32(Math.exp(-h)), hh = f32(h), b1 = f32(phi1 - phi2 / c2), b2 = f32(phi2 / c2);
      const p = this.previousX0;
      for (let k = 0; k < out.length; k++) out[k] = f32(f32(decay * x[k]) + f32(hh * f32(f32(b1 * x0[k]) + f32(b2 * p[k]))));
    }
    this.previousNext = next;
    this.previousX0 = x0;
    return out;
  }
}

/** A scheduler over schedule(name, o): call step(v, i, x) for i = 0, 1, ... in order.
 * startStep/endStep cut the schedule first, as the wrapper does (indices then count from the
 * cut, and a multistep scheduler treats the cut's last step as the final one: first order, where
 * the full schedule would go on in second order). */
export function createScheduler(name: SchedulerName, o: ScheduleOptions): FlowScheduler {
  const s = schedule(name, o);
  const arrays = { timesteps: s.timesteps, sigmas: s.sigmas };
  switch (name) {
    case 'unipc': case 'unipc/beta': return new UniPCScheduler(name, arrays, true);
    case 'dpm++': case 'dpm++/beta': return new DPMSolverScheduler(name, arrays, false);
    case 'dpm++_sde': case 'dpm++_sde/beta': return new DPMSolverScheduler(name, arrays, true);
    case 'euler': case 'euler/beta': case 'flowmatch_distill': case 'flowmatch_causvid': return new EulerScheduler(name, arrays);
    case 'res_multistep': return new ResMultistepScheduler(name, arrays);
    case 'lcm': case 'lcm/beta': return new LCMScheduler(name, arrays);
  }
}
