// Activation memory of the DiT forward (`node dist/bench/activations.js`, after
// `npx tsc -p tsconfig.json`): what one forward of the Wan2.1 T2V 1.3B DiT holds beyond its
// weights, at the sizes a user asks for, on this CPU, beside what the memory planner budgets.
//
// The model has the real dimensions (dim 1536, ffn 8960, 12 heads) and 2 blocks (random weights,
// float32, bench/synthesize.ts): a block's activations are freed before the next block runs, so
// 2 blocks peak as 30 do, and each forward stays short. Every size runs in a fresh process:
// a 1-token forward first (it pages the mapped weights in and warms libtorch), then the forward
// measured, reporting
//   - live: the most CPU tensor bytes allocated at once during it, above those held before
//     (cpuMemory: wan-native's CPU allocator counts every tensor it hands out);
//   - resident: the process's VmHWM growth during it (the heap also keeps freed blocks);
//   - planned: planMemory's `activations` for the same size (flash attention; live tensors times
//     its heap slack) plus its text context, which the forward also allocates;
// and the ratios of live and resident to planned: the planner is right when resident <= planned.
//
// WAN_NATIVE_BINARY measures another build (e.g. an older one, for a before/after table).
// Environment: WAN_SHARED_DIR, WAN_BENCH_DIR, WAN_ACTIVATIONS_BENCH=quick (the two small sizes).
import * as path from 'node:path';

import { planMemory, runtimeInfo, Tensor, WanModel } from '../lib/index';
import { tensorsFromManifest } from '../lib/memory-planner';
import { native } from '../lib/native';
import { cpuMemory } from '../lib/ops';
import { procStatusKiB, runChildJob, table } from './machine';
import { ensureDitCheckpoint, manifestPath } from './synthesize';

interface Job { width: number; height: number; numFrames: number }
interface Result extends Job { tokens: number; liveMiB: number; residentMiB: number; seconds: number }

const SIZES: Job[] = [
  { width: 256, height: 256, numFrames: 13 },   // 1,024 tokens
  { width: 512, height: 512, numFrames: 13 },   // 4,096
  { width: 720, height: 720, numFrames: 13 },   // 8,100
  { width: 512, height: 512, numFrames: 61 },   // 16,384
  { width: 832, height: 480, numFrames: 81 },   // 32,760: Wan2.1's default video
];
const MiB = 2 ** 20;

function randomTensor(shape: number[], seed: number): Tensor {
  return new Tensor(new (native().NoiseGenerator)(BigInt(seed)).randn(shape));
}

async function child(job: Job): Promise<void> {
  const model = await WanModel.load(ensureDitCheckpoint({ blocks: 2, storage: 'f32' }), { attentionMode: 'flash' });
  const frames = (job.numFrames - 1) / 4 + 1;
  const latent = [16, frames, job.height / 8, job.width / 8];
  const tokens = frames * (job.height / 16) * (job.width / 16);
  const x = randomTensor(latent, 1), context = randomTensor([512, 4096], 2);
  const t = Tensor.fromTypedArray(Float64Array.of(700), [1]);
  (await model.forward({ x: [randomTensor([16, 1, 2, 2], 3)], t, context: [context], seqLen: 1 }))[0].dispose();
  const hwmBefore = Math.max(procStatusKiB('VmHWM'), procStatusKiB('VmRSS'));
  const held = cpuMemory(true).allocated;
  const start = performance.now();
  const [out] = await model.forward({ x: [x], t, context: [context], seqLen: tokens });
  const seconds = (performance.now() - start) / 1000;
  const liveMiB = (cpuMemory().peak - held) / MiB;
  const residentMiB = (procStatusKiB('VmHWM') - hwmBefore) / 1024;
  out.dispose();
  const result: Result = { ...job, tokens, liveMiB, residentMiB, seconds };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

function run(job: Job): Result {
  return runChildJob<Result>(__filename, job, 'bench/activations');
}

async function main(): Promise<void> {
  const info = runtimeInfo();
  const jobs = process.env.WAN_ACTIVATIONS_BENCH === 'quick' ? SIZES.slice(0, 2) : SIZES;
  const dit = tensorsFromManifest(manifestPath('wan2.1_t2v_1.3B_dit.json'), 'f32');
  console.log(`wan-native activations benchmark: 1.3B T2V DiT shape (2 blocks, float32), flash attention; ${info.backend}, ` +
              `libtorch ${info.torchVersion}, ${info.threads} threads; addon ${process.env.WAN_NATIVE_BINARY ?? 'as resolved (build/Release)'}`);
  const rows: (string | number)[][] = [];
  for (const job of jobs) {
    const r = run(job);
    const plan = await planMemory({ dit, device: 'cpu', attentionMode: 'flash', maxMemory: 1024 ** 4, ...job });
    // The planner's text context (2 x [512, 4096 | 1536] float32) is allocated by the forward too;
    // its latents are the sampler's, which this forward does not hold.
    const textContext = 2 * 512 * (4096 + 1536) * 4;
    const plannedMiB = (plan.dit.activationBytes + textContext) / MiB;
    console.error(`  ${job.width}x${job.height}x${job.numFrames} (${r.tokens} tokens): live ${r.liveMiB.toFixed(1)} MiB, resident ${r.residentMiB.toFixed(1)} MiB, ${r.seconds.toFixed(1)} s`);
    rows.push([`${job.width}x${job.height}x${job.numFrames}`, r.tokens, r.liveMiB.toFixed(1), r.residentMiB.toFixed(1), plannedMiB.toFixed(1),
               (r.liveMiB / plannedMiB).toFixed(2), (r.residentMiB / plannedMiB).toFixed(2), r.seconds.toFixed(1)]);
  }
  console.log(table(['size', 'tokens', 'live MiB', 'resident MiB', 'planned MiB', 'live / planned', 'resident / planned', 'forward s'], rows));
}

if (process.argv[2] === '--child') {
  child(JSON.parse(process.argv[3]) as Job).catch((err) => { console.error(err); process.exitCode = 1; });
} else {
  main().catch((err) => { console.error(err); process.exitCode = 1; });
}
