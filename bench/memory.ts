// Memory benchmark (`node dist/bench/memory.js`, after `npx tsc -p tsconfig.json`): the real
// Wan2.1 T2V 1.3B DiT (random weights, bench/synthesize.ts) at 1,024 tokens on this CPU, for
// storage fp32, bf16 and fp8 (e4m3fn files) and blocksToSwap 0, 10, 20, 30 (prefetchBlocks 0),
// plus fp8 with 20 and 30 swapped blocks prefetched 1 ahead: the peak resident memory of a fresh
// process from just before the load to just after the forwards (VmHWM growth; weights are mapped
// from the file and populated, so file-backed pages count, as for any process that reads a
// checkpoint) and the seconds of the second forward (the first is reported apart), in one table,
// with each row's peak as a fraction of the fp32 row without swap and its time as a ratio to that
// row's.
//
// On the CPU a swapped block's "transfer" is its widening from storage to float32, a block at a
// time, on a worker thread while the previous block computes; unswapped blocks widen each weight
// as it is used. Every row computes the same numbers (test/native/block-swap.test.ts).
//
// Environment: WAN_SHARED_DIR, WAN_BENCH_DIR, WAN_MEMORY_BENCH=quick (fp8 only: swap 0, and 20
// with and without prefetch).
import * as fs from 'node:fs';

import { runtimeInfo, Tensor, WanModel } from '../lib/index';
import { native } from '../lib/native';
import { ensureDitCheckpoint, type Storage } from './synthesize';
import { procStatusKiB, runChildJob } from './machine';

const TOKENS = 1024;
const LATENT = [16, 4, 32, 32];  // 4 x 16 x 16 patches = 1,024 tokens
const TEXT = [512, 4096];

interface Job { storage: Storage; swap: number; prefetch: number }
interface Result extends Job { peakMiB: number; loadS: number; firstS: number; seconds: number }


function randomTensor(shape: number[], seed: number): Tensor {
  return new Tensor(new (native().NoiseGenerator)(BigInt(seed)).randn(shape));
}

async function child(job: Job): Promise<void> {
  const file = ensureDitCheckpoint({ storage: job.storage });
  const x = randomTensor(LATENT, 1), context = randomTensor(TEXT, 2);
  const t = Tensor.fromTypedArray(Float64Array.of(700), [1]);
  const before = procStatusKiB('VmHWM');
  let start = performance.now();
  const model = await WanModel.load(file, { attentionMode: 'flash', blockSwap: { blocksToSwap: job.swap, prefetchBlocks: job.prefetch } });
  const loadS = (performance.now() - start) / 1000;
  const times: number[] = [];
  for (let i = 0; i < 2; ++i) {
    start = performance.now();
    const [out] = await model.forward({ x: [x], t, context: [context], seqLen: TOKENS });
    times.push((performance.now() - start) / 1000);
    out.dispose();
  }
  const peakMiB = (procStatusKiB('VmHWM') - before) / 1024;
  const result: Result = { ...job, peakMiB, loadS, firstS: times[0], seconds: times[1] };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

function run(job: Job): Result {
  return runChildJob<Result>(__filename, job, 'bench/memory');
}

function main(): void {
  const info = runtimeInfo();
  const quick = process.env.WAN_MEMORY_BENCH === 'quick';
  const jobs: Job[] = quick
    ? [{ storage: 'fp8', swap: 0, prefetch: 0 }, { storage: 'fp8', swap: 20, prefetch: 0 }, { storage: 'fp8', swap: 20, prefetch: 1 }]
    : [...(['f32', 'bf16', 'fp8'] as Storage[]).flatMap((storage) => [0, 10, 20, 30].map((swap) => ({ storage, swap, prefetch: 0 }))),
       { storage: 'fp8', swap: 20, prefetch: 1 }, { storage: 'fp8', swap: 30, prefetch: 1 }];
  const [m, k, n] = [TOKENS, 1536, 8960];
  const rate = () => (2 * m * k * n) / Math.min(...native().gemmRate(m, k, n, 5)) / 1e9;
  console.log(`wan-native memory benchmark: 1.3B T2V DiT, ${TOKENS} tokens, flash attention; ${info.backend}, ` +
              `libtorch ${info.torchVersion}, ${info.threads} threads; fp32 matmul rate ${rate().toFixed(1)} GFLOP/s`);
  const results: Result[] = [];
  for (const job of jobs) {
    const r = run(job);
    results.push(r);
    console.error(`  ${job.storage} swap ${job.swap} prefetch ${job.prefetch}: peak ${r.peakMiB.toFixed(0)} MiB, ${r.seconds.toFixed(2)} s/forward`);
  }
  const base = results.find((r) => r.storage === 'f32' && r.swap === 0) ?? results[0];
  console.log(`\n| storage | blocksToSwap | prefetchBlocks | peak (MiB) | peak / ${base.storage} swap 0 | s/forward (2nd) | time / ${base.storage} swap 0 | first forward (s) | load (s) |`);
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    console.log(`| ${r.storage} | ${r.swap} | ${r.prefetch} | ${r.peakMiB.toFixed(0)} | ${(r.peakMiB / base.peakMiB).toFixed(2)} | ${r.seconds.toFixed(2)} | ` +
                `${(r.seconds / base.seconds).toFixed(2)} | ${r.firstS.toFixed(2)} | ${r.loadS.toFixed(1)} |`);
  }
  console.log(`fp32 matmul rate at the end: ${rate().toFixed(1)} GFLOP/s`);
}

if (process.argv[2] === '--child') {
  child(JSON.parse(process.argv[3]) as Job).catch((err) => { console.error(err); process.exitCode = 1; });
} else {
  main();
}
