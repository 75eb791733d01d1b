// The memory planner (lib/memory-planner.ts) on the real checkpoints' shapes (shared/manifests),
// stored as bf16 as ComfyUI ships them, against budgets of 8, 12, 24 and 80 GiB. Every expected
// choice below is derived by hand from the planner's formulas, written out in the comments.
// Pure TypeScript: no addon is loaded (no VAE is given, so no decode is replayed).
import * as path from 'node:path';
import t from 'tap';

import { planMemory, tensorsFromManifest, tokenCount, type PlanMemoryOptions } from '../../lib/memory-planner';
import { manifestsDir } from '../helpers';

const GiB = 2 ** 30;
const BUDGETS = [8, 12, 24, 80];
const manifest = (name: string, dtype = 'bf16') => tensorsFromManifest(path.join(manifestsDir, `${name}.json`), dtype);
const T2V_1_3B = manifest('wan2.1_t2v_1.3B_dit');
const T2V_14B = manifest('wan2.1_t2v_14B_dit');
const I2V_14B = manifest('wan2.1_i2v_14B_720P_dit');

async function decisions(o: Omit<PlanMemoryOptions, 'maxMemory'>): Promise<string[]> {
  const out: string[] = [];
  for (const gb of BUDGETS) {
    const p = await planMemory({ ...o, maxMemory: gb * GiB });
    out.push(p.fits ? `${p.quantization} swap ${p.blocksToSwap}` : 'no fit');
  }
  return out;
}

t.test('tokens: latent frames x (H/16) x (W/16)', async (t) => {
  t.equal(tokenCount(832, 480, 81), 21 * 30 * 52);   // 32,760
  t.equal(tokenCount(1280, 720, 81), 21 * 45 * 80);  // 75,600
});

// On a GPU ('cuda'), the peak of the DiT stage with s swapped blocks (s > 0 brings one block in
// flight, prefetchBlocks 0) is
//   other + (N - s) * block + [s > 0] * block + A,
// A = activations + context: max(22, 10 + 2 * ffn / dim) bytes * tokens * dim * 1.25 (the caching
// allocator) + 2 * 512 * (4096 + dim) * 4 (text context) + 8 * 16 * T * h * w * 4 (latents). For
// the 14B (ffn / dim = 2.7) and the 1.3B (5.83) the first term is the larger: 22 bytes.
// The least s that fits leaves floor((budget - other - A) / block) - 1 blocks resident.
t.test('cuda: 14B T2V at 832x480x81 swaps the least that fits', async (t) => {
  // Manifest: 40 blocks of 351,394,304 parameters (702,788,608 bytes in bf16); the rest
  // 232,719,424 parameters (465,438,848 bytes).
  const other = 465_438_848, block = 702_788_608;
  // A = 22 * 32,760 * 5120 * 1.25 + 2 * 512 * 9216 * 4 + 8 * 16 * 21 * 60 * 104 * 4
  //   = 4,612,608,000 + 37,748,736 + 67,092,480 = 4,717,449,216
  const A = 4_717_449_216;
  const resident = (gb: number) => Math.floor((gb * GiB - other - A) / block) - 1;
  t.same([resident(8), resident(12), resident(24)], [3, 9, 28]);  // 4.85, 10.96, 29.29 blocks of room
  t.same(await decisions({ dit: T2V_14B, device: 'cuda', width: 832, height: 480, numFrames: 81 }),
    ['disabled swap 37', 'disabled swap 31', 'disabled swap 12', 'disabled swap 0']);
  const p = await planMemory({ dit: T2V_14B, device: 'cuda', maxMemory: 80 * GiB });
  t.equal(p.peak, other + 40 * block + A, 'no swap: every block resident (31.01 GiB)');
  t.equal(p.dit.residentBlocks, 40);
  const swapped = await planMemory({ dit: T2V_14B, device: 'cuda', maxMemory: 8 * GiB });
  t.equal(swapped.peak, other + 3 * block + block + A, '37 swapped: 3 resident + 1 in flight (7.45 GiB)');
  t.equal(swapped.dit.offloadBytes, 37 * block, 'the swapped blocks wait in CPU memory');
  t.match(swapped.summary, /3 resident, 37 swapped/);
});

