// The wrapper's cache_args (WanVideoTeaCache, WanVideoMagCache, WanVideoEasyCache): a model call
// may skip the transformer blocks, adding again what they added at its prediction's last computed
// call, while the method estimates that little has changed since. The model keeps each
// prediction's state (csrc/models/wan_dit.cpp); this file checks the options, holds the
// calibrated tables and gives each call its settings.
import * as path from 'node:path';

import { checkOptionNames, describeValue, finiteIn, integerIn, invalidOption, optionNames } from './errors';
import type { BlockCacheCall, WanModel } from './model';
import { roundHalfEven } from './numeric';

/** The models the wrapper has TeaCache coefficients and MagCache ratios for. */
export type CacheVariant = '1_3B' | '14B' | 'i2v_480' | 'i2v_720';

/** The wrapper's WanVideoTeaCache: skips while the time embedding has changed little since the
 * last computed call (the accumulated relative L1 change, rescaled by the model's polynomial,
 * below relL1Thresh). Steps count from 0 at the first step run; both ends are included. */
export interface TeaCacheArgs {
  cacheType?: 'TeaCache';                          // the default
  relL1Thresh?: number;                            // 0.3, 0..1 (1.3B: 0.05-0.08; others 0.15-0.30)
  startStep?: number;                              // 1
  endStep?: number;                                // -1: the last step run
  cacheDevice?: 'main_device' | 'offload_device';  // 'offload_device': where the residuals wait
  useCoefficients?: boolean;                       // true (without, thresholds ~10x smaller)
  mode?: 'e' | 'e0';                               // 'e': the time embedding; 'e0': its modulation
  /** Whose coefficients: by default as the wrapper picks (cacheVariant). */
  coefficients?: CacheVariant;
}

/** The wrapper's WanVideoMagCache: the output's magnitude shrinks by a calibrated ratio each
 * step, so skipping errs by |1 - the product of the ratios skipped|; calls are skipped while that
 * error, summed over the calls skipped in a row, stays below magcacheThresh, and at most
 * magcacheK in a row. Steps count from 0 at the first step run; both ends are included. */
export interface MagCacheArgs {
  cacheType: 'MagCache';
  magcacheThresh?: number;                         // 0.02, 0..0.3
  magcacheK?: number;                              // 4, 0..6: the most calls skipped in a row
  startStep?: number;                              // 1
  endStep?: number;                                // -1: the last step run
  cacheDevice?: 'main_device' | 'offload_device';  // 'offload_device'
  /** Whose calibrated ratios: by default as the wrapper picks (cacheVariant). */
  ratios?: CacheVariant;
}

/** The wrapper's WanVideoEasyCache: the blocks' output changes k times as much as their input
 * (k measured between the last two computed calls), so skipping errs by about k times the
 * input's relative change; calls are skipped while that, summed since the last computed call,
 * stays below easycacheThresh. Steps count from 0 at the first step run; both ends are included. */
export interface EasyCacheArgs {
  cacheType: 'EasyCache';
  easycacheThresh?: number;                        // 0.015, 0..1
  startStep?: number;                              // 10
  endStep?: number;                                // -1: the last step run
  cacheDevice?: 'main_device' | 'offload_device';  // 'offload_device'
}

export type CacheArgs = TeaCacheArgs | MagCacheArgs | EasyCacheArgs;

const CACHE_OPTIONS = {
  TeaCache: optionNames<TeaCacheArgs>()({
    cacheType: true, relL1Thresh: true, startStep: true, endStep: true, cacheDevice: true, useCoefficients: true, mode: true, coefficients: true,
  }),
  MagCache: optionNames<MagCacheArgs>()({
    cacheType: true, magcacheThresh: true, magcacheK: true, startStep: true, endStep: true, cacheDevice: true, ratios: true,
  }),
  EasyCache: optionNames<EasyCacheArgs>()({ cacheType: true, easycacheThresh: true, startStep: true, endStep: true, cacheDevice: true }),
};
const CACHE_TYPES = Object.keys(CACHE_OPTIONS) as (keyof typeof CACHE_OPTIONS)[];

