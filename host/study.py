"""The fidelity study behind docs/fidelity.md: `python -m micromlp.host.study`.

Ten float models (the four bundled datasets; wine with one hidden unit scaled
100x, the same function; wine trained on its raw, unnormalized features; breast_cancer
with bias=False on inputs in [0, 1]; digits deep and narrow; a smooth regression on
unnormalized non-negative inputs, with and without biases) exported with each
post-training option, beside onnxruntime's quantize_static and PyTorch's eager
post-training quantization (host/peers.py) at int8 and int16, then fine-tuned through
the exporter's grids. Prints markdown tables: mean and max |fixed - float| as % of the
float outputs' span on the test split, agreement, the task metric, and the bounds.
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


def fit(model, x, y, epochs, regression=False, lr=1e-2):
    """Full-batch Adam: cross-entropy, or squared error for a regression."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
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
    for name in ("iris", "wine", "breast_cancer", "digits"):
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
            # trained on the raw features (0.1 to 1680): no normalization anywhere
            torch.manual_seed(0)
            m3 = fit(_mlp([13, 32, 16, 3]), xtr, ytr, 2000, lr=1e-3)
            yield "wine, unnormalized inputs", m3, xtr, ytr, xte, yte, {}, False
        if name == "breast_cancer":  # bias=False on inputs scaled to [0, 1], not centred
            torch.manual_seed(0)
            top = xtr.max(0)
            m4 = fit(_mlp([30, 32, 16, 2], bias=False), xtr / top, ytr, 400)
            yield ("breast_cancer, bias=False, inputs in [0, 1]", m4, xtr, ytr, xte, yte,
                   dict(input_mean=np.zeros(30), input_std=top), False)
        if name == "digits":  # deep and narrow: five hidden layers of 16
            torch.manual_seed(0)
            m5 = fit(_mlp([64, 16, 16, 16, 16, 16, 10]), (xtr - mu) / sd, ytr, 300)
            yield ("digits, deep-narrow 64-16x5-10", m5, xtr, ytr, xte, yte,
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


def _err(y, yf):
    """Mean |y - float| as % of the float outputs' span."""
    return 100 * float(np.abs(y - yf).mean()) / float(yf.max() - yf.min())


def _agree(y, yf, reg):
    return "n/a" if reg else f"{100 * (y.argmax(1) == yf.argmax(1)).mean():.1f} %"


# The QAT case where post-training int8 loses points: the 100x unit with one weight
# scale per layer and no equalization (the unit sets every grid it touches).
HARD = dict(per_tensor=True, equalize="off", bias_correction="off")
HARD_EPOCHS = 60


def main() -> int:
    import micromlp

    from . import fidelity, peers

    warnings.filterwarnings("ignore")
    rows, qat_rows, bound_rows, peer_rows, wide_rows = [], [], [], [], []
    for name, m, xtr, ytr, xte, yte, kw, reg in cases():
        print(name, file=sys.stderr)
        yf = _float(m, xte, kw)
        for label, opts in CONFIGS:
            q = micromlp.export(m, calib=xtr, out=None, **kw, **opts)
            y = q.run(xte).floats
            kept = "kept" if any(n.startswith("activation equalization kept")
                                 for n in q.notes) else ""
            rows.append(f"| {name} | {label} | {_err(y, yf):.3f} | "
                        f"{100 * np.abs(y - yf).max() / (yf.max() - yf.min()):.2f} | {kept} |")
            if label.startswith("defaults"):
                ours, ptq = y, _task(y, yte, reg)
                c = fidelity.certify(q.model, fidelity.matching_layers(q.model, q.source), xte)
                cert = "n/a" if reg else f"{100 * c.certified.mean():.1f} %"
                sq = " / ".join("exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
                                for r in q.fidelity)
                bound_rows.append(
                    f"| {name} | {q.error_bound:.4g} | {np.median(c.bound):.4g} | "
                    f"{c.bound.max():.4g} | {c.observed.max():.4g} | "
                    f"{c.bound.max() / c.observed.max():.1f}x | {cert} | {sq} |")
        # the peers at int8
        ort8 = {k: _err(v, yf) for k, v in peers.onnxruntime_outputs(m, xtr, xte, kw).items()}
        best = min(ort8, key=ort8.get)
        tq = {k: _err(v, yf) for k, v in peers.torch_ptq_outputs(m, xtr, xte, kw).items()}
        mine = _err(ours, yf)
        peer_rows.append(f"| {name} | {mine:.3f} | {_agree(ours, yf, reg)} | "
                         f"{ort8[best]:.3f} ({best}) | {tq['torch x86']:.3f} | "
                         f"{tq['torch qnnpack']:.3f} | "
                         f"{min([ort8[best], *tq.values()]) / mine:.2f}x |")
        # 16 bits
        w16 = micromlp.export(m, calib=xtr, out=None, weight_bits=16, act_bits=16, **kw)
        a16 = micromlp.export(m, calib=xtr, out=None, act_bits=16, **kw)
        ort16 = peers.onnxruntime_outputs(m, xtr, xte, kw, bits=16)
        e16 = min(_err(v, yf) for v in ort16.values())
        e_w16, e_a16 = _err(w16.run(xte).floats, yf), _err(a16.run(xte).floats, yf)
        wide_rows.append(f"| {name} | {e_w16:.4f} | {e_a16:.4f} | {e16:.4f} | "
                         f"{e16 / min(e_w16, e_a16):.2f}x |")
        torch.manual_seed(0)
        ft = micromlp.finetune(m, xtr, ytr, epochs=20, progress=False,
                               input_mean=kw.get("input_mean"), input_std=kw.get("input_std"))
        q2 = micromlp.export(ft, calib=xtr, out=None, equalize="off", bias_correction="off")
        qat_rows.append(f"| {name} | {_task(yf, yte, reg)} | {ptq} | "
                        f"{_task(q2.run(xte).floats, yte, reg)} |")
        if name == "wine, one unit 100x":
            q = micromlp.export(m, calib=xtr, out=None, **kw, **HARD)
            ft = micromlp.finetune(m, xtr, ytr, epochs=HARD_EPOCHS, progress=False,
                                   input_mean=kw["input_mean"], input_std=kw["input_std"],
                                   **HARD)
            q2 = micromlp.export(ft, calib=xtr, out=None, **HARD)
            qat_rows.append(f"| {name}, --per-tensor --equalize off --bias-correction off, "
                            f"{HARD_EPOCHS} epochs | {_task(yf, yte, reg)} | "
                            f"{_task(q.run(xte).floats, yte, reg)} | "
                            f"{_task(q2.run(xte).floats, yte, reg)} |")
    _table("| model | export options | mean error % of span | max error % | equalization |",
           "|---|---|---:|---:|---|", rows)
    _table("| model | proven bound | cell bound, median | cell bound, max | observed max | "
           "cell max / observed | classes certified | layer SQNR dB (calibration) |",
           "|---|---:|---:|---:|---:|---:|---:|---|", bound_rows)
    _table("| model | micromlp int8 (defaults) | top-1 agreement | onnxruntime int8, best "
           "method | PyTorch x86 | PyTorch qnnpack | best peer / micromlp |",
           "|---|---:|---:|---:|---:|---:|---:|", peer_rows)
    _table("| model | micromlp 16-bit weights, 16-bit activations | micromlp 8-bit weights, "
           "16-bit activations | onnxruntime int16, best method | onnxruntime / micromlp "
           "best |", "|---|---:|---:|---:|---:|", wide_rows)
    _table("| model | float | fixed point (defaults) | fine-tuned 20 epochs, then exported |",
           "|---|---|---|---|", qat_rows)
    return 0


def _table(head: str, rule: str, rows: list[str]) -> None:
    print(head)
    print(rule)
    print("\n".join(rows))
    print()


if __name__ == "__main__":
    sys.exit(main())
