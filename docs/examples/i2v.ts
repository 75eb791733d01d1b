// Image to video: the first frame through CLIP and the VAE, then the I2V DiT.
import wan = require('wan-native');  // JavaScript: const wan = require('wan-native');

async function main() {
  const encoder = await wan.TextEncoder.load('models/umt5_xxl_fp8_e4m3fn_scaled.safetensors');
  const textEmbeds = await encoder.encode({ positive: 'the camera pans slowly to the right' });
  encoder.dispose();

  // CLIP sees the image; crop 'disabled' stretches it to 224x224 as the official pipeline does
  // (the wrapper's default, 'center', cuts the centre).
  const clip = await wan.ClipVisionEncoder.load('models/clip_vision_h.safetensors');
  const clipEmbeds = await clip.encode('first.png', { crop: 'disabled' });
  clip.dispose();

  // The image at frame 0, black frames after it, VAE-encoded under the frame mask.
  // FLF2V models: add endImage: 'last.png' here, and encode both images above with
  // clip.encode('first.png', { image2: 'last.png', combineEmbeds: 'batch' }).
  const vae = await wan.Vae.load('models/wan_2.1_vae.safetensors');
  const imageEmbeds = await wan.imageToVideoEncode({
    vae, startImage: 'first.png', clipEmbeds, width: 832, height: 480, numFrames: 81,
  });

  // The large linear weights converted to fp8 at load: 1 byte per weight instead of bf16's 2.
  const model = await wan.WanModel.load('models/wan2.1_i2v_480p_14B_bf16.safetensors', {
    quantization: 'fp8_e4m3fn', attentionMode: 'flash',
  });
  const latent = await new wan.Sampler(model).sample({
    imageEmbeds, textEmbeds, steps: 20, cfg: 5, seed: 7,
    fetaArgs: { weight: 2 },  // Enhance-A-Video
    onProgress: (p) => console.log(`step ${p.step}/${p.totalSteps}`),
  });
  model.dispose();

  const video = await vae.decode(latent);  // the whole video, [3, 81, 480, 832] in [-1, 1]
  vae.dispose();
  const { files } = await wan.videoCombine(video, { format: 'video/h264-mp4', frameRate: 16, filenamePrefix: 'pan' });
  console.log(files);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
