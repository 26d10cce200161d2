"""What a newcomer's own model tripped on: float64 models, a .pt2 exported with a batch
of 4, a module left in training mode, regressors, image-shaped data, a state dict that
does not fit, CSV files with an extra column, and the API's and CLI's own surface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import micromlp
import numpy as np
import pytest
import torch
from micromlp.host.cli import main as cli
from micromlp.host.datasets import load
from torch import nn


@pytest.fixture(scope="module")
def digits_data():
    d = load("digits")
    idx = np.random.default_rng(0).permutation(len(d.x))
    return d.x[idx[:1200]], d.y[idx[:1200]], d.x[idx[1200:1500]], d.y[idx[1200:1500]]


def _fit(model, x, y, steps=150, regression=False):
    torch.manual_seed(0)
    dtype = next(model.parameters()).dtype
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt = torch.tensor(x, dtype=dtype)
    yt = torch.tensor(y, dtype=dtype if regression else torch.long)
    for _ in range(steps):
        opt.zero_grad()
        out = model(xt)
        loss = ((out - yt) ** 2).mean() if regression else nn.functional.cross_entropy(out, yt)
        loss.backward()
        opt.step()
    return model


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10)).to(dtype)


def test_a_float64_model_verifies_in_its_own_dtype(digits_data, tmp_path):
    xtr, ytr, xte, yte = digits_data
    m = _fit(_mlp(torch.float64), xtr, ytr)
    q = micromlp.export(m, calib=xtr, out=tmp_path)
    assert q.verify(xte, yte, vms="cpython").ok
    torch.jit.save(torch.jit.script(m), tmp_path / "m.ts")
    np.savez(tmp_path / "d.npz", x_test=xte, y_test=yte)
    assert cli(["verify", str(tmp_path / "model.mlp"), "--float", str(tmp_path / "m.ts"),
                "--data", str(tmp_path / "d.npz"), "--vm", "cpython"]) == 0


def test_a_pt2_exported_with_a_batch_of_4_verifies(digits_data, tmp_path):
    xtr, ytr, xte, yte = digits_data
    m = _fit(_mlp(), xtr, ytr)
    for dtype in (torch.float32, torch.float64):
        path = tmp_path / f"m-{dtype}.pt2"
        mm = m.to(dtype)
        torch.export.save(torch.export.export(mm, (torch.zeros(4, 64, dtype=dtype),)), path)
        q = micromlp.export(path, calib=xtr, out=None)
        rep = q.verify(xte[:103], yte[:103], vms="cpython")  # 103: the last batch is padded
        assert rep.ok and rep.samples == 103, micromlp.format_report(rep)
        assert rep.top1_agreement == 1.0


def test_a_module_left_in_training_mode_is_exported_in_eval_mode_and_left_as_it_was(
        digits_data):
    xtr, ytr, xte, yte = digits_data
    m = _fit(nn.Sequential(nn.Linear(64, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.3),
                           nn.Linear(24, 10)), xtr, ytr)
    m.train()
    q = micromlp.export(m, calib=xtr, out=None)
    assert all(mod.training for mod in m.modules())  # the user's object is untouched
    assert any("the model was in training mode: exported in eval mode (BatchNorm1d, "
               "Dropout in eval mode)" in n for n in q.notes), q.notes
    rep = q.verify(xte, yte, vms="cpython")  # the float model runs in eval mode too
    assert rep.ok and rep.top1_agreement > 0.99, micromlp.format_report(rep)
    assert all(mod.training for mod in m.modules())
    m.eval()
    assert not any("training mode" in n for n in micromlp.export(m, calib=xtr, out=None).notes)


def test_a_two_output_regressor_is_verified_on_r2_and_error_per_output(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = np.stack([2 * x[:, 0] + np.sin(x[:, 1]), x[:, 2] * x[:, 3]], 1)
    y += rng.normal(size=y.shape) * 0.5
    torch.manual_seed(0)
    m = _fit(nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2)), x[:400], y[:400],
             steps=300, regression=True)
    q = micromlp.export(m, calib=x[:400], out=tmp_path)
    rep = q.verify(x[400:], y[400:], vms="cpython,unix")
    assert rep.task == "regression" and rep.ok, micromlp.format_report(rep)
    with torch.no_grad():
        yf = m(torch.tensor(x[400:], dtype=torch.float32)).double().numpy()
    r2 = np.mean([1 - ((y[400:, j] - yf[:, j]) ** 2).sum()
                  / ((y[400:, j] - y[400:, j].mean()) ** 2).sum() for j in range(2)])
    assert rep.float_r2 == pytest.approx(r2) and abs(rep.fixed_r2 - r2) < 0.01
    assert rep.top1_agreement is None and rep.certified is None and rep.float_accuracy is None
    assert [o["output"] for o in rep.outputs] == [0, 1]
    assert all(0 < o["mean_error"] < 0.01 for o in rep.outputs)
    text = micromlp.format_report(rep)
    assert "R² (regression, mean over 2 outputs): float (PyTorch)" in text and "result: OK" in text
    # the CLI: a state dict, two target columns in the .npz, JSON like classification's
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    np.savez(tmp_path / "d.npz", x_test=x[400:], y_test=y[400:])
    p = subprocess.run([sys.executable, "-m", "micromlp.host.cli", "verify",
                        str(tmp_path / "model.mlp"), "--float", str(tmp_path / "sd.pt"),
                        "--arch", "5,32,2", "--data", str(tmp_path / "d.npz"), "--vm",
                        "cpython", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert j["ok"] and j["task"] == "regression" and len(j["outputs"]) == 2
    assert {"bit_exact_all", "within_bound", "max_abs_error", "failures"} <= set(j)
    # against a float model whose second output is off by 5 % of its span: that output
    # fails, and a float model with other outputs is named
    import copy

    drift = copy.deepcopy(m)
    with torch.no_grad():
        drift[2].bias[1] += 0.05 * rep.outputs[1]["span"]
    bad = q.verify(x[400:], y[400:], vms="cpython", float_model=drift)
    assert [f for f in bad.failures if f.startswith("output 1: mean |fixed - float| is")]
    assert not [f for f in bad.failures if f.startswith("output 0")]
    with pytest.raises(micromlp.ExportError, match="gives 32 outputs, .*model.mlp 2"):
        q.verify(x[400:], y[400:], vms="cpython", float_model=m[:1])


def test_a_classifier_with_integer_labels_is_still_a_classification(digits_data):
    xtr, ytr, xte, yte = digits_data
    q = micromlp.export(_fit(_mlp(), xtr, ytr), calib=xtr, out=None)
    rep = q.verify(xte, yte.astype(np.float64), vms="cpython")
    assert rep.task == "classification" and rep.top1_agreement is not None
    assert q.verify(xte, None, vms="cpython", task="regression").task == "regression"
    with pytest.raises(micromlp.ExportError, match="the targets have 1 columns, the model 10"):
        q.verify(xte, yte, vms="cpython", task="regression")


def test_image_shaped_data_for_a_flatten_model(digits_data, tmp_path):
    xtr, ytr, xte, yte = digits_data
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(torch.tensor(xtr.reshape(-1, 8, 8), dtype=torch.float32)),
                                    torch.tensor(ytr)).backward()
        opt.step()
    m.eval()
    q = micromlp.export(m, calib=xtr.reshape(-1, 8, 8), out=tmp_path)
    assert "calibration data: samples of shape (8, 8) taken as rows of 64 values " \
        "(flattened, as nn.Flatten does)" in q.notes
    rep = q.verify(xte.reshape(-1, 8, 8), yte, vms="cpython")
    assert rep.ok and rep.top1_agreement == 1.0
    assert any("(8, 8) taken as rows of 64" in n for n in rep.notes)
    assert (q.run(xte.reshape(-1, 8, 8)).ints == q.run(xte).ints).all()
    with pytest.raises(micromlp.ExportError, match=r"samples of shape \(7, 7\) have 49 "
                       r"values, the model takes 64"):
        q.verify(xte[:, :49].reshape(-1, 7, 7), yte)


def test_a_state_dict_that_does_not_fit_says_which_keys_and_shapes(tmp_path):
    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "class Backbone(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n")
    torch.save(_mlp().state_dict(), tmp_path / "sd.pt")  # 64-24-10
    sd = _mlp().state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["2.bias"]
    torch.save(sd, tmp_path / "sd2.pt")
    with pytest.raises(micromlp.ExportError) as e:
        micromlp.export(tmp_path / "sd.pt", calib=np.zeros((4, 64)), out=None,
                        module=f"{tmp_path / 'net.py'}:Backbone")
    assert str(e.value) == (f"{tmp_path / 'sd.pt'}: does not fit Backbone: shape mismatch: "
                            f"0.weight is (24, 64) in the file, (16, 64) in the model, 0.bias "
                            f"is (24,) in the file, (16,) in the model, 2.weight is (10, 24) "
                            f"in the file, (10, 16) in the model")
    with pytest.raises(micromlp.ExportError, match=r"missing keys 2.bias; unexpected keys "
                       r"extra.weight; shape mismatch: 0.weight is \(24, 64\)"):
        micromlp.export(tmp_path / "sd2.pt", calib=np.zeros((4, 64)), out=None,
                        module=f"{tmp_path / 'net.py'}:Backbone")


def test_a_csv_with_a_pandas_index_is_named_and_run_takes_a_label_column(digits_data,
                                                                          tmp_path, capsys):
    xtr, ytr, xte, yte = digits_data
    q = micromlp.export(_fit(_mlp(), xtr, ytr), calib=xtr, out=tmp_path)
    rows = ["idx," + ",".join(f"p{i}" for i in range(64)) + ",label"]
    rows += [f"{i}," + ",".join(f"{v:g}" for v in r) + f",{c}"
             for i, (r, c) in enumerate(zip(xte[:20], yte[:20], strict=True))]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    mlp = str(tmp_path / "model.mlp")
    assert cli(["verify", mlp, "--data", str(tmp_path / "d.csv"), "--label-column", "label",
                "--vm", "cpython"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"micromlp: {tmp_path / 'd.csv'}: rows have 65 values, the model "
                          f"takes 64; its first column counts 0, 1, 2, ...: a pandas index? "
                          f"(DataFrame.to_csv(index=False) leaves it out)"), err
    (tmp_path / "e.csv").write_text("\n".join(",".join(r.split(",")[1:]) for r in rows) + "\n")
    assert cli(["run", mlp, "--input", str(tmp_path / "e.csv"), "--json"]) == 2
    assert "rows have 65 values, the model takes 64; one too many: if a column is the " \
        "label, name it with --label-column" in capsys.readouterr().err
    assert cli(["run", mlp, "--input", str(tmp_path / "e.csv"), "--label-column", "label",
                "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predicted"] == q.run(xte[:20]).predicted.tolist()


def test_the_api_and_cli_surface():
    import inspect
    import pydoc

    from micromlp.host.cli import build_parser

    assert "calib=None" in pydoc.render_doc(micromlp.export)
    assert list(inspect.signature(micromlp.export).parameters)[:3] == ["model", "calib", "out"]
    assert issubclass(micromlp.ExportError, ValueError)
    from micromlp.export import modelfile  # the exporter package is still importable

    assert modelfile.load
    helptext = build_parser().format_help()
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert f"\n  {name} " in helptext, name
    with pytest.raises(micromlp.ExportError, match=r"Softmax/LogSoftmax/Sigmoid"):
        micromlp.export(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)),
                        calib=np.zeros((2, 3)), out=None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split(") ")[1][0] != "Z"


def test_sigterm_on_an_emulated_board_cleans_up(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "micromlp.host.cli", "board", "--emulate",
                          "serial"], stdout=subprocess.PIPE, text=True)
    try:
        port = next(line.split()[1] for line in p.stdout if line.startswith("PORT "))
        folder = os.path.dirname(port)
        assert os.path.isdir(folder)
        children = [int(c) for c in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()]
        grandchildren = [int(c) for pid in children for c in
                         open(f"/proc/{pid}/task/{pid}/children").read().split()]
        assert children and grandchildren  # socat, and micropython under it
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 128 + signal.SIGTERM
        deadline = time.time() + 10
        while time.time() < deadline and any(map(_alive, children + grandchildren)):
            time.sleep(0.1)
        assert not any(map(_alive, children + grandchildren))
        assert not os.path.exists(folder)
    finally:
        p.kill()
