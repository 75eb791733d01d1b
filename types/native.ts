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

// memoryStats() of every model: its parameters as held, by storage dtype ('f32', 'bf16',
// 'f8_e4m3fn', ...); `swapped` holds the blocks block swap makes ready just in time.
export interface NativeHeldBytes { bytes: number; tensors: number; byDtype: Record<string, number> }
export interface NativeMemoryStats { resident: NativeHeldBytes; swapped: NativeHeldBytes; placement: 'main_device' | 'offload_device' }

export interface NativeWanModel {
  config(): Record<string, unknown>;
  memoryStats(): NativeMemoryStats;
  graphStats(): { captures: number; replays: number; failure: string | null };
  cacheReport(): { stream: number; skippedSteps: number[] }[];
  clearCache(): void;
  offload(): Promise<void>;  // the weights back to the CPU, after the jobs queued before
  forward(input: { x: NativeTensor[]; t: NativeTensor; context: NativeTensor[]; seqLen: number;
                   clipFea?: NativeTensor; y?: NativeTensor[]; fetaWeight?: number; riflexFreqIndex?: number; riflexLatentFrames?: number; skipBlocks?: number[];
                   cache?: { method: string; stream: number; step: number; threshold: number; cacheDevice: string;
                             coefficients?: number[]; mode?: string; magnitudeRatio?: number; maxSkips?: number };
                   loraStrengths?: number[]; nag?: { context: NativeTensor; scale: number; tau: number; alpha: number } },
           trace: boolean, abortFlag?: Int32Array):
    Promise<{ outputs: NativeTensor[]; trace?: Record<string, NativeTensor> }>;
  setAttentionMode(mode: string): void;
  setBlockSwap(blocksToSwap: number, prefetchBlocks: number): void;
  dispose(): void;
}

/** Spatial tiling in pixels (WanVae::Tiling). */
export interface NativeVaeTiling { tileX: number; tileY: number; tileStrideX: number; tileStrideY: number }

export interface NativeVaeDecoder {
  next(clamp: boolean, abortFlag?: Int32Array): Promise<NativeTensor | null>;
  framesLeft(): number;
}

export interface NativeVae {
  config(): { dim: number; zDim: number; device: string };
  encode(video: NativeTensor, abortFlag?: Int32Array, tiling?: NativeVaeTiling): Promise<NativeTensor>;
  decoder(latent: NativeTensor, tiling?: NativeVaeTiling):
    Promise<NativeVaeDecoder>;
  memoryStats(): NativeMemoryStats;
  offload(): Promise<void>;  // the weights back to the CPU, after the jobs queued before
  estimateDecodeMemory(query: { frames: number; height: number; width: number; tiling?: NativeVaeTiling; whole: boolean }): { bytes: number; breakdown: { weights: number; runtime: number; caches: number; activations: number; output: number; allocator: number }; peakAt: string };
  dispose(): void;
}

export interface NativeTextEncoder {
  config(): { vocab: number; dim: number; dimAttn: number; dimFfn: number; numHeads: number; numLayers: number;
              numBuckets: number; sharedPos: boolean; device: string };
  encodeTokens(ids: NativeTensor, mask: NativeTensor, trace: boolean, abortFlag?: Int32Array):
    Promise<{ output: NativeTensor; trace?: Record<string, NativeTensor> }>;
  embeddedTokenizer(): Uint8Array | null;
  memoryStats(): NativeMemoryStats;
  offload(): Promise<void>;  // the weights back to the CPU, after the jobs queued before  // a ComfyUI checkpoint's `spiece_model` bytes
  dispose(): void;
}

export interface NativeClipVisionConfig {
  imageSize: number; patchSize: number; dim: number; mlpDim: number; numHeads: number; numLayers: number;
  tokens: number; layout: string;  // 'official' | 'hf-clip' | 'open-clip'
  device: string;
}

export interface NativeClipVision {
  config(): NativeClipVisionConfig;
  memoryStats(): NativeMemoryStats;
  offload(): Promise<void>;  // the weights back to the CPU, after the jobs queued before
  // images: each [3, H, W] or [3, 1, H, W] in [-1, 1]; crop 'center' | 'disabled';
  // combineEmbeds 'average' | 'sum' | 'concat' | 'batch'.
  encode(images: NativeTensor[], options: { crop: string; strengths: number[]; combineEmbeds: string; trace: boolean },
         abortFlag?: Int32Array): Promise<{ embeds: NativeTensor; trace?: Record<string, NativeTensor> }>;
  dispose(): void;
}