// The wrapper's teacache_coefficients_map (nodes_model_loading.py): np.poly1d coefficients,
// highest power first, per model and mode.
const TEACACHE_COEFFICIENTS: Record<CacheVariant, Record<'e' | 'e0', number[]>> = {
  '1_3B': {
    e: [2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01],
    e0: [-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02],
  },
  '14B': {
    e: [-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404],
    e0: [-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01],
  },
  'i2v_480': {
    e: [-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01],
    e0: [2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01],
  },
  'i2v_720': {
    e: [-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683],
    e0: [8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02],
  },
};
const CACHE_VARIANTS = Object.keys(TEACACHE_COEFFICIENTS) as CacheVariant[];

// MagCache's calibrated magnitude ratios (the wrapper's magcache_ratios_map, from MagCache's Wan2.1
// calibration): mean |output| of each step over the previous step's, the conditional and the
// unconditional prediction interleaved, over 50 steps (T2V) or 40 (I2V).
const MAGCACHE_RATIOS: Record<CacheVariant, number[]> = {
  '1_3B': [
    1.0, 1.0, 1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685,
    0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535, 0.99531,
    0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514, 0.99484, 0.99478,
    0.99481, 0.99479, 0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349,
    0.99309, 0.99304, 0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063,
    0.99005, 0.99003, 0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503,
    0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411, 0.97003, 0.97002,
    0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026,
    0.86821, 0.86868, 0.81838, 0.81939,
  ],
  '14B': [
    1.0, 1.0, 1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658,
    0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468, 0.99465,
    0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516, 0.99409, 0.99408,
    0.99428, 0.99426, 0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215,
    0.99218, 0.99215, 0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995,
    0.9887, 0.98866, 0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376,
    0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183, 0.96711, 0.96708,
    0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678,
    0.8796, 0.87945, 0.86111, 0.86189,
  ],
  'i2v_480': [
    1.0, 1.0, 0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878,
    0.98762, 0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886, 0.99065, 0.99068,
    0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861, 0.98823, 0.98823, 0.98756, 0.98759,
    0.98808, 0.98814, 0.98721, 0.98724, 0.98571, 0.98572, 0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413,
    0.97952, 0.97953, 0.98149, 0.9815, 0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087,
    0.97056, 0.97055, 0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988,
    0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
  ],
  'i2v_720': [
    1.0, 1.0, 0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917,
    0.98646, 0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103, 0.99215, 0.99212,
    0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097, 0.99166, 0.99169, 0.99041, 0.99042,
    0.99201, 0.99198, 0.99101, 0.99101, 0.98599, 0.98603, 0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857,
    0.98718, 0.98719, 0.98497, 0.98497, 0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536,
    0.97498, 0.97499, 0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655,
    0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
  ],
};

/** The coefficients and ratios the wrapper's model loader picks for a model: from the model's
 * width (1.3B), task and file name ('480', '540', 'fun', 'a2' -> i2v_480; '720' -> i2v_720;
 * otherwise 14B). */
export function cacheVariant(model: Pick<WanModel, 'config'> & { files?: readonly string[] }): CacheVariant {
  const name = path.basename(model.files?.[0] ?? '');
  let variant: CacheVariant = '14B';
  if (model.config.modelType !== 't2v') {
    if (/480|540/.test(name) || /fun|a2/i.test(name)) variant = 'i2v_480';
    else if (name.includes('720')) variant = 'i2v_720';
  }
  if (model.config.dim === 1536) variant = '1_3B';
  return variant;
}

/** MagCache's nearest_interp: `values` resampled to n entries, each the nearest by position
 * (numpy's round, halves to even). */
export function nearestInterpolation(values: readonly number[], n: number): number[] {
  if (n === 1) return [values[values.length - 1]];
  const scale = (values.length - 1) / (n - 1);
  return Array.from({ length: n }, (_, i) => values[roundHalfEven(i * scale)]);
}

/** What the Sampler needs of checked cacheArgs. */
export interface CacheSettings {
  cacheType: 'TeaCache' | 'MagCache' | 'EasyCache';
  startStep: number;
  endStep: number;  // -1: the last step run
  /** The settings of one model call: its prediction's stream, the step run (from 0) and the step's
   * place in the whole schedule (MagCache's calibration covers the whole schedule). */
  call(stream: number, step: number, position: number, unconditional: boolean): BlockCacheCall;
}

