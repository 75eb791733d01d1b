// The ComfyUI nodes wan-native runs: every input with its ComfyUI name, type, default and range
// (shared/spec/anchors.md section b, which follows the nodes' INPUT_TYPES), in the order of
// INPUT_TYPES (required, then optional), which is also the order of a UI workflow's
// `widgets_values`. Inputs the library cannot honour yet are listed too, each with the value
// that makes it a no-op, so that a workflow using them fails with a message naming the node
// and the input instead of running something else.
import type { ModelFolder } from './workflow-models';
import { QUANTIZATIONS } from './model';
import { latentFramesOf } from './context-windows';
import { SCHEDULER_NAMES } from './schedulers';
import { VIDEO_FORMATS } from './video';
import { LOAD_VIDEO_FORMATS } from './video-input';

interface InputBase {
  name: string;
  required: boolean;
  /** Not an input of the ComfyUI node: a wan-native extension (documented in lib/workflow.ts). */
  extension?: boolean;
  /** Why the given value cannot be honoured yet (undefined: it can). For links: called when linked. */
  refuse?: (value: unknown) => string | undefined;
  /** A link that orders nothing: its value is never read (the wrapper's model_to_offload). */
  hint?: boolean;
}

export type InputSpec = InputBase & (
  | { kind: 'INT'; default?: number; min: number; max: number; /** also a bigint up to 2^64 - 1 (seeds) */ u64?: boolean }
  | { kind: 'FLOAT'; default?: number; min: number; max: number }
  | { kind: 'BOOLEAN'; default?: boolean }
  | { kind: 'STRING'; default?: string }
  | { kind: 'COMBO'; options: readonly string[]; default?: string; supported?: readonly string[] }
  | { kind: 'FILE'; folders: readonly ModelFolder[] }
  | { kind: 'LINK'; type: string }
);

export interface NodeSpec {
  classType: string;
  inputs: InputSpec[];
  /** Output types, by slot. */
  outputs: string[];
  /** True for the nodes a run is for (VHS_VideoCombine). */
  output?: boolean;
  /** Widgets the UI stores in widgets_values that are no inputs: LoadImage's 'upload' button (at its position). */
  uiOnlyWidgets?: { after: string; name: string }[];
  /** UI workflows store widgets_values as an object by name (VideoHelperSuite), never as an array. */
  uiObjectWidgets?: boolean;
  /** Checks across inputs, with the resolved literal values and which links are connected. */
  check?: (values: Record<string, unknown>, linked: ReadonlySet<string>) => string | undefined;
}

// Input constructors: req(...) required, opt(...) optional, ext(...) a wan-native extension.
type Spec = InputSpec extends infer T ? T extends unknown ? Omit<T, 'name' | 'required'> : never : never;
const req = (name: string, s: Spec): InputSpec => ({ name, required: true, ...s } as InputSpec);
const opt = (name: string, s: Spec): InputSpec => ({ name, required: false, ...s } as InputSpec);
const ext = (name: string, s: Spec): InputSpec => ({ name, required: false, extension: true, ...s } as InputSpec);

const int = (def: number | undefined, min: number, max: number, refuse?: InputBase['refuse']): Spec => ({ kind: 'INT', default: def, min, max, refuse });
const float = (def: number, min: number, max: number, refuse?: InputBase['refuse']): Spec => ({ kind: 'FLOAT', default: def, min, max, refuse });
const bool = (def: boolean, refuse?: InputBase['refuse']): Spec => ({ kind: 'BOOLEAN', default: def, refuse });
// The node allows steps of 8; Wan2.1's latent is patched 2 x 2, so sizes must be multiples of 16.
const multipleOf16 = (v: unknown) => ((v as number) % 16 !== 0 ? `expected a multiple of 16 (the latent is patched 2 x 2) but received ${v}` : undefined);
const str = (def: string): Spec => ({ kind: 'STRING', default: def });

/** WanVideoSLG's blocks, as the wrapper reads them ([int(x.strip()) for x in blocks.split(',')]);
 * undefined where that would fail. */
export function slgBlocks(text: string): number[] | undefined {
  const parts = text.split(',').map((x) => x.trim());
  return parts.every((x) => /^[+-]?\d+$/.test(x)) ? parts.map(Number) : undefined;
}
const combo = (options: readonly string[], def: string, supported?: readonly string[], refuse?: InputBase['refuse']): Spec =>
  ({ kind: 'COMBO', options, default: def, supported, refuse });
const file = (...folders: ModelFolder[]): Spec => ({ kind: 'FILE', folders });
const link = (type: string, refuse?: string, hint?: boolean): Spec =>
  ({ kind: 'LINK', type, refuse: refuse === undefined ? undefined : () => refuse, hint });

