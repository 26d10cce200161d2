"""Per-channel activation equalization (cross-layer scaling) of a float layer list.

A hidden unit whose activations range 100x wider than its neighbours' sets the whole
layer's activation grid, and the others get few of its levels. ReLU (and the other
piecewise-linear activations through zero) commute with a positive scale, so unit c
of layer i can be divided by k_c and layer i+1's column c multiplied by it: the float
network computes exactly the same function, but the units' ranges are balanced
against the weights that read them. The model file is unchanged (the scales live in
the weights); whether it helps depends on the model, so export tries both and keeps
the one with the lower error on the calibration data (see quantize.quantize_best).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .layers import FloatLayer

# Activations that commute with a positive per-unit scale: act(z / k) = act(z) / k.
_HOMOGENEOUS = ("relu", "none", "leaky")


def equalize(layers: list[FloatLayer], calib: np.ndarray) -> tuple[list[FloatLayer], int]:
    """Balance each hidden unit's activation range against its outgoing weights.

    Returns the new layer list (the same function in exact arithmetic) and how many
    layers were rescaled. calib: inputs in the first layer's input units.
    """
    out = list(layers)
    h = np.asarray(calib, dtype=np.float64)
    changed = 0
    for i in range(len(out) - 1):
        layer, nxt = out[i], out[i + 1]
        y = layer.forward(h)
        if layer.act not in _HOMOGENEOUS:
            h = y
            continue
        a = np.abs(y).max(axis=0)  # each unit's activation range
        r = np.abs(nxt.weight).max(axis=0)  # the largest weight reading it
        live = (a > 0) & (r > 0)
        if live.sum() < 2:
            h = y
            continue
        # after scaling: range a/k, weights r*k; k = sqrt(a/r) balances the two, then
        # a common factor keeps the layer's typical range where it was
        k = np.ones_like(a)
        k[live] = np.sqrt(a[live] / r[live])
        k[live] /= np.exp(np.mean(np.log(k[live])))
        if np.allclose(k, 1.0, rtol=0.05):
            h = y
            continue
        bias = None if layer.bias is None else layer.bias / k
        out[i] = replace(layer, weight=layer.weight / k[:, None], bias=bias)
        out[i + 1] = replace(nxt, weight=nxt.weight * k[None, :])
        h = y / k
        changed += 1
    return out, changed


__all__ = ["equalize"]
