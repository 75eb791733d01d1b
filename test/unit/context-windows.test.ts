// Context windows (lib/context-windows.ts): pure TypeScript, no addon. The expected windows,
// weights, prompt indices and FreeNoise permutations were computed by running
// kijai/ComfyUI-WanVideoWrapper's context_windows/context.py (uniform_standard, uniform_looped,
// static_standard, create_window_mask) and its sampler's FreeNoise loop under Python 3.11 and
// PyTorch 1.13 (CPU); only the numbers are kept here.
import t from 'tap';

import {
  contextWindows, CONTEXT_FUSE_METHODS, CONTEXT_SCHEDULES, ContextFuse, ContextSchedule, freeNoiseShuffle, freeNoiseSources,
  latentFramesOf, orderedHalving, promptIndexForWindow, resolveContextOptions, ResolvedContextOptions, TorchCpuGenerator,
  WindowAccumulator, windowWeights,
} from '../../lib/context-windows';

// r(a, b, step): a, a + step, .., b.
function r(a: number, b: number, step = 1): number[] {
  const out: number[] = [];
  for (let v = a; v <= b; v += step) out.push(v);
  return out;
}

// pixel frames of a video of T latent frames
const pixels = (T: number) => 4 * (T - 1) + 1;

function latentOptions(schedule: ContextSchedule, fuse: ContextFuse, frames: number, overlap: number, stride = 1, freenoise = true): ResolvedContextOptions {
  return { schedule, fuse, frames, overlap, stride, freenoise, looped: schedule === 'uniform_looped' };
}

t.test('resolveContextOptions converts pixel frames to latent frames as the wrapper does', async (t) => {
  t.equal(resolveContextOptions(undefined, 30), null);
  t.same(resolveContextOptions({}, 30), {
    schedule: 'uniform_standard', fuse: 'linear', freenoise: true, frames: 21, stride: 1, overlap: 4, looped: false,
  });
  t.same(resolveContextOptions({ schedule: 'uniform_looped', frames: 49, stride: 8, overlap: 12, freenoise: false, fuse: 'pyramid' }, 50), {
    schedule: 'uniform_looped', fuse: 'pyramid', freenoise: false, frames: 13, stride: 2, overlap: 3, looped: true,
  });
  // (n - 1) // 4 + 1 and n // 4
  t.same([2, 4, 5, 8, 9, 80, 81, 84, 85].map(latentFramesOf), [1, 1, 2, 2, 3, 20, 21, 21, 22]);
  t.equal(resolveContextOptions({ stride: 7, overlap: 7 }, 30)!.stride, 1);
  t.equal(resolveContextOptions({ stride: 7, overlap: 7 }, 30)!.overlap, 1);
  // The wrapper samples without windows when context_frames exceeds the video's frames...
  t.equal(resolveContextOptions({ frames: 82 }, 21), null);
  t.equal(resolveContextOptions({ frames: 84 }, 21), null);
  // ...and with one window when they are equal.
  t.equal(resolveContextOptions({ frames: 81 }, 21)!.frames, 21);
});

t.test('resolveContextOptions names the option, the allowed values and what it received', async (t) => {
  const bad: [unknown, RegExp][] = [
    ['x', /^Expected an object for contextOptions but received "x" of type string$/],
    [{ schedule: 'looped' }, /^Expected one of uniform_standard, uniform_looped, static_standard for contextOptions\.schedule but received "looped" of type string$/],
    [{ fuse: 'gaussian' }, /^Expected one of linear, pyramid for contextOptions\.fuse but received "gaussian" of type string$/],
    [{ freenoise: 1 }, /^Expected a boolean for contextOptions\.freenoise but received 1 of type number$/],
    [{ frames: 1 }, /^Expected an integer between 2 and 1000 for contextOptions\.frames but received 1 of type number$/],
    [{ frames: 81.5 }, /^Expected an integer between 2 and 1000 for contextOptions\.frames but received 81\.5 of type number$/],
    [{ frames: '81' }, /^Expected an integer between 2 and 1000 for contextOptions\.frames but received "81" of type string$/],
    [{ stride: 3 }, /^Expected an integer between 4 and 100 for contextOptions\.stride but received 3 of type number$/],
    [{ overlap: 101 }, /^Expected an integer between 4 and 100 for contextOptions\.overlap but received 101 of type number$/],
    [{ frames: 13, overlap: 16 }, /^Expected contextOptions\.overlap \(16 pixel frames, 4 latent\) to be smaller than contextOptions\.frames \(13 pixel frames, 4 latent\)$/],
    // dilated windows that the wrapper makes invalid ("Invalid context window indices")
    [{ frames: 33, stride: 12, overlap: 8 }, /^contextOptions\.stride of 12 pixel frames \(3 latent\) dilates uniform_standard windows of 9 latent frames by 4, which a video of 25 latent frames cannot hold; use a contextOptions\.stride of at most 11 or the static_standard schedule$/],
  ];
  for (const [options, message] of bad) {
    t.throws(() => resolveContextOptions(options as never, 25), { name: 'WanError', code: 'WAN_INVALID_OPTION', message }, JSON.stringify(options));
  }
  t.throws(() => resolveContextOptions({}, 0), { code: 'WAN_INVALID_OPTION', message: /^Expected a positive integer for latentFrames but received 0 of type number$/ });
  t.throws(() => resolveContextOptions({ schedule: 'uniform_looped', frames: 9, stride: 8, overlap: 4 }, 4),
           { message: /dilates uniform_looped windows of 3 latent frames by 2, which a video of 4 latent frames cannot hold; use a contextOptions\.stride of at most 7/ });
  // The same dilation is fine with static_standard, which does not dilate.
  t.ok(resolveContextOptions({ schedule: 'static_standard', frames: 33, stride: 12, overlap: 8 }, 25));
  // uniform_looped keeps dilated windows that wrap without repeating a frame: [0, 4, 1] for T = 7.
  t.ok(resolveContextOptions({ schedule: 'uniform_looped', frames: 9, stride: 12, overlap: 4 }, 7));
});

