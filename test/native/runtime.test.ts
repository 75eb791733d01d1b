// What the loaded addon was built with, on a machine without a GPU.
import t from 'tap';

import { runtimeInfo, setThreads } from '../../lib/index';

const info = runtimeInfo();

t.test('a CPU build says so', { skip: info.cuda ? 'CUDA present' : false }, async (t) => {
  t.equal(info.backend, 'cpu');
  t.equal(info.cuda, false);
  t.ok(info.threads >= 1, `${info.threads} libtorch threads`);
  t.match(info.torchVersion, /^\d+\.\d+\.\d+$/);
});

t.test('setThreads changes libtorch threads and checks its argument', async (t) => {
  const before = runtimeInfo().threads;
  setThreads(1);
  t.equal(runtimeInfo().threads, 1);
  setThreads(before);
  t.equal(runtimeInfo().threads, before);
  t.throws(() => setThreads(0), { code: 'WAN_INVALID_OPTION', message: 'Expected a positive integer for threads but received 0 of type number' });
});
