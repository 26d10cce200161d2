"""The quantized model: what the exporter produces and the model file holds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACT_NONE = 0  # twin of firmware/micromlp.py _ACT_NONE
ACT_RELU = 1  # twin of firmware/micromlp.py _ACT_RELU
ACT_CLAMP = 2  # a clamp the network asks for (ReLU6, Hardtanh): reaching it is not saturation
ACT_LEAKY = 3  # LeakyReLU: negative values times slope_mult / 2**slope_shift
ACT_NAMES = {ACT_NONE: "none", ACT_RELU: "relu", ACT_CLAMP: "clamp", ACT_LEAKY: "leaky"}
SLOPE_LIMIT = 1 << 13  # slope_mult < SLOPE_LIMIT


def _mantissas(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|v| (float32, finite, nonzero) as m * 2**e with 2**23 <= m < 2**24, as int64."""
    frac, exp = np.frexp(np.abs(v).astype(np.float64))  # exact for float32 values
    return (frac * (1 << 24)).astype(np.int64), exp.astype(np.int64) - 24


def quantize_floats(x, scale, zero, lo: int, hi: int) -> np.ndarray:
    """The input quantization of the format, exactly (docs/format.md): float32 x [..., n]
    -> clamp(floor(x / scale + 1/2) + zero, lo, hi) on the exact rational x / scale."""
    x = np.asarray(x, dtype=np.float32)
    if np.isnan(x).any():
        idx = np.argwhere(np.isnan(x))[0]
        raise ValueError(f"input {tuple(int(i) for i in idx)} is NaN: no integer stands for it")
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float32), x.shape)
    zero = np.broadcast_to(np.asarray(zero, dtype=np.int64), x.shape)
    neg = x < 0
    finite = np.isfinite(x) & (x != 0)
    mx, ex = _mantissas(np.where(finite, x, 1))
    ms, es = _mantissas(scale)
    d = ex - es  # x / s = (mx / ms) * 2**d, and mx / ms is in (1/2, 2)
    # |x / s| < 1/2 (d <= -2) rounds to 0; |x / s| > 2**31 (d >= 31) clamps
    dd = np.clip(d, -1, 30) + 1
    num = mx << dd  # mx * 2**(d + 1) over 2 * ms: floor(x/s + 1/2) = floor((num +- ms) / 2ms)
    pos_q = (num + ms) // (2 * ms)
    neg_q = (ms - num) // (2 * ms)
    q = np.where(neg, neg_q, pos_q)
    q = np.where(d <= -2, 0, q)
    big = (d >= 31) | np.isinf(x)
    q = np.where(big, np.where(neg, -(1 << 40), 1 << 40), q)
    q = np.where(finite | np.isinf(x), q, 0)  # zeros
    return np.clip(q + zero, lo, hi).astype(np.int64)


