"""Where a fixed-point model's error comes from, and what can be proven per sample.

- layer_report: each layer's signal-to-quantization-noise ratio (the float layer's
  outputs against the board's, dequantized, errors of the layers before included) and
  how often its grid clips, on given inputs; the picture onnxruntime's qdq_loss_debug
  and PyTorch's Numeric Suite give.
- layer_alone: the network's output error when only one layer is quantized (the
  others float): which layer costs the most on its own.
- align_units: the float layer list rescaled unit by unit to match a model file whose
  export equalized activations (the file keeps the rescaled weights, not the scales).
- input_clipping: per input feature, the fraction of samples outside the range the
  model's integers cover (the board clamps them).
- certify: for each sample, a bound on |board - float| over the sample's whole input
  cell (every float input that the board quantizes to the same integers, so the board's
  answer is the same for all of them; a feature the board represents exactly is a
  point), by affine arithmetic on the float network (signs
  of the weights kept, ReLU relaxed only where a unit's sign is undecided in the cell);
  a sample is certified when the float model's class is the board's class everywhere
  in its cell.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..export.layers import FloatLayer
from ..export.qmodel import ACT_CLAMP, ACT_RELU, QuantModel
from . import reference


def layer_report(model: QuantModel, layers: list[FloatLayer], x: np.ndarray) -> list[dict]:
    """Per layer, on inputs x (raw, as the board sees them): SQNR (dB) and mean squared
    error of the board's dequantized outputs against the float layer list the model
    was quantized from (export keeps it; align_units() rebuilds it from a float model),
    errors of earlier layers included; max and 99th-percentile |error|, and the max
    over samples that no clamp has touched up to this layer, which the layer's proven
    bound (error_bound) holds; the fraction of outputs at the top of the grid (clipped; not
    for a layer whose clamp is its activation); and how many grid levels are used."""
    x = np.asarray(x, dtype=np.float64)
    ref = reference.run(model, model.quantize_input(x), trace=True)
    rows, h = [], x
    # the proven bounds hold while no value is clamped: samples clamped so far drop out
    in_range = ~outside_range(model, x).any(axis=1)
    for i, (layer, q) in enumerate(zip(layers, model.layers, strict=True)):
        h = layer.forward(h)
        got = ref.hidden[i] * q.out_scale
        err = np.abs(got - h)
        if q.act != ACT_CLAMP:
            in_range &= ~np.any((ref.hidden[i] >= q.hi) | (ref.hidden[i] <= q.lo)
                                if q.act != ACT_RELU else ref.hidden[i] >= q.hi, axis=1)
        noise = float((err**2).sum())
        signal = float((h**2).sum())
        sqnr = None if noise == 0 else 10 * np.log10(max(signal, 1e-300) / noise)  # None: exact
        clipped = 0.0 if q.act == ACT_CLAMP else float((ref.hidden[i] >= q.hi).mean())
        rows.append({"layer": i, "shape": f"{q.n_in}->{q.n_out}",
                     "sqnr_db": None if sqnr is None else float(sqnr), "clipped": clipped,
                     "mse": noise / max(1, got.size),
                     "max_abs_error": float(err.max(initial=0)),
                     "p99_abs_error": float(np.percentile(err, 99)) if err.size else 0.0,
                     "max_abs_error_in_range": float(err[in_range].max(initial=0)),
                     "error_bound": float(q.error_bound),
                     "levels_used": int(len(np.unique(ref.hidden[i]))),
                     "grid_levels": int(q.hi - q.lo + 1)})
    return rows


def layer_alone(model: QuantModel, layers: list[FloatLayer], x: np.ndarray) -> list[dict]:
    """Per layer: the network's outputs when only that layer runs in integers (its
    inputs quantized on its grid, its outputs dequantized, every other layer float),
    against the all-float outputs: mean and max |error| as a fraction of the float
    outputs' span, and (several outputs) top-1 agreement."""
    x = np.asarray(x, dtype=np.float64)
    ins = [x]
    for layer in layers:
        ins.append(layer.forward(ins[-1]))
    want = ins[-1]
    span = max(float(want.max() - want.min()), 1e-300)
    rows = []
    for i, q in enumerate(model.layers):
        if i == 0:
            one = QuantModel([q], model.in_scale, model.in_zero, model.in_lo, model.in_hi)
            xq = model.quantize_input(x)
        else:
            prev = model.layers[i - 1]
            scale = np.full(q.n_in, prev.out_scale, dtype=np.float32)
            one = QuantModel([q], scale, np.zeros(q.n_in, np.int32), prev.lo, prev.hi)
            xq = np.clip(np.floor(ins[i] / prev.out_scale + 0.5), prev.lo, prev.hi)
        h = reference.run(one, xq.astype(np.int64)).out * q.out_scale
        for layer in layers[i + 1:]:
            h = layer.forward(h)
        err = np.abs(h - want)
        row = {"layer": i, "mean_error": float(err.mean()) / span,
               "max_error": float(err.max()) / span, "agreement": None}
        if model.n_outputs > 1:
            row["agreement"] = float((h.argmax(1) == want.argmax(1)).mean())
        rows.append(row)
    return rows


