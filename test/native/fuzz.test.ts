// Fuzzing the checkpoint parsers: mutated safetensors and .pth files must each parse or be
// refused with WAN_BAD_CHECKPOINT; anything else (a crash, a hang, another error) fails.
// The native parser is the one that reads files, run over in-memory bytes.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { WanError } from '../../lib/errors';
import { native } from '../../lib/native';
import { buildSafetensors, fixturesDir, weightsDir } from '../helpers';

const CASES = Number(process.env.WAN_FUZZ_CASES ?? 120_000);

// xorshift32: reproducible, so a failure can be replayed from its case number.
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return (n: number) => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s % n;
  };
}

const seeds: [string, Buffer][] = [
  ['small.safetensors', buildSafetensors({
    a: { dtype: 'F32', shape: [2, 3], bytes: new Uint8Array(24) },
    'b.weight': { dtype: 'BF16', shape: [4], bytes: new Uint8Array(8) },
    c: { dtype: 'F8_E4M3', shape: [0], bytes: new Uint8Array(0) },
  }, { format: 'pt' })],
  ['tiny_umt5_enc.bf16.safetensors', fs.readFileSync(path.join(weightsDir, 'tiny_umt5_enc.bf16.safetensors'))],
  ...['state_dict.pth', 'mixed.pth', 'zip64.pth', 'malicious.pth'].map((f): [string, Buffer] =>
    [f, fs.readFileSync(path.join(fixturesDir, 'pth', f))]),
];

const SPECIAL = [0x00, 0xff, 0x7f, 0x80, 0x7b, 0x7d, 0x22, 0x2c, 0x30, 0x39, 0x5d, 0x5b, 0x28, 0x71, 0x58, 0x2e];

function mutate(seed: Buffer, r: (n: number) => number): Buffer {
  let b = Buffer.from(seed);
  // Mostly edit the first bytes, where headers, pickles and zip directories live.
  const pos = () => (r(4) === 0 ? r(b.length) : r(Math.min(b.length, 512)));
  const edits = 1 + r(4);
  for (let e = 0; e < edits && b.length > 0; e++) {
    switch (r(8)) {
      case 0: b[pos()] ^= 1 << r(8); break;
      case 1: b[pos()] = SPECIAL[r(SPECIAL.length)]; break;
      case 2: b = b.subarray(0, r(b.length + 1)); break;
      case 3: { const p = pos(); b = Buffer.concat([b.subarray(0, p), Buffer.from([r(256), r(256)]), b.subarray(p)]); break; }
      case 4: { const p = pos(); b = Buffer.concat([b.subarray(0, p), b.subarray(p + 1 + r(16))]); break; }
      case 5: if (b.length >= 8) b.writeUInt32LE(r(2 ** 32), 4 * r(2)); break;  // lengths
      case 6: { const p = pos(); b[p] = 0x30 + r(10); break; }                     // digits in JSON
      case 7: if (b.length > 22) b.writeUInt32LE(r(b.length * 2), b.length - 6 - 4 * r(3)); break;  // zip offsets
    }
  }
  return b;
}

t.test(`the parsers survive ${CASES} mutated inputs`, async (t) => {
  const parse = native().parseCheckpointBuffer;
  const r = rng(0x5eed);
  let accepted = 0, rejected = 0;
  const unexpected: string[] = [];
  const start = Date.now();
  for (let i = 0; i < CASES; i++) {
    const [name, seed] = seeds[i % seeds.length];
    const input = mutate(seed, r);
    try {
      parse(input);
      accepted++;
    } catch (err) {
      if (err instanceof WanError && err.code === 'WAN_BAD_CHECKPOINT' && err.message.startsWith('<buffer>: ')) rejected++;
      else if (unexpected.length < 5) unexpected.push(`case ${i} (${name}): ${(err as Error).name} ${(err as WanError).code} ${(err as Error).message}`);
      else unexpected.push('');
    }
  }
  t.same(unexpected, [], 'every failure is a WAN_BAD_CHECKPOINT naming the input');
  t.equal(accepted + rejected + unexpected.length, CASES);
  t.ok(rejected > CASES / 10 && accepted > 0, 'the mutations reach both outcomes');
  t.comment(`fuzz: ${CASES} cases over ${seeds.length} seeds in ${Date.now() - start} ms: ${accepted} parsed, ${rejected} refused`);
});

t.test('unmutated seeds parse', async (t) => {
  for (const [name, seed] of seeds.filter(([n]) => n !== 'malicious.pth'))
    t.ok(native().parseCheckpointBuffer(seed) >= 1, name);
});
