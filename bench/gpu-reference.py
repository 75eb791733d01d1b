"""The baseline of bench/gpu.ts: the Wan2.1 T2V DiT forward in plain PyTorch eager on the same GPU.

Our own minimal implementation of the forward (wan/modules/model.py's math, as ComfyUI runs it in
bf16): bf16 matmuls and F.scaled_dot_product_attention, float32 residual stream, modulation and
norms, float32 RoPE. It reads the same synthesised checkpoint as the bench and is timed the same
way (a warm-up forward, then the median of `reps`, synchronised), so that the ratio says what
the addon's libtorch path costs or saves against Python eager on one GPU.

Usage: python3 bench/gpu-reference.py CHECKPOINT FRAMES HEIGHT WIDTH REPS  -> one JSON line.
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def main():
    path, frames, height, width, reps = sys.argv[1], *map(int, sys.argv[2:6])
    dev = torch.device('cuda')
    w = {k: v.to(dev) for k, v in load_file(path).items()}
    dim = w['patch_embedding.weight'].shape[0]
    heads = dim // 128
    layers = 1 + max(int(k.split('.')[1]) for k in w if k.startswith('blocks.'))
    bf = torch.bfloat16

    def lin(x, name):
        b = w.get(name + '.bias')
        return F.linear(x.to(bf), w[name + '.weight'].to(bf), None if b is None else b.to(bf)).float()

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w[name].float()

    def ln(x, name=None):
        return F.layer_norm(x, (dim,), None if name is None else w[name + '.weight'].float(),
                            None if name is None else w[name + '.bias'].float(), 1e-6)

    # RoPE angles per token, float32: head dim 128 = 64 pairs split 22 / 21 / 21 over (f, h, w).
    d = 128
    parts = [d // 2 - 2 * (d // 6), d // 6, d // 6]
    f, h, wd = frames, height // 2, width // 2
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(wd), indexing='ij'), -1).reshape(-1, 3)
    angles = []
    for axis, n in enumerate(parts):
        freqs = 1.0 / (10000 ** (torch.arange(0, 2 * n, 2, dtype=torch.float64) / (2 * n)))
        angles.append(grid[:, axis:axis + 1].double() * freqs)
    angles = torch.cat(angles, 1).float().to(dev)  # [L, 64]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    def rope(x):  # [1, L, H, 128]
        re, im = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack([re * cos - im * sin, re * sin + im * cos], -1).flatten(-2)

    def attention(q, k, v):  # [1, L, H, D] -> [1, L, H*D]
        o = F.scaled_dot_product_attention(q.to(bf).transpose(1, 2), k.to(bf).transpose(1, 2), v.to(bf).transpose(1, 2))
        return o.transpose(1, 2).flatten(2).float()

    x0 = torch.randn(1, 16, frames, height, width, device=dev)
    context0 = torch.randn(1, 512, 4096, device=dev)
    t = torch.tensor([500.0], device=dev)

    @torch.no_grad()
    def forward():
        x = F.conv3d(x0.to(bf), w['patch_embedding.weight'].to(bf), w['patch_embedding.bias'].to(bf), stride=(1, 2, 2))
        x = x.flatten(2).transpose(1, 2).float()
        half = 128
        sinus = t.double()[:, None] * torch.pow(10000.0, -torch.arange(half, device=dev, dtype=torch.float64) / half)
        sinus = torch.cat([sinus.cos(), sinus.sin()], 1).float()
        e = lin(F.silu(lin(sinus, 'time_embedding.0')), 'time_embedding.2')
        e0 = lin(F.silu(e), 'time_projection.1').unflatten(1, (6, dim))
        ctx = lin(F.gelu(lin(context0, 'text_embedding.0'), approximate='tanh'), 'text_embedding.2')
        for i in range(layers):
            p = f'blocks.{i}.'
            m = (w[p + 'modulation'].float() + e0).chunk(6, 1)
            y = ln(x) * (1 + m[1]) + m[0]
            q = rope(rms(lin(y, p + 'self_attn.q'), p + 'self_attn.norm_q.weight').unflatten(-1, (heads, 128)))
            k = rope(rms(lin(y, p + 'self_attn.k'), p + 'self_attn.norm_k.weight').unflatten(-1, (heads, 128)))
            v = lin(y, p + 'self_attn.v').unflatten(-1, (heads, 128))
            x = x + lin(attention(q, k, v), p + 'self_attn.o') * m[2]
            y = ln(x, p + 'norm3')
            q = rms(lin(y, p + 'cross_attn.q'), p + 'cross_attn.norm_q.weight').unflatten(-1, (heads, 128))
            k = rms(lin(ctx, p + 'cross_attn.k'), p + 'cross_attn.norm_k.weight').unflatten(-1, (heads, 128))
            v = lin(ctx, p + 'cross_attn.v').unflatten(-1, (heads, 128))
            x = x + lin(attention(q, k, v), p + 'cross_attn.o')
            y = ln(x) * (1 + m[4]) + m[3]
            x = x + lin(F.gelu(lin(y, p + 'ffn.0'), approximate='tanh'), p + 'ffn.2') * m[5]
        hm = (w['head.modulation'].float() + e[:, None]).chunk(2, 1)
        out = lin(ln(x) * (1 + hm[1]) + hm[0], 'head.head')
        return out.cpu()

    forward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    print(json.dumps({'torch': torch.__version__, 'device': torch.cuda.get_device_name(), 'layers': layers,
                      'tokens': f * h * wd, 'seconds': seconds, 'median': seconds[len(seconds) // 2],
                      'peakBytes': torch.cuda.max_memory_allocated()}))


if __name__ == '__main__':
    main()
