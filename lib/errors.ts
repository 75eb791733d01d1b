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

// The names of an options interface T, written out once beside the call that checks them; the
// compiler holds the list to exactly T's keys (one missing or one extra fails to compile).
export function optionNames<T>() {
  return <K extends Record<keyof T, true>>(names: K & Record<Exclude<keyof K, keyof T>, never>): readonly string[] =>
    Object.keys(names);
}

// An options argument as a call takes it: absent, or an object with no option the call does not
// know. A misspelt option, or one of the wrapper's that is not implemented here, would
// otherwise change nothing without a word.
export function checkOptionNames(o: unknown, names: readonly string[], what = 'options'): void {
  if (o === undefined) return;
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw invalidOption(`Expected an object for ${what} but received ${describeValue(o)}`);
  const unknown = Object.keys(o).filter((k) => !names.includes(k) && (o as Record<string, unknown>)[k] !== undefined);
  if (unknown.length > 0)
    throw invalidOption(`Expected ${what} among ${names.join(', ')} but received ${unknown.map((k) => `'${k}'`).join(', ')}, ` +
      `which ${unknown.length === 1 ? 'is' : 'are'} not one of them`);
}

/** An option's number, checked to lie in min..max; `fallback` where it is not given. */
export function finiteIn(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max)
    throw invalidOption(`Expected a number in ${min}..${max} for ${name} but received ${describeValue(value)}`);
  return value;
}

/** An option's integer, checked to lie in min..max; `fallback` where it is not given. */
export function integerIn(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max)
    throw invalidOption(`Expected an integer in ${min}..${max} for ${name} but received ${describeValue(value)}`);
  return value as number;
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