// WanVideoTextEncode's and TextEncodeSingle's inputs after the prompts, and their check.
const textEncodeInputs = (): InputSpec[] => [
  opt('t5', link('WANTEXTENCODER')),
  opt('force_offload', bool(true)),
  opt('model_to_offload', link('WANVIDEOMODEL', undefined, true)),
  opt('use_disk_cache', bool(false)),
  opt('device', combo(['gpu', 'cpu'], 'gpu')),
];
const needsT5 = (_: Record<string, unknown>, linked: ReadonlySet<string>): string | undefined => (linked.has('t5') ? undefined
  : 't5 is not connected: wan-native encodes prompts with a text encoder (connect a LoadWanVideoT5TextEncoder)');

// The text encoder loaders' quantization: only 'disabled' (fp8 files load as stored).
const t5Quantization = (): Spec => combo(['disabled', 'fp8_e4m3fn'], 'disabled', undefined, (v) => v === 'disabled' ? undefined :
  `quantization '${v}' is not available yet in wan-native: use 'disabled' (weights are then used as the file stores them)`);

// WanVideo Decode's and Encode's tiles, when enable_vae_tiling is on.
const vaeTiling = (v: Record<string, unknown>): string | undefined => {
  if (v.enable_vae_tiling !== true) return undefined;
  for (const k of ['tile_x', 'tile_y', 'tile_stride_x', 'tile_stride_y'])
    if ((v[k] as number) % 8 !== 0) return `${k} (${v[k]}) must be a multiple of 8 (the VAE's pixels per latent)`;
  if ((v.tile_x as number) <= (v.tile_stride_x as number)) return `tile_x (${v.tile_x}) must be larger than tile_stride_x (${v.tile_stride_x})`;
  if ((v.tile_y as number) <= (v.tile_stride_y as number)) return `tile_y (${v.tile_y}) must be larger than tile_stride_y (${v.tile_stride_y})`;
  return undefined;
};

// The sampler's inputs for the wrapper's extra models (WanVideoSampler, WanVideoSamplerExtraArgs).
const samplerExtraModels = (): InputSpec[] => [
  opt('unianimate_poses', link('UNIANIMATE_POSE', notYet('UniAnimate'))),
  opt('fantasytalking_embeds', link('FANTASYTALKING_EMBEDS', notYet('FantasyTalking'))),
  opt('uni3c_embeds', link('UNI3C_EMBEDS', notYet('Uni3C'))),
  opt('multitalk_embeds', link('MULTITALK_EMBEDS', notYet('MultiTalk'))),
];

// The cache nodes' (TeaCache, MagCache, EasyCache) steps in which they may skip, and where the residuals wait.
const cacheSteps = (startStep: number): InputSpec[] => [
  req('start_step', int(startStep, 0, 9999)),
  req('end_step', int(-1, -1, 9999)),
  req('cache_device', combo(['main_device', 'offload_device'], 'offload_device')),
];
const notYet = (what: string) => `${what} is not implemented yet in wan-native`;
const onlyFalse = (what: string) => (v: unknown) => (v === true ? `${notYet(what)}: set it to false` : undefined);
const onlyZero = (what: string) => (v: unknown) => (v !== 0 ? `${notYet(what)}: set it to 0` : undefined);

/** WanVideoLoraBlockEdit's toggles: one per block of the largest Wan2.1 model (40). */
export const LORA_BLOCK_TOGGLES = 40;

const PRECISIONS = ['fp32', 'bf16', 'fp16', 'fp16_fast'] as const;
const WRAPPER_QUANTIZATIONS = ['disabled', 'fp8_e4m3fn', 'fp8_e4m3fn_fast', 'fp8_e4m3fn_scaled', 'fp8_e4m3fn_scaled_fast',
  'fp8_e5m2', 'fp8_e5m2_fast', 'fp8_e5m2_scaled', 'fp8_e5m2_scaled_fast'] as const;
const ATTENTION = ['sdpa', 'flash_attn_2', 'flash_attn_3', 'sageattn', 'sageattn_3', 'radial_sage_attention',
  'sageattn_compiled', 'sageattn_ultravico', 'comfy'] as const;
/** The wrapper's attention modes the library has, and what they become (ModelLoaderOptions.attentionMode). */
export const ATTENTION_MAP: Record<string, 'sdpa' | 'flash' | 'sageattn'> = {
  sdpa: 'sdpa', flash_attn_2: 'flash', flash_attn_3: 'flash', sageattn: 'sageattn',
};
const DEVICES = ['main_device', 'offload_device'] as const;
// The wrapper's scheduler list (anchors.md a.9); the library runs SCHEDULER_NAMES of them.
const WRAPPER_SCHEDULERS = ['unipc', 'unipc/beta', 'dpm++', 'dpm++/beta', 'dpm++_sde', 'dpm++_sde/beta', 'euler', 'euler/beta',
  'longcat_distill_euler', 'deis', 'lcm', 'lcm/beta', 'res_multistep', 'er_sde', 'flowmatch_causvid', 'flowmatch_distill',
  'flowmatch_pusa', 'multitalk', 'sa_ode_stable', 'rcm', 'vibt_unipc'] as const;