t.test('orderedHalving is the wrapper\'s ordered_halving', async (t) => {
  t.same(r(0, 19).map(orderedHalving), [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875, 0.0625, 0.5625, 0.3125, 0.8125, 0.1875,
    0.6875, 0.4375, 0.9375, 0.03125, 0.53125, 0.28125, 0.78125]);
  t.equal(orderedHalving(12345), 0.60955810546875);
});

// [schedule, video pixel frames, context frames, stride, overlap, step, windows] from the wrapper
const WRAPPER_WINDOWS: [ContextSchedule, number, number, number, number, number, number[][]][] = [
  ['uniform_standard', 117, 81, 4, 16, 0, [r(0, 20), r(9, 29)]],
  ['uniform_standard', 117, 81, 4, 16, 1, [r(9, 29), r(0, 20), r(2, 22)]],
  ['uniform_standard', 117, 81, 4, 16, 2, [r(8, 28), r(9, 29), r(0, 20)]],
  ['uniform_standard', 117, 81, 4, 16, 3, [r(9, 29), r(0, 20)]],
  ['uniform_standard', 117, 81, 4, 16, 5, [r(9, 29), r(0, 20), r(6, 26)]],
  ['uniform_standard', 117, 81, 4, 16, 6, [r(9, 29), r(0, 20)]],
  ['uniform_standard', 197, 49, 8, 12, 0, [r(0, 12), r(10, 22), r(20, 32), r(30, 42), r(37, 49), r(0, 24, 2), r(23, 47, 2), r(25, 49, 2)]],
  ['uniform_standard', 197, 49, 8, 12, 1, [r(25, 37), r(35, 47), r(37, 49), r(0, 12), r(5, 17), r(15, 27), r(25, 49, 2), r(1, 13), r(22, 46, 2)]],
  ['uniform_standard', 197, 49, 8, 12, 2, [r(12, 24), r(22, 34), r(32, 44), r(37, 49), r(0, 12), r(2, 14), r(12, 36, 2), r(25, 49, 2), r(1, 13), r(8, 32, 2)]],
  ['uniform_standard', 197, 49, 8, 12, 3, [r(37, 49), r(0, 12), r(8, 20), r(18, 30), r(28, 40), r(25, 49, 2), r(1, 13), r(12, 36, 2)]],
  ['uniform_standard', 197, 49, 8, 12, 7, [r(37, 49), r(0, 12), r(4, 16), r(14, 26), r(24, 36), r(34, 46), r(25, 49, 2), r(1, 13), r(18, 42, 2)]],
  ['uniform_standard', 33, 17, 8, 4, 0, [r(0, 4), r(4, 8), r(0, 8, 2)]],
  ['uniform_standard', 33, 17, 8, 4, 1, [r(4, 8), r(0, 4), r(3, 7), r(0, 8, 2)]],
  ['uniform_standard', 33, 17, 8, 4, 2, [r(2, 6), r(4, 8), r(0, 4), r(1, 5), r(0, 8, 2)]],
  ['uniform_looped', 117, 81, 4, 16, 0, [r(0, 20), [...r(17, 29), ...r(0, 7)]]],
  ['uniform_looped', 117, 81, 4, 16, 1, [[...r(15, 29), ...r(0, 5)], r(2, 22)]],
  ['uniform_looped', 117, 81, 4, 16, 3, [[...r(22, 29), ...r(0, 12)], r(9, 29)]],
  ['uniform_looped', 157, 33, 8, 8, 0, [r(0, 8), r(7, 15), r(14, 22), r(21, 29), r(28, 36), [...r(35, 39), ...r(0, 3)], r(0, 16, 2), r(16, 32, 2),
    [...r(32, 38, 2), ...r(0, 8, 2)]]],
  ['uniform_looped', 157, 33, 8, 8, 1, [r(20, 28), r(27, 35), [...r(34, 39), ...r(0, 2)], r(1, 9), r(8, 16), r(15, 23), r(21, 37, 2), [37, 39, ...r(1, 13, 2)],
    r(13, 29, 2)]],
  ['uniform_looped', 157, 33, 8, 8, 2, [r(10, 18), r(17, 25), r(24, 32), r(31, 39), [38, 39, ...r(0, 6)], r(5, 13), r(10, 26, 2), [...r(26, 38, 2), 0, 2],
    r(2, 18, 2)]],
  ['uniform_looped', 157, 33, 8, 8, 6, [r(15, 23), r(22, 30), r(29, 37), [...r(36, 39), ...r(0, 4)], r(3, 11), r(10, 18), r(15, 31, 2), [...r(31, 39, 2), ...r(1, 7, 2)],
    r(7, 23, 2)]],
  ['uniform_looped', 25, 9, 12, 4, 0, [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 0, 1], [0, 2, 4], [5, 0, 2], [0, 4, 1]]],
  ['uniform_looped', 25, 9, 12, 4, 1, [[4, 5, 6], [6, 0, 1], [1, 2, 3], [3, 4, 5], [5, 0, 2], [3, 5, 0], [6, 3, 0]]],
  ['uniform_looped', 25, 9, 12, 4, 2, [[2, 3, 4], [4, 5, 6], [6, 0, 1], [1, 2, 3], [2, 4, 6], [0, 2, 4], [3, 0, 4]]],
  ['static_standard', 117, 81, 4, 16, 0, [r(0, 20), r(9, 29)]],
  ['static_standard', 117, 81, 4, 16, 4, [r(0, 20), r(9, 29)]],
  ['static_standard', 241, 81, 4, 16, 0, [r(0, 20), r(17, 37), r(34, 54), r(40, 60)]],
  ['static_standard', 101, 33, 4, 4, 0, [r(0, 8), r(8, 16), r(16, 24), r(17, 25)]],
];

