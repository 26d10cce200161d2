"""The bit-exact numpy reference of the engine's integer arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..export.qmodel import (
    ACT_CLAMP,
    ACT_LEAKY,
    ACT_RELU,
    SMALL_INT,
    SPLIT_SHIFT,
    WIDE_SHIFT,
    QuantModel,
    leaky_floor,
)


class BoundViolation(AssertionError):
    """An intermediate value reached 2**30: the exporter's proof is wrong (a bug)."""


@dataclass
class ReferenceResult:
    """Outputs of the reference for a batch, and which samples saturated."""

    out: np.ndarray  # int64 [n, n_outputs]
    saturated: np.ndarray  # bool [n]: a value hit a clamp other than ReLU's zero
    hidden: list[np.ndarray] | None = None  # each layer's outputs (run(..., trace=True))


def run(model: QuantModel, xq: np.ndarray, trace: bool = False) -> ReferenceResult:
    """Integer outputs for clamped integer inputs xq [n, n_inputs] (or [n_inputs]);
    with trace, every layer's outputs too."""
    x = np.atleast_2d(np.asarray(xq, dtype=np.int64))
    if x.shape[1] != model.n_inputs:
        raise ValueError(f"expected {model.n_inputs} inputs per sample, got {x.shape[1]}")
    saturated = np.any((x < model.in_lo) | (x > model.in_hi), axis=1)
    x = np.clip(x, model.in_lo, model.in_hi)
    hidden = []
    for i, layer in enumerate(model.layers):
        acc = x @ layer.w.astype(np.int64).T
        if layer.wide:  # b + floor(W x / 256) (>> floors), as the sums of bytes give it
            _check_wide_sums(i, layer, x)
            acc = acc >> WIDE_SHIFT
        if layer.b is not None:
            acc = acc + layer.b.astype(np.int64)
        if layer.w_bits == 8:
            _check_running_sums(i, layer, x)
        mult, shift = layer.mult.astype(np.int64), layer.shift.astype(np.int64)
        scaled = acc * mult + layer.rnd
        peak = max(int(np.abs(acc).max(initial=0)), _requant_peak(acc, mult, shift))
        if peak >= SMALL_INT:
            raise BoundViolation(f"layer {i}: an intermediate value reached {peak} >= 2**30")
        y = scaled >> shift  # exact in int64: the engine's split form gives the same
        if layer.act == ACT_LEAKY:  # negative values times the integer slope
            floor = leaky_floor(layer.slope_mult)
            saturated |= np.any(y < floor, axis=1)
            rnd = (1 << (layer.slope_shift - 1)) if layer.slope_shift else 0
            slope = (np.maximum(y, floor) * layer.slope_mult + rnd) >> layer.slope_shift
            y = np.where(y < 0, slope, y)
        high = y > layer.hi
        if layer.act == ACT_CLAMP:  # the network's own clamp: reaching it is intended
            high = np.zeros_like(high)
        low = np.zeros_like(high) if layer.act in (ACT_RELU, ACT_CLAMP) else (y < layer.lo)
        saturated |= np.any(high | low, axis=1)
        x = np.clip(y, layer.lo, layer.hi)
        if trace:
            hidden.append(x)
    return ReferenceResult(out=x, saturated=saturated, hidden=hidden if trace else None)


def _requant_peak(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> int:
    """Largest magnitude the engine's requantizer forms: acc * mult + rnd below shift 15,
    and from 15 on the parts of the split at bit 15 (see firmware/micromlp.py)."""
    split = shift >= SPLIT_SHIFT
    whole = np.where(split, 0, acc * mult + np.where(shift > 0, 1 << np.maximum(shift - 1, 0), 0))
    low = (acc & 32767) * mult + np.where(shift == SPLIT_SHIFT, 16384, 0)
    high = (acc >> 15) * mult + np.where(shift > SPLIT_SHIFT, 1 << np.maximum(shift - 16, 0), 0)
    parts = np.where(split, np.maximum(np.abs(low), np.abs(high + (low >> 15))), 0)
    return int(max(np.abs(whole).max(initial=0), parts.max(initial=0)))


def _check_running_sums(index: int, layer, x: np.ndarray) -> None:
    """Replay the kernels' running sums for offset-binary weights: start at
    b - 128 * sum(x), add (w + 128) * x term by term; none may reach 2**30."""
    u = layer.w.astype(np.int64) + 128
    b = layer.b.astype(np.int64) if layer.b is not None else np.zeros(layer.n_out, np.int64)
    step = max(1, (1 << 22) // max(1, layer.n_out * layer.n_in))
    for start in range(0, len(x), step):
        xs = x[start : start + step]
        run = b[None, :, None] - 128 * xs.sum(axis=1)[:, None, None]
        run = run + np.cumsum(u[None, :, :] * xs[:, None, :], axis=2)
        peak = int(np.abs(run).max(initial=0))
        if peak >= SMALL_INT:
            raise BoundViolation(f"layer {index}: a running sum reached {peak} >= 2**30")


def _check_wide_sums(index: int, layer, x: np.ndarray) -> None:
    """Replay a wide layer's two sums of the inputs' bytes, b + w (x >> 8) and
    w (x & 255), term by term: none may reach 2**30."""
    w = layer.w.astype(np.int64)
    b = layer.b.astype(np.int64) if layer.b is not None else np.zeros(layer.n_out, np.int64)
    step = max(1, (1 << 22) // max(1, layer.n_out * layer.n_in))
    for start in range(0, len(x), step):
        xs = x[start : start + step]
        for part, base in ((xs >> WIDE_SHIFT, b), (xs & 255, np.zeros_like(b))):
            run = base[None, :, None] + np.cumsum(w[None, :, :] * part[:, None, :], axis=2)
            peak = int(np.abs(run).max(initial=0))
            if peak >= SMALL_INT:
                raise BoundViolation(f"layer {index}: a sum of bytes reached {peak} >= 2**30")


def predict(model: QuantModel, xq: np.ndarray) -> np.ndarray:
    """Index of the largest output per sample (the first one on a tie), as the engine."""
    return np.argmax(run(model, xq).out, axis=1)
