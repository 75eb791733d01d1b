// Text to image: a one-frame video (numFrames 1) written as a PNG.
import wan = require('wan-native');  // JavaScript: const wan = require('wan-native');

async function main() {
  const encoder = await wan.TextEncoder.load('models/umt5_xxl_fp8_e4m3fn_scaled.safetensors');
  const textEmbeds = await encoder.encode({ positive: 'a lighthouse on a cliff, oil painting' });
  encoder.dispose();

  const model = await wan.WanModel.load('models/wan2.1_t2v_1.3B_bf16.safetensors');
  const latent = await new wan.Sampler(model).sample({
    imageEmbeds: wan.emptyEmbeds({ width: 832, height: 480, numFrames: 1 }),  // latent [16, 1, 60, 104]
    textEmbeds, steps: 30, cfg: 6, seed: 1,
  });
  model.dispose();

  const vae = await wan.Vae.load('models/wan_2.1_vae.safetensors');
  const image = await vae.decode(latent);  // [3, 1, 480, 832]
  vae.dispose();
  const { files } = await wan.videoCombine(image, { format: 'image/png', filenamePrefix: 'lighthouse' });
  console.log(files);  // [ '<cwd>/output/lighthouse_00001.png' ]
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