// sampling_api.cpp: PyTorch's CPU generator (mt19937) seeded as torch.Generator().manual_seed(seed).
export interface NativeNoiseGenerator {
  randn(shape: number[]): NativeTensor;  // f32
  randperm(n: number): NativeTensor;     // i64
}

export interface NativeAddon {
  setErrorClass(cls: new (code: string, message: string) => Error): void;
  setThreads(threads: number): void;
  runtimeInfo(): { backend: string; torchVersion: string; threads: number; cuda: boolean };
  /** The wrapper's params_to_keep: weights whose name contains one stay in high precision under fp8. */
  keptInHighPrecision: string[];

  tensorFromTypedArray(data: ArrayBufferView, shape: number[], dtype: string): NativeTensor;

  loadCheckpoint(file: string, options: { populate: boolean }, abortFlag?: Int32Array):
    Promise<{ names: string[]; tensors: NativeTensor[]; metadata: Record<string, string> }>;
  saveSafetensors(path: string, names: string[], tensors: NativeTensor[], metadata: Record<string, string>,
                  abortFlag?: Int32Array): Promise<void>;
  inspectCheckpoint(files: string[]): Promise<NativeCheckpointInfo>;
  parseCheckpointBuffer(bytes: Uint8Array): number;
  gemmRate(m: number, k: number, n: number, reps: number): number[];  // seconds per fp32 product

  // ops_api.cpp: kernels for tests and benchmarks (lib/ops.ts), not the public API.
  attention(q: NativeTensor, k: NativeTensor, v: NativeTensor, mode: string, kLens?: NativeTensor, device?: string): NativeTensor;
  attentionSeconds(q: NativeTensor, k: NativeTensor, v: NativeTensor, mode: string, kLens: NativeTensor | undefined,
                   device: string, reps: number): number[];
  gpuMemory(device: string, reset: boolean): { allocated: number; peak: number; reserved: number; free: number; total: number } | null;
  cpuMemory(reset: boolean): { allocated: number; peak: number };
  normRope(x: NativeTensor, weight: NativeTensor, eps: number, headDim: number, grids: number[][] | null, how: string, device: string,
           riflex?: [number, number]): NativeTensor;
  modulate(x: NativeTensor, scale: NativeTensor, shift: NativeTensor, eps: number, how: string, device: string, outDtype: string): NativeTensor;
  gatedResidual(x: NativeTensor, y: NativeTensor, gate: NativeTensor, how: string, device: string): NativeTensor;
  fusedOpSeconds(op: string, how: string, grid: number[], dim: number, headDim: number, ffnDim: number, reps: number, device: string): number[];
  fp8Rows(x: NativeTensor, rows: number, how: string, device: string): { codes: NativeTensor; scales: NativeTensor };

  NoiseGenerator: new (seed: bigint) => NativeNoiseGenerator;
  resizeBicubic(image: NativeTensor, height: number, width: number): NativeTensor;  // align_corners=False
  fourierFilter(x: NativeTensor, low: number, high: number, cutoff: number): NativeTensor;  // FreSca, float32
  frequencyMix(x: NativeTensor, noise: NativeTensor, lowPass: NativeTensor): NativeTensor;  // FreeInit, float32

  loadTextEncoder(files: string[], options: { populate: boolean; device: string; loadDevice: string }, abortFlag?: Int32Array):
    Promise<NativeTextEncoder>;
  loadClipVision(files: string[], options: { numHeads?: number; populate: boolean; device: string; loadDevice: string }, abortFlag?: Int32Array):
    Promise<NativeClipVision>;
  loadVae(files: string[], options: { populate: boolean; device: string; loadDevice: string }, abortFlag?: Int32Array): Promise<NativeVae>;
  loadWanModel(files: string[], options: { numHeads?: number; textLen?: number; attentionMode: string; quantization: string; populate: boolean; device: string; basePrecision: string;
                                        loadDevice: string; blocksToSwap?: number; prefetchBlocks?: number;
                                        offloadTxtEmb?: boolean; offloadImgEmb?: boolean; compile: boolean; cudaGraphs: boolean;
                                           loras?: { files: string[]; strength: number; blocks?: number[]; layerFilter?: string[]; perStep?: boolean }[];
                                           mergeLoras?: boolean },
               abortFlag?: Int32Array): Promise<NativeWanModel>;
}
