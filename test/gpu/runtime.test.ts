// GPU checks: they run where the addon was built against a CUDA libtorch and a GPU is
// present, and skip themselves elsewhere (npm test passes with no GPU).
import t from 'tap';

import { runtimeInfo } from '../../lib/index';

const info = runtimeInfo();
const hasGpu = info.cuda;

t.test('a CUDA build reports its backend and sees the GPU', { skip: hasGpu ? false : `no CUDA (backend ${info.backend})` }, async (t) => {
  t.match(info.backend, /^cuda\d+x$/);
  t.ok(info.cuda);
});
