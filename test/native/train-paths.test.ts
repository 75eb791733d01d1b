// The engine's training paths, as tools/train-demo uses them to train the demo model: where
// autograd records, the hand-fused CPU kernels (RMS norm, RoPE, the VAE's in-place norm, SiLU
// and residual) give way to composite ATen ops with a backward (ops::records_grad). The
// trainer's path-check stage runs the VAE and a small DiT, with random weights, both ways and
// reports: the largest difference between the fused and the autograd outputs, and autograd's
// directional derivative of an MSE loss beside a central finite difference (the parameters
// moved in place under the model built once, so it also shows the model reads the tensors the
// optimiser updates).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { repoRoot } from '../helpers';

interface Report { model: string; maxDiff: number; scale: number; autograd: number; finite: number }

const trainer = path.join(repoRoot, 'build', 'wan_train_demo');

t.test('autograd paths equal the fused inference paths, and their gradients are right', (t) => {
  t.ok(fs.existsSync(trainer), `${trainer} is built (CMake builds it whenever tools/train-demo is present)`);
  const r = spawnSync(trainer, ['path-check', '--spec', path.join(repoRoot, 'models', 'demo', 'demo.json')],
    { encoding: 'utf8', timeout: 300_000 });
  t.equal(r.status, 0, `path-check exits 0 (${r.stderr.trim()})`);
  const reports = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Report);
  t.same(reports.map((x) => x.model), ['vae', 'dit']);
  for (const x of reports) {
    // The composite ops reorder float sums at most: 1e-5 of the output's scale.
    t.ok(x.maxDiff <= 1e-5 * x.scale, `${x.model}: fused vs autograd max |diff| ${x.maxDiff} <= 1e-5 x ${x.scale}`);
    // Float32 central differences with step 1e-2 along a 1e-2-scaled direction: 1 % is ample,
    // and a missing or wrong backward misses by far more.
    const rel = Math.abs(x.autograd - x.finite) / Math.max(Math.abs(x.finite), 1e-12);
    t.ok(rel < 0.01, `${x.model}: directional derivative ${x.autograd} vs finite difference ${x.finite} (rel ${rel.toExponential(2)})`);
    t.ok(Math.abs(x.finite) > 1e-6, `${x.model}: the loss moves when the parameters move in place (${x.finite})`);
  }
  t.end();
});
