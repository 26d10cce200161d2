"""The README's main job on the default digits model, against real VMs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from micromlp.host import vms
from micromlp.host.verify import verify


def test_default_model_verifies_on_every_vm(digits):
    tr, ex = digits
    rep = verify(ex.paths["mlp"], tr.data_path, tr.model_path)
    assert [r.vm for r in rep.vms] == list(vms.FIRMWARE_VMS)
    assert all(r.bit_exact == 1.0 and not r.error for r in rep.vms), rep.vms
    assert rep.samples == 359
    assert rep.float_accuracy == pytest.approx(tr.test_accuracy)
    assert rep.fixed_accuracy >= rep.float_accuracy - 0.005
    assert rep.max_abs_error_unsaturated <= rep.error_bound
    assert rep.top1_agreement >= 0.98
    assert rep.ok


_HEAP_LOCK_RUN = """
import sys
sys.path.insert(0, '/input')
import micropython, micromlp
from array import array
net = micromlp.load('/input/model.mlp')
x = array('i', [{x}])
out = array('i', bytes(4 * net.n_outputs))

def locked(case):
    # no *args here: a star-args call itself allocates
    micropython.heap_lock()
    try:
        if case == 1:
            net.run(x, out)
        elif case == 2:
            net.predict(x)
        else:
            net.run(x)
        return 'ok'
    except MemoryError:
        return 'allocates'
    finally:
        micropython.heap_unlock()

