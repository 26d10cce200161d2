"""Write and read model files (.mlp), format versions 1 and 2 (docs/format.md).

The reader is the host twin of the loader in firmware/micromlp_load.py: it checks
the same things in the same order and raises the same messages, so a bad file
gets one diagnosis on the PC and on the board.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .qmodel import (
    ACT_LEAKY,
    ACT_NAMES,
    F32_INF,
    SLOPE_LIMIT,
    SMALL_INT,
    WIDE_SHIFT,
    QuantLayer,
    QuantModel,
    requant_ok,
    wide_sums_bound,
)

MAGIC = b"MMLP"
VERSION = 2  # the newest this reads; a file without wide layers is written as version 1
VERSIONS = (1, 2)
HEADER_SIZE = 40
LAYER_HEADER_SIZE = 40
FLAG_BIAS = 1
FLAG_FOLDED = 2  # the bias came from folding; the source layer had none
FLAG_WIDE = 4  # version 2: 16-bit weights times 16-bit inputs, acc = b + floor(W x / 256)
# inputs and each input's zero point lie closer than this to 0 and to both ends of the
# input range: net.quantize on a 32-bit board then counts in small ints
ZERO_REACH = 1 << 29
_HEADER = struct.Struct("<4sHHIHHHHiiffI")
_LAYER = struct.Struct("<IHHBBBBiiIfffHBB")
assert _HEADER.size == HEADER_SIZE and _LAYER.size == LAYER_HEADER_SIZE


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the offset and the problem."""


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) & 3)