// VideoHelperSuite's formats (anchors.md b.15) and the library's (image/png is the library's own).
const VHS_FORMATS = ['image/gif', 'image/webp', 'video/16bit-png', 'video/8bit-png', 'video/ProRes', 'video/av1-webm',
  'video/ffmpeg-gif', 'video/ffv1-mkv', 'video/gifski', 'video/h264-mp4', 'video/h265-mp4', 'video/nvenc_av1-mp4',
  'video/nvenc_h264-mp4', 'video/nvenc_hevc-mp4', 'video/webm', 'image/png'] as const;

// The per-format widgets of VHS's video formats (video_formats/*.json) the library writes.
const VHS_CODECS: Record<string, { pixFmts: string[]; maxCrf: number }> = {
  'video/h264-mp4': { pixFmts: ['yuv420p', 'yuv420p10le'], maxCrf: 100 },  // x264 takes above 51 as 51
  'video/h265-mp4': { pixFmts: ['yuv420p10le', 'yuv420p'], maxCrf: 51 },
  'video/webm': { pixFmts: ['yuv420p', 'yuva420p'], maxCrf: 63 },
};

const SPECS: NodeSpec[] = [
  {
    classType: 'WanVideoModelLoader',
    outputs: ['WANVIDEOMODEL'],
    inputs: [
      req('model', file('diffusion_models')),
      req('base_precision', combo(PRECISIONS, 'bf16')),
      // 'disabled' keeps the file's dtypes (fp8 files included); the library converts to the others at load.
      req('quantization', combo(WRAPPER_QUANTIZATIONS, 'disabled', QUANTIZATIONS)),
      req('load_device', combo(DEVICES, 'offload_device')),
      opt('attention_mode', combo(ATTENTION, 'sdpa', Object.keys(ATTENTION_MAP))),
      opt('compile_args', link('WANCOMPILEARGS')),
      // WanModel.load's blockSwap and loras (merged at load).
      opt('block_swap_args', link('BLOCKSWAPARGS')),
      opt('lora', link('WANVIDLORA')),
      opt('vram_management_args', link('VRAM_MANAGEMENTARGS', notYet('VRAM management (vram_management_args)'))),
      opt('extra_model', link('VACEPATH', notYet('VACE and other extra models (extra_model)'))),
      opt('fantasytalking_model', link('FANTASYTALKINGMODEL', notYet('FantasyTalking'))),
      opt('multitalk_model', link('MULTITALKMODEL', notYet('MultiTalk'))),
      opt('fantasyportrait_model', link('FANTASYPORTRAITMODEL', notYet('FantasyPortrait'))),
      opt('rms_norm_function', combo(['default', 'pytorch'], 'default')),
      ext('num_heads', int(undefined, 1, 4096)),
      ext('text_len', int(undefined, 1, 65536)),
    ],
  },
  {
    classType: 'WanVideoBlockSwap',
    outputs: ['BLOCKSWAPARGS'],
    // On the CPU the embeddings' placement and use_non_blocking change nothing; block_swap_debug
    // (the wrapper's timing log) is accepted and ignored.
    inputs: [
      req('blocks_to_swap', int(20, 0, 48)),
      req('offload_img_emb', bool(false)),
      req('offload_txt_emb', bool(false)),
      opt('use_non_blocking', bool(false)),
      opt('vace_blocks_to_swap', int(0, 0, 15, (v) => v !== 0
        ? 'VACE block swap (vace_blocks_to_swap) needs a VACE model, which wan-native does not load yet: set it to 0' : undefined)),
      opt('prefetch_blocks', int(0, 0, 40)),
      opt('block_swap_debug', bool(false)),
    ],
  },
  {
    classType: 'WanVideoTorchCompileSettings',
    outputs: ['WANCOMPILEARGS'],
    inputs: [
      req('backend', combo(['inductor', 'cudagraphs'], 'inductor')),
      req('fullgraph', bool(false)),
      req('mode', combo(['default', 'max-autotune', 'max-autotune-no-cudagraphs', 'reduce-overhead'], 'default')),
      req('dynamic', bool(false)),
      req('dynamo_cache_size_limit', int(64, 0, 1024)),
      req('compile_transformer_blocks_only', bool(true)),
      opt('dynamo_recompile_limit', int(128, 0, 1024)),
      opt('force_parameter_static_shapes', bool(false)),
      opt('allow_unmerged_lora_compile', bool(false)),
    ],
    // torch.compile changes speed, never results: WanVideoModelLoader takes the link as
    // `compile` (fused q/k norm + RoPE kernels on a GPU) and warns that the settings themselves
    // have no counterpart; WanVideoVAELoader warns that it does not compile.
  },
  {
    classType: 'WanVideoLoraSelect',
    outputs: ['WANVIDLORA'],
    inputs: [
      req('lora', file('loras')),
      // A per-step strength list (a FLOAT list on a link) needs unmerged LoRAs: no node wan-native
      // runs outputs one, so such a link is refused when the workflow is read.
      req('strength', float(1, -1000, 1000)),
      opt('prev_lora', link('WANVIDLORA')),
      opt('blocks', link('SELECTEDBLOCKS')),
      // The wrapper's loading with less VRAM: the LoRA is read once here anyway.
      opt('low_mem_load', bool(false)),
      // false: applied at run time (WanModel.load mergeLoras false); one model's LoRAs must agree.
      opt('merge_loras', bool(true)),
    ],
  },
  {
    classType: 'WanVideoLoraBlockEdit',
    outputs: ['SELECTEDBLOCKS'],
    inputs: [
      ...Array.from({ length: LORA_BLOCK_TOGGLES }, (_, i) => req(`blocks.${i}.`, bool(true))),
      opt('layer_filter', str('')),
    ],
  },
  {
    classType: 'LoadWanVideoT5TextEncoder',
    outputs: ['WANTEXTENCODER'],
    inputs: [
      req('model_name', file('text_encoders')),
      req('precision', combo(['fp32', 'bf16'], 'bf16')),
      opt('load_device', combo(DEVICES, 'offload_device')),
      opt('quantization', t5Quantization()),
      ext('tokenizer', file('text_encoders')),
    ],
  },
  {
    classType: 'WanVideoTextEncodeCached',
    outputs: ['WANVIDEOTEXTEMBEDS', 'WANVIDEOTEXTEMBEDS', 'STRING'],
    inputs: [
      req('model_name', file('text_encoders')),
      req('precision', combo(['fp32', 'bf16'], 'bf16')),
      req('positive_prompt', str('')),
      req('negative_prompt', str('')),
      req('quantization', t5Quantization()),
      req('use_disk_cache', bool(true)),
      req('device', combo(['gpu', 'cpu'], 'gpu')),
      opt('extender_args', link('WANVIDEOPROMPTEXTENDER_ARGS', notYet('the prompt extender (extender_args)'))),
      ext('tokenizer', file('text_encoders')),
    ],
  },
  {
    classType: 'WanVideoTextEncodeSingle',
    outputs: ['WANVIDEOTEXTEMBEDS'],
    inputs: [req('prompt', str('')), ...textEncodeInputs()],
    check: needsT5,
  },
  {
    classType: 'WanVideoApplyNAG',
    outputs: ['WANVIDEOTEXTEMBEDS'],
    inputs: [
      req('original_text_embeds', link('WANVIDEOTEXTEMBEDS')),
      req('nag_text_embeds', link('WANVIDEOTEXTEMBEDS')),
      req('nag_scale', float(11, 0, 100)),
      req('nag_tau', float(2.5, 0, 10)),
      req('nag_alpha', float(0.25, 0, 1)),
      opt('inplace', bool(true)),
    ],
  },
  {
    classType: 'WanVideoVAELoader',
    outputs: ['WANVAE'],
    inputs: [
      req('model_name', file('vae')),
      opt('precision', combo(['fp16', 'fp32', 'bf16'], 'bf16')),
      opt('compile_args', link('WANCOMPILEARGS')),
      opt('use_cpu_cache', bool(false, onlyFalse('use_cpu_cache'))),
      opt('verbose', bool(false)),
    ],
  },
  {
    classType: 'LoadWanVideoClipTextEncoder',
    outputs: ['CLIP_VISION'],
    inputs: [
      req('model_name', file('clip_vision', 'text_encoders')),
      req('precision', combo(['fp16', 'fp32', 'bf16'], 'fp16')),
      opt('load_device', combo(DEVICES, 'offload_device')),
      ext('num_heads', int(undefined, 1, 4096)),
    ],
  },
  {
    classType: 'CLIPVisionLoader',
    outputs: ['CLIP_VISION'],
    inputs: [
      req('clip_name', file('clip_vision')),
      ext('num_heads', int(undefined, 1, 4096)),
    ],
  },
  {
    classType: 'WanVideoTextEncode',
    outputs: ['WANVIDEOTEXTEMBEDS'],
    inputs: [req('positive_prompt', str('')), req('negative_prompt', str('')), ...textEncodeInputs()],
    check: needsT5,
  },
  {
    classType: 'WanVideoClipVisionEncode',
    outputs: ['WANVIDIMAGE_CLIPEMBEDS'],
    inputs: [
      req('clip_vision', link('CLIP_VISION')),
      req('image_1', link('IMAGE')),
      req('strength_1', float(1, 0, 10)),
      req('strength_2', float(1, 0, 10)),
      req('crop', combo(['center', 'disabled'], 'center')),
      req('combine_embeds', combo(['average', 'sum', 'concat', 'batch'], 'average')),
      req('force_offload', bool(true)),
      opt('image_2', link('IMAGE')),
      opt('negative_image', link('IMAGE')),
      opt('tiles', int(0, 0, 16, onlyZero('tiled CLIP encoding (tiles)'))),
      opt('ratio', float(0.5, 0, 1)),
    ],
  },
  {
    classType: 'WanVideoImageToVideoEncode',
    outputs: ['WANVIDIMAGE_EMBEDS'],
    inputs: [
      req('width', int(832, 64, 8096, multipleOf16)),
      req('height', int(480, 64, 8096, multipleOf16)),
      req('num_frames', int(81, 1, 10000)),
      req('noise_aug_strength', float(0, 0, 10)),
      req('start_latent_strength', float(1, 0, 10)),
      req('end_latent_strength', float(1, 0, 10)),
      req('force_offload', bool(true)),
      opt('vae', link('WANVAE')),
      opt('clip_embeds', link('WANVIDIMAGE_CLIPEMBEDS')),
      opt('start_image', link('IMAGE')),
      opt('end_image', link('IMAGE')),
      opt('control_embeds', link('WANVIDIMAGE_EMBEDS', notYet('Fun control (control_embeds)'))),
      opt('fun_or_fl2v_model', bool(true)),
      opt('temporal_mask', link('MASK', notYet('temporal_mask'))),
      opt('extra_latents', link('LATENT', notYet('extra_latents'))),
      opt('tiled_vae', bool(false)),
      opt('add_cond_latents', link('ADD_COND_LATENTS', notYet('add_cond_latents'))),
      opt('augment_empty_frames', float(0, 0, 10)),
      opt('empty_frame_pad_image', link('IMAGE')),
    ],
    check: (_v, linked) => ((linked.has('start_image') || linked.has('end_image')) && !linked.has('vae')
      ? 'vae is not connected: encoding start_image / end_image needs one' : undefined),
  },
  {
    classType: 'WanVideoEmptyEmbeds',
    outputs: ['WANVIDIMAGE_EMBEDS'],
    inputs: [
      req('width', int(832, 64, 8096, multipleOf16)),
      req('height', int(480, 64, 8096, multipleOf16)),
      req('num_frames', int(81, 1, 10000)),
      opt('control_embeds', link('WANVIDIMAGE_EMBEDS', notYet('Fun control (control_embeds)'))),
      opt('extra_latents', link('LATENT', notYet('extra_latents'))),
    ],
  },
  {
    classType: 'WanVideoContextOptions',
    outputs: ['WANVIDCONTEXT'],
    inputs: [
      req('context_schedule', combo(['uniform_standard', 'uniform_looped', 'static_standard'], 'uniform_standard')),
      req('context_frames', int(81, 2, 1000)),
      req('context_stride', int(4, 4, 100)),
      req('context_overlap', int(16, 4, 100)),
      req('freenoise', bool(true)),
      req('verbose', bool(false)),
      opt('fuse_method', combo(['linear', 'pyramid'], 'linear')),
      opt('reference_latent', link('LATENT', notYet('reference_latent'))),
    ],
    // Windows advance by frames - overlap latent frames (lib/context-windows.ts).
    check: (v) => (Math.floor((v.context_overlap as number) / 4) >= latentFramesOf(v.context_frames as number)
      ? `context_overlap (${v.context_overlap}) must be smaller than context_frames (${v.context_frames}) in latent frames ` +
        `(${Math.floor((v.context_overlap as number) / 4)} against ${latentFramesOf(v.context_frames as number)}), or windows never advance`
      : undefined),
  },
  {
    classType: 'WanVideoEnhanceAVideo',
    outputs: ['FETAARGS'],
    inputs: [
      req('weight', float(2, 0, 100)),
      req('start_percent', float(0, 0, 1)),
      req('end_percent', float(1, 0, 1)),
    ],
    check: (v) => ((v.start_percent as number) > (v.end_percent as number)
      ? `start_percent (${v.start_percent}) is after end_percent (${v.end_percent}): Enhance-A-Video would never apply` : undefined),
  },
  {
    classType: 'WanVideoTeaCache',
    outputs: ['CACHEARGS'],
    inputs: [
      req('rel_l1_thresh', float(0.3, 0, 1)),
      ...cacheSteps(1),
      req('use_coefficients', bool(true)),
      opt('mode', combo(['e', 'e0'], 'e')),
    ],
  },
  {
    classType: 'WanVideoMagCache',
    outputs: ['CACHEARGS'],
    inputs: [
      req('magcache_thresh', float(0.02, 0, 0.3)),
      req('magcache_K', int(4, 0, 6)),
      ...cacheSteps(1),
    ],
  },
  {
    classType: 'WanVideoEasyCache',
    outputs: ['CACHEARGS'],
    inputs: [
      req('easycache_thresh', float(0.015, 0, 1)),
      ...cacheSteps(10),
    ],
  },
  {
    classType: 'WanVideoSLG',
    outputs: ['SLGARGS'],
    inputs: [
      req('blocks', str('10')),
      req('start_percent', float(0.1, 0, 1)),
      req('end_percent', float(1, 0, 1)),
    ],
    check: (v) => (slgBlocks(v.blocks as string) === undefined
      ? `blocks: expected block numbers separated by commas, such as "9,10", but received ${JSON.stringify(v.blocks)}`
      : (v.start_percent as number) > (v.end_percent as number)
        ? `start_percent (${v.start_percent}) is after end_percent (${v.end_percent}): skip layer guidance would never apply` : undefined),
  },
  {
    classType: 'WanVideoLoopArgs',
    outputs: ['LOOPARGS'],
    inputs: [
      req('shift_skip', int(6, 0, 10000)),
      req('start_percent', float(0, 0, 1)),
      req('end_percent', float(1, 0, 1)),
    ],
    check: (v) => ((v.start_percent as number) > (v.end_percent as number)
      ? `start_percent (${v.start_percent}) is after end_percent (${v.end_percent}): the loop's shift would never apply` : undefined),
  },
  {
    classType: 'WanVideoFreeInitArgs',
    outputs: ['FREEINITARGS'],
    inputs: [
      req('freeinit_num_iters', int(3, 1, 10)),
      req('freeinit_method', combo(['butterworth', 'ideal', 'gaussian', 'none'], 'ideal', undefined,
        (v) => (v === 'none' ? '\'none\' is no filter (the wrapper fails on it): disconnect freeinit_args to sample without FreeInit' : undefined))),
      req('freeinit_n', int(4, 1, 10)),
      req('freeinit_d_s', float(1, 0, 10)),
      req('freeinit_d_t', float(1, 0, 10)),
    ],
  },
  {
    classType: 'WanVideoExperimentalArgs',
    outputs: ['EXPERIMENTALARGS'],
    inputs: [
      req('video_attention_split_steps', { kind: 'STRING', default: '',
        refuse: (v) => (v !== '' ? `${notYet('video_attention_split_steps')}: leave it empty` : undefined) }),
      req('cfg_zero_star', bool(false)),
      req('use_zero_init', bool(false)),
      req('zero_star_steps', int(0, 0, 10000)),
      req('use_fresca', bool(false)),
      req('fresca_scale_low', float(1, 0, 10)),
      req('fresca_scale_high', float(1.25, 0, 10)),
      req('fresca_freq_cutoff', int(20, 0, 10000)),
      req('use_tcfg', bool(false)),
      req('raag_alpha', float(0, 0, 10)),
      req('bidirectional_sampling', bool(false, onlyFalse('bidirectional_sampling'))),
      req('temporal_score_rescaling', bool(false)),
      req('tsr_k', float(0.95, 0, 100)),
      req('tsr_sigma', float(1, 0, 1)),
    ],
  },
  {
    classType: 'WanVideoSampler',
    outputs: ['LATENT', 'LATENT'],
    inputs: [
      req('model', link('WANVIDEOMODEL')),
      req('image_embeds', link('WANVIDIMAGE_EMBEDS')),
      req('steps', int(30, 1, 10000)),
      req('cfg', float(6, 0, 30)),
      req('shift', float(5, 0, 1000, (v) => (v === 0 ? 'expected a shift above 0 (0 would make every sigma 0)' : undefined))),
      req('seed', { kind: 'INT', default: 0, min: 0, max: Number.MAX_SAFE_INTEGER, u64: true }),
      req('force_offload', bool(true)),
      req('scheduler', combo(WRAPPER_SCHEDULERS, 'unipc', SCHEDULER_NAMES)),
      req('riflex_freq_index', int(0, 0, 1000)),
      opt('text_embeds', link('WANVIDEOTEXTEMBEDS')),
      opt('samples', link('LATENT')),
      opt('denoise_strength', float(1, 0, 1)),
      opt('feta_args', link('FETAARGS')),
      opt('context_options', link('WANVIDCONTEXT')),
      opt('cache_args', link('CACHEARGS')),
      opt('flowedit_args', link('FLOWEDITARGS', 'FlowEdit was removed from the wrapper and is not supported')),
      opt('batched_cfg', bool(false)),
      opt('slg_args', link('SLGARGS')),
      opt('rope_function', combo(['default', 'comfy', 'comfy_chunked'], 'comfy')),
      opt('loop_args', link('LOOPARGS')),
      opt('experimental_args', link('EXPERIMENTALARGS')),
      opt('sigmas', link('SIGMAS', notYet('a sigmas link'))),
      ...samplerExtraModels(),
      opt('freeinit_args', link('FREEINITARGS')),
      opt('start_step', int(0, 0, 10000)),
      opt('end_step', int(-1, -1, 10000)),
      opt('add_noise_to_samples', bool(false)),
    ],
    check: (v, linked) => {
      if (!linked.has('text_embeds')) return 'text_embeds is not connected: wan-native samples with text embeddings (connect a WanVideoTextEncode)';
      // As the wrapper: denoise_strength sets the start step itself.
      if ((v.denoise_strength as number) < 1 && v.start_step !== 0) return 'start_step must be 0 when denoise_strength is below 1';
      if ((v.denoise_strength as number) < 1 && !linked.has('samples')) return 'denoise_strength below 1 needs samples to start from';
      return undefined;
    },
  },
  // The split sampler of newer workflows: the schedule from WanVideoSchedulerv2, the rest of
  // WanVideoSampler's options from WanVideoSamplerExtraArgs (the wrapper fills what neither gives
  // with WanVideoSampler.process's defaults: no denoise strength, start and end from the schedule).
  {
    classType: 'WanVideoSchedulerv2',
    outputs: ['WANVIDEOSCHEDULER'],
    inputs: [
      req('scheduler', combo(WRAPPER_SCHEDULERS, 'unipc', SCHEDULER_NAMES)),
      req('steps', int(30, 1, 10000)),
      req('shift', float(5, 0, 1000, (v) => (v === 0 ? 'expected a shift above 0 (0 would make every sigma 0)' : undefined))),
      req('start_step', int(0, 0, 10000)),
      req('end_step', int(-1, -1, 10000)),
      opt('sigmas', link('SIGMAS', notYet('a sigmas link'))),
      opt('enhance_hf', bool(false)),
    ],
    check: (v) => ((v.end_step as number) !== -1 && (v.end_step as number) <= (v.start_step as number)
      ? `end_step (${v.end_step}) must be -1 or after start_step (${v.start_step})` : undefined),
  },
  {
    classType: 'WanVideoSamplerExtraArgs',
    outputs: ['WANVIDSAMPLEREXTRAARGS'],
    inputs: [
      opt('riflex_freq_index', int(0, 0, 1000)),
      opt('rope_function', combo(['default', 'comfy', 'comfy_chunked'], 'comfy')),
      opt('feta_args', link('FETAARGS')),
      opt('context_options', link('WANVIDCONTEXT')),
      opt('cache_args', link('CACHEARGS')),
      opt('slg_args', link('SLGARGS')),
      opt('loop_args', link('LOOPARGS')),
      opt('experimental_args', link('EXPERIMENTALARGS')),
      ...samplerExtraModels(),
    ],
  },
  {
    classType: 'WanVideoSamplerv2',
    outputs: ['LATENT', 'LATENT'],
    inputs: [
      req('model', link('WANVIDEOMODEL')),
      req('image_embeds', link('WANVIDIMAGE_EMBEDS')),
      req('cfg', float(6, 0, 30)),
      req('seed', { kind: 'INT', default: 0, min: 0, max: Number.MAX_SAFE_INTEGER, u64: true }),
      req('force_offload', bool(true)),
      req('scheduler', link('WANVIDEOSCHEDULER')),
      opt('text_embeds', link('WANVIDEOTEXTEMBEDS')),
      opt('samples', link('LATENT')),
      opt('add_noise_to_samples', bool(false)),
      opt('extra_args', link('WANVIDSAMPLEREXTRAARGS')),
    ],
    check: (_v, linked) => (!linked.has('text_embeds')
      ? 'text_embeds is not connected: wan-native samples with text embeddings (connect a WanVideoTextEncode)' : undefined),
  },
  {
    classType: 'WanVideoDecode',
    outputs: ['IMAGE'],
    inputs: [
      req('vae', link('WANVAE')),
      req('samples', link('LATENT')),
      req('enable_vae_tiling', bool(false)),
      req('tile_x', int(272, 40, 2048)),
      req('tile_y', int(272, 40, 2048)),
      req('tile_stride_x', int(144, 32, 2040)),
      req('tile_stride_y', int(128, 32, 2040)),
      opt('normalization', combo(['default', 'minmax', 'none'], 'default', ['default', 'none'])),
    ],
    check: vaeTiling,
  },
  {
    classType: 'VHS_VideoCombine',
    outputs: ['VHS_FILENAMES'],
    output: true,
    // The format's widgets are inserted after `format`, so an array could not be mapped.
    uiObjectWidgets: true,
    check: (v) => {
      const codec = VHS_CODECS[v.format as string];
      for (const name of ['pix_fmt', 'crf'] as const) {
        if (v[name] !== undefined && !codec)
          return `${name} applies to ${Object.keys(VHS_CODECS).join(', ')} only, not to format ${v.format}`;
      }
      if (codec && v.pix_fmt !== undefined && !codec.pixFmts.includes(v.pix_fmt as string))
        return `expected one of ${codec.pixFmts.join(', ')} for pix_fmt (${v.format}) but received ${JSON.stringify(v.pix_fmt)}`;
      if (codec && v.crf !== undefined && (v.crf as number) > codec.maxCrf)
        return `expected crf between 0 and ${codec.maxCrf} for ${v.format} but received ${v.crf}`;
      if (v.lossless !== undefined && v.format !== 'image/webp') return `lossless applies to image/webp only, not to format ${v.format}`;
      return undefined;
    },
    inputs: [
      req('images', link('IMAGE')),
      req('frame_rate', float(8, 1, 1e9)),
      req('loop_count', int(0, 0, 100)),
      req('filename_prefix', str('AnimateDiff')),
      req('format', combo(VHS_FORMATS, 'image/gif', VIDEO_FORMATS)),
      req('pingpong', bool(false)),
      req('save_output', bool(true)),
      opt('audio', link('AUDIO', notYet('audio muxing (audio)'))),
      opt('meta_batch', link('VHS_BatchManager', notYet('meta_batch'))),
      opt('vae', link('VAE', notYet('decoding latents in Video Combine (vae): decode with WanVideoDecode'))),
      // The format's own widgets (VHS video_formats/*.json), present only for formats that have them.
      opt('pix_fmt', { kind: 'STRING' }),
      opt('crf', { kind: 'INT', min: 0, max: 100 }),
      opt('save_metadata', bool(true)),
      opt('trim_to_audio', bool(false)),
      opt('preset', { kind: 'STRING', refuse: (v) => v !== 'medium' ? `${notYet(`preset '${v}'`)}: only 'medium' (ffmpeg's default)` : undefined }),
      opt('lossless', { kind: 'BOOLEAN' }),
    ],
  },
  {
    classType: 'VHS_LoadVideo',
    outputs: ['IMAGE', 'INT', 'AUDIO', 'VHS_VIDEOINFO'],
    uiObjectWidgets: true,
    inputs: [
      req('video', file('input')),
      req('force_rate', float(0, 0, 60)),
      req('custom_width', int(0, 0, 8192)),
      req('custom_height', int(0, 0, 8192)),
      req('frame_load_cap', int(0, 0, Number.MAX_SAFE_INTEGER)),
      req('skip_first_frames', int(0, 0, Number.MAX_SAFE_INTEGER)),
      req('select_every_nth', int(1, 1, Number.MAX_SAFE_INTEGER)),
      opt('meta_batch', link('VHS_BatchManager', notYet('meta_batch (loading in batches)'))),
      opt('vae', link('VAE', notYet('encoding in the loader (vae): encode with WanVideoEncode'))),
      opt('format', combo(Object.keys(LOAD_VIDEO_FORMATS), 'AnimateDiff')),
    ],
    uiOnlyWidgets: [{ after: 'video', name: 'choose video to upload' }],
  },
  {
    classType: 'WanVideoEncode',
    outputs: ['LATENT'],
    inputs: [
      req('vae', link('WANVAE')),
      req('image', link('IMAGE')),
      req('enable_vae_tiling', bool(false)),
      req('tile_x', int(272, 64, 2048)),
      req('tile_y', int(272, 64, 2048)),
      req('tile_stride_x', int(144, 32, 2048)),
      req('tile_stride_y', int(128, 32, 2048)),
      opt('noise_aug_strength', float(0, 0, 10)),
      opt('latent_strength', float(1, 0, 10)),
      opt('mask', link('MASK', notYet('mask (noise_mask)'))),
    ],
    check: vaeTiling,
  },
  {
    classType: 'ImageResizeKJ',
    outputs: ['IMAGE', 'INT', 'INT'],
    inputs: [
      req('image', link('IMAGE')),
      req('width', int(512, 0, 16384)),
      req('height', int(512, 0, 16384)),
      req('upscale_method', combo(['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos'], 'nearest-exact', ['bicubic', 'lanczos'])),
      req('keep_proportion', bool(false)),
      req('divisible_by', int(2, 0, 512)),
      opt('get_image_size', link('IMAGE')),
      opt('crop', combo(['disabled', 'center'], 'disabled')),
    ],
  },
  {
    classType: 'ImageResizeKJv2',
    outputs: ['IMAGE', 'INT', 'INT', 'MASK'],
    inputs: [
      req('image', link('IMAGE')),
      req('width', int(512, 0, 16384)),
      req('height', int(512, 0, 16384)),
      req('upscale_method', combo(['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos', 'nvidia_rtx_vsr'], 'nearest-exact', ['bicubic', 'lanczos'])),
      req('keep_proportion', combo(['stretch', 'resize', 'pad', 'pad_edge', 'pad_edge_pixel', 'crop', 'pillarbox_blur', 'total_pixels'], 'stretch',
        ['stretch', 'resize', 'crop', 'total_pixels'])),
      req('pad_color', str('0, 0, 0')),
      req('crop_position', combo(['center', 'top', 'bottom', 'left', 'right'], 'center')),
      req('divisible_by', int(2, 0, 512)),
      opt('mask', link('MASK', notYet('mask'))),
      opt('device', combo(['cpu', 'gpu'], 'cpu')),
    ],
  },
  {
    // KJNodes' Image Concatenate Multi; its frontend adds image_3 ... image_N (here up to image_8).
    classType: 'ImageConcatMulti',
    outputs: ['IMAGE'],
    inputs: [
      req('inputcount', int(2, 2, 8)),
      req('image_1', link('IMAGE')),
      req('direction', combo(['right', 'down', 'left', 'up'], 'right')),
      req('match_image_size', bool(false)),
      ...Array.from({ length: 7 }, (_, i) => opt(`image_${i + 2}`, link('IMAGE'))),
    ],
  },
  {
    classType: 'LoadImage',
    outputs: ['IMAGE', 'MASK'],
    inputs: [req('image', file('input'))],
    uiOnlyWidgets: [{ after: 'image', name: 'upload' }],
  },
];

export const NODE_SPECS: ReadonlyMap<string, NodeSpec> = new Map(SPECS.map((s) => [s.classType, s]));

/** The input names of a spec whose values a UI workflow stores in widgets_values, in order. */
export function widgetNames(spec: NodeSpec): { official: string[]; extensions: string[] } {
  const widgets = spec.inputs.filter((i) => i.kind !== 'LINK');
  return {
    official: widgets.filter((i) => !i.extension).map((i) => i.name),
    extensions: widgets.filter((i) => i.extension).map((i) => i.name),
  };
}
