#!/usr/bin/env python3
"""Reference outputs of the official Wan2.1 DiT (WanModel) for I2V and FLF2V, on tiny
random-weight models, for testing wan-native's C++ forward.

How to run (Debian's Python, which has torch 1.13 from python3-torch; not the pyenv one):

    # the official code, at the commit the shared goldens use (any checkout of it will do)
    git --git-dir=<Wan2.1 git dir> archive 9737cba9c1c3c4d04b33fcad41c111989865d315 wan \
        | (mkdir -p /tmp/wan21 && tar x -C /tmp/wan21)
    /usr/bin/python3 scripts/make-dit-references.py --wan-src /tmp/wan21

`--wan-src` is a directory holding the official `wan/modules/model.py` and
`wan/modules/attention.py`; nothing of the official code is copied here. Only
`wan.modules.model` and `wan.modules.attention` are imported (the `wan` package's
`__init__` pulls in the whole pipeline and is bypassed). Shims, none of which touch the
model's math:
  * `diffusers` is stubbed: ModelMixin -> torch.nn.Module, ConfigMixin -> empty class,
    register_to_config -> identity (it only records the constructor arguments).
  * `flash_attention` (CUDA-only, flash-attn) is replaced by plain float32 math with the
    same varlen semantics: per sample i, queries q[i, :q_lens[i]] (all when None) attend
    to keys/values k[i, :k_lens[i]] (all when None) with softmax(q k^T * d^-0.5) v; rows
    past q_lens are zero. The official path rounds q/k/v to bf16 first; with
    `attn_bf16=True` the shim does that too (and rounds the output), otherwise all fp32.

Inputs: the tiny weights from --weights-dir (default /work/shared/golden/weights); tiny
model configs come from the matching *.config.json. All random inputs come from CPU
torch.Generator objects with fixed seeds, so reruns are byte-identical.

Writes (under --out-dir, default test/fixtures/dit/):
  * golden_dit_i2v.safetensors   WanModel(model_type='i2v') on tiny_i2v_dit
  * tiny_flf2v_emb_pos.bf16.safetensors (img_emb.emb_pos only) + tiny_flf2v_dit.config.json
        WanModel(model_type='flf2v'): every tensor of tiny_i2v_dit, plus
        img_emb.emb_pos [1,514,1280] = bf16(0.1 * N(0,1)) drawn after torch.manual_seed(0)
  * golden_dit_flf2v.safetensors WanModel(model_type='flf2v') on tiny_flf2v_dit
Each golden's __metadata__ holds JSON strings: `config`, `description`, `calls` (the exact
forward arguments of every case, by tensor name), plus `source` (official commit),
`weights`, `attention`, `torch`.

To stay small, one CLIP feature tensor is stored once: `clip_fea` [2,257,1280] in
golden_dit_i2v.safetensors (values bf16-representable, stored F32). I2V cases a and b use
clip_fea[0:1], case c uses both rows, and the FLF2V case uses the whole tensor (row 0 =
first frame, row 1 = last frame), so golden_dit_flf2v.safetensors has no clip_fea of its
own.

Before writing anything it checks the harness: the official t2v model on tiny_t2v_dit
must reproduce every output of /work/shared/golden/golden_dit_t2v.safetensors
(--golden-dir) to 1e-5 (it does to ~1e-7), including a_attn_bf16.out with bf16 attention.
"""
import argparse
import importlib
import json
import os
import struct
import sys
import types

import numpy as np
import torch

WAN_COMMIT = "9737cba9c1c3c4d04b33fcad41c111989865d315"
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# ----------------------------------------------------------------------------------------
# safetensors I/O (the `safetensors` package is not in Debian's python)

_NP = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
_NAME = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
         torch.bfloat16: "BF16"}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        s, e = info["data_offsets"]
        raw = data[8 + n + s:8 + n + e]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_NP[info["dtype"]])
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return out, meta


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": _NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


# ----------------------------------------------------------------------------------------
# shims and import of the official module

ATTN = {"bf16": False}


