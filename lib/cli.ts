#!/usr/bin/env node
// The `wan-native` command line: generate (lib/cli-generate.ts), demo (generate with the shipped
// demo model, lib/demo.ts), run (lib/workflow.ts), inspect, info.
// Exit codes: 0 done, 1 failed, 2 bad usage, 130 stopped by Ctrl-C (SIGINT), 143 by SIGTERM.
import { CommanderError } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { generateCommand, runGenerate, settingsFrom, UsageError } from './cli-generate';
import { StageView } from './cli-view';
import { demoGenerateArgs, motionPhrase, readDemoSpec, unknownDemoWords } from './demo';
import { inspectCheckpoint, runtimeInfo, WanError } from './index';
import { isDevice, type Device } from './device';
import { runWorkflow } from './workflow';

// The overview (test/native/cli.test.ts pins its lines).
const USAGE = `Usage: wan-native <command> [options]

Commands:
  demo [prompt] [options]   Make a small video with the demo model that ships in the package
  generate [options]        Make a video from a prompt (and images): see generate --help
  run <workflow.json>       Run a ComfyUI WanVideoWrapper workflow: see run --help
  inspect <file> [--json]   Say what a checkpoint holds (reads headers only)
  info                      Show the native backend, libtorch version and threads
`;

const INSPECT_USAGE = `Usage: wan-native inspect <file>... [--json]

Says what each checkpoint holds (family, task, layout, dtypes, quantization and the config
inferred from tensor shapes), reading headers only. Shards are inspected one by one.

Options:
  --json      print the full report as JSON
  -h, --help  show this help
`;

function version(): string {
  // dist/lib/cli.js and lib/cli.ts both sit two folders below the package root.
  const file = path.join(__dirname, '..', '..', 'package.json');
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
}

async function inspect(rest: string[]): Promise<number> {
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(INSPECT_USAGE);
    return 0;
  }
  const unknown = rest.find((a) => a.startsWith('-') && a !== '--json');
  if (unknown) throw new UsageError(`unknown option ${unknown} (wan-native inspect --help lists the options)`, 'inspect');
  const files = rest.filter((a) => !a.startsWith('--'));
  const json = rest.includes('--json');
  if (files.length === 0) {
    process.stderr.write('wan-native inspect: expected a checkpoint file\n' + USAGE);
    return 2;
  }
  for (const file of files) {
    const info = await inspectCheckpoint(file);
    if (json) process.stdout.write(JSON.stringify({ file, ...info }, null, 2) + '\n');
    else process.stdout.write(`${file}\n${info.summary}`);
  }
  return 0;
}

function demoUsage(): string {
  const d = readDemoSpec();
  const list = (xs: string[]) => xs.join(', ');
  return `Usage: wan-native demo [prompt] [generate options]

Makes a ${d.data.size}x${d.data.size}, ${d.data.frames}-frame video with the demo model set that ships in the
package: the Wan2.1 architecture (umT5, DiT, VAE) at a small size, trained by us on clips of
moving shapes (tools/train-demo/README.md). It writes a GIF and an MP4 to ./output.

Prompts read "a <colour> <shape> <motion> on a <background> background", with
  colours      ${list(d.data.colours.map((c) => c.name))}
  shapes       ${list(d.data.shapes)}
  motions      ${list(d.data.motions.map(motionPhrase))}
  backgrounds  ${list(d.data.backgrounds.map((b) => b.name))}
The default is "${d.prompt}", a combination the model never saw in training.
Every generate option works as well (--seed, --steps, --cfg, --output-dir, --format ...).
`;
}

async function demo(rest: string[]): Promise<number> {
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(demoUsage());
    return 0;
  }
  const hasPrompt = rest.length > 0 && !rest[0].startsWith('-');
  const options = hasPrompt ? rest.slice(1) : rest;
  if (hasPrompt && options.some((a) => a === '--prompt' || a.startsWith('--prompt=')))
    throw new UsageError(`two prompts: "${rest[0]}" and --prompt; give one`, 'demo');
  const promptFlag = options.findIndex((a) => a === '--prompt' || a.startsWith('--prompt='));
  const prompt = hasPrompt ? rest[0]
    : promptFlag < 0 ? readDemoSpec().prompt
      : options[promptFlag].startsWith('--prompt=') ? options[promptFlag].slice('--prompt='.length) : options[promptFlag + 1] ?? '';
  const unknown = unknownDemoWords(prompt);
  if (unknown.length > 0)
    process.stderr.write(`wan-native demo: note: the demo model never saw ${unknown.map((w) => `"${w}"`).join(', ')}; ` +
      'it knows the words of wan-native demo --help\n');
  return generate(demoGenerateArgs(prompt, options), 'demo');
}

async function generate(rest: string[], name: 'generate' | 'demo' = 'generate'): Promise<number> {
  const cmd = generateCommand()
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(s),
      outputError: (s, write) => write(`wan-native ${name}: ${s.replace(/^error: /, '')}` +
        `(wan-native ${name} --help lists the options)\n`),
    });
  try {
    cmd.parse(rest, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    throw err;
  }
  const settings = settingsFrom(cmd);

  const view = new StageView({ tty: process.stderr.isTTY === true, quiet: settings.quiet });
  const written: string[] = [];
  return interruptible(view, written, (signal) => runGenerate(settings, {
    argv: ['generate', ...rest], version: version(), signal, view, written,
    output: (line) => process.stdout.write(line + '\n'),
  }));
}

