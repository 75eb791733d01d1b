// The contract between csrc/binding (C++) and lib/ (TypeScript): what the addon exports.
// lib/ validates every argument before calling these; the addon re-checks what it must.

export interface NativeTensor {
  shape(): number[];
  dtype(): string;
  toTypedArray(): Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array | Uint8Array;
  dispose(): void;
  isDisposed(): boolean;
}

export interface NativeCheckpointInfo {
  family: string; variant: string; task: string; layout: string; keyPrefix: string;
  quantization: string; dtypes: Record<string, number>; numTensors: number; numParams: number;
  config: Record<string, number>; warnings: string[]; text: string;
}

export interface NativeAddon {
  setErrorClass(cls: new (code: string, message: string) => Error): void;
  setThreads(threads: number): void;
  runtimeInfo(): { backend: string; torchVersion: string; threads: number; cuda: boolean };

  tensorFromTypedArray(data: ArrayBufferView, shape: number[], dtype: string): NativeTensor;

  loadCheckpoint(file: string, options: { populate: boolean }, abortFlag?: Int32Array):
    Promise<{ names: string[]; tensors: NativeTensor[]; metadata: Record<string, string> }>;
  saveSafetensors(path: string, names: string[], tensors: NativeTensor[], metadata: Record<string, string>,
                  abortFlag?: Int32Array): Promise<void>;
  inspectCheckpoint(files: string[]): Promise<NativeCheckpointInfo>;
  parseCheckpointBuffer(bytes: Uint8Array): number;
}