def flash_attention_math(q, k, v, q_lens=None, k_lens=None, dropout_p=0.,
                         softmax_scale=None, q_scale=None, causal=False,
                         window_size=(-1, -1), deterministic=False,
                         dtype=torch.bfloat16, version=None):
    """Stand-in for wan.modules.attention.flash_attention (flash_attn_varlen_func)."""
    assert dropout_p == 0 and not causal and tuple(window_size) == (-1, -1)
    b, lq, lk = q.size(0), q.size(1), k.size(1)
    q_lens = [lq] * b if q_lens is None else [int(u) for u in q_lens]
    k_lens = [lk] * b if k_lens is None else [int(u) for u in k_lens]
    out = torch.zeros(b, lq, q.size(2), v.size(3), dtype=torch.float32)
    for i in range(b):
        qi = q[i, :q_lens[i]].float()
        ki = k[i, :k_lens[i]].float()
        vi = v[i, :k_lens[i]].float()
        if ATTN["bf16"]:
            qi, ki, vi = (u.to(torch.bfloat16).float() for u in (qi, ki, vi))
        if q_scale is not None:
            qi = qi * q_scale
        scale = softmax_scale if softmax_scale is not None else qi.size(-1) ** -0.5
        s = torch.einsum("qnd,knd->nqk", qi, ki) * scale
        o = torch.einsum("nqk,knd->qnd", torch.softmax(s, dim=-1), vi)
        out[i, :q_lens[i]] = o
    if ATTN["bf16"]:
        out = out.to(torch.bfloat16).float()
    return out.type(q.dtype)


def import_official(wan_src):
    for need in ("wan/modules/model.py", "wan/modules/attention.py"):
        if not os.path.isfile(os.path.join(wan_src, need)):
            sys.exit(f"--wan-src {wan_src}: missing {need}")
    # diffusers stubs (config bookkeeping only)
    dif = types.ModuleType("diffusers")
    cu = types.ModuleType("diffusers.configuration_utils")
    models = types.ModuleType("diffusers.models")
    mu = types.ModuleType("diffusers.models.modeling_utils")

    class ConfigMixin:
        pass

    cu.ConfigMixin = ConfigMixin
    cu.register_to_config = lambda fn: fn
    mu.ModelMixin = torch.nn.Module
    dif.configuration_utils, dif.models, models.modeling_utils = cu, models, mu
    sys.modules.update({"diffusers": dif, "diffusers.configuration_utils": cu,
                        "diffusers.models": models, "diffusers.models.modeling_utils": mu})
    # bypass wan/__init__.py and wan/modules/__init__.py (they import the pipelines)
    for name, sub in (("wan", "wan"), ("wan.modules", "wan/modules")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(wan_src, sub)]
        sys.modules[name] = pkg
    attention = importlib.import_module("wan.modules.attention")
    attention.flash_attention = flash_attention_math  # model.py imports it by name
    model = importlib.import_module("wan.modules.model")
    assert model.flash_attention is flash_attention_math
    return model


# ----------------------------------------------------------------------------------------

def build(wm, config, state):
    cfg = dict(config)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    cfg["window_size"] = tuple(cfg["window_size"])
    m = wm.WanModel(**cfg)
    m.load_state_dict(state, strict=True)
    return m.eval().float()


def bf16r(t):
    return t.to(torch.bfloat16).float()


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def i2v_mask(f, h, w, last=False):
    """The 4 mask channels image2video.py (last=False) / first_last_frame2video.py build
    for f latent frames (4*(f-1)+1 video frames)."""
    n = 4 * (f - 1) + 1
    msk = torch.ones(1, n, h, w)
    if last:
        msk[:, 1:-1] = 0
    else:
        msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]],
                       dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, h, w)
    return msk.transpose(1, 2)[0]


def make_y(g, f, h, w, last=False):
    return torch.cat([i2v_mask(f, h, w, last), randn(g, 16, f, h, w)])


class Hooks:
    def __init__(self, modules):
        self.store, self.handles = {}, []
        for name, mod in modules.items():
            self.handles.append(mod.register_forward_hook(self._fn(name)))

    def _fn(self, name):
        def fn(_m, _inp, out):
            self.store[name] = out.detach().float().clone()
        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


