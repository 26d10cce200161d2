"""The board never trusts the file: one test per finding of the adversarial review.

Files are crafted CRC-valid from small exported models (host/fuzz.py), then given to
the host loader and to every board loader: the full engine in RAM and streaming on
the 64-bit unix port (viper), the tiny engine there, and both on the 32-bit WASI
port with the heap locked (a value past 2**30 would be a bignum: MemoryError).
"""

from __future__ import annotations

import math
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import HEAP_BLOCK_CHECK
from micromlp.export import modelfile
from micromlp.export.layers import ExportError
from micromlp.export.qmodel import MAX_SHIFT
from micromlp.host import fuzz, reference, vms

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bases() -> dict[str, bytes]:
    return fuzz.base_models()


def field(data: bytes, name: str) -> fuzz.Field:
    return next(f for f in fuzz.fields(data) if f.name == name)


def edit(data: bytes, values: dict) -> bytes:
    """A valid file with the named fields set."""
    spots = {f.name: f for f in fuzz.fields(data)}
    for name, value in values.items():
        data = fuzz.put(data, spots[name], value)
    return data


def everywhere(data: bytes, rows=None, tiny: bool = True) -> dict[str, fuzz.Outcome]:
    """The host's outcome and every board loader's, for one file."""
    rows = rows or [[0] * struct.unpack_from("<H", data, 14)[0]]
    out = {"host": fuzz.host_outcome(data, rows)}
    for loader in fuzz.LOADERS:
        if tiny or not loader.startswith("tiny"):
            out[loader] = fuzz.board_outcomes(loader, [data], rows)[0]
    return out


def assert_refused_everywhere(data: bytes, want: str, tiny: bool = True) -> None:
    res = everywhere(data, tiny=tiny)
    assert res["host"].kind == "refused" and want in res["host"].text, res["host"]
    for loader, o in res.items():
        assert o.kind == "refused", (loader, o)
        if loader.startswith("full"):
            assert o.text == res["host"].text, (loader, o.text)  # the host's very words
        if loader.startswith("tiny"):
            assert o.text.startswith("offset ") and ": bad " in o.text, o.text


