// Vae.estimateDecodeMemory against the peak resident memory a decode really takes.
//
// Each case runs in a fresh Node process (a script written to a temporary folder) that loads
// a VAE of the real dimensions (dim 96, z 16: every key and shape of Wan2.1_VAE.pth from
// shared/manifests/wan2.1_vae.json, random fp32 weights), asks for the estimate, then decodes
// a random latent through decodeFrames(), disposing each chunk, and reports VmHWM from
// /proc/self/status just before the load, just before the decode and after it. The estimate
// must be within 25% of what the decode adds to VmHWM, and its total (with the weights)
// within 25% of what load and decode add together.
//
// The checkpoint (508 MB; bench/synthesize.ts: conv weights U(+-sqrt(3/fan_in)), RMS gammas 1,
// biases 0) is written once to $TMPDIR/wan-native-test/ and reused while its size and header
// match. The three decodes take about 12 s on a quiet 2-core machine.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { ensureVaeCheckpoint } from '../../bench/synthesize';
import { tempDir } from '../helpers';

const TOLERANCE = 0.25;  // |estimate - measured| <= 25% of measured
const MiB = 2 ** 20;

// The synthetic VAE, written once to $TMPDIR/wan-native-test/ (its own header, so the bench's
// file in WAN_BENCH_DIR is another one).
function randomVae(): string {
  return ensureVaeCheckpoint({
    generator: 'wan-native test/native/vae-memory.test.ts (random: U(+-sqrt(3/fan_in)), gammas 1, biases 0)',
    dir: path.join(os.tmpdir(), 'wan-native-test'),
    log: () => undefined,
  });
}

// The measuring process. VmHWM is read after libtorch has started (runtimeInfo) and again
// once the last chunk is disposed.
const CHILD = `
const fs = require('node:fs');
const { Vae, Tensor, runtimeInfo } = require(${JSON.stringify(path.resolve(__dirname, '..', '..', 'lib', 'index.js'))});
const status = (field) => 1024 * Number(new RegExp('^' + field + ':\\\\s+(\\\\d+) kB', 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]);
(async () => {
  const job = JSON.parse(process.argv[2]);
  const threads = runtimeInfo().threads;
  const beforeLoad = status('VmHWM');
  const vae = await Vae.load(job.file);
  const options = { frames: job.frames, height: job.height, width: job.width, ...job.tiling };
  const estimate = vae.estimateDecodeMemory({ ...options, call: 'decodeFrames' });
  const h = job.height / 8, w = job.width / 8;
  const z = new Float32Array(16 * job.frames * h * w);
  for (let i = 0; i < z.length; i++) z[i] = Math.sin(i * 12.9898) * 2;
  const latent = Tensor.fromTypedArray(z, [16, job.frames, h, w]);
  const rssBeforeDecode = status('VmRSS'), beforeDecode = status('VmHWM');
  const started = Date.now();
  let frames = 0;
  for await (const chunk of vae.decodeFrames(latent, job.tiling)) {
    frames += chunk.shape[1];
    chunk.dispose();
  }
  const seconds = (Date.now() - started) / 1000;
  const after = status('VmHWM');
  process.stdout.write(JSON.stringify({ threads, beforeLoad, rssBeforeDecode, beforeDecode, after, frames, seconds, estimate }));
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
`;

interface Case { label: string; frames: number; height: number; width: number; tiling?: Record<string, number | boolean> }

// 2-3 latent frames, so that a steady chunk (4 video frames, full feature caches) is decoded.
// At 64x64 the peak is in the first chunk, in a vol2col conv (below oneDNN's threshold); at
// 128x96 in a oneDNN conv of a steady chunk; tiled, in the second of two 80x96 tiles.
const CASES: Case[] = [
  { label: '64x64, 3 latent frames', frames: 3, height: 64, width: 64 },
  { label: '128x96, 2 latent frames', frames: 2, height: 128, width: 96 },
  { label: '128x96, 2 latent frames, tiled 96x80 every 48x48', frames: 2, height: 128, width: 96,
    tiling: { tiled: true, tileX: 96, tileY: 80, tileStrideX: 48, tileStrideY: 48 } },
];

const skip = fs.existsSync('/proc/self/status') ? false : 'needs /proc/self/status (Linux)';

t.test('estimateDecodeMemory is within 25% of the measured peak (VmHWM) of a decode', { skip }, async (t) => {
  const file = randomVae();
  const dir = tempDir('wan-vae-memory-');
  const script = path.join(dir, 'decode-child.js');
  fs.writeFileSync(script, CHILD);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const c of CASES) {
    const out = execFileSync(process.execPath, [script, JSON.stringify({ file, ...c })],
      { encoding: 'utf8', timeout: 300_000, maxBuffer: 1 << 20 });
    const r = JSON.parse(out);
    const e = r.estimate;
    const mib = (v: number) => (v / MiB).toFixed(1);
    t.equal(r.frames, 1 + 4 * (c.frames - 1), `${c.label}: decoded every frame`);
    t.equal(Object.values(e.breakdown as Record<string, number>).reduce((a, b) => a + b, 0), e.bytes,
      `${c.label}: the breakdown adds up to the estimate`);
    const measured = r.after - r.beforeDecode, predicted = e.bytes - e.breakdown.weights;
    t.ok(Math.abs(predicted - measured) <= TOLERANCE * measured,
      `${c.label}: decode adds ${mib(measured)} MiB to VmHWM, estimated ${mib(predicted)} MiB ` +
      `(${(100 * (predicted / measured - 1)).toFixed(1)}%; ${r.seconds.toFixed(1)} s, ${r.threads} threads, peak at ${e.peakAt})`);
    const total = r.after - r.beforeLoad;
    t.ok(Math.abs(e.bytes - total) <= TOLERANCE * total,
      `${c.label}: load + decode add ${mib(total)} MiB, estimated ${mib(e.bytes)} MiB with the weights`);
  }
});