def run(model, x, t, context, seq_len, clip_fea=None, y=None):
    with torch.no_grad():
        return model(x, t=t, context=context, seq_len=seq_len, clip_fea=clip_fea, y=y)


def check_t2v(wm, weights_dir, golden_dir):
    """Returns the max abs difference over the fp32 outputs of golden_dit_t2v."""
    w, meta = read_safetensors(os.path.join(weights_dir, "tiny_t2v_dit.f32.safetensors"))
    model = build(wm, json.loads(meta["config"]), w)
    g, _ = read_safetensors(os.path.join(golden_dir, "golden_dit_t2v.safetensors"))
    worst = 0.0
    hooks = Hooks({"im.patch_embedding_out": model.patch_embedding})
    for c in ("a", "b", "c"):
        out = run(model, [g[f"{c}.x"]], g[f"{c}.t"], [g[f"{c}.context"]],
                  int(g[f"{c}.seq_len"]))[0]
        d = (out - g[f"{c}.out"]).abs().max().item()
        print(f"t2v check {c}.out: max abs diff {d:.3g}")
        worst = max(worst, d)
        if c == "a":
            hooks.remove()
            d = (hooks.store["im.patch_embedding_out"] - g["im.patch_embedding_out"])
            print(f"t2v check im.patch_embedding_out (a Conv3d, no shim involved): "
                  f"max abs diff {d.abs().max().item():.3g}")
    outs = run(model, [g["d.x0"], g["d.x1"]], g["d.t"], [g["d.context0"], g["d.context1"]],
               int(g["d.seq_len"]))
    for i in range(2):
        d = (outs[i] - g[f"d.out{i}"]).abs().max().item()
        print(f"t2v check d.out{i}: max abs diff {d:.3g}")
        worst = max(worst, d)
    # bf16 rounding flips make this one noisy: 1e-7 changes of the input move it ~5e-4
    ATTN["bf16"] = True
    out = run(model, [g["a.x"]], g["a.t"], [g["a.context"]], int(g["a.seq_len"]))[0]
    ATTN["bf16"] = False
    dbf = (out - g["a_attn_bf16.out"]).abs().max().item()
    print(f"t2v check a_attn_bf16.out (bf16 attention): max abs diff {dbf:.3g}")
    if worst > 1e-5 or dbf > 2e-3:
        sys.exit(f"harness does not reproduce golden_dit_t2v ({worst:.3g}, bf16 {dbf:.3g})")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wan-src", required=True,
                    help="directory holding the official wan/modules/{model,attention}.py")
    ap.add_argument("--weights-dir", default="/work/shared/golden/weights")
    ap.add_argument("--golden-dir", default="/work/shared/golden")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "test", "fixtures", "dit"))
    ap.add_argument("--skip-t2v-check", action="store_true")
    args = ap.parse_args()

    wm = import_official(os.path.abspath(args.wan_src))
    t2v_diff = None if args.skip_t2v_check else check_t2v(wm, args.weights_dir,
                                                           args.golden_dir)
    ATTN["bf16"] = False
    attn_note = ("flash_attention replaced by fp32 math: softmax(q k^T / sqrt(head_dim)) v "
                 "per sample over keys [:k_lens] (k_lens=None: all); q_lens never given")
    common = {"source": f"Wan-Video/Wan2.1@{WAN_COMMIT} wan/modules/model.py",
              "attention": attn_note,
              "torch": torch.__version__,
              "script": "scripts/make-dit-references.py"}
    if t2v_diff is not None:
        common["t2v_check_max_abs_diff"] = f"{t2v_diff:.3g}"

    # ---------------------------------------------------------------- I2V
    w_i2v, meta = read_safetensors(os.path.join(args.weights_dir,
                                                "tiny_i2v_dit.f32.safetensors"))
    cfg_i2v = json.loads(meta["config"])
    i2v = build(wm, cfg_i2v, w_i2v)

    g = torch.Generator().manual_seed(20250601)
    clip_fea = bf16r(randn(g, 2, 257, 1280))
    T = {"clip_fea": clip_fea}
    # case a
    xa, ya, ca = randn(g, 16, 3, 4, 6), make_y(g, 3, 4, 6), randn(g, 7, 32)
    # case c
    x0, y0, c0 = randn(g, 16, 3, 4, 6), make_y(g, 3, 4, 6), randn(g, 7, 32)
    x1, y1, c1 = randn(g, 16, 2, 4, 4), make_y(g, 2, 4, 4), randn(g, 12, 32)

    blk0 = i2v.blocks[0]
    hooks = Hooks({"im.img_emb": i2v.img_emb, "im.block0.self_attn": blk0.self_attn,
                   "im.block0.cross_attn": blk0.cross_attn, "im.block0.out": blk0})
    out = run(i2v, [xa], torch.tensor([999]), [ca], 18, clip_fea[0:1], [ya])[0]
    hooks.remove()
    T.update({"a.x": xa, "a.y": ya, "a.context": ca, "a.t": torch.tensor([999]),
              "a.seq_len": torch.tensor(18), "a.out": out})
    T.update(hooks.store)

    out = run(i2v, [xa], torch.tensor([500]), [ca], 24, clip_fea[0:1], [ya])[0]
    T.update({"b.x": xa, "b.y": ya, "b.context": ca, "b.t": torch.tensor([500]),
              "b.seq_len": torch.tensor(24), "b.out": out})

    outs = run(i2v, [x0, x1], torch.tensor([250, 873]), [c0, c1], 18, clip_fea, [y0, y1])
    T.update({"c.x0": x0, "c.y0": y0, "c.x1": x1, "c.y1": y1, "c.context0": c0,
              "c.context1": c1, "c.t": torch.tensor([250, 873]),
              "c.seq_len": torch.tensor(18), "c.out0": outs[0], "c.out1": outs[1]})

    def call(n, xs, ys, cs, clip, outs):
        return {"x": [f"{n}.{u}" for u in xs], "y": [f"{n}.{u}" for u in ys], "t": f"{n}.t",
                "context": [f"{n}.{u}" for u in cs], "seq_len": f"{n}.seq_len",
                "clip_fea": clip, "returns": [f"{n}.{u}" for u in outs]}

    calls = {
        "a": call("a", ["x"], ["y"], ["context"], "clip_fea[0:1]", ["out"]),
        "b": call("b", ["x"], ["y"], ["context"], "clip_fea[0:1]", ["out"]),
        "c": call("c", ["x0", "x1"], ["y0", "y1"], ["context0", "context1"], "clip_fea",
                  ["out0", "out1"]),
    }
    calls["_form"] = ("WanModel.forward(x=[...], t=t, context=[...], seq_len=int(seq_len), "
                      "clip_fea=clip_fea, y=[...]) -> list of outputs")
    desc = ("WanModel(i2v tiny).forward on tiny_i2v_dit; clip_fea [2,257,1280] shared "
            "(bf16-representable values, F32): cases a and b use clip_fea[0:1], c uses both "
            "rows; a: x [16,3,4,6], y [20,3,4,6] (4 mask channels as image2video.py builds: "
            "first latent frame 1, rest 0; then 16 random latent channels), t=[999], "
            "context [7,32], seq_len 18; b: as a with t=[500], seq_len 24 (6 padded tokens); "
            "c: batch of 2 grids (x0/y0 [.,3,4,6], x1/y1 [.,2,4,4]), t=[250,873], contexts "
            "L=7 and 12, seq_len 18 -> out0, out1; im.* = intermediates of case a: img_emb "
            "(MLPProj output, [1,257,64]), block0.self_attn / block0.cross_attn (module "
            "outputs, before the gate/residual), block0.out (block output); inputs drawn "
            "from torch.Generator().manual_seed(20250601)")
    write_safetensors(os.path.join(args.out_dir, "golden_dit_i2v.safetensors"), T,
                      dict(common, config=json.dumps(cfg_i2v), description=desc,
                           calls=json.dumps(calls), weights="tiny_i2v_dit.f32.safetensors "
                           "(/work/shared/golden/weights)"))

    # ---------------------------------------------------------------- FLF2V weights
    cfg_flf = dict(cfg_i2v, model_type="flf2v")
    torch.manual_seed(0)
    emb_pos = bf16r(0.1 * torch.randn(1, 2 * 257, 1280))
    flf = build(wm, cfg_flf, dict(w_i2v, **{"img_emb.emb_pos": emb_pos}))
    sd = {k: v.detach().clone() for k, v in flf.state_dict().items()}
    assert set(sd) == set(w_i2v) | {"img_emb.emb_pos"}
    # Only emb_pos is written (bf16, exact): every other tensor is tiny_i2v_dit's, so the
    # tests load the model from both files as two shards instead of a 10 MB copy.
    write_safetensors(os.path.join(args.out_dir, "tiny_flf2v_emb_pos.bf16.safetensors"),
                      {"img_emb.emb_pos": emb_pos.to(torch.bfloat16)},
                      {"source": f"Wan-Video/Wan2.1@{WAN_COMMIT}",
                       "note": "img_emb.emb_pos of the tiny FLF2V model: bf16(0.1*randn(1,514,1280)) "
                               "after torch.manual_seed(0); its other tensors are tiny_i2v_dit's"})
    conf = {"config": cfg_flf, "module": "wan.modules.model.WanModel",
            "note": "img_emb = MLPProj(1280, dim, flf_pos_emb=True): emb_pos [1,514,1280] "
                    "is added to the 2x257 CLIP tokens before proj; every other tensor "
                    "equals tiny_i2v_dit; emb_pos = bf16(0.1*N(0,1)), torch.manual_seed(0)",
            "num_params": sum(v.numel() for v in sd.values()),
            "keys": {k: list(v.shape) for k, v in sd.items()}}
    cpath = os.path.join(args.out_dir, "tiny_flf2v_dit.config.json")
    with open(cpath, "w") as f:
        json.dump(conf, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(cpath)}")

    # ---------------------------------------------------------------- FLF2V golden
    g = torch.Generator().manual_seed(20250602)
    x, y, c = randn(g, 16, 3, 4, 6), make_y(g, 3, 4, 6, last=True), randn(g, 5, 32)
    blk0 = flf.blocks[0]
    hooks = Hooks({"im.img_emb": flf.img_emb, "im.block0.cross_attn": blk0.cross_attn})
    # the pipeline passes clip.visual([first, last]) = [2,257,1280]; MLPProj views it as
    # [1,514,1280] (first frame's 257 tokens, then the last frame's)
    out = run(flf, [x], torch.tensor([700]), [c], 18, clip_fea, [y])[0]
    hooks.remove()
    F = {"a.x": x, "a.y": y, "a.context": c, "a.t": torch.tensor([700]),
         "a.seq_len": torch.tensor(18), "a.out": out}
    F.update(hooks.store)
    calls = {"a": call("a", ["x"], ["y"], ["context"],
                       "golden_dit_i2v.safetensors:clip_fea (all of [2,257,1280]: row 0 = "
                       "first frame, row 1 = last frame)", ["out"])}
    calls["_form"] = ("WanModel.forward(x=[...], t=t, context=[...], seq_len=int(seq_len), "
                      "clip_fea=clip_fea, y=[...]) -> list of outputs")
    desc = ("WanModel(flf2v tiny).forward on tiny_flf2v_dit (test/fixtures/dit); case a: "
            "clip_fea = golden_dit_i2v.safetensors['clip_fea'] [2,257,1280] as "
            "clip.visual([first, last]) returns it (MLPProj views it as [1,514,1280] and "
            "adds emb_pos), x [16,3,4,6], y [20,3,4,6] (4 mask channels as "
            "first_last_frame2video.py builds: first latent frame [1,1,1,1], last [0,0,0,1], "
            "others 0; then 16 random latent channels), t=[700], context [5,32], seq_len 18; "
            "im.img_emb [1,514,64], im.block0.cross_attn [1,18,64]; inputs drawn from "
            "torch.Generator().manual_seed(20250602)")
    write_safetensors(os.path.join(args.out_dir, "golden_dit_flf2v.safetensors"), F,
                      dict(common, config=json.dumps(cfg_flf), description=desc,
                           calls=json.dumps(calls),
                           weights="tiny_i2v_dit (shared/golden/weights) + tiny_flf2v_emb_pos.bf16.safetensors (test/fixtures/dit)"))


if __name__ == "__main__":
    main()
