#!/usr/bin/env python3
"""End-to-end text-to-video references of the official Wan2.1 pipeline on the tiny random
models, for testing wan-native's Sampler (test/native/sampler.test.ts).

How to run (Debian's Python with torch 1.13 from python3-torch):

    git --git-dir=<Wan2.1 git dir> archive 9737cba9c1c3c4d04b33fcad41c111989865d315 wan \
        | (mkdir -p /tmp/wan21 && tar x -C /tmp/wan21)
    /usr/bin/python3 scripts/make-sampling-references.py --wan-src /tmp/wan21

It runs what wan/text2video.py `WanT2V.generate` runs, step for step, with the official
modules: T5Encoder (umT5) on fixed token ids (the tokenizer is bypassed: the ids are ours),
the pipeline's trimming of each context to its real length, noise from a CPU generator seeded
with the seed, the official scheduler (FlowUniPCMultistepScheduler with set_timesteps(steps,
shift), or FlowDPMSolverMultistepScheduler with get_sampling_sigmas / retrieve_timesteps),
two DiT passes per step combined as uncond + guide_scale * (cond - uncond), and the VAE
decode of the result. Only the loop itself is restated here (WanT2V's constructor loads
real checkpoints and a Hugging Face tokenizer).

Shims, none of which touch the math (see make-dit-references.py for the DiT ones):
  * `diffusers`: ConfigMixin/register_to_config record the constructor arguments in
    `self.config` (the schedulers read them back), SchedulerMixin is an empty class,
    SchedulerOutput a tuple holder, deprecate a no-op, randn_tensor torch.randn.
  * `einops.rearrange`: the two reshapes vae.py uses.
  * `ftfy`, `regex`, `transformers` (imported by the tokenizer module, which is not used),
    and torch.cuda.current_device (a default argument in t5.py, evaluated at import).
  * On torch < 2.0, F.scaled_dot_product_attention (used by the VAE's middle attention) as
    softmax(q k^T / sqrt(d)) v in float32.

Writes test/fixtures/sampling/golden_t2v_sampling.safetensors: per case `<case>.ids_pos`,
`.ids_neg` (I64 [1,16]) and masks, `.context`, `.context_null` (trimmed T5 outputs),
`.noise`, `.timesteps` (F64), `.latents` [S,16,T,H,W] after each step, `.x0` and
`.video` (VAE decode, clamped); `feta.x` -> `feta.out`, one DiT forward with Enhance-A-Video
(weight 2); `i2v.*`: an image (and `end_image`), the `y` the official I2V and FLF2V code
build from them at 48x32, 5 frames, and `i2v.x0`, 3 unipc steps of WanI2V.generate's loop on
tiny_i2v_dit with a random CLIP feature (randn [1,257,1280], generator seed 11). The call arguments are in the metadata.
"""
import argparse
import functools
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import types

import torch

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
spec = importlib.util.spec_from_file_location("dit_refs", os.path.join(REPO, "scripts", "make-dit-references.py"))
dit_refs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dit_refs)


