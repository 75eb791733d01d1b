// Bridges an AbortSignal to the engine thread: a shared Int32Array cell that the engine
// polls between units of work (tensors, 64 MiB pages).
import { WanError } from './errors';

export interface AbortBridge {
  flag: Int32Array | undefined;
  done(): void;  // detaches the listener once the operation has settled
}

export function abortedError(): WanError {
  return new WanError('WAN_ABORTED', 'the operation was aborted');
}

export function bridgeAbort(signal: AbortSignal | undefined): AbortBridge {
  if (!signal) return { flag: undefined, done: () => {} };
  if (signal.aborted) throw abortedError();
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const onAbort = () => Atomics.store(flag, 0, 1);
  signal.addEventListener('abort', onAbort, { once: true });
  return { flag, done: () => signal.removeEventListener('abort', onAbort) };
}

// The result of a call whose last unit of work ran past an abort: the engine polls only between
// units, so such a call can finish after all. The caller asked to stop, so it gets
// WAN_ABORTED, as for an abort caught between units; the result is released.
export function unlessAborted<T extends { dispose(): void }>(signal: AbortSignal | undefined, value: T): T {
  if (!signal?.aborted) return value;
  value.dispose();
  throw abortedError();
}