# Activations that commute with a positive per-unit scale (export/equalize.py's)
_HOMOGENEOUS = ("relu", "none", "leaky")


def align_units(layers: list[FloatLayer], model: QuantModel) -> list[FloatLayer]:
    """The float layers (raw-input units) with each hidden unit divided by the scale k
    export's equalization gave it, so that they match the model's units one for one.

    The file keeps the rescaled weights, not k. Unit c of layer i shows its k in two
    places: row c of layer i (divided by k) and column c of layer i+1 (multiplied);
    k is the median of the ratios file / float over both, on weights well inside the
    grid (rounding moves them by under 6 %, unbiased; clipped weights left out), with
    the neighbours' k refined in turn. A layer whose every k is within 3 % of 1 was not
    rescaled (equalization skips layers within 5 %)."""
    n = len(layers)
    deq, inner = [], []
    for i, q in enumerate(model.layers):
        wd = q.w.astype(np.float64) * q.w_scale.astype(np.float64)[:, None]
        if i == 0:  # the first layer's integers read input steps: back to raw units
            wd = wd / model.in_scale.astype(np.float64)[None, :]
        big = np.abs(q.w).max(axis=1, keepdims=True)
        deq.append(wd)
        inner.append((np.abs(q.w) >= 8) & (np.abs(q.w) < big) & (layers[i].weight != 0))
    k = [np.ones(ly.n_out) for ly in layers]
    for _ in range(3):
        for i in range(n - 1):
            if layers[i].act not in _HOMOGENEOUS:
                continue
            prev = k[i - 1] if i else np.ones(layers[0].n_in)
            # row c: file = float * prev / k_c;  column c of the next: file = float * k_c / k_r
            rows = layers[i].weight * prev[None, :] / np.where(inner[i], deq[i], 1.0)
            cols = deq[i + 1] * k[i + 1][:, None] / np.where(inner[i + 1],
                                                             layers[i + 1].weight, 1.0)
            for c in range(layers[i].n_out):
                r = np.concatenate([rows[c, inner[i][c]], cols[inner[i + 1][:, c], c]])
                if len(r):
                    k[i][c] = np.median(r)
    out = list(layers)
    for i in range(n - 1):
        if np.all(np.abs(k[i] - 1) < 0.03):
            continue
        out[i] = replace(out[i], weight=out[i].weight / k[i][:, None],
                         bias=None if out[i].bias is None else out[i].bias / k[i])
        out[i + 1] = replace(out[i + 1], weight=out[i + 1].weight * k[i][None, :])
    return out


def matching_layers(model: QuantModel, source) -> list[FloatLayer]:
    """A float model's (export.sources.Source) layers in raw input units (its input
    normalization folded in), unit for unit as in the model file (align_units)."""
    from ..export.fold import fold_normalization

    layers = source.layers
    if source.mean is not None and source.std is not None:
        layers = fold_normalization(layers, source.mean, source.std)
    return align_units(layers, model)


def outside_range(model: QuantModel, x: np.ndarray) -> np.ndarray:
    """[n, n_inputs] bool: which input values fall outside the integers' range (the board
    clamps them)."""
    raw = np.floor(np.asarray(x, dtype=np.float64) / model.in_scale + 0.5) + model.in_zero
    return (raw < model.in_lo) | (raw > model.in_hi)


def input_clipping(model: QuantModel, x: np.ndarray) -> list[dict]:
    """Features with samples outside the integers' range: index, fraction, real range."""
    out = outside_range(model, x).mean(axis=0)
    lo = (model.in_lo - model.in_zero) * model.in_scale
    hi = (model.in_hi - model.in_zero) * model.in_scale
    return [{"feature": int(j), "fraction": float(out[j]), "range": [float(lo[j]), float(hi[j])]}
            for j in np.flatnonzero(out)]


@dataclass
class Certificate:
    """certify()'s answer for a batch."""

    bound: np.ndarray  # [n]: max over outputs and the cell of |board - float|
    certified: np.ndarray  # [n] bool: float argmax == board argmax in the whole cell
    observed: np.ndarray  # [n]: |board - float| at the sample itself (max over outputs)

    def summary(self) -> dict:
        return {"median_bound": float(np.median(self.bound)),
                "max_bound": float(self.bound.max()),
                "max_observed": float(self.observed.max()),
                "certified": float(self.certified.mean())}