def install_shims():
    dif = sys.modules.get("diffusers") or types.ModuleType("diffusers")
    cu = types.ModuleType("diffusers.configuration_utils")

    class ConfigMixin:
        def register_to_config(self, **kwargs):
            for k, v in kwargs.items():
                setattr(self.config, k, v)

    def register_to_config(init):
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            values.pop("self")
            values.update(values.pop("kwargs", {}) or {})
            self.config = types.SimpleNamespace(**values)
            init(self, *args, **kwargs)

        return wrapper

    cu.ConfigMixin, cu.register_to_config = ConfigMixin, register_to_config
    sched = types.ModuleType("diffusers.schedulers")
    su = types.ModuleType("diffusers.schedulers.scheduling_utils")

    class SchedulerMixin:
        pass

    class SchedulerOutput:
        def __init__(self, prev_sample):
            self.prev_sample = prev_sample

    su.SchedulerMixin, su.SchedulerOutput = SchedulerMixin, SchedulerOutput
    su.KarrasDiffusionSchedulers = []
    utils = types.ModuleType("diffusers.utils")
    utils.deprecate = lambda *a, **k: None
    utils.is_scipy_available = lambda: False
    tu = types.ModuleType("diffusers.utils.torch_utils")
    tu.randn_tensor = lambda shape, generator=None, device=None, dtype=None: torch.randn(
        shape, generator=generator, device=device, dtype=dtype)
    dif.configuration_utils, dif.schedulers, dif.utils = cu, sched, utils
    sched.scheduling_utils, utils.torch_utils = su, tu
    sys.modules.update({"diffusers.configuration_utils": cu, "diffusers.schedulers": sched,
                        "diffusers.schedulers.scheduling_utils": su, "diffusers.utils": utils,
                        "diffusers.utils.torch_utils": tu})

    einops = types.ModuleType("einops")

    def rearrange(x, pattern, **dims):
        p = pattern.replace(" ", "")
        if p == "bcthw->(bt)chw":
            b, c, t, h, w = x.shape
            return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if p == "(bt)chw->bcthw":
            t = dims["t"]
            bt, c, h, w = x.shape
            return x.reshape(bt // t, t, c, h, w).permute(0, 2, 1, 3, 4)
        raise NotImplementedError(pattern)

    einops.rearrange = rearrange
    sys.modules["einops"] = einops
    for name in ("ftfy", "regex", "transformers"):
        m = types.ModuleType(name)
        m.AutoTokenizer = None
        sys.modules[name] = m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wan-src", required=True)
    ap.add_argument("--weights-dir", default=os.path.join(REPO, "..", "shared", "golden", "weights"))
    ap.add_argument("--out", default=os.path.join(REPO, "test", "fixtures", "sampling", "golden_t2v_sampling.safetensors"))
    args = ap.parse_args()

    model_mod = dit_refs.import_official(args.wan_src)  # DiT with the float32 attention shim
    install_shims()
    for name, sub in (("wan.utils", "wan/utils"),):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(args.wan_src, sub)]
        sys.modules[name] = pkg
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):  # torch < 2.0
        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
            assert attn_mask is None and dropout_p == 0.0 and not is_causal
            w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
            return w @ v
        torch.nn.functional.scaled_dot_product_attention = sdpa  # the VAE's middle attention
    torch.cuda.current_device = lambda: 0  # a default argument of T5EncoderModel, evaluated at import
    t5 = importlib.import_module("wan.modules.t5")
    vae_mod = importlib.import_module("wan.modules.vae")
    unipc = importlib.import_module("wan.utils.fm_solvers_unipc")
    dpm = importlib.import_module("wan.utils.fm_solvers")

    w = w_dir = args.weights_dir
    dit_cfg = json.load(open(os.path.join(w, "tiny_t2v_dit.config.json")))["config"]
    dit_state, _ = dit_refs.read_safetensors(os.path.join(w, "tiny_t2v_dit.f32.safetensors"))
    dit = dit_refs.build(model_mod, dit_cfg, dit_state)

    c5 = json.load(open(os.path.join(w, "tiny_umt5_enc.config.json")))["config"]
    t5_state, _ = dit_refs.read_safetensors(os.path.join(w, "tiny_umt5_enc.f32.safetensors"))
    encoder = t5.T5Encoder(vocab=c5["vocab_size"], dim=c5["dim"], dim_attn=c5["dim_attn"], dim_ffn=c5["dim_ffn"],
                           num_heads=c5["num_heads"], num_layers=c5["encoder_layers"], num_buckets=c5["num_buckets"],
                           shared_pos=c5["shared_pos"], dropout=c5["dropout"]).eval().float()
    encoder.load_state_dict(t5_state, strict=True)

    vae_state, _ = dit_refs.read_safetensors(os.path.join(w, "tiny_vae.f32.safetensors"))
    vae_cfg = json.load(open(os.path.join(w, "tiny_vae.config.json")))["config"]
    vae_model = vae_mod.WanVAE_(**vae_cfg).eval().float()  # what _video_vae builds
    vae_model.load_state_dict(vae_state, strict=True)
    # The 16 official latent constants, as the shared VAE goldens hold them (WanVAE.__init__).
    vae_golden, _ = dit_refs.read_safetensors(os.path.join(w, "..", "golden_vae.safetensors"))
    mean, std = vae_golden["mean"], vae_golden["std"]
    scale = [mean, 1.0 / std]

    def encode_text(ids):
        mask = (ids != 0).long()  # pad id 0; the ids below have no 0 inside
        with torch.no_grad():
            out = encoder(ids, mask)
        return out[0, : int(mask.sum())], mask  # T5EncoderModel: [u[:v] for u, v in zip(context, seq_lens)]

    text_len = 16
    ids_pos = torch.zeros(1, text_len, dtype=torch.long)
    ids_pos[0, :7] = torch.tensor([17, 42, 101, 7, 230, 55, 1])
    ids_neg = torch.zeros(1, text_len, dtype=torch.long)
    ids_neg[0, :4] = torch.tensor([99, 3, 150, 1])
    context, mask_pos = encode_text(ids_pos)
    context_null, mask_neg = encode_text(ids_neg)

    cases = {
        "unipc": dict(solver="unipc", steps=6, shift=5.0, guide_scale=5.0, seed=42, size=(48, 32), frames=5),
        "dpmpp": dict(solver="dpm++", steps=5, shift=3.0, guide_scale=4.0, seed=7, size=(32, 32), frames=9),
    }
    out, calls = {}, {}
    for case, c in cases.items():
        W, H = c["size"]
        F = c["frames"]
        target_shape = (16, (F - 1) // 4 + 1, H // 8, W // 8)
        seq_len = math.ceil((target_shape[2] * target_shape[3]) / 4 * target_shape[1])
        g = torch.Generator()
        g.manual_seed(c["seed"])
        noise = torch.randn(*target_shape, dtype=torch.float32, generator=g)
        if c["solver"] == "unipc":
            s = unipc.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
            s.set_timesteps(c["steps"], device="cpu", shift=c["shift"])
            timesteps = s.timesteps
        else:
            s = dpm.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
            sigmas = dpm.get_sampling_sigmas(c["steps"], c["shift"])
            timesteps, _ = dpm.retrieve_timesteps(s, device="cpu", sigmas=sigmas)
        latents = noise
        trace = []
        with torch.no_grad():
            for t in timesteps:
                ts = torch.stack([t])
                cond = dit([latents], t=ts, context=[context], seq_len=seq_len)[0]
                uncond = dit([latents], t=ts, context=[context_null], seq_len=seq_len)[0]
                pred = uncond + c["guide_scale"] * (cond - uncond)
                latents = s.step(pred.unsqueeze(0), t, latents.unsqueeze(0), return_dict=False, generator=g)[0].squeeze(0)
                trace.append(latents)
            video = vae_model.decode(latents.unsqueeze(0), scale).float().clamp_(-1, 1)[0]
            vae_model.clear_cache()
        out[f"{case}.noise"] = noise
        out[f"{case}.timesteps"] = timesteps.to(torch.float64)
        out[f"{case}.latents"] = torch.stack(trace)
        out[f"{case}.x0"] = latents
        out[f"{case}.video"] = video
        calls[case] = dict(c, seq_len=seq_len, target_shape=target_shape)
        print(case, "timesteps", [float(u) for u in timesteps], "x0 absmax", float(latents.abs().max()))
    # Enhance-A-Video on one DiT forward: rope_apply is wrapped to see each self-attention's q
    # and k before RoPE (model.py applies it to q, then k, only in self-attention), and the
    # attention output is scaled by the gain before the output projection, as the wrapper does.
    # Tokens are grouped by frame (token f*S + s), as the method defines it.
    feta_weight = 2.0
    stash = []
    official_rope, official_attention = model_mod.rope_apply, model_mod.flash_attention

    def rope_spy(x, grid_sizes, freqs):
        stash.append((x, grid_sizes))
        return official_rope(x, grid_sizes, freqs)

    def attention_with_gain(q, k, v, **kw):
        o = official_attention(q, k, v, **kw)
        if not stash:
            return o  # cross-attention
        (qq, grids), (kk, _) = stash[0], stash[1]
        stash.clear()
        gains = []
        for i in range(qq.size(0)):
            f, h, w = (int(u) for u in grids[i])
            n, d = qq.size(2), qq.size(3)
            qs = qq[i, : f * h * w].float().reshape(f, h * w, n, d).permute(1, 2, 0, 3)
            ks = kk[i, : f * h * w].float().reshape(f, h * w, n, d).permute(1, 2, 0, 3)
            a = torch.softmax(qs @ ks.transpose(-1, -2) / math.sqrt(d), dim=-1)
            off = (a * (1 - torch.eye(f))).sum((-1, -2)) / (f * f - f)
            gains.append(max(1.0, float(off.mean()) * (f + feta_weight)))
        return o * torch.tensor(gains).view(-1, 1, 1, 1).to(o.dtype)

    model_mod.rope_apply, model_mod.flash_attention = rope_spy, attention_with_gain
    g = torch.Generator()
    g.manual_seed(5)
    feta_x = torch.randn(16, 3, 4, 6, generator=g)
    with torch.no_grad():
        feta_out = dit([feta_x], t=torch.tensor([700]), context=[context], seq_len=18)[0]
    model_mod.rope_apply, model_mod.flash_attention = official_rope, official_attention
    with torch.no_grad():
        plain_out = dit([feta_x], t=torch.tensor([700]), context=[context], seq_len=18)[0]
    print("feta changes the output by", float((feta_out - plain_out).abs().max()))
    out["feta.x"], out["feta.out"] = feta_x, feta_out
    calls["feta"] = dict(t=700, seq_len=18, weight=feta_weight, context="context")

    # I2V (wan/image2video.py) and FLF2V (first_last_frame2video.py) conditioning on given
    # sizes: the image(s) resized by bicubic interpolate, zeros between, VAE-encoded, under the
    # 4-channel frame mask; then WanI2V.generate's loop on the tiny i2v DiT, with a random
    # CLIP feature (the tiny CLIP's width is not 1280).
    g = torch.Generator()
    g.manual_seed(9)
    image = torch.rand(3, 40, 56, generator=g) * 2 - 1
    end_image = torch.rand(3, 24, 40, generator=g) * 2 - 1
    # Not stored: torch.randn(1, 257, 1280) from a generator seeded with 11, which the test
    # regenerates with its own (equal) generator.
    clip_fea = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(11))
    F, h, w = 5, 32, 48
    lat = ((F - 1) // 4 + 1, h // 8, w // 8)
    resize = lambda im: torch.nn.functional.interpolate(im[None], size=(h, w), mode="bicubic").transpose(0, 1)
    with torch.no_grad():
        video = torch.concat([resize(image), torch.zeros(3, F - 1, h, w)], dim=1)
        y = torch.concat([dit_refs.i2v_mask(lat[0], lat[1], lat[2]), vae_model.encode(video[None], scale).float()[0]])
        vae_model.clear_cache()
        video = torch.concat([resize(image), torch.zeros(3, F - 2, h, w), resize(end_image)], dim=1)
        y_flf = torch.concat([dit_refs.i2v_mask(lat[0], lat[1], lat[2], last=True),
                              vae_model.encode(video[None], scale).float()[0]])
        vae_model.clear_cache()
    i2v_cfg = json.load(open(os.path.join(w_dir, "tiny_i2v_dit.config.json")))["config"]
    i2v_state, _ = dit_refs.read_safetensors(os.path.join(w_dir, "tiny_i2v_dit.f32.safetensors"))
    i2v = dit_refs.build(model_mod, i2v_cfg, i2v_state)
    seq_len = lat[0] * lat[1] * lat[2] // 4
    g = torch.Generator()
    g.manual_seed(42)
    latent = torch.randn(16, *lat, dtype=torch.float32, generator=g)
    s = unipc.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    s.set_timesteps(3, device="cpu", shift=5.0)
    with torch.no_grad():
        for t in s.timesteps:
            ts = torch.stack([t])
            cond = i2v([latent], t=ts, context=[context], clip_fea=clip_fea, seq_len=seq_len, y=[y])[0]
            uncond = i2v([latent], t=ts, context=[context_null], clip_fea=clip_fea, seq_len=seq_len, y=[y])[0]
            latent = s.step((uncond + 5.0 * (cond - uncond)).unsqueeze(0), t, latent.unsqueeze(0),
                            return_dict=False, generator=g)[0].squeeze(0)
    out.update({"i2v.image": image, "i2v.end_image": end_image, "i2v.y": y,
                "flf2v.y": y_flf, "i2v.x0": latent})
    calls["i2v"] = dict(solver="unipc", steps=3, shift=5.0, guide_scale=5.0, seed=42, size=(w, h), frames=F)
    print("i2v x0 absmax", float(latent.abs().max()))

    out["ids_pos"], out["ids_neg"] = ids_pos, ids_neg
    out["mask_pos"], out["mask_neg"] = mask_pos, mask_neg
    out["context"], out["context_null"] = context, context_null
    dit_refs.write_safetensors(args.out, out, {
        "source": f"Wan2.1 {dit_refs.WAN_COMMIT}", "torch": torch.__version__,
        "description": "WanT2V.generate's loop on tiny_umt5_enc + tiny_t2v_dit + tiny_vae (f32), fixed token ids",
        "calls": json.dumps(calls),
    })


if __name__ == "__main__":
    main()
