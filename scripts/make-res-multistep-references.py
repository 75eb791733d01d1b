#!/usr/bin/env python3
"""Reference runs of the wrapper's res_multistep scheduler (FlowMatchSchedulerResMultistep,
wanvideo/schedulers/flowmatch_res_multistep.py), for test/unit/schedulers.test.ts.

How to run (Debian's Python, which has torch 1.13 from python3-torch):

    /usr/bin/python3 scripts/make-res-multistep-references.py --wrapper-src <ComfyUI-WanVideoWrapper checkout>

Nothing of the wrapper is copied here: its module is imported from the given directory and set
up as its get_scheduler does (FlowMatchSchedulerResMultistep(shift=shift), then
set_timesteps(steps), or custom sigmas set as _apply_custom_sigmas sets them). Each case runs
the sampler's loop over every timestep the scheduler lists, the final timestep 0 included,
on a [1, 2, 1, 2, 2] sample with model outputs eps - x0 + 0.1 N(0, 1).

Writes test/fixtures/schedulers/res_multistep_references.json (--out): per case the timesteps,
the sigmas, the initial sample, the model outputs and the sample after each step.
"""
import argparse
import importlib.util
import json
import os

import numpy as np
import torch


def f32_list(t):
    return [float(repr(np.float32(v))) for v in t.flatten().tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wrapper-src", required=True, help="directory holding wanvideo/schedulers/flowmatch_res_multistep.py")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "schedulers",
                                                 "res_multistep_references.json"))
    args = ap.parse_args()
    path = os.path.join(args.wrapper_src, "wanvideo", "schedulers", "flowmatch_res_multistep.py")
    spec = importlib.util.spec_from_file_location("wvw_res_multistep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    cases = [(30, 5.0, None), (16, 8.0, None), (7, 3.0, None), (4, 1.0, None), (1, 5.0, None),
             (5, 5.0, [1.0, 0.9, 0.6, 0.3, 0.1, 0.0])]
    out = []
    for n, (steps, shift, sigmas) in enumerate(cases):
        s = module.FlowMatchSchedulerResMultistep(shift=shift)
        if sigmas is None:
            s.set_timesteps(steps)
        else:  # get_scheduler's _apply_custom_sigmas
            s.sigmas = torch.tensor(sigmas, dtype=torch.float32)
            s.timesteps = (s.sigmas[:-1] * 1000).to(torch.int64)
        g = torch.Generator().manual_seed(3000 + n)
        shape = (1, 2, 1, 2, 2)
        x0 = torch.randn(shape, generator=g)
        eps = torch.randn(shape, generator=g)
        sigma0 = float(s.sigmas[0])
        x = (1 - sigma0) * x0 + sigma0 * eps
        case = {"steps": steps, "shift": shift, "sigmas": sigmas, "timesteps": f32_list(s.timesteps.float()),
                "schedule_sigmas": f32_list(s.sigmas), "initial_sample": f32_list(x), "model_outputs": [], "samples_after_step": []}
        for t in s.timesteps:
            v = eps - x0 + 0.1 * torch.randn(shape, generator=g)
            x = s.step(v, t, x)
            case["model_outputs"].append(f32_list(v))
            case["samples_after_step"].append(f32_list(x))
        out.append(case)
        print(f"res_multistep steps {steps:2d} shift {shift}: {len(case['timesteps'])} timesteps, {case['timesteps'][:3]}...")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"description": __doc__.strip().split("\n\n")[0], "torch": torch.__version__, "cases": out}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
