"""The micromlp command as a user runs it: exit codes, output, error messages."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    exe = shutil.which("micromlp")
    assert exe, "the micromlp console script is not installed (pip install -e .)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    d = tmp_path_factory.mktemp("iris")
    r = cli(
        "train",
        "--dataset",
        "iris",
        "--hidden",
        "8",
        "--epochs",
        "40",
        "--no-bias",
        "-o",
        str(d / "iris.pt"),
    )
    assert r.returncode == 0, r.stderr
    assert "float accuracy" in r.stdout
    r = cli("export", str(d / "iris.pt"), "-o", str(d / "out"))
    assert r.returncode == 0, r.stderr
    return d


def test_export_prints_layer_table_with_bias_columns(iris):
    r = cli("inspect", str(iris / "out" / "model.mlp"), "--json")
    info = json.loads(r.stdout)
    assert [row["shape"] for row in info["layers"]] == ["4->8", "8->3"]
    # --no-bias: the second layer has none; the first gains one only from folded inputs
    assert info["layers"][1]["bias"] == "no"
    assert info["layers"][1]["params"] == info["layers"][1]["params_no_bias"] == 24
    assert info["layers"][0]["bias"].startswith("yes (folded")
    text = cli("inspect", str(iris / "out" / "model.mlp")).stdout
    assert "CRC ok" in text and "w/o bias" in text
    # the input mapping a board needs for floats: scale, zero point, real range covered
    from micromlp.export import modelfile

    m = modelfile.load(iris / "out" / "model.mlp")
    assert [r["zero"] for r in info["inputs"]] == m.in_zero.tolist()
    assert [r["scale"] for r in info["inputs"]] == m.in_scale.tolist()
    lo, hi = info["inputs"][0]["real_range"]
    assert np.isclose(lo, (m.in_lo - m.in_zero[0]) * m.in_scale[0])
    assert f"clamp(floor(x / scale + 1/2) + zero, {m.in_lo}, {m.in_hi})" in text


def test_verify_json_and_exit_status(iris):
    r = cli(
        "verify",
        str(iris / "out" / "model.mlp"),
        "--torch",
        str(iris / "iris.pt"),
        "--data",
        str(iris / "iris.npz"),
        "--vm",
        "unix,wasm",
        "--json",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and [v["vm"] for v in rep["vms"]] == ["unix", "wasm"]
    assert all(v["bit_exact"] == 1.0 for v in rep["vms"])
    assert rep["samples"] == 30


def test_verify_fails_with_nonzero_status_on_a_mismatch(iris, tmp_path):
    # a model whose stored numbers differ from the checkpoint: a different training seed
    r = cli(
        "train",
        "--dataset",
        "iris",
        "--hidden",
        "8",
        "--epochs",
        "5",
        "--seed",
        "3",
        "-o",
        str(tmp_path / "other.pt"),
    )
    assert r.returncode == 0
    r = cli(
        "verify",
        str(iris / "out" / "model.mlp"),
        "--torch",
        str(tmp_path / "other.pt"),
        "--data",
        str(iris / "iris.npz"),
        "--vm",
        "cpython",
    )
    assert r.returncode == 1
    assert "NOT within" in r.stdout and "result: FAILED" in r.stdout


@pytest.mark.parametrize("vm", ["reference", "cpython", "unix", "wasm"])
def test_run_on_each_vm_gives_the_same_integers(iris, tmp_path, vm):
    x = np.load(iris / "iris.npz")["x_test"][:5]
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    r = cli(
        "run",
        str(iris / "out" / "model.mlp"),
        "--input",
        str(tmp_path / "x.csv"),
        "--vm",
        vm,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    ref = json.loads(
        cli(
            "run", str(iris / "out" / "model.mlp"), "--input", str(tmp_path / "x.csv"), "--json"
        ).stdout
    )
    assert got["outputs"] == ref["outputs"] and len(got["outputs"]) == 5
    assert got["predicted"] == [int(np.argmax(o)) for o in got["outputs"]]


def test_errors_are_one_line_with_the_file_and_problem(iris, tmp_path):
    bad = tmp_path / "bad.mlp"
    bad.write_bytes(b"MMLQ" + bytes(60))
    r = cli("inspect", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"micromlp: {bad}: offset 0: bad magic b'MMLQ', expected b'MMLP'"
    r = cli("run", str(iris / "out" / "model.mlp"), "--input", str(tmp_path / "none.csv"))
    assert r.returncode == 2 and "none.csv: data file not found" in r.stderr
    (tmp_path / "wide.csv").write_text("1,2,3\n")
    r = cli("run", str(iris / "out" / "model.mlp"), "--input", str(tmp_path / "wide.csv"))
    assert r.returncode == 2 and "rows have 3 values, the model takes 4" in r.stderr
    r = cli("train", "--dataset", "mnist")
    assert r.returncode == 2 and "invalid choice: 'mnist'" in r.stderr
    assert "Traceback" not in r.stderr


def test_export_onnx_with_input_normalization_on_the_cli(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    torch.onnx.export(module, (torch.zeros(1, 3),), str(tmp_path / "m.onnx"),
                      input_names=["x"], output_names=["y"], dynamo=False)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(200, 3)) * [10, 1, 0.1] + [100, 0, -5]  # raw sensor units
    np.savez(tmp_path / "m.npz", x_train=raw, x_test=raw[:20])
    r = cli("export", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"),
            "--input-mean", "100,0,-5", "--input-std", "10,1,0.1")
    assert r.returncode == 0, r.stderr
    assert "folded input mean" in r.stdout or "yes" in r.stdout
    r = cli("run", str(tmp_path / "out" / "model.mlp"), "--input", str(tmp_path / "m.npz"),
            "--json")
    got = np.array(json.loads(r.stdout)["dequantized"])
    with torch.no_grad():
        want = module(torch.tensor((raw[:20] - [100, 0, -5]) / [10, 1, 0.1],
                                   dtype=torch.float32)).numpy()
    info = json.loads(cli("inspect", str(tmp_path / "out" / "model.mlp"), "--json").stdout)
    assert np.abs(got - want).max() <= info["error_bound"]
    r = cli("export", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o2"), "--input-mean", "1")
    assert r.returncode == 2 and "--input-mean and --input-std go together" in r.stderr


def test_raw_adc_integers_with_input_bits(tmp_path):
    # a 12-bit ADC: the board feeds raw counts 0..4095; normalization is folded in
    import torch
    from micromlp.export.torch_import import save_checkpoint
    from torch import nn

    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.1), nn.Linear(8, 2)).eval()
    mean, std = np.array([2048.0, 1000.0, 3000.0]), np.array([600.0, 300.0, 500.0])
    save_checkpoint(tmp_path / "adc.pt", module, mean, std, {})
    rng = np.random.default_rng(0)
    raw = np.clip(np.round(mean + std * rng.normal(size=(300, 3))), 0, 4095)
    np.savez(tmp_path / "adc.npz", x_train=raw, x_test=raw[:30])
    r = cli("export", str(tmp_path / "adc.pt"), "-o", str(tmp_path / "out"), "--input-bits", "12")
    assert r.returncode == 0, r.stderr
    assert "inputs: 3 ints in [0, 4095]" in r.stdout
    np.savetxt(tmp_path / "counts.csv", raw[:30], delimiter=",", fmt="%d")
    r = cli("run", str(tmp_path / "out" / "model.mlp"), "--input", str(tmp_path / "counts.csv"),
            "--int", "--vm", "unix", "--json")
    got = np.array(json.loads(r.stdout)["dequantized"])
    with torch.no_grad():
        want = module(torch.tensor((raw[:30] - mean) / std, dtype=torch.float32)).numpy()
    info = json.loads(cli("inspect", str(tmp_path / "out" / "model.mlp"), "--json").stdout)
    assert info["input_range"] == [0, 4095]
    assert np.abs(got - want).max() <= info["error_bound"]
    r = cli("export", str(tmp_path / "adc.pt"), "-o", str(tmp_path / "o2"), "--input-range", "5")
    assert r.returncode == 2 and "--input-range takes LO,HI integers" in r.stderr


def test_bad_inputs_are_one_line_errors_never_tracebacks(iris, tmp_path):
    """NaN/inf by row and column, folders, corrupt files, malformed checkpoints, bad
    option values: exit status 2 and one line, never a traceback."""
    import torch

    mlp = str(iris / "out" / "model.mlp")
    (tmp_path / "nan.csv").write_text("1,2,3,4\n5,nan,7,8\n")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    torch.save({"format": "micromlp-checkpoint-1", "state_dict": {}}, tmp_path / "noarch.pt")
    torch.save({"format": "micromlp-checkpoint-1",
                "arch": [{"type": "Linear", "in": 10**6, "out": 10**6, "bias": True}],
                "state_dict": {}}, tmp_path / "huge.pt")
    (tmp_path / "file").write_text("x")
    np.savez(tmp_path / "inf.npz", x_train=np.array([[1.0, np.inf, 0, 0]]))
    np.savez(tmp_path / "empty.npz", x_test=np.zeros((0, 4)), y_test=np.zeros(0))
    cases = [
        (("run", mlp, "--input", str(tmp_path / "nan.csv")), "row 1, column 1 is nan"),
        (("run", mlp, "--input", str(tmp_path)), "is a folder"),
        (("run", mlp, "--input", str(tmp_path / "bad.npz")), "cannot be read"),
        (("verify", mlp, "--data", str(tmp_path / "empty.npz"), "--vm", "cpython"),
         "no samples to verify on (0 rows)"),
        (("export", str(tmp_path / "noarch.pt"), "--calib", str(tmp_path / "inf.npz")),
         "field 'arch' is missing"),
        (("export", str(tmp_path / "huge.pt"), "--calib", str(tmp_path / "inf.npz")),
         "Linear(1000000, 1000000) but the state dict has 0.weight None"),
        (("export", str(iris / "iris.pt"), "--calib", str(tmp_path / "inf.npz")),
         "row 0, column 1 is inf"),
        (("export", str(iris / "iris.pt"), "-o", str(tmp_path / "file")), "is not a folder"),
        (("export", str(iris / "iris.pt"), "--input-bits", "0"), "input bits must be 1..29"),
        (("export", str(iris / "iris.pt"), "--input-range", "5,-3"), "LO must be below HI"),
    ]
    for args, want in cases:
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert want in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "big.csv").write_text("1e20,0,0,0\n")
    r = cli("run", mlp, "--input", str(tmp_path / "big.csv"), "--int")
    assert r.returncode == 2 and "whole numbers below 2**30" in r.stderr
    # a closed pipe ends quietly
    p = subprocess.run(f"micromlp run {mlp} --input {tmp_path / 'big.csv'} --json | head -c 1",
                       shell=True, capture_output=True, text=True)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_bench_on_the_webassembly_port_alone(digits):
    # --vm picks the VMs: here only MicroPython's WebAssembly port (Node), against the
    # float baseline in the same process, allocation-free
    _, ex = digits
    r = cli("bench", str(ex.paths["mlp"]), "--vm", "webassembly", "--rounds", "1", "--json")
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)[0]["runs"]
    assert {x["vm"] for x in runs} == {"webassembly"} and len(runs) == 2
    assert all(x["alloc"] == 0 and x["heap_block"] is False and x["speedup"] > 1 for x in runs)
    r = cli("bench", str(ex.paths["mlp"]), "--vm", "esp32")
    assert r.returncode == 2 and "unknown VM 'esp32' for bench" in r.stderr
