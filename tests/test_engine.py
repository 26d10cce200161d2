"""The engine on every VM computes exactly the reference's integers, for many shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import calib_data, export, make_mlp, torch_out
from micromlp.export.qmodel import QuantLayer
from micromlp.export.quantize import QuantOptions
from micromlp.host import reference, vms
from torch import nn

W16 = QuantOptions(weight_bits=16)
A16 = QuantOptions(act_bits=16)
ARCHS = [
    (f"bias{''.join('1' if b else '0' for b in bias)}", [6, 9, 7, 4], list(bias), "float", None)
    for bias in itertools.product([True, False], repeat=3)
] + [
    ("single-linear", [7, 3], [True], "float", None),
    ("single-linear-nobias", [7, 3], [False], "int", None),
    ("depth5", [10, 12, 9, 8, 6, 4], True, "float", None),
    ("width1", [1, 1], True, "float", None),
    ("width1-hidden", [1, 1, 1], [False, True], "int", None),
    ("width128", [128, 128, 10], True, "int", None),
    ("narrow-wide-narrow", [3, 128, 1], True, "float", None),
    ("w16", [6, 9, 7, 4], [True, False, True], "float", W16),
    ("a16", [5, 8, 3], True, "float", A16),
    ("leaky", [6, 12, 8, 4], [True, False, True], "float", None),
    ("leaky-w16-a16", [8, 32, 3], True, "float", QuantOptions(weight_bits=16, act_bits=16)),
    ("w16-a16", [20, 64, 32, 5], True, "float", QuantOptions(weight_bits=16, act_bits=16)),
    # wide layers whose inputs are negative too (the high byte floors: -1 >> 8 == -1)
    ("w16-a16-signed-inputs", [6, 16, 3], [False, True], "int",
     QuantOptions(weight_bits=16, act_bits=16, input_range=(-32767, 32767))),
    # 8-bit weights on inputs at the edges of 16 bits, negative too (C's DSP path packs
    # inputs into halfwords: its condition's edge)
    ("a16-signed-inputs", [12, 16, 3], True, "int",
     QuantOptions(act_bits=16, input_range=(-32768, 32767))),
]
# (vm, kernel, stream): every kernel on the unix port (it has all three), the
# portable one on CPython, 32-bit WASI and WebAssembly, and streaming weights from the file.
BACKENDS = [
    ("cpython", "portable", False),
    ("cpython", "portable", True),
    ("unix", "viper", False),
    ("unix", "native", False),
    ("unix", "portable", False),
    ("unix", "viper", True),
    # the C kernels (firmware/native/x64/micromlp_c.mpy): whole-net and streaming
    ("unix", "c", False),
    ("unix", "c", True),
    ("wasm", "portable", False),
    ("wasm", "portable", True),
    # MicroPython's WebAssembly port (the browser's, here under Node)
    ("webassembly", "portable", False),
    ("webassembly", "portable", True),
    # the cut-down engine deploy sends to ~10 KB boards
    ("cpython", "tiny", False),
    ("unix", "tiny", False),
    ("unix", "tiny", True),
    ("wasm", "tiny", True),
    ("webassembly", "tiny", False),
]


def test_inputs(model, n: int, seed: int) -> np.ndarray:
    """Random in-range integers, the range's corners, and out-of-range values."""
    rng = np.random.default_rng(seed)
    lo, hi = model.in_lo, model.in_hi
    x = rng.integers(lo, hi + 1, size=(n, model.n_inputs))
    corners = rng.choice([lo, hi], size=(8, model.n_inputs))
    outside = rng.integers(lo - 1000, hi + 1000, size=(4, model.n_inputs))
    return np.vstack([x, corners, outside])


test_inputs.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module", params=ARCHS, ids=[a[0] for a in ARCHS])
def exported(request, tmp_path_factory):
    name, sizes, bias, kind, opts = request.param
    act = (lambda: nn.LeakyReLU(0.1)) if name.startswith("leaky") else nn.ReLU
    module = make_mlp(sizes, bias, seed=len(name), act=act)
    x = calib_data(sizes[0], kind=kind)
    path = tmp_path_factory.mktemp(name) / "m.mlp"
    model = export(module, x, path, opts)
    return module, x, path, model


