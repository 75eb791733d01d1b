#!/usr/bin/env node
// Makes prebuilds/<platform>-<arch>/wan-native.<backend>.glibc.node for the libtorch this
// machine builds against (cpu, cuda12x, cuda13x). prebuildify knows nothing of backends, so
// the binary it produces is renamed with the backend the addon reports; lib/native.ts picks
// among the backends at load time.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const run = spawnSync(process.execPath, [
  require.resolve('prebuildify/bin.js'), '--napi', '--strip', '--tag-libc',
  '--node-gyp', path.join(__dirname, 'cmake-js-shim.js'),
], { cwd: root, stdio: 'inherit' });
if (run.status !== 0) process.exit(run.status ?? 1);

const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const built = fs.readdirSync(dir).filter((f) => f.endsWith('.node') && f.split('.').length === 3);
for (const file of built) {
  const full = path.join(dir, file);
  const backend = require(full).runtimeInfo().backend;
  const [name, ...tags] = file.split('.');
  const target = path.join(dir, [name, backend, ...tags].join('.'));
  fs.renameSync(full, target);
  console.log(`prebuild: ${path.relative(root, target)}`);
}
