"""A user's own model, in every form it is commonly held, gets in: bit-exact on the
VMs and agreeing with its own float runtime (PyTorch, onnxruntime, scikit-learn)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import micromlp
import numpy as np
import onnx
import pytest
import torch
from micromlp.export.layers import ExportError
from micromlp.host.cli import main as cli
from micromlp.host.datasets import load
from onnx import TensorProto, helper, numpy_helper
from torch import nn

VMS = ("unix", "wasm")

NET_SOURCE = '''
import torch
from torch import nn


class UserNet(nn.Module):
    """Normalization inside the model, as users write it."""

    def __init__(self, n_in=64, hidden=24, n_out=10):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x):
        x = (x - self.mean) / self.std
        return self.fc2(torch.relu(self.fc1(x)))
'''


@pytest.fixture(scope="module")
def data():
    """Digits (raw pixels 0..16), split 80/20: the held-out data for every form."""
    d = load("digits")
    idx = np.random.default_rng(0).permutation(len(d.x))
    tr, te = idx[:1437], idx[1437:]
    return d.x[tr], d.y[tr], d.x[te], d.y[te]


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "usernet.py"
    path.write_text(NET_SOURCE)
    return path


@pytest.fixture(scope="module")
def user_net(data, net_file):
    """A trained UserNet (the class from the user's file)."""
    from micromlp.export.sources import _import_file

    cls = _import_file(str(net_file)).UserNet
    x, y, _, _ = data
    torch.manual_seed(0)
    net = cls(hidden=24)
    net.mean[:] = torch.tensor(x.mean(0))
    net.std[:] = torch.tensor(x.std(0) + 1.0)
    _train(net, x, y)
    return net.eval()


def _train(net, x, y, steps=300):
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()


def _torch_classes(net, x):
    with torch.no_grad():
        return net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()


def _check(q, x_test, y_test, own_classes):
    """Bit-exact on every VM, and >= 99 % top-1 agreement with the model's own runtime."""
    rep = q.verify(x_test, y_test, vms=VMS)
    assert rep.bit_exact, [(r.vm, r.error, r.mismatched_samples) for r in rep.vms]
    assert [r.vm for r in rep.vms] == list(VMS)
    pred = q.run(x_test).predicted
    agree = float((pred == own_classes).mean())
    assert agree >= 0.99, agree
    assert rep.top1_agreement is not None and rep.top1_agreement >= 0.99
    assert rep.ok, rep.failures
    return rep


def test_live_module_with_in_model_normalization(data, user_net, tmp_path):
    x, _, xt, yt = data
    q = micromlp.export(user_net, calib=x, out=tmp_path)
    assert any("folded the input preprocessing (sub [64 values], div [64 values])" in n
               for n in q.notes)
    assert "64->24" in str(q)
    assert (tmp_path / "model.mlp").exists()
    _check(q, xt, yt, _torch_classes(user_net, xt))


def test_state_dict_with_the_class_from_the_users_file(data, user_net, net_file, tmp_path,
                                                        capsys):
    x, _, xt, yt = data
    torch.save(user_net.state_dict(), tmp_path / "model.pth")
    np.savez(tmp_path / "data.npz", X_train=x, X_test=xt, y_test=yt)
    # without the class: a one-line error that says what to pass
    assert cli(["export", str(tmp_path / "model.pth"), "--calib", str(tmp_path / "data.npz"),
                "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "a state dict holds weights, not the architecture" in err and "--module" in err
    assert len(err.strip().splitlines()) == 1
    assert cli(["export", str(tmp_path / "model.pth"), "--calib", str(tmp_path / "data.npz"),
                "--module", f"{net_file}:UserNet", "--module-args", '{"hidden": 24}',
                "-o", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert cli(["verify", str(tmp_path / "o" / "model.mlp"), "--data",
                str(tmp_path / "data.npz"), "--float", str(tmp_path / "model.pth"),
                "--vm", "unix", "--json"]) == 2  # the state dict alone: no class again
    capsys.readouterr()
    q = micromlp.load(tmp_path / "o" / "model.mlp")
    q.source = micromlp.export(user_net, calib=x, out=None).source
    _check(q, xt, yt, _torch_classes(user_net, xt))


def _normalized_seq(x, y, path, seed):
    """A plain Sequential trained on normalized inputs, its state dict saved at path;
    returns it with the normalization (mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1
    torch.manual_seed(seed)
    seq = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    _train(seq, (x - mean) / std, y)
    torch.save(seq.eval().state_dict(), path)
    return seq, mean, std


def test_state_dict_of_a_plain_sequential_with_arch(data, tmp_path):
    x, y, xt, yt = data
    seq, mean, std = _normalized_seq(x, y, tmp_path / "seq.pth", seed=1)
    q = micromlp.export(tmp_path / "seq.pth", calib=x, out=None, arch="64,16,10",
                        input_mean=mean, input_std=std)
    _check(q, xt, yt, _torch_classes(seq, (xt - mean) / std))
    with pytest.raises(ExportError, match=r"seq.pth: 0.weight has shape \(16, 64\), --arch "
                                          r"needs \(20, 64\)"):
        micromlp.export(tmp_path / "seq.pth", calib=x, out=None, arch="64,20,10")


def test_cli_verify_and_report_take_the_float_models_normalization(data, tmp_path, capsys):
    # a state dict trained on normalized inputs, the normalization given on the command
    # line: export folds it in, and verify/report must feed the float model the same
    x, y, xt, yt = data
    _, mean, std = _normalized_seq(x, y, tmp_path / "seq.pth", seed=2)
    np.savez(tmp_path / "d.npz", X_train=x, X_test=xt, y_test=yt)
    norm = ["--input-mean=" + ",".join(f"{v:.17g}" for v in mean),
            "--input-std=" + ",".join(f"{v:.17g}" for v in std)]
    src = [str(tmp_path / "seq.pth"), "--arch", "64,16,10"]
    assert cli(["export", *src, "--calib", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o"),
                *norm]) == 0
    mlp, d = str(tmp_path / "o" / "model.mlp"), str(tmp_path / "d.npz")
    capsys.readouterr()
    assert cli(["verify", mlp, "--data", d, "--float", *src, *norm, "--vm", "cpython"]) == 0
    assert "result: OK" in capsys.readouterr().out
    # the float model fed raw inputs is another function: refused, with the likely cause
    assert cli(["verify", mlp, "--data", d, "--float", *src, "--vm", "cpython"]) == 1
    out = capsys.readouterr().out
    assert "NOT within the exporter's proven bound" in out and "--input-mean/--input-std" in out
    assert cli(["verify", mlp, "--data", d, "--float", *src, norm[0], "--vm", "cpython"]) == 2
    assert "--input-mean and --input-std go together" in capsys.readouterr().err
    assert cli(["report", mlp, "--data", d, "--float", *src, *norm, "--vm", "cpython", "-o",
                str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")


def test_pickled_module_whose_class_lives_in_the_users_script(data, tmp_path, capsys):
    x, y, xt, yt = data
    script = tmp_path / "train_gesture.py"
    script.write_text(NET_SOURCE.replace("UserNet", "GestureNet") + textwrap.dedent(f"""
        if __name__ == "__main__":
            import numpy as np
            torch.manual_seed(0)
            d = np.load({str(tmp_path / 'd.npz')!r})
            net = GestureNet()
            net.mean[:] = torch.tensor(d["x"].mean(0))
            net.std[:] = torch.tensor(d["x"].std(0) + 1)
            opt = torch.optim.Adam(net.parameters(), 1e-2)
            for _ in range(300):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(
                    net(torch.tensor(d["x"], dtype=torch.float32)),
                    torch.tensor(d["y"])).backward()
                opt.step()
            torch.save(net.eval(), {str(tmp_path / 'm.pt')!r})
        """))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    args = ["export", str(tmp_path / "m.pt"), "--calib", str(tmp_path / "d.npz"), "-o",
            str(tmp_path / "o"), "--trust-pickle"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "class cannot be found" in err and "--module FILE.py" in err
    assert len(err.strip().splitlines()) == 1
    assert cli(args + ["--module", str(script)]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from micromlp.export.sources import _import_file

        sys.modules["__main__"].GestureNet = _import_file(str(script)).GestureNet
        try:
            net = torch.load(tmp_path / "m.pt", weights_only=False)
        finally:
            del sys.modules["__main__"].GestureNet
    q = micromlp.load(tmp_path / "o" / "model.mlp")
    q.source = micromlp.export(net, calib=x, out=None).source
    _check(q, xt, yt, _torch_classes(net, xt))


def test_torch_export_pt2(data, user_net, tmp_path):
    x, _, xt, yt = data
    ep = torch.export.export(user_net, (torch.zeros(1, 64),))
    torch.export.save(ep, tmp_path / "m.pt2")
    q = micromlp.export(tmp_path / "m.pt2", calib=x, out=tmp_path / "o")
    assert q.source.kind == "torch.export"
    _check(q, xt, yt, _torch_classes(user_net, xt))


def test_torchscript_of_a_custom_chain_module(data, user_net, tmp_path):
    x, _, xt, yt = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(user_net).save(str(tmp_path / "s.pt"))
    q = micromlp.export(tmp_path / "s.pt", calib=x, out=None)
    assert q.source.kind == "torchscript"
    _check(q, xt, yt, _torch_classes(user_net, xt))


def test_pytorch_default_onnx_exporter(data, user_net, tmp_path):
    x, _, xt, yt = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(user_net, (torch.zeros(1, 64),), dynamo=True, verbose=False)
    prog.save(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert ops[:2] == ["Sub", "Div"]  # the normalization, folded by the exporter
    q = micromlp.export(tmp_path / "m.onnx", calib=x, out=None)
    assert q.source.runtime_name == "onnxruntime"
    _check(q, xt, yt, _torch_classes(user_net, xt))


def _skl2onnx(est, x):
    from skl2onnx import to_onnx

    opts = {"zipmap": False} if hasattr(est, "predict_proba") else None
    return to_onnx(est, x[:1].astype(np.float32), options=opts)


@pytest.mark.parametrize("classes", [10, 2])
def test_sklearn_classifier_directly_and_through_skl2onnx(data, classes):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, xt, yt = data
    if classes == 2:
        y, yt = (y > 4).astype(int), (yt > 4).astype(int)
    est = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=600, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x, y)
    own = est.predict(xt)
    q = micromlp.export(est, calib=x, out=None)
    assert q.model.n_outputs == classes
    _check(q, xt, yt, own)
    qo = micromlp.export(_skl2onnx(est, x), calib=x, out=None)
    assert any("dropped" in n for n in qo.notes)
    _check(qo, xt, yt, own)
    assert np.array_equal(q.model.layers[-1].w, qo.model.layers[-1].w) or classes == 2 or (
        np.abs(q.run(xt).floats - qo.run(xt).floats).max() < 0.1)
    if classes == 2:  # one logit z became [-z/2, z/2]: softmax is sklearn's probability
        f = q.source.float_outputs(xt)
        p = np.exp(f) / np.exp(f).sum(1, keepdims=True)
        assert np.allclose(p, est.predict_proba(xt), atol=1e-9)


def test_sklearn_regressor(data):
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    x, _, xt, _ = data
    target = x[:, 20] * 0.3 + x[:, 36] / 5 - x[:, 43] * x[:, 43] / 40
    sc = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPRegressor(hidden_layer_sizes=(16,), max_iter=2000, random_state=0)
        est.fit(sc.transform(x), target)
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("scale", sc), ("mlp", est)])
    q = micromlp.export(pipe, calib=x, out=None)
    rep = q.verify(xt, vms=VMS)
    assert rep.bit_exact and rep.ok
    want = pipe.predict(xt)
    span = want.max() - want.min()
    err = np.abs(q.run(xt).floats[:, 0] - want)
    # int8 on raw pixels with the scaler folded in (rare pixels get huge weights)
    assert err.mean() < 0.025 * span and err.max() < 0.1 * span, (err.mean(), err.max(), span)
    qo = micromlp.export(_skl2onnx(pipe, x), calib=x, out=None)
    err = np.abs(qo.run(xt).floats[:, 0] - want)
    assert err.mean() < 0.025 * span and err.max() < 0.1 * span
    q16 = micromlp.export(pipe, calib=x, out=None, weight_bits=16, act_bits=16)
    assert np.abs(q16.run(xt).floats[:, 0] - want).max() < 0.005 * span


def test_sklearn_refusals_name_the_problem(data):
    from sklearn.neural_network import MLPClassifier

    x, y, _, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPClassifier((4,), activation="tanh", max_iter=5).fit(x, y)
    with pytest.raises(ExportError, match="activation 'tanh' is not supported"):
        micromlp.export(est, calib=x, out=None)
    two_labels = np.stack([y > 4, y % 2 == 0], axis=1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPClassifier((4,), max_iter=5).fit(x, two_labels)
    with pytest.raises(ExportError, match="multi-label output is not supported"):
        micromlp.export(est, calib=x, out=None)


def test_digits_scaled_to_unit_range_loses_no_accuracy():
    """Digits / 16 has always-zero pixels: they must not set the weight grid."""
    d = load("digits")
    x = d.x / 16.0
    idx = np.random.default_rng(0).permutation(len(x))
    tr, te = idx[:1400], idx[1400:]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    _train(net, x[tr], d.y[tr], steps=300)
    net.eval()
    q = micromlp.export(net, calib=x[tr], out=None)
    assert any("constant in the calibration data" in n for n in q.notes)
    rep = q.verify(x[te], d.y[te], vms=())
    assert rep.fixed_accuracy >= rep.float_accuracy - 0.005, (rep.fixed_accuracy,
                                                              rep.float_accuracy)
    assert rep.ok


def test_a_constant_input_feature_keeps_the_other_weights():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[1.0, 0.01, -0.02, 0.03], [1.0, -0.01, 0.02, 0.01]])
        lin.bias.zero_()
    x = np.random.default_rng(0).random((300, 4))
    x[:, 0] = 0.0
    q = micromlp.export(lin, calib=x, out=None)
    with torch.no_grad():
        want = lin(torch.tensor(x, dtype=torch.float32)).numpy()
    err = np.abs(q.run(x).floats - want).max()
    assert err <= 0.02 * (want.max() - want.min()), err


def test_verify_fails_when_the_declared_range_ruins_accuracy(tmp_path, capsys):
    """Float inputs exported as raw 16-bit integers: export warns, verify fails and says
    why (fixed-point accuracy far below float)."""
    d = load("digits")
    x = d.x / 16.0
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    _train(net, x[:1400], d.y[:1400], steps=200)
    torch.save(net.eval().state_dict(), tmp_path / "m.pth")
    np.savez(tmp_path / "d.npz", X_train=x[:1400], X_test=x[1400:], y_test=d.y[1400:])
    assert cli(["export", str(tmp_path / "m.pth"), "--arch", "64,16,10", "--calib",
                str(tmp_path / "d.npz"), "--input-range", "-32768,32767", "-o",
                str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "fractional values in the calibration data" in out
    verify = ["verify", str(tmp_path / "o" / "model.mlp"), "--data", str(tmp_path / "d.npz"),
              "--float", str(tmp_path / "m.pth"), "--vm", "cpython"]
    assert cli(verify) == 2  # a state dict needs its architecture here too
    assert "--arch" in capsys.readouterr().err
    assert cli(verify + ["--arch", "64,16,10"]) == 1
    out = capsys.readouterr().out
    assert "cpython   vs reference: 100.00 % identical" in out
    assert "result: FAILED: fixed-point accuracy" in out and "points below float" in out


def _graph(nodes, n_in=2, n_out=2, inits=(), opset=13):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n_out])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"), *inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _t(name, v):
    return numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
      helper.make_node("Softmax", ["h"], ["y"], name="sm", axis=0)], [],
     r"ONNX node 1 'sm' \(Softmax\): softmax along axis 0 mixes the samples"),
    ([helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
      helper.make_node("ArgMax", ["h"], ["y"], name="am")], [],
     r"ONNX node 1 'am' \(ArgMax\): argmax along axis 0"),
    ([helper.make_node("Flatten", ["x"], ["f"], name="fl", axis=0),
      helper.make_node("Gemm", ["f", "W"], ["y"], name="fc")], [],
     r"ONNX node 0 'fl' \(Flatten\): Flatten with axis 0"),
    ([helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
      helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["y"], name="bn",
                       training_mode=1)],
     [_t("g", [1, 1]), _t("b", [0, 0]), _t("m", [0, 0]), _t("v", [1, 1])],
     r"ONNX node 1 'bn' \(BatchNormalization\): BatchNorm in training mode"),
    ([helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
      helper.make_node("Dropout", ["h", "r", "t"], ["y"], name="dr")],
     [_t("r", 0.5), numpy_helper.from_array(np.array(True), "t")],
     r"ONNX node 1 'dr' \(Dropout\): Dropout with training_mode"),
    ([helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
      helper.make_node("Clip", ["h", "lo", "hi"], ["y"], name="cl")],
     [_t("lo", 2.0), _t("hi", 1.0)], r"ONNX node 1 'cl' \(Clip\): Clip with min 2.0 > max 1.0"),
])
def test_onnx_refusals_are_exact(nodes, inits, match):
    with pytest.raises(ExportError, match=match) as e:
        micromlp.export(_graph(nodes, inits=inits), calib=np.zeros((4, 2)), out=None)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("inputs, lo, hi", [(["h", "", "hi"], -np.inf, 1.0), (["h"], None, None)])
def test_onnx_clip_with_one_or_no_bound(inputs, lo, hi):
    import onnxruntime as ort

    nodes = [helper.make_node("Gemm", ["x", "W", "c"], ["h"], name="fc"),
             helper.make_node("Clip", inputs, ["y"], name="cl")]
    m = _graph(nodes, inits=[_t("hi", 1.0), _t("c", [0.5, -0.5])])
    x = np.random.default_rng(0).normal(size=(200, 2))
    q = micromlp.export(m, calib=x, out=None)
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x.astype(np.float32)})[0]
    got = q.run(x).floats
    assert np.abs(got - want).max() <= q.error_bound
    assert (got.max() <= 1.0 + 1e-3) == (hi is not None)


def test_torch_refusals_name_the_layer():
    with pytest.raises(ExportError, match=r"layer 2 '2' \(Softmax\): softmax along axis 0"):
        micromlp.export(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Softmax(dim=0)),
                        calib=np.zeros((3, 2)), out=None)
    with pytest.raises(ExportError, match=r"layer 2 '2' \(Linear\): comes after layer 1 '1' "
                                          r"\(Softmax\), which is supported only at the end"):
        micromlp.export(nn.Sequential(nn.Linear(2, 2), nn.Softmax(1), nn.Linear(2, 2)),
                        calib=np.zeros((3, 2)), out=None)
    with pytest.raises(ExportError, match=r"Flatten\(start_dim=0\)"):
        micromlp.export(nn.Sequential(nn.Flatten(0), nn.Linear(2, 2)), calib=np.zeros((3, 2)),
                        out=None)

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.b(self.a(x)) + x

    with pytest.raises(ExportError, match=r"node 'add' .*not branches or skip connections"):
        micromlp.export(Skip(), calib=np.zeros((3, 2)), out=None)


def test_data_files_and_cli_conveniences(data, user_net, tmp_path, capsys):
    x, _, xt, yt = data
    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("micromlp ")
    ep = torch.export.export(user_net, (torch.zeros(1, 64),))
    torch.export.save(ep, tmp_path / "m.pt2")
    header = ",".join([f"f{i}" for i in range(64)] + ["label"])
    np.savetxt(tmp_path / "test.csv", np.hstack([xt, yt[:, None]]), delimiter=",",
               header=header, comments="")
    np.savetxt(tmp_path / "calib.csv", x, delimiter=",")
    # negative option values without '=', export --json
    mean = ",".join(["-0.5"] * 64)
    assert cli(["export", str(tmp_path / "m.pt2"), "--calib", str(tmp_path / "calib.csv"),
                "-o", str(tmp_path / "o"), "--input-mean", mean, "--input-std", "1",
                "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["n_inputs"] == 64 and out["layers"][0]["shape"] == "64->24"
    assert cli(["export", str(tmp_path / "m.pt2"), "--calib", str(tmp_path / "calib.csv"),
                "-o", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert cli(["verify", str(tmp_path / "o" / "model.mlp"), "--data",
                str(tmp_path / "test.csv"), "--label-column", "label", "--float",
                str(tmp_path / "m.pt2"), "--vm", "cpython", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["float_model"].startswith("PyTorch")
    assert len(rep["confusion"]) == 10 and sum(map(sum, rep["confusion"])) == len(xt)
    assert set(rep["per_class"]) == {str(c) for c in range(10)}
    assert cli(["run", str(tmp_path / "o" / "model.mlp"), "--input",
                str(tmp_path / "calib.csv"), "--json"]) == 0
    capsys.readouterr()


def test_bias_correction_takes_back_the_mean_error_of_weight_rounding():
    """Non-centred inputs (pixels 0..16): weight rounding shifts outputs by a mean amount,
    which the corrected bias removes."""
    from helpers import calib_data, make_mlp
    from micromlp.export.exporter import quantize_layers
    from micromlp.export.quantize import QuantOptions
    from micromlp.export.torch_import import layers_from_module
    from micromlp.host import reference

    module = make_mlp([64, 32, 10], seed=3)
    x = calib_data(64, 2000, kind="int")
    with torch.no_grad():
        want = module(torch.tensor(x, dtype=torch.float32)).numpy()
    bias = []
    for corrected in (False, True):
        q = quantize_layers(layers_from_module(module), x, QuantOptions(bias_correction=corrected))
        got = q.dequantize_output(reference.run(q, q.quantize_input(x)).out)
        bias.append(np.abs((got - want).mean(axis=0)).mean())
    assert bias[1] < 0.5 * bias[0], bias


def test_inputs_a_little_past_the_calibration_range_do_not_clip():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[1.0, 1.0]])
        lin.bias.zero_()
    x = 0.2 + 0.8 * np.random.default_rng(0).random((500, 2))  # [0.2, 1]
    q = micromlp.export(lin, calib=x, out=None)
    past = np.array([[1.04, 0.5], [0.16, 0.5]])  # 5 % of the span past each end
    err = np.abs(q.run(past).floats[:, 0] - past.sum(axis=1))
    assert err.max() < 0.01, err