def _zonotope(layers: list[FloatLayer], center: np.ndarray, radius: np.ndarray,
              chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The float network over the boxes center ± radius [n, n_in], in affine form:
    outputs = c + G e with noise symbols e in [-1, 1]; returns (c [n, k], G [n, k, s])."""
    cs, gs = [], []
    for start in range(0, len(center), chunk):
        c = center[start:start + chunk]
        g = np.zeros((len(c), c.shape[1], c.shape[1]))
        idx = np.arange(c.shape[1])
        g[:, idx, idx] = radius[start:start + chunk]
        for layer in layers:
            c = c @ layer.weight.T + (0 if layer.bias is None else layer.bias)
            g = np.einsum("oi,nis->nos", layer.weight, g)
            if layer.act == "none":
                continue
            r = np.abs(g).sum(axis=2)
            lo, hi = c - r, c + r
            straddle = (lo < 0) & (hi > 0)
            if layer.act in ("relu", "leaky"):
                # DeepZ: exact where the sign is decided in the box; else the chord's
                # slope lam, between lam*z and lam*z + (lam - a)(-lo) (a: the slope below 0)
                a = layer.slope if layer.act == "leaky" else 0.0
                lam = np.where(lo >= 0, 1.0, np.where(hi <= 0, a, (hi - a * lo) / np.where(
                    straddle, hi - lo, 1.0)))
                band = np.where(straddle, (lam - a) * -lo / 2, 0.0)
                c = lam * c + band
            else:  # clamp: exact inside the bounds; else the clipped interval, a fresh symbol
                lo_c = np.clip(lo, layer.clamp_lo, layer.clamp_hi)
                hi_c = np.clip(hi, layer.clamp_lo, layer.clamp_hi)
                exact = (lo >= layer.clamp_lo) & (hi <= layer.clamp_hi)
                lam = exact.astype(np.float64)
                band = np.where(exact, 0.0, (hi_c - lo_c) / 2)
                c = np.where(exact, c, (hi_c + lo_c) / 2)
            g = lam[:, :, None] * g
            g = np.concatenate([g, band[:, :, None] * np.eye(band.shape[1])[None]], axis=2)
        cs.append(c)
        gs.append(g)
    width = max(g.shape[2] for g in gs)
    gs = [np.pad(g, ((0, 0), (0, 0), (0, width - g.shape[2]))) for g in gs]
    return np.concatenate(cs), np.concatenate(gs)


def certify(model: QuantModel, layers: list[FloatLayer], x: np.ndarray) -> Certificate:
    """Per sample: the bound on |board - float| over its input cell, and whether the
    cell is certified (see the module docstring). layers: the float network in raw
    input units (any equivalent form: only its function is used)."""
    x = np.asarray(x, dtype=np.float64)
    xq = model.quantize_input(x)
    board = model.dequantize_output(reference.run(model, xq).out)
    # the cell: inputs within half a step of the integer's value (a clamped feature's
    # cell reaches the sample itself); a feature the board represents exactly (counts,
    # pixels: discrete data) is a point
    center = (xq - model.in_zero) * model.in_scale
    half = 0.5 * model.in_scale * np.ones_like(center)
    clamped = (xq <= model.in_lo) | (xq >= model.in_hi)
    far = np.abs(x - center)
    half = np.where(clamped & (far > half), far, np.where(far == 0, 0.0, half))
    c, g = _zonotope(layers, center, half)
    r = np.abs(g).sum(axis=2)
    bound = np.maximum(np.abs(board - (c - r)), np.abs(board - (c + r))).max(axis=1)
    f = x
    for layer in layers:
        f = layer.forward(f)
    observed = np.abs(board - f).max(axis=1)
    if model.n_outputs < 2:
        return Certificate(bound, np.zeros(len(x), bool), observed)
    k = np.argmax(board, axis=1)  # the board's class: it must win in the whole cell
    ck = np.take_along_axis(c, k[:, None], 1)
    gk = np.take_along_axis(g, k[:, None, None], 1)
    margin_lo = (ck - c) - np.abs(gk - g).sum(axis=2)  # min over the cell of f_k - f_j
    margin_lo[np.arange(len(k)), k] = np.inf
    return Certificate(bound, margin_lo.min(axis=1) > 0, observed)


__all__ = ["Certificate", "align_units", "certify", "input_clipping", "layer_alone", "layer_report",
           "matching_layers", "outside_range"]
