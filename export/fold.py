"""Folding: transforms that move float preprocessing into the first Linear layer."""

from __future__ import annotations

import numpy as np

from .layers import ExportError, FloatLayer


def fold_input_affine(
    first: FloatLayer, scale: np.ndarray, offset: np.ndarray, note: str
) -> FloatLayer:
    """Rewrite first so that it takes u where its old input was x = scale * u + offset.

    W' = W * scale (per input column), b' = b + W @ offset. A layer without bias
    gets one only when the offset term is non-zero.
    """
    scale = np.asarray(scale, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    if scale.shape != (first.n_in,) or offset.shape != (first.n_in,):
        raise ExportError(
            f"input transform has {scale.size} scales and {offset.size} offsets, "
            f"the first layer takes {first.n_in} inputs"
        )
    w = first.weight * scale[None, :]
    shift = first.weight @ offset
    bias, bias_note = first.bias, first.bias_note
    if bias is not None:
        bias = bias + shift
    elif np.any(shift != 0):
        bias, bias_note = shift, note
    return FloatLayer(w, bias, first.act, first.name, bias_note, first.clamp_lo, first.clamp_hi,
                      first.slope)


def fold_batchnorm(layer: FloatLayer, gamma, beta, mean, var, eps: float, where: str) -> FloatLayer:
    """Fold y' = gamma (y - mean) / sqrt(var + eps) + beta into the Linear before it.

    The folded layer has a bias even when the Linear had none.
    """
    if layer.act != "none":
        raise ExportError(f"{where}: BatchNorm after an activation cannot be folded; "
                          f"put it right after the Linear")
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    if scale.shape != (layer.n_out,):
        raise ExportError(f"{where}: BatchNorm has {scale.size} channels, the Linear before "
                          f"it {layer.n_out}")
    w = layer.weight * scale[:, None]
    b = layer.bias if layer.bias is not None else np.zeros(layer.n_out)
    b = (b - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)
    note = layer.bias_note or ("folded BatchNorm" if layer.bias is None else "")
    return FloatLayer(w, b, "none", layer.name, note)


def fold_normalization(
    layers: list[FloatLayer], mean: np.ndarray, std: np.ndarray
) -> list[FloatLayer]:
    """Fold x_norm = (x - mean) / std into the first layer, so it takes raw x."""
    n = layers[0].n_in
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (n,)) if np.size(std) == 1 else \
        np.asarray(std, dtype=np.float64)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (n,)) if np.size(mean) == 1 \
        else np.asarray(mean, dtype=np.float64)
    if np.any(std <= 0):
        raise ExportError("input std must be positive for every input")
    first = fold_input_affine(layers[0], 1.0 / std, -mean / std, "folded input mean")
    return [first] + layers[1:]
