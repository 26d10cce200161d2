"""Floats in and out on the board: net.quantize, predict_float, dequantize, probabilities.

The board quantizes a sensor's floats exactly as the host's QuantModel.quantize_input:
the value as a float32, clamp(floor(x / scale + 1/2) + zero) on the exact rational,
ties up, +-inf clamped, NaN refused. Checked on every VM and kernel, and in the tiny
engine, against the host and against exact rational arithmetic.
"""

from __future__ import annotations

import re
import struct
import subprocess
from fractions import Fraction
from math import floor

import numpy as np
import pytest
from helpers import HEAP_BLOCK_CHECK
from micromlp.export import modelfile
from micromlp.export.qmodel import quantize_floats
from micromlp.host import fuzz, vms

BASES = fuzz.base_models()


# relu8: float inputs with calibrated scales; ints: scale 1, so x = k + 1/2 is an exact
# tie in float32 (with other scales the float32 of a "tie" rarely is one)
@pytest.fixture(scope="module", params=["relu8", "ints"])
def model_bytes(request):
    return BASES[request.param]


def exact_ties(model, x: np.ndarray) -> int:
    """How many values of x are exactly halfway between two integers of x / scale."""
    return sum(1 for row in x for v, s in zip(row.tolist(), model.in_scale.tolist(),
                                                strict=True)
               if np.isfinite(v) and (Fraction(v) / Fraction(s)).denominator == 2)


def rows_for(model) -> np.ndarray:
    """float32 rows: calibrated-range values, exact ties, far out of range, +-inf,
    zeros of both signs, denormals, and the float32 extremes."""
    rng = np.random.default_rng(0)
    n = model.n_inputs
    s = model.in_scale.astype(np.float64)
    z = model.in_zero.astype(np.float64)
    rows = [rng.normal(size=n) * 2, rng.normal(size=n) * 100]
    k = rng.integers(model.in_lo, model.in_hi, size=n)
    rows.append((k - z + 0.5) * s)  # ties (exact where the float32 holds them)
    rows.append((k - z - 0.5) * s)
    rows += [[np.inf] * n, [-np.inf] * n, [0.0] * n, [-0.0] * n, [1e-45] * n, [-1e-45] * n,
             [3.4e38] * n, [-3.4e38] * n]
    return np.array(rows, dtype=np.float32)


def exact(model, x: np.ndarray) -> list[list[int]]:
    """The definition, in rationals."""
    out = []
    for row in x:
        q = []
        for v, s, z in zip(row.tolist(), model.in_scale.tolist(), model.in_zero.tolist(),
                           strict=True):
            if np.isinf(v):
                q.append(model.in_hi if v > 0 else model.in_lo)
                continue
            r = floor(Fraction(v) / Fraction(s) + Fraction(1, 2)) + int(z)
            q.append(max(model.in_lo, min(model.in_hi, r)))
        out.append(q)
    return out


def test_the_host_quantizes_exactly(model_bytes):
    m = modelfile.from_bytes(model_bytes)
    x = rows_for(m)
    assert m.quantize_input(x).tolist() == exact(m, x)
    if m.in_scale.tolist() == [1.0] * m.n_inputs:
        assert exact_ties(m, x) >= 2 * m.n_inputs  # the rows hold real ties
    with pytest.raises(ValueError, match=r"input \(1, 2\) is NaN"):
        quantize_floats(np.array([[0, 0, 0, 0, 0], [0, 0, np.nan, 0, 0]]), m.in_scale,
                        m.in_zero, m.in_lo, m.in_hi)


_DRIVER = vms.DRIVER_PREAMBLE + """import struct
import micromlp
net = micromlp.load({path!r}{opts})
def f32(b):
    return struct.unpack('<f', struct.pack('<I', b))[0]
for row in {rows!r}:
    vals = [f32(b) for b in row]
    print('Q', ' '.join([str(v) for v in net.quantize(vals)]))
    for i in range(len(vals)):
        net.inputs[i] = vals[i]
    print('I', ' '.join([str(v) for v in net.quantize(net.inputs)]))
    k = net.predict_float(vals)
    p = net.probabilities(net.run(net.quantize(vals)))
    print('P', k, ' '.join([repr(v) for v in p]))
try:
    net.quantize([f32(0x7FC00000)] + [0.0] * (net.n_inputs - 1))
except ValueError as e:
    print('E', e)
"""

CONFIGS = [("cpython", None), ("unix", "viper"), ("unix", "native"), ("unix", "portable"),
           ("wasm", "portable"), ("unix", "tiny"), ("wasm", "tiny"), ("cpython", "tiny"),
           # MicroPython's own Cortex-M boards in QEMU (32-bit; single-precision floats
           # on the M3, M55 and M0, double on the M7)
           ("cortex-m3", "viper"), ("cortex-m7", "native"), ("cortex-m55", "viper"),
           ("cortex-m0", "portable"),
           ("cortex-m3", "tiny"),
           # the module form: the input table read in place from the module's bytes
           ("unix", "viper+module"), ("cortex-m3", "viper+module"),
           ("cortex-m0", "portable+module")]


