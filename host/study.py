"""The fidelity study behind docs/fidelity.md: `python -m micromlp.host.study`.

Six float models (three bundled datasets; wine with one hidden unit scaled 100x, the
same function; a smooth regression on unnormalized non-negative inputs, with and
without biases) exported with each post-training option, then fine-tuned through
the exporter's grids. Prints markdown tables: mean and max |fixed - float| as % of
the float outputs' span on the test split, the task metric, and the bounds.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

from .datasets import load as load_dataset

CONFIGS = [
    ("no equalization, no bias correction", dict(equalize="off", bias_correction="off")),
    ("bias correction only", dict(equalize="off")),
    ("defaults (equalization auto, bias correction)", dict()),
    ("--calib-method percentile", dict(calib_method="percentile")),
    ("--calib-method mse", dict(calib_method="mse")),
    ("--bias-correction all", dict(bias_correction="all")),
]


def split(x, y):
    """75/25, seeded."""
    idx = np.random.default_rng(0).permutation(len(x))
    n = int(0.75 * len(x))
    return x[idx[:n]], y[idx[:n]], x[idx[n:]], y[idx[n:]]


def fit(model, x, y, epochs, regression=False):
    """Full-batch Adam: cross-entropy, or squared error for a regression."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    X = torch.tensor(x, dtype=torch.float32)
    Y = torch.tensor(y, dtype=torch.float32 if regression else torch.long)
    for _ in range(epochs):
        opt.zero_grad()
        out = model(X)
        loss = (((out.squeeze(-1) - Y) ** 2).mean() if regression
                else torch.nn.functional.cross_entropy(out, Y))
        loss.backward()
        opt.step()
    return model


def _mlp(sizes, bias=True):
    mods = []
    for i in range(len(sizes) - 1):
        mods.append(torch.nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def cases():
    """(name, model, x_train, y_train, x_test, y_test, normalization kwargs, regression)"""
    for name in ("wine", "breast_cancer", "digits"):
        torch.manual_seed(0)
        d = load_dataset(name)
        xtr, ytr, xte, yte = split(d.x, d.y)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
        if name == "digits":
            mu, sd = np.zeros(d.n_features), np.full(d.n_features, 16.0)
        m = fit(_mlp([d.n_features, 32, 16, d.n_classes]), (xtr - mu) / sd, ytr, 200)
        yield name, m, xtr, ytr, xte, yte, dict(input_mean=mu, input_std=sd), False
        if name == "wine":  # one hidden unit 100x, its outgoing weights 1/100x
            m2 = _mlp([13, 32, 16, 3])
            m2.load_state_dict(m.state_dict())
            with torch.no_grad():
                m2[0].weight[5] *= 100
                m2[0].bias[5] *= 100
                m2[2].weight[:, 5] /= 100
            yield ("wine, one unit 100x", m2, xtr, ytr, xte, yte,
                   dict(input_mean=mu, input_std=sd), False)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, size=(2000, 6))
    y = np.sin(x[:, 0]) + 0.03 * x[:, 1] * x[:, 2] + np.cos(x[:, 3] * x[:, 4] / 5)
    xtr, ytr, xte, yte = split(x, y)
    for name, bias in (("regression", True), ("regression, bias=False", False)):
        torch.manual_seed(0)
        m = fit(_mlp([6, 32, 32, 1] if bias else [6, 32, 1], bias), xtr, ytr, 800, True)
        yield name, m, xtr, ytr, xte, yte, {}, True


def _float(m, x, kw):
    xin = (x - kw["input_mean"]) / kw["input_std"] if kw else x
    with torch.no_grad():
        return m(torch.tensor(xin, dtype=torch.float32)).numpy().astype(np.float64)


def _task(out, y, regression):
    if regression:
        return f"RMSE {np.sqrt(((out[:, 0] - y) ** 2).mean()):.4f}"
    return f"acc {100 * (out.argmax(1) == y).mean():.2f} %"


