"""Calibrated fixed-point quantization of a float layer list, with its proofs.

Scheme (docs/format.md): every tensor is ``real = int * scale`` with zero point 0.
Weights: symmetric per output channel. Activations after ReLU: unsigned
[0, 2**bits - 1]; without ReLU: symmetric. Inputs: one scale and zero point per
feature, folded into the first layer, so the board feeds integers. Requantizing
multiplies by an integer ``mult`` chosen as large as the proven accumulator bound
allows and shifts with round-half-up, so no value ever reaches 2**30.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .fold import fold_input_affine
from .layers import ExportError, FloatLayer, check, forward
from .modelfile import ZERO_REACH, accumulator_bound, running_sum_bound
from .qmodel import (
    ACT_CLAMP,
    ACT_LEAKY,
    ACT_NONE,
    ACT_RELU,
    MAX_SHIFT,
    MULT_LIMIT,
    SLOPE_LIMIT,
    SMALL_INT,
    SPLIT_SHIFT,
    WIDE_SHIFT,
    QuantLayer,
    QuantModel,
    wide_sums_bound,
)


@dataclass
class QuantOptions:
    """Bit widths of the fixed-point model."""

    weight_bits: int = 8
    act_bits: int = 8
    out_bits: int = 16  # the last layer: wide, so argmax rarely ties
    per_channel: bool = True  # one weight scale per output channel, else one per layer
    # Raw integer inputs in [lo, hi] (e.g. a 12-bit ADC: (0, 4095)), fed as they are:
    # scale 1, no rounding. None: derive the input quantization from the calibration data.
    input_range: tuple[int, int] | None = None
    # Float inputs: each feature's calibrated range widened by this fraction of its span
    # on each side, so test data a little past the calibration data does not clip.
    headroom: float = 0.1
    # ... and a side of a feature with a tail reaches this many standard deviations from
    # its mean (0: off; see quantize_inputs); None: 5 on 8-bit input grids, 10 on 16-bit
    # ones (room costs a bit at 8 and little at 16)
    input_sigmas: float | None = None
    # Bias correction: a layer's bias absorbs the mean error its weights' rounding
    # causes on the calibration data. "bias" (or True): layers that have a bias; "all":
    # also bias-free layers, which get one (the layer table says so: it costs a word
    # per channel); "off" (or False): none.
    bias_correction: bool | str = "bias"
    # How hidden activation ranges are calibrated: "minmax" (the largest value seen,
    # plus headroom), "percentile" (the 99.99th percentile of |value|: rare outliers
    # clip), "mse" (the clip point that minimizes the grid's squared error on the data).
    calib_method: str = "minmax"
    # Per-channel activation equalization (export/equalize.py): "auto" keeps it where it
    # lowers the error on the calibration data, "on" always, "off" never.
    equalize: str = "auto"


CALIB_METHODS = ("minmax", "percentile", "mse")
BIAS_CORRECTION = ("bias", "all", "off")


def _correction_mode(v: bool | str) -> str:
    mode = {True: "bias", False: "off"}.get(v, v) if isinstance(v, bool) else v
    if mode not in BIAS_CORRECTION:
        raise ExportError(f"bias correction must be one of {', '.join(BIAS_CORRECTION)}, "
                          f"got {v!r}")
    return mode


def activation_range(h: np.ndarray, hi: int, method: str, headroom: float) -> float:
    """The real value a layer's integer grid [.., hi] ends at, from its calibration
    outputs h [n, n_out] (see QuantOptions.calib_method)."""
    a = np.abs(np.asarray(h, dtype=np.float64)).ravel()
    top = float(a.max()) if a.size else 0.0
    if top == 0.0 or method == "minmax":
        return top * (1 + headroom)
    if method == "percentile":
        return max(float(np.percentile(a, 99.99)), top / 64) * (1 + headroom)
    if method != "mse":
        raise ExportError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, "
                          f"got {method!r}")
    if a.size > 200_000:  # a sample is enough to place a clip point
        a = np.random.default_rng(0).choice(a, 200_000, replace=False)
    best, best_err = top, None
    for k in range(29):  # edges from the largest value down to 1/128 of it
        f = 2.0 ** (-k / 4)
        s = top * f / hi
        err = float(((np.minimum(_round(a / s), hi) * s - a) ** 2).mean())
        if best_err is None or err < best_err * (1 - 1e-9):
            best, best_err = top * f, err
    return best * (1 + headroom) if best == top else best


def _round(x: np.ndarray) -> np.ndarray:
    """Round half up, the rule the engine uses everywhere."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


