# micromlp: fixed-point MLP inference for MicroPython (and CPython).
#
# One file, integer arithmetic only, MicroPython 1.9-era syntax (no f-strings),
# so it runs unchanged from a 16 KB micro:bit to CPython. The file format is
# described in docs/format.md; the host twin of this loader is
# micromlp/export/modelfile.py and must raise the same messages.
#
#   import micromlp
#   net = micromlp.load('model.mlp')
#   out = net.run(x_int)        # list/array of quantized input ints
#   label = net.predict(x_int)

import struct
from array import array

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    from binascii import crc32 as _crc32
except ImportError:
    _crc32 = None

# File layout constants (docs/format.md).
_MAGIC = b"MMLP"
_VERSION = const(1)
_HEADER_SIZE = const(40)
_LAYER_HEADER_SIZE = const(36)
_ACT_NONE = const(0)
_ACT_RELU = const(1)
_FLAG_BIAS = const(1)
_FLAG_FOLDED = const(2)  # informational: the bias came from folding
_SMALL = const(0x40000000)  # 2**30: every value the engine forms stays below this

VERSION = "0.1.0"


class ModelError(ValueError):
    pass


def _soft_crc32(data, crc):
    # Bitwise CRC-32 (zlib polynomial) for ports built without binascii.crc32.
    crc = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xEDB88320
            else:
                crc >>= 1
    return crc ^ 0xFFFFFFFF


class _Reader:
    # Reads a model stream in order, tracking the byte offset and the CRC.

    def __init__(self, f):
        self.f = f
        self.pos = 0
        self.crc = 0
        self.crc_fn = _crc32 or _soft_crc32

    def fill(self, buf, nbytes, what):
        got = self.f.readinto(buf)
        if got is None:
            got = 0
        if got != nbytes:
            raise ModelError(
                "truncated at offset %d: %s needs %d bytes, got %d"
                % (self.pos, what, nbytes, got)
            )
        self.crc = self.crc_fn(buf, self.crc)
        self.pos += nbytes
        return buf

    def array(self, typecode, count, itemsize, what):
        nbytes = count * itemsize
        buf = array(typecode, bytes(nbytes))
        self.fill(buf, nbytes, what)
        pad = (-nbytes) & 3
        if pad:
            self.fill(bytearray(pad), pad, what + " padding")
        return buf

    def skip(self, nbytes, what):
        # Metadata the board does not need: read through it for the CRC only,
        # in small chunks; a short read is reported for the whole section.
        start = self.pos
        chunk = bytearray(32)
        left = nbytes
        while left > 0:
            if left < 32:
                chunk = bytearray(left)
            got = self.f.readinto(chunk) or 0
            if got != len(chunk):
                raise ModelError(
                    "truncated at offset %d: %s needs %d bytes, got %d"
                    % (start, what, nbytes, self.pos - start + got)
                )
            self.crc = self.crc_fn(chunk, self.crc)
            self.pos += got
            left -= got


class Layer:
    """One Linear (+ optional ReLU) layer in integer form."""

    def __init__(self, n_in, n_out, w, b, mult, shift, lo, hi, relu):
        self.n_in = n_in
        self.n_out = n_out
        self.w = w  # array('b') or array('h'), row-major [n_out][n_in]
        self.b = b  # array('i') or None when the layer has no bias
        self.mult = mult
        self.shift = shift
        self.rnd = array("i", [(1 << (s - 1)) if s else 0 for s in shift])
        self.lo = lo
        self.hi = hi
        self.relu = relu
        self.y = array("i", bytes(4 * n_out))

    def __repr__(self):
        return "Layer(%d->%d%s%s)" % (
            self.n_in,
            self.n_out,
            "" if self.b is None else ", bias",
            ", relu" if self.relu else "",
        )


def _linear(x, layer, y):
    # The portable kernel: y = clamp(round((W x + b) * mult / 2**shift)).
    # Rounding is half up: (v + 2**(shift-1)) >> shift, Python's >> floors.
    w = layer.w
    b = layer.b
    mult = layer.mult
    rnd = layer.rnd
    shift = layer.shift
    lo = layer.lo
    hi = layer.hi
    k = 0
    for o in range(layer.n_out):
        acc = 0 if b is None else b[o]
        for xv in x:
            acc += w[k] * xv
            k += 1
        acc = (acc * mult[o] + rnd[o]) >> shift[o]
        if acc < lo:
            acc = lo
        elif acc > hi:
            acc = hi
        y[o] = acc


class Net:
    """A loaded model: run(x) maps quantized input ints to output ints."""

    def __init__(self, layers, in_lo, in_hi, out_scale):
        self.layers = layers
        self.n_inputs = layers[0].n_in
        self.n_outputs = layers[-1].n_out
        self.in_lo = in_lo
        self.in_hi = in_hi
        self.out_scale = out_scale
        self.x = array("i", bytes(4 * self.n_inputs))

    def __repr__(self):
        return "Net(%s)" % ", ".join([repr(layer) for layer in self.layers])

    def run(self, x, out=None):
        """Integer outputs for the integer inputs x; allocation-free when out is given."""
        if len(x) != self.n_inputs:
            raise ValueError("expected %d inputs, got %d" % (self.n_inputs, len(x)))
        if out is None:
            out = array("i", bytes(4 * self.n_outputs))
        # Clamp inputs to the declared range: the overflow proof assumes it.
        xq = self.x
        lo = self.in_lo
        hi = self.in_hi
        for i in range(self.n_inputs):
            v = x[i]
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            xq[i] = v
        layers = self.layers
        last = len(layers) - 1
        for i in range(last + 1):
            layer = layers[i]
            y = out if i == last else layer.y
            _linear(xq, layer, y)
            xq = y
        return out

    def predict(self, x):
        """Index of the largest output (the first one on a tie)."""
        out = self.run(x, self.layers[-1].y)
        best = 0
        for i in range(1, self.n_outputs):
            if out[i] > out[best]:
                best = i
        return best

    def dequantize(self, out):
        """Output ints as floats (allocates; not for the hot loop)."""
        return [v * self.out_scale for v in out]


