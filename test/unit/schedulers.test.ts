// Flow-matching schedulers against the official Wan2.1 goldens (the unipc and dpm++ steps on
// officialSigmas, Wan2.1's own schedules), against the wrapper's schedules, and against
// properties that pin down the others. Pure TypeScript: no addon is loaded.
import * as fs from 'node:fs';
import * as path from 'node:path';
import t, { Test } from 'tap';

import { createScheduler, schedule, SCHEDULER_NAMES, SchedulerName } from '../../lib/schedulers';
import { WanError } from '../../lib/errors';
import { decodeRaw, fixturesDir, goldenDir, officialSigmas, readRawSafetensors } from '../helpers';

const f32 = Math.fround;

const golden = readRawSafetensors(path.join(goldenDir, 'golden_schedulers.safetensors'));
function tensor(key: string): { shape: number[]; data: number[] } {
  const e = golden.header[key];
  if (!e) throw new Error(`golden_schedulers: no tensor ${key}`);
  return { shape: e.shape, data: decodeRaw(e.dtype, golden.data.subarray(e.data_offsets[0], e.data_offsets[1])) };
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// numpy.linspace, written out again here so that the schedule checks do not trust the module's.
function linspace(a: number, b: number, n: number): number[] {
  if (n === 1) return [a];
  const out = Array.from({ length: n }, (_, i) => i * ((b - a) / (n - 1)) + a);
  out[n - 1] = b;
  return out;
}
const shifted = (s: number, shift: number) => (shift * s) / (1 + (shift - 1) * s);

// Seeded standard normals (Box-Muller on a 32-bit LCG): test data only.
function randn(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

function expectInvalid(t: Test, fn: () => unknown, message: RegExp | string): void {
  let err: unknown;
  try { fn(); } catch (e) { err = e; }
  t.ok(err instanceof WanError, `throws a WanError (${String(message)})`);
  t.equal((err as WanError).code, 'WAN_INVALID_OPTION');
  t.match((err as WanError).message, message);
}

const GOLDEN_NAMES: ['unipc' | 'dpm++', string][] = [['unipc', 'unipc'], ['dpm++', 'dpmpp']];

t.test('officialSigmas (test/helpers) are the official schedules; given as sigmas, their timesteps are within 1', async (t) => {
  for (const [name, key] of GOLDEN_NAMES) {
    for (const steps of [4, 20, 50]) {
      for (const shift of [1, 3, 5, 8]) {
        const g = `${key}.steps${steps}.shift${shift}`;
        const sigmas = officialSigmas(name, { steps, shift });
        // float32 values held in doubles: equal to the golden float32 bit for bit.
        t.same(sigmas, tensor(`${g}.sigmas`).data, `${g}.sigmas to float32 rounding`);
        t.equal(sigmas.length, steps + 1);
        t.equal(sigmas[steps], 0);
        // Custom sigmas make timesteps from their float32 values, as the wrapper's SIGMAS input
        // does; generate.py from float64 ones: 1 apart where the two roundings fall on either
        // side of a thousandth (0.95 * 1000 is 949.99... in float64, 950 in float32).
        const official = tensor(`${g}.timesteps`).data;
        const timesteps = schedule(name, { steps, shift, sigmas }).timesteps;
        const apart = timesteps.filter((x, i) => x !== official[i]).length;
        t.ok(timesteps.every((x, i) => Math.abs(x - official[i]) <= 1), `${g}.timesteps: equal, or 1 apart at ${apart} of ${steps}`);
      }
    }
  }
});

t.test('unipc, dpm++ and dpm++_sde share the wrapper\'s schedule', async (t) => {
  // Timesteps of the wrapper's get_scheduler, from a numpy port of it (torch's float32 steps
  // emulated): the constructor's shift moves the top of the training table to shift(0.999).
  const wrapper: [number, number, number[]][] = [
    [4, 1, [999, 749, 499, 249]],
    [10, 8, [999, 986, 969, 949, 923, 888, 842, 774, 666, 470]],
  ];
  for (const [steps, shift, timesteps] of wrapper)
    for (const name of ['unipc', 'dpm++', 'dpm++_sde'] as const)
      t.same(schedule(name, { steps, shift }).timesteps, timesteps, `${name} ${steps}/${shift}`);
  const s = schedule('unipc', { steps: 30, shift: 5 });
  t.same(s.timesteps.slice(0, 6), [999, 993, 985, 978, 970, 961], 'unipc 30/5: the first timesteps');
  t.same(s.sigmas.slice(0, 3), [0.9999599456787109, 0.9931098222732544, 0.9858737587928772], 'and sigmas');
  // Wan2.1's generate.py starts lower (shift 1 in the constructor): 992 rather than 993 at step 1.
  t.equal(Math.trunc(officialSigmas('unipc', { steps: 30, shift: 5 })[1] * 1000), 992, 'the official schedule is another');
});

t.test('the /beta schedules equal numpy with scipy.stats.beta.ppf, as the wrapper computes them', async (t) => {
  // test/fixtures/schedulers/beta_references.json, from scripts/make-beta-schedule-references.py:
  // unipc, dpm++ and dpm++_sde share one schedule, euler and lcm another.
  const refs: { scipy: string; cases: { family: 'unipc' | 'euler'; steps: number; shift: number; timesteps: number[]; sigmas: number[] }[] } =
    JSON.parse(fs.readFileSync(path.join(fixturesDir, 'schedulers', 'beta_references.json'), 'utf8'));
  let checked = 0;
  for (const c of refs.cases) {
    const names: SchedulerName[] = c.family === 'unipc' ? ['unipc/beta', 'dpm++/beta', 'dpm++_sde/beta'] : ['euler/beta', 'lcm/beta'];
    for (const name of names) {
      const s = schedule(name, { steps: c.steps, shift: c.shift });
      const label = `${name} ${c.steps}/${c.shift}`;
      if (JSON.stringify(s.sigmas) !== JSON.stringify(c.sigmas.map(f32))) t.same(s.sigmas, c.sigmas.map(f32), `${label}: sigmas`);
      if (JSON.stringify(s.timesteps) !== JSON.stringify(c.timesteps.map(f32))) t.same(s.timesteps, c.timesteps.map(f32), `${label}: timesteps`);
      checked++;
    }
  }
  t.equal(checked, 35 * 5, `${checked} schedules, sigmas and timesteps bit for bit (scipy ${refs.scipy})`);
  // The ends stay; between them the Beta(0.6, 0.6) quantiles crowd both ends.
  const plain = schedule('unipc', { steps: 10, shift: 5 }), beta = schedule('unipc/beta', { steps: 10, shift: 5 });
  t.same([beta.sigmas[0], beta.sigmas[9]], [plain.sigmas[0], plain.sigmas[9]], 'the first and last sigma are the schedule\'s');
  t.ok(beta.sigmas[5] < plain.sigmas[5], 'and the middle lies lower');
});

t.test('the schedules follow sigma\' = shift*sigma/(1+(shift-1)*sigma), computed by hand', async (t) => {
  for (const steps of [4, 20, 50]) {
    for (const shift of [1, 3, 5, 8]) {
      // officialSigmas dpm++: get_sampling_sigmas = shifted linspace(1, 0, steps+1)[:steps], stored in float64 too
      const hand = linspace(1, 0, steps + 1).slice(0, steps).map((s) => shifted(s, shift));
      t.same(hand, tensor(`dpmpp.steps${steps}.shift${shift}.sampling_sigmas_f64`).data, `dpm++ ${steps}/${shift} float64`);
      t.same(officialSigmas('dpm++', { steps, shift }), [...hand.map(f32), 0]);
      // officialSigmas unipc: from float32(0.999), the largest sigma of the 1000-step training table
      const u = linspace(f32(0.999), 0, steps + 1).slice(0, steps).map((s) => shifted(s, shift));
      t.same(officialSigmas('unipc', { steps, shift }), [...u.map(f32), 0], `official unipc ${steps}/${shift}`);
      // euler and lcm: spaced between the shifted ends of the training table (1 and 1/1000), shifted again
      const e = linspace(1, shifted(0.001, shift), steps).map((s) => shifted(s, shift));
      for (const name of ['euler', 'lcm'] as const) {
        const s = schedule(name, { steps, shift });
        t.ok(maxAbs(s.sigmas, [...e, 0]) < 1e-6, `${name} ${steps}/${shift} sigmas`);
        t.ok(maxAbs(s.timesteps, e.map((x) => x * 1000)) < 1e-3, `${name} ${steps}/${shift} timesteps (float)`);
      }
      // unipc, dpm++ and dpm++_sde (the wrapper's set-up): from shifted(0.999), shifted again
      const d = linspace(shifted(0.999, shift), 0, steps + 1).slice(0, steps).map((s) => shifted(s, shift));
      for (const name of ['unipc', 'dpm++', 'dpm++_sde'] as const)
        t.ok(maxAbs(schedule(name, { steps, shift }).sigmas, [...d, 0]) < 1e-6, `${name} ${steps}/${shift}`);
    }
  }
  // flowmatch_distill: the shifted sigmas 0.999, 0.75, 0.5, 0.25 (the wrapper's 999/750/500/250)
  for (const shift of [1, 3, 5, 8]) {
    const s = schedule('flowmatch_distill', { steps: 4, shift });
    const hand = [0.999, 0.75, 0.5, 0.25].map((x) => shifted(x, shift));
    t.ok(maxAbs(s.sigmas, [...hand, 0]) < 1e-6, `flowmatch_distill shift ${shift}`);
    t.ok(maxAbs(s.timesteps, hand.map((x) => x * 1000)) < 1e-3);
  }
  t.same(schedule('flowmatch_distill', { steps: 4, shift: 1 }).timesteps.map(Math.round), [999, 750, 500, 250]);
});

t.test('unipc and dpm++ steps reproduce the official traces', async (t) => {
  const report: string[] = [];
  for (const [name, key] of GOLDEN_NAMES) {
    for (const [steps, shift] of [[10, 5], [4, 3], [20, 8]]) {
      const g = `trace.${key}.steps${steps}.shift${shift}`;
      const s = createScheduler(name, { steps, shift, sigmas: officialSigmas(name, { steps, shift }) });
      t.same(s.sigmas, tensor(`${g}.sigmas`).data, `${g}.sigmas`);
      const outs = tensor(`${g}.model_outputs`), after = tensor(`${g}.samples_after_step`);
      const size = outs.data.length / steps;
      let x: Float32Array = Float32Array.from(tensor(`${g}.initial_sample`).data);
      let worst = 0;
      for (let i = 0; i < steps; i++) {
        const v = Float32Array.from(outs.data.slice(i * size, (i + 1) * size));
        x = s.step(v, i, x);
        const err = maxAbs(x, after.data.slice(i * size, (i + 1) * size));
        worst = Math.max(worst, err);
        t.ok(err <= 1e-5, `${g} step ${i}: max abs error ${err.toExponential(2)} <= 1e-5`);
      }
      report.push(`${name} steps ${steps} shift ${shift}: ${worst.toExponential(2)}`);
    }
  }
  t.comment(`max abs error against the official traces: ${report.join('; ')}`);
});

t.test('euler is x + (sigma_next - sigma) * v', async (t) => {
  const s = createScheduler('euler', { steps: 6, shift: 5 });
  let x: Float32Array = randn(257, 1);
  for (let i = 0; i < 6; i++) {
    const v = randn(257, 100 + i);
    const next = s.step(v, i, x);
    const dt = f32(s.sigmas[i + 1] - s.sigmas[i]);
    t.equal(maxAbs(next, x.map((xk, k) => xk + f32(dt * v[k]))), 0, `step ${i} exactly`);
    x = next;
  }
});

t.test('a straight-line flow is integrated exactly to x0 by every deterministic scheduler', async (t) => {
  const n = 4096;
  const x0 = randn(n, 7), noise = randn(n, 8);
  const v = noise.map((z, k) => z - x0[k]);  // the true velocity, constant along the line
  const cases: [SchedulerName, number, number][] = [
    ['unipc', 10, 5], ['unipc', 4, 3], ['unipc', 30, 8], ['unipc', 1, 5],
    ['dpm++', 10, 5], ['dpm++', 4, 1], ['dpm++', 30, 8], ['dpm++', 1, 3],
    ['euler', 10, 5], ['euler', 3, 1], ['flowmatch_distill', 4, 5], ['flowmatch_causvid', 9, 5],
    ['res_multistep', 10, 5], ['res_multistep', 30, 8], ['res_multistep', 1, 3],
  ];
  for (const [name, steps, shift] of cases) {
    const s = createScheduler(name, { steps, shift });
    const sigma0 = s.sigmas[0];
    let x: Float32Array = x0.map((a, k) => (1 - sigma0) * a + sigma0 * noise[k]);
    for (let i = 0; i < s.timesteps.length; i++) {
      x = s.step(v, i, x);
      const sig = s.sigmas[i + 1];
      t.ok(maxAbs(x, x0.map((a, k) => (1 - sig) * a + sig * noise[k])) < 2e-5, `${name} ${steps}/${shift}: on the line after step ${i}`);
    }
    t.ok(maxAbs(x, x0) < 2e-5, `${name} ${steps}/${shift} ends at x0`);
  }
  // lcm re-noises with the noise it is given: with the line's own noise it stays on the line too
  const s = createScheduler('lcm', { steps: 8, shift: 5 });
  let x: Float32Array = x0.map((a, k) => (1 - s.sigmas[0]) * a + s.sigmas[0] * noise[k]);
  for (let i = 0; i < 8; i++) x = s.step(v, i, x, () => noise);
  t.ok(maxAbs(x, x0) < 2e-5, 'lcm ends at x0');
});

t.test('the stochastic schedulers with zero noise reduce to their deterministic forms', async (t) => {
  const n = 333;
  const zero = () => new Float32Array(n);
  // lcm: x_next = (1 - sigma_next) * (x - sigma * v)
  const l = createScheduler('lcm', { steps: 5, shift: 3 });
  let x: Float32Array = randn(n, 3);
  for (let i = 0; i < 5; i++) {
    const v = randn(n, 30 + i);
    const next = l.step(v, i, x, zero);
    const [s, sn] = [l.sigmas[i], l.sigmas[i + 1]];
    t.ok(maxAbs(next, x.map((a, k) => (1 - sn) * (a - s * v[k]))) < 1e-6, `lcm step ${i}`);
    x = next;
  }
  // dpm++_sde, first order (step 0 and the last step):
  //   x_t = (sigma_t/sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) x0,  h = lambda_t - lambda_s
  // second order adds 0.5 alpha_t (1 - e^{-2h}) (x0 - x0_prev) h / h_0.
  const lam = (s: number) => Math.log(1 - s) - Math.log(s);
  const d = createScheduler('dpm++_sde', { steps: 4, shift: 5 });
  x = randn(n, 4);
  let prevX0: Float32Array | null = null;
  for (let i = 0; i < 4; i++) {
    const v = randn(n, 40 + i);
    const [s, sn] = [d.sigmas[i], d.sigmas[i + 1]];
    const x0 = x.map((a, k) => a - s * v[k]);
    const h = lam(sn) - lam(s);
    const c = (sn / s) * Math.exp(-h), cD = (1 - sn) * (1 - Math.exp(-2 * h));
    let expected = x.map((a, k) => c * a + cD * x0[k]);
    if (i > 0 && i < 3) {
      const r = h / (lam(s) - lam(d.sigmas[i - 1]));
      expected = expected.map((e, k) => e + 0.5 * cD * r * (x0[k] - prevX0![k]));
    }
    const next = d.step(v, i, x, zero);
    t.ok(maxAbs(next, expected) < 1e-5, `dpm++_sde step ${i}`);
    prevX0 = x0;
    x = next;
  }
  t.ok(maxAbs(x, prevX0!) < 1e-6, 'dpm++_sde ends at the last x0 prediction');
  // the noise enters with weight sigma_t * sqrt(1 - e^{-2h})
  const a = createScheduler('dpm++_sde', { steps: 4, shift: 5 });
  const b = createScheduler('dpm++_sde', { steps: 4, shift: 5 });
  const v = randn(n, 50), x1 = randn(n, 51), z = randn(n, 52);
  const withNoise = a.step(v, 0, x1, () => z), without = b.step(v, 0, x1, zero);
  const h = lam(a.sigmas[1]) - lam(a.sigmas[0]);
  const w = a.sigmas[1] * Math.sqrt(1 - Math.exp(-2 * h));
  t.ok(maxAbs(withNoise, without.map((q, k) => q + w * z[k])) < 1e-5, 'dpm++_sde noise weight');
});

t.test('noise is drawn once per step for dpm++_sde and lcm (and their /beta), never for the others', async (t) => {
  for (const name of SCHEDULER_NAMES) {
    const steps = name === 'flowmatch_distill' ? 4 : 5;
    const s = createScheduler(name, { steps, shift: 5 });
    let calls = 0;
    let x: Float32Array = randn(16, 9);
    for (let i = 0; i < steps; i++) x = s.step(randn(16, 90 + i), i, x, () => { calls++; return randn(16, 900 + i); });
    t.equal(calls, /^(dpm\+\+_sde|lcm)(\/beta)?$/.test(name) ? steps : 0, name);
    t.ok(x.every(Number.isFinite), `${name} stays finite`);
  }
});

t.test('custom sigmas replace the schedule, unshifted', async (t) => {
  const sigmas = [1, 0.9375, 0.75, 0.4, 0.1, 0];
  for (const name of ['unipc', 'dpm++', 'dpm++_sde', 'euler', 'lcm'] as const) {
    const s = schedule(name, { steps: 30, shift: 5, sigmas });
    t.same(s.sigmas, sigmas.map(f32), name);
    t.same(s.timesteps, [1000, 937, 750, 400, 100], `${name} timesteps = int(float32(sigma) * 1000)`);
  }
  // float32 rounding before the truncation, as the wrapper's float32 SIGMAS tensor does
  t.same(schedule('euler', { steps: 1, shift: 1, sigmas: [0.3, 0] }).timesteps, [300]);
  t.same(schedule('euler', { steps: 1, shift: 1, sigmas: [0.1234567, 0] }).timesteps, [123]);
  // deterministic schedulers still land on x0 for a straight line, from sigma 1 (where the
  // official UniPC corrector turns NaN: its 2x2 solve meets rk = -inf; ours takes the limit)
  const x0 = randn(512, 11), noise = randn(512, 12);
  const v = noise.map((z, k) => z - x0[k]);
  for (const name of ['unipc', 'dpm++', 'euler'] as const) {
    const s = createScheduler(name, { steps: 5, shift: 1, sigmas });
    let x: Float32Array = noise.slice();
    for (let i = 0; i < 5; i++) x = s.step(v, i, x);
    t.ok(maxAbs(x, x0) < 2e-5, `${name} with custom sigmas ends at x0`);
  }
});

t.test('startStep, endStep and denoiseStrength cut the schedule as the wrapper does', async (t) => {
  const full = schedule('unipc', { steps: 10, shift: 5 });
  t.equal(full.startStep, 0);
  const mid = schedule('unipc', { steps: 10, shift: 5, startStep: 3, endStep: 7 });
  t.same(mid.timesteps, full.timesteps.slice(3, 7));
  t.same(mid.sigmas, full.sigmas.slice(3, 8));
  t.equal(mid.startStep, 3);
  t.same(mid.fullSigmas, full.sigmas);
  const tail = schedule('unipc', { steps: 10, shift: 5, startStep: 6 });
  t.same(tail.timesteps, full.timesteps.slice(6));
  t.same(tail.sigmas, full.sigmas.slice(6));
  const head = schedule('unipc', { steps: 10, shift: 5, endStep: 4 });
  t.same(head.timesteps, full.timesteps.slice(0, 4));
  t.same(head.sigmas, full.sigmas.slice(0, 5));
  // denoise 0.5 of 10 steps: start = 10 - int(10 * 0.5) - 1 = 4 (the wrapper runs 6 steps)
  const dn = schedule('euler', { steps: 10, shift: 5, denoiseStrength: 0.5 });
  t.equal(dn.startStep, 4);
  t.same(dn.timesteps, schedule('euler', { steps: 10, shift: 5 }).timesteps.slice(4));
  t.equal(schedule('euler', { steps: 10, shift: 5, denoiseStrength: 1 }).startStep, 0);
  // a stateless scheduler split in two gives the same result as one run
  const x = randn(100, 13);
  const vs = Array.from({ length: 10 }, (_, i) => randn(100, 130 + i));
  const one = createScheduler('euler', { steps: 10, shift: 5 });
  let a: Float32Array = x;
  for (let i = 0; i < 10; i++) a = one.step(vs[i], i, a);
  const p1 = createScheduler('euler', { steps: 10, shift: 5, endStep: 6 });
  const p2 = createScheduler('euler', { steps: 10, shift: 5, startStep: 6 });
  let b: Float32Array = x;
  for (let i = 0; i < 6; i++) b = p1.step(vs[i], i, b);
  for (let i = 0; i < 4; i++) b = p2.step(vs[6 + i], i, b);
  t.equal(maxAbs(a, b), 0, 'euler split at step 6');
  // a cut multistep scheduler starts its history afresh (first order first), as the wrapper's
  const cut = createScheduler('dpm++', { steps: 10, shift: 5, startStep: 4 });
  const xs = randn(100, 14), v0 = randn(100, 15);
  const [s0, s1] = [cut.sigmas[0], cut.sigmas[1]];
  const firstOrder = xs.map((q, k) => (s1 / s0) * q + (1 - s1) * (1 - (s1 * (1 - s0)) / ((1 - s1) * s0)) * (q - s0 * v0[k]));
  t.ok(maxAbs(cut.step(v0, 0, xs), firstOrder) < 1e-5, 'dpm++ cut: first step is first order');
  // ... which is what the full scheduler does when its first step() comes at index 4
  for (const name of ['unipc', 'dpm++', 'dpm++_sde'] as const) {
    const tail = createScheduler(name, { steps: 10, shift: 5, startStep: 4 });
    const full = createScheduler(name, { steps: 10, shift: 5 });
    let p: Float32Array = xs, q: Float32Array = xs;
    for (let i = 0; i < 6; i++) {
      const v = randn(100, 150 + i), z = randn(100, 160 + i);
      p = tail.step(v, i, p, () => z);
      q = full.step(v, 4 + i, q, () => z);
    }
    t.equal(maxAbs(p, q), 0, `${name}: cut at 4 = full begun at step 4`);
  }
});

t.test('options are validated with messages that name them', async (t) => {
  expectInvalid(t, () => schedule('ddim' as SchedulerName, { steps: 4, shift: 5 }),
    'Expected one of unipc, unipc/beta, dpm++, dpm++/beta, dpm++_sde, dpm++_sde/beta, euler, euler/beta, flowmatch_distill, flowmatch_causvid, lcm, lcm/beta, res_multistep for scheduler but received "ddim" of type string');
  expectInvalid(t, () => createScheduler(undefined as unknown as SchedulerName, { steps: 4, shift: 5 }), /for scheduler but received undefined/);
  expectInvalid(t, () => schedule('unipc', null as unknown as { steps: number; shift: number }), 'Expected an object for options but received null');
  expectInvalid(t, () => schedule('unipc', { steps: 0, shift: 5 }), 'Expected a positive integer for steps but received 0 of type number');
  expectInvalid(t, () => schedule('unipc', { steps: 2.5, shift: 5 }), 'Expected a positive integer for steps but received 2.5 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 0 }), 'Expected a number in (0, 1000] for shift but received 0 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: NaN }), /for shift but received NaN/);
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: '5' as unknown as number }), 'Expected a number in (0, 1000] for shift but received "5" of type string');
  expectInvalid(t, () => schedule('flowmatch_distill', { steps: 6, shift: 5 }), 'Expected 4 for steps with scheduler flowmatch_distill but received 6 of type number');
  expectInvalid(t, () => schedule('flowmatch_distill', { steps: 4, shift: 5, sigmas: [1, 0] }), /Expected no sigmas for scheduler flowmatch_distill/);
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, sigmas: [1] }), 'Expected an array of at least 2 numbers in [0, 1] for sigmas but received an array of length 1');
  expectInvalid(t, () => schedule('euler', { steps: 3, shift: 5, sigmas: [1, 0.5, 0.7, 0] }),
    'Expected values that never rise, the first above the last, for sigmas but received [1, 0.5, 0.7, 0] (0.7 after 0.5)');
  expectInvalid(t, () => schedule('euler', { steps: 2, shift: 5, sigmas: [0, 0, 0] }),
    'Expected values that never rise, the first above the last, for sigmas but received [0, 0, 0]');
  // The first half of a split (ComfyUI's SplitSigmas) ends above 0; a repeated value is a step of 0.
  t.same(schedule('euler', { steps: 2, shift: 5, sigmas: [1, 0.6, 0.6] }).sigmas.length, 3, 'ends above 0');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, sigmas: [1.5, 0] }), /for sigmas but received an array of length 2/);
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, startStep: 4 }), 'Expected startStep < 4 (the number of steps) but received 4 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, startStep: -1 }), 'Expected a non-negative integer for startStep but received -1 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, endStep: 5 }), 'Expected endStep <= 4 (the number of steps) or -1 but received 5 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, endStep: 0 }), 'Expected a positive integer or -1 for endStep but received 0 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, startStep: 2, endStep: 2 }), 'Expected startStep (2) < endStep but received endStep 2 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, denoiseStrength: 0 }), 'Expected a number in (0, 1] for denoiseStrength but received 0 of type number');
  expectInvalid(t, () => schedule('euler', { steps: 4, shift: 5, denoiseStrength: 0.5, startStep: 1 }), /Expected startStep 0 with denoiseStrength < 1/);
  // steps
  const u = createScheduler('unipc', { steps: 4, shift: 5 });
  u.step(new Float32Array(4), 1, new Float32Array(4));
  t.equal(u.stepIndex, 2);
  expectInvalid(t, () => u.step(new Float32Array(4), 3, new Float32Array(4)),
    'Expected step index 2 for unipc step (a multistep scheduler steps in order) but received 3');
  expectInvalid(t, () => u.step(new Float32Array(4), 4, new Float32Array(4)), 'Expected a step index in 0..3 for unipc step but received 4 of type number');
  const sde = createScheduler('dpm++_sde', { steps: 4, shift: 5 });
  expectInvalid(t, () => sde.step(new Float32Array(4), 0, new Float32Array(4)),
    'Expected a noise function for the dpm++_sde scheduler (it is stochastic) but received undefined');
  let err: unknown;
  try { createScheduler('unipc', { steps: 4, shift: 5 }).step(new Float32Array(4), 0, new Float32Array(5)); } catch (e) { err = e; }
  t.equal((err as WanError).code, 'WAN_INVALID_TENSOR');
  t.match((err as WanError).message, 'Expected Float32Arrays of equal length for modelOutput and sample');
  t.same(SCHEDULER_NAMES, ['unipc', 'unipc/beta', 'dpm++', 'dpm++/beta', 'dpm++_sde', 'dpm++_sde/beta', 'euler', 'euler/beta',
    'flowmatch_distill', 'flowmatch_causvid', 'lcm', 'lcm/beta', 'res_multistep']);
});