def test_understated_accumulator_bound_is_refused_by_every_loader(bases):
    # 1. the loaders recompute each channel's worst case; the stored bound is a cross-check
    data = bases["relu8"]
    bound = struct.unpack_from("<I", data, field(data, "layer 0 acc bound").offset)[0]
    bad = fuzz.put(edit(data, {"layer 0 acc bound": bound // 4}), field(data, "layer 0 mult[0]"),
                   2**20)
    assert_refused_everywhere(bad, "layer 0 at offset 80: channel ")
    assert "above the recorded accumulator bound" in fuzz.host_outcome(bad, [[0] * 5]).text


@pytest.mark.parametrize("lo,hi", [(2**30, 2**30), (0, 2**30), (-(2**30), 0)])
def test_a_clamp_range_reaching_2_30_is_refused(bases, lo, hi):
    # 2. the last layer's clamp is what the outputs can be
    data = bases["relu8"]
    bad = edit(data, {"layer 1 lo": lo, "layer 1 hi": hi})
    assert_refused_everywhere(bad, f"clamp range [{lo}, {hi}] reaches 2**30")


def test_the_input_range_must_stay_below_2_30(bases):
    bad = edit(bases["relu8"], {"header in_hi": 2**30})
    assert_refused_everywhere(bad, "offset 20: input range")


def test_ints_past_the_machine_word_clamp_like_the_portable_kernel(bases):
    # 3. viper's int() keeps the low word only; the engines compare first
    data = bases["ints"]
    m = modelfile.from_bytes(data)
    big = [2**64 + 3, 2**63, -(2**64), 2**31 + 5, -(2**31) - 7]
    rows = [big, big[::-1], [2**32 + 3, -(2**32) - 3, 1, -1, 0]]
    expect = reference.run(m, np.array([[min(max(v, m.in_lo), m.in_hi) for v in r]
                                        for r in rows])).out.tolist()
    for loader in fuzz.LOADERS:
        o = fuzz.board_outcomes(loader, [data], rows)[0]
        assert o.kind == "ran" and o.outputs == expect, (loader, o)
    with (ROOT / "firmware" / "micromlp_viper.py").open() as f:
        assert "xo < lo_o" in f.read()  # the viper clamp compares objects


def test_consistently_resized_layers_are_refused_before_any_allocation(bases, tmp_path):
    # 4. n_out and every size field changed together: the file is short of what they say
    data = bases["relu8"]
    f = field(data, "layer 0 n_out")
    body = bytearray(fuzz.put(data, f, 65535)[:-4])
    struct.pack_into("<I", body, f.offset - 6, modelfile.layer_size(5, 65535, 8, True))
    struct.pack_into("<I", body, 8, len(body) + 4)
    bad = fuzz.with_crc(bytes(body))
    assert_refused_everywhere(bad, "bytes run past the file size")
    # the same file, with the header's size field grown to match: still no allocation
    grown = bytearray(bad[:-4])
    struct.pack_into("<I", grown, 8, 2**20)
    assert_refused_everywhere(fuzz.with_crc(bytes(grown)), "offset 8: size field is 1048576")
    # on a 64 KB heap the full engine says why, rather than running out of memory (the
    # file claims a 327 KB weight block and a 1 MB parameter table)
    (tmp_path / "bad.mlp").write_bytes(bad)
    vms.stage_firmware(tmp_path, mpy=True)
    script = ("import micromlp\ntry:\n    micromlp.load('bad.mlp')\n"
              "except micromlp.ModelError as e:\n    print(e)\n")
    (tmp_path / "s.py").write_text(script)
    p = subprocess.run([vms.unix_exe(), "-X", "heapsize=64k", "s.py"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert "bytes run past the file size" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("tail", [b"\0", b"garbage after the CRC"])
def test_data_after_the_crc_is_refused(bases, tail):
    assert_refused_everywhere(bases["relu8"] + tail, "offset 8: size field is")
    grown = bytearray(bases["relu8"][:-4])
    struct.pack_into("<I", grown, 8, len(grown) + 4 + len(tail))
    res = everywhere(fuzz.with_crc(bytes(grown)) + tail)
    assert all(o.kind == "refused" for o in res.values()), res


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0.0, "other"])
def test_the_two_output_scales_must_agree_and_be_finite(bases, value):
    # 5. the host dequantizes with the last layer's scale, the board with the header's
    data = bases["relu8"]
    (scale,) = struct.unpack_from("<f", data, 28)
    if value == "other":
        bad = edit(data, {"header out scale": scale * 2})
        assert_refused_everywhere(bad, "offset 28: output scale 0x")
        assert "differs from the last layer's" in fuzz.host_outcome(bad, [[0] * 5]).text
    else:
        bad = edit(data, {"header out scale": value})
        assert_refused_everywhere(bad, "is not a positive finite float32")
        last = edit(data, {"layer 1 out scale": value})
        assert_refused_everywhere(last, "differs from the last layer's")
    assert math.isfinite(scale) and scale > 0


def test_no_heap_allocation_per_inference_even_without_heap_lock(tmp_path, bases):
    # 6. MicroPython puts a large bytecode frame on the heap unless the heap is locked:
    # with gc.threshold(1), any allocation collects, and freed garbage raises mem_free.
    # A control function with a large frame must be caught, or the test proves nothing.
    (tmp_path / "tiny").mkdir()
    vms.stage_firmware(tmp_path, native=vms.unix_native())  # with the C kernels too
    vms.stage_firmware(tmp_path / "tiny", tiny=True)
    for where in (tmp_path, tmp_path / "tiny"):
        (where / "m.mlp").write_bytes(bases["relu8"])
    script = HEAP_BLOCK_CHECK + """
import sys
from array import array
def big_frame(a, b, c):
    d = e = f = g = h = i = j = k = l = m = 1
    return a
f0 = pre()
big_frame(1, 2, 3)
post('control', f0)
sys.path.insert(0, sys.argv[1])
import micromlp
x = array('i', [3, -1, 2, 0, 5])
xl = [3, -1, 2, 0, 5]
out = array('i', bytes(12))
outl = [0, 0, 0]
a = b = c = ''
for kw in KWS:
    net = micromlp.load('m.mlp', **kw)
    net.run(x, out)
    a, b, c = repr(kw) + ' run', repr(kw) + ' run(list)', repr(kw) + ' predict'
    f0 = pre()  # from here to post(), only what is measured may allocate
    net.run(x, out)
    post(a, f0)
    f0 = pre()
    net.run(xl, outl)
    post(b, f0)
    f0 = pre()
    net.predict(x)
    post(c, f0)
    d = repr(kw) + ' run(net.x)'  # the engine's own inputs: one viper call, no lock
    nx = net.x
    for i in range(len(x)):
        nx[i] = x[i]
    f0 = pre()
    net.run(nx, out)
    post(d, f0)
"""
    full = [{"kernel": k, "stream": s} for k in ("c", "viper", "native", "portable")
            for s in (False, True)]
    for where, kws in ((tmp_path, full), (tmp_path / "tiny", [{}])):
        (where / "s.py").write_text(script.replace("KWS", repr(kws)))
        p = subprocess.run([vms.unix_exe(), "s.py", str(where)], cwd=where,
                           capture_output=True, text=True)
        lines = p.stdout.splitlines()
        assert lines and lines[0] == "control COLLECTED", p.stdout + p.stderr
        assert len(lines) == 1 + 4 * len(kws), p.stdout + p.stderr
        assert all(line.endswith(" ok") for line in lines[1:]), p.stdout


def test_export_refuses_what_no_board_holds_before_any_work(tmp_path):
    # 8. Linear(10000, 10000) once took 2 minutes and 6 GB, then failed in mpy-cross
    import time

    import micromlp
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(10000, 10000), torch.nn.ReLU(),
                            torch.nn.Linear(10000, 2))
    t = time.time()
    with pytest.raises(ExportError) as e:
        micromlp.export(m, calib=np.zeros((4, 10000), np.float32), out=tmp_path / "o")
    assert time.time() - t < 60
    assert "would be 95.6 MB (100230152 bytes" in str(e.value)
    assert "10000->10000" in str(e.value) and "--max-size" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_module_forms_are_skipped_above_a_megabyte(tmp_path):
    import micromlp
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(1100, 960), torch.nn.ReLU(), torch.nn.Linear(960, 2))
    x = np.random.default_rng(0).normal(size=(32, 1100))
    q = micromlp.export(m, calib=x, out=tmp_path)
    assert set(q.paths) == {"mlp"} and q.paths["mlp"].stat().st_size > 1 << 20
    assert any("model_mlp.py and .mpy not written" in n for n in q.notes)


