// Lanczos resizing of 8-bit images as Pillow does it (Image.resize(..., LANCZOS), which
// ComfyUI's common_upscale(..., 'lanczos') calls and the wrapper's ImageToVideo Encode uses):
// Pillow's libImaging/Resample.c algorithm, followed step by step. Coefficients are computed in
// float64 over a support of 3 input pixels (stretched by the scale when shrinking), normalised,
// turned into 22-bit fixed point, and applied to one axis at a time, width first, with the
// intermediate image rounded to 8 bits as Pillow's is.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

function sinc(x: number): number {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos3(x: number): number {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

interface Coefficients {
  first: Int32Array;   // per output pixel: the first input pixel it reads
  count: Int32Array;   // and how many
  weights: Int32Array[];  // fixed-point weights, count of them
}

// precompute_coeffs + normalize_coeffs_8bpc for an axis of `inSize` pixels to `outSize`.
function coefficients(inSize: number, outSize: number): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const first = new Int32Array(outSize), count = new Int32Array(outSize);
  const weights: Int32Array[] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const centre = (xx + 0.5) * scale;
    const lo = Math.max(Math.trunc(centre - support + 0.5), 0);
    const hi = Math.min(Math.trunc(centre + support + 0.5), inSize);
    const raw: number[] = [];
    let total = 0;
    for (let x = 0; x < hi - lo; x++) {
      const w = lanczos3((x + lo - centre + 0.5) / filterScale);
      raw.push(w);
      total += w;
    }
    first[xx] = lo;
    count[xx] = hi - lo;
    weights.push(Int32Array.from(raw, (w) => {
      const k = total !== 0 ? w / total : w;
      return Math.trunc(k < 0 ? -0.5 + k * ONE : 0.5 + k * ONE);
    }));
  }
  return { first, count, weights };
}

// clip8: the rounded sum (it starts at half a unit) to 0..255.
function clip8(sum: number): number {
  return Math.min(255, Math.max(0, Math.floor(sum / ONE)));
}

/** Resizes planar 8-bit channels [channels, height, width] to [channels, outHeight, outWidth]
 * as Pillow's LANCZOS resize does, byte for byte. */
export function resizeLanczos(pixels: Uint8Array, channels: number, height: number, width: number,
                              outHeight: number, outWidth: number): Uint8Array {
  let image = pixels, h = height;
  if (outWidth !== width) {
    const c = coefficients(width, outWidth);
    const out = new Uint8Array(channels * h * outWidth);
    for (let ch = 0; ch < channels; ch++)
      for (let y = 0; y < h; y++) {
        const row = (ch * h + y) * width;
        for (let xx = 0; xx < outWidth; xx++) {
          let sum = ONE / 2;
          const w = c.weights[xx], lo = c.first[xx];
          for (let x = 0; x < c.count[xx]; x++) sum += image[row + lo + x] * w[x];
          out[(ch * h + y) * outWidth + xx] = clip8(sum);
        }
      }
    image = out;
  }
  const w = outWidth;
  if (outHeight !== h) {
    const c = coefficients(h, outHeight);
    const out = new Uint8Array(channels * outHeight * w);
    for (let ch = 0; ch < channels; ch++)
      for (let yy = 0; yy < outHeight; yy++) {
        const k = c.weights[yy], lo = c.first[yy];
        for (let x = 0; x < w; x++) {
          let sum = ONE / 2;
          for (let y = 0; y < c.count[yy]; y++) sum += image[(ch * h + lo + y) * w + x] * k[y];
          out[(ch * outHeight + yy) * w + x] = clip8(sum);
        }
      }
    image = out;
    h = outHeight;
  }
  return image === pixels ? Uint8Array.from(pixels) : image;
}
