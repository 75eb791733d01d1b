// Kernels exposed for tests and benchmarks (csrc/binding/ops_api.cpp). Internal: not exported
// from lib/index.ts, and free to change.
import { describeValue, invalidOption, WanError } from './errors';
import { checkDevice, resolveDevice, type Device } from './device';
import { native } from './native';
import { ATTENTION_MODES } from './model';
import type { AttentionMode } from './model';
import { Tensor } from './tensor';

export type { AttentionMode };

const ATTENTION_DTYPES = ['f32', 'f16', 'bf16'];

function invalidTensor(message: string): WanError {
  return new WanError('WAN_INVALID_TENSOR', message);
}

function checkInput(t: Tensor, what: string, rank: string): void {
  Tensor.handle(t, what);
  if (t.shape.length !== 4)
    throw invalidTensor(`attention: expected a 4-D tensor ${rank} for ${what} but received shape [${t.shape.join(', ')}]`);
  if (!ATTENTION_DTYPES.includes(t.dtype))
    throw invalidTensor(`attention: expected one of ${ATTENTION_DTYPES.join(', ')} for the dtype of ${what} but received ${t.dtype}`);
}

/**
 * softmax(q k^T / sqrt(D)) v per batch and head: q [B, Lq, H, D], k and v [B, Lk, H, D]
 * -> f32 [B, Lq, H, D]. `kLens` (i64 or i32 [B]) limits batch entry b to its first kLens[b]
 * keys. 'sdpa' is libtorch's SDPA (the float32 reference on libtorch 1.13), 'flash' the tiled
 * online-softmax kernel, 'sageattn' SageAttention's int8 Q.K^T.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, mode: AttentionMode, kLens?: Tensor, device: Device = 'cpu'): Tensor {
  const lens = checkAttention(q, k, v, mode, kLens);
  checkDevice(device);
  return new Tensor(native().attention(Tensor.handle(q, 'q'), Tensor.handle(k, 'k'), Tensor.handle(v, 'v'), mode, lens, resolveDevice(device)));
}

/** Seconds of each of `reps` attention calls on `device` after two warm-ups, the device
 * synchronised around each, the inputs already there: the kernel's own time. */
export function attentionSeconds(q: Tensor, k: Tensor, v: Tensor, mode: AttentionMode, device: Device, reps: number, kLens?: Tensor): number[] {
  const lens = checkAttention(q, k, v, mode, kLens);
  checkDevice(device);
  return native().attentionSeconds(Tensor.handle(q, 'q'), Tensor.handle(k, 'k'), Tensor.handle(v, 'v'), mode, lens, resolveDevice(device), reps);
}

/** libtorch's CUDA allocator on `device`: bytes allocated now, the peak since the last reset
 * (reset by this call when `reset`) and bytes reserved; and the device's free and total bytes
 * (the driver's); null in a CPU-only build. */
export function gpuMemory(device: Device = 'cuda', reset = false): { allocated: number; peak: number; reserved: number; free: number; total: number } | null {
  checkDevice(device);
  return native().gpuMemory(resolveDevice(device), reset);
}

/** How a fused kernel's op computes, for tests that compare the three: the engine's eager ops,
 * the kernel's per-element arithmetic on the CPU (its reference), or the fused CUDA kernel itself
 * (a GPU only). */
export type FusedHow = 'eager' | 'reference' | 'fused';

/** The DiT's q/k RMS norm over the last dimension of x [B, L, dim] (weight [dim]), then RoPE on
 * heads of headDim when grids ([F, H, W] per sample) are given, computed `how` on `device`;
 * float32 on the CPU. `riflex`: RoPE's table with RIFLEx (WanForwardInput.riflexFreqIndex). For
 * tests, which compare the three ways. */
export function normRope(x: Tensor, weight: Tensor, eps: number, headDim: number, grids: number[][] | null, how: FusedHow, device: Device = 'cpu',
                         riflex?: { freqIndex: number; latentFrames: number }): Tensor {
  checkDevice(device);
  return new Tensor(native().normRope(Tensor.handle(x, 'x'), Tensor.handle(weight, 'weight'), eps, headDim, grids, how, resolveDevice(device),
    riflex ? [riflex.freqIndex, riflex.latentFrames] : undefined));
}

/** A DiT block's modulation, LayerNorm(x) (no affine) * (1 + scale) + shift, for x [B, L, dim] and
 * scale, shift [B, 1, dim], computed `how` on `device`; float32 on the CPU. outDtype: the fused
 * kernel's output dtype (the compute dtype of the layer it feeds). For tests. */
export function modulate(x: Tensor, scale: Tensor, shift: Tensor, eps: number, how: FusedHow, device: Device = 'cpu', outDtype: 'f32' | 'f16' | 'bf16' = 'f32'): Tensor {
  checkDevice(device);
  return new Tensor(native().modulate(Tensor.handle(x, 'x'), Tensor.handle(scale, 'scale'), Tensor.handle(shift, 'shift'), eps, how, resolveDevice(device), outDtype));
}