// Reference runs of the real scheduler classes (scripts/make-scheduler-references.py) for the
// schedulers the Wan2.1 goldens do not cover. Skipped where the file has not been made.
const refFile = path.join(fixturesDir, 'schedulers', 'wrapper_references.json');
t.test('euler, lcm, dpm++_sde and flowmatch_distill match the real classes', { skip: !fs.existsSync(refFile) && 'no reference file' }, async (t) => {
  // Numbers are float32 values written as their shortest decimals: compare after Math.fround.
  interface RefCase { name: SchedulerName; steps: number; shift: number; sigmas: number[] | null; timesteps: number[]; schedule_sigmas: number[];
                      initial_sample: number[]; model_outputs: number[][]; noises: (number[] | null)[]; samples_after_step: number[][] }
  const ref: { cases: RefCase[] } = JSON.parse(fs.readFileSync(refFile, 'utf8'));
  const report: string[] = [];
  for (const c of ref.cases) {
    const label = `${c.name} steps ${c.steps} shift ${c.shift}${c.sigmas ? ' custom sigmas' : ''}`;
    const s = createScheduler(c.name, { steps: c.steps, shift: c.shift, sigmas: c.sigmas ?? undefined });
    t.same(s.timesteps, c.timesteps.map(f32), `${label}: timesteps exactly`);
    t.same(s.sigmas, c.schedule_sigmas.map(f32), `${label}: sigmas exactly`);
    let x: Float32Array = Float32Array.from(c.initial_sample);
    let worst = 0;
    for (let i = 0; i < c.model_outputs.length; i++) {
      const drawn = c.noises[i];
      const z = drawn ? Float32Array.from(drawn) : undefined;
      let calls = 0;
      x = s.step(Float32Array.from(c.model_outputs[i]), i, x, () => { calls++; return z ?? new Float32Array(x.length); });
      t.equal(calls, z ? 1 : 0, `${label} step ${i}: draws noise as the real class does`);
      worst = Math.max(worst, maxAbs(x, Float32Array.from(c.samples_after_step[i])));
    }
    t.ok(worst <= 1e-5, `${label}: max abs error ${worst.toExponential(2)}`);
    report.push(`${label}: ${worst.toExponential(2)}`);
  }
  t.comment(`max abs error against the real classes: ${report.join('; ')}`);
});