@pytest.mark.parametrize(
    "vm, kernel, stream", BACKENDS, ids=[f"{v}-{k}{'-stream' if s else ''}" for v, k, s in BACKENDS]
)
def test_vm_bit_exact_with_reference(exported, vm, kernel, stream):
    _, _, path, model = exported
    if kernel == "tiny" and any(layer.w_bits != 8 for layer in model.layers):
        # it takes version 1 files with 8-bit weights only (wide layers need version 2)
        with pytest.raises(vms.VMError, match="bad layer" if not any(
                layer.wide for layer in model.layers) else "offset 0: bad header"):
            vms.run_firmware(vm, path, np.zeros((1, model.n_inputs)), model.n_outputs, kernel)
        return
    xq = test_inputs(model, 40, seed=3)
    ref = reference.run(model, xq).out
    # the VM driver runs every inference under micropython.heap_lock where the port has it
    out = vms.run_firmware(vm, path, xq, model.n_outputs, kernel, stream)
    assert out.shape == ref.shape
    assert np.array_equal(out, ref)


def test_bias_layout_matches_source(exported):
    module, _, _, model = exported
    linears = [m for m in module if hasattr(m, "weight")]
    for i, (lin, layer) in enumerate(zip(linears, model.layers, strict=True)):
        if i > 0:  # the first layer may gain a bias from the folded input zero point
            assert layer.has_bias == (lin.bias is not None)
        assert layer.n_params(False) == lin.weight.numel()


def test_dequantized_output_within_reported_bound(exported):
    module, x, _, model = exported
    res = reference.run(model, model.quantize_input(x))
    keep = ~res.saturated
    assert keep.mean() > 0.5
    err = np.abs(model.dequantize_output(res.out) - torch_out(module, x))[keep]
    assert err.max() <= model.error_bound


def test_corner_inputs_never_reach_2_pow_30(exported):
    _, _, _, model = exported
    # reference.run raises BoundViolation if any intermediate value reaches 2**30
    reference.run(model, test_inputs(model, 500, seed=9))


def test_reference_catches_values_past_2_pow_30():
    w = np.full((1, 4), 127, dtype=np.int8)
    layer = QuantLayer(
        w=w,
        b=None,
        mult=np.array([1 << 20], dtype=np.int32),
        shift=np.array([30], dtype=np.uint8),
        lo=-127,
        hi=127,
        act=0,
        acc_bound=0,
        in_scale=1.0,
        out_scale=1.0,
        w_scale=np.ones(1, dtype=np.float32),
    )
    from micromlp.export.qmodel import QuantModel

    model = QuantModel([layer], np.ones(4, np.float32), np.zeros(4, np.int32), 0, 255)
    with pytest.raises(reference.BoundViolation, match="layer 0"):
        reference.run(model, np.full((1, 4), 255))


def test_input_clamp_and_predict_on_firmware(exported):
    from micromlp.firmware import micromlp as engine

    _, _, path, model = exported
    net = engine.load(str(path))
    x = test_inputs(model, 5, seed=4)
    for row in x:
        out = net.run(list(row))
        clamped = np.clip(row, model.in_lo, model.in_hi)
        assert list(out) == list(reference.run(model, clamped).out[0])
        assert net.predict(list(row)) == int(np.argmax(out))
    with pytest.raises(ValueError, match=f"expected {model.n_inputs} inputs"):
        net.run([0] * (model.n_inputs + 1))



