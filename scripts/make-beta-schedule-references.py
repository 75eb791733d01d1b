# Writes test/fixtures/schedulers/beta_references.json: the wrapper's "/beta" schedules
# (use_beta_sigmas in its FlowUniPC / FlowDPM / FlowMatchLCM schedulers, and diffusers'
# FlowMatchEulerDiscreteScheduler since it shifts before converting), written out here in numpy
# with scipy.stats.beta.ppf as those classes call it, for the steps and shifts below.
# Needs numpy and scipy.
#
#   python3 scripts/make-beta-schedule-references.py
import json
import os

import numpy as np
import scipy
import scipy.stats

f32 = np.float32


def to_beta(sigmas, n, a=0.6, b=0.6):
    lo, hi = float(sigmas[-1]), float(sigmas[0])
    return np.array([lo + ppf * (hi - lo) for ppf in [scipy.stats.beta.ppf(u, a, b) for u in 1 - np.linspace(0, 1, n)]])


def shifted32(x, shift):  # a float32 torch tensor times Python floats
    return (f32(shift) * x / (f32(1) + f32(shift - 1) * x)).astype(f32)


def unipc_dpm(steps, shift):
    train = shifted32((1.0 - np.linspace(1, 1 / 1000, 1000)[::-1]).astype(f32), shift)
    s = np.linspace(float(train[0]), float(train[-1]), steps + 1)[:-1]
    s = to_beta(shift * s / (1 + (shift - 1) * s), steps)
    return (s * 1000).astype(np.int64).tolist(), np.concatenate([s, [0]]).astype(f32).tolist()


def euler_lcm(steps, shift):
    train = shifted32((np.linspace(1, 1000, 1000, dtype=f32)[::-1] / f32(1000)).astype(f32), shift)
    s = np.linspace(float(train[0]) * 1000, float(train[-1]) * 1000, steps) / 1000
    s = to_beta(shift * s / (1 + (shift - 1) * s), steps).astype(f32)
    return (s * f32(1000)).astype(f32).tolist(), np.concatenate([s, [f32(0)]]).astype(f32).tolist()


if __name__ == '__main__':
    cases = []
    for steps in [1, 2, 4, 10, 20, 30, 50]:
        for shift in [1.0, 3.0, 5.0, 8.0, 17.5]:
            for family, fn in [('unipc', unipc_dpm), ('euler', euler_lcm)]:
                timesteps, sigmas = fn(steps, shift)
                cases.append({'family': family, 'steps': steps, 'shift': shift, 'timesteps': timesteps, 'sigmas': sigmas})
    out = os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'schedulers', 'beta_references.json')
    with open(out, 'w') as f:
        json.dump({'scipy': scipy.__version__, 'cases': cases}, f)
    print(f'wrote {out}: {len(cases)} cases (scipy {scipy.__version__})')