/** A DiT block's gated residual x + y * gate, for x [B, L, dim] (float32), y [B, L, dim] (f32, f16
 * or bf16) and gate [B, 1, dim], computed `how` on `device`; float32 on the CPU. For tests. */
export function gatedResidual(x: Tensor, y: Tensor, gate: Tensor, how: FusedHow, device: Device = 'cpu'): Tensor {
  checkDevice(device);
  return new Tensor(native().gatedResidual(Tensor.handle(x, 'x'), Tensor.handle(y, 'y'), Tensor.handle(gate, 'gate'), how, resolveDevice(device)));
}

/** The elementwise chains that `compile` fuses, as fusedOpSeconds times them. */
export type FusedOp = 'normRope' | 'modulate' | 'gatedResidual' | 'linearGelu';

/** Seconds of each of `reps` calls of one chain that `compile` fuses, after two warm-ups, the
 * device synchronised around each: `how` 'eager' runs the ops a bf16 DiT block runs without
 * compile, 'fused' the fused kernel (a GPU only). One sample of grid [F, H, W] tokens, the model's
 * dim, headDim and ffnDim. For benchmarks: each speed-up of compile measured on its own. */
export function fusedOpSeconds(op: FusedOp, how: 'eager' | 'fused', grid: [number, number, number], dims: { dim: number; headDim: number; ffnDim: number }, reps: number, device: Device = 'cuda'): number[] {
  checkDevice(device);
  return native().fusedOpSeconds(op, how, grid, dims.dim, dims.headDim, dims.ffnDim, reps, resolveDevice(device));
}

/** The fp8 matmuls' activation quantisation: x [M, cols] -> e4m3fn codes [rows, cols] (uint8)
 * and float32 scales [rows, 1], one per row (largest magnitude -> 448), rows >= M padded with
 * codes 0 and scale 1; computed 'reference' (on the CPU) or 'fused' (the CUDA kernel; x as bf16
 * or fp16 on a GPU). For tests. */
export function fp8Rows(x: Tensor, rows: number, how: 'reference' | 'fused', device: Device = 'cpu'): { codes: Tensor; scales: Tensor } {
  checkDevice(device);
  const out = native().fp8Rows(Tensor.handle(x, 'x'), rows, how, resolveDevice(device));
  return { codes: new Tensor(out.codes), scales: new Tensor(out.scales) };
}

/** CPU tensor memory: bytes allocated now and the most allocated at once since the last reset
 * (reset by this call when `reset`). Only the tensors, as wan-native's CPU allocator hands them
 * out: not the freed blocks the heap keeps, nor checkpoints mapped from files. */
export function cpuMemory(reset = false): { allocated: number; peak: number } {
  return native().cpuMemory(reset);
}

function checkAttention(q: Tensor, k: Tensor, v: Tensor, mode: AttentionMode, kLens?: Tensor) {
  if (typeof mode !== 'string' || !(ATTENTION_MODES as readonly string[]).includes(mode))
    throw invalidOption(`Expected one of ${ATTENTION_MODES.join(', ')} for mode but received ${describeValue(mode)}`);
  checkInput(q, 'q', '[B, Lq, H, D]');
  checkInput(k, 'k', '[B, Lk, H, D]');
  checkInput(v, 'v', '[B, Lk, H, D]');
  const [B, , H, D] = q.shape;
  if (k.shape[0] !== B || k.shape[2] !== H || k.shape[3] !== D)
    throw invalidTensor(`attention: expected k of shape [${B}, Lk, ${H}, ${D}] to match q [${q.shape.join(', ')}] but received [${k.shape.join(', ')}]`);
  if (v.shape.some((n, i) => n !== k.shape[i]))
    throw invalidTensor(`attention: expected v of the shape of k [${k.shape.join(', ')}] but received [${v.shape.join(', ')}]`);
  if (q.dtype !== k.dtype || q.dtype !== v.dtype)
    throw invalidTensor(`attention: expected q, k and v of one dtype but received ${q.dtype}, ${k.dtype} and ${v.dtype}`);
  let lens;
  if (kLens !== undefined) {
    lens = Tensor.handle(kLens, 'kLens');
    if (kLens.shape.length !== 1 || kLens.shape[0] !== B || (kLens.dtype !== 'i64' && kLens.dtype !== 'i32'))
      throw invalidTensor(`attention: expected an i64 or i32 tensor of shape [${B}] for kLens but received ${kLens.dtype} [${kLens.shape.join(', ')}]`);
    const Lk = k.shape[1];
    const values = Array.from(kLens.toTypedArray() as ArrayLike<number | bigint>, Number);
    const bad = values.findIndex((n) => !(n >= 1 && n <= Lk));
    if (bad >= 0)
      throw invalidTensor(`attention: expected kLens values in [1, ${Lk}] (Lk) but kLens[${bad}] is ${values[bad]}`);
  }
  return lens;
}
