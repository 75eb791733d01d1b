// The `wan-native` command line (dist/lib/cli.js), run as a user runs it: a child process,
// checked on its exit code, stdout and stderr.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { inspectCheckpoint, runtimeInfo } from '../../lib/index';
import { repoRoot, weightsDir } from '../helpers';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli.js');
const tinyT2v = path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors');
const tinyVae = path.join(weightsDir, 'tiny_vae.bf16.safetensors');

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return r;
}

const USAGE = /^Usage: wan-native <command> \[options\]\n\nCommands:\n  demo \[prompt\] \[options\] .*\n  generate \[options\] .*\n  run <workflow.json> .*\n  inspect <file> \[--json\].*\n  info .*\n$/;

t.test('inspect prints the file and its summary', async (t) => {
  const r = run('inspect', tinyT2v);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stderr, '');
  const lines = r.stdout.split('\n');
  t.equal(lines[0], tinyT2v, 'the first line names the file');
  t.match(lines[1], /^model\s+wan-dit \(tiny, t2v\)$/, 'then the model: family wan-dit, task t2v');
  t.match(r.stdout, /^layout\s+official$/m);
  t.match(r.stdout, /^tensors\s+69$/m);
  t.match(r.stdout, /^parameters\s+161,536 \(161\.5 K\)$/m);
  t.match(r.stdout, /^dtypes\s+bf16 x69$/m);
  t.match(r.stdout, /^ {2}dim\s+64$/m);
  const info = await inspectCheckpoint(tinyT2v);
  t.equal(r.stdout, `${tinyT2v}\n${info.summary}`, 'exactly the summary inspectCheckpoint gives');
});

t.test('inspect several files, one after the other', async (t) => {
  const r = run('inspect', tinyT2v, tinyVae);
  t.equal(r.status, 0, r.stderr);
  const [a, b] = [await inspectCheckpoint(tinyT2v), await inspectCheckpoint(tinyVae)];
  t.equal(r.stdout, `${tinyT2v}\n${a.summary}${tinyVae}\n${b.summary}`);
  t.match(b.summary, /^model\s+wan-vae \(wan2\.1\)$/m);
});

t.test('inspect --json prints the CheckpointInfo as JSON', async (t) => {
  const r = run('inspect', tinyT2v, '--json');
  t.equal(r.status, 0, r.stderr);
  const parsed = JSON.parse(r.stdout);
  t.equal(parsed.file, tinyT2v);
  t.equal(parsed.family, 'wan-dit');
  t.equal(parsed.variant, 'tiny');
  t.equal(parsed.task, 't2v');
  t.equal(parsed.layout, 'official');
  t.equal(parsed.quantization, 'none');
  t.equal(parsed.numTensors, 69);
  t.equal(parsed.numParams, 161536);
  t.strictSame(parsed.dtypes, { bf16: 69 });
  t.match(parsed.config, { dim: 64, in_dim: 16, out_dim: 16, ffn_dim: 128, text_dim: 32, num_layers: 2 });
  t.strictSame(parsed, { file: tinyT2v, ...(await inspectCheckpoint(tinyT2v)) }, 'the same object inspectCheckpoint gives');
  // The flag may come first too.
  const r2 = run('inspect', '--json', tinyT2v);
  t.equal(r2.status, 0, r2.stderr);
  t.equal(r2.stdout, r.stdout);
});

t.test('a missing file exits 1 naming the file and the error code', async (t) => {
  const missing = path.join(repoRoot, 'no-such-dir', 'missing.safetensors');
  const r = run('inspect', missing);
  t.equal(r.status, 1);
  t.equal(r.stdout, '');
  t.match(r.stderr, /^wan-native: /);
  t.ok(r.stderr.includes(missing), `stderr names the file: ${r.stderr.trim()}`);
  t.match(r.stderr, /\[WAN_IO\]\n$/);
});

t.test('a file that is no checkpoint exits 1 with WAN_BAD_CHECKPOINT', async (t) => {
  const notCheckpoint = path.join(weightsDir, 'tiny_t2v_dit.config.json');
  t.ok(fs.existsSync(notCheckpoint));
  const r = run('inspect', notCheckpoint);
  t.equal(r.status, 1);
  t.equal(r.stdout, '');
  t.ok(r.stderr.includes(notCheckpoint), `stderr names the file: ${r.stderr.trim()}`);
  t.match(r.stderr, /\[WAN_BAD_CHECKPOINT\]\n$/);
});