t.test('contextWindows gives the wrapper\'s windows for each schedule', async (t) => {
  for (const [schedule, video, frames, stride, overlap, step, expected] of WRAPPER_WINDOWS) {
    const T = latentFramesOf(video);
    const o = resolveContextOptions({ schedule, frames, stride, overlap }, T)!;
    t.same(contextWindows(step, 30, T, o), expected, `${schedule} ${video} frames, context ${frames}/${stride}/${overlap}, step ${step}`);
  }
});

t.test('a video no longer than a window is one window, for every schedule and step', async (t) => {
  for (const schedule of CONTEXT_SCHEDULES) {
    for (const T of [1, 5, 21]) {
      const o = latentOptions(schedule, 'linear', 21, 4, 4);
      for (const step of [0, 1, 7]) t.same(contextWindows(step, 30, T, o), [r(0, T - 1)]);
    }
  }
});

t.test('contextWindows checks its arguments', async (t) => {
  const o = latentOptions('uniform_standard', 'linear', 21, 4);
  t.throws(() => contextWindows(-1, 30, 30, o), { code: 'WAN_INVALID_OPTION', message: /^Expected a non-negative integer for step but received -1 of type number$/ });
  t.throws(() => contextWindows(0, 0, 30, o), { message: /^Expected a positive integer for numSteps/ });
  t.throws(() => contextWindows(0, 30, 2.5, o), { message: /^Expected a positive integer for latentFrames but received 2\.5 of type number$/ });
  // options that resolveContextOptions would have refused
  t.throws(() => contextWindows(0, 30, 25, latentOptions('uniform_standard', 'linear', 9, 2, 3)),
           { code: 'WAN_INVALID_OPTION', message: /^contextOptions: the uniform_standard schedule made the invalid window \[17, 21, 25/ });
});

// Every schedule, over many sizes, overlaps, strides, video lengths and steps: valid windows of
// `frames` frames, every frame in a window, and every frame's summed weight positive (or, in the
// dilated uniform_standard cases where the wrapper gives a frame weight 0 only, the accumulator
// falls back to a plain mean: see below).
t.test('every frame is in a window at every step, with a positive summed weight at the default stride', async (t) => {
  let checked = 0;
  let zeroWeightFrames = 0;
  for (const schedule of CONTEXT_SCHEDULES) {
    for (const fuse of CONTEXT_FUSE_METHODS) {
      for (const frames of [2, 3, 5, 8, 13, 21]) {
        for (const overlap of new Set([1, 2, Math.floor(frames / 2), frames - 1])) {
          if (overlap < 1 || overlap >= frames) continue;
          for (const stride of [1, 2, 3]) {
            for (const T of [frames + 1, frames + 2, 2 * frames - 1, 2 * frames + 3, 3 * frames + 1, 5 * frames + 2]) {
              let o: ResolvedContextOptions | null;
              try {
                o = resolveContextOptions({ schedule, fuse, frames: 4 * (frames - 1) + 1, overlap: 4 * overlap, stride: 4 * stride }, T);
              } catch (err) {
                if (!/dilates/.test((err as Error).message)) throw err;
                continue;
              }
              t.ok(o, 'resolved');
              for (let step = 0; step < (schedule === 'static_standard' ? 2 : 12); step++) {
                const windows = contextWindows(step, 12, T, o!);
                const weight = new Float64Array(T);
                const count = new Int32Array(T);
                for (const w of windows) {
                  if (w.length !== frames || w.some((f) => !Number.isInteger(f) || f < 0 || f >= T) || new Set(w).size !== w.length)
                    t.fail(`bad window [${w}] (${schedule} ${frames}/${overlap}/${stride} T=${T} step ${step})`);
                  windowWeights(w, T, o!).forEach((x, k) => { weight[w[k]] += x; count[w[k]]++; });
                }
                for (let f = 0; f < T; f++) {
                  if (count[f] === 0) t.fail(`frame ${f} in no window (${schedule} ${frames}/${overlap}/${stride} T=${T} step ${step})`);
                  if (weight[f] === 0) {
                    zeroWeightFrames++;
                    if (stride === 1 || schedule !== 'uniform_standard' || fuse !== 'linear')
                      t.fail(`frame ${f} at weight 0 (${schedule} ${fuse} ${frames}/${overlap}/${stride} T=${T} step ${step})`);
                  }
                }
                checked++;
              }
            }
          }
        }
      }
    }
  }
  t.ok(checked > 5000, `${checked} schedules checked`);
  t.ok(zeroWeightFrames > 0, 'the dilated uniform_standard cases with a frame at weight 0 are exercised');
});

t.test('the frame the wrapper leaves out (dilated uniform_standard) gets a plain window', async (t) => {
  // frames 29 (8 latent), overlap 8 (2), stride 8 (2), T = 18, step 2: the wrapper's windows are
  // [4..11], [10..17], [3, 5, .., 17], [0, 2, .., 14], which miss frame 1.
  const o = resolveContextOptions({ frames: 29, overlap: 8, stride: 8 }, 18)!;
  t.same(contextWindows(2, 30, 18, o), [r(4, 11), r(10, 17), r(3, 17, 2), r(0, 14, 2), r(1, 8)]);
});

// [schedule, fuse, T, frames, overlap, window, weights] from create_window_mask
const WRAPPER_WEIGHTS: [ContextSchedule, ContextFuse, number, number, number, number[], number[]][] = [
  ['uniform_standard', 'linear', 30, 21, 4, r(0, 20), [...Array(18).fill(1), 0.6666666269302368, 0.3333333432674408, 0]],
  ['uniform_standard', 'linear', 30, 21, 4, r(9, 29), [0, 0.3333333432674408, 0.6666666269302368, ...Array(18).fill(1)]],
  ['uniform_standard', 'linear', 40, 21, 4, r(5, 25), [0, 0.3333333432674408, 0.6666666269302368, ...Array(15).fill(1), 0.6666666269302368, 0.3333333432674408, 0]],
  ['uniform_standard', 'pyramid', 40, 21, 4, r(0, 20), [0.09090909361839294, 0.3333333432674408, 0.6666666269302368, 1, 0.4545454680919647, 0.5454545617103577,
    0.6363636255264282, 0.7272727489471436, 0.8181818127632141, 0.9090909361839294, 1, 0.9090909361839294, 0.8181818127632141, 0.7272727489471436,
    0.6363636255264282, 0.5454545617103577, 0.4545454680919647, 0.3636363744735718, 0.27272728085517883, 0.1818181872367859, 0.09090909361839294]],
  ['uniform_standard', 'pyramid', 40, 21, 4, r(19, 39), [0.09090909361839294, 0.1818181872367859, 0.27272728085517883, 0.3636363744735718, 0.4545454680919647,
    0.5454545617103577, 0.6363636255264282, 0.7272727489471436, 0.8181818127632141, 0.9090909361839294, 1, 0.9090909361839294, 0.8181818127632141,
    0.7272727489471436, 0.6363636255264282, 0.5454545617103577, 0.4545454680919647, 1, 0.6666666269302368, 0.3333333432674408, 0.09090909361839294]],
  ['uniform_standard', 'pyramid', 40, 21, 4, r(5, 25), [0.09090909361839294, 0.1818181872367859, 0.27272728085517883, 0.3636363744735718, 0.4545454680919647,
    0.5454545617103577, 0.6363636255264282, 0.7272727489471436, 0.8181818127632141, 0.9090909361839294, 1, 0.9090909361839294, 0.8181818127632141,
    0.7272727489471436, 0.6363636255264282, 0.5454545617103577, 0.4545454680919647, 0.3636363744735718, 0.27272728085517883, 0.1818181872367859,
    0.09090909361839294]],
  ['uniform_standard', 'pyramid', 40, 12, 3, r(5, 16), [0.1666666716337204, 0.3333333432674408, 0.5, 0.6666666865348816, 0.8333333134651184, 1, 1,
    0.8333333134651184, 0.6666666865348816, 0.5, 0.3333333432674408, 0.1666666716337204]],
  ['uniform_standard', 'pyramid', 40, 12, 3, r(0, 11), [0.1666666716337204, 0.5, 1, 0.6666666865348816, 0.8333333134651184, 1, 1, 0.8333333134651184,
    0.6666666865348816, 0.5, 0.3333333432674408, 0.1666666716337204]],
  ['uniform_looped', 'linear', 30, 21, 4, [...r(25, 29), ...r(0, 15)], [0, 0.3333333432674408, 0.6666666269302368, ...Array(15).fill(1), 0.6666666269302368,
    0.3333333432674408, 0]],
  ['uniform_looped', 'linear', 30, 21, 4, r(3, 23), [0, 0.3333333432674408, 0.6666666269302368, ...Array(15).fill(1), 0.6666666269302368, 0.3333333432674408, 0]],
  ['uniform_looped', 'pyramid', 30, 21, 4, r(0, 20), [0.09090909361839294, 0.1818181872367859, 0.27272728085517883, 0.3636363744735718, 0.4545454680919647,
    0.5454545617103577, 0.6363636255264282, 0.7272727489471436, 0.8181818127632141, 0.9090909361839294, 1, 0.9090909361839294, 0.8181818127632141,
    0.7272727489471436, 0.6363636255264282, 0.5454545617103577, 0.4545454680919647, 0.3636363744735718, 0.27272728085517883, 0.1818181872367859,
    0.09090909361839294]],
  // torch.linspace(0, 1, 1) is [0] and linspace(1, 0, 1) is [1]: an overlap of one latent frame
  // only zeroes a window's first frame.
  ['static_standard', 'linear', 30, 21, 1, r(9, 29), [0, ...Array(20).fill(1)]],
  ['static_standard', 'linear', 30, 21, 1, r(0, 20), Array(21).fill(1)],
  ['static_standard', 'linear', 60, 21, 7, r(20, 40), [0, 0.1666666716337204, 0.3333333432674408, 0.5, 0.6666666269302368, 0.8333333134651184, ...Array(9).fill(1),
    0.8333333134651184, 0.6666666269302368, 0.5, 0.3333333432674408, 0.1666666716337204, 0]],
  // overlapping ramps: the right one, set last, wins
  ['static_standard', 'linear', 60, 21, 20, r(20, 40), [0, 1, 0.9473684430122375, 0.8947368264198303, 0.8421052694320679, 0.7894736528396606, 0.7368420958518982,
    0.6842105388641357, 0.6315789222717285, 0.5789473652839661, 0.5263158082962036, 0.4736841917037964, 0.42105263471603394, 0.3684210479259491,
    0.31578946113586426, 0.2631579041481018, 0.21052631735801697, 0.15789473056793213, 0.10526315867900848, 0.05263157933950424, 0]],
];

// The references come from PyTorch's CPU linspace, whose vectorised kernel rounds some middle
// elements of longer ramps one float32 ulp away from the per-element formula (which its CUDA
// kernel, where the wrapper builds its masks, uses): here element 10 of linspace(1, 0, 20).
t.test('windowWeights gives create_window_mask\'s weights, within one float32 ulp', async (t) => {
  let exact = 0;
  let total = 0;
  for (const [schedule, fuse, T, frames, overlap, window, expected] of WRAPPER_WEIGHTS) {
    const w = windowWeights(window, T, latentOptions(schedule, fuse, frames, overlap));
    t.ok(w instanceof Float32Array);
    t.equal(w.length, expected.length);
    const what = `${schedule} ${fuse} T=${T} ${frames}/${overlap} [${window[0]}..${window[window.length - 1]}]`;
    expected.forEach((e, k) => {
      total++;
      if (w[k] === e) exact++;
      else if (!(Math.abs(w[k] - e) <= 2 ** -24 * Math.abs(e) * 2)) t.fail(`${what}: weight ${k} is ${w[k]}, expected ${e}`);
    });
  }
  t.equal(total - exact, 1, `${exact} of ${total} weights equal to the bit`);
});

t.test('linear ramps of neighbouring windows sum to 1 across an exact overlap', async (t) => {
  for (const overlap of [2, 3, 4, 5, 7, 10]) {
    const o = latentOptions('static_standard', 'linear', 21, overlap);
    const T = 3 * (21 - overlap) + overlap;  // three windows that overlap by exactly `overlap`
    const windows = contextWindows(0, 1, T, o);
    t.equal(windows.length, 3);
    for (let i = 0; i + 1 < windows.length; i++) {
      const left = windowWeights(windows[i], T, o);
      const right = windowWeights(windows[i + 1], T, o);
      for (let k = 0; k < overlap; k++) {
        t.equal(windows[i][21 - overlap + k], windows[i + 1][k]);
        t.ok(Math.abs(left[21 - overlap + k] + right[k] - 1) <= 1e-7, `overlap ${overlap}, frame ${k}: ${left[21 - overlap + k]} + ${right[k]}`);
      }
    }
  }
});

t.test('the single window of a short video weighs 1 everywhere', async (t) => {
  for (const schedule of CONTEXT_SCHEDULES) {
    for (const fuse of CONTEXT_FUSE_METHODS) {
      t.same(Array.from(windowWeights(r(0, 20), 21, latentOptions(schedule, fuse, 21, 4))), Array(21).fill(1));
      t.same(Array.from(windowWeights(r(0, 9), 10, latentOptions(schedule, fuse, 21, 4))), Array(10).fill(1));
    }
  }
});

function randomArray(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32) * 4 - 2;
  }
  return out;
}