t.test('enhanceHf (the wrapper\'s enhance_hf): the high-noise steps kept, then a uniform tail from half the highest timestep', async (t) => {
  // The tails np.linspace(half, 0, n, dtype=float32, endpoint=False) gives (numpy 1.24).
  const cases: [SchedulerName, number, number, number[]][] = [
    ['unipc', 30, 5, [499.5, 416.25, 333.0, 249.75, 166.5, 83.25]],  // highest 999, 6 tail steps (20% of 30)
    ['euler', 20, 5, [500.0, 375.0, 250.0, 125.0]],                  // highest 1000, 4
    ['unipc', 8, 3, [499.5, 333.0, 166.5]],                         // at least 3
  ];
  for (const [name, steps, shift, tail] of cases) {
    const base = schedule(name, { steps, shift });
    const enhanced = schedule(name, { steps, shift, enhanceHf: true });
    const kept = base.timesteps.filter((x) => x > Math.max(...base.timesteps) / 2);
    t.same(enhanced.timesteps, [...kept, ...tail], `${name}, ${steps} steps: the ${kept.length} timesteps above half, then ${tail.length} more`);
    t.same(enhanced.sigmas, [...enhanced.timesteps.map((x) => f32(x / 1000)), 0], `${name}, ${steps} steps: sigmas = timesteps / 1000 (float32), then 0`);
  }
  const cut = schedule('unipc', { steps: 30, shift: 5, enhanceHf: true, startStep: 3, endStep: 10 });
  t.same(cut.timesteps, schedule('unipc', { steps: 30, shift: 5, enhanceHf: true }).timesteps.slice(3, 10), 'cut after enhancing');
  t.throws(() => schedule('unipc', { steps: 30, shift: 5, enhanceHf: 1 as never }), { code: 'WAN_INVALID_OPTION', message: /Expected a boolean for enhanceHf/ });
});

