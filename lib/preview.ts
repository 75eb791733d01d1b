// A cheap RGB look at a Wan2.1 latent while sampling: a fixed linear map from the 16 latent
// channels to RGB, with no VAE. The coefficients are ComfyUI's fitted preview factors for the
// Wan2.1 latent space (comfy/latent_formats.py, class Wan21: latent_rgb_factors and bias).

const RGB_FACTORS: readonly (readonly [number, number, number])[] = [
  [-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747], [0.0372, 0.2344, 0.1420],
  [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665], [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975],
  [-0.0412, 0.0267, -0.1364], [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
  [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950], [0.1984, 0.0913, 0.1861],
];
const RGB_BIAS = [-0.1835, -0.0868, -0.3360] as const;

export interface Preview {
  /** One latent frame: 1/8 of the video's width and height. */
  width: number;
  height: number;
  /** Which latent frame (the middle one). */
  frame: number;
  /** RGB bytes, row-major, width * height * 3. */
  rgb: Uint8Array;
}

/** latent: [16, T, H, W] f32 (the predicted clean latent); the middle frame as RGB bytes. */
export function latentPreview(latent: Float32Array, shape: readonly number[]): Preview {
  const [channels, frames, height, width] = shape;
  const frame = Math.floor(frames / 2);
  const plane = height * width;
  const rgb = new Uint8Array(plane * 3);
  for (let p = 0; p < plane; ++p) {
    for (let k = 0; k < 3; ++k) {
      let v = RGB_BIAS[k];
      for (let c = 0; c < Math.min(channels, 16); ++c) v += RGB_FACTORS[c][k] * latent[(c * frames + frame) * plane + p];
      rgb[p * 3 + k] = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
    }
  }
  return { width, height, frame, rgb };
}
