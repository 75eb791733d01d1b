#!/usr/bin/env python3
"""Reference values for lib/freeinit.ts (FreeInit, the wrapper's WanVideoFreeInitArgs), computed
with numpy as the method defines them: the gaussian, butterworth and ideal low-pass filters over
a centred [T, H, W] spectrum, element by element in float64, and the noise reinitialisation
(diffusion to t = 999, then the low frequencies of that and the high ones of fresh noise,
through numpy's float64 FFT with fftshift). Writes test/fixtures/freeinit/references.json.

    python3 scripts/make-freeinit-references.py
"""
import json
import math
import os

import numpy as np

SHAPE = (3, 5, 6, 10)  # [C, T, H, W]: odd T (its centre off the grid's middle), H != W


def low_pass(method, T, H, W, n, d_s, d_t):
    mask = np.zeros((T, H, W))
    if d_s == 0 or d_t == 0:
        return mask
    for t in range(T):
        for h in range(H):
            for w in range(W):
                d2 = ((d_s / d_t) * (2 * t / T - 1)) ** 2 + (2 * h / H - 1) ** 2 + (2 * w / W - 1) ** 2
                if method == 'gaussian':
                    mask[t, h, w] = math.exp(-1 / (2 * d_s ** 2) * d2)
                elif method == 'butterworth':
                    mask[t, h, w] = 1 / (1 + (d2 / d_s ** 2) ** n)
                else:  # ideal, as the method's code writes it: D^2 <= 2 d_s
                    mask[t, h, w] = 1.0 if d2 <= d_s * 2 else 0.0
    return mask


def mix(x, noise, lpf):
    axes = (-3, -2, -1)
    xf = np.fft.fftshift(np.fft.fftn(x, axes=axes), axes=axes)
    nf = np.fft.fftshift(np.fft.fftn(noise, axes=axes), axes=axes)
    mixed = xf * lpf + nf * (1 - lpf)
    return np.fft.ifftn(np.fft.ifftshift(mixed, axes=axes), axes=axes).real


def main():
    rng = np.random.default_rng(11)
    result = rng.standard_normal(SHAPE).astype(np.float32)
    start = rng.standard_normal(SHAPE).astype(np.float32)
    fresh = rng.standard_normal(SHAPE).astype(np.float32)
    _, T, H, W = SHAPE
    cases = [
        ('ideal', 4, 1.0, 1.0), ('ideal', 4, 0.25, 0.25), ('ideal', 4, 0.4, 0.2),
        ('butterworth', 4, 1.0, 1.0), ('butterworth', 2, 0.25, 0.5),
        ('gaussian', 4, 1.0, 1.0), ('gaussian', 4, 0.3, 0.6), ('gaussian', 4, 0.0, 1.0),
    ]
    filters = []
    for method, n, d_s, d_t in cases:
        mask = low_pass(method, T, H, W, n, d_s, d_t)
        filters.append({'method': method, 'n': n, 'dS': d_s, 'dT': d_t,
                        'mask': mask.astype(np.float32).ravel().tolist()})
    # Reinitialisation with the butterworth filter above (d 0.25 / 0.5), from float32 inputs.
    lpf = np.array(filters[4]['mask'], dtype=np.float32).reshape(T, H, W).astype(np.float64)
    diffused = 0.001 * result.astype(np.float64) + 0.999 * start.astype(np.float64)
    out = {
        'shape': list(SHAPE),
        'filters': filters,
        'result': result.ravel().tolist(), 'start': start.ravel().tolist(), 'fresh': fresh.ravel().tolist(),
        'reinitialized': mix(diffused, fresh.astype(np.float64), lpf).ravel().tolist(),
        'reinitializedWith': 4,
    }
    path = os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'freeinit', 'references.json')
    with open(path, 'w') as f:
        json.dump(out, f)
    print(f'wrote {path}: {len(filters)} filters over {SHAPE[1:]}, one reinitialisation of {SHAPE}')


if __name__ == '__main__':
    main()
