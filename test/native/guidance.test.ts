// The wrapper's experimental guidance (lib/guidance.ts) against numpy's arithmetic
// (scripts/make-guidance-references.py): CFG-Zero*'s scale, TCFG through a real SVD, RAAG,
// FreSca through numpy's FFT, Temporal Score Rescaling, and their combination in order.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import {
  combineGuidance, fourierFilter, optimizedScale, raagScale, resolveExperimentalArgs, tangentialProjection, temporalScoreRescaling,
} from '../../lib/guidance';
import { fixturesDir } from '../helpers';

interface References {
  shape: number[]; cond: number[]; uncond: number[]; latent: number[];
  optimizedScale: number; tangential: number[];
  raag: { cfg: number; alpha: number; scale: number }[];
  fresca: { low: number; high: number; cutoff: number; out: number[] }[];
  tsr: { t: number; k: number; sigma: number; out: number[] }[];
  combine: ({ cfg: number; uncond?: boolean; cfgZeroStar?: boolean; tcfg?: boolean; raag?: number; fresca?: boolean;
              low?: number; high?: number; cutoff?: number; out: number[] })[];
}
const ref = JSON.parse(fs.readFileSync(path.join(fixturesDir, 'guidance', 'references.json'), 'utf8')) as References;
const cond = Float32Array.from(ref.cond), uncond = Float32Array.from(ref.uncond), latent = Float32Array.from(ref.latent);
const channels = ref.shape[0];

// Float32 predictions against numpy's float64 arithmetic on the same values.
const TOLERANCE = 1e-5;
function maxError(got: ArrayLike<number>, want: number[]): number {
  let err = 0;
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
  return got.length === want.length ? err : Infinity;
}

t.test('CFG-Zero*, TCFG and RAAG', async (t) => {
  t.ok(Math.abs(optimizedScale(cond, uncond) - ref.optimizedScale) < 1e-9, `optimized scale ${optimizedScale(cond, uncond)} (numpy ${ref.optimizedScale})`);
  const err = maxError(tangentialProjection(cond, uncond, channels), ref.tangential);
  t.ok(err <= TOLERANCE, `TCFG per channel against numpy's SVD: max abs ${err.toExponential(2)}`);
  const zero = new Float32Array(cond.length);
  t.same([...tangentialProjection(zero, zero, channels)].every((v) => v === 0), true, 'TCFG of zeros: zeros');
  for (const r of ref.raag)
    t.ok(Math.abs(raagScale(cond, uncond, channels, r.cfg, r.alpha) - r.scale) < 1e-9, `RAAG alpha ${r.alpha}: cfg ${r.scale.toFixed(6)}`);
});

t.test('FreSca: the spectrum scaled by frequency', async (t) => {
  for (const f of ref.fresca) {
    const err = maxError(fourierFilter(cond, ref.shape, f), f.out);
    t.ok(err <= TOLERANCE, `low ${f.low}, high ${f.high}, cutoff ${f.cutoff}${f.cutoff > 3 ? ' (the whole 6 x 10 spectrum inside the box)' : ''}: max abs ${err.toExponential(2)}`);
  }
  const same = fourierFilter(cond, ref.shape, { low: 1, high: 1, cutoff: 3 });
  t.ok(maxError(same, ref.cond) <= 1e-6, 'scales of 1: the input back');
});

t.test('Temporal Score Rescaling', async (t) => {
  for (const r of ref.tsr) {
    const err = maxError(temporalScoreRescaling(cond, latent, r.t, r.k, r.sigma), r.out);
    t.ok(err <= TOLERANCE, `t ${r.t}, k ${r.k}, sigma ${r.sigma}: max abs ${err.toExponential(2)}`);
  }
});

t.test('combined in the wrapper\'s order', async (t) => {
  for (const c of ref.combine) {
    const guidance = resolveExperimentalArgs({
      cfgZeroStar: c.cfgZeroStar, useTcfg: c.tcfg, raagAlpha: c.raag, useFresca: c.fresca,
      frescaScaleLow: c.low, frescaScaleHigh: c.high, frescaFreqCutoff: c.cutoff,
    });
    const got = combineGuidance(cond, c.uncond === false ? undefined : uncond, c.cfg, ref.shape, guidance);
    const err = maxError(got, c.out);
    const what = Object.entries(c).filter(([k]) => k !== 'out').map(([k, v]) => `${k} ${v}`).join(', ');
    t.ok(err <= TOLERANCE * 10, `${what}: max abs ${err.toExponential(2)}`);
  }
});

t.test('options', async (t) => {
  t.equal(resolveExperimentalArgs(undefined), undefined);
  t.same(resolveExperimentalArgs({ cfgZeroStar: true, useZeroInit: true, zeroStarSteps: 2 })!.zeroInitSteps, 3, 'zero-init: steps 0..zeroStarSteps');
  t.same(resolveExperimentalArgs({ useZeroInit: true })!.zeroInitSteps, 0, 'zero-init without cfgZeroStar does nothing (as the wrapper)');
  t.same(resolveExperimentalArgs({ useFresca: true })!.fresca, { low: 1, high: 1.25, cutoff: 20 }, 'the wrapper\'s FreSca defaults');
  t.same(resolveExperimentalArgs({ temporalScoreRescaling: true })!.tsr, { k: 0.95, sigma: 1 }, 'the wrapper\'s TSR defaults');
  t.throws(() => resolveExperimentalArgs({ bidirectionalSampling: true }), { code: 'WAN_INVALID_OPTION', message: /bidirectionalSampling is not implemented yet/ });
  t.throws(() => resolveExperimentalArgs({ videoAttentionSplitSteps: '0,5' }), { code: 'WAN_INVALID_OPTION', message: /videoAttentionSplitSteps is not implemented yet in wan-native: expected '' but received "0,5"/ });
  t.throws(() => resolveExperimentalArgs({ raagAlpha: 11 }), { code: 'WAN_INVALID_OPTION', message: /Expected a number in 0\.\.10 for experimentalArgs\.raagAlpha but received 11/ });
  t.throws(() => resolveExperimentalArgs({ cfgZeroStar: 1 as never }), { code: 'WAN_INVALID_OPTION', message: /Expected a boolean for experimentalArgs\.cfgZeroStar/ });
  t.throws(() => resolveExperimentalArgs({ cfg_zero_star: true } as never), { code: 'WAN_INVALID_OPTION', message: /Expected experimentalArgs among .* but received 'cfg_zero_star'/ });
});