// pred [C, T, H, W] -> the window's frames [C, window.length, H, W]
function gather(full: Float32Array, shape: [number, number, number, number], window: number[]): Float32Array {
  const [C, T, H, W] = shape;
  const HW = H * W;
  const out = new Float32Array(C * window.length * HW);
  for (let c = 0; c < C; c++) window.forEach((f, k) => out.set(full.subarray((c * T + f) * HW, (c * T + f + 1) * HW), (c * window.length + k) * HW));
  return out;
}

t.test('with one window covering the whole video the fused prediction is the prediction, exactly', async (t) => {
  const shape: [number, number, number, number] = [3, 21, 4, 5];
  const pred = randomArray(3 * 21 * 4 * 5, 1);
  for (const schedule of CONTEXT_SCHEDULES) {
    for (const fuse of CONTEXT_FUSE_METHODS) {
      const o = resolveContextOptions({ schedule, fuse, frames: 81, overlap: 16 }, 21)!;  // 81 pixel frames, 21 latent
      const windows = contextWindows(3, 30, 21, o);
      t.same(windows, [r(0, 20)]);
      const acc = new WindowAccumulator(shape);
      for (const w of windows) acc.add(w, gather(pred, shape, w), windowWeights(w, 21, o));
      const fused = acc.result();
      t.ok(fused.every((v, i) => Object.is(v, pred[i])), `${schedule} ${fuse}`);
    }
  }
});