/** cacheArgs checked, with the wrapper's defaults, for a model and a schedule of `steps` steps. */
export function cacheSettings(a: CacheArgs, model: Pick<WanModel, 'config'> & { files?: readonly string[] }, steps: number): CacheSettings {
  if (typeof a !== 'object' || a === null) throw invalidOption(`Expected an object for cacheArgs but received ${describeValue(a)}`);
  const cacheType = a.cacheType ?? 'TeaCache';
  if (!CACHE_TYPES.includes(cacheType))
    throw invalidOption(`Expected one of ${CACHE_TYPES.join(', ')} for cacheArgs.cacheType but received ${describeValue(a.cacheType)}`);
  checkOptionNames(a, CACHE_OPTIONS[cacheType], 'cacheArgs');
  const startStep = integerIn('cacheArgs.startStep', a.startStep, cacheType === 'EasyCache' ? 10 : 1, 0, 9999);
  const endStep = integerIn('cacheArgs.endStep', a.endStep, -1, -1, 9999);
  const cacheDevice = a.cacheDevice ?? 'offload_device';
  if (cacheDevice !== 'main_device' && cacheDevice !== 'offload_device')
    throw invalidOption(`Expected main_device or offload_device for cacheArgs.cacheDevice but received ${describeValue(a.cacheDevice)}`);
  const variantOf = (v: unknown, name: string): CacheVariant => {
    if (v === undefined) return cacheVariant(model);
    if (!CACHE_VARIANTS.includes(v as CacheVariant))
      throw invalidOption(`Expected one of ${CACHE_VARIANTS.join(', ')} for cacheArgs.${name} but received ${describeValue(v)}`);
    return v as CacheVariant;
  };
  const base = { startStep, endStep, cacheType };

  if (a.cacheType === 'MagCache') {
    const threshold = finiteIn('cacheArgs.magcacheThresh', a.magcacheThresh, 0.02, 0, 0.3);
    const maxSkips = integerIn('cacheArgs.magcacheK', a.magcacheK, 4, 0, 6);
    // MagCache's own use of its calibration: the conditional and unconditional ratios apart,
    // each resampled to this schedule's steps. (The wrapper reads the interleaved table as if
    // every run had 50 steps and both predictions the same ratio.)
    const table = MAGCACHE_RATIOS[variantOf(a.ratios, 'ratios')];
    const cond = nearestInterpolation(table.filter((_, i) => i % 2 === 0), steps);
    const uncond = nearestInterpolation(table.filter((_, i) => i % 2 === 1), steps);
    return {
      ...base,
      call: (stream, step, position, unconditional) => ({
        method: 'magcache', stream, step, threshold, cacheDevice, maxSkips,
        magnitudeRatio: (unconditional ? uncond : cond)[position],
      }),
    };
  }
  if (a.cacheType === 'EasyCache') {
    const threshold = finiteIn('cacheArgs.easycacheThresh', a.easycacheThresh, 0.015, 0, 1);
    return { ...base, call: (stream, step) => ({ method: 'easycache', stream, step, threshold, cacheDevice }) };
  }
  const threshold = finiteIn('cacheArgs.relL1Thresh', a.relL1Thresh, 0.3, 0, 1);
  const mode = a.mode ?? 'e', useCoefficients = a.useCoefficients ?? true;
  if (mode !== 'e' && mode !== 'e0') throw invalidOption(`Expected e or e0 for cacheArgs.mode but received ${describeValue(a.mode)}`);
  if (typeof useCoefficients !== 'boolean')
    throw invalidOption(`Expected a boolean for cacheArgs.useCoefficients but received ${describeValue(a.useCoefficients)}`);
  const variant = variantOf(a.coefficients, 'coefficients');
  const coefficients = useCoefficients ? TEACACHE_COEFFICIENTS[variant][mode] : undefined;
  return {
    ...base,
    call: (stream, step) => ({ method: 'teacache', stream, step, threshold, mode, cacheDevice, ...(coefficients ? { coefficients } : {}) }),
  };
}
