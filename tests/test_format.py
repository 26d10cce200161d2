"""Model file checks: every corruption is refused, with the same message on host and board."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from helpers import calib_data, export, make_mlp
from micromlp.export import modelfile
from micromlp.firmware import micromlp as engine
from micromlp.firmware import micromlp_load as reader
from micromlp.host import vms


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("fmt") / "m.mlp"
    model = export(make_mlp([5, 4, 3], [True, False]), calib_data(5), path)
    return path, model, path.read_bytes()


def host_error(data: bytes) -> str:
    with pytest.raises(modelfile.ModelFileError) as e:
        modelfile.from_bytes(data)
    return str(e.value)


def firmware_error(data: bytes) -> str:
    with pytest.raises(engine.ModelError) as e:
        engine.load(io.BytesIO(data))
    return str(e.value)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_roundtrip_is_identical(small):
    path, model, data = small
    again = modelfile.from_bytes(data)
    assert modelfile.to_bytes(again) == data
    for a, b in zip(model.layers, again.layers, strict=True):
        assert np.array_equal(a.w, b.w) and a.acc_bound == b.acc_bound
        assert (a.b is None) == (b.b is None)
    net = engine.load(str(path))
    assert (net.n_inputs, net.n_outputs) == (5, 3)
    assert net.layers[0].has_bias and not net.layers[1].has_bias


CASES = {
    "magic": (lambda d: b"XMLP" + d[4:], "offset 0: bad magic b'XMLP', expected b'MMLP'"),
    "version": (
        lambda d: with_crc(d[:4] + struct.pack("<H", 3) + d[6:-4]),
        "offset 4: format version 3, this engine reads versions 1 and 2",
    ),
    "truncated header": (lambda d: d[:20], "truncated at offset 0: header needs 40 bytes, got 20"),
    "no crc": (lambda d: d[:-4], "offset 8: size field is 276, the file has 272 bytes"),
    "trailing": (lambda d: d + b"\0", "offset 8: size field is 276, the file has 277 bytes"),
    "trailing, size field too": (
        lambda d: with_crc(d[:8] + struct.pack("<I", len(d) + 1) + d[12:-4]) + b"\0",
        "offset 276: unexpected data after the CRC",
    ),
    # layer 0's first weight: header 40 + input table 8*5 + layer header 40
    "weight flipped": (lambda d: d[:120] + bytes([d[120] ^ 0x10]) + d[121:], "CRC mismatch"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_documented_errors_host_and_firmware(small, case):
    corrupt, expected = CASES[case]
    bad = corrupt(small[2])
    assert expected in host_error(bad)
    assert host_error(bad) == firmware_error(bad)


def test_every_single_byte_flip_and_truncation_is_refused_identically(small):
    data = small[2]
    for pos in range(len(data)):
        bad = data[:pos] + bytes([data[pos] ^ 0x41]) + data[pos + 1 :]
        assert host_error(bad) == firmware_error(bad), pos
    for cut in range(0, len(data), 3):
        msg = host_error(data[:cut])
        short = "truncated at offset 0" if cut < 40 else f"the file has {cut} bytes"
        assert short in msg, (cut, msg)
        assert msg == firmware_error(data[:cut])


def test_soft_crc_matches_zlib(monkeypatch, small):
    blob = np.random.default_rng(0).integers(0, 256, 300).astype(np.uint8).tobytes()
    assert reader._soft_crc32(blob, 0) == zlib.crc32(blob)
    assert reader._soft_crc32(blob[100:], reader._soft_crc32(blob[:100], 0)) == zlib.crc32(blob)
    monkeypatch.setattr(reader, "_crc32", None)  # the reader stays imported on CPython
    assert engine.load(io.BytesIO(small[2])).n_outputs == 3
    bad = CASES["weight flipped"][0](small[2])
    assert "CRC mismatch" in firmware_error(bad)


def test_understated_bound_is_refused_on_host_and_board(small):
    data = bytearray(small[2][:-4])
    # layer 0's acc_bound field: header 40 + input table 8*5, then 20 bytes into the layer header
    off = 40 + 8 * 5 + 20
    (bound,) = struct.unpack_from("<I", data, off)
    struct.pack_into("<I", data, off, bound // 2)
    msg = host_error(with_crc(bytes(data)))
    assert msg.startswith("layer 0 at offset 80: channel ") and "above the recorded" in msg
    assert msg == firmware_error(with_crc(bytes(data)))


@pytest.mark.parametrize("vm", ["unix", "wasm"])
def test_bad_files_give_the_documented_error_on_real_vms(small, tmp_path, vm):
    data = small[2]
    for name in ("magic", "version", "weight flipped"):
        corrupt, expected = CASES[name]
        path = tmp_path / f"{name.replace(' ', '_')}.mlp"
        path.write_bytes(corrupt(data))
        with pytest.raises(vms.VMError) as e:
            vms.run_firmware(vm, path, np.zeros((1, 5), dtype=np.int64), 3)
        assert expected in str(e.value), str(e.value)


def test_host_load_names_the_file(tmp_path, small):
    p = tmp_path / "broken.mlp"
    p.write_bytes(b"nope")
    with pytest.raises(modelfile.ModelFileError, match=r"broken.mlp: truncated at offset 0"):
        modelfile.load(p)
    with pytest.raises(modelfile.ModelFileError, match="cannot read"):
        modelfile.load(tmp_path / "missing.mlp")


def _one_layer(w, b, in_hi, wide, mult=10000, shift=40):
    """A one-layer model written by hand (no exporter), for the loaders' wide checks."""
    from micromlp.export.qmodel import QuantLayer, QuantModel

    n_out, n_in = w.shape
    bound = int(modelfile.accumulator_bound(w, b, in_hi, wide))
    layer = QuantLayer(w=w.astype(np.int16), b=b, mult=np.full(n_out, mult, np.int32),
                       shift=np.full(n_out, shift, np.uint8), lo=-30000, hi=30000, act=0,
                       acc_bound=bound, in_scale=1.0, out_scale=1.0,
                       w_scale=np.ones(n_out, np.float32), w_bits=16, wide=wide)
    return QuantModel([layer], np.ones(n_in, np.float32), np.zeros(n_in, np.int32), 0, in_hi)


