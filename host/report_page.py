"""`micromlp report`: one self-contained HTML page on a model's fidelity.

What verify measures (bit-exactness on the VMs, accuracy, bounds, certified classes),
with the per-layer picture and plots made by matplotlib, inlined as PNG: float against
fixed point per output, each layer's SQNR and the output error with only that layer
quantized, each layer's activations with its grid's clip range, input features outside
their range, the confusion matrix, and the layer table. No scripts, no external files:
the page opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..export import modelfile
from ..export.report import input_table, layer_table
from . import fidelity, reference, vms
from .verify import VerifyReport, format_report, verify_arrays

MAX_SCATTER_OUTPUTS = 12  # a wider output layer shows its first 12 in the scatter grid
MAX_POINTS = 5000  # per scatter: a sample of the rows beyond this


def _png(fig) -> str:
    """A matplotlib figure as an inline <img>."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _scatter(float_out: np.ndarray, fixed_out: np.ndarray, bound: float):
    import matplotlib.pyplot as plt

    k = min(float_out.shape[1], MAX_SCATTER_OUTPUTS)
    cols = min(k, 4)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    idx = np.arange(len(float_out))
    if len(idx) > MAX_POINTS:
        idx = np.random.default_rng(0).choice(idx, MAX_POINTS, replace=False)
    for j, ax in enumerate(axes.flat):
        if j >= k:
            ax.axis("off")
            continue
        f, q = float_out[idx, j], fixed_out[idx, j]
        ax.scatter(f, q, s=6, alpha=0.5, color="#1f77b4", linewidths=0)
        lo, hi = float(min(f.min(), q.min())), float(max(f.max(), q.max()))
        ax.plot([lo, hi], [lo, hi], color="#444", lw=0.8)
        ax.set_title(f"output {j}: max |diff| {np.abs(f - q).max():.3g}", fontsize=9)
        ax.set_xlabel("float", fontsize=8)
        ax.set_ylabel("fixed point", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"fixed point against float, per output (proven bound {bound:.3g})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _layer_bars(rows: list[dict]):
    import matplotlib.pyplot as plt

    names = [f"{r['layer']}: {r['shape']}" for r in rows]
    sqnr = [0.0 if r["sqnr_db"] is None else r["sqnr_db"] for r in rows]
    alone = [100 * r["alone_mean_error"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(names, sqnr, color="#2ca02c")
    a.set_title("SQNR per layer, dB (errors of earlier layers included)", fontsize=9)
    for i, v in enumerate(sqnr):
        a.text(i, v, "exact" if rows[i]["sqnr_db"] is None else f"{v:.1f}",
               ha="center", va="bottom", fontsize=8)
    b.bar(names, alone, color="#d62728")
    b.set_title("output mean |error| with only this layer quantized, % of span",
                fontsize=9)
    for ax in (a, b):
        ax.tick_params(labelsize=8)
    return fig


def _histograms(model, layers, x: np.ndarray, ref):
    """Each layer's outputs on the board (dequantized; ref: the reference's run with
    trace) with the grid's edges, and the float layer's outputs (a value beyond an edge
    is clipped on the board)."""
    import matplotlib.pyplot as plt

    n = len(model.layers)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 2.8), squeeze=False)
    h = x
    for i, (ax, q) in enumerate(zip(axes.flat, model.layers, strict=True)):
        h = layers[i].forward(h)
        board = (ref.hidden[i] * q.out_scale).ravel()
        lo, hi = q.lo * q.out_scale, q.hi * q.out_scale
        edges = np.linspace(min(board.min(), h.min()), max(board.max(), h.max()), 60)
        ax.hist(h.ravel(), bins=edges, color="#aaa", label="float")
        ax.hist(board, bins=edges, histtype="step", color="#1f77b4", label="board")
        for edge in (lo, hi):
            if edges[0] <= edge <= edges[-1]:
                ax.axvline(edge, color="#d62728", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"layer {i} ({q.n_in}->{q.n_out}) grid [{lo:.3g}, {hi:.3g}]", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("activations; red: the grid's clip range", fontsize=9)
    fig.tight_layout()
    return fig


def _input_clipping(rep: VerifyReport, n_inputs: int):
    import matplotlib.pyplot as plt

    frac = np.zeros(n_inputs)
    for c in rep.clipped_features:
        frac[c["feature"]] = 100 * c["fraction"]
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.15 * n_inputs), 2.6))
    ax.bar(np.arange(n_inputs), frac, color="#ff7f0e")
    ax.set_title("samples outside each input feature's range (clamped), %", fontsize=9)
    ax.set_xlabel("input feature", fontsize=8)
    ax.tick_params(labelsize=7)
    return fig


