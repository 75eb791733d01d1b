// The package as an application sees it: require() and import of 'wan-native'.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { repoRoot } from '../helpers';

function node(args: string[]) {
  return spawnSync(process.execPath, args, { cwd: repoRoot, encoding: 'utf8' });
}

t.test('require("wan-native") gives the API', async (t) => {
  const r = node(['-e', `const w = require('wan-native');
    console.log(typeof w.loadSafetensors, typeof w.Tensor.fromTypedArray, typeof w.inspectCheckpoint, w.runtimeInfo().backend)`]);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout.trim(), 'function function function cpu');
});

t.test('import * as wan from "wan-native" gives the same named exports', async (t) => {
  const r = node(['--input-type=module', '-e', `import * as wan from 'wan-native';
    import { Tensor, WanError } from 'wan-native';
    const x = Tensor.fromTypedArray(new Float32Array([1, 2]), [2]);
    console.log(Object.keys(wan).filter((k) => k !== 'default' && k !== '__esModule').sort().join(','), x.shape.join('x'), new WanError('WAN_IO', 'm').code)`]);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout.trim(),
    'ATTENTION_MODES,ClipVisionEncoder,DEFAULT_NEGATIVE_PROMPT,DTYPES,LOAD_VIDEO_FORMATS,PLAN_DEVICES,QUANTIZATIONS,SCHEDULER_NAMES,Sampler,Tensor,TextEncoder,VIDEO_FORMATS,Vae,WanError,WanModel,' +
    'cacheVariant,emptyEmbeds,imageToVideoEncode,inspectCheckpoint,loadCheckpoint,loadImage,loadSafetensors,loadVideo,outputCounter,parseWorkflow,planMemory,' +
    'prepareOutput,promptWeights,riflexFrequencies,runWorkflow,runtimeInfo,' +
    'saveSafetensors,schedule,setThreads,videoCombine 2 WAN_IO');
});

t.test("the shipped declarations compile in a strict project that checks libraries (no skipLibCheck)", async (t) => {
  // dist/lib/*.d.ts import '../types/native': it must be in dist, typed (not a missing module
  // that degrades the classes using it to any).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wan-consumer-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'main.ts'), `import * as wan from ${JSON.stringify(path.join(repoRoot, 'dist', 'lib', 'index'))};
export async function f(): Promise<number> {
  const enc = await wan.TextEncoder.load('x.safetensors');
  // @ts-expect-error: a field the config does not have
  void enc.config.noSuchField;
  return enc.config.textLen;
}
`);
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, skipLibCheck: false, noEmit: true, module: 'node16', moduleResolution: 'node16', target: 'ES2022',
      lib: ['ES2022', 'ESNext.Disposable'], types: ['node'], typeRoots: [path.join(repoRoot, 'node_modules', '@types')] },
    files: ['main.ts'],
  }));
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout + r.stderr);
});

t.test('a missing native binary is one clear error listing what was tried', async (t) => {
  const r = spawnSync(process.execPath, ['-e', `try { require('wan-native').runtimeInfo() } catch (e) { console.log(e.code); console.log(e.message) }`],
    { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, WAN_NATIVE_BINARY: '/nonexistent/wan_native.node' } });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^WAN_NATIVE_LOAD\n/);
  t.match(r.stdout, /could not load its native addon for linux-x64 \(backends tried: WAN_NATIVE_BINARY\)/);
  t.match(r.stdout, /- \/nonexistent\/wan_native\.node: Cannot find module/);
  t.match(r.stdout, /npm run build:native/);
});