r1 = locked(1)
r2 = locked(2)
r3 = locked(3)
print(r1, r2, r3, '|', ' '.join([str(v) for v in out]))
"""


def test_run_allocates_nothing_under_heap_lock_on_32bit_wasm(digits, tmp_path):
    tr, ex = digits
    import shutil

    for f in vms.firmware_files():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(ex.paths["mlp"], tmp_path / "model.mlp")
    x = np.load(tr.data_path)["x_test"][:1]
    xq = ex.model.quantize_input(x)[0]
    code = _HEAP_LOCK_RUN.format(x=", ".join(map(str, xq)))
    res = vms.wasm_run(code, readonly_dir=tmp_path)
    status, ints = res.stdout.strip().split(" | ")
    # run with out and predict allocate nothing; the control, run allocating its
    # output array, shows the lock catches an allocation
    assert status == "ok ok allocates"
    from micromlp.host import reference

    assert [int(v) for v in ints.split()] == list(reference.run(ex.model, xq).out[0])


@pytest.mark.parametrize("kernel", ["viper", "native", "portable"])
def test_module_form_loads_and_matches(digits, tmp_path, kernel):
    import shutil
    import subprocess

    tr, ex = digits
    for f in vms.firmware_files():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(ex.paths["py"], tmp_path / "model_mlp.py")
    shutil.copy(ex.paths["mpy"], tmp_path / "other_mlp.mpy")
    xq = ex.model.quantize_input(np.load(tr.data_path)["x_test"][:1])[0]
    script = (
        "import micromlp, model_mlp, other_mlp\n"
        f"x = [{', '.join(map(str, xq))}]\n"
        f"a = micromlp.load(model_mlp, kernel={kernel!r})\n"
        f"b = micromlp.load(other_mlp, kernel={kernel!r})\n"
        "print(a.layers[0].w is model_mlp.MODEL, list(a.run(x)) == list(b.run(x)),"
        " list(a.run(x)))\n"
    )
    (tmp_path / "s.py").write_text(script)
    proc = subprocess.run([vms.unix_exe(), "s.py"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    in_place, same, rest = proc.stdout.split(" ", 2)
    assert in_place == "True"  # 8-bit weights are used where they are, not copied
    assert same == "True"
    from micromlp.host import reference

    assert eval(rest) == list(reference.run(ex.model, xq).out[0])


def test_digits_loads_and_runs_in_a_small_heap(digits):
    # the cut-down engine, as deploy sends it, from the .mlp file and from the .mpy module.
    # The unix port is 64-bit (objects twice a 32-bit board's); its loader compiles and
    # checks the file on the board, so it needs more than the file's 4 KB: 20 KB here is
    # about 14 KB on a 32-bit board.
    from micromlp.host.bench import min_heap

    _, ex = digits
    assert min_heap(ex.paths["mlp"], ex.model, "tiny")[0] <= 20 * 1024
    assert min_heap(ex.paths["mlp"], ex.model, "tiny-mpy")[0] <= 24 * 1024
    assert min_heap(ex.paths["mlp"], ex.model, "tiny-stream")[0] < min_heap(
        ex.paths["mlp"], ex.model, "tiny")[0]


def test_full_engine_drops_its_reader_after_load(digits, tmp_path):
    # load() reads the file with micromlp_load and drops it before the kernels and the
    # Net come in, and drops micromlp_build once it has put the Net together: once
    # loaded, engine and model hold about 20 KB of the 64-bit heap (28 KB while the
    # reader stayed resident, 22.7 KB while the assembly did); a load needs about 28 KB
    # (the reader beside the model; 36 KB before load() collected once the reader was
    # dropped)
    import subprocess

    from micromlp.host.bench import min_heap

    tr, ex = digits
    for f in vms.firmware_files():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(ex.paths["mlp"], tmp_path / "model.mlp")
    (tmp_path / "bad.mlp").write_bytes(ex.paths["mlp"].read_bytes()[:100])
    script = ("import sys, micromlp\n"
              "mods = lambda: sorted(m for m in sys.modules if m.startswith('micromlp'))\n"
              "try:\n micromlp.load('bad.mlp')\nexcept micromlp.ModelError:\n print(mods())\n"
              "try:\n micromlp.load('model.mlp', kernel='c')\nexcept ValueError:\n"
              " print(mods())\n"
              "net = micromlp.load('model.mlp')\nprint(mods())\n")
    out = subprocess.run([vms.unix_exe(), "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60).stdout.split("\n")
    # a refused file: the reader came and went, the net was never imported
    assert out[0] == "['micromlp']"
    # a net that could not be built (no micromlp_c.mpy here): the assembly went too
    assert out[1] == "['micromlp', 'micromlp_net']"
    # no reader, no assembly, no floats
    assert out[2] == "['micromlp', 'micromlp_net', 'micromlp_viper']"
    smallest, resident = min_heap(ex.paths["mlp"], ex.model, "mlp")
    # (the C kernels' glue and the on-demand viper imports cost the net module ~1.3 KB here)
    assert resident < 21 * 1024 < smallest <= 30 * 1024


def test_tiny_engine_uses_module_weights_in_place(digits, tmp_path):
    import subprocess

    tr, ex = digits
    vms.stage_firmware(tmp_path, tiny=True)
    shutil_copy = __import__("shutil").copy
    shutil_copy(ex.paths["py"], tmp_path / "model_mlp.py")
    xq = ex.model.quantize_input(np.load(tr.data_path)["x_test"][:2])
    script = ("import micromlp, model_mlp\n"
              "net = micromlp.load(model_mlp)\n"
              "print(net.layers[0][2] is model_mlp.MODEL)\n"
              + "".join(f"print(list(net.run({row})))\n" for row in xq.tolist()))
    (tmp_path / "s.py").write_text(script)
    proc = subprocess.run([vms.unix_exe(), "s.py"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == "True"
    from micromlp.host import reference

    assert [eval(ln) for ln in lines[1:3]] == reference.run(ex.model, xq).out.tolist()


def test_fuel_per_multiply_add_on_the_32bit_wasi_port(digits):
    # Fuel is wasmtime's count of executed WebAssembly instructions: deterministic, so
    # a bound on it cannot flake with machine load. Random in-range (dense) inputs, the
    # README's digits model: just above what they cost now (both were 1,296 before the
    # four rows of a pass read their weights from views one row apart).
    from micromlp.host.bench import bench

    _, ex = digits
    rep = bench(ex.paths["mlp"], vms=("wasm",), heap=False, progress=False)
    fuel = {(r.kernel, r.stream): r.fuel_per_mac for r in rep.runs}
    assert fuel[("tiny", False)] <= 1085  # the target: 1,100
    assert fuel[("portable", False)] <= 1105
    assert fuel[("portable", True)] <= 1120


def test_loaded_net_keeps_its_records_small(digits, tmp_path):
    # What a loaded net holds on a board is mostly dictionaries and arrays, and a
    # dictionary grows in steps (7, 11, 17, 23 slots): the front module and the net
    # module stay at 11 globals, a Layer at 7 attributes; q holds 3 words per output
    # channel (bias, mult, shift: no rounding term); on viper and C, layer i writes its
    # outputs into layer i - 2's array. Together these took digits, engine frozen on the
    # Cortex-M3, from 6,560 to 6,144 bytes held (docs/benchmarks.md). Outputs stay
    # bit-exact with the host reference, on every kernel.
    import subprocess

    from micromlp.host import reference
    from micromlp.host.boards import native

    _, ex = digits
    for f in vms.firmware_files():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(ex.paths["mlp"], tmp_path / "model.mlp")
    x = np.random.default_rng(3).integers(ex.model.in_lo, ex.model.in_hi + 1,
                                          size=ex.model.n_inputs)
    script = ("import micromlp, micromlp_net\n"
              "print(len(micromlp.__dict__), len(micromlp_net.__dict__))\n"
              "for k in ('viper', 'c', 'portable'):\n"
              "    net = micromlp.load('model.mlp', kernel=k)\n"
              "    ls = net.layers\n"
              "    print(k, max([len(ly.__dict__) for ly in ls]),"
              " [len(ly.q) - 16 - 3 * ly.n_out for ly in ls],"
              f" len(set([id(ly.y) for ly in ls])), list(net.run({x.tolist()!r})))\n")
    shutil.copy(native.module_path("x64"), tmp_path / native.MODULE)
    out = subprocess.run([vms.unix_exe(), "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[0] == "11 11", out
    want = reference.run(ex.model, x[None, :]).out[0].tolist()
    n = len(ex.model.layers)
    assert lines[1:] == [
        f"viper 7 {[0] * n} 2 {want}",
        f"c 7 {[0] * n} 2 {want}",
        f"portable 7 {[0] * n} {n} {want}",  # (lists, one per layer: faster to iterate)
    ]
