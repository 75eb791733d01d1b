#!/usr/bin/env python3
"""Reference runs of the real scheduler classes behind the names that the Wan2.1 goldens do
not cover (euler, lcm, dpm++_sde, flowmatch_distill, and custom sigmas), for
test/unit/schedulers.test.ts.

How to run (Debian's Python, which has torch 1.13 from python3-torch):

    # the official Wan2.1 code at the commit the shared goldens use
    git --git-dir=<Wan2.1 git dir> archive 9737cba9c1c3c4d04b33fcad41c111989865d315 wan \
        | (mkdir -p /tmp/wan21 && tar x -C /tmp/wan21)
    # diffusers' flow-matching Euler and LCM schedulers (any recent checkout)
    git --git-dir=<diffusers git dir> archive HEAD src/diffusers/schedulers \
        | (mkdir -p /tmp/diffusers-src && tar x -C /tmp/diffusers-src)
    # Kijai's ComfyUI-WanVideoWrapper (wanvideo/schedulers/basic_flowmatch.py)
    /usr/bin/python3 scripts/make-scheduler-references.py --wan-src /tmp/wan21 \
        --diffusers-src /tmp/diffusers-src/src --wrapper-src <ComfyUI-WanVideoWrapper checkout>

Nothing of those projects is copied here; their scheduler modules are imported from the
given directories. Each scheduler is constructed and set up with the arguments of the
wrapper's wanvideo/schedulers/__init__.py get_scheduler (commit 23d3636), which the
`setup_*` functions below repeat call for call. Shims, none of which touch a scheduler's
math: `diffusers` is stubbed to the bookkeeping its schedulers inherit (ConfigMixin /
register_to_config record the constructor arguments in `self.config`, deprecate is a no-op,
scipy is reported missing), and `randn_tensor` draws torch.randn from the generator it is
given, as diffusers' does on CPU, recording every draw so the test can replay it.

Writes test/fixtures/schedulers/wrapper_references.json (--out): per case the scheduler's
timesteps and sigmas, the initial sample, the model outputs fed to step(), the noise each
step drew (null where none) and every sample step() returned. Samples are [1, 2, 1, 2, 2]
float32, written as the shortest decimals that read back to the same float32; model outputs are the synthetic flow eps - x0 + 0.1*N(0,1) of the goldens.
"""
import argparse
import enum
import functools
import importlib.util
import inspect
import json
import logging
import os
import sys
import types

import numpy as np
import torch

RECORDED_NOISE = []


def install_diffusers_stubs():
    dif = types.ModuleType("diffusers")
    dif.__path__ = []
    cu = types.ModuleType("diffusers.configuration_utils")
    ut = types.ModuleType("diffusers.utils")
    ut.__path__ = []
    tu = types.ModuleType("diffusers.utils.torch_utils")
    sch = types.ModuleType("diffusers.schedulers")
    sch.__path__ = []
    su = types.ModuleType("diffusers.schedulers.scheduling_utils")

    class ConfigMixin:
        def register_to_config(self, **kwargs):
            for k, v in kwargs.items():
                setattr(self.config, k, v)

    def register_to_config(init):
        @functools.wraps(init)
        def wrapped(self, *args, **kwargs):
            bound = inspect.signature(init).bind(self, *args, **kwargs)
            bound.apply_defaults()
            self.config = types.SimpleNamespace(**{k: v for k, v in bound.arguments.items() if k != "self"})
            init(self, *args, **kwargs)
        return wrapped

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        z = torch.randn(shape, generator=generator, dtype=dtype)
        RECORDED_NOISE.append(z.clone())
        return z

    class BaseOutput:
        pass

    class SchedulerMixin:
        pass

    class KarrasDiffusionSchedulers(enum.Enum):
        pass

    cu.ConfigMixin, cu.register_to_config = ConfigMixin, register_to_config
    ut.BaseOutput = BaseOutput
    ut.is_scipy_available = lambda: False
    ut.deprecate = lambda *a, **k: None
    ut.logging = types.SimpleNamespace(get_logger=logging.getLogger)
    tu.randn_tensor = randn_tensor
    su.SchedulerMixin = SchedulerMixin
    su.SchedulerOutput = BaseOutput
    su.KarrasDiffusionSchedulers = KarrasDiffusionSchedulers
    sys.modules.update({"diffusers": dif, "diffusers.configuration_utils": cu, "diffusers.utils": ut,
                        "diffusers.utils.torch_utils": tu, "diffusers.schedulers": sch,
                        "diffusers.schedulers.scheduling_utils": su})