// The wrapper's res_multistep class run with torch (scripts/make-res-multistep-references.py).
// Its timesteps end with a 0 that ours leave out: that last step, at sigma 0, must leave the
// sample as it is.
const resFile = path.join(fixturesDir, 'schedulers', 'res_multistep_references.json');
t.test('res_multistep matches the wrapper\'s class', async (t) => {
  interface ResCase { steps: number; shift: number; sigmas: number[] | null; timesteps: number[]; schedule_sigmas: number[];
                      initial_sample: number[]; model_outputs: number[][]; samples_after_step: number[][] }
  const ref: { cases: ResCase[] } = JSON.parse(fs.readFileSync(resFile, 'utf8'));
  const report: string[] = [];
  for (const c of ref.cases) {
    const label = `res_multistep steps ${c.steps} shift ${c.shift}${c.sigmas ? ' custom sigmas' : ''}`;
    const s = createScheduler('res_multistep', { steps: c.steps, shift: c.shift, sigmas: c.sigmas ?? undefined });
    const steps = s.timesteps.length;
    const trailingZero = c.timesteps.length === steps + 1;
    t.same(s.timesteps, c.timesteps.slice(0, steps).map(f32), `${label}: timesteps exactly${trailingZero ? ' (the wrapper\'s final 0 left out)' : ''}`);
    t.same(s.sigmas, c.schedule_sigmas.map(f32), `${label}: sigmas exactly`);
    let x: Float32Array = Float32Array.from(c.initial_sample);
    let worst = 0;
    for (let i = 0; i < steps; i++) {
      x = s.step(Float32Array.from(c.model_outputs[i]), i, x);
      worst = Math.max(worst, maxAbs(x, Float32Array.from(c.samples_after_step[i])));
    }
    t.ok(worst <= 1e-5, `${label}: max abs error ${worst.toExponential(2)}`);
    if (trailingZero)
      t.equal(maxAbs(Float32Array.from(c.samples_after_step[steps]), Float32Array.from(c.samples_after_step[steps - 1])), 0,
        `${label}: the wrapper's extra step at sigma 0 changes nothing`);
    report.push(`${label}: ${worst.toExponential(2)}`);
  }
  t.comment(`max abs error against the wrapper's class: ${report.join('; ')}`);
});

