// Text to video: umT5 -> DiT sampler -> VAE -> MP4, each model freed before the next is loaded.
import wan = require('wan-native');  // JavaScript: const wan = require('wan-native');

async function main() {
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());  // Ctrl-C: the running call rejects with WAN_ABORTED
  const { signal } = controller;

  // The prompt and the negative prompt (by default the official Wan2.1 one) to embeddings.
  // ComfyUI's umt5_xxl_* files carry their tokenizer; for others pass { tokenizer: 'spiece.model' }.
  const encoder = await wan.TextEncoder.load('models/umt5_xxl_fp8_e4m3fn_scaled.safetensors', { signal });
  const textEmbeds = await encoder.encode({ positive: 'a cat walks on the beach at sunset' }, { signal });
  encoder.dispose();

  // 81 frames of 832x480: the latent [16, 21, 60, 104], with the wrapper's defaults spelled out.
  const model = await wan.WanModel.load('models/wan2.1_t2v_1.3B_bf16.safetensors', { attentionMode: 'flash', signal });
  const latent = await new wan.Sampler(model).sample({
    imageEmbeds: wan.emptyEmbeds({ width: 832, height: 480, numFrames: 81 }),
    textEmbeds,
    steps: 30, cfg: 6, shift: 5, seed: 42, scheduler: 'unipc',
    signal,
    onProgress: (p) => console.log(`step ${p.step}/${p.totalSteps}, about ${Math.round(p.etaMs / 1000)} s left`),
  });
  model.dispose();

  // Decoded chunk by chunk and encoded as the chunks come (MP4 needs ffmpeg on the PATH).
  const vae = await wan.Vae.load('models/wan_2.1_vae.safetensors', { signal });
  const result = await wan.videoCombine(vae.decodeFrames(latent, { signal }), {
    format: 'video/h264-mp4', frameRate: 16, filenamePrefix: 'cat', signal,
  });
  vae.dispose();
  console.log(result.files);  // [ '<cwd>/output/cat_00001.mp4' ]
}

main().catch((err) => {
  console.error(err instanceof wan.WanError ? `${err.code}: ${err.message}` : err);
  process.exitCode = 1;
});