def layer_size(n_in: int, n_out: int, w_bits: int, has_bias: bool) -> int:
    """Bytes of one layer record: header, weights, bias, mult, shift, weight scales."""
    wbytes = n_in * n_out * (w_bits // 8)
    return (
        LAYER_HEADER_SIZE
        + ((wbytes + 3) & ~3)
        + (4 * n_out if has_bias else 0)
        + 4 * n_out
        + ((n_out + 3) & ~3)
        + 4 * n_out
    )


def file_version(model: QuantModel) -> int:
    """The format version a model is written in: 2 where a layer is wide, else 1 (which
    older readers and the tiny engine read)."""
    return 2 if any(layer.wide for layer in model.layers) else 1


def to_bytes(model: QuantModel) -> bytes:
    """Serialize a quantized model; asserts the layout as it writes."""
    body = bytearray()
    body += model.in_scale.astype("<f4").tobytes()
    body += model.in_zero.astype("<i4").tobytes()
    for layer in model.layers:
        start = len(body)
        # 8-bit weights are stored offset-binary (u = w + 128, docs/format.md)
        flags = ((FLAG_BIAS if layer.has_bias else 0) | (FLAG_FOLDED if layer.bias_note else 0)
                 | (FLAG_WIDE if layer.wide else 0))
        size = layer_size(layer.n_in, layer.n_out, layer.w_bits, layer.has_bias)
        body += _LAYER.pack(
            size,
            layer.n_in,
            layer.n_out,
            layer.w_bits,
            flags,
            layer.act,
            0,
            layer.lo,
            layer.hi,
            layer.acc_bound,
            layer.in_scale,
            layer.out_scale,
            layer.error_bound,
            layer.slope_mult,
            layer.slope_shift,
            0,
        )
        if layer.w_bits == 8:
            body += _pad((layer.w.astype(np.int16) + 128).astype("u1").tobytes())
        else:
            body += _pad(layer.w.astype("<i2").tobytes())
        if layer.has_bias:
            body += layer.b.astype("<i4").tobytes()
        body += layer.mult.astype("<i4").tobytes()
        body += _pad(layer.shift.astype("u1").tobytes())
        body += layer.w_scale.astype("<f4").tobytes()
        assert len(body) - start == size, (len(body) - start, size)
    fsize = HEADER_SIZE + len(body) + 4
    head = _HEADER.pack(
        MAGIC,
        file_version(model),
        HEADER_SIZE,
        fsize,
        len(model.layers),
        model.n_inputs,
        model.n_outputs,
        model.max_width,
        model.in_lo,
        model.in_hi,
        model.out_scale,
        model.error_bound,
        0,
    )
    data = head + bytes(body)
    return data + struct.pack("<I", zlib.crc32(data))


def save(model: QuantModel, path: str | Path) -> int:
    """Write model to path; returns the number of bytes written."""
    data = to_bytes(model)
    Path(path).write_bytes(data)
    return len(data)


class _Cursor:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        got = max(0, min(n, len(self.data) - self.pos))
        if got != n:
            raise ModelFileError(
                f"truncated at offset {self.pos}: {what} needs {n} bytes, got {got}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        raw = self.take(count * itemsize, what)
        pad = -(count * itemsize) & 3
        if pad:
            self.take(pad, what + " padding")
        return np.frombuffer(raw, dtype=dtype).copy()


def running_sum_bound(w_bits: int, b: np.ndarray | None, n_in: int, x_max: int) -> int:
    """Bound of the engine's running sum for 8-bit (offset-binary) weights.

    The kernels start from b - 128 * sum(x) and add u * x = (w + 128) * x term by
    term, so a running sum is b + (a prefix of w x) - 128 (the rest of x), within
    max|b| + 128 * n_in * max|x|; one product u * x (u <= 255) is within
    256 * max|x|, hence the factor max(n_in, 2). 16-bit weights are plain: 0 (the
    accumulator bound covers them).
    """
    if w_bits != 8:
        return 0
    b_max = int(np.abs(b.astype(np.int64)).max()) if b is not None else 0
    return b_max + 128 * max(n_in, 2) * int(x_max)


def positive_finite(bits: int) -> bool:
    """Whether float32 bits are a positive finite number (the board's test, on integers)."""
    return 0 < bits < F32_INF


def _check_layer_header(bad, h: tuple, n_in_expected: int, version: int) -> None:
    (size, n_in, n_out, w_bits, flags, act, res11, lo, hi, bound, _in_scale, _out_scale, _err,
     slope_mult, slope_shift, res39) = h
    if n_in != n_in_expected:
        raise bad(f"n_in is {n_in}, expected {n_in_expected}")
    if n_out < 1:
        raise bad("n_out is 0")
    if w_bits not in (8, 16):
        raise bad(f"weight bits {w_bits}, expected 8 or 16")
    if act not in ACT_NAMES:
        raise bad(f"unknown activation code {act}")
    if act == ACT_LEAKY:
        if not (1 <= slope_mult < SLOPE_LIMIT and slope_shift <= 20):
            raise bad(f"LeakyReLU slope {slope_mult} / 2**{slope_shift} is out of range")
    elif slope_mult or slope_shift:
        raise bad(f"slope fields are {slope_mult}, {slope_shift} without LeakyReLU, expected 0")
    if flags & ~(FLAG_BIAS | FLAG_FOLDED | FLAG_WIDE):
        raise bad(f"unknown flags 0x{flags:x}")
    if flags & (FLAG_BIAS | FLAG_FOLDED) == FLAG_FOLDED:
        raise bad("flag 0x2 (folded bias) is set without flag 0x1 (bias)")
    if flags & FLAG_WIDE and (version < 2 or w_bits != 16):
        raise bad(f"flag 0x4 (wide) needs 16-bit weights and format version 2, got "
                  f"{w_bits}-bit weights in version {version}")
    if res11 or res39:
        raise bad(f"reserved bytes are {res11}, {res39}, expected 0")
    if lo > hi:
        raise bad(f"clamp range [{lo}, {hi}] is empty")
    if lo <= -SMALL_INT or hi >= SMALL_INT:
        raise bad(f"clamp range [{lo}, {hi}] reaches 2**30")
    if bound >= SMALL_INT:
        raise bad(f"accumulator bound {bound} is not below 2**30")


def _read_layer(
    cur: _Cursor, index: int, n_in_expected: int, x_max: int, real_size: int, version: int
) -> tuple[QuantLayer, int]:
    """One layer record, checked; and its output scale's float32 bits."""
    at = cur.pos
    raw = cur.take(LAYER_HEADER_SIZE, f"layer {index} header")
    h = _LAYER.unpack(raw)
    (size, n_in, n_out, w_bits, flags, act, _, lo, hi, bound, in_scale, out_scale, err,
     slope_mult, slope_shift, _) = h

    def bad(msg: str) -> ModelFileError:
        return ModelFileError(f"layer {index} at offset {at}: {msg}")

    _check_layer_header(bad, h, n_in_expected, version)
    has_bias = bool(flags & FLAG_BIAS)
    wide = bool(flags & FLAG_WIDE)
    expect = layer_size(n_in, n_out, w_bits, has_bias)
    if size != expect:
        raise bad(f"size field is {size}, expected {expect}")
    if at + size + 4 > real_size:  # before anything is read or allocated
        raise bad(f"{size} bytes run past the file size {real_size}")
    wtype = "u1" if w_bits == 8 else "<i2"
    w = cur.array(wtype, n_in * n_out, f"layer {index} weights").reshape(n_out, n_in)
    w = (w.astype(np.int16) - 128).astype(np.int8) if w_bits == 8 else w
    b = cur.array("<i4", n_out, f"layer {index} bias") if has_bias else None
    # The stored bound is a cross-check, not a premise: every channel's worst case
    # is recomputed from its weights and bias, as the board does.
    per_row = channel_bounds(w, b, x_max, wide)
    over = np.nonzero(per_row > bound)[0]
    if len(over):
        c = int(over[0])
        raise bad(f"channel {c} can reach {int(per_row[c])}, above the recorded accumulator "
                  f"bound {bound}")
    if wide:
        sums = wide_sums_bound(w, b, x_max)
        if sums >= SMALL_INT:
            raise bad(f"a sum of the inputs' bytes can reach {sums} >= 2**30 (wide layer)")
    run = running_sum_bound(w_bits, b, n_in, x_max)
    if run >= SMALL_INT:
        raise bad(f"running sum can reach {run} >= 2**30 (8-bit weights are offset by 128)")
    mult = cur.array("<i4", n_out, f"layer {index} multipliers")
    shift = cur.array("u1", n_out, f"layer {index} shifts")
    w_scale = cur.array("<f4", n_out, f"layer {index} weight scales")
    for o in range(n_out):
        m, s = int(mult[o]), int(shift[o])
        if not requant_ok(bound, m, s):
            raise bad(f"requantizer of channel {o} (mult {m}, shift {s}) can reach 2**30")
    layer = QuantLayer(
        w=w,
        b=b,
        mult=mult,
        shift=shift,
        lo=lo,
        hi=hi,
        act=act,
        acc_bound=bound,
        in_scale=in_scale,
        out_scale=out_scale,
        w_scale=w_scale,
        w_bits=w_bits,
        error_bound=err,
        bias_note="folded" if flags & FLAG_FOLDED else "",
        slope_mult=slope_mult if act == ACT_LEAKY else 0,
        slope_shift=slope_shift if act == ACT_LEAKY else 0,
        wide=wide,
    )
    return layer, struct.unpack_from("<I", raw, 28)[0]


def _check_header(head: tuple, out_bits: int, real_size: int) -> None:
    (magic, version, hsize, fsize, n_layers, _n_inputs, _n_outputs, _width, in_lo, in_hi,
     _out_scale, _error_bound, reserved) = head
    if magic != MAGIC:
        raise ModelFileError(f"offset 0: bad magic {magic!r}, expected {MAGIC!r}")
    if version not in VERSIONS:
        raise ModelFileError(
            f"offset 4: format version {version}, this engine reads versions 1 and 2"
        )
    if hsize != HEADER_SIZE:
        raise ModelFileError(f"offset 6: header size {hsize}, expected {HEADER_SIZE}")
    if fsize != real_size:
        raise ModelFileError(f"offset 8: size field is {fsize}, the file has {real_size} bytes")
    if n_layers < 1:
        raise ModelFileError("offset 12: model has no layers")
    if in_lo > in_hi:
        raise ModelFileError(f"offset 20: input range [{in_lo}, {in_hi}] is empty")
    if in_lo <= -ZERO_REACH or in_hi >= ZERO_REACH:
        raise ModelFileError(f"offset 20: input range [{in_lo}, {in_hi}] reaches 2**29")
    if not positive_finite(out_bits):
        raise ModelFileError(
            f"offset 28: output scale 0x{out_bits:08x} is not a positive finite float32"
        )
    if reserved:
        raise ModelFileError(f"offset 36: reserved field is {reserved}, expected 0")


def from_bytes(data: bytes) -> QuantModel:
    """Parse and check a model file's bytes (raises ModelFileError)."""
    cur = _Cursor(bytes(data))
    real_size = len(cur.data)
    raw = cur.take(HEADER_SIZE, "header")
    head = _HEADER.unpack(raw)
    out_bits = struct.unpack_from("<I", raw, 28)[0]  # bits, not a float: NaN payloads kept
    _check_header(head, out_bits, real_size)
    n_layers, n_inputs, n_outputs, width, in_lo, in_hi = head[4:10]
    error_bound = head[11]
    in_scale = cur.array("<f4", n_inputs, "input table")
    for i, bits in enumerate(in_scale.view("<u4").tolist()):
        if not positive_finite(bits):
            raise ModelFileError(
                f"offset {HEADER_SIZE + 4 * i}: input scale {i} is 0x{bits:08x}, "
                f"not a positive finite float32"
            )
    in_zero = cur.array("<i4", n_inputs, "input table")
    for i, z in enumerate(in_zero.tolist()):
        # net.quantize on the board counts up to the range's edges from the zero point
        if in_hi - z >= ZERO_REACH or z - in_lo >= ZERO_REACH:
            raise ModelFileError(
                f"offset {HEADER_SIZE + 4 * (n_inputs + i)}: input zero point {i} is {z}, "
                f"2**29 or more from the input range [{in_lo}, {in_hi}]"
            )
    layers = []
    n_in = n_inputs
    x_max = max(-in_lo, in_hi)
    for i in range(n_layers):
        layer, last_bits = _read_layer(cur, i, n_in, x_max, real_size, head[1])
        layers.append(layer)
        n_in = layers[-1].n_out
        x_max = max(-layers[-1].lo, layers[-1].hi)
    if n_in != n_outputs:
        raise ModelFileError(f"offset 16: header says {n_outputs} outputs, last layer has {n_in}")
    widest = max([n_inputs] + [layer.n_out for layer in layers])
    if width != widest:
        raise ModelFileError(f"offset 18: widest layer field is {width}, expected {widest}")
    if out_bits != last_bits:
        raise ModelFileError(
            f"offset 28: output scale 0x{out_bits:08x} differs from the last layer's "
            f"0x{last_bits:08x}"
        )
    at = cur.pos
    crc = zlib.crc32(cur.data[:at])
    (stored,) = struct.unpack("<I", cur.take(4, "CRC"))
    if stored != crc:
        raise ModelFileError(
            f"offset {at}: CRC mismatch, stored 0x{stored:08x}, computed 0x{crc:08x}"
        )
    if cur.pos != len(cur.data):
        raise ModelFileError(f"offset {at + 4}: unexpected data after the CRC")
    return QuantModel(
        layers=layers,
        in_scale=in_scale,
        in_zero=in_zero,
        in_lo=in_lo,
        in_hi=in_hi,
        error_bound=error_bound,
    )


def channel_bounds(w: np.ndarray, b: np.ndarray | None, x_max: int,
                   wide: bool = False) -> np.ndarray:
    """Each channel's worst-case |acc| over inputs with |x_i| <= x_max: sum|w_c| x_max + |b_c|
    (a wide layer: ceil(sum|w_c| x_max / 256) + |b_c|)."""
    per_row = np.abs(w.astype(np.int64)).sum(axis=1) * int(x_max)
    if wide:
        per_row = (per_row + (1 << WIDE_SHIFT) - 1) >> WIDE_SHIFT
    if b is not None:
        per_row = per_row + np.abs(b.astype(np.int64))
    return per_row


def accumulator_bound(w: np.ndarray, b: np.ndarray | None, x_max: int,
                      wide: bool = False) -> int:
    """Worst-case |acc| over all inputs with |x_i| <= x_max: max_c sum|w_c| * x_max + |b_c|."""
    return int(channel_bounds(w, b, x_max, wide).max())


def load(path: str | Path) -> QuantModel:
    """Read and check a model file; errors name the file, the offset and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return from_bytes(data)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