def test_viper_copies_into_an_array_by_words_only_where_it_fits(tmp_path):
    # viper's copy of the outputs stores into an array('i') by machine words where it
    # holds them all; a shorter one raises as a list does (nothing written past its end),
    # and a list takes the outputs item by item
    import subprocess

    path = tmp_path / "m.mlp"
    model = export(make_mlp([6, 9, 7, 4]), calib_data(6), path)
    vms.stage_firmware(tmp_path)
    x = test_inputs(model, 1, seed=5)[0].tolist()
    (tmp_path / "s.py").write_text(f"""
import micromlp
from array import array
net = micromlp.load('m.mlp', kernel='viper')
x = array('i', {x!r})
for out in (array('i', [7] * 6), [0] * 4, array('i', [7] * 3), [0] * 3):
    try:
        net.run(x, out)
        print(list(out))
    except IndexError:
        print('IndexError', list(out))
""")
    p = subprocess.run([vms.unix_exe(), "s.py"], cwd=tmp_path, capture_output=True, text=True)
    want = reference.run(model, np.array([x])).out[0].tolist()
    assert p.stdout.splitlines() == [str(want + [7, 7]), str(want), f"IndexError {want[:3]}",
                                     f"IndexError {want[:3]}"], p.stdout + p.stderr

# MicroPython's own Cortex-M boards in QEMU (host/boards/mcu.py): every architecture of
# the matrix in one boot per kernel. The M0 has no viper or native emitter.
MCU_BACKENDS = [(board, kernel, stream) for board in ("cortex-m3", "cortex-m7", "cortex-m55")
                for kernel, stream in (("c", False), ("c", True), ("viper", False),
                                       ("native", False), ("portable", False),
                                       ("viper", True), ("tiny", False))] + [
    ("cortex-m0", "portable", False), ("cortex-m0", "portable", True),
    ("cortex-m0", "tiny", True)]


@pytest.fixture(scope="module")
def every_arch(tmp_path_factory):
    """Each architecture of ARCHS exported, with its test inputs and reference outputs."""
    out = []
    for name, sizes, bias, kind, opts in ARCHS:
        act = (lambda: nn.LeakyReLU(0.1)) if name.startswith("leaky") else nn.ReLU
        path = tmp_path_factory.mktemp(name) / "m.mlp"
        model = export(make_mlp(sizes, bias, seed=len(name), act=act),
                       calib_data(sizes[0], kind=kind), path, opts)
        xq = test_inputs(model, 12, seed=3)
        out.append((name, path, model, xq, reference.run(model, xq).out))
    return out


@pytest.mark.parametrize("board, kernel, stream", MCU_BACKENDS,
                         ids=[f"{b}-{k}{'-stream' if s else ''}" for b, k, s in MCU_BACKENDS])
def test_mcu_board_bit_exact_with_reference(every_arch, board, kernel, stream):
    # the tiny engine reads 8-bit version 1 files only (its refusals: the test above)
    cases = [c for c in every_arch if kernel != "tiny" or all(
        layer.w_bits == 8 for layer in c[2].layers)]
    outs = vms.run_mcu_jobs(board, [(path, xq, model.n_outputs)
                                    for _, path, model, xq, _ in cases], kernel, stream)
    for (name, _, _, _, ref), out in zip(cases, outs, strict=True):
        assert np.array_equal(out, ref), name


# The other ARM builds on the boards that load them: a Cortex-M3 loads the armv6m build
# (RP2040's), a Cortex-M7 the armv7emsp one (Cortex-M4F's, with the DSP path)
OTHER_BUILDS = [("cortex-m3", "armv6m"), ("cortex-m7", "armv7emsp")]


@pytest.mark.parametrize("board, build", OTHER_BUILDS, ids=[f"{b}-{a}" for b, a in OTHER_BUILDS])
def test_mcu_board_runs_other_c_builds_bit_exact(every_arch, board, build):
    outs = vms.run_mcu_jobs(board, [(path, xq, model.n_outputs)
                                    for _, path, model, xq, _ in every_arch], "c",
                            c_build=build)
    for (name, _, _, _, ref), out in zip(every_arch, outs, strict=True):
        assert np.array_equal(out, ref), name


def test_mcu_board_without_viper_says_so(every_arch):
    _, path, model, xq, _ = every_arch[0]
    with pytest.raises(vms.VMError, match="cortex-m0: the engine raised .*viper"):
        vms.run_firmware("cortex-m0", path, xq, model.n_outputs, "viper")
