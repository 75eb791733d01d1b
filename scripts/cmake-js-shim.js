#!/usr/bin/env node
// prebuildify runs `node-gyp rebuild --target=X --devdir=D --arch=A --release`; our build of
// record is cmake-js, so translate. (cmake-js's own --target names a CMake target, not a
// Node version, so arguments cannot be passed through.) WAN_CMAKE_<NAME>=value becomes a
// CMake definition, e.g. WAN_CMAKE_Torch_DIR=/path.
const { spawnSync } = require('node:child_process');

const args = process.argv.slice(2);
const value = (name) => (args.find((a) => a.startsWith(`--${name}=`)) || '').split('=')[1];
const out = ['rebuild', '--out', 'build', '--arch', value('arch') || process.arch];
if (args.includes('--debug')) out.push('--debug');
for (const [k, v] of Object.entries(process.env)) if (k.startsWith('WAN_CMAKE_')) out.push(`--CD${k.slice(10)}=${v}`);
const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), ...out], { stdio: 'inherit' });
process.exit(r.status ?? 1);
