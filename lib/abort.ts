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
