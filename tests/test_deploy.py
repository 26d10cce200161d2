"""deploy against emulated boards: the unix port behind a socat pty, and a BBC
micro:bit v1 (MicroPython 1.9.2, ~8 KB free heap) in QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from micromlp.export.exporter import export_checkpoint
from micromlp.host import boards
from micromlp.host import deploy as dp
from micromlp.host.boards import native
from micromlp.host.train import train


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    d = tmp_path_factory.mktemp("iris-deploy")
    tr = train("iris", [8], epochs=40, out=d / "iris.pt", progress=False)
    export_checkpoint(tr.model_path, d / "out")
    return d / "out"


@pytest.fixture
def socat_board(tmp_path):
    board = boards.emulate("serial", tmp_path / "board")
    yield board.port, board.files
    board.stop()


@pytest.fixture
def microbit():
    board = boards.emulate("microbit")
    yield board.port
    board.stop()


def cli(*args):
    return subprocess.run(
        [shutil.which("micromlp"), *args], capture_output=True, text=True, timeout=600
    )


def test_deploy_digits_to_a_serial_board(digits, socat_board):
    port, board = socat_board
    tr, ex = digits
    # no --resume: deploy asks the port, which would exit on a soft reset, and skips it
    r = cli("deploy", str(ex.paths["mlp"].parent), "--port", port, "--main", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["soft_reset"] is False
    assert rep["ok"] and rep["test"]["passed"] == rep["test"]["total"] == 3
    assert rep["board"]["viper"] and rep["plan"]["engine"] == "full"
    assert rep["plan"]["engine_format"] == "mpy" and not rep["plan"]["stream"]
    assert rep["test"]["alloc_per_inference"] == 0
    # the files landed where the board runs
    names = {p.name for p in board.iterdir()}
    assert {"micromlp.mpy", "micromlp_viper.py", "micromlp_viper_layers.py", "model.mlp",
            "main.py"} <= names
    # and the C kernels for the board's core (the unix port here: x64), which it runs
    assert rep["plan"]["native"] == "x64"
    assert (board / "micromlp_c.mpy").read_bytes() == native.module_path("x64").read_bytes()
    assert not any(n.endswith(".part") for n in names)
    assert "mlp_test.bin" not in names  # the self-test cleans up after itself
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


@pytest.mark.parametrize("kind", ["serial", "microbit"])
def test_board_command_starts_an_emulator_and_stops_on_ctrl_c(kind):
    import signal

    p = subprocess.Popen([shutil.which("micromlp"), "board", "--emulate", kind],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.startswith("PORT "):
                break
        port = lines[-1].split()[1]
        assert f"--port {port}" in "".join(lines)
        r = subprocess.run(["mpremote", "connect", port, "resume", "exec", "print(6 * 7)"],
                           capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == "42", r.stdout + r.stderr
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 0, p.stderr.read()
        assert "Traceback" not in p.stderr.read()
    finally:
        p.kill()
    if kind == "serial":
        assert not __import__("os").path.exists(port)  # its folder is gone


def test_mip_installs_the_engine_into_a_serial_board(digits):
    # the package follows micropython-lib's layout: firmware/package.json, relative urls
    import json as _json

    from micromlp.firmware import micromlp as engine
    from micromlp.host import vms

    pkg_path = vms.engine_source().with_name("package.json")
    pkg = _json.loads(pkg_path.read_text())
    assert pkg["version"] == engine.VERSION
    assert [u[0] for u in pkg["urls"]] == [f.name for f in vms.firmware_files()]
    tiny = _json.loads(pkg_path.with_name("package-tiny.json").read_text())
    assert {u[1] for u in tiny["urls"]} == {"micromlp_tiny.py"} | {
        f.name for f in vms.tiny_loader_files()}
    _, ex = digits
    board = boards.emulate("serial")
    try:
        r = subprocess.run(["mpremote", "connect", board.port, "resume", "mip", "install",
                            str(pkg_path)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        lib = board.files / ".micropython" / "lib"
        assert sorted(p.name for p in lib.iterdir()) == sorted(f.name for f in vms.firmware_files())
        # the C kernels: mip's package for this board's architecture (the unix port: x64)
        native_pkg = pkg_path.with_name("native") / vms.unix_native() / "package.json"
        r = subprocess.run(["mpremote", "connect", board.port, "resume", "mip", "install",
                            str(native_pkg)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (lib / "micromlp_c.mpy").exists()
        shutil.copy(ex.paths["mlp"], board.files / "model.mlp")
        x = [0] * 64
        code = ("import micromlp; net = micromlp.load('model.mlp'); "
                f"print(micromlp.__file__, net.kernel, list(net.run({x})))")
        r = subprocess.run(["mpremote", "connect", board.port, "resume", "exec", code],
                           capture_output=True, text=True, timeout=60)
        where, kernel, out = r.stdout.strip().split(" ", 2)
        assert where.endswith(".micropython/lib/micromlp.py"), r.stdout + r.stderr
        assert kernel == "c"
        from micromlp.host import reference

        assert eval(out) == reference.run(ex.model, [x]).out[0].tolist()
    finally:
        board.stop()


def test_sensor_starter_runs_on_floats_after_a_mip_install(iris):
    # the starter programs in firmware/: sensor_main.py reads floats through sensor.py (a
    # stub replaying recorded rows), quantizes them on the board, prints class and p
    import numpy as np
    from micromlp.export import modelfile
    from micromlp.host import reference, vms

    model = modelfile.load(iris / "model.mlp")
    x = np.load(iris.parent / "iris.npz")["x_test"][:12].astype(np.float32)
    board = boards.emulate("serial")
    try:
        fw = vms.engine_source().parent
        r = subprocess.run(["mpremote", "connect", board.port, "resume", "mip", "install",
                            str(fw / "package.json")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        for name in ("sensor.py", "sensor_main.py"):
            shutil.copy(fw / name, board.files / name)
        shutil.copy(iris / "model.mlp", board.files / "model.mlp")
        (board.files / "sensor_rows.txt").write_text(
            "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x))
        r = subprocess.run(["mpremote", "connect", board.port, "resume", "exec",
                            "import sensor_main"], capture_output=True, text=True, timeout=120)
        lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("class ")]
        assert len(lines) == len(x), r.stdout + r.stderr
    finally:
        board.stop()
    out = reference.run(model, model.quantize_input(x)).out
    assert [int(ln[1]) for ln in lines] == np.argmax(out, axis=1).tolist()
    logits = out * float(model.out_scale)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    got = [float(ln[2][2:]) for ln in lines]
    assert np.allclose(got, soft.max(axis=1), atol=1e-4)


def test_redeploying_to_a_microbit_twice_in_a_row(iris, microbit):
    # the soft reset on connect frees what the first deploy left on the heap
    frees = []
    for _ in range(2):
        rep = dp.deploy(iris, microbit, log=lambda m: None)
        assert rep.test.passed == rep.test.total == 3 and rep.soft_reset
        frees.append((rep.board.free, rep.test.free_after_load))
    assert frees[0] == frees[1]


def test_board_vanishing_mid_copy_gives_a_clear_error(digits, tmp_path):
    # the cable is pulled while the model is being copied: deploy names the file and stops
    board = boards.emulate("serial", tmp_path / "board")
    _, ex = digits

    def log(msg):
        if msg.startswith("copy: model.mlp"):
            board.proc.kill()

    try:
        with pytest.raises(dp.DeployError, match=r"^copying model.mlp to the board failed"):
            dp.deploy(ex.paths["mlp"].parent, board.port, log=log)
    finally:
        board.stop()
    # the engine copied before the cable went is whole, and no half-written model is left
    names = {p.name for p in (tmp_path / "board").iterdir()}
    assert "micromlp.mpy" in names and "model.mlp" not in names


def _exported(tmp_path_factory, ds, hidden, epochs=30):
    d = tmp_path_factory.mktemp(f"{ds}-{'x'.join(map(str, hidden))}")
    tr = train(ds, hidden, epochs=epochs, out=d / "m.pt", progress=False)
    export_checkpoint(tr.model_path, d / "out")
    return d / "out"


@pytest.mark.slow
def test_microbit_plan_accepts_only_what_passes_there(tmp_path_factory):
    # The failures: default-sized models (hidden 32,16) and a 30-input model the
    # plan once accepted failed on the board; now they are refused before anything is
    # copied, and the largest model the plan accepts passes on fresh boards every time.
    for ds, hidden in [("iris", [32, 16]), ("wine", [32, 16]), ("breast_cancer", [4])]:
        out = _exported(tmp_path_factory, ds, hidden)
        board, said = boards.emulate("microbit"), []
        try:
            with pytest.raises(dp.DeployError, match=r"^the board is too small for this model"):
                dp.deploy(out, board.port, log=said.append)
        finally:
            board.stop()
        assert not any(m.startswith("copy:") for m in said), said
    out = _exported(tmp_path_factory, "iris", [16, 8])  # 3 layers, 44 bytes inside the plan
    for _ in range(5):
        board = boards.emulate("microbit")
        try:
            rep = dp.deploy(out, board.port, log=lambda m: None)
        finally:
            board.stop()
        assert rep.plan.engine == "tiny" and not rep.plan.stream
        assert rep.test.passed == rep.test.total == 3
