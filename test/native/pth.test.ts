// Official .pth checkpoints (torch.save zip archives) through our restricted unpickler.
// Fixtures come from scripts/make-pth-fixtures.py (torch 1.13); expected.json is what
// torch.load returned for them.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { inspectCheckpoint, loadCheckpoint } from '../../lib/index';
import { fixturesDir, toNumbers } from '../helpers';

const pthDir = path.join(fixturesDir, 'pth');
const expected: Record<string, Record<string, { dtype: string; shape: number[]; sum: number; values?: number[] }>> =
  JSON.parse(fs.readFileSync(path.join(pthDir, 'expected.json'), 'utf8'));

for (const [file, tensors] of Object.entries(expected)) {
  t.test(`${file}: every tensor equals what torch.load returned`, async (t) => {
    const loaded = await loadCheckpoint(path.join(pthDir, file));
    t.same([...loaded.tensors.keys()], Object.keys(tensors), 'names, in file order, nested dicts joined with "."');
    t.same(loaded.metadata, {});
    for (const [name, want] of Object.entries(tensors)) {
      const x = loaded.tensors.get(name)!;
      t.equal(x.dtype, want.dtype, `${name} dtype`);
      t.same(x.shape, want.shape, `${name} shape`);
      const values = toNumbers(x.toTypedArray());
      const sum = values.reduce((a, b) => a + b, 0);
      t.ok(Math.abs(sum - want.sum) <= 1e-9 * Math.max(1, Math.abs(want.sum)), `${name} sum ${sum} vs ${want.sum}`);
      if (want.values) t.same(values, want.values, `${name} values`);
    }
  });
}

t.test('an OrderedDict state_dict with _metadata (what module.state_dict() saves) loads', async (t) => {
  const { tensors } = await loadCheckpoint(path.join(pthDir, 'state_dict.pth'));
  t.ok(tensors.size >= 3);
  t.notOk([...tensors.keys()].some((k) => k.includes('_metadata')));
});

t.test('views keep their layout: a transposed view and a slice with a storage offset', async (t) => {
  const { tensors } = await loadCheckpoint(path.join(pthDir, 'mixed.pth'));
  const transposed = tensors.get('transposed')!;
  const sliced = tensors.get('sliced')!;
  t.same(toNumbers(transposed.toTypedArray()), expected['mixed.pth'].transposed.values);
  t.same(toNumbers(sliced.toTypedArray()), expected['mixed.pth'].sliced.values);
  t.same(toNumbers(tensors.get('tied_a')!.toTypedArray()), toNumbers(tensors.get('tied_b')!.toTypedArray()), 'tied tensors');
});

t.test('a pickle that asks for anything but tensors and containers is refused', async (t) => {
  const file = path.join(pthDir, 'malicious.pth');
  await t.rejects(loadCheckpoint(file), {
    name: 'WanError', code: 'WAN_BAD_CHECKPOINT',
    message: new RegExp(`${file.replace(/[.]/g, '\\.')}: .*pickle asks for global 'os\\.system'; only tensors and containers are accepted`),
  });
  await t.rejects(inspectCheckpoint(file), { code: 'WAN_BAD_CHECKPOINT', message: /os\.system/ });
});

t.test('a legacy (pre-zip) torch.save file gets a clear explanation', async (t) => {
  await t.rejects(loadCheckpoint(path.join(pthDir, 'legacy.pth')),
    { code: 'WAN_BAD_CHECKPOINT', message: /legacy\.pth: a legacy \(pre-zip\) torch\.save file; re-save it/ });
});

t.test('inspect reads a .pth index without loading data', async (t) => {
  const info = await inspectCheckpoint(path.join(pthDir, 'mixed.pth'));
  t.equal(info.numTensors, Object.keys(expected['mixed.pth']).length);
  t.equal(info.family, 'unknown');
  t.equal(info.dtypes.bf16, 1);
});