t.test('WindowAccumulator fuses as noise_pred += pred * mask; counter += mask; noise_pred /= counter', async (t) => {
  const shape: [number, number, number, number] = [2, 30, 2, 3];
  const HW = 6;
  const o = latentOptions('uniform_standard', 'linear', 21, 4);
  const windows = contextWindows(1, 30, 30, o);  // [9..29], [0..20], [2..22]
  const preds = windows.map((w, i) => randomArray(2 * w.length * HW, 10 + i));
  const acc = new WindowAccumulator(shape);
  windows.forEach((w, i) => acc.add(w, preds[i], windowWeights(w, 30, o)));
  const fused = acc.result();
  // the same in plain float32 steps, window by window
  const f = Math.fround;
  const sum = new Float32Array(2 * 30 * HW);
  const counter = new Float32Array(30);
  windows.forEach((w, i) => {
    const m = windowWeights(w, 30, o);
    w.forEach((frame, k) => {
      for (let c = 0; c < 2; c++) for (let p = 0; p < HW; p++) sum[(c * 30 + frame) * HW + p] = f(sum[(c * 30 + frame) * HW + p] + f(preds[i][(c * w.length + k) * HW + p] * m[k]));
      counter[frame] = f(counter[frame] + m[k]);
    });
  });
  const expected = sum.map((v, i) => f(v / counter[Math.floor(i / HW) % 30]));
  t.same(Array.from(fused), Array.from(expected));
  // frames 0 and 1 come from window [0..20] alone, at weight 1: unchanged
  for (let p = 0; p < HW; p++) t.equal(fused[p], preds[1][p]);
});

