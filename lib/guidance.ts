// The wrapper's WanVideoExperimentalArgs (experimental_args): variants of classifier-free
// guidance, applied where the sampler combines a step's conditional and unconditional
// predictions (per context window, as the wrapper's predict_with_cfg), and Temporal Score
// Rescaling, applied to the combined prediction before the scheduler's step. Predictions are
// float32 [C, T, H, W]; sums run in float64.
import { checkOptionNames, describeValue, finiteIn, integerIn, invalidOption, optionNames } from './errors';
import { native } from './native';
import { Tensor } from './tensor';

export interface ExperimentalArgs {
  /** CFG-Zero*: the unconditional prediction scaled by <cond, uncond> / |uncond|^2 before guidance. */
  cfgZeroStar?: boolean;                // false
  /** With cfgZeroStar: steps 0..zeroStarSteps (counted from the first step run) predict zero, without a model call. */
  useZeroInit?: boolean;                // false
  zeroStarSteps?: number;               // 0
  /** FreSca: the guidance term's low spatial frequencies times frescaScaleLow, the rest times
   * frescaScaleHigh (at cfg 1, the whole prediction's, as the wrapper does). */
  useFresca?: boolean;                  // false
  frescaScaleLow?: number;              // 1.0, 0..10
  frescaScaleHigh?: number;             // 1.25, 0..10
  frescaFreqCutoff?: number;            // 20, 0..10000: the low box's half size in latent frequency bins
  /** TCFG: the unconditional prediction projected, per latent channel, onto the top singular
   * direction of (cond, uncond), dropping its tangential part. */
  useTcfg?: boolean;                    // false
  /** RAAG: the step's cfg becomes 1 + (cfg - 1) exp(-raagAlpha r), r the mean over channels of
   * |cond - uncond| / |uncond|; 0 is off, 1 typical. */
  raagAlpha?: number;                   // 0, 0..10
  /** Temporal Score Rescaling: the predicted noise x + (1 - t) v scaled by a ratio going from 1
   * at t = 1 to tsrK at t = 0, earlier the larger tsrSigma. */
  temporalScoreRescaling?: boolean;     // false
  tsrK?: number;                        // 0.95, 0..100
  tsrSigma?: number;                    // 1.0, 0..1
  /** Not implemented: '' only. */
  videoAttentionSplitSteps?: string;
  /** Not implemented: false only. */
  bidirectionalSampling?: boolean;
}

const EXPERIMENTAL_OPTIONS = optionNames<ExperimentalArgs>()({
  cfgZeroStar: true, useZeroInit: true, zeroStarSteps: true, useFresca: true, frescaScaleLow: true, frescaScaleHigh: true,
  frescaFreqCutoff: true, useTcfg: true, raagAlpha: true, temporalScoreRescaling: true, tsrK: true, tsrSigma: true,
  videoAttentionSplitSteps: true, bidirectionalSampling: true,
});

/** experimentalArgs checked, with the wrapper's defaults. */
export interface Guidance {
  cfgZeroStar: boolean;
  zeroInitSteps: number;  // steps 0..zeroInitSteps-1 predict zero (0: none)
  fresca?: { low: number; high: number; cutoff: number };
  tcfg: boolean;
  raagAlpha: number;
  tsr?: { k: number; sigma: number };
}

export function resolveExperimentalArgs(a: ExperimentalArgs | undefined): Guidance | undefined {
  if (a === undefined) return undefined;
  if (typeof a !== 'object' || a === null) throw invalidOption(`Expected an object for experimentalArgs but received ${describeValue(a)}`);
  checkOptionNames(a, EXPERIMENTAL_OPTIONS, 'experimentalArgs');
  const flag = (name: keyof ExperimentalArgs): boolean => {
    const v = a[name] ?? false;
    if (typeof v !== 'boolean') throw invalidOption(`Expected a boolean for experimentalArgs.${name} but received ${describeValue(v)}`);
    return v;
  };
  if ((a.videoAttentionSplitSteps ?? '') !== '')
    throw invalidOption(`experimentalArgs.videoAttentionSplitSteps is not implemented yet in wan-native: expected '' but received ${describeValue(a.videoAttentionSplitSteps)}`);
  if (flag('bidirectionalSampling'))
    throw invalidOption('experimentalArgs.bidirectionalSampling is not implemented yet in wan-native: expected false');
  const cfgZeroStar = flag('cfgZeroStar');
  const zeroStarSteps = integerIn('experimentalArgs.zeroStarSteps', a.zeroStarSteps, 0, 0, 10000);
  const fresca = flag('useFresca') ? {
    low: finiteIn('experimentalArgs.frescaScaleLow', a.frescaScaleLow, 1.0, 0, 10),
    high: finiteIn('experimentalArgs.frescaScaleHigh', a.frescaScaleHigh, 1.25, 0, 10),
    cutoff: integerIn('experimentalArgs.frescaFreqCutoff', a.frescaFreqCutoff, 20, 0, 10000),
  } : undefined;
  const tsr = flag('temporalScoreRescaling') ? {
    k: finiteIn('experimentalArgs.tsrK', a.tsrK, 0.95, 0, 100),
    sigma: finiteIn('experimentalArgs.tsrSigma', a.tsrSigma, 1.0, 0, 1),
  } : undefined;
  // Zero-init is part of CFG-Zero*: without it, as in the wrapper, it does nothing.
  return {
    cfgZeroStar, zeroInitSteps: cfgZeroStar && flag('useZeroInit') ? zeroStarSteps + 1 : 0, fresca, tcfg: flag('useTcfg'),
    raagAlpha: finiteIn('experimentalArgs.raagAlpha', a.raagAlpha, 0, 0, 10), tsr,
  };
}

