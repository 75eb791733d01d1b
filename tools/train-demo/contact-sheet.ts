// The README's picture of what the demo model makes: one row per prompt (the test's unseen
// prompts first, then motions the test does not judge), every other frame, enlarged 2x.
//   node dist/tools/train-demo/contact-sheet.js docs/demo-contact-sheet.png
import * as path from 'node:path';
import sharp from 'sharp';

import { emptyEmbeds, Sampler, TextEncoder, Vae, WanModel } from '../../lib/index';
import { DEMO_DIR, DEMO_FILES, demoPrompt, readDemoSpec } from '../../lib/demo';

const SCALE = 2;
const LABEL = 22;  // pixels of caption above each row

async function main(): Promise<void> {
  const out = path.resolve(process.argv[2] ?? 'docs/demo-contact-sheet.png');
  const spec = readDemoSpec();
  const g = spec.generate as Record<string, number>;
  const prompts = [
    ...spec.data.heldOut.slice(0, 8).map(([colour, shape, motion, background]) => demoPrompt({ colour, shape, motion, background })),
    'a orange circle growing on a gray background',
    'a green triangle bouncing on a sunset gradient background',
  ];
  const encoder = await TextEncoder.load(path.join(DEMO_DIR, DEMO_FILES.t5), { textLen: g.textLen });
  const model = await WanModel.load(path.join(DEMO_DIR, DEMO_FILES.dit), { numHeads: g.numHeads, textLen: g.textLen });
  const vae = await Vae.load(path.join(DEMO_DIR, DEMO_FILES.vae));

  const size = g.width * SCALE;
  const shown = Array.from({ length: Math.ceil(g.numFrames / 2) }, (_, i) => 2 * i);
  const width = shown.length * size;
  const rowHeight = LABEL + size;
  const sheet = Buffer.alloc(width * rowHeight * prompts.length * 3, 255);
  const captions: string[] = [];
  for (const [r, prompt] of prompts.entries()) {
    const textEmbeds = await encoder.encode({ positive: prompt, negative: '' });
    const latent = await new Sampler(model).sample({
      imageEmbeds: emptyEmbeds({ width: g.width, height: g.height, numFrames: g.numFrames }),
      textEmbeds, steps: g.steps, cfg: g.cfg, shift: g.shift, seed: 0,
    });
    const video = (await vae.decode(latent)).toTypedArray() as Float32Array;  // [3, F, H, W]
    const [F, H, W] = [g.numFrames, g.height, g.width];
    shown.forEach((f, col) => {
      for (let y = 0; y < size; y++)
        for (let x = 0; x < size; x++)
          for (let c = 0; c < 3; c++) {
            const v = video[((c * F + f) * H + Math.floor(y / SCALE)) * W + Math.floor(x / SCALE)];
            const at = ((r * rowHeight + LABEL + y) * width + col * size + x) * 3 + c;
            sheet[at] = Math.round(Math.min(1, Math.max(-1, v)) * 127.5 + 127.5);
          }
    });
    const unseen = r < 8 ? ' (not in training)' : '';
    captions.push(`<text x="6" y="${r * rowHeight + 16}" font-family="sans-serif" font-size="14">${prompt}${unseen}</text>`);
  }
  encoder.dispose(); model.dispose(); vae.dispose();
  const svg = Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${rowHeight * prompts.length}">${captions.join('')}</svg>`);
  await sharp(sheet, { raw: { width, height: rowHeight * prompts.length, channels: 3 } })
    .composite([{ input: svg, top: 0, left: 0 }]).png().toFile(out);
  process.stdout.write(`${out}: ${prompts.length} prompts x ${shown.length} frames\n`);
}

main().catch((err) => {
  process.stderr.write(`contact-sheet: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