TAIL_START = 2.0  # standard deviations: a feature side reaching past this has a tail


def tail_sigmas(opts: QuantOptions) -> float:
    """How far a tailed input feature's range reaches, in standard deviations."""
    if opts.input_sigmas is not None:
        return float(opts.input_sigmas)
    return 5.0 if opts.act_bits == 8 else 10.0


def quantize_inputs(
    x: np.ndarray, bits: int, qmax: int | None = None, headroom: float = 0.0,
    sigmas: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """Per-feature input quantization from calibration data x [n, n_in].

    Integer-valued data that fits the range is kept exact (scale 1, zero 0).
    Otherwise each feature's [min, max], widened (headroom, tails), maps onto [0, qmax]
    (default 2**bits - 1), with a step that divides the data's decimal lattice where
    it has one.
    Returns scale, zero, lo, hi and the per-feature |rounding error| in int units.
    """
    x = np.asarray(x, dtype=np.float64)
    n_in = x.shape[1]
    lo_f, hi_f = x.min(axis=0), x.max(axis=0)
    qmax = (1 << bits) - 1 if qmax is None else qmax
    is_int = np.all(x == np.round(x))
    if is_int and (hi_f.max() - min(lo_f.min(), 0)) <= qmax and abs(lo_f.min()) < SMALL_INT:
        lo, hi = int(min(lo_f.min(), 0)), int(max(hi_f.max(), 0))
        return np.ones(n_in), np.zeros(n_in, dtype=np.int64), lo, hi, np.zeros(n_in)
    # Headroom: data past the calibration range (a test sample, a new sensor) would
    # clip at the grid's edge. Each feature's range widens by a fraction of its span,
    # but not across zero for a feature that never went below it; and a side where the
    # data has a tail (reaching past TAIL_START standard deviations from the mean; a
    # uniform feature stops at 1.73) reaches `sigmas` of them: a small calibration set
    # understates a tail.
    room = headroom * (hi_f - lo_f)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    new_lo, new_hi = lo_f - room, hi_f + room
    if sigmas > 0:
        new_lo = np.where(mu - lo_f > TAIL_START * sd, np.minimum(new_lo, mu - sigmas * sd),
                          new_lo)
        new_hi = np.where(hi_f - mu > TAIL_START * sd, np.maximum(new_hi, mu + sigmas * sd),
                          new_hi)
    lo_f = np.where((lo_f >= 0) & (new_lo < 0), 0.0, new_lo)
    hi_f = new_hi
    span = hi_f - lo_f
    # A constant feature (digits' always-blank pixels) has no range of its own: give
    # it its neighbours' step, so its weight does not set the row's weight grid.
    typical = float(np.median(span[span > 0])) if np.any(span > 0) else max(
        1.0, float(np.abs(lo_f).max()))
    scale = np.where(span > 0, span, typical) / qmax
    # A feature whose values lie on a decimal lattice (a sensor's 0.1 degree, iris'
    # millimetres) gets a step that divides the lattice's, when one fits: every such
    # value is then represented exactly (to float32), with no rounding noise.
    for j in range(n_in):
        d = _lattice_step(x[:, j])
        if d is not None and span[j] > 0:
            lo_j = np.floor(lo_f[j] / d + 1e-9) * d
            m = int(qmax * d // (hi_f[j] - lo_j + d))
            if m >= 1:
                scale[j], lo_f[j] = d / m, lo_j
    scale = scale.astype(np.float32).astype(np.float64)  # the file stores float32
    zero = (-_round(lo_f / scale)).astype(np.int64)
    return scale, zero, 0, qmax, np.full(n_in, 0.5)


# Lattice steps tried, coarsest first: 1, 0.5, 0.25, 0.2, then a tenth of each, ...
_LATTICES = [b * 10.0**-k for k in range(5) for b in (1.0, 0.5, 0.25, 0.2)]


def _lattice_step(col: np.ndarray) -> float | None:
    """The coarsest decimal step every value of col is a multiple of (to 1e-6 of a
    step), or None."""
    head = col[:1000]  # most columns fail every step on their first rows: try those first
    for d in _LATTICES:
        if all(np.all(np.abs(c / d - np.round(c / d)) < 1e-6) and np.abs(c / d).max()
               < SMALL_INT for c in (head, col)):
            return d
    return None


# The accumulator budget left for weights x inputs (the rest is the bias's): grids
# are fitted so that sum|w| * max|x| stays below it, which is what lets 16-bit
# requests keep the 2**30 proof without starving either side.
_PRODUCT_BUDGET = 1 << 29


def _spread(w: np.ndarray) -> float:
    """max over rows of sum|w| / max|w|: how many full-scale terms a row adds up to."""
    a = np.abs(w)
    m = a.max(axis=1)
    return float(np.max(np.where(m > 0, a.sum(axis=1) / np.where(m > 0, m, 1), 1.0)))


def _grid_cap(spread: float, weight_bits: int = 16, n_in: int = 1) -> int:
    """Largest input grid for a layer: one that leaves the weights as many levels
    (balanced split), or, when the weights have fewer levels than that (8 bits), all
    the budget they leave; 8-bit weights also bound the kernels' running sums (stored
    offset by 128: 128 * n_in * max|x| with a margin for the bias)."""
    balanced = np.sqrt(_PRODUCT_BUDGET / spread)
    w_levels = (1 << (weight_bits - 1)) - 1
    if w_levels >= balanced:
        return max(1, int(balanced))
    cap = _PRODUCT_BUDGET / (w_levels * spread)
    if weight_bits == 8:
        cap = min(cap, 0.9 * SMALL_INT / (128 * max(n_in, 2)))
    return max(1, int(cap))


# Fractions of a row's largest |weight| tried as the grid's edge (weights past it clip).
_CLIP_FRACTIONS = (1.0, 0.8, 0.64, 0.5, 0.4, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.025)


def _fit_weight_scales(w: np.ndarray, x: np.ndarray, row_max: np.ndarray, wmax: int,
                       per_channel: bool) -> np.ndarray:
    """Weight scales that minimize the output's squared error on calibration inputs x.

    The grid's edge is the row's largest weight, or less when that weight belongs to a
    rarely active or constant input (e.g. scaled up by a tiny std): clipping
    it costs little on real data, while the other weights gain levels. Clipping keeps
    every weight within wmax, so the 2**30 proof is unaffected.
    """
    safe = np.where(row_max > 0, row_max, 1.0)
    best_s = best_e = None
    # A 16-bit grid is fine enough as it is; clipping there would only trade away inputs
    # the calibration data happens not to exercise.
    for f in _CLIP_FRACTIONS if wmax < 255 else _CLIP_FRACTIONS[:1]:
        s = (safe * f / wmax).astype(np.float32).astype(np.float64)
        err = x @ (np.clip(_round(w / s[:, None]), -wmax, wmax) * s[:, None] - w).T
        e = (err**2).sum(axis=0) if per_channel else np.full(len(s), (err**2).sum())
        if best_s is None:
            best_s, best_e = s, e
        else:
            better = e < best_e * (1 - 1e-9)
            best_s, best_e = np.where(better, s, best_s), np.where(better, e, best_e)
    return np.where(row_max > 0, best_s, 1.0)


def _act_range(relu: bool, bits: int) -> tuple[int, int]:
    if relu:
        return 0, (1 << bits) - 1
    q = (1 << (bits - 1)) - 1
    return -q, q


def choose_multiplier(m_real: float, bound: int) -> tuple[int, int]:
    """(mult, shift) with mult / 2**shift ~ m_real that the engine can apply below 2**30.

    shift >= 15 (SPLIT_SHIFT) takes a 14-bit mult: the engine splits the accumulator
    (docs/format.md), so precision does not depend on the bound. Smaller shifts (m_real
    above 1/4) multiply directly, which needs bound * mult + rnd < 2**30.
    """
    if 0 < m_real < 0.25:
        shift = min(MAX_SHIFT, int(np.floor(np.log2(MULT_LIMIT / m_real))))
        mult = int(_round(m_real * 2.0**shift))
        if mult >= MULT_LIMIT:
            shift, mult = shift - 1, int(_round(m_real * 2.0 ** (shift - 1)))
        if shift >= SPLIT_SHIFT and 1 <= mult < MULT_LIMIT:
            return mult, shift
    for shift in range(SPLIT_SHIFT - 1, -1, -1):
        mult = int(_round(m_real * (1 << shift)))
        rnd = (1 << (shift - 1)) if shift else 0
        if mult >= 1 and bound * mult + rnd < SMALL_INT:
            return mult, shift
    return 0, 0


def quantize(
    layers: list[FloatLayer], calib: np.ndarray, opts: QuantOptions | None = None
) -> QuantModel:
    """Quantize a checked float layer list using calibration inputs calib [n, n_in]."""
    opts = opts or QuantOptions()
    for name, bits in (
        ("weight", opts.weight_bits),
        ("activation", opts.act_bits),
        ("output", opts.out_bits),
    ):
        if bits not in (8, 16) and not (name == "output" and 2 <= bits <= 16):
            raise ExportError(f"{name} bits must be 8 or 16, got {bits}")
    layers = check(list(layers))
    calib = np.asarray(calib, dtype=np.float64)
    if calib.ndim != 2 or calib.shape[1] != layers[0].n_in or len(calib) == 0:
        raise ExportError(
            f"calibration data has shape {calib.shape}, expected (n, {layers[0].n_in})"
        )

    spreads = [_spread(layer.weight) for layer in layers]
    # 16-bit weights with 16-bit activations: every grid takes its full 16 bits, and a
    # layer whose sums could then reach 2**30 is wide (acc = b + floor(W x / 256),
    # formed in the inputs' two bytes)
    full16 = opts.weight_bits == 16 and opts.act_bits == 16
    notes: list[str] = []
    if opts.input_range is not None:
        in_lo, in_hi = (int(v) for v in opts.input_range)
        if in_lo > in_hi or max(abs(in_lo), abs(in_hi)) >= ZERO_REACH:
            raise ExportError(f"input range [{in_lo}, {in_hi}] is empty or past 2**29")
        n_in = layers[0].n_in
        in_scale, in_zero, e_in = np.ones(n_in), np.zeros(n_in, np.int64), np.zeros(n_in)
        notes += _range_warnings(calib, in_lo, in_hi)
    else:
        in_scale, in_zero, in_lo, in_hi, e_in = quantize_inputs(
            calib, opts.act_bits, (1 << opts.act_bits) - 1 if full16 else min(
                (1 << opts.act_bits) - 1, _grid_cap(spreads[0], opts.weight_bits,
                                                    layers[0].n_in)),
            opts.headroom, tail_sigmas(opts))
        far = np.flatnonzero((in_hi - in_zero >= ZERO_REACH) | (in_zero - in_lo >= ZERO_REACH))
        if len(far):
            i = int(far[0])
            raise ExportError(
                f"input feature {i}: its calibrated values [{calib[:, i].min():.6g}, "
                f"{calib[:, i].max():.6g}] lie more than 2**29 steps of {in_scale[i]:.3g} "
                f"from zero; center it (--input-mean/--input-std) before export")
    const = np.flatnonzero(calib.min(axis=0) == calib.max(axis=0))
    if len(const) and opts.input_range is None:
        notes.append(f"input features {_list(const)} are constant in the calibration data: "
                     f"they get their neighbours' input step, and 8-bit weight grids are "
                     f"fitted without them (their weights may clip)")
    # The first layer takes the input integers q: x = in_scale * (q - in_zero).
    first = fold_input_affine(layers[0], in_scale, -in_scale * in_zero,
                              "folded input zero point")
    flayers = [first] + layers[1:]

    # Activation ranges from the float model on the calibration data.
    q_calib = calib / in_scale + in_zero
    acts, outs, h = [], [], q_calib
    sample = np.random.default_rng(0).permutation(len(q_calib))[:512]
    inputs = []  # each layer's calibration inputs (a sample), to fit its weight grid
    for layer in flayers:
        inputs.append(h[sample])
        h = layer.forward(h)
        outs.append(h)
        acts.append(np.abs(h).max(axis=0) if len(h) else np.zeros(layer.n_out))

    qlayers: list[QuantLayer] = []
    s_x, x_max = 1.0, max(abs(in_lo), abs(in_hi))
    err_in = e_in  # per-input error bound, real units of this layer's input
    errors = []
    for i, layer in enumerate(flayers):
        last = i == len(flayers) - 1
        relu = layer.act == "relu"
        bits = opts.out_bits if last else opts.act_bits
        if layer.act == "clamp":
            # the scale puts the clamp's bounds on the integer grid's edge; an open side
            # (Clip with only max) takes the calibrated range
            a, b = layer.clamp_lo, layer.clamp_hi
            y_cal = max(float(acts[i].max()), 1e-12)
            a = a if np.isfinite(a) else -y_cal
            b = b if np.isfinite(b) else max(y_cal, a)
            lo, hi = _act_range(a >= 0, bits)
            s_y = float(np.float32(max(abs(a), abs(b)) / hi)) if max(abs(a), abs(b)) else 1.0
            lo, hi = max(lo, int(_round(a / s_y))), min(hi, int(_round(b / s_y)))
        else:
            lo, hi = _act_range(relu, bits)
            if not last and not full16:  # this grid is the next layer's input grid: fit it
                cap = _grid_cap(spreads[i + 1], opts.weight_bits, flayers[i + 1].n_in)
                lo, hi = max(lo, -cap), min(hi, cap)
            y_max = activation_range(outs[i], hi, opts.calib_method, opts.headroom)
            s_y = (y_max / hi) if y_max > 0 else 1.0
            s_y = float(np.float32(s_y))
        slope_mult = slope_shift = 0
        if layer.act == "leaky":  # slope as slope_mult / 2**slope_shift, 13 bits
            slope_shift = min(20, int(np.floor(np.log2(SLOPE_LIMIT / layer.slope))))
            slope_mult = int(_round(layer.slope * 2.0**slope_shift))
            if slope_mult >= SLOPE_LIMIT:
                slope_shift -= 1
                slope_mult = int(_round(layer.slope * 2.0**slope_shift))

        wmax = (1 << (opts.weight_bits - 1)) - 1
        wide = full16 and x_max * wmax * spreads[i] >= SMALL_INT // 2
        scale_acc = 1 << WIDE_SHIFT if wide else 1  # a bias and acc unit, in products w * x
        row_max = np.abs(layer.weight).max(axis=1)
        # Fit the weight grid: per row, |acc| <= wmax * (sum|w|/max|w| * max|x| +
        # |b| / (s_x max|w|)); keep that under 0.9 * 2**30 (the rest absorbs rounding).
        # Wide: the sums of the inputs' high bytes, with the bias in units of 256, and
        # of their low bytes (up to 255 each) stay under the same limit.
        safe = np.where(row_max > 0, row_max, 1.0)
        spread = np.abs(layer.weight).sum(axis=1) / safe
        cost = spread * (((x_max + 255) >> WIDE_SHIFT) if wide else x_max)
        if layer.bias is not None:
            cost = cost + np.abs(layer.bias) / (s_x * safe * scale_acc)
        if wide:
            cost = np.maximum(cost, spread * 255)
        wmax = max(1, min(wmax, int(0.9 * SMALL_INT / max(1.0, float(cost.max())))))
        if not opts.per_channel:  # one scale for the whole layer
            row_max = np.full_like(row_max, row_max.max())
        s_w = _fit_weight_scales(layer.weight, inputs[i], row_max, wmax, opts.per_channel)
        w_q = np.clip(_round(layer.weight / s_w[:, None]), -wmax, wmax).astype(np.int64)
        float_bias = layer.bias
        mode = _correction_mode(opts.bias_correction)
        if mode == "all" or (mode == "bias" and layer.bias is not None):
            # Bias correction: the weights' rounding shifts each output by a mean amount
            # on real inputs (they are not centred); the bias takes it back.
            shift = (inputs[i] @ (layer.weight - w_q * s_w[:, None]).T).mean(axis=0)
            if layer.bias is None:
                layer = replace(layer, bias=shift, bias_note="bias correction")
                float_bias = np.zeros(layer.n_out)
            else:
                layer = replace(layer, bias=layer.bias + shift)
        b_q = None
        if layer.bias is not None:
            b_real = _round(layer.bias / (s_x * s_w * scale_acc))
            if np.abs(b_real).max() >= SMALL_INT:
                c = int(np.abs(b_real).argmax())
                raise ExportError(
                    f"layer {i} ({layer.n_in}->{layer.n_out}): the bias of channel {c} would be "
                    f"{b_real[c]:.3g} >= 2**30 in accumulator units (its weights are tiny next "
                    f"to it); the accumulator can reach 2**30 whatever the bits"
                )
            b_q = b_real.astype(np.int64)
        bound = accumulator_bound(w_q, b_q, x_max, wide)
        where = f"layer {i} ({layer.n_in}->{layer.n_out})"
        if wide and wide_sums_bound(w_q, b_q, x_max) >= SMALL_INT:
            raise ExportError(f"{where}: a sum of the inputs' bytes can reach 2**30; use "
                              f"fewer weight or activation bits")
        if bound >= SMALL_INT:
            raise ExportError(
                f"{where}: the accumulator can reach {bound} >= 2**30 for inputs in range; "
                f"use fewer weight or activation bits, or a narrower input range"
            )
        run = running_sum_bound(opts.weight_bits, b_q, layer.n_in, x_max)
        if run >= SMALL_INT:
            raise ExportError(
                f"{where}: with 8-bit weights (stored offset by 128) a running sum can reach "
                f"{run} >= 2**30 for inputs up to {x_max}; use --weight-bits 16 or fewer "
                f"activation bits"
            )
        m_real = s_x * s_w * scale_acc / s_y
        mult = np.zeros(layer.n_out, dtype=np.int64)
        shift = np.zeros(layer.n_out, dtype=np.int64)
        for c in range(layer.n_out):
            mult[c], shift[c] = choose_multiplier(float(m_real[c]), bound)
            if mult[c] < 1:
                raise ExportError(
                    f"{where}: channel {c} needs a requantizer multiplier of {m_real[c]:.3g}, "
                    f"which no integer multiplier and shift can give with the accumulator "
                    f"bound {bound} below 2**30"
                )

        # Worst-case error of the dequantized output against float (real units),
        # valid while no value saturates at a clamp other than ReLU's zero.
        w_hat = w_q * s_w[:, None]
        x_abs = x_max * s_x
        e = np.abs(w_hat - layer.weight).sum(axis=1) * x_abs
        e += np.abs(layer.weight) @ err_in
        if layer.bias is not None:
            e += np.abs(b_q * s_x * s_w * scale_acc - float_bias)
        acc_max = np.abs(w_q).sum(axis=1) * x_max / scale_acc + (
            np.abs(b_q) if b_q is not None else 0)
        if wide:  # floor(W x / 256) is up to one unit of 256 products below W x / 256
            e += scale_acc * s_x * s_w
        e += acc_max * np.abs(mult / np.exp2(shift) - m_real) * s_y
        e += 0.5 * s_y
        if layer.act == "clamp":  # the integer clamp sits within half a step of the real one
            e += 0.5 * s_y
        if layer.act == "leaky":  # the slope's rounding and the rounding after it
            pre = acc_max * s_x * s_w * scale_acc  # |pre-activation| in real units
            e += np.abs(slope_mult / 2.0**slope_shift - layer.slope) * pre + 0.5 * s_y
        # PyTorch computes in float32: allow its own rounding, (n+2) * 2**-24 relative.
        e += (
            (layer.n_in + 2)
            * 2.0**-24
            * (
                np.abs(layer.weight).sum(axis=1) * x_abs
                + (np.abs(layer.bias) if layer.bias is not None else 0)
            )
        )
        errors.append(float(np.float32(e.max()) * np.float32(1 + 2**-20)))

        qlayers.append(
            QuantLayer(
                w=w_q.astype(np.int8 if opts.weight_bits == 8 else np.int16),
                b=None if b_q is None else b_q.astype(np.int32),
                mult=mult.astype(np.int32),
                shift=shift.astype(np.uint8),
                lo=lo,
                hi=hi,
                act={"relu": ACT_RELU, "clamp": ACT_CLAMP, "leaky": ACT_LEAKY}.get(
                    layer.act, ACT_NONE),
                slope_mult=slope_mult,
                slope_shift=slope_shift,
                acc_bound=bound,
                in_scale=s_x,
                out_scale=s_y,
                w_scale=s_w.astype(np.float32),
                w_bits=opts.weight_bits,
                error_bound=errors[-1],
                bias_note=layer.bias_note,
                wide=wide,
            )
        )
        s_x, x_max, err_in = s_y, max(abs(lo), abs(hi)), e

    return QuantModel(
        meta={"notes": notes},
        layers=qlayers,
        in_scale=in_scale.astype(np.float32),
        in_zero=in_zero.astype(np.int32),
        in_lo=in_lo,
        in_hi=in_hi,
        error_bound=errors[-1],
    )


def _list(idx) -> str:
    idx = [int(i) for i in idx]
    return ", ".join(map(str, idx[:10])) + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")


def _range_warnings(calib: np.ndarray, lo: int, hi: int) -> list[str]:
    """What the calibration data says against a declared raw-integer input range."""
    out = []
    frac = np.flatnonzero(np.any(calib != np.round(calib), axis=0))
    if len(frac):
        out.append(f"warning: --input-range/--input-bits declares raw integers, but input "
                   f"features {_list(frac)} have fractional values in the calibration data; "
                   f"the board rounds them (drop the option to calibrate float inputs)")
    below = np.flatnonzero(calib.min(axis=0) < lo)
    above = np.flatnonzero(calib.max(axis=0) > hi)
    if len(below) or len(above):
        out.append(f"warning: calibration data lies outside the declared input range "
                   f"[{lo}, {hi}] in features {_list(sorted(set(below) | set(above)))}: "
                   f"the board clamps those values")
    span = calib.max(axis=0) - calib.min(axis=0)
    if len(calib) > 1 and span.max() < (hi - lo) / 1000:
        out.append(f"warning: the calibration data spans at most {span.max():.3g} of the "
                   f"declared input range [{lo}, {hi}]: the inputs use few of its steps")
    return out


__all__ = ["QuantOptions", "quantize", "quantize_inputs", "choose_multiplier", "forward"]
