"""micromlp_c.mpy, the kernels in C (firmware/native/): the committed builds are what the
C source builds to, the engine picks the module only where it loads and says why not
otherwise, and the C kernels refuse buffers that do not fit the layer. (Bit-exactness on
every VM and board: tests/test_engine.py's matrix with kernel 'c'.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import calib_data, export, make_mlp
from micromlp.host import deploy, reference, vms
from micromlp.host.boards import native


def test_committed_builds_are_what_the_source_builds_to():
    # every shipped architecture is rebuilt (its compiler is installed by make test:
    # a missing one is a problem too, not a skip) and compared byte for byte
    problems = native.check(log=lambda _: None)
    assert problems == []


def test_every_build_targets_its_architecture():
    for arch in native.ARCHS:
        head = native.module_path(arch).read_bytes()[:4]
        assert head[0] == ord("M") and head[1] == 6, arch  # .mpy version 6
        assert native.MPY_ARCHS[head[2] >> 2] == arch


def _unix(code: str, folder: Path) -> str:
    r = subprocess.run([vms.unix_exe(), "-c", code], cwd=folder, capture_output=True,
                       text=True, timeout=60)
    return r.stdout + r.stderr


def test_the_unix_port_is_what_arch_of_says(tmp_path):
    mpy = int(_unix("import sys; print(sys.implementation._mpy)", tmp_path))
    assert native.arch_of(mpy) == vms.unix_native() == "x64"


def test_module_for_takes_an_older_thumb_build():
    assert native.module_for("x64") == "x64"
    assert native.module_for("armv7emdp") == "armv7emdp"
    assert native.module_for("armv7em") == "armv7m"  # (no armv7em build: the M3's runs)
    assert native.module_for("armv6m") == "armv6m"
    assert native.module_for("xtensawin") is None
    assert native.module_for(None) is None


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "m.mlp"
    model = export(make_mlp([8, 12, 4], True, seed=5), calib_data(8), path)
    xq = np.random.default_rng(1).integers(model.in_lo, model.in_hi + 1, (6, model.n_inputs))
    return path, model, xq, reference.run(model, xq).out


def _run_with(tmp_path: Path, small_model, c_file: bytes | None, kernel: str | None,
              extra: dict[str, str] | None = None) -> tuple[str, np.ndarray | None]:
    """The engine on the unix port with c_file as its micromlp_c.mpy: (stdout, outputs)."""
    path, model, xq, _ = small_model
    vms.stage_firmware(tmp_path)
    vms._stage_job(path, xq, tmp_path)
    if c_file is not None:
        (tmp_path / native.MODULE).write_bytes(c_file)
    for name, text in (extra or {}).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "driver.py").write_text(vms._driver(str(tmp_path), kernel, False))
    r = subprocess.run([vms.unix_exe(), "driver.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    try:
        out = vms._parse(r.stdout, "unix", len(xq), model.n_outputs)
    except vms.VMError:
        out = None
    return r.stdout, out


def test_the_default_kernel_is_c_where_it_loads(tmp_path, small_model):
    stdout, out = _run_with(tmp_path, small_model, native.module_path("x64").read_bytes(), None)
    assert np.array_equal(out, small_model[3])
    assert "micromlp:" not in stdout  # nothing to say
    said = _unix("import sys; sys.path.insert(0, '.'); import micromlp\n"
                 "net = micromlp.load('model.mlp'); print(net.kernel, net.kern.ARCH)",
                 tmp_path)
    assert said.split() == ["c", "x64"]


@pytest.mark.parametrize("damage, said", [
    ("foreign", "micromlp_c.mpy not loaded: ValueError: incompatible .mpy arch"),
    # (MicroPython's .mpy reader would loop forever: the engine checks the build's trailer)
    ("truncated", "micromlp_c.mpy is damaged ({half} bytes, no trailer with its length)"),
    ("not-mpy", "micromlp_c.mpy not loaded: ValueError: incompatible .mpy file"),
])
def test_a_foreign_or_damaged_module_falls_back_and_says_so(tmp_path, small_model, damage, said):
    good = native.module_path("x64").read_bytes()
    data = {"foreign": native.module_path("armv7m").read_bytes(),
            "truncated": good[: len(good) // 2], "not-mpy": b"#" + good[1:]}[damage]
    said = said.format(half=len(good) // 2)
    stdout, out = _run_with(tmp_path, small_model, data, None)
    assert said in stdout and "; using the viper kernel" in stdout
    assert np.array_equal(out, small_model[3])  # viper computed them
    # asked for by name, it is an error that says why
    (tmp_path / "named").mkdir()
    stdout, out = _run_with(tmp_path / "named", small_model, data, "c")
    assert out is None
    assert "kernel 'c' needs micromlp_c.mpy built for this port's architecture" in stdout
    assert said in stdout


def test_a_module_of_another_abi_is_not_used(tmp_path, small_model):
    # a stale module beside a newer engine (here a Python stand-in with the same names)
    stdout, out = _run_with(tmp_path, small_model, None, None,
                            {"micromlp_c.py": "ABI = 0\nARCH = 'x64'\n"})
    assert "micromlp_c.mpy (x64) has ABI 0, this engine needs 1; using the viper kernel" in stdout
    assert np.array_equal(out, small_model[3])


_BAD_CALLS = """
import sys
sys.path.insert(0, '.')
from array import array
import micromlp_c as c
q = array('i', [0] * 22)  # 16 slots, then bias, mult, shift per output
q[0] = 4; q[1] = 2; q[3] = 255; q[6] = 2; q[9] = 128   # 4 in, 2 out, rows 0..2
x = array('i', [1, 2, 3, 4])
y = array('i', [0, 0])
for args in ((x, bytes(8), q, y), (x, bytes(7), q, y), (array('h', [1, 2, 3, 4]), bytes(8), q, y),
             (x, bytes(8), q, array('i', [0])), (x, bytes(8), q[:20], y),
             ([1, 2, 3, 4], bytes(8), q, y), (x, bytes(8), q, bytearray(8))):
    try:
        c.linear8(*args)
        print('RAN', list(y))
    except Exception as e:
        print(type(e).__name__, e)