t.test('fusing windows that agree gives back what they agree on, for every schedule and fuse', async (t) => {
  const shape: [number, number, number, number] = [2, 40, 1, 3];
  const truth = randomArray(2 * 40 * 3, 7);
  for (const schedule of CONTEXT_SCHEDULES) {
    for (const fuse of CONTEXT_FUSE_METHODS) {
      for (const [frames, overlap, stride] of [[81, 16, 4], [49, 12, 8], [33, 8, 4]]) {
        const o = resolveContextOptions({ schedule, fuse, frames, overlap, stride }, 40)!;
        for (const step of [0, 1, 2, 5]) {
          const acc = new WindowAccumulator(shape);
          for (const w of contextWindows(step, 30, 40, o)) acc.add(w, gather(truth, shape, w), windowWeights(w, 40, o));
          const fused = acc.result();
          const err = fused.reduce((m, v, i) => Math.max(m, Math.abs(v - truth[i])), 0);
          t.ok(err <= 1e-6, `${schedule} ${fuse} ${frames}/${overlap}/${stride} step ${step}: max error ${err}`);
        }
      }
    }
  }
});

t.test('a frame the windows only weigh 0 takes the plain mean instead of 0 / 0', async (t) => {
  // frames 17 (5 latent), overlap 8 (2), stride 8 (2), T = 9, step 4: [1..5], [4..8], [0, 2, .., 8];
  // frame 1 is only in [1..5], at the linear ramp's weight 0.
  const o = resolveContextOptions({ frames: 17, overlap: 8, stride: 8 }, 9)!;
  const windows = contextWindows(4, 30, 9, o);
  t.same(windows, [r(1, 5), r(4, 8), r(0, 8, 2)]);
  t.equal(windowWeights(windows[0], 9, o)[0], 0);
  const acc = new WindowAccumulator([1, 9, 1, 1]);
  for (const w of windows) acc.add(w, Float32Array.from(w, (f) => 10 * f + 1), windowWeights(w, 9, o));
  const fused = acc.result();
  t.ok(fused.every(Number.isFinite));
  t.equal(fused[1], 11);
});

