// The shipped demo model (models/demo) draws what its prompts say, for prompts it never saw:
// the held-out attribute combinations of models/demo/demo.json, which tools/train-demo left
// out of the DiT's training set. Each clip is generated with the demo's own settings through
// the library, then judged from its decoded frames alone: the pixels that differ from the
// frame's background are the object; most of them must be nearest the named colour among the
// demo's colours, and their centroid must move the named way.
import t from 'tap';
import * as path from 'node:path';

import { emptyEmbeds, Sampler, TextEncoder, Vae, WanModel } from '../../lib/index';
import {
  backgroundColour, DEMO_DIR, DEMO_FILES, demoPrompt, readDemoSpec, rgbDistance, trainingCombinations,
  type ClipAttributes, type Rgb,
} from '../../lib/demo';

const spec = readDemoSpec();
const settings = spec.generate as { width: number; height: number; numFrames: number; steps: number; cfg: number; shift: number; numHeads: number; textLen: number };

// A pixel is the object's when it is this far (RGB distance) from the frame's background; the
// demo's colours are all at least spec.data.minContrast (110) from the backgrounds they are drawn on.
const OBJECT_DISTANCE = 60;
// The centroid must travel at least this many pixels the named way, and twice as far along that
// axis as across it; the training clips move 32 to 42 pixels.
const MIN_TRAVEL = 8;

// The frame's background: its per-channel median (the object covers well under half the
// frame). Not the named background's colour: a background drawn a little off (a brighter dark
// green) would then count as object pixels and outvote the object's own colour.
function frameBackground(at: (c: number, i: number) => number, pixels: number): Rgb {
  const median = (c: number) => {
    const v = Float32Array.from({ length: pixels }, (_, i) => at(c, i)).sort();
    return v[pixels >> 1];
  };
  return [median(0), median(1), median(2)];
}

// backgroundError: the largest distance of a frame's background from the named background's
// colour, reported (not judged: the issue asks for the object's colour and motion).
interface Verdict { colour: string; dx: number; dy: number; area: number; backgroundError: number; pass: boolean; why: string }

// frames: [3, F, H, W] in [-1, 1].
function judge(frames: Float32Array, shape: number[], a: ClipAttributes): Verdict {
  const [, F, H, W] = shape;
  const at = (c: number, f: number, i: number) => (frames[(c * F + f) * H * W + i] + 1) * 127.5;
  const sum: Rgb = [0, 0, 0];
  let count = 0;
  // "The named colour dominates the object": each object pixel votes for its nearest demo colour.
  // (A mean colour is pulled toward the background by the blurred rim: yellow on dark green
  // averages nearer orange, white on black nearer purple.)
  const palette = spec.data.colours;
  const votes = new Map<string, number>();
  const centroids: { x: number; y: number }[] = [];
  let backgroundError = 0;
  for (let f = 0; f < F; f++) {
    let sx = 0, sy = 0, n = 0;
    const bg = frameBackground((c, i) => at(c, f, i), H * W);
    backgroundError = Math.max(backgroundError, rgbDistance(bg, backgroundColour(spec, a.background)));
    for (let i = 0; i < H * W; i++) {
      const p: Rgb = [at(0, f, i), at(1, f, i), at(2, f, i)];
      if (rgbDistance(p, bg) < OBJECT_DISTANCE) continue;
      sx += i % W; sy += Math.floor(i / W); n++;
      p.forEach((v, c) => { sum[c] += v; });
      count++;
      const nearest = palette.reduce((best, x) => (rgbDistance(p, x.rgb) < rgbDistance(p, best.rgb) ? x : best)).name;
      votes.set(nearest, (votes.get(nearest) ?? 0) + 1);
    }
    centroids.push({ x: sx / Math.max(n, 1), y: sy / Math.max(n, 1) });
  }
  const mean = sum.map((v) => v / Math.max(count, 1)) as Rgb;
  const colour = [...votes.entries()].reduce((best, e) => (e[1] > best[1] ? e : best), ['none', 0])[0];
  // Centroids of the first and last three frames.
  const avg = (list: typeof centroids) => ({ x: list.reduce((s, c) => s + c.x, 0) / list.length, y: list.reduce((s, c) => s + c.y, 0) / list.length });
  const start = avg(centroids.slice(0, 3)), end = avg(centroids.slice(-3));
  const dx = end.x - start.x, dy = end.y - start.y;
  const along = { left: -dx, right: dx, up: -dy, down: dy }[a.motion as 'left'] ?? 0;
  const across = a.motion === 'left' || a.motion === 'right' ? Math.abs(dy) : Math.abs(dx);
  const area = count / F;
  const why: string[] = [];
  if (area < 20) why.push(`no object (${area.toFixed(1)} pixels a frame)`);
  if (colour !== a.colour) why.push(`most of its pixels are nearest ${colour} (mean ${mean.map((v) => v.toFixed(0)).join(',')})`);
  if (!(along >= MIN_TRAVEL && along >= 2 * across)) why.push(`it moved (${dx.toFixed(1)}, ${dy.toFixed(1)})`);
  return { colour, dx, dy, area, backgroundError, pass: why.length === 0, why: why.join('; ') };
}

t.test('the demo model draws unseen prompts: colour and direction', async (t) => {
  const trained = new Set(trainingCombinations(spec).map((c) => demoPrompt(c.attributes)));
  const cases = spec.data.heldOut.slice(0, 8).map(([colour, shape, motion, background]) => ({ colour, shape, motion, background }));
  for (const c of cases) t.notOk(trained.has(demoPrompt(c)), `"${demoPrompt(c)}" is not a training prompt`);

  const encoder = await TextEncoder.load(path.join(DEMO_DIR, DEMO_FILES.t5), { textLen: settings.textLen });
  const model = await WanModel.load(path.join(DEMO_DIR, DEMO_FILES.dit), { numHeads: settings.numHeads, textLen: settings.textLen });
  const vae = await Vae.load(path.join(DEMO_DIR, DEMO_FILES.vae));
  t.teardown(() => { encoder.dispose(); model.dispose(); vae.dispose(); });

  let passed = 0;
  for (const [i, c] of cases.entries()) {
    const prompt = demoPrompt(c);
    const textEmbeds = await encoder.encode({ positive: prompt, negative: String(spec.generate.negativePrompt) });
    const latent = await new Sampler(model).sample({
      imageEmbeds: emptyEmbeds({ width: settings.width, height: settings.height, numFrames: settings.numFrames }),
      textEmbeds, steps: settings.steps, cfg: settings.cfg, shift: settings.shift, seed: 100 + i,
    });
    const video = await vae.decode(latent);
    const v = judge(video.toTypedArray() as Float32Array, video.shape, c);
    t.comment(`${v.pass ? 'pass' : 'FAIL'}: "${prompt}": colour ${v.colour}, moved (${v.dx.toFixed(1)}, ${v.dy.toFixed(1)}), ` +
      `${v.area.toFixed(0)} object pixels a frame, background within ${v.backgroundError.toFixed(0)} of ${c.background}${v.pass ? '' : ' - ' + v.why}`);
    if (v.pass) passed++;
  }
  t.comment(`${passed} of ${cases.length} unseen prompts drawn as asked`);
  t.ok(passed >= 7, `at least 7 of 8 unseen prompts drawn as asked (${passed} of ${cases.length})`);
});
