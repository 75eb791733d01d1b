// Demo benchmark (`node dist/bench/demo.js`, after `npx tsc -p tsconfig.json`): the wall time
// of `wan-native demo` (the README's first command, after setup) as a user sees it, a fresh
// process each run, and where the time goes inside one generation with the same settings.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { emptyEmbeds, runtimeInfo, Sampler, TextEncoder, Vae, videoCombine, WanModel } from '../lib/index';
import type { CacheArgs } from '../lib/index';
import { DEMO_DIR, DEMO_FILES, readDemoSpec } from '../lib/demo';
import { othersBusy, table } from './machine';

const cli = path.resolve(__dirname, '..', 'lib', 'cli.js');

async function stages(out: string): Promise<(string | number)[][]> {
  const spec = readDemoSpec();
  const g = spec.generate as Record<string, number>;
  const rows: (string | number)[][] = [];
  const timed = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    const value = await fn();
    rows.push([label, ((performance.now() - start) / 1000).toFixed(2)]);
    return value;
  };
  const encoder = await timed('load umT5', () => TextEncoder.load(path.join(DEMO_DIR, DEMO_FILES.t5), { textLen: g.textLen }));
  const model = await timed('load DiT', () => WanModel.load(path.join(DEMO_DIR, DEMO_FILES.dit), { numHeads: g.numHeads, textLen: g.textLen }));
  const vae = await timed('load VAE', () => Vae.load(path.join(DEMO_DIR, DEMO_FILES.vae)));
  const textEmbeds = await timed('encode prompt', () => encoder.encode({ positive: spec.prompt, negative: '' }));
  const latent = await timed(`sample (${g.steps} steps, cfg ${g.cfg})`, () => new Sampler(model).sample({
    imageEmbeds: emptyEmbeds({ width: g.width, height: g.height, numFrames: g.numFrames }),
    textEmbeds, steps: g.steps, cfg: g.cfg, shift: g.shift, seed: 0,
  }));
  const video = await timed('decode', () => vae.decode(latent));
  await timed('write gif + mp4', async () => {
    for (const format of ['image/gif', 'video/h264-mp4'] as const)
      await videoCombine(video, { format, frameRate: g.frameRate, outputDir: out, filenamePrefix: 'bench' });
  });
  encoder.dispose(); model.dispose(); vae.dispose();
  return rows;
}

// The block caches (cacheArgs) on the demo's generation (a trained model, whose time embedding
// and outputs move as a real one's do): how many model calls each setting skips and how far the
// decoded video moves (PSNR of the 8-bit frames against no cache). Their speed is
// bench/sample.ts's: the demo's steps take milliseconds, too few for the time to say anything.
async function blockCaches(): Promise<(string | number)[][]> {
  const spec = readDemoSpec();
  const g = spec.generate as Record<string, number>;
  const encoder = await TextEncoder.load(path.join(DEMO_DIR, DEMO_FILES.t5), { textLen: g.textLen });
  const model = await WanModel.load(path.join(DEMO_DIR, DEMO_FILES.dit), { numHeads: g.numHeads, textLen: g.textLen });
  const vae = await Vae.load(path.join(DEMO_DIR, DEMO_FILES.vae));
  const textEmbeds = await encoder.encode({ positive: spec.prompt, negative: '' });
  const base = { imageEmbeds: emptyEmbeds({ width: g.width, height: g.height, numFrames: g.numFrames }), textEmbeds,
    steps: g.steps, cfg: g.cfg, shift: g.shift, seed: 0 };
  const run = async (cacheArgs?: CacheArgs) => {
    let skipped = 0;
    const latent = await new Sampler(model).sample({ ...base, cacheArgs, onProgress: (p) => { skipped = p.cacheSkipped ?? 0; } });
    const video = await vae.decode(latent);
    latent.dispose();
    const bytes = Uint8Array.from(video.toTypedArray() as Float32Array, (v) => Math.round(Math.min(Math.max((v + 1) / 2, 0), 1) * 255));
    video.dispose();
    return { skipped, bytes };
  };
  const off = await run();
  const calls = g.steps * (g.cfg === 1 ? 1 : 2);
  const rows: (string | number)[][] = [];
  const settings: [string, CacheArgs][] = [
    ['relL1Thresh 0.05, no coefficients', { relL1Thresh: 0.05, useCoefficients: false }],
    ['relL1Thresh 0.1, no coefficients', { relL1Thresh: 0.1, useCoefficients: false }],
    ['relL1Thresh 0.2, no coefficients', { relL1Thresh: 0.2, useCoefficients: false }],
    ['relL1Thresh 0.3, 14B coefficients (the model\'s)', { relL1Thresh: 0.3 }],
    ['MagCache defaults (0.02, K 4; 14B ratios)', { cacheType: 'MagCache' }],
    ['MagCache 0.06, K 2', { cacheType: 'MagCache', magcacheThresh: 0.06, magcacheK: 2 }],
    ['EasyCache defaults (0.015, from step 10)', { cacheType: 'EasyCache' }],
    ['EasyCache 0.1, from step 4', { cacheType: 'EasyCache', easycacheThresh: 0.1, startStep: 4 }],
    ['EasyCache 0.3, from step 4', { cacheType: 'EasyCache', easycacheThresh: 0.3, startStep: 4 }],
  ];
  for (const [label, cacheArgs] of settings) {
    const r = await run(cacheArgs);
    let se = 0;
    r.bytes.forEach((b, i) => { se += (b - off.bytes[i]) ** 2; });
    const mse = se / r.bytes.length;
    rows.push([label, `${r.skipped} of ${calls}`, mse === 0 ? 'identical' : `${(10 * Math.log10(255 * 255 / mse)).toFixed(1)} dB`]);
  }
  encoder.dispose(); model.dispose(); vae.dispose();
  return rows;
}

async function main(): Promise<void> {
  const info = runtimeInfo();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'wan-demo-bench-'));
  process.stdout.write(`wan-native demo benchmark: ${info.backend}, libtorch ${info.torchVersion}, ${info.threads} threads, ${os.cpus().length} CPUs\n`);
  process.stdout.write(`CPU time taken by other processes while idle-probing: ${(await othersBusy(1000)).toFixed(2)} s/s\n\n`);
  const runs: (string | number)[][] = [];
  for (let i = 0; i < 3; i++) {
    const start = performance.now();
    const r = spawnSync(process.execPath, [cli, 'demo', '--output-dir', out, '-q'], { encoding: 'utf8' });
    const seconds = (performance.now() - start) / 1000;
    if (r.status !== 0) throw new Error(`wan-native demo failed (${r.status}): ${r.stderr}`);
    runs.push([`run ${i + 1}`, seconds.toFixed(2), r.stdout.trim().split('\n').length + ' files']);
  }
  process.stdout.write('`wan-native demo`, a fresh process each run (wall seconds):\n' + table(['run', 'seconds', 'output'], runs) + '\n\n');
  process.stdout.write('One generation in this process, by stage (seconds):\n' + table(['stage', 'seconds'], await stages(out)) + '\n\n');
  process.stdout.write('Block caches on the same generation (PSNR of the decoded frames against no cache):\n' +
    table(['cacheArgs', 'model calls skipped', 'PSNR'], await blockCaches()) + '\n');
  fs.rmSync(out, { recursive: true, force: true });
}

main().catch((err) => {
  process.stderr.write(`bench/demo: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
