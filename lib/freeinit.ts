// FreeInit (Wu et al. 2023, "FreeInit: Bridging Initialization Gap in Video Diffusion Models";
// the wrapper's WanVideoFreeInitArgs, freeinit_args). Sampling runs several times. After each
// run but the last, its result is diffused back to t = 999 on the first run's starting noise,
// and the next run starts from that latent's low spatio-temporal frequencies joined to fresh
// noise's high ones: the layout the first run settled on is kept, the detail drawn anew, which
// the method finds makes videos more consistent over time. Each run costs a whole sampling.
import { checkOptionNames, describeValue, finiteIn, integerIn, invalidOption, optionNames } from './errors';
import { native } from './native';
import { Tensor } from './tensor';

export const FREEINIT_METHODS = ['butterworth', 'ideal', 'gaussian'] as const;
export type FreeInitMethod = (typeof FREEINIT_METHODS)[number];

/** The wrapper's WanVideoFreeInitArgs, its names and defaults. (The wrapper's sampler reads the
 * cutoffs under other keys than its node writes, so there they stay 1.0 whatever is set; here
 * they apply.) */
export interface FreeInitArgs {
  freeinitNumIters?: number;        // 3, 1..10: the sampling runs, each the whole schedule
  freeinitMethod?: FreeInitMethod;  // 'ideal': the low-pass filter's shape
  freeinitN?: number;               // 4, 1..10: the butterworth filter's order
  freeinitDS?: number;              // 1.0, 0..10: the spatial cutoff (0: all of the next start is fresh noise)
  freeinitDT?: number;              // 1.0, 0..10: the temporal cutoff (0: likewise)
}

const FREEINIT_OPTIONS = optionNames<FreeInitArgs>()({
  freeinitNumIters: true, freeinitMethod: true, freeinitN: true, freeinitDS: true, freeinitDT: true,
});

export interface FreeInit {
  iterations: number;
  lowPass: Float32Array;  // [T, H, W], centred (frequency 0 at T/2, H/2, W/2)
}

/** The checked settings and the filter for a latent [C, T, H, W]; undefined without args. */
export function resolveFreeInitArgs(args: FreeInitArgs | undefined, shape: readonly number[]): FreeInit | undefined {
  if (args === undefined) return undefined;
  if (typeof args !== 'object' || args === null) throw invalidOption(`Expected an object for freeinitArgs but received ${describeValue(args)}`);
  checkOptionNames(args, FREEINIT_OPTIONS, 'freeinitArgs');
  const method = args.freeinitMethod ?? 'ideal';
  if (!FREEINIT_METHODS.includes(method))
    throw invalidOption(`Expected one of ${FREEINIT_METHODS.join(', ')} for freeinitArgs.freeinitMethod but received ${describeValue(method)}`);
  const iterations = integerIn('freeinitArgs.freeinitNumIters', args.freeinitNumIters, 3, 1, 10);
  const order = integerIn('freeinitArgs.freeinitN', args.freeinitN, 4, 1, 10);
  const spatial = finiteIn('freeinitArgs.freeinitDS', args.freeinitDS, 1.0, 0, 10);
  const temporal = finiteIn('freeinitArgs.freeinitDT', args.freeinitDT, 1.0, 0, 10);
  return { iterations, lowPass: lowPassFilter(method, shape.slice(-3), order, spatial, temporal) };
}

/**
 * FreeInit's low-pass filters over a [T, H, W] spectrum, centred, as the method's code defines
 * them: with the normalised squared distance from the centre
 *   D² = ((dS/dT)(2t/T - 1))² + (2h/H - 1)² + (2w/W - 1)²,
 * gaussian exp(-D²/(2 dS²)), butterworth 1/(1 + (D²/dS²)^n), and ideal 1 where D² <= 2 dS
 * (the method's code compares with 2 dS, not dS²), else 0. All zero when either cutoff is 0.
 * Worked in float64, stored as float32.
 */
export function lowPassFilter(method: FreeInitMethod, [T, H, W]: readonly number[], order: number, spatial: number, temporal: number):
    Float32Array {
  const mask = new Float32Array(T * H * W);
  if (spatial === 0 || temporal === 0) return mask;
  const at = (i: number, n: number) => (2 * i) / n - 1;
  let k = 0;
  for (let t = 0; t < T; t++) {
    const dt = (spatial / temporal) * at(t, T);
    for (let h = 0; h < H; h++) {
      for (let w = 0; w < W; w++) {
        const d2 = dt * dt + at(h, H) ** 2 + at(w, W) ** 2;
        mask[k++] = method === 'gaussian' ? Math.exp((-1 / (2 * spatial ** 2)) * d2)
          : method === 'butterworth' ? 1 / (1 + (d2 / spatial ** 2) ** order)
            : d2 <= spatial * 2 ? 1 : 0;
      }
    }
  }
  return mask;
}

/**
 * The next run's start: `result` diffused to t = 999 on `start` (the first run's starting
 * latent), 0.001 result + 0.999 start, its low frequencies kept and the high ones taken from
 * `fresh` noise (3-D FFT over T, H, W, per channel). Float32 [C, T, H, W].
 */
export function reinitialize(result: Float32Array, start: Float32Array, fresh: Float32Array, shape: readonly number[], lowPass: Float32Array):
    Float32Array {
  const t = 999 / 1000;
  const diffused = new Float32Array(result.length);
  for (let i = 0; i < result.length; i++) diffused[i] = (1 - t) * result[i] + t * start[i];
  return frequencyMix(diffused, fresh, shape, lowPass);
}

/** x's spectrum times lowPass plus noise's times (1 - lowPass), back in space (native, libtorch's FFT). */
export function frequencyMix(x: Float32Array, noise: Float32Array, shape: readonly number[], lowPass: Float32Array): Float32Array {
  const out = new Tensor(native().frequencyMix(Tensor.handle(Tensor.fromTypedArray(x, [...shape]), 'x'),
    Tensor.handle(Tensor.fromTypedArray(noise, [...shape]), 'noise'), Tensor.handle(Tensor.fromTypedArray(lowPass, [...shape.slice(-3)]), 'lowPass')));
  const data = out.toTypedArray() as Float32Array;
  out.dispose();
  return data;
}
