// Finds and loads the native addon. node-gyp-build cannot tell a CUDA build from a CPU build
// (it ignores unknown tags), so the backend choice is ours, as in sharp and node-llama-cpp:
//   1. WAN_NATIVE_BINARY, an explicit path;
//   2. prebuilds/<platform>-<arch>/wan-native.<backend>.*.node for each usable backend,
//      CUDA first when an NVIDIA driver is present (WAN_BACKEND=cpu|cuda12x|cuda13x forces one);
//   3. whatever node-gyp-build resolves: untagged prebuilds, then the local build/Release.
// Every failure is collected into one error that says what was tried and how to build.
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { NativeAddon } from '../types/native';
import { WanError } from './errors';

export const packageRoot = path.resolve(__dirname, '..', '..');

function cudaDriverPresent(): boolean {
  return fs.existsSync('/proc/driver/nvidia/version');
}

export function preferredBackends(): string[] {
  const forced = process.env.WAN_BACKEND;
  if (forced) return [forced];
  return cudaDriverPresent() ? ['cuda13x', 'cuda12x', 'cpu'] : ['cpu'];
}

function prebuiltCandidates(): string[] {
  const dir = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
  let files: string[] = [];
  try {
    files = fs.readdirSync(dir).filter((f) => f.endsWith('.node'));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const backend of preferredBackends()) {
    for (const f of files) if (f.split('.').includes(backend)) out.push(path.join(dir, f));
  }
  return out;
}

function loadAddon(): NativeAddon {
  const tried: string[] = [];
  const attempt = (file: string): NativeAddon | undefined => {
    try {
      return require(file) as NativeAddon;
    } catch (err) {
      tried.push(`- ${file}: ${(err as Error).message.split('\n')[0]}`);
      return undefined;
    }
  };
  const explicit = process.env.WAN_NATIVE_BINARY;
  if (explicit) {
    const addon = attempt(path.resolve(explicit));
    if (addon) return addon;
  } else {
    for (const file of prebuiltCandidates()) {
      const addon = attempt(file);
      if (addon) return addon;
    }
    let resolved: string | undefined;
    try {
      resolved = require('node-gyp-build').path(packageRoot) as string;
    } catch (err) {
      tried.push(`- node-gyp-build in ${packageRoot}: ${(err as Error).message.split('\n')[0]}`);
    }
    if (resolved) {
      const addon = attempt(resolved);
      if (addon) return addon;
    }
  }
  throw new WanError(
    'WAN_NATIVE_LOAD',
    [
      `wan-native could not load its native addon for ${process.platform}-${process.arch} ` +
        `(backends tried: ${explicit ? 'WAN_NATIVE_BINARY' : preferredBackends().join(', ')}).`,
      ...tried,
      'To build it from source (needs cmake, a C++17 compiler and libtorch; on Debian run',
      `scripts/setup.sh): cd ${packageRoot} && npm run build:native`,
      'libtorch is found through WAN_LIBTORCH, an installed Python torch, or Debian libtorch-dev.',
    ].join('\n'),
  );
}

let cached: NativeAddon | undefined;

// Loads on first use, so that importing the package costs nothing until it is used
// (libtorch's start-up takes about half a second).
export function native(): NativeAddon {
  if (!cached) {
    const addon = loadAddon();
    addon.setErrorClass(WanError);
    cached = addon;
  }
  return cached;
}
