// wan-native: Wan2.1 video generation as a native Node.js addon. See shared/spec/API.md.
import { describeValue, WanError } from './errors';
import { native } from './native';

export { WanError } from './errors';
export type { WanErrorCode } from './errors';
export { Tensor, DTYPES } from './tensor';
export type { DType, TensorData } from './tensor';
export { loadSafetensors, loadCheckpoint, saveSafetensors, inspectCheckpoint } from './checkpoint';
export type { CheckpointInfo, LoadCheckpointOptions, LoadedCheckpoint } from './checkpoint';
export { WanModel, ATTENTION_MODES, QUANTIZATIONS, riflexFrequencies } from './model';
export { Vae } from './vae';
export { TextEncoder, DEFAULT_NEGATIVE_PROMPT, promptWeights } from './text-encoder';
export type { TextEncoderOptions, TextEmbeds, EncodeOptions } from './text-encoder';
export type { VaeOptions, VaeEncodeOptions, VaeDecodeOptions, VaeMemoryEstimate, VaeMemoryEstimateOptions, VaeDecodeCall, VaeTileOptions } from './vae';
export { ClipVisionEncoder, loadImage, type ClipVisionOptions, type ClipVisionEncodeOptions, type ClipEmbeds, type ClipVisionConfig, type ClipCrop, type ClipCombine, type ImageInput } from './clip';
export type { Device, Placement } from './device';
export type { AttentionMode, BasePrecision, BlockSwapOptions, LoraOptions, ModelLoaderOptions, Quantization, WanModelConfig, WanForwardInput, BlockCacheCall, TeaCacheCall, MagCacheCall, EasyCacheCall, NagCall } from './model';
export type { Progress, LongCallOptions } from './progress';
export { emptyEmbeds, imageToVideoEncode } from './conditioning';
export type { ImageEmbeds, ImageResize, ImageToVideoEncodeOptions, VideoSize } from './conditioning';
export { planMemory, PLAN_DEVICES } from './memory-planner';
export type { MemoryPlan, PlanMemoryOptions, PlanDevice, PlanSource, TensorEntry, StagePlan, DitMemoryPlan, MemoryStats, HeldBytes, VaeEstimator } from './memory-planner';
export { Sampler } from './sampler';
export type { SamplerOptions, SamplerProgress, FetaArgs, LoopArgs, NagArgs, SlgArgs } from './sampler';
export type { CacheArgs, CacheVariant, TeaCacheArgs, MagCacheArgs, EasyCacheArgs } from './block-cache';
export { cacheVariant } from './block-cache';
export type { ExperimentalArgs } from './guidance';
export type { FreeInitArgs, FreeInitMethod } from './freeinit';
export { schedule, SCHEDULER_NAMES } from './schedulers';
export type { SchedulerName, Schedule, ScheduleOptions } from './schedulers';
export type { ContextOptions, ContextSchedule, ContextFuse } from './context-windows';
export type { Preview } from './preview';
export { runWorkflow, parseWorkflow } from './workflow';
export type { RunWorkflowOptions, WorkflowResult } from './workflow';
export { loadVideo, LOAD_VIDEO_FORMATS, type LoadVideoOptions, type LoadVideoFormat, type LoadedVideo } from './video-input';
export { outputCounter, prepareOutput, videoCombine, VIDEO_FORMATS, type VideoCombineOptions, type VideoCombineResult, type VideoFormat } from './video';

/** What the loaded native addon was built with, and the threads libtorch uses. */
export function runtimeInfo(): { backend: string; torchVersion: string; threads: number; cuda: boolean } {
  return native().runtimeInfo();
}

/** Sets the number of CPU threads libtorch uses (default: all cores). */
export function setThreads(threads: number): void {
  if (!Number.isSafeInteger(threads) || threads < 1)
    throw new WanError('WAN_INVALID_OPTION', `Expected a positive integer for threads but received ${describeValue(threads)}`);
  native().setThreads(threads);
}