def _read_layer(r, index, n_in_expected, fsize):
    at = r.pos
    h = r.fill(bytearray(_LAYER_HEADER_SIZE), _LAYER_HEADER_SIZE, "layer %d header" % index)
    size, n_in, n_out, w_bits, flags, act, _, lo, hi, bound = struct.unpack(
        "<IHHBBBBiiI", h[:24]
    )

    def bad(msg):
        return ModelError("layer %d at offset %d: %s" % (index, at, msg))

    if n_in != n_in_expected:
        raise bad("n_in is %d, expected %d" % (n_in, n_in_expected))
    if n_out < 1:
        raise bad("n_out is 0")
    if w_bits not in (8, 16):
        raise bad("weight bits %d, expected 8 or 16" % w_bits)
    if act not in (_ACT_NONE, _ACT_RELU):
        raise bad("unknown activation code %d" % act)
    if flags & ~(_FLAG_BIAS | _FLAG_FOLDED):
        raise bad("unknown flags 0x%x" % flags)
    if lo > hi:
        raise bad("clamp range [%d, %d] is empty" % (lo, hi))
    if bound >= _SMALL:
        raise bad("accumulator bound %d is not below 2**30" % bound)
    wsize = w_bits // 8
    has_bias = flags & _FLAG_BIAS
    expect = (
        _LAYER_HEADER_SIZE
        + ((n_in * n_out * wsize + 3) & ~3)
        + (4 * n_out if has_bias else 0)
        + 4 * n_out
        + ((n_out + 3) & ~3)
        + 4 * n_out
    )
    if size != expect:
        raise bad("size field is %d, expected %d" % (size, expect))
    if at + size + 4 > fsize:
        raise bad("%d bytes run past the file size %d" % (size, fsize))
    w = r.array("b" if wsize == 1 else "h", n_in * n_out, wsize, "layer %d weights" % index)
    b = r.array("i", n_out, 4, "layer %d bias" % index) if has_bias else None
    mult = r.array("i", n_out, 4, "layer %d multipliers" % index)
    shift = r.array("B", n_out, 1, "layer %d shifts" % index)
    r.skip(4 * n_out, "layer %d weight scales" % index)
    for o in range(n_out):
        m = mult[o]
        s = shift[o]
        # The exporter proved |acc * mult| + 2**(shift-1) < 2**30; recheck its arithmetic.
        if m < 1 or s > 30 or bound * m + ((1 << (s - 1)) if s else 0) >= _SMALL:
            raise bad("requantizer of channel %d (mult %d, shift %d) can reach 2**30" % (o, m, s))
    return Layer(n_in, n_out, w, b, mult, shift, lo, hi, act == _ACT_RELU)


def _read(f):
    r = _Reader(f)
    h = r.fill(bytearray(_HEADER_SIZE), _HEADER_SIZE, "header")
    magic = bytes(h[0:4])
    if magic != _MAGIC:
        raise ModelError("offset 0: bad magic %r, expected %r" % (magic, _MAGIC))
    version, hsize, fsize, n_layers, n_inputs, n_outputs, width, in_lo, in_hi = struct.unpack(
        "<HHIHHHHii", h[4:28]
    )
    if version != _VERSION:
        raise ModelError(
            "offset 4: format version %d, this engine reads version %d" % (version, _VERSION)
        )
    if hsize != _HEADER_SIZE:
        raise ModelError("offset 6: header size %d, expected %d" % (hsize, _HEADER_SIZE))
    if n_layers < 1:
        raise ModelError("offset 12: model has no layers")
    if in_lo > in_hi:
        raise ModelError("offset 20: input range [%d, %d] is empty" % (in_lo, in_hi))
    out_scale = struct.unpack("<f", h[28:32])[0]
    r.skip(8 * n_inputs, "input table")
    layers = []
    n_in = n_inputs
    for i in range(n_layers):
        layer = _read_layer(r, i, n_in, fsize)
        layers.append(layer)
        n_in = layer.n_out
    if n_in != n_outputs:
        raise ModelError("offset 16: header says %d outputs, last layer has %d" % (n_outputs, n_in))
    crc = r.crc & 0xFFFFFFFF
    at = r.pos
    tail = bytearray(4)
    got = f.readinto(tail) or 0
    if got != 4:
        raise ModelError("truncated at offset %d: CRC needs 4 bytes, got %d" % (at, got))
    stored = struct.unpack("<I", tail)[0]
    if stored != crc:
        raise ModelError(
            "offset %d: CRC mismatch, stored 0x%08x, computed 0x%08x" % (at, stored, crc)
        )
    if at + 4 != fsize:
        raise ModelError("offset 8: size field is %d, model ends at %d" % (fsize, at + 4))
    if f.read(1):
        raise ModelError("offset %d: unexpected data after the CRC" % (at + 4))
    return Net(layers, in_lo, in_hi, out_scale)


def load(src):
    """Load a model from a path, an open binary file, or a module holding MODEL bytes."""
    if isinstance(src, str):
        f = open(src, "rb")
        try:
            return _read(f)
        finally:
            f.close()
    if hasattr(src, "readinto"):
        return _read(src)
    if hasattr(src, "MODEL"):
        try:
            from io import BytesIO
        except ImportError:
            from uio import BytesIO
        return _read(BytesIO(src.MODEL))
    raise TypeError("load() takes a path, a binary file or a model module")