t.test('WindowAccumulator checks what it is given', async (t) => {
  const acc = new WindowAccumulator([2, 5, 1, 1]);
  t.throws(() => new WindowAccumulator([2, 5, 1] as never), { code: 'WAN_INVALID_OPTION', message: /^Expected \[C, T, H, W\] of positive integers for shape/ });
  t.throws(() => acc.add([0, 5], new Float32Array(4), new Float32Array(2)), { message: /^Expected latent frame indices in 0\.\.4 for window but received \[0, 5\]$/ });
  t.throws(() => acc.add([0, 1], new Float32Array(3), new Float32Array(2)),
           { message: /^Expected a Float32Array of 4 elements \(\[2, 2, 1, 1\]\) for pred but received a Float32Array of 3$/ });
  t.throws(() => acc.add([0, 1], new Float32Array(4), Float32Array.of(1, -1)), { message: /^Expected a Float32Array of 2 non-negative finite weights/ });
  acc.add([0, 1, 2], new Float32Array(6), Float32Array.of(1, 1, 1));
  t.throws(() => acc.result(), { code: 'WAN_INTERNAL', message: /latent frame 3 was in no window/ });
});

const WRAPPER_PROMPT_INDEX: [number, number, number[]][] = [
  [21, 2, [...Array(11).fill(0), ...Array(10).fill(1)]],
  [21, 3, [...Array(7).fill(0), ...Array(7).fill(1), ...Array(7).fill(2)]],
  [21, 7, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6]],
  [30, 7, [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6]],
  [31, 3, [...Array(11).fill(0), ...Array(10).fill(1), ...Array(10).fill(2)]],
  [31, 7, [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6]],
];

t.test('promptIndexForWindow maps "|"-separated prompts to windows by their last frame', async (t) => {
  for (const [T, prompts, expected] of WRAPPER_PROMPT_INDEX) {
    // a window ending on frame m takes min(int(m / (T / prompts)), prompts - 1)
    t.same(r(0, T - 1).map((m) => promptIndexForWindow([Math.max(0, m - 3), m], T, prompts)), expected, `T=${T}, ${prompts} prompts`);
  }
  t.equal(promptIndexForWindow(r(0, 20), 21, 1), 0);
  // 241 frames (61 latent), three prompts: the static windows end on 20, 37, 54, 60
  const o = resolveContextOptions({ schedule: 'static_standard' }, 61)!;
  t.same(contextWindows(0, 30, 61, o).map((w) => promptIndexForWindow(w, 61, 3)), [0, 1, 2, 2]);
  // a looped window that wraps contains the last frame, so it takes the last prompt
  t.equal(promptIndexForWindow([...r(25, 29), ...r(0, 15)], 30, 3), 2);
  t.throws(() => promptIndexForWindow([0], 30, 0), { code: 'WAN_INVALID_OPTION', message: /^Expected a positive integer for numPrompts but received 0 of type number$/ });
});

t.test('TorchCpuGenerator.randperm is torch.randperm on torch.Generator().manual_seed(seed)', async (t) => {
  const g0 = new TorchCpuGenerator(0);
  t.same(Array.from(g0.randperm(10)), [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]);
  t.same(Array.from(g0.randperm(5)), [3, 2, 4, 0, 1]);
  t.same(Array.from(new TorchCpuGenerator(123456789012345).randperm(17)), [4, 16, 7, 11, 5, 3, 14, 0, 9, 6, 8, 13, 2, 12, 10, 15, 1]);
  const g = new TorchCpuGenerator(18446744073709551615n);
  t.same(Array.from(g.randperm(1)), [0]);
  t.same(Array.from(g.randperm(2)), [1, 0]);
  t.same(Array.from(g.randperm(5)), [3, 1, 2, 0, 4]);
  t.same(Array.from(g.randperm(16)), [0, 8, 14, 1, 3, 5, 13, 11, 7, 15, 12, 9, 6, 2, 4, 10]);
  t.same(Array.from(g.randperm(100)).slice(0, 12), [11, 87, 20, 83, 13, 63, 43, 27, 44, 8, 65, 48]);
  t.throws(() => new TorchCpuGenerator(-1), { code: 'WAN_INVALID_OPTION', message: /^Expected an integer in 0\.\.2\^64-1 for seed but received -1 of type number$/ });
  t.throws(() => new TorchCpuGenerator(2n ** 64n), { code: 'WAN_INVALID_OPTION' });
});

