// Pure TypeScript pieces: no native addon is loaded here.
import t from 'tap';

import { describeValue, WanError, withCallerStack } from '../../lib/errors';
import { ProgressClock, Progress } from '../../lib/progress';

t.test('WanError carries a stable code and its name', async (t) => {
  const e = new WanError('WAN_BAD_CHECKPOINT', 'x.safetensors: bad');
  t.ok(e instanceof Error);
  t.equal(e.name, 'WanError');
  t.equal(e.code, 'WAN_BAD_CHECKPOINT');
  t.equal(e.message, 'x.safetensors: bad');
});

t.test('describeValue names what was received', async (t) => {
  t.equal(describeValue('x'), '"x" of type string');
  t.equal(describeValue(3), '3 of type number');
  t.equal(describeValue(null), 'null');
  t.equal(describeValue([1, 2]), 'an array of length 2');
  t.equal(describeValue(new Float32Array(2)), 'a Float32Array');
  t.equal(describeValue({}), 'an object of type Object');
});

t.test('withCallerStack re-throws with the caller frame', async (t) => {
  const caller = new Error();
  const err = await withCallerStack(Promise.reject(new WanError('WAN_IO', 'nope')), caller).catch((e) => e);
  t.equal(err.code, 'WAN_IO');
  t.match(err.stack, /^WanError: nope\n/);
  t.match(err.stack, /errors\.test/);
});

t.test('ProgressClock reports fractions and an ETA', async (t) => {
  const seen: Progress[] = [];
  const clock = new ProgressClock('load', 4, (p) => seen.push(p));
  clock.report(0);
  clock.report(2);
  clock.report(4);
  t.same(seen.map((p) => [p.stage, p.step, p.totalSteps, p.fraction]), [['load', 0, 4, 0], ['load', 2, 4, 0.5], ['load', 4, 4, 1]]);
  t.equal(seen[2].etaMs, 0);
});