@pytest.mark.parametrize("shift,ok", [(MAX_SHIFT, True), (MAX_SHIFT + 1, False)])
def test_the_shift_limit_is_the_same_in_the_doc_and_every_loader(bases, shift, ok):
    # 9. docs/format.md said 30 while the loaders allowed 45: now one limit, 45
    base = bases["relu8"]
    data = fuzz.put(fuzz.put(base, field(base, "layer 1 shift[0]"), shift),
                    field(base, "layer 1 mult[0]"), 8192)
    res = everywhere(data, rows=[[0] * 5, [100] * 5])
    kinds = {o.kind for o in res.values()}
    assert kinds == ({"ran"} if ok else {"refused"}), res
    doc = (ROOT / "docs" / "format.md").read_text()
    assert f"`shift`: `n_out` uint8, each <= {MAX_SHIFT}" in doc


@pytest.mark.parametrize("name,value,want", [
    ("header reserved", 1, "offset 36: reserved field is 1"),
    ("layer 0 reserved 11", 7, "reserved bytes are 7, 0"),
    ("layer 1 reserved 39", 1, "reserved bytes are 0, 1"),
    ("header widest", 99, "offset 18: widest layer field is 99, expected 6"),
    ("layer 0 slope mult", 3, "slope fields are 3, 0 without LeakyReLU"),
    ("layer 0 flags", 2, "flag 0x2 (folded bias) is set without flag 0x1"),
    ("in_scale[2]", float("nan"), "offset 48: input scale 2 is 0x7fc00000"),
])
def test_fixed_and_reserved_fields_are_checked(bases, name, value, want):
    data = fuzz.put(bases["relu8"], field(bases["relu8"], name), value)
    assert_refused_everywhere(data, want)


def test_bench_reports_no_heap_block_per_inference(bases, tmp_path):
    # the benchmark's own figure: "0 B per inference" was net of frees and hid a frame
    # allocated and freed per call; the float baseline (which allocates) shows the
    # measure can see a block
    from micromlp.host.bench import bench

    path = tmp_path / "m.mlp"
    path.write_bytes(bases["relu8"])
    rep = bench(path, rounds=1, heap=False, progress=False)
    unix = [r for r in rep.runs if r.vm == "unix"]
    assert len(unix) >= 5
    for r in unix:
        assert r.heap_block is False and r.alloc == 0, r
        assert r.float_heap_block is True, r


def test_the_engines_own_inputs_clamp_like_any_other(tmp_path, bases):
    # run(net.x) clamps net.x in place (inside the one viper call on viper): any int32
    # it holds, negative ones on a port whose inputs are never negative included
    vms.stage_firmware(tmp_path)
    (tmp_path / "m.mlp").write_bytes(bases["relu8"])
    rows = [[3, -1, 2, 0, 5], [2**31 - 1, -2**31, 7, -300, 300], [0, 0, 0, 0, 0]]
    (tmp_path / "s.py").write_text(f"""
import micromlp
from array import array
for k in ('viper', 'native', 'portable'):
    net = micromlp.load('m.mlp', kernel=k)
    for r in {rows!r}:
        a = list(net.run(r))
        for i in range(len(r)):
            net.x[i] = r[i]
        b = list(net.run(net.x))
        p = net.predict(net.x)
        c = [min(max(v, net.in_lo), net.in_hi) for v in r]
        print(k, a == b, p == a.index(max(a)), list(net.x) == c)
""")
    p = subprocess.run([vms.unix_exe(), "s.py"], cwd=tmp_path, capture_output=True, text=True)
    lines = p.stdout.splitlines()
    assert len(lines) == 9 and all(line.endswith("True True True") for line in lines), (
        p.stdout + p.stderr)
    model = modelfile.from_bytes(bases["relu8"])
    want = reference.run(model, np.clip(rows, model.in_lo, model.in_hi)).out
    (tmp_path / "t.py").write_text(f"""
import micromlp
net = micromlp.load('m.mlp', kernel='viper')
for r in {rows!r}:
    for i in range(len(r)):
        net.x[i] = r[i]
    print(list(net.run(net.x)))
""")
    p = subprocess.run([vms.unix_exe(), "t.py"], cwd=tmp_path, capture_output=True, text=True)
    got = [eval(line) for line in p.stdout.splitlines()]
    assert got == want.tolist(), p.stdout + p.stderr