def onnxruntime_errors(m, xtr, xte, kw, yf) -> dict[str, float]:
    """Mean |int8 - float| as % of the span for onnxruntime's quantize_static (QDQ,
    per-channel int8 weights, uint8 activations), by calibration method."""
    import logging
    import os
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Norm(torch.nn.Module):
        def __init__(self, mu, sd):
            super().__init__()
            self.mu = torch.tensor(mu, dtype=torch.float32)
            self.sd = torch.tensor(sd, dtype=torch.float32)

        def forward(self, x):
            return (x - self.mu) / self.sd

    class Reader(CalibrationDataReader):
        def __init__(self, x):
            self.it = iter([{"x": r[None].astype(np.float32)} for r in x])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)
    net = torch.nn.Sequential(Norm(kw["input_mean"], kw["input_std"]), m) if kw else m
    span = yf.max() - yf.min()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        f32, q8 = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
        torch.onnx.export(net, torch.zeros(1, xtr.shape[1]), f32, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
        for meth in (CalibrationMethod.MinMax, CalibrationMethod.Percentile,
                     CalibrationMethod.Entropy):
            quantize_static(f32, q8, Reader(xtr), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=meth)
            sess = ort.InferenceSession(q8, providers=["CPUExecutionProvider"])
            yq = sess.run(None, {"x": xte.astype(np.float32)})[0]
            out[meth.name] = 100 * float(np.abs(yq - yf).mean()) / span
    return out


def main() -> int:
    import micromlp
    from micromlp.export.fold import fold_normalization

    from . import fidelity

    warnings.filterwarnings("ignore")
    rows, qat_rows, bound_rows, peer_rows = [], [], [], []
    for name, m, xtr, ytr, xte, yte, kw, reg in cases():
        yf = _float(m, xte, kw)
        span = yf.max() - yf.min()
        for label, opts in CONFIGS:
            q = micromlp.export(m, calib=xtr, out=None, **kw, **opts)
            err = np.abs(q.run(xte).floats - yf)
            kept = "kept" if any(n.startswith("activation equalization kept")
                                 for n in q.notes) else ""
            rows.append(f"| {name} | {label} | {100 * err.mean() / span:.3f} | "
                        f"{100 * err.max() / span:.2f} | {kept} |")
            if label.startswith("defaults"):
                ours = 100 * err.mean() / span
                peers = onnxruntime_errors(m, xtr, xte, kw, yf)
                best = min(peers.values())
                peer_rows.append(f"| {name} | {ours:.3f} | " + " | ".join(
                    f"{v:.3f}" for v in peers.values()) + f" | {best / ours:.2f}x |")
                layers = q.source.layers
                if q.source.mean is not None:
                    layers = fold_normalization(layers, q.source.mean, q.source.std)
                c = fidelity.certify(q.model, layers, xte)
                cert = "n/a" if reg else f"{100 * c.certified.mean():.1f} %"
                sq = " / ".join("exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
                                for r in q.fidelity)
                bound_rows.append(
                    f"| {name} | {q.error_bound:.4g} | {np.median(c.bound):.4g} | "
                    f"{c.bound.max():.4g} | {c.observed.max():.4g} | {cert} | {sq} |")
                ptq = _task(q.run(xte).floats, yte, reg)
        ft = micromlp.finetune(m, xtr, ytr, epochs=20, progress=False,
                               input_mean=kw.get("input_mean"), input_std=kw.get("input_std"))
        q2 = micromlp.export(ft, calib=xtr, out=None, equalize="off", bias_correction="off")
        qat_rows.append(f"| {name} | {_task(yf, yte, reg)} | {ptq} | "
                        f"{_task(q2.run(xte).floats, yte, reg)} |")
    print("| model | export options | mean error % of span | max error % | equalization |")
    print("|---|---|---:|---:|---|")
    print("\n".join(rows))
    print()
    print("| model | proven bound | cell bound, median | cell bound, max | observed max | "
          "classes certified | layer SQNR dB (calibration) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(bound_rows))
    print()
    print("| model | micromlp (defaults) | onnxruntime MinMax | Percentile | Entropy | "
          "best onnxruntime / micromlp |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(peer_rows))
    print()
    print("| model | float | fixed point (defaults) | fine-tuned 20 epochs, then exported |")
    print("|---|---|---|---|")
    print("\n".join(qat_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
