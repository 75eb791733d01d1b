#!/usr/bin/env node
// The `wan-native` command line.
import { inspectCheckpoint, runtimeInfo, WanError } from './index';

const USAGE = `Usage: wan-native <command> [options]

Commands:
  inspect <file> [--json]   Say what a checkpoint holds (reads headers only)
  info                      Show the native backend, libtorch version and threads
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'inspect': {
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
    case 'info':
      process.stdout.write(JSON.stringify(runtimeInfo(), null, 2) + '\n');
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

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    const code = err instanceof WanError ? ` [${err.code}]` : '';
    process.stderr.write(`wan-native: ${err instanceof Error ? err.message : String(err)}${code}\n`);
    process.exitCode = 1;
  },
);