def leaky_floor(slope_mult: int) -> int:
    """Below this a negative value is clamped before the slope multiplies it, so that
    the product stays below 2**30 (docs/format.md)."""
    return -((1 << 30) // slope_mult - 1)
SMALL_INT = 1 << 30  # every value the engine forms stays below this in magnitude
F32_INF = 0x7F800000  # float32 bits of +inf: positive finite floats are 0 < bits < this
# Requantizing with shift >= SPLIT_SHIFT splits the accumulator at bit 15 so that a
# 14-bit multiplier never meets the whole accumulator (docs/format.md).
SPLIT_SHIFT = 15
MULT_LIMIT = 1 << 14  # mult < MULT_LIMIT when shift >= SPLIT_SHIFT
MAX_SHIFT = 45  # shift - 15 <= 30: a shift count every port handles


WIDE_SHIFT = 8  # a wide layer's dot product is floor-divided by 2**8


def wide_sums_bound(w: np.ndarray, b: np.ndarray | None, x_max: int) -> int:
    """Largest sum a wide layer's kernel forms: b + sum(w * (x >> 8)) and
    sum(w * (x & 255)), every prefix included, for |x| <= x_max."""
    abs_w = np.abs(w.astype(np.int64)).sum(axis=1)
    b_abs = np.abs(b.astype(np.int64)) if b is not None else 0
    high = abs_w * ((int(x_max) + 255) >> WIDE_SHIFT) + b_abs
    return int(max(high.max(), (abs_w * 255).max()))


def requant_ok(bound: int, mult: int, shift: int) -> bool:
    """Whether the engine can apply (mult, shift) to accumulators within bound below 2**30."""
    if mult < 1 or shift > MAX_SHIFT:
        return False
    if shift >= SPLIT_SHIFT:
        return mult < MULT_LIMIT and bound < SMALL_INT
    rnd = (1 << (shift - 1)) if shift else 0
    return bound * mult + rnd < SMALL_INT


@dataclass
class QuantLayer:
    """One Linear (+ optional ReLU) layer in integer form.

    The engine computes, per output channel c::

        acc = b[c] + sum_i w[c, i] * x[i]
        y[c] = clamp((acc * mult[c] + rnd[c]) >> shift[c], lo, hi)

    with rnd[c] = 2**(shift[c]-1) (0 when shift[c] == 0). Real values are
    ``x * in_scale`` for inputs and ``y * out_scale`` for outputs.

    A wide layer (16-bit weights times 16-bit inputs) has
    ``acc = b[c] + floor(sum_i w[c, i] * x[i] / 256)``: the engine forms the dot product
    in the inputs' two bytes, so no value reaches 2**30 (docs/format.md); b is then in
    units of 256.
    """

    w: np.ndarray  # int8/int16 [n_out, n_in]
    b: np.ndarray | None  # int32 [n_out] or None when the layer has no bias
    mult: np.ndarray  # int32 [n_out], >= 1
    shift: np.ndarray  # uint8 [n_out], <= 30
    lo: int
    hi: int
    act: int
    acc_bound: int  # proven max |intermediate value| over all inputs in range
    in_scale: float
    out_scale: float
    w_scale: np.ndarray  # float32 [n_out]: real weight = w * w_scale
    w_bits: int = 8
    error_bound: float = 0.0  # worst |dequantized output - float output| of this layer
    bias_note: str = ""  # why a layer whose source had no bias has one (folding)
    slope_mult: int = 0  # LeakyReLU: y = (max(v, leaky_floor) * slope_mult + rnd) >> slope_shift
    slope_shift: int = 0
    wide: bool = False  # acc = b + floor(W x / 256), formed in the inputs' two bytes

    @property
    def n_in(self) -> int:
        return int(self.w.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.w.shape[0])

    @property
    def has_bias(self) -> bool:
        return self.b is not None

    @property
    def rnd(self) -> np.ndarray:
        s = self.shift.astype(np.int64)
        return np.where(s > 0, np.left_shift(1, np.maximum(s - 1, 0)), 0)

    def n_params(self, with_bias: bool = True) -> int:
        return self.w.size + (self.n_out if (with_bias and self.has_bias) else 0)


@dataclass
class QuantModel:
    """A whole fixed-point MLP plus the input quantization the host applies."""

    layers: list[QuantLayer]
    in_scale: np.ndarray  # float32 [n_inputs]: x_q = round(x / in_scale) + in_zero
    in_zero: np.ndarray  # int32 [n_inputs]
    in_lo: int
    in_hi: int
    error_bound: float = 0.0  # worst |dequantized output - float| (non-saturating inputs)
    meta: dict = field(default_factory=dict)  # exporter facts (not stored in the file)

    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].n_out

    @property
    def out_scale(self) -> float:
        return self.layers[-1].out_scale

    @property
    def max_width(self) -> int:
        return max([self.n_inputs] + [layer.n_out for layer in self.layers])

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float inputs [..., n_inputs] to the clamped input integers the board takes.

        Exactly as the board's net.quantize: each value is taken as a float32, and
        q = clamp(floor(x / scale + 1/2) + zero, in_lo, in_hi) is computed on the exact
        rational x / scale (no float rounding: ties round up, identically everywhere);
        +-inf clamp, NaN is refused.
        """
        return quantize_floats(x, self.in_scale, self.in_zero, self.in_lo, self.in_hi)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) * float(self.out_scale)