def _confusion(conf: list):
    import matplotlib.pyplot as plt

    m = np.asarray(conf)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(m), 1 + 0.45 * len(m)))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > m.max() / 2 else "black")
    ax.set_xlabel("fixed point predicts", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title("confusion matrix (fixed point)", fontsize=9)
    ax.tick_params(labelsize=7)
    return fig


def _table(rows: list[dict]) -> str:
    """verify's per-layer rows as an HTML table."""
    head = ("layer", "shape", "SQNR dB", "max |error|", "p99 |error|", "max in range",
            "proven bound", "clipped", "levels used", "alone: mean error",
            "alone: max error", "alone: top-1")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        agree = "" if r["alone_agreement"] is None else f"{100 * r['alone_agreement']:.2f} %"
        cells = (r["layer"], r["shape"],
                 "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}",
                 f"{r['max_abs_error']:.4g}", f"{r['p99_abs_error']:.4g}",
                 f"{r['max_abs_error_in_range']:.4g}", f"{r['error_bound']:.4g}",
                 f"{100 * r['clipped']:.2f} %", f"{r['levels_used']} / {r['grid_levels']}",
                 f"{100 * r['alone_mean_error']:.3f} %", f"{100 * r['alone_max_error']:.3f} %",
                 agree)
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</table>"


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;
color:#222}h1{font-size:22px}h2{font-size:17px;margin-top:28px}pre{background:#f6f6f6;
white-space:pre-wrap;padding:10px;overflow-x:auto;font-size:12px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}img{max-width:100%}
.ok{color:#080;font-weight:bold}.failed{color:#c00;font-weight:bold}"""


def build(mlp_path: str | Path, x: np.ndarray, y: np.ndarray | None, source,
          out: str | Path, vm_names: tuple[str, ...] = vms.FIRMWARE_VMS,
          max_accuracy_drop: float = 0.01, min_agreement: float = 0.99
          ) -> tuple[Path, VerifyReport]:
    """Verify the model (per layer too) and write the page to out; returns its path and
    the report."""
    import matplotlib

    matplotlib.use("Agg")
    rep = verify_arrays(mlp_path, x, y, source, vm_names, max_accuracy_drop, min_agreement,
                        layers=True)
    model = modelfile.load(mlp_path)
    x = np.asarray(x, dtype=np.float64)
    layers = fidelity.matching_layers(model, source)
    ref = reference.run(model, model.quantize_input(x), trace=True)
    fixed = model.dequantize_output(ref.out)
    flt = source.evaluate(x)[0]
    status = "ok" if rep.ok else "failed"
    verdict = "OK" if rep.ok else "FAILED: " + html.escape("; ".join(rep.failures))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>micromlp report: {html.escape(str(mlp_path))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>micromlp report: {html.escape(Path(mlp_path).name)}</h1>",
        f"<p class='{status}'>{verdict}</p>",
        f"<pre>{html.escape(format_report(replace(rep, layers=[])))}</pre>",
        "<h2>Fixed point against float</h2>", _png(_scatter(flt, fixed, rep.error_bound)),
        "<h2>Per layer</h2>", _png(_layer_bars(rep.layers)), _table(rep.layers),
        "<p>SQNR and errors compare each layer's float outputs with the board's "
        "(dequantized). <i>alone</i>: the network's output error when only that layer "
        "runs in integers. <i>max in range</i>: over samples no clamp has touched up to "
        "that layer, which the layer's proven bound holds.</p>",
        "<h2>Activations</h2>", _png(_histograms(model, layers, x, ref)),
        "<h2>Inputs</h2>",
        _png(_input_clipping(rep, model.n_inputs)) if rep.clipped_features else
        "<p>No sample is outside any input feature's range.</p>",
        f"<pre>{html.escape(input_table(model, limit=model.n_inputs))}</pre>",
    ]
    if rep.confusion:
        parts += ["<h2>Confusion matrix</h2>", _png(_confusion(rep.confusion))]
    parts += ["<h2>Layer table</h2>", f"<pre>{html.escape(layer_table(model))}</pre>",
              "</body></html>"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out, rep


__all__ = ["build"]
