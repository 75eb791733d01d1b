// Tensor: a libtorch tensor owned by the addon, seen from JS.
import type { NativeTensor } from '../types/native';
import { describeValue, invalidOption, WanError } from './errors';
import { native } from './native';

export type DType =
  | 'f64' | 'f32' | 'f16' | 'bf16' | 'f8_e4m3fn' | 'f8_e5m2'
  | 'i64' | 'i32' | 'i16' | 'i8' | 'u8' | 'bool';

export const DTYPES: readonly DType[] = [
  'f64', 'f32', 'f16', 'bf16', 'f8_e4m3fn', 'f8_e5m2', 'i64', 'i32', 'i16', 'i8', 'u8', 'bool',
];

export type TensorData =
  | Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array
  | Uint8Array | Uint16Array;

// Which dtypes each array type can carry without conversion (Uint16Array: raw f16/bf16 bits;
// Uint8Array: bytes, booleans or fp8 codes).
const NATURAL: Record<string, DType | undefined> = {
  Float32Array: 'f32', Float64Array: 'f64', Int32Array: 'i32', BigInt64Array: 'i64',
  Int16Array: 'i16', Int8Array: 'i8', Uint8Array: 'u8',
};

const kNative = Symbol('wan.nativeTensor');

export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && (DTYPES as readonly string[]).includes(value);
}

export class Tensor {
  readonly shape: number[];
  readonly dtype: DType;
  private readonly [kNative]: NativeTensor;

  /** @internal Tensors come from fromTypedArray, checkpoints and models. */
  constructor(handle: NativeTensor) {
    this[kNative] = handle;
    this.shape = handle.shape();
    this.dtype = handle.dtype() as DType;
    // Read-only at run time too, as the type says: a changed shape would misdescribe the data.
    Object.freeze(this.shape);
    Object.defineProperty(this, 'shape', { writable: false });
    Object.defineProperty(this, 'dtype', { writable: false });
  }

  /**
   * Wraps typed-array data. When the array already holds `dtype`'s bytes (Float32Array as
   * f32, Uint8Array as u8 or fp8 codes, Uint16Array as f16/bf16 bits, ...) the tensor shares
   * its memory, which is kept alive as long as the tensor; do not modify the array while an
   * operation using the tensor is running. Otherwise the values are converted (a copy).
   */
  static fromTypedArray(data: TensorData, shape: number[], dtype?: DType): Tensor {
    if (!ArrayBuffer.isView(data) || data instanceof DataView)
      throw invalidOption(`Expected a typed array for data but received ${describeValue(data)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw invalidOption(`Expected an array of non-negative integers for shape but received ${describeValue(shape)}`);
    const kind = data.constructor.name;
    const resolved = dtype ?? NATURAL[kind];
    if (resolved === undefined)
      throw invalidOption(`Expected a dtype ('f16' or 'bf16') for the raw bits of a ${kind}`);
    if (!isDType(resolved))
      throw invalidOption(`Expected one of ${DTYPES.join(', ')} for dtype but received ${describeValue(resolved)}`);
    const numel = shape.reduce((a, b) => a * b, 1);
    if (numel !== data.length)
      throw invalidOption(`Expected data of ${numel} elements for shape [${shape.join(', ')}] but received ${data.length}`);
    return new Tensor(native().tensorFromTypedArray(data, shape, resolved));
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get disposed(): boolean {
    return this[kNative].isDisposed();
  }

  /** A copy of the values: f16, bf16 and fp8 come out as Float32Array, bool as Uint8Array. */
  toTypedArray(): Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array | Uint8Array {
    return this[kNative].toTypedArray();
  }

  /** Frees the native memory now instead of at garbage collection. */
  dispose(): void {
    this[kNative].dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  /** @internal */
  static handle(t: Tensor, what: string): NativeTensor {
    if (!(t instanceof Tensor)) throw new WanError('WAN_INVALID_TENSOR', `${what} is not a Tensor (received ${describeValue(t)})`);
    return t[kNative];
  }
}
