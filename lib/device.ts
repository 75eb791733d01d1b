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

/**
 * Where a model's weights are between uses (the wrapper's load_device and force_offload). A model
 * computing on a GPU has its weights there ('main_device') or offloaded to the CPU
 * ('offload_device'), from where its next use brings them back; offloading drops the GPU copies
 * and copies nothing (the CPU keeps the weights as loaded). On the CPU both are the CPU and
 * nothing moves; only the state changes.
 */
export type Placement = 'main_device' | 'offload_device';
export const PLACEMENTS: readonly Placement[] = ['main_device', 'offload_device'];

/** Checks a loader's loadDevice: where the weights go at load (the default, as the wrapper's, is 'offload_device'). */
export function checkLoadDevice(value: unknown): void {
  if (value !== undefined && !PLACEMENTS.includes(value as Placement))
    throw invalidOption(`Expected 'main_device' or 'offload_device' for loadDevice but received ${describeValue(value)}`);
}

/** Checks a stage's forceOffload: whether the model is offloaded when the stage ends (default true, as the wrapper's). */
export function checkForceOffload(value: unknown): void {
  if (value !== undefined && typeof value !== 'boolean')
    throw invalidOption(`Expected a boolean for forceOffload but received ${describeValue(value)}`);
}

/** Runs a stage of a model, then, when `forceOffload` is true (the default), offloads the model,
 * whether the stage succeeded or failed, as the wrapper's force_offload frees the GPU. */
export async function offloadingAfter<T>(forceOffload: boolean | undefined, model: { offload(): Promise<void> },
                                         stage: () => Promise<T>): Promise<T> {
  checkForceOffload(forceOffload);
  try {
    return await stage();
  } finally {
    if (forceOffload ?? true) await model.offload();
  }
}
