// Where a model computes (the wrapper's main_device): the CPU, or a GPU when the addon was built
// against a CUDA libtorch and the machine has one.
import { describeValue, invalidOption } from './errors';
import { native } from './native';

/** 'cpu', 'cuda' (GPU 0), 'cuda:N', or 'auto': the first GPU where there is one, else the CPU. */
export type Device = 'cpu' | 'cuda' | 'auto' | `cuda:${number}`;

/** Whether `value` names a device ('cpu', 'cuda', 'cuda:N' or 'auto'); the command line checks with it too. */
export function isDevice(value: unknown): value is Device {
  return typeof value === 'string' && /^(cpu|cuda|auto|cuda:\d{1,3})$/.test(value);
}

export function checkDevice(value: unknown, what = 'device'): void {
  if (!isDevice(value))
    throw invalidOption(`Expected 'cpu', 'cuda', 'cuda:N' or 'auto' for ${what} but received ${describeValue(value)}`);
}

/** The device name the addon takes: 'auto' resolved. Whether the GPU exists is checked natively. */
export function resolveDevice(device: Device | undefined): string {
  if (device !== 'auto') return device ?? 'cpu';
  return native().runtimeInfo().cuda ? 'cuda' : 'cpu';
}