def f32_list(t):
    # shortest decimal per float32 (numpy's repr), so the JSON stays small and reads back exactly
    return [float(repr(np.float32(v))) for v in t.flatten().tolist()]


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def apply_custom_sigmas(sched, sigmas):
    # get_scheduler's _apply_custom_sigmas
    sched.sigmas = sigmas
    sched.timesteps = (sched.sigmas[:-1] * 1000).to(torch.int64)
    sched.num_inference_steps = len(sched.timesteps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wan-src", required=True)
    ap.add_argument("--diffusers-src", required=True, help="directory holding diffusers/schedulers/")
    ap.add_argument("--wrapper-src", required=True, help="directory holding wanvideo/schedulers/basic_flowmatch.py")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "schedulers",
                                                 "wrapper_references.json"))
    args = ap.parse_args()

    install_diffusers_stubs()
    fm = load("wan_fm_solvers", os.path.join(args.wan_src, "wan", "utils", "fm_solvers.py"))
    fmu = load("wan_fm_solvers_unipc", os.path.join(args.wan_src, "wan", "utils", "fm_solvers_unipc.py"))
    dsch = os.path.join(args.diffusers_src, "diffusers", "schedulers")
    euler = load("diffusers.schedulers.scheduling_flow_match_euler_discrete",
                 os.path.join(dsch, "scheduling_flow_match_euler_discrete.py"))
    lcm = load("diffusers.schedulers.scheduling_flow_match_lcm", os.path.join(dsch, "scheduling_flow_match_lcm.py"))
    basic = load("wvw_basic_flowmatch", os.path.join(args.wrapper_src, "wanvideo", "schedulers", "basic_flowmatch.py"))

    # The set-ups of get_scheduler, by name; each returns (scheduler, timesteps, step kwargs).
    def setup(name, steps, shift, sigmas):
        if sigmas is not None:
            sigmas = torch.tensor(sigmas, dtype=torch.float32)
        if name == "unipc":  # the wrapper's: FlowUniPCMultistepScheduler(shift=shift), only with custom sigmas here
            s = fmu.FlowUniPCMultistepScheduler(shift=shift)
            apply_custom_sigmas(s, sigmas)
            return s, {}
        if name == "euler":
            s = euler.FlowMatchEulerDiscreteScheduler(shift=shift, use_beta_sigmas=False)
            if sigmas is None:
                s.set_timesteps(steps, device="cpu")
            else:
                apply_custom_sigmas(s, sigmas)
            return s, {}
        if name in ("dpm++", "dpm++_sde"):
            algorithm_type = "sde-dpmsolver++" if "sde" in name else "dpmsolver++"
            s = fm.FlowDPMSolverMultistepScheduler(shift=shift, algorithm_type=algorithm_type)
            if sigmas is None:
                s.set_timesteps(steps, device="cpu")  # the wrapper's copy adds only use_beta_sigmas=False
            else:
                apply_custom_sigmas(s, sigmas)
            return s, {"generator": gen}
        if name == "lcm":
            s = lcm.FlowMatchLCMScheduler(shift=shift, use_beta_sigmas=False)
            if sigmas is None:
                s.set_timesteps(steps, device="cpu")
            else:
                apply_custom_sigmas(s, sigmas)
            return s, {"generator": gen}
        if name == "flowmatch_distill":
            s = basic.FlowMatchScheduler(shift=shift, sigma_min=0.0, extra_one_step=True)
            s.set_timesteps(1000, training=True)
            denoising_step_list = torch.tensor([999, 750, 500, 250], dtype=torch.long)
            temp_timesteps = torch.cat((s.timesteps.cpu(), torch.tensor([0], dtype=torch.float32)))
            denoising_step_list = temp_timesteps[1000 - denoising_step_list]
            assert steps == 4
            s.timesteps = denoising_step_list[:steps].clone().detach()
            s.sigmas = torch.cat([s.timesteps / 1000, torch.tensor([0.0])])
            return s, None
        raise ValueError(name)

    cases = [
        ("euler", 10, 5.0, None), ("euler", 4, 3.0, None), ("euler", 7, 8.3, None), ("euler", 1, 5.0, None),
        ("euler", 5, 5.0, [1.0, 0.9375, 0.75, 0.4, 0.1, 0.0]),
        ("lcm", 6, 5.0, None), ("lcm", 4, 3.3, None),
        ("dpm++_sde", 10, 5.0, None), ("dpm++_sde", 4, 3.0, None), ("dpm++_sde", 12, 8.0, None), ("dpm++_sde", 7, 2.7, None),
        ("dpm++", 5, 5.0, [1.0, 0.9375, 0.75, 0.4, 0.1, 0.0]),
        ("unipc", 6, 5.0, [0.995, 0.9, 0.8, 0.6, 0.4, 0.123456789, 0.0]),
        ("flowmatch_distill", 4, 5.0, None), ("flowmatch_distill", 4, 3.0, None), ("flowmatch_distill", 4, 8.0, None),
        ("flowmatch_distill", 4, 1.0, None),
    ]
    out = []
    for n, (name, steps, shift, sigmas) in enumerate(cases):
        g = torch.Generator().manual_seed(1000 + n)
        gen = torch.Generator().manual_seed(2000 + n)  # the sampler's seed_g, which step() draws from
        shape = (1, 2, 1, 2, 2)
        x0 = torch.randn(shape, generator=g)
        eps = torch.randn(shape, generator=g)
        sched, step_kwargs = setup(name, steps, shift, sigmas)
        sigma0 = float(sched.sigmas[0])
        x = (1 - sigma0) * x0 + sigma0 * eps
        case = {"name": name, "steps": len(sched.timesteps), "shift": shift, "sigmas": sigmas,
                "timesteps": f32_list(sched.timesteps.float()), "schedule_sigmas": f32_list(sched.sigmas),
                "initial_sample": f32_list(x), "model_outputs": [], "noises": [], "samples_after_step": []}
        for i, t in enumerate(sched.timesteps):
            v = eps - x0 + 0.1 * torch.randn(shape, generator=g)
            RECORDED_NOISE.clear()
            if step_kwargs is None:  # FlowMatchScheduler.step, fed the model's timestep as the sampler does
                x = sched.step(v, torch.tensor([t]), x)
            else:
                x = sched.step(v, t.float() if name in ("euler", "lcm") else t, x, return_dict=False, **step_kwargs)[0]
            assert len(RECORDED_NOISE) <= 1
            case["model_outputs"].append(f32_list(v))
            case["noises"].append(f32_list(RECORDED_NOISE[0]) if RECORDED_NOISE else None)
            case["samples_after_step"].append(f32_list(x))
            if not torch.isfinite(x).all():
                print(f"warning: {name} steps {steps} shift {shift}: non-finite sample after step {i}")
        out.append(case)
        print(f"{name:18s} steps {steps:2d} shift {shift}: timesteps {case['timesteps'][:4]}...")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"description": __doc__.strip().split("\n\n")[0], "torch": torch.__version__,
                   "cases": out}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