// Ends the process the way `signal` would have without our handlers, so that the shell sees
// 128 + its number (130 for Ctrl-C). Not process.exit: that runs the addon's and libtorch's static
// destructors while a worker thread may still be inside libtorch (a decode chunk, a forward),
// which crashed about half the time when the second Ctrl-C came during the first one's cleanup.
function quitBy(signal: NodeJS.Signals): never {
  process.removeAllListeners(signal);  // Node restores the default action with the last listener
  process.kill(process.pid, signal);
  // Not reached where the signal's default action ends the process (POSIX; Windows terminates).
  process.exit(exitCodeOf(signal));
}

// Runs `body` with Ctrl-C handling: the first SIGINT/SIGTERM aborts every long call through the
// signal and lets the run clean up (no partial output: videoCombine removes what it wrote); the
// second quits at once. Resolves to the exit code.
async function interruptible(view: StageView, written: string[], body: (signal: AbortSignal) => Promise<unknown>): Promise<number> {
  const controller = new AbortController();
  let stoppedBy: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stoppedBy) {
      view.stopBar();
      process.stderr.write('wan-native: stopped at once\n');
      quitBy(signal);
    }
    stoppedBy = signal;
    view.stopBar();
    process.stderr.write(`\nwan-native: stopping... (${signal === 'SIGINT' ? 'Ctrl-C' : signal} again to quit at once)\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await body(controller.signal);
    return 0;
  } catch (err) {
    if (stoppedBy) {
      // Files are complete or absent: a format written before the stop is kept, and said so.
      process.stderr.write(written.length === 0 ? 'wan-native: stopped; nothing was written\n'
        : `wan-native: stopped; kept what was complete before:\n${written.map((f) => `  ${f}\n`).join('')}`);
      return exitCodeOf(stoppedBy);
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

const RUN_USAGE = `Usage: wan-native run <workflow.json> [options]

Runs a ComfyUI workflow (API format, or the UI format where its widgets map unambiguously)
built from WanVideoWrapper and VideoHelperSuite nodes. Model names in the workflow are looked
up in the --models folders (as a relative path, then by file name anywhere below them).

Options:
  --models <dir>       a folder holding checkpoints, LoRAs and input images; repeatable
  --output-dir <dir>   where Video Combine writes (default ./output)
  --device <name>      where the models compute: auto (default: the GPU when this
                       build sees one), cpu, cuda or cuda:N
  -q, --quiet          no progress
  -h, --help           show this help
`;

async function run(rest: string[]): Promise<number> {
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(RUN_USAGE);
    return 0;
  }
  const models: string[] = [];
  let outputDir: string | undefined, file: string | undefined, device: Device | undefined, quiet = false;
  for (let i = 0; i < rest.length; ++i) {
    const a = rest[i];
    if (a === '--models' || a === '--output-dir') {
      const value = rest[++i];
      if (value === undefined) throw new UsageError(`${a} expects a folder`, 'run');
      if (a === '--models') models.push(value); else outputDir = value;
    } else if (a === '--device') {
      const value = rest[++i];
      if (!isDevice(value))
        throw new UsageError(`--device expects auto, cpu, cuda or cuda:N but received ${value === undefined ? 'nothing' : `"${value}"`}`, 'run');
      device = value;
    } else if (a === '-q' || a === '--quiet') {
      quiet = true;
    } else if (a.startsWith('-')) {
      throw new UsageError(`unknown option ${a} (wan-native run --help lists the options)`, 'run');
    } else if (file === undefined) {
      file = a;
    } else {
      throw new UsageError(`expected one workflow file but received ${file} and ${a}`, 'run');
    }
  }
  if (file === undefined) throw new UsageError('expected a workflow file (wan-native run --help)', 'run');
  if (models.length === 0) models.push(process.cwd());
  const view = new StageView({ tty: process.stderr.isTTY === true, quiet });
  const written: string[] = [];
  return interruptible(view, written, async (signal) => {
    const result = await runWorkflow(file!, {
      modelDirs: models, outputDir, signal, device,
      onNodeStart: (id, classType) => { view.stopBar(); view.note(`node ${id} (${classType})`); },
      onProgress: (e) => { if (e.progress) view.progress(e.progress, e.progress.stage === 'sample' ? 'step' : 'frame'); },
    });
    view.stopBar();
    for (const warning of result.warnings) process.stderr.write(`wan-native run: note: ${warning}\n`);
    for (const { files } of Object.values(result.outputs)) for (const f of files ?? []) { written.push(f); process.stdout.write(`${f}\n`); }
  });
}

function exitCodeOf(signal: NodeJS.Signals): number {
  return signal === 'SIGTERM' ? 143 : 130;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'generate':
      return generate(rest);
    case 'demo':
      return demo(rest);
    case 'run':
      return run(rest);
    case 'inspect':
      return inspect(rest);
    case 'info':
      if (rest.length > 0) throw new UsageError(`takes no arguments but received ${rest.join(' ')}`, 'info');
      process.stdout.write(JSON.stringify(runtimeInfo(), null, 2) + '\n');
      return 0;
    case 'help':
      if (rest[0] === 'generate') return generate(['--help']);
      if (rest[0] === 'demo') return demo(['--help']);
      if (rest[0] === 'inspect') return inspect(['--help']);
      if (rest[0] === 'run') return run(['--help']);
      process.stdout.write(USAGE);
      return 0;
    case '-V':
    case '--version':
      process.stdout.write(`${version()}\n`);
      return 0;
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`wan-native: unknown command "${command}"\n` + USAGE);
      return 2;
  }
}

// Output piped into a reader that stops early (`wan-native generate --help | head`) closes
// stdout: what is left to print is dropped rather than thrown as an uncaught EPIPE.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err;
});

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    if (err instanceof UsageError) {
      process.stderr.write(`wan-native ${err.command}: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    const code = err instanceof WanError ? ` [${err.code}]` : '';
    process.stderr.write(`wan-native: ${err instanceof Error ? err.message : String(err)}${code}\n`);
    process.exitCode = 1;
  },
);
