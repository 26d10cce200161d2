"""deploy against emulated boards: the unix port behind a socat pty, and a BBC
micro:bit v1 (MicroPython 1.9.2, ~8 KB free heap) in QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from micromlp.export.exporter import export_checkpoint
from micromlp.host import deploy as dp
from micromlp.host.train import train


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    d = tmp_path_factory.mktemp("iris-deploy")
    tr = train("iris", [8], epochs=40, out=d / "iris.pt", progress=False)
    export_checkpoint(tr.model_path, d / "out")
    return d / "out"


@pytest.fixture
def socat_board(tmp_path):
    board = tmp_path / "board"
    board.mkdir()
    link = tmp_path / "ttyV0"
    proc = dp.start_socat_board(board, link)
    yield str(link), board
    proc.kill()
    proc.wait()


@pytest.fixture
def microbit():
    proc, port = dp.start_qemu_microbit()
    yield port
    proc.kill()
    proc.wait()


def cli(*args):
    return subprocess.run(
        [shutil.which("micromlp"), *args], capture_output=True, text=True, timeout=600
    )


def test_deploy_digits_to_a_serial_board(digits, socat_board):
    port, board = socat_board
    tr, ex = digits
    r = cli("deploy", str(ex.paths["mlp"].parent), "--port", port, "--resume", "--main", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["test"]["passed"] == rep["test"]["total"] == 3
    assert rep["board"]["viper"] and rep["plan"]["engine"] == "full"
    assert rep["plan"]["engine_format"] == "mpy" and not rep["plan"]["stream"]
    assert rep["test"]["alloc_per_inference"] == 0
    # the files landed where the board runs
    names = {p.name for p in board.iterdir()}
    assert {"micromlp.mpy", "micromlp_viper.py", "model.mlp", "main.py"} <= names
    assert not any(n.endswith(".part") for n in names)
    assert (board / "model.mlp").read_bytes() == ex.paths["mlp"].read_bytes()
    # and bench on the device reads the deployed model
    r = cli("bench", "--port", port, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["alloc_per_inference"] == 0 and res["us_per_inference"] > 0


def test_deploy_with_stream_and_py(digits, socat_board):
    port, board = socat_board
    _, ex = digits
    rep = dp.deploy(
        ex.paths["mlp"].parent, port, resume=True, fmt="py", stream=True, log=lambda m: None
    )
    assert rep.test.ok and rep.plan.stream and rep.plan.engine_format == "py"
    assert not (board / "micromlp.mpy").exists()  # a stale .mpy is removed, not shadowing


def test_deploy_iris_to_a_microbit_in_qemu(iris, microbit):
    rep = dp.deploy(iris, microbit, log=lambda m: None)
    assert rep.board.version == (1, 9, 2) and not rep.board.viper
    assert rep.board.free < 10_000
    assert rep.plan.engine == "tiny" and rep.plan.engine_format == "py"
    assert rep.test.ok and rep.test.total == 3
    assert rep.test.alloc_per_inference == 0


def test_digits_on_a_microbit_gives_the_documented_error(digits, microbit):
    # streamed, digits loads on the emulated micro:bit with ~2.9 KB to spare, too
    # little for the REPL to parse reliably; deploy refuses with the sizes
    _, ex = digits
    with pytest.raises(dp.DeployError) as e:
        dp.deploy(ex.paths["mlp"].parent, microbit, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("the board is too small for this model: it needs ~")
    assert "even streaming" in msg and "fewer or narrower layers" in msg


def test_model_too_big_for_a_microbit_is_refused_with_sizes(microbit, tmp_path):
    from micromlp.host.bench import synthetic_model

    big = synthetic_model([64, 256, 256, 10], tmp_path)
    with pytest.raises(dp.DeployError, match=r"too small for this model: it needs ~\d+ bytes"):
        dp.deploy(big, microbit, log=lambda m: None)


def test_clear_failures_without_a_board(tmp_path, digits):
    _, ex = digits
    r = cli("deploy", str(ex.paths["mlp"]), "--port", str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"micromlp: no board on {tmp_path / 'nothing'}")
    # a port with something on it that is not a MicroPython REPL
    link = tmp_path / "ttyDead"
    proc = subprocess.Popen(
        ["socat", f"PTY,link={link},raw,echo=0", "EXEC:sleep 60,pty,raw,echo=0"]
    )
    try:
        for _ in range(100):
            if link.exists():
                break
            subprocess.run(["sleep", "0.05"])
        r = cli("deploy", str(ex.paths["mlp"]), "--port", str(link), "--resume")
        assert r.returncode == 2
        assert "does not answer" in r.stderr and "Traceback" not in r.stderr
    finally:
        proc.kill()


def test_old_firmware_is_refused():
    board = dp.Board((1, 8, 7), None, 100_000, False, True, True, "esp8266")
    from micromlp.export.qmodel import QuantModel  # noqa: F401

    with pytest.raises(dp.DeployError, match=r"MicroPython 1.8.7 is too old .* needs 1.9"):
        dp.plan(board, None, None, None)
