// Frames resized as ComfyUI's common_upscale resizes IMAGEs, which the nodes our users chain
// (VideoHelperSuite's Load Video, KJNodes' Resize Image, the wrapper's encoders) call: an
// optional centre crop to the new aspect, then Pillow's LANCZOS on the 8-bit image or torch's
// bicubic interpolation.
import { invalidOption } from './errors';
import { resizeLanczos } from './lanczos';
import { native } from './native';
import { roundHalfEven } from './numeric';
import { Tensor } from './tensor';

export type ResizeMethod = 'lanczos' | 'bicubic';
/** 'disabled': the whole image; 'center': common_upscale's centre crop to the new aspect; or a
 * box (x, y its top left corner). */
export type ResizeCrop = 'disabled' | 'center' | { x: number; y: number; width: number; height: number };

/** common_upscale's 'center' crop of a width x height image to the aspect of outWidth x
 * outHeight: the columns (x) or rows (y) cut off each side. */
export function centreCrop(width: number, height: number, outWidth: number, outHeight: number): { x: number; y: number } {
  const oldAspect = width / height, newAspect = outWidth / outHeight;
  if (oldAspect > newAspect) return { x: roundHalfEven((width - width * (newAspect / oldAspect)) / 2), y: 0 };
  if (oldAspect < newAspect) return { x: 0, y: roundHalfEven((height - height * (oldAspect / newAspect)) / 2) };
  return { x: 0, y: 0 };
}

const f32 = Math.fround;

/**
 * Frames [3, H, W] or [3, F, H, W] in [-1, 1] at outWidth x outHeight, as common_upscale(image,
 * outWidth, outHeight, method, crop) gives them (a box: that part of each frame, resized): 'lanczos' through 8-bit bytes (ComfyUI's
 * lanczos(): 255 * v clipped and truncated, Pillow's resize, / 255), 'bicubic' as torch's
 * interpolate (align_corners false, no antialiasing). A new Tensor; the same size is a copy.
 */
export function resizeImage(image: Tensor, outWidth: number, outHeight: number, method: ResizeMethod, crop: ResizeCrop): Tensor {
  if (!Number.isSafeInteger(outWidth) || !Number.isSafeInteger(outHeight) || outWidth < 1 || outHeight < 1)
    throw invalidOption(`Expected a size of at least 1 x 1 to resize to but received ${outWidth} x ${outHeight}`);
  const video = image.shape.length === 4;
  const [C, F, H, W] = video ? image.shape : [image.shape[0], 1, image.shape[1], image.shape[2]];
  let x = 0, y = 0, h = H, w = W;
  if (crop === 'center') {
    ({ x, y } = centreCrop(W, H, outWidth, outHeight));
    [h, w] = [H - 2 * y, W - 2 * x];
  } else if (crop !== 'disabled') {
    if (crop.x < 0 || crop.y < 0 || crop.width < 1 || crop.height < 1 || crop.x + crop.width > W || crop.y + crop.height > H)
      throw invalidOption(`Expected a crop box inside the ${W} x ${H} image but received ${crop.width} x ${crop.height} at (${crop.x}, ${crop.y})`);
    ({ x, y } = crop);
    [h, w] = [crop.height, crop.width];
  }
  const data = image.toTypedArray() as Float32Array;
  const out = new Float32Array(C * F * outHeight * outWidth);
  for (let f = 0; f < F; f++) {
    // Frame f, cropped, as planar [C, h, w].
    const frame = new Float32Array(C * h * w);
    for (let c = 0; c < C; c++)
      for (let r = 0; r < h; r++) {
        const from = ((c * F + f) * H + r + y) * W + x;
        frame.set(data.subarray(from, from + w), (c * h + r) * w);
      }
    let resized: Float32Array;
    if (h === outHeight && w === outWidth) {
      resized = frame;
    } else if (method === 'lanczos') {
      const bytes = Uint8Array.from(frame, (v) => Math.trunc(Math.min(255, Math.max(0, f32(255 * f32(f32(v + 1) / 2))))));
      resized = Float32Array.from(resizeLanczos(bytes, C, h, w, outHeight, outWidth), (b) => f32(f32(f32(b / 255) * 2) - 1));
    } else {
      const t = Tensor.fromTypedArray(frame, [C, h, w]);
      const r = new Tensor(native().resizeBicubic(Tensor.handle(t, 'image'), outHeight, outWidth));
      resized = r.toTypedArray() as Float32Array;
      r.dispose();
      t.dispose();
    }
    const plane = outHeight * outWidth;
    for (let c = 0; c < C; c++) out.set(resized.subarray(c * plane, (c + 1) * plane), (c * F + f) * plane);
  }
  return Tensor.fromTypedArray(out, video ? [C, F, outHeight, outWidth] : [C, outHeight, outWidth]);
}
