#!/usr/bin/env python3
"""Reference values for lib/guidance.ts (the wrapper's WanVideoExperimentalArgs), computed with
numpy the way the methods define them: CFG-Zero*'s optimized scale, TCFG's projection through a
real SVD, RAAG's guidance scale, FreSca's filter through numpy's FFT, Temporal Score Rescaling,
and their combination in the wrapper's order. Writes test/fixtures/guidance/references.json.

    python3 scripts/make-guidance-references.py
"""
import json
import os

import numpy as np

SHAPE = (4, 3, 6, 10)  # [C, T, H, W]: a non-square latent, several frames


def optimized_scale(c, u):
    return float(np.sum(c * u) / (np.sum(u * u) + 1e-8))


def tangential(c, u):
    # Per channel: the top singular direction of the 2 x N matrix [c; u]; u projected on it.
    out = np.empty_like(u)
    for ch in range(c.shape[0]):
        p = np.stack([c[ch].ravel(), u[ch].ravel()])
        U, S, Vh = np.linalg.svd(p, full_matrices=False)
        Vh[1] = 0
        out[ch] = (U @ np.diag(S) @ Vh)[1].reshape(u[ch].shape)
    return out


def raag(c, u, cfg, alpha):
    ratios = [np.linalg.norm((c[ch] - u[ch]).ravel()) / (np.linalg.norm(u[ch].ravel()) + 1e-8) for ch in range(c.shape[0])]
    return float(1 + (cfg - 1) * np.exp(-alpha * np.mean(ratios)))


def fresca(x, low, high, cutoff):
    h, w = x.shape[-2:]
    spectrum = np.fft.fftshift(np.fft.fft2(x, axes=(-2, -1)), axes=(-2, -1))
    mask = np.full((h, w), high)
    mask[max(0, h // 2 - cutoff):min(h, h // 2 + cutoff), max(0, w // 2 - cutoff):min(w, w // 2 + cutoff)] = low
    return np.real(np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(-2, -1)), axes=(-2, -1)))


def tsr(v, x, t, k, sigma):
    if t == 0:
        ratio = k
    else:
        snr = (1 - t) ** 2 / t ** 2
        ratio = (snr * sigma ** 2 + 1) / (snr * sigma ** 2 / k + 1)
    return v if t == 1 else (ratio * ((1 - t) * v + x) - x) / (1 - t)


def combine(c, u, cfg, o):
    if u is None:
        return fresca(c, o['low'], o['high'], o['cutoff']) if o.get('fresca') else c
    alpha = optimized_scale(c, u) if o.get('cfgZeroStar') else 1.0
    u = u * alpha
    if o.get('tcfg'):
        u = tangential(c, u)
    if o.get('raag', 0) > 0:
        cfg = raag(c, u, cfg, o['raag'])
    guidance = fresca(c - u, o['low'], o['high'], o['cutoff']) if o.get('fresca') else c - u
    return u + cfg * guidance


def main():
    rng = np.random.default_rng(7)
    c = rng.standard_normal(SHAPE).astype(np.float32)
    u = (0.8 * c + 0.5 * rng.standard_normal(SHAPE)).astype(np.float32)  # correlated, as predictions are
    x = rng.standard_normal(SHAPE).astype(np.float32)
    c64, u64, x64 = c.astype(np.float64), u.astype(np.float64), x.astype(np.float64)
    # Inputs as the shortest decimals that round-trip to their float32 values; outputs to 1e-9.
    inputs = lambda a: [float(str(v)) for v in a.ravel()]
    flat = lambda a: [round(float(v), 9) for v in np.asarray(a, dtype=np.float64).ravel()]
    out = {
        'shape': list(SHAPE), 'cond': inputs(c), 'uncond': inputs(u), 'latent': inputs(x),
        'optimizedScale': optimized_scale(c64, u64),
        'tangential': flat(tangential(c64, u64)),
        'raag': [{'cfg': 5.0, 'alpha': a, 'scale': raag(c64, u64, 5.0, a)} for a in (0.5, 1.0, 4.0)],
        'fresca': [{'low': lo, 'high': hi, 'cutoff': fc, 'out': flat(fresca(c64, lo, hi, fc))}
                   for lo, hi, fc in ((1.0, 1.25, 2), (0.5, 1.5, 3), (1.0, 1.25, 20), (0.7, 1.1, 0))],
        'tsr': [{'t': t, 'k': k, 'sigma': s, 'out': flat(tsr(c64, x64, t, k, s))}
                for t, k, s in ((1.0, 0.95, 1.0), (0.7, 0.95, 1.0), (0.3, 0.9, 0.5), (0.0, 0.95, 1.0))],
        'combine': [],
    }
    settings = [
        {'cfg': 5.0},
        {'cfg': 5.0, 'cfgZeroStar': True},
        {'cfg': 5.0, 'cfgZeroStar': True, 'tcfg': True},
        {'cfg': 5.0, 'raag': 1.0},
        {'cfg': 5.0, 'fresca': True, 'low': 1.0, 'high': 1.25, 'cutoff': 2},
        {'cfg': 6.0, 'cfgZeroStar': True, 'tcfg': True, 'raag': 1.0, 'fresca': True, 'low': 0.9, 'high': 1.3, 'cutoff': 3},
        {'cfg': 1.0, 'uncond': False, 'fresca': True, 'low': 1.0, 'high': 1.25, 'cutoff': 2},
    ]
    for o in settings:
        out['combine'].append({**o, 'out': flat(combine(c64, u64 if o.get('uncond', True) else None, o['cfg'], o))})
    path = os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'guidance', 'references.json')
    with open(path, 'w') as f:
        json.dump(out, f)
    print('wrote', os.path.normpath(path))


if __name__ == '__main__':
    main()