# sizes whose byte counts would wrap a 32-bit int: refused, not read past
far = array('i', q)
far[7] = 0x7FFFFFFF  # the weights' offset: with the row's 8 bytes, past 2**31
for call in (lambda: c.linear8(x, bytes(8), far, y),
             lambda: c.prep([0], array('i', [0]), array('i', [1 << 30, 0, 0, 0, 0, 0, 0]), [0, 0]),
             lambda: c.argmax(y, array('i', [0, 0, 0, 0, -1, 0, 0]))):
    try:
        print('RAN', call())
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_c_kernels_refuse_buffers_that_do_not_fit_the_layer(tmp_path):
    shutil.copy(native.module_path("x64"), tmp_path / native.MODULE)
    lines = _unix(_BAD_CALLS, tmp_path).splitlines()
    assert lines == [
        "RAN [0, 0]",
        "ValueError micromlp_c: w holds 7 bytes, the layer needs 8",
        "ValueError micromlp_c: x has typecode 'h', expected typecode 'i'",
        "ValueError micromlp_c: y holds 4 bytes, the layer needs 8",
        "ValueError micromlp_c: q holds 80 bytes, the layer needs 88",
        "ValueError micromlp_c: x is not a buffer (expected typecode 'i')",
        "ValueError micromlp_c: y is a bytearray, expected typecode 'i'",
        "ValueError micromlp_c: w holds 8 bytes, the layer needs 2147483655",
        "ValueError micromlp_c: xq holds 4 bytes, the layer needs more than any buffer holds",
        "ValueError micromlp_c: y holds 8 bytes, the layer needs more than any buffer holds",
    ]


def _board(mpy: int | None) -> deploy.Board:
    return deploy.Board((1, 28, 0), mpy, 200_000, True, True, True, "board")


def test_deploy_sends_the_build_for_the_boards_core(small_model):
    model = small_model[1]
    # sys.implementation._mpy of a Cortex-M7 port with double-precision float
    p = deploy.plan(_board(6 | (3 << 8) | (8 << 10)), model, None, None)
    assert p.native == "armv7emdp"
    assert "micromlp_c.mpy" in deploy.engine_files(p)
    assert any("micromlp_c.mpy (armv7emdp)" in r for r in p.reasons)
    # ESP32's core: no build, and the reason
    p = deploy.plan(_board(6 | (3 << 8) | (10 << 10)), model, None, None)
    assert p.native is None and "micromlp_c.mpy" not in deploy.engine_files(p)
    assert any("xtensawin" in r and "Espressif" in r for r in p.reasons)
    # a firmware of another .mpy sub-version cannot load the module's native code
    p = deploy.plan(_board(6 | (2 << 8) | (5 << 10)), model, None, None)
    assert p.native is None and any("6.2, micromlp_c.mpy is 6.3" in r for r in p.reasons)