t.test('cuda: 14B T2V at 1280x720x81; 8 GiB cannot fit', async (t) => {
  // A = 22 * 75,600 * 5120 * 1.25 + 37,748,736 + 8 * 16 * 21 * 90 * 160 * 4 = 10,837,057,536:
  // room for floor((12 GiB - 465,438,848 - A) / block) = 2 blocks -> 1 resident, 39 swapped; 24 GiB:
  // 20 -> 19 resident, 21 swapped. At 8 GiB even fp8 (below) does not fit.
  t.same(await decisions({ dit: T2V_14B, device: 'cuda', width: 1280, height: 720, numFrames: 81 }),
    ['no fit', 'disabled swap 39', 'disabled swap 21', 'disabled swap 0']);
});

t.test('cuda: 14B I2V (720P weights) at both sizes', async (t) => {
  // Blocks of 807,676,928 bytes (k_img, v_img, norm_k_img added), the rest 482,680,448 bytes.
  // 832x480 (A = 4,717,449,216 as T2V): room (budget - other - A) / block = 4.20, 9.51, 25.47
  // blocks -> 3, 8, 24 resident -> 37, 32, 16 swapped.
  t.same(await decisions({ dit: I2V_14B, device: 'cuda', width: 832, height: 480, numFrames: 81 }),
    ['disabled swap 37', 'disabled swap 32', 'disabled swap 16', 'disabled swap 0']);
  // 1280x720 (A = 10,837,057,536): room 1.94 and 17.89 blocks -> 0 and 16 resident -> 40 and 24
  // swapped; at 8 GiB nothing fits.
  t.same(await decisions({ dit: I2V_14B, device: 'cuda', width: 1280, height: 720, numFrames: 81 }),
    ['no fit', 'disabled swap 40', 'disabled swap 24', 'disabled swap 0']);
  const fewer = await planMemory({ dit: I2V_14B, device: 'cuda', width: 1280, height: 720, maxMemory: 24 * GiB,
    quantization: 'disabled', blocksToSwap: 23 });
  t.equal(fewer.fits, false, 'one block fewer swapped does not fit: 24 is the least');
});

t.test('cuda: 1.3B fits every budget without swapping', async (t) => {
  // 2,837,993,600 bytes of weights + A (22 * 32,760 * 1536 * 1.25 + ... = 1.37 GiB) = 4.02 GiB;
  // 1280x720: 5.78 GiB, under 8 GiB.
  t.same(await decisions({ dit: T2V_1_3B, device: 'cuda', width: 832, height: 480 }), Array(4).fill('disabled swap 0'));
  t.same(await decisions({ dit: T2V_1_3B, device: 'cuda', width: 1280, height: 720 }), Array(4).fill('disabled swap 0'));
});

t.test('cuda: fp8 only when swapping every block does not fit (a float32 file)', async (t) => {
  // 14B in float32 at 1280x720: every block swapped leaves other (930,877,696) + 1 block in flight
  // (1,405,577,216) + A (10,837,057,536) = 13,173,512,448 bytes = 12.27 GiB. At 12.5 GiB that fits
  // (room 1.18 blocks -> 0 resident): float32, 40 swapped, no fp8. At 12 GiB it does not, and fp8
  // does: blocks of 351,758,336 bytes (linear weights fp8, norms, biases and modulation still
  // float32), other 930,877,696 (the embeddings, text embedding included, and head all kept in
  // float32), one fp8 weight widened to bf16 (141,557,760): room (12 GiB - 930,877,696 -
  // 141,557,760 - A) / 351,758,336 = 2.77 -> 1 resident, 39 swapped.
  const f32 = manifest('wan2.1_t2v_14B_dit', 'f32');
  const roomy = await planMemory({ dit: f32, device: 'cuda', width: 1280, height: 720, maxMemory: 12.5 * GiB });
  t.same([roomy.quantization, roomy.blocksToSwap, roomy.peak], ['disabled', 40, 13_173_512_448], 'swap alone fits at 12.5 GiB');
  const p = await planMemory({ dit: f32, device: 'cuda', width: 1280, height: 720, maxMemory: 12 * GiB });
  t.same([p.fits, p.quantization, p.blocksToSwap], [true, 'fp8_e4m3fn', 39]);
  t.equal(p.dit.storageDtype, 'f8_e4m3fn');
});

