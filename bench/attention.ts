// Attention benchmark (`node dist/bench/attention.js`, after `npx tsc -p tsconfig.json`).
//
// Self-attention at the head layout of Wan2.1 1.3B (B = 1, H = 12, D = 128, f32 inputs drawn
// from N(0, 1)) for L = 1024, 2048, 4096, 8192:
//   - time: 'sdpa' (on libtorch 1.13 the chunked float32 math of ops::attention_math), 'flash'
//     and 'sageattn', in interleaved rounds (the order rotates each round); the median of the
//     rounds is reported, as this VM's speed swings with host load (native-notes.md).
//   - memory: each (mode, L) runs once more in a fresh child process (this script with
//     `--child mode L`), which reads VmHWM from /proc/self/status before and after the call,
//     having reset it (`5` into /proc/self/clear_refs) once the inputs exist; the growth is
//     the peak resident memory the call added, its f32 output [1, L, 12, 128] included.
//
// Options: --lengths 1024,2048 (default 1024,2048,4096,8192), --rounds N (default 3).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

import { runtimeInfo, Tensor } from '../lib/index';
import { attention, AttentionMode } from '../lib/ops';
import { normals } from '../test/helpers';
import { procStatusKiB } from './machine';

const H = 12, D = 128;
const MODES: AttentionMode[] = ['sdpa', 'flash', 'sageattn'];
const MiB = 1024 * 1024;

function inputs(L: number): [Tensor, Tensor, Tensor] {
  const shape = [1, L, H, D];
  const n = L * H * D;
  return [1, 2, 3].map((seed) => Tensor.fromTypedArray(normals(n, seed), shape)) as [Tensor, Tensor, Tensor];
}


function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// ------------------------------------------------------------------ child: one call, its peak

interface ChildResult { mode: string; L: number; ms: number; baseMiB: number; peakMiB: number; growthMiB: number; reset: boolean }

function child(mode: AttentionMode, L: number): void {
  const [q, k, v] = inputs(L);
  attention(...inputs(64), mode).dispose();  // first-call set-up (thread pool) is not the call's memory
  let reset = true;
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    reset = false;  // then VmHWM before the call may already exceed the resident set
  }
  const base = procStatusKiB(reset ? 'VmHWM' : 'VmRSS');
  const t0 = process.hrtime.bigint();
  const out = attention(q, k, v, mode);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const peak = procStatusKiB('VmHWM');
  out.dispose();
  const result: ChildResult = { mode, L, ms, baseMiB: base / 1024, peakMiB: peak / 1024, growthMiB: (peak - base) / 1024, reset };
  process.stdout.write(JSON.stringify(result) + '\n');
}

// ------------------------------------------------------------------ parent

function parseArgs(): { lengths: number[]; rounds: number } {
  const args = process.argv.slice(2);
  const get = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const lengths = (get('--lengths') ?? '1024,2048,4096,8192').split(',').map(Number);
  const rounds = Number(get('--rounds') ?? 3);
  if (!lengths.every((n) => Number.isSafeInteger(n) && n > 0) || !(Number.isSafeInteger(rounds) && rounds > 0))
    throw new Error('usage: node dist/bench/attention.js [--lengths 1024,2048,...] [--rounds N]');
  return { lengths, rounds };
}

function fmt(x: number, digits = 0): string {
  return x.toFixed(digits);
}

function main(): void {
  const { lengths, rounds } = parseArgs();
  const info = runtimeInfo();
  console.log(`# bench/attention: B=1 H=${H} D=${D} f32, ${rounds} interleaved rounds, median`);
  console.log(`# ${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ` +
              `node ${process.version}, libtorch ${info.torchVersion} (${info.backend}), ${info.threads} threads`);
  console.log('# sdpa = libtorch SDPA where it exists (>= 2.1); on 1.13 the chunked float32 math (attention_math)');

  const times = new Map<string, number[]>();
  for (const L of lengths) {
    const [q, k, v] = inputs(L);
    for (let r = 0; r < rounds; r++) {
      const order = MODES.map((_, i) => MODES[(i + r) % MODES.length]);
      for (const mode of order) {
        const t0 = process.hrtime.bigint();
        attention(q, k, v, mode).dispose();
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        const key = `${mode}:${L}`;
        times.set(key, [...(times.get(key) ?? []), ms]);
        console.log(`#   L=${L} round ${r + 1} ${mode}: ${fmt(ms)} ms`);
      }
    }
    q.dispose();
    k.dispose();
    v.dispose();
  }

  const memory = new Map<string, ChildResult>();
  for (const L of lengths)
    for (const mode of MODES) {
      const out = execFileSync(process.execPath, [__filename, '--child', mode, String(L)], {
        encoding: 'utf8', env: process.env, maxBuffer: 1 << 20,
      });
      const result = JSON.parse(out.trim().split('\n').pop()!) as ChildResult;
      memory.set(`${mode}:${L}`, result);
      console.log(`#   child L=${L} ${mode}: ${fmt(result.ms)} ms, peak RSS ${fmt(result.baseMiB)} -> ${fmt(result.peakMiB)} MiB` +
                  (result.reset ? '' : ' (VmHWM could not be reset; base is VmRSS)'));
    }

  const t = (mode: string, L: number) => median(times.get(`${mode}:${L}`)!);
  const m = (mode: string, L: number) => memory.get(`${mode}:${L}`)!.growthMiB;
  const gflops = (mode: string, L: number) => (4 * L * L * D * H) / (t(mode, L) * 1e6);

  console.log('\n| L | sdpa ms | flash ms | sageattn ms | flash / sdpa | sageattn / sdpa | GFLOP/s sdpa / flash / sage |');
  console.log('|--:|--:|--:|--:|--:|--:|--:|');
  for (const L of lengths)
    console.log(`| ${L} | ${fmt(t('sdpa', L))} | ${fmt(t('flash', L))} | ${fmt(t('sageattn', L))} | ` +
                `${fmt(t('flash', L) / t('sdpa', L), 2)} | ${fmt(t('sageattn', L) / t('sdpa', L), 2)} | ` +
                `${fmt(gflops('sdpa', L))} / ${fmt(gflops('flash', L))} / ${fmt(gflops('sageattn', L))} |`);

  console.log('\n| L | output MiB | peak RSS growth sdpa MiB | flash MiB | sageattn MiB | sdpa / flash |');
  console.log('|--:|--:|--:|--:|--:|--:|');
  for (const L of lengths)
    console.log(`| ${L} | ${fmt((L * H * D * 4) / MiB, 1)} | ${fmt(m('sdpa', L), 1)} | ${fmt(m('flash', L), 1)} | ` +
                `${fmt(m('sageattn', L), 1)} | ${fmt(m('sdpa', L) / m('flash', L), 1)} |`);

  if (lengths.length > 1) {
    console.log('\n| L -> 2L | growth ratio sdpa | flash | sageattn | (linear: 2, quadratic: 4) |');
    console.log('|--|--:|--:|--:|--|');
    for (let i = 1; i < lengths.length; i++) {
      const [a, b] = [lengths[i - 1], lengths[i]];
      console.log(`| ${a} -> ${b} | ${fmt(m('sdpa', b) / m('sdpa', a), 2)} | ${fmt(m('flash', b) / m('flash', a), 2)} | ` +
                  `${fmt(m('sageattn', b) / m('sageattn', a), 2)} | |`);
    }
  }
}

if (process.argv[2] === '--child') child(process.argv[3] as AttentionMode, Number(process.argv[4]));
else main();