t.test('flowmatch_causvid: the wrapper\'s listed timesteps, unshifted, stepped with Euler', async (t) => {
  const wide = schedule('flowmatch_causvid', { steps: 9, shift: 5 });
  t.same(wide.timesteps, [999, 934, 862, 756, 603, 410, 250, 140, 74], 'a 14B model (dim 5120, the default): its nine timesteps');
  t.same(wide.sigmas, [...wide.timesteps.map((x) => f32(x / 1000)), 0], 'sigmas: timesteps / 1000 in float32, then 0');
  t.same(schedule('flowmatch_causvid', { steps: 4, shift: 8, transformerDim: 5120 }).timesteps, [999, 934, 862, 756], 'fewer steps: the first of them');
  const small = schedule('flowmatch_causvid', { steps: 4, shift: 5, transformerDim: 1536 });
  t.same(small.timesteps, [1000, 750, 500, 250], 'another model (dim 1536): 1000, 750, 500, 250');
  t.same(small.sigmas, [1, 0.75, 0.5, 0.25, 0]);
  const s = createScheduler('flowmatch_causvid', { steps: 4, shift: 5, transformerDim: 1536 });
  const x = randn(64, 3), v = randn(64, 4);
  const want = x.map((a, k) => f32(a + f32(f32(0.75 - 1) * v[k])));
  t.equal(maxAbs(s.step(v, 0, x), want), 0, 'a step: x + (sigma_next - sigma) v, in float32');
  expectInvalid(t, () => schedule('flowmatch_causvid', { steps: 10, shift: 5 }), /Expected 1\.\.9 for steps with scheduler flowmatch_causvid and a model of dim 5120 but received 10/);
  expectInvalid(t, () => schedule('flowmatch_causvid', { steps: 6, shift: 5, transformerDim: 1536 }), /Expected 4 for steps .* dim 1536 but received 6/);
  expectInvalid(t, () => schedule('flowmatch_causvid', { steps: 4, shift: 5, sigmas: [1, 0.5, 0] }), /no sigmas for scheduler flowmatch_causvid/);
});