// On the CPU every weight stays in RAM whatever is swapped, so the planner never swaps and only
// fp8 storage saves memory. The peak of the DiT stage is
//   weights + the largest weight widened to float32 + activations * 1.5 + attention + context
//   + 300 MiB (the process),
// activations max(20, 8 + 4 * ffn / dim) bytes * tokens * dim, sdpa's scores 2 * heads * 1024 * tokens * 4.
t.test('cpu: 1.3B T2V at 832x480x81, sdpa and flash', async (t) => {
  const tokens = 32_760;
  const weights = 2_837_993_600;             // 1,418,996,800 parameters in bf16
  const widened = 8960 * 1536 * 4;           // ffn.0's weight in float32
  const activations = Math.round((8 + (4 * 8960) / 1536) * tokens * 1536 * 1.5);
  const sdpa = 2 * 12 * 1024 * tokens * 4;   // 3.00 GiB
  const context = 2 * 512 * (4096 + 1536) * 4 + 8 * 16 * 21 * 60 * 104 * 4;
  const process = 300 * 2 ** 20;
  const p = await planMemory({ dit: T2V_1_3B, maxMemory: 80 * GiB });
  t.equal(p.peak, weights + widened + activations + sdpa + context + process, '8.27 GiB');
  // At 8 GiB fp8 storage fits (6.98 GiB: see the message test below).
  t.same(await decisions({ dit: T2V_1_3B }), ['fp8_e4m3fn swap 0', 'disabled swap 0', 'disabled swap 0', 'disabled swap 0']);
  const flash = await planMemory({ dit: T2V_1_3B, attentionMode: 'flash', maxMemory: 8 * GiB });
  t.equal(flash.peak, weights + widened + activations + context + process, 'flash keeps no scores: 5.27 GiB');
  t.same([flash.fits, flash.quantization, flash.blocksToSwap], [true, 'disabled', 0]);
});

t.test('cpu: 14B needs fp8 at 24 GiB (flash), 80 GiB without', async (t) => {
  // 14B T2V bf16, flash, 832x480: 28,576,983,168 bytes of weights + 283,115,520 (ffn.0 widened)
  // + 20 * 32,760 * 5120 * 1.5 (ffn / dim = 2.7: 20 > 8 + 4 * 2.7) + ... = 31.96 GiB; fp8 halves
  // the block weights to 14,526,064,768 bytes: 18.87 GiB, under 24 GiB.
  t.same(await decisions({ dit: T2V_14B, attentionMode: 'flash' }), ['no fit', 'no fit', 'fp8_e4m3fn swap 0', 'disabled swap 0']);
  t.same(await decisions({ dit: T2V_14B }), ['no fit', 'no fit', 'no fit', 'disabled swap 0']);  // sdpa: 41.95 GiB, fp8 28.87
  t.same(await decisions({ dit: I2V_14B, attentionMode: 'flash' }), ['no fit', 'no fit', 'fp8_e4m3fn swap 0', 'disabled swap 0']);  // fp8 20.84 GiB
  t.same(await decisions({ dit: T2V_14B, width: 1280, height: 720 }), ['no fit', 'no fit', 'no fit', 'disabled swap 0']);  // 61.24 GiB
  t.same(await decisions({ dit: I2V_14B, width: 1280, height: 720 }), ['no fit', 'no fit', 'no fit', 'disabled swap 0']);  // 65.16 GiB
  t.same(await decisions({ dit: T2V_1_3B, width: 1280, height: 720 }), ['no fit', 'no fit', 'disabled swap 0', 'disabled swap 0']);  // 15.16 GiB
});