def test_wide_layers_need_version_2_and_16_bit_weights():
    w = np.full((2, 4), 30000)
    data = modelfile.to_bytes(_one_layer(w, None, 60000, True))
    assert data[4:6] == struct.pack("<H", 2)  # a wide layer makes the file version 2
    assert modelfile.to_bytes(_one_layer(w, None, 1000, False))[4:6] == struct.pack("<H", 1)
    assert modelfile.from_bytes(data).layers[0].wide
    assert engine.load(io.BytesIO(data)).layers[0].q[15] == 1  # the _WIDE slot
    v1 = with_crc(data[:4] + struct.pack("<H", 1) + data[6:-4])
    msg = host_error(v1)
    assert msg == ("layer 0 at offset 72: flag 0x4 (wide) needs 16-bit weights and format "
                   "version 2, got 16-bit weights in version 1")
    assert msg == firmware_error(v1)


def test_wide_sums_past_2_pow_30_are_refused_on_host_and_board():
    # small inputs keep the accumulator (b + floor(W x / 256)) far below 2**30, but the
    # low bytes' sum, 255 * sum|w|, reaches it: 200 weights of 30000
    w = np.full((1, 200), 30000)
    data = modelfile.to_bytes(_one_layer(w, None, 100, True))
    msg = host_error(data)
    assert msg == ("layer 0 at offset 1640: a sum of the inputs' bytes can reach 1530000000 "
                   ">= 2**30 (wide layer)")
    assert msg == firmware_error(data)
    # the same weights in a plain layer are fine (100 * 6,000,000 < 2**30)
    plain = modelfile.to_bytes(_one_layer(w, None, 100, False, mult=1, shift=0))
    assert modelfile.from_bytes(plain).layers[0].acc_bound == 600_000_000
    assert engine.load(io.BytesIO(plain)).n_outputs == 1