t.test('usage errors exit 2', async (t) => {
  const none = run();
  t.equal(none.status, 2, 'no arguments');
  t.match(none.stdout, USAGE, 'no arguments: usage');

  const noFile = run('inspect');
  t.equal(noFile.status, 2, 'inspect without a file');
  t.equal(noFile.stdout, '');
  t.match(noFile.stderr, /^wan-native inspect: expected a checkpoint file\nUsage: wan-native/);

  const unknown = run('frobnicate');
  t.equal(unknown.status, 2, 'unknown command');
  t.equal(unknown.stdout, '');
  t.match(unknown.stderr, /^wan-native: unknown command "frobnicate"\nUsage: wan-native/);

  for (const flag of ['--help', '-h']) {
    const help = run(flag);
    t.equal(help.status, 0, `${flag} exits 0`);
    t.match(help.stdout, USAGE, `${flag}: usage`);
    t.equal(help.stderr, '');
  }

  // Every command refuses what it does not know, naming itself (demo is not 'generate').
  const cases: [string[], string][] = [
    [['inspect', '--jsn', tinyVae], 'wan-native inspect: unknown option --jsn (wan-native inspect --help lists the options)\n'],
    [['info', '--bogus'], 'wan-native info: takes no arguments but received --bogus\n'],
    [['demo', '--bogus'], "wan-native demo: unknown option '--bogus'\n(wan-native demo --help lists the options)\n"],
    [['demo', 'a red circle moving right on a black background', '--prompt', 'x'],
      'wan-native demo: two prompts: "a red circle moving right on a black background" and --prompt; give one\n'],
  ];
  for (const [args, stderr] of cases) {
    const r = run(...args);
    t.equal(r.status, 2, `${args.join(' ')}: exit 2`);
    t.equal(r.stderr, stderr);
    t.equal(r.stdout, '');
  }
});

t.test('help piped into a reader that stops early ends quietly', async (t) => {
  const r = spawnSync('bash', ['-c', `set -o pipefail; "${process.execPath}" "${cli}" generate --help | head -1`],
    { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  t.equal(r.stdout, 'Usage: wan-native generate --model <file> --t5 <file> --vae <file> --prompt <text> [options]\n');
  t.equal(r.stderr, '', 'no EPIPE stack trace');
  t.equal(r.status, 0);
});

t.test('demo: the shipped model draws the default prompt into a GIF and an MP4; given flags win', async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'wan-cli-demo-'));
  t.teardown(() => fs.rmSync(out, { recursive: true, force: true }));

  const first = run('demo', '--output-dir', out);
  t.equal(first.status, 0, first.stderr);
  t.match(first.stderr, /^wan-native generate: t2v 64x64, 17 frames, 20 steps \(unipc, cfg 5, shift 3, seed 0\)$/m,
    'the settings of models/demo/demo.json');
  const written = fs.readdirSync(out).sort();
  t.strictSame(written.map((f) => path.extname(f)), ['.gif', '.mp4', '.png'], `a GIF, an MP4 and the GIF's first frame with the metadata: ${written}`);
  for (const f of written) t.ok(fs.statSync(path.join(out, f)).size > 1000, `${f} is not empty`);
  t.equal(new Set(written.map((f) => f.replace(/\.\w+$/, ''))).size, 1, `one counter for the run's files: ${written}`);

  const prompt = 'a green circle moving up on a white background';
  const second = run('demo', prompt, '--output-dir', out, '--steps', '4', '--format', 'gif', '--filename-prefix', 'mine');
  t.equal(second.status, 0, second.stderr);
  t.match(second.stderr, /^wan-native generate: t2v 64x64, 17 frames, 4 steps /m, '--steps given replaces the demo\'s 20');
  t.strictSame(second.stdout.trim().split('\n').map((f) => path.basename(f)), ['mine_00001.png', 'mine_00001.gif'],
    '--format and --filename-prefix given replace the demo\'s');
  t.ok(fs.readFileSync(path.join(out, 'mine_00001.png')).includes(prompt), 'the prompt given is the one in the metadata');

  const help = run('demo', '--help');
  t.equal(help.status, 0);
  t.match(help.stdout, /^ {2}colours {6}red, green, blue, yellow, purple, orange, white$/m, 'help lists the words the model knows');
});

t.test('info prints the runtime as JSON', async (t) => {
  const r = run('info');
  t.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  t.strictSame(Object.keys(info).sort(), ['backend', 'cuda', 'threads', 'torchVersion']);
  t.match(info.torchVersion, /^\d+\.\d+\.\d+$/);
  t.ok(Number.isInteger(info.threads) && info.threads >= 1, `threads ${info.threads}`);
  t.type(info.cuda, 'boolean');
  const here = runtimeInfo();
  t.equal(info.backend, here.backend, 'the backend this process loads');
  t.equal(info.torchVersion, here.torchVersion);
  t.equal(info.cuda, here.cuda);
  if (!fs.existsSync('/proc/driver/nvidia/version')) {
    t.equal(info.backend, 'cpu', 'no GPU: the CPU backend');
    t.equal(info.cuda, false, 'no GPU: cuda false');
  } else {
    t.match(info.backend, /^(cpu|cuda\d+x)$/);
  }
});