t.test('a budget too small says what it needs and what would fit', async (t) => {
  const p = await planMemory({ dit: T2V_14B, device: 'cuda', width: 1280, height: 720, maxMemory: 8 * GiB });
  t.equal(p.fits, false);
  // best: fp8 (other 465,438,848, all kept in bf16, + 1 block 351,515,648 + widening 141,557,760)
  // + A = 10.99 GiB
  t.same([p.best.quantization, p.best.blocksToSwap], ['fp8_e4m3fn', 40]);
  t.match(p.message, /^1280x720, 81 frames needs 36\.71 GiB on the cuda \(the file's dtypes, 0 swapped blocks; largest stage: dit\); /);
  t.match(p.message, /with fp8_e4m3fn, 40 swapped blocks 10\.99 GiB \(largest stage: dit\); the budget \(maxMemory\) is 8\.00 GiB$/);
  t.match(p.summary, /DOES NOT FIT/);

  const cpu = await planMemory({ dit: T2V_1_3B, maxMemory: 6 * GiB });
  t.match(cpu.message, /needs 8\.27 GiB on the cpu .* with fp8_e4m3fn, 0 swapped blocks 6\.98 GiB .* is 6\.00 GiB; attentionMode 'flash' would save 3\.00 GiB$/);

  // The text encoder is its own stage: when it is the largest, no DiT setting helps, and it says so.
  const text = await planMemory({ dit: T2V_1_3B, textEncoder: manifest('umt5_xxl_encoder'), attentionMode: 'flash', maxMemory: 8 * GiB });
  t.equal(text.fits, false);
  t.match(text.message, /no storage or block swap of the DiT needs less \(largest stage: text, 11\.\d\d GiB\)/);
});

t.test('estimates are monotonic', async (t) => {
  const peak = async (o: Omit<PlanMemoryOptions, 'maxMemory'>) => (await planMemory({ ...o, maxMemory: 1000 * GiB })).peak;
  for (const device of ['cpu', 'cuda'] as const) {
    let last = 0;
    for (const numFrames of [1, 17, 33, 49, 65, 81]) {
      const p = await peak({ dit: T2V_1_3B, device, numFrames });
      t.ok(p > last, `${device}: more frames, more memory (${numFrames})`);
      last = p;
    }
    last = 0;
    for (const [width, height] of [[480, 272], [832, 480], [1280, 720]]) {
      const p = await peak({ dit: T2V_14B, device, width, height });
      t.ok(p > last, `${device}: larger frames, more memory (${width}x${height})`);
      last = p;
    }
    t.ok(await peak({ dit: T2V_14B, device, quantization: 'fp8_e4m3fn', blocksToSwap: 0 }) <
      await peak({ dit: T2V_14B, device, quantization: 'disabled', blocksToSwap: 0 }), `${device}: fp8 holds less than bf16`);
  }
  // GPU: each swapped block beyond the first (which brings one in flight) saves one block.
  let last = Infinity;
  for (let s = 1; s <= 40; s++) {
    const p = await peak({ dit: T2V_14B, device: 'cuda', blocksToSwap: s });
    t.ok(p < last, `cuda: ${s} swapped holds less than ${s - 1}`);
    last = p;
  }
  // CPU: swapping never lowers the peak (the blocks stay in RAM; a swapped one is widened whole).
  t.ok(await peak({ dit: T2V_14B, blocksToSwap: 20 }) >= await peak({ dit: T2V_14B, blocksToSwap: 0 }));
  t.ok(await peak({ dit: T2V_14B, blocksToSwap: 20, prefetchBlocks: 1 }) > await peak({ dit: T2V_14B, blocksToSwap: 20 }),
    'a prefetched block costs one more widened block');
});

t.test('options are validated with messages naming them', async (t) => {
  await t.rejects(planMemory({ dit: T2V_1_3B, width: 830 }), { code: 'WAN_INVALID_OPTION', message: /multiple of 16 for width but received 830/ });
  await t.rejects(planMemory({ dit: T2V_1_3B, numFrames: 80 }), { message: /4k \+ 1 frames .* for numFrames but received 80/ });
  await t.rejects(planMemory({ dit: T2V_1_3B, maxMemory: -1 }), { message: /positive number of bytes for maxMemory but received -1/ });
  await t.rejects(planMemory({ dit: T2V_1_3B, blocksToSwap: 31 }), { message: /0\.\.30 \(the model's blocks\) for blocksToSwap but received 31/ });
  await t.rejects(planMemory({ dit: T2V_1_3B, device: 'tpu' as never }), { message: /one of cpu, cuda for device/ });
  await t.rejects(planMemory({ dit: [{ key: 'x', shape: [1], dtype: 'q4' }] }), { message: /tensor dtype .* received "q4"/ });
});
