// Pillow's LANCZOS resize (lib/lanczos.ts), which the wrapper's ImageToVideo Encode uses through
// ComfyUI's common_upscale: against a float64 Lanczos of the same definition (no fixed point, no
// rounding between the passes) and against what any resize must keep. Pure TypeScript.
import t from 'tap';

import { resizeLanczos } from '../../lib/lanczos';

// The definition in float64: for each output pixel, the normalised lanczos3 weights of the input
// pixels within 3 (x the scale when shrinking) of its centre; width first, then height.
function reference(src: Float64Array, c: number, h: number, w: number, oh: number, ow: number): Float64Array {
  const lanczos = (x: number) => (x === 0 ? 1 : Math.abs(x) < 3 ? (3 * Math.sin(Math.PI * x) * Math.sin(Math.PI * x / 3)) / (Math.PI * Math.PI * x * x) : 0);
  const axis = (n: number, out: number) => Array.from({ length: out }, (_, i) => {
    const scale = n / out, fs = Math.max(scale, 1), centre = (i + 0.5) * scale;
    const lo = Math.max(Math.trunc(centre - 3 * fs + 0.5), 0), hi = Math.min(Math.trunc(centre + 3 * fs + 0.5), n);
    const ws = Array.from({ length: hi - lo }, (_, j) => lanczos((j + lo - centre + 0.5) / fs));
    const total = ws.reduce((a, b) => a + b, 0);
    return { lo, ws: ws.map((x) => x / total) };
  });
  const cols = axis(w, ow), rows = axis(h, oh);
  const wide = new Float64Array(c * h * ow);
  for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) cols.forEach(({ lo, ws }, x) => {
    wide[(ch * h + y) * ow + x] = ws.reduce((s, k, j) => s + k * src[(ch * h + y) * w + lo + j], 0);
  });
  const out = new Float64Array(c * oh * ow);
  for (let ch = 0; ch < c; ch++) rows.forEach(({ lo, ws }, y) => {
    for (let x = 0; x < ow; x++) out[(ch * oh + y) * ow + x] = ws.reduce((s, k, j) => s + k * wide[(ch * h + lo + j) * ow + x], 0);
  });
  return out;
}

function image(c: number, h: number, w: number): Uint8Array {
  return Uint8Array.from({ length: c * h * w }, (_, i) => Math.round(127.5 + 110 * Math.sin(i * 0.21) * Math.cos(i * 0.013)));
}

t.test('within the rounding of its two 8-bit passes of the float64 definition', async (t) => {
  // Reduced, enlarged, and each alone; sizes as an 832 x 480 target asks of other pictures.
  for (const [h, w, oh, ow] of [[60, 90, 32, 48], [20, 30, 48, 72], [40, 50, 40, 20], [33, 17, 64, 17], [101, 67, 48, 32]]) {
    const src = image(3, h, w);
    const got = resizeLanczos(src, 3, h, w, oh, ow);
    const want = reference(Float64Array.from(src), 3, h, w, oh, ow);
    let worst = 0, sum = 0;
    got.forEach((v, i) => {
      const d = Math.abs(v - Math.min(255, Math.max(0, want[i])));
      worst = Math.max(worst, d);
      sum += d;
    });
    t.ok(worst <= 2, `${h}x${w} -> ${oh}x${ow}: max ${worst.toFixed(2)} levels`);
    t.ok(sum / got.length <= 0.5, `${h}x${w} -> ${oh}x${ow}: mean ${(sum / got.length).toFixed(3)} levels`);
  }
});

t.test('what every resize keeps: a flat image stays flat, the same size is the same image', async (t) => {
  const flat = new Uint8Array(3 * 30 * 40).fill(173);
  t.ok(resizeLanczos(flat, 3, 30, 40, 17, 91).every((v) => v === 173), 'flat stays flat (the weights sum to one unit)');
  const src = image(3, 12, 14);
  t.same(resizeLanczos(src, 3, 12, 14, 12, 14), src, 'same size: unchanged');
  t.same(resizeLanczos(Uint8Array.of(0, 255), 1, 1, 2, 1, 2), Uint8Array.of(0, 255));
  // An enlarged edge rings a little, as Lanczos does, and the values stay in 0..255.
  const edge = Uint8Array.from({ length: 16 }, (_, i) => (i < 8 ? 0 : 255));
  const up = resizeLanczos(edge, 1, 1, 16, 1, 48);
  t.ok(up.slice(0, 16).every((v) => v === 0) && up.slice(-16).every((v) => v === 255), 'far from the edge: the two levels');
});
