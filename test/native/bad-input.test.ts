// Broken checkpoint files: each is a WanError WAN_BAD_CHECKPOINT naming the file and, where
// one is at fault, the tensor; never a crash.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { inspectCheckpoint, loadCheckpoint, loadSafetensors, WanError } from '../../lib/index';
import { buildSafetensors, tempDir, toNumbers } from '../helpers';

const dir = tempDir('wan-bad-');
const f32 = (values: number[]) => new Uint8Array(new Float32Array(values).buffer);
const good = () => buildSafetensors({
  'blocks.0.weight': { dtype: 'F32', shape: [2, 2], bytes: f32([1, 2, 3, 4]) },
  'blocks.0.bias': { dtype: 'F32', shape: [2], bytes: f32([5, 6]) },
});

function write(name: string, bytes: Buffer | Uint8Array): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

function header(patch: (h: any) => void): Buffer {
  return buildSafetensors({
    'blocks.0.weight': { dtype: 'F32', shape: [2, 2], bytes: f32([1, 2, 3, 4]) },
    'blocks.0.bias': { dtype: 'F32', shape: [2], bytes: f32([5, 6]) },
  }, undefined, patch);
}

const cases: [string, Buffer | Uint8Array, RegExp][] = [
  ['truncated data', good().subarray(0, good().length - 3), /tensor 'blocks\.0\.(bias|weight)': data_offsets end \d+ lies past the end of the data \(\d+ bytes; is the file truncated\?\)/],
  ['shorter than the length prefix', Buffer.from([1, 2, 3]), /not a checkpoint: expected safetensors .* found 3 bytes/],
  ['header length past the end', (() => { const b = good(); b.writeBigUInt64LE(10n ** 6n); return b; })(), /header length 1000000 runs past the end of the file \(\d+ bytes; is the file truncated\?\)/],
  ['invalid JSON', (() => { const b = good(); b[9] = 0x2c; /* '{,' */ return b; })(), /header is not valid JSON: .* at byte \d+/],
  ['offsets out of range', header((h) => { h['blocks.0.bias'].data_offsets = [16, 4000]; }), /tensor 'blocks\.0\.bias': data_offsets end 4000 lies past the end of the data/],
  ['offsets backwards', header((h) => { h['blocks.0.bias'].data_offsets = [24, 16]; }), /tensor 'blocks\.0\.bias': data_offsets \[24, 16\] run backwards/],
  ['overlapping tensors', header((h) => { h['blocks.0.bias'].data_offsets = [8, 16]; }), /tensor 'blocks\.0\.bias' overlaps tensor 'blocks\.0\.weight'|tensor 'blocks\.0\.weight' overlaps tensor 'blocks\.0\.bias'/],
  ['shape does not match the byte count', header((h) => { h['blocks.0.weight'].shape = [2, 3]; }), /tensor 'blocks\.0\.weight': shape \[2, 3\] of F32 needs 24 bytes but data_offsets span 16/],
  ['unknown dtype', header((h) => { h['blocks.0.bias'].dtype = 'C64'; }), /tensor 'blocks\.0\.bias': unknown dtype 'C64' \(expected F64, F32/],
  ['negative shape', header((h) => { h['blocks.0.bias'].shape = [-2]; }), /tensor 'blocks\.0\.bias': shape entries must be non-negative integers/],
  ['fractional offsets', header((h) => { h['blocks.0.bias'].data_offsets = [16.5, 24]; }), /tensor 'blocks\.0\.bias': data_offsets must be non-negative integers/],
  ['missing dtype', header((h) => { delete h['blocks.0.bias'].dtype; }), /tensor 'blocks\.0\.bias': missing or non-string "dtype"/],
  ['entry not an object', header((h) => { h['blocks.0.bias'] = [1, 2]; }), /tensor 'blocks\.0\.bias': expected an object with dtype, shape and data_offsets/],
  ['metadata not strings', header((h) => { h.__metadata__ = { a: 1 }; }), /__metadata__ entry 'a' must be a string/],
  ['shape overflowing 64 bits', header((h) => { h['blocks.0.bias'].shape = [2 ** 40, 2 ** 40]; }), /tensor 'blocks\.0\.bias': shape \[1099511627776, 1099511627776\] of F32 needs too many bytes/],
  ['not a checkpoint at all', Buffer.from('hello, this is plainly some text and not a model'), /not a checkpoint: expected safetensors/],
  ['a zip that holds no data.pkl', Buffer.from('PK\x03\x04' + '\0'.repeat(60)), /.+/],
  ['a GGUF file', Buffer.from('GGUF\x03\0\0\0' + '\0'.repeat(32)), /GGUF checkpoints are not supported yet/],
];

for (const [what, bytes, message] of cases) {
  t.test(what, async (t) => {
    const file = write(what.replace(/\W+/g, '_') + '.bin', bytes);
    for (const load of [loadCheckpoint, inspectCheckpoint]) {
      const err = await (load as (p: string) => Promise<unknown>)(file).then(() => undefined, (e) => e);
      t.ok(err instanceof WanError, `${load.name}: a WanError`);
      t.equal(err?.code, 'WAN_BAD_CHECKPOINT', `${load.name}: code`);
      t.ok(err?.message.startsWith(file + ': '), `${load.name}: names the file: ${err?.message}`);
      t.match(err?.message, message, `${load.name}: says what was expected and what came`);
    }
  });
}

t.test('a good file next to the broken ones still loads', async (t) => {
  const { tensors } = await loadSafetensors(write('good.safetensors', good()));
  t.same(toNumbers(tensors.get('blocks.0.weight')!.toTypedArray()), [1, 2, 3, 4]);
});

t.test('a directory and an empty file', async (t) => {
  await t.rejects(loadCheckpoint(dir), { code: 'WAN_IO', message: new RegExp(`${dir}: not a regular file`) });
  await t.rejects(loadCheckpoint(write('empty.safetensors', Buffer.alloc(0))), { code: 'WAN_BAD_CHECKPOINT', message: /found 0 bytes/ });
});