// [T, context frames, overlap, seed, frame each latent frame's noise comes from], the wrapper's
// FreeNoise loop on a generator that drew nothing before
const WRAPPER_FREENOISE: [number, number, number, bigint, number[]][] = [
  [30, 81, 16, 0n, [...r(0, 20), 8, 0, 2, 3, 7, 1, 4, 5, 6]],
  [61, 81, 16, 42n, [...r(0, 20), 13, 4, 3, 15, 8, 16, 9, 11, 12, 10, 6, 2, 1, 7, 14, 0, 5, 13, 8, 6, 10, 1, 20, 2, 18, 17, 19, 11, 16, 9, 15, 12, 3, 4,
    14, 8, 5, 13, 7, 0]],
  [40, 33, 8, 123456789012345n, [...r(0, 8), 4, 6, 2, 3, 1, 5, 0, 2, 6, 1, 7, 8, 3, 4, 7, 5, 6, 0, 8, 2, 1, 4, 8, 7, 6, 5, 3, 0, 4, 2, 1]],
  [25, 81, 16, 7n, [...r(0, 20), 3, 2, 0, 1]],
  [22, 81, 16, 7n, [...r(0, 20), 0]],
  // frames 49 (13 latent), overlap 36 (9): runs of 4 that copy frames earlier runs placed
  [50, 49, 36, 3n, [...r(0, 12), 2, 3, 1, 0, 7, 6, 5, 4, 8, 11, 9, 10, 1, 3, 12, 2, 7, 5, 6, 0, 8, 4, 11, 9, 10, 12, 3, 1, 7, 2, 5, 6, 0, 11, 8, 4, 9]],
];

t.test('freeNoiseShuffle repeats and shuffles the noise as the wrapper\'s FreeNoise does', async (t) => {
  for (const [T, frames, overlap, seed, expected] of WRAPPER_FREENOISE) {
    const o = resolveContextOptions({ frames, overlap }, T)!;
    const shape: [number, number, number, number] = [2, T, 2, 3];
    const HW = 6;
    const noise = randomArray(2 * T * HW, Number(seed % 1000n));
    const original = noise.slice();
    freeNoiseShuffle(noise, shape, o, seed);
    for (let c = 0; c < 2; c++) {
      for (let f = 0; f < T; f++) {
        const got = noise.subarray((c * T + f) * HW, (c * T + f + 1) * HW);
        const want = original.subarray((c * T + expected[f]) * HW, (c * T + expected[f] + 1) * HW);
        if (!got.every((v, i) => v === want[i])) t.fail(`T=${T} seed ${seed}: channel ${c} frame ${f} should hold frame ${expected[f]}`);
      }
    }
    // the frame map itself, drawing from a generator passed as a function
    const g = new TorchCpuGenerator(seed);
    t.same(Array.from(freeNoiseSources(T, o, (n) => g.randperm(n))), expected, `T=${T} ${frames}/${overlap} seed ${seed}`);
  }
});

t.test('freeNoiseShuffle is deterministic, draws from a given randperm, and can be off', async (t) => {
  const o = resolveContextOptions({}, 61)!;
  const shape: [number, number, number, number] = [1, 61, 1, 2];
  const base = randomArray(122, 5);
  const a = base.slice();
  const b = base.slice();
  const c = base.slice();
  freeNoiseShuffle(a, shape, o, 42);
  freeNoiseShuffle(b, shape, o, 42n);
  freeNoiseShuffle(c, shape, o, 43);
  t.same(Array.from(a), Array.from(b));
  t.notSame(Array.from(a), Array.from(c));
  t.same(Array.from(a.subarray(0, 42)), Array.from(base.subarray(0, 42)), 'the first window keeps its noise');
  // the generator that drew the noise, continuing its stream (as the sampler passes it)
  const g = new TorchCpuGenerator(42);
  g.randperm(7);
  const calls: number[] = [];
  const d = base.slice();
  freeNoiseShuffle(d, shape, o, (n) => { calls.push(n); return g.randperm(n); });
  t.same(calls, [17, 17, 6]);
  t.notSame(Array.from(d), Array.from(a));
  // BigInt64Array, as a native randperm might return
  const e = base.slice();
  freeNoiseShuffle(e, shape, o, (n) => BigInt64Array.from(r(0, n - 1).reverse(), BigInt));
  t.same(Array.from(e.subarray(42, 44)), [base[2 * 16], base[2 * 16 + 1]], 'frame 21 takes frame 16, the first of the reversed run');
  const off = base.slice();
  freeNoiseShuffle(off, shape, { ...o, freenoise: false }, 42);
  t.same(Array.from(off), Array.from(base));
  const short = randomArray(21 * 2, 3);
  const shortCopy = short.slice();
  freeNoiseShuffle(short, [1, 21, 1, 2], resolveContextOptions({}, 21)!, 1);
  t.same(Array.from(short), Array.from(shortCopy), 'one window: nothing to repeat');
  t.throws(() => freeNoiseShuffle(base.slice(), shape, o, () => [0, 0, 1]),
           { code: 'WAN_INVALID_OPTION', message: /^Expected randperm\(17\) to return a permutation of 0\.\.16 but received an array of length 3$/ });
  t.throws(() => freeNoiseShuffle(new Float32Array(3), shape, o, 1), { message: /^Expected a Float32Array of 122 elements for noise but received a Float32Array$/ });
});