def _run(vm: str, kernel, path, rows, tmp_path) -> str:
    bits = [[struct.unpack("<I", struct.pack("<f", v))[0] for v in r] for r in rows.tolist()]
    module = kernel is not None and kernel.endswith("+module")
    kernel = kernel.split("+")[0] if module else kernel
    tiny = kernel == "tiny"
    opts = "" if kernel in (None, "tiny") else f", kernel={kernel!r}"
    if vm == "cpython":
        import contextlib
        import io
        import sys

        buf = io.StringIO()
        engine = vms.tiny_engine() if tiny else None
        if engine is not None:
            sys.modules["micromlp_cpython_tiny"] = engine
        code = _DRIVER.format(dir=str(tmp_path), path=str(path), rows=bits, opts=opts)
        if tiny:
            code = code.replace("import micromlp\n", "import micromlp_cpython_tiny as micromlp\n")
        else:
            code = code.replace("import micromlp\n", "from micromlp.firmware import micromlp\n")
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "driver", "exec"), {})
        return buf.getvalue()
    vms.stage_firmware(tmp_path, tiny=tiny)
    where = {"wasm": "/input", **{b: "/rom" for b in vms.MCU_VMS}}.get(vm, str(tmp_path))
    code = _DRIVER.format(dir=where, path=where + "/m.mlp", rows=bits, opts=opts)
    # what holds the input table: its type and bytes
    code += ("print('T', type(net.tab).__name__, len(net.tab))\n" if tiny else
             "print('T', type(net.in_table).__name__, len(net.in_table))\n")
    if module:
        from micromlp.export.pymodule import module_source

        (tmp_path / "model_mlp.py").write_text(module_source(path.read_bytes()))
        code = code.replace(f"net = micromlp.load({where + '/m.mlp'!r}",
                            "import model_mlp\nnet = micromlp.load(model_mlp")
    if vm == "wasm":
        return vms.wasm_run(code, readonly_dir=tmp_path).stdout
    if vm in vms.MCU_VMS:
        from micromlp.host.boards import mcu

        (tmp_path / "d.py").write_text(code)
        return mcu.run(vm, tmp_path, "d.py")
    (tmp_path / "d.py").write_text(code)
    p = subprocess.run([vms.unix_exe(), "d.py"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("vm,kernel", CONFIGS, ids=[f"{v}-{k}" for v, k in CONFIGS])
def test_floats_in_and_out_match_the_host_on_every_vm(model_bytes, tmp_path, vm, kernel):
    path = tmp_path / "m.mlp"
    path.write_bytes(model_bytes)
    m = modelfile.from_bytes(model_bytes)
    rows = rows_for(m)
    out = _run(vm, kernel, path, rows, tmp_path)
    want = m.quantize_input(rows).tolist()
    q = [[int(v) for v in line.split()[1:]] for line in out.splitlines() if line[:2] == "Q "]
    i = [[int(v) for v in line.split()[1:]] for line in out.splitlines() if line[:2] == "I "]
    assert q == want and i == want, out
    from micromlp.host import reference

    ref = reference.run(m, np.array(want))
    p = [line.split()[1:] for line in out.splitlines() if line[:2] == "P "]
    assert [int(r[0]) for r in p] == np.argmax(ref.out, axis=1).tolist()
    logits = ref.out * float(m.out_scale)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    got = np.array([[float(v) for v in r[1:]] for r in p])
    assert np.allclose(got, soft, atol=1e-6), (got, soft)
    assert "E input 0 is NaN: no integer stands for it" in out
    # one scale and zero point for every input: the engine keeps one entry (8 bytes);
    # else the table, read in place from a module's bytes on the boards
    uniform = len(set(m.in_scale.tolist())) == len(set(m.in_zero.tolist())) == 1
    if vm != "cpython":
        table = re.search(r"^T (\w+) (\d+)$", out, re.M).groups()
        if kernel == "tiny":  # the whole table, as bytes
            assert table[1] == str(8 * m.n_inputs)
        elif uniform:
            assert table == ("bytearray", "8")
        elif not kernel.endswith("+module"):
            assert table == ("bytearray", str(8 * m.n_inputs))
        elif vm in vms.MCU_VMS:
            assert table == ("memoryview", str(8 * m.n_inputs))


def test_quantize_and_predict_float_allocate_nothing(model_bytes, tmp_path):
    # gc.threshold(1): any allocation runs a collection, freeing garbage made just before;
    # the caller's own array('f') also runs under heap_lock, on every kernel
    (tmp_path / "m.mlp").write_bytes(model_bytes)
    vms.stage_firmware(tmp_path)
    script = HEAP_BLOCK_CHECK + """
import micromlp, micropython
from array import array
vals = [0.5, -1.25, 3.0, 100.0, -0.0]
own = array('f', vals)
a = b = c = d = ''
for k in ('viper', 'native', 'portable'):
    net = micromlp.load('m.mlp', kernel=k)
    for i in range(5):
        net.inputs[i] = vals[i]
    want = list(net.quantize(vals))
    net.predict_float(own)
    print(k, 'same' if list(net.quantize(own)) == want else 'DIFFERENT')
    a, b, c, d = k + ' list', k + ' inputs', k + ' own', k + ' own-locked'
    f0 = pre()
    net.predict_float(vals)
    post(a, f0)
    f0 = pre()
    net.predict_float(net.inputs)
    post(b, f0)
    f0 = pre()
    net.predict_float(own)
    post(c, f0)
    micropython.heap_lock()
    try:
        net.predict_float(own)
        net.quantize(own)
        r = 'ok'
    except MemoryError:
        r = 'MemoryError'
    micropython.heap_unlock()
    print(d, r)
"""
    (tmp_path / "s.py").write_text(script)
    p = subprocess.run([vms.unix_exe(), "s.py"], cwd=tmp_path, capture_output=True, text=True)
    lines = p.stdout.splitlines()
    assert [line.split()[-1] for line in lines] == ["same"] + ["ok"] * 4 + (
        ["same"] + ["ok"] * 4) * 2, p.stdout + p.stderr
