// Loading runs on the engine thread: the event loop keeps ticking, AbortSignal cancels it.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { loadCheckpoint, loadSafetensors, Progress, saveSafetensors, Tensor } from '../../lib/index';
import { tempDir, toNumbers } from '../helpers';

// A 1 GiB checkpoint whose data is a sparse hole: no disk space, but every page must still be
// faulted in by a populating load, which takes long enough to watch.
const SIZE = 1 << 30;
const dir = tempDir('wan-async-');
const big = path.join(dir, 'big.safetensors');
{
  let json = JSON.stringify({ __metadata__: { what: 'zeros' }, w: { dtype: 'U8', shape: [SIZE], data_offsets: [0, SIZE] } });
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(big, Buffer.concat([len, Buffer.from(json)]));
  fs.truncateSync(big, 8 + json.length + SIZE);
}
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

t.test('the event loop keeps ticking while a large file loads', async (t) => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const start = performance.now();
  const { tensors, metadata } = await loadSafetensors(big);
  const ms = performance.now() - start;
  clearInterval(timer);
  t.equal(metadata.what, 'zeros');
  t.same(tensors.get('w')!.shape, [SIZE]);
  t.ok(ticks >= 5, `${ticks} timer ticks during a ${ms.toFixed(0)} ms load of 1 GiB`);
  tensors.get('w')!.dispose();
});

t.test('an AbortSignal cancels a load in progress', async (t) => {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 5);
  const start = performance.now();
  await t.rejects(loadSafetensors(big, { signal: controller.signal }), { name: 'WanError', code: 'WAN_ABORTED', message: 'the operation was aborted' });
  t.comment(`aborted after ${(performance.now() - start).toFixed(0)} ms`);
});

t.test('an already aborted signal rejects at once, and the engine carries on', async (t) => {
  const controller = new AbortController();
  controller.abort();
  await t.rejects(loadCheckpoint(big, { signal: controller.signal }), { code: 'WAN_ABORTED' });
  const small = path.join(dir, 'after-abort.safetensors');
  await saveSafetensors(small, { x: Tensor.fromTypedArray(new Float32Array([3, 4]), [2]) });
  const { tensors } = await loadCheckpoint(small);
  t.same(toNumbers(tensors.get('x')!.toTypedArray()), [3, 4]);
});

t.test('progress is reported, and lazy loads resolve without reading the data', async (t) => {
  const seen: Progress[] = [];
  const start = performance.now();
  await loadCheckpoint(big, { populate: false, onProgress: (p) => seen.push(p) });
  const ms = performance.now() - start;
  t.same(seen.map((p) => [p.stage, p.step, p.totalSteps]), [['load', 0, 1], ['load', 1, 1]]);
  t.equal(seen[1].fraction, 1);
  t.comment(`lazy load of 1 GiB: ${ms.toFixed(1)} ms`);
});

t.test('many concurrent calls settle in order on the one engine thread', async (t) => {
  const order: number[] = [];
  const small = Tensor.fromTypedArray(new Float32Array([1]), [1]);
  const file = path.join(dir, 'small.safetensors');
  await saveSafetensors(file, { small });
  await Promise.all(Array.from({ length: 20 }, (_, i) => loadCheckpoint(file).then(() => order.push(i))));
  t.same(order, Array.from({ length: 20 }, (_, i) => i));
});
