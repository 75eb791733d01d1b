// WanError: every failure the package reports, with a stable machine-readable code.

export type WanErrorCode =
  | 'WAN_BAD_CHECKPOINT'  // a file that is not a valid checkpoint (names the file and tensor)
  | 'WAN_INVALID_OPTION'  // an argument outside what is accepted (names the option)
  | 'WAN_INVALID_TENSOR'  // a tensor of the wrong dtype, shape or state (disposed)
  | 'WAN_IO'              // the operating system refused: missing file, permissions, disk full
  | 'WAN_OUT_OF_MEMORY'
  | 'WAN_ABORTED'         // the caller's AbortSignal fired
  | 'WAN_TORCH'           // libtorch rejected an operation
  | 'WAN_NATIVE_LOAD'     // no native binary could be loaded
  | 'WAN_INTERNAL';       // a bug in wan-native

export class WanError extends Error {
  readonly code: WanErrorCode;
  constructor(code: WanErrorCode | string, message: string) {
    super(message);
    this.name = 'WanError';
    this.code = code as WanErrorCode;
  }
}

export function invalidOption(message: string): WanError {
  return new WanError('WAN_INVALID_OPTION', message);
}

// Describes a received value for messages: `"x" of type string`, `[1,2] of type array`.
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (typeof value === 'string') return `"${value.length > 60 ? value.slice(0, 60) + '...' : value}" of type string`;
  if (typeof value === 'object') return `an object of type ${value.constructor?.name ?? 'Object'}`;
  return `${String(value)} of type ${typeof value}`;
}

// Native errors are re-thrown from the caller's frame, as sharp does, so that a stack trace
// points at the user's code and not at the promise machinery.
export async function withCallerStack<T>(promise: Promise<T>, caller: Error): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    if (err instanceof Error && caller.stack) {
      err.stack = `${err.name}: ${err.message}\n${caller.stack.split('\n').slice(1).join('\n')}`;
    }
    throw err;
  }
}