/** CFG-Zero*'s optimized scale: <cond, uncond> / (|uncond|^2 + 1e-8) over the whole prediction. */
export function optimizedScale(cond: Float32Array, uncond: Float32Array): number {
  let dot = 0, norm = 0;
  for (let i = 0; i < cond.length; i++) { dot += cond[i] * uncond[i]; norm += uncond[i] * uncond[i]; }
  return dot / (norm + 1e-8);
}

/** TCFG: per channel, uncond projected onto the top right singular vector of the 2 x N matrix
 * [cond; uncond] (as the wrapper's SVD over a prediction without a batch dimension: per channel).
 * The 2 x 2 Gram matrix's top eigenvector e gives that vector as (e0 cond + e1 uncond) / sqrt(l1). */
export function tangentialProjection(cond: Float32Array, uncond: Float32Array, channels: number): Float32Array {
  const out = new Float32Array(uncond.length);
  const n = uncond.length / channels;
  for (let ch = 0; ch < channels; ch++) {
    const from = ch * n, to = from + n;
    let a = 0, b = 0, d = 0;
    for (let i = from; i < to; i++) { a += cond[i] * cond[i]; b += cond[i] * uncond[i]; d += uncond[i] * uncond[i]; }
    const l1 = (a + d) / 2 + Math.hypot((a - d) / 2, b);
    if (!(l1 > 0)) continue;  // both zero: so is the projection
    // The eigenvector for l1: (b, l1 - a), or (l1 - d, b) where that one vanishes (b = 0, a >= d).
    let e0 = b, e1 = l1 - a;
    if (Math.hypot(e0, e1) < 1e-12 * l1) { e0 = l1 - d; e1 = b; }
    const norm = Math.hypot(e0, e1);
    e0 /= norm; e1 /= norm;
    // (u . v1) v1 with v1 = (e0 c + e1 u) / sqrt(l1): ((e0 b + e1 d) / l1) (e0 c + e1 u).
    const k = (e0 * b + e1 * d) / l1;
    for (let i = from; i < to; i++) out[i] = k * (e0 * cond[i] + e1 * uncond[i]);
  }
  return out;
}

/** RAAG: 1 + (cfg - 1) exp(-alpha r), r the mean over channels of |cond - uncond| / (|uncond| + 1e-8). */
export function raagScale(cond: Float32Array, uncond: Float32Array, channels: number, cfg: number, alpha: number): number {
  const n = uncond.length / channels;
  let ratios = 0;
  for (let ch = 0; ch < channels; ch++) {
    let diff = 0, norm = 0;
    for (let i = ch * n; i < (ch + 1) * n; i++) { diff += (cond[i] - uncond[i]) ** 2; norm += uncond[i] ** 2; }
    ratios += Math.sqrt(diff) / (Math.sqrt(norm) + 1e-8);
  }
  return 1 + (cfg - 1) * Math.exp(-alpha * (ratios / channels));
}

/** FreSca's filter of x [C, T, H, W]: each frame's spatial spectrum times `low` within `cutoff`
 * bins of its centre, `high` elsewhere (csrc/sampling/fresca.h). */
export function fourierFilter(x: Float32Array, shape: readonly number[], f: { low: number; high: number; cutoff: number }): Float32Array {
  const out = new Tensor(native().fourierFilter(Tensor.handle(Tensor.fromTypedArray(x, [...shape]), 'x'), f.low, f.high, f.cutoff));
  const data = out.toTypedArray() as Float32Array;
  out.dispose();
  return data;
}

/** Temporal Score Rescaling of the velocity v at x_t, t the flow sigma: the noise estimate
 * x + (1 - t) v times (snr s^2 + 1) / (snr s^2 / k + 1), snr = (1 - t)^2 / t^2, back to a velocity. */
export function temporalScoreRescaling(v: Float32Array, x: Float32Array, t: number, k: number, sigma: number): Float32Array {
  if (t === 1) return v;
  const snr = ((1 - t) * (1 - t)) / (t * t);
  const ratio = t === 0 ? k : (snr * sigma * sigma + 1) / ((snr * sigma * sigma) / k + 1);
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = (ratio * ((1 - t) * v[i] + x[i]) - x[i]) / (1 - t);
  return out;
}

/** A step's guided prediction from its conditional and (cfg not 1) unconditional predictions, in
 * the wrapper's order: CFG-Zero*'s scale, TCFG, RAAG, then uncond + cfg (cond - uncond) with
 * FreSca on the guidance term. */
export function combineGuidance(cond: Float32Array, uncond: Float32Array | undefined, cfg: number, shape: readonly number[],
                                g: Guidance | undefined): Float32Array {
  if (!uncond) return g?.fresca ? fourierFilter(cond, shape, g.fresca) : cond;
  let u = uncond;
  if (g?.cfgZeroStar) {
    const alpha = optimizedScale(cond, uncond);
    u = uncond.map((v) => v * alpha);
  }
  if (g?.tcfg) u = tangentialProjection(cond, u, shape[0]);
  const scale = g && g.raagAlpha > 0 ? raagScale(cond, u, shape[0], cfg, g.raagAlpha) : cfg;
  const out = new Float32Array(cond.length);
  if (g?.fresca) {
    const difference = new Float32Array(cond.length);
    for (let i = 0; i < difference.length; i++) difference[i] = cond[i] - u[i];
    const filtered = fourierFilter(difference, shape, g.fresca);
    for (let i = 0; i < out.length; i++) out[i] = u[i] + scale * filtered[i];
  } else {
    for (let i = 0; i < out.length; i++) out[i] = u[i] + scale * (cond[i] - u[i]);
  }
  return out;
}
