"""Human-readable tables of a quantized model (export and inspect print these)."""

from __future__ import annotations

import numpy as np

from .modelfile import layer_size
from .qmodel import ACT_NAMES, QuantModel


def layer_rows(model: QuantModel) -> list[dict]:
    """One dict per layer: shapes, bias, parameters, bytes, scales, bounds."""
    rows = []
    for i, layer in enumerate(model.layers):
        mult_bits = int(np.floor(np.log2(max(1, int(layer.mult.min()))))) + 1
        rows.append(
            {
                "layer": i,
                "shape": f"{layer.n_in}->{layer.n_out}",
                "act": ACT_NAMES[layer.act],
                "bias": ("yes" + (f" ({layer.bias_note})" if layer.bias_note else ""))
                if layer.has_bias
                else "no",
                "params": layer.n_params(True),
                "params_no_bias": layer.n_params(False),
                "w_bits": layer.w_bits,
                "w_max": int(np.abs(layer.w).max()),
                "bytes": layer_size(layer.n_in, layer.n_out, layer.w_bits, layer.has_bias),
                "in_scale": float(layer.in_scale),
                "out_scale": float(layer.out_scale),
                "w_scale_min": float(layer.w_scale.min()),
                "w_scale_max": float(layer.w_scale.max()),
                "range": [layer.lo, layer.hi],
                "acc_bound": layer.acc_bound,
                "acc_bound_log2": float(np.log2(max(1, layer.acc_bound))),
                "mult_bits_min": mult_bits,
                "error_bound": float(layer.error_bound),
                "wide": layer.wide,  # acc = b + floor(W x / 256) (docs/format.md)
            }
        )
    return rows


def layer_table(model: QuantModel) -> str:
    """The layer table as aligned text."""
    head = [
        "#",
        "shape",
        "act",
        "bias",
        "params",
        "w/o bias",
        "bytes",
        "weights",
        "in scale",
        "out scale",
        "w scale",
        "out range",
        "|acc| bound",
        "mult bits",
    ]
    body = []
    for r in layer_rows(model):
        body.append(
            [
                str(r["layer"]),
                r["shape"],
                r["act"],
                r["bias"],
                str(r["params"]),
                str(r["params_no_bias"]),
                str(r["bytes"]),
                f"int{r['w_bits']} +-{r['w_max']}" + (" wide" if r["wide"] else ""),
                f"{r['in_scale']:.4g}",
                f"{r['out_scale']:.4g}",
                f"{r['w_scale_min']:.3g}..{r['w_scale_max']:.3g}",
                f"[{r['range'][0]}, {r['range'][1]}]",
                f"{r['acc_bound']} (2^{r['acc_bound_log2']:.1f})",
                f">={r['mult_bits_min']}",
            ]
        )
    widths = [max(len(h), *(len(row[k]) for row in body)) for k, h in enumerate(head)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in body]
    p_all = sum(layer.n_params(True) for layer in model.layers)
    p_nob = sum(layer.n_params(False) for layer in model.layers)
    lines.append(
        f"inputs: {model.n_inputs} ints in [{model.in_lo}, {model.in_hi}]; outputs: "
        f"{model.n_outputs} ints x {model.out_scale:.4g}; parameters: {p_all} "
        f"({p_nob} without bias); every intermediate value < 2^30 (proven)"
    )
    return "\n".join(lines)


def input_rows(model: QuantModel) -> list[dict]:
    """Each input feature's mapping from the float a sensor gives to the int the engine
    takes: q = clamp(round_half_up(x / scale) + zero, in_lo, in_hi), and the real range
    the ints cover."""
    rows = []
    for i, (s, z) in enumerate(zip(model.in_scale.tolist(), model.in_zero.tolist(),
                                   strict=True)):
        rows.append({"feature": i, "scale": s, "zero": int(z),
                     "real_range": [(model.in_lo - z) * s, (model.in_hi - z) * s]})
    return rows


def input_table(model: QuantModel, limit: int = 16) -> str:
    """The input mapping as aligned text (the first `limit` features of a wide model)."""
    rows = input_rows(model)
    lines = [f"inputs: q = clamp(floor(x / scale + 1/2) + zero, {model.in_lo}, {model.in_hi})",
             f"{'feature':>7}  {'scale':>11}  {'zero':>6}  real range covered"]
    for r in rows[:limit]:
        lo, hi = r["real_range"]
        lines.append(f"{r['feature']:>7}  {r['scale']:>11.5g}  {r['zero']:>6}  "
                     f"[{lo:.5g}, {hi:.5g}]")
    if len(rows) > limit:
        lines.append(f"    ... {len(rows) - limit} more features (--json lists them all)")
    return "\n".join(lines)


def fidelity_table(rows: list[dict]) -> str:
    """export's per-layer fidelity (host/fidelity.layer_report rows) as text."""
    lines = ["layer fidelity on the calibration data (errors of earlier layers included):",
             f"{'#':>3}  {'shape':>10}  {'SQNR dB':>8}  {'clipped':>8}  max |error|"]
    for r in rows:
        sq = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(f"{r['layer']:>3}  {r['shape']:>10}  {sq:>8}  "
                     f"{100 * r['clipped']:>7.2f}%  {r['max_abs_error']:.4g}")
    return "\n".join(lines)
