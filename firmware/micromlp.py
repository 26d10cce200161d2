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
#
# Kernels: 'viper' and 'native' live in micromlp_viper.py (ports without the
# viper emitter cannot even compile that file); 'portable' is below. All three
# compute the same integers.

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

try:
    import micromlp_viper as _fast
except (ImportError, SyntaxError, NameError):
    _fast = None

# File layout constants (docs/format.md).
_MAGIC = b"MMLP"
_VERSION = const(1)
_HEADER_SIZE = const(40)
_LAYER_HEADER_SIZE = const(40)
_ACT_NONE = const(0)
_ACT_RELU = const(1)
_ACT_CLAMP = const(2)  # ReLU6, Hardtanh: the clamp [lo, hi] is the activation
_ACT_LEAKY = const(3)  # LeakyReLU: negative values times slope_mult / 2**slope_shift
_FLAG_BIAS = const(1)
_FLAG_FOLDED = const(2)  # informational: the bias came from folding
_SMALL = const(0x40000000)  # 2**30: every value the engine forms stays below this

# A layer's parameters as one int32 array q, shared by every kernel:
# q[0..14] = n_in, n_out, lo, hi, has_bias, first row, end row, weight offset,
# 32 on 64-bit ports (viper sign-extends 32-bit loads with it) else 0, weight
# zero point (128 for 8-bit weights, stored offset-binary, else 0), the same
# shift for the inputs (0 when they are never negative), LeakyReLU's slope_mult
# (0: no LeakyReLU), slope_shift, its rounding term, and the floor a negative
# value is clamped to before the slope multiplies it; then per channel c at
# 15 + 4*c: bias, mult, rnd, shift; rnd = 2**(shift-1) (0 for shift 0), or from
# shift 15 on, 2**(shift-16) (0 for shift 15), the rounding term above bit 15.
_Q = const(15)

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


_ACC = [0, 0, 0, 0]  # the portable kernel's accumulators, handed to its epilogue


def _linear(x, w, q, y):
    # The portable kernel: rows q[5]..q[6]-1 of y = clamp(round((W x + b) * mult
    # / 2**shift)), weights of row q[5] at w[q[7]]. 8-bit weights are stored as
    # u = w + 128, so sum(w x) = sum(u x) - 128 sum(x): plain bytes, no sign
    # fix per multiply. Four rows share each pass over x, which saves loop steps
    # and index updates per multiply-add, and a zero input (ReLU makes many)
    # skips its four multiply-adds; the rest go one row at a time.
    n = q[0]
    lo = q[2]
    hi = q[3]
    bias = q[4]
    o = q[5]
    end = q[6]
    k = q[7]
    s = 0
    if q[9]:
        for xv in x:
            s += xv
        s *= q[9]
    lm = q[11]
    ls = q[12]
    lr = q[13]
    lf = q[14]
    n2 = n + n
    n3 = n2 + n
    acc = _ACC
    while o < end:
        j = _Q + 4 * o
        if o + 3 < end:
            a0 = a1 = a2 = a3 = -s
            if bias:
                a0 += q[j]
                a1 += q[j + 4]
                a2 += q[j + 8]
                a3 += q[j + 12]
            for xv in x:
                if xv:
                    a0 += w[k] * xv
                    a1 += w[k + n] * xv
                    a2 += w[k + n2] * xv
                    a3 += w[k + n3] * xv
                k += 1
            acc[0] = a0
            acc[1] = a1
            acc[2] = a2
            acc[3] = a3
            k += n3
            rows = 4
        else:
            a0 = (q[j] if bias else 0) - s
            for xv in x:
                a0 += w[k] * xv
                k += 1
            acc[0] = a0
            rows = 1
        # Requantize: round half up ((v + 2**(shift-1)) >> shift; >> floors), clamp.
        # From shift 15 on, v splits at bit 15 so no product reaches 2**30:
        # v * m + 2**(sh-1) == ((v >> 15) * m + r) * 2**15 + (v & 32767) * m + r_lo,
        # r = 2**(sh-16) (0 at sh 15) from q, r_lo = 2**14 at sh 15 (else 0).
        for t in range(rows):
            v = acc[t]
            m = q[j + 1]
            r = q[j + 2]
            sh = q[j + 3]
            if sh < 15:
                v = (v * m + r) >> sh
            else:
                v = (
                    (v >> 15) * m + r + (((v & 32767) * m + (16384 if sh == 15 else 0)) >> 15)
                ) >> (sh - 15)
            if v < 0 and lm:  # LeakyReLU
                if v < lf:
                    v = lf
                v = (v * lm + lr) >> ls
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            y[o] = v
            o += 1
            j += 4


def _prep(x, xq, b):
    # xq = x clamped to [b[1], b[2]]
    lo = b[1]
    hi = b[2]
    for i in range(b[0]):
        v = x[i]
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
        xq[i] = v


def _copy(y, out, b):
    for i in range(b[4]):
        out[i] = y[i]


KERNELS = ("viper", "native", "portable")


def _kernel(name, wsize):
    # The kernel function for a layer: name None picks the fastest this port has.
    if name is None:
        name = "viper" if _fast else "portable"
    if name == "portable":
        return _linear
    if name not in KERNELS:
        raise ValueError("unknown kernel %r, expected one of %r" % (name, KERNELS))
    if _fast is None:
        raise ValueError("kernel %r needs micromlp_viper.py and a port with viper" % name)
    if name == "viper":
        return _fast.linear8 if wsize == 1 else _fast.linear16
    return _fast.linear_native


class Layer:
    """One Linear (+ optional ReLU) layer in integer form."""

    def __init__(self, q, w, wsize, relu, fn, typed):
        self.q = q
        self.n_in = q[0]
        self.n_out = q[1]
        self.has_bias = q[4]
        self.w = w  # bytes-like (8-bit weights, offset by 128) or array('h') (16-bit)
        self.wsize = wsize
        self.relu = relu
        self.fn = fn
        self.w_pos = 0  # streaming: where the weights start in the file
        # Outputs: an array for viper (ptr32), a list for the bytecode kernels
        # (faster to iterate); either way made once, here.
        self.y = array("i", bytes(4 * self.n_out)) if typed else [0] * self.n_out

    def __repr__(self):
        return "Layer(%d->%d%s%s)" % (
            self.n_in,
            self.n_out,
            ", bias" if self.has_bias else "",
            ", relu" if self.relu else "",
        )


class Net:
    """A loaded model: run(x) maps quantized input ints to output ints."""

    def __init__(self, layers, in_lo, in_hi, out_scale, kernel):
        self.layers = layers
        self.n_inputs = layers[0].n_in
        self.n_outputs = layers[-1].n_out
        self.in_lo = in_lo
        self.in_hi = in_hi
        self.out_scale = out_scale
        self.kernel = kernel
        self.stream = None  # the open model file when weights stay on storage
        fast = _fast if kernel == "viper" else None
        self.x = array("i", bytes(4 * self.n_inputs)) if fast else [0] * self.n_inputs
        # what run() needs, gathered once: the input clamp, each layer's kernel
        # call, and the copy of the result
        self.prep = fast.prep if fast else _prep
        self.copy = fast.copy if fast else _copy
        # viper sign-extends 32-bit loads on 64-bit ports where values can be < 0
        sx = 32 if fast and _word_bits() == 64 else 0
        self.bounds = array(
            "i",
            [
                self.n_inputs,
                in_lo,
                in_hi,
                sx if in_lo < 0 else 0,
                self.n_outputs,
                sx if layers[-1].q[2] < 0 else 0,
            ],
        )
        self.plan = None

    def _ready(self):
        # Each layer's kernel call, gathered once its weights are in place.
        self.plan = tuple([(layer.fn, layer.w, layer.q, layer.y) for layer in self.layers])
        return self

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
        self.prep(x, xq, self.bounds)
        if self.stream is None:
            for fn, w, q, y in self.plan:
                fn(xq, w, q, y)
                xq = y
        else:
            for layer in self.layers:
                self._stream_layer(xq, layer)
                xq = layer.y
        self.copy(xq, out, self.bounds)
        return out

    def _stream_layer(self, x, layer):
        # Weights stay in the file: read a block of rows at a time into the one
        # preallocated buffer and run the kernel on just those rows.
        f = self.stream
        q = layer.q
        n_out = layer.n_out
        row_bytes = layer.n_in * layer.wsize
        rows = self.chunk_bytes // row_bytes
        w = self.chunk8 if layer.wsize == 1 else self.chunk16
        o = 0
        while o < n_out:
            end = o + rows
            if end > n_out:
                end = n_out
            f.seek(layer.w_pos + o * row_bytes)
            f.readinto(w)
            q[5] = o
            q[6] = end
            layer.fn(x, w, q, layer.y)
            o = end
        q[5] = 0
        q[6] = n_out

    def predict(self, x):
        """Index of the largest output (the first one on a tie); allocation-free."""
        self.run(x, self.layers[-1].y)
        out = self.layers[-1].y
        best = 0
        for i in range(1, self.n_outputs):
            if out[i] > out[best]:
                best = i
        return best

    def dequantize(self, out):
        """Output ints as floats (allocates; not for the hot loop)."""
        return [v * self.out_scale for v in out]

    def close(self):
        """Close the model file of a streaming net."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class _Reader:
    # Reads a model stream in order, tracking the byte offset and the CRC.

    def __init__(self, f):
        self.f = f
        self.pos = 0
        self.crc = 0
        self.crc_fn = _crc32 or _soft_crc32
        self.scratch = bytearray(32)

    def fill(self, buf, what, nbytes=0):
        # nbytes: the size in bytes when buf is a typed array (len counts items)
        nbytes = nbytes or len(buf)
        got = self.f.readinto(buf) or 0
        if got != nbytes:
            raise ModelError(
                "truncated at offset %d: %s needs %d bytes, got %d" % (self.pos, what, nbytes, got)
            )
        self.crc = self.crc_fn(buf, self.crc)
        self.pos += got
        return buf

    def skip(self, nbytes, what):
        # Read through a section without keeping it (the CRC covers it), in small
        # chunks; a short read is reported for the whole section.
        start = self.pos
        chunk = self.scratch
        left = nbytes
        while left > 0:
            if left < len(chunk):
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

    def array(self, typecode, count, itemsize, what, keep=True):
        # A typed array read straight from the stream; 'B' is a bytearray,
        # which (unlike array()) needs no zeroed temporary copy to create.
        nbytes = count * itemsize
        buf = None
        if keep:
            buf = bytearray(nbytes) if typecode == "B" else array(typecode, bytes(nbytes))
            self.fill(buf, what, nbytes)
        else:
            self.skip(nbytes, what)
        pad = (-nbytes) & 3
        if pad:
            self.fill(bytearray(pad), what + " padding")
        return buf


def _read_layer(r, index, n_in_expected, x_max, fsize, keep, sx, xsx):
    # keep: bit 0 keeps 8-bit weights in RAM, bit 1 keeps 16-bit ones.
    at = r.pos
    h = r.fill(bytearray(_LAYER_HEADER_SIZE), "layer %d header" % index)
    size, n_in, n_out, w_bits, flags, act, _, lo, hi, bound = struct.unpack("<IHHBBBBiiI", h[:24])
    sm, ss = struct.unpack("<HB", h[36:39])

    def bad(msg):
        return ModelError("layer %d at offset %d: %s" % (index, at, msg))

    if n_in != n_in_expected:
        raise bad("n_in is %d, expected %d" % (n_in, n_in_expected))
    if n_out < 1:
        raise bad("n_out is 0")
    if w_bits not in (8, 16):
        raise bad("weight bits %d, expected 8 or 16" % w_bits)
    if act not in (_ACT_NONE, _ACT_RELU, _ACT_CLAMP, _ACT_LEAKY):
        raise bad("unknown activation code %d" % act)
    if act == _ACT_LEAKY and not (1 <= sm < 8192 and ss <= 20):
        raise bad("LeakyReLU slope %d / 2**%d is out of range" % (sm, ss))
    if act != _ACT_LEAKY:
        sm = ss = 0
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
    w_pos = r.pos
    w = r.array(
        "B" if wsize == 1 else "h", n_in * n_out, wsize, "layer %d weights" % index, keep & wsize
    )
    zw = 128 if wsize == 1 else 0
    q = array("i", bytes(4 * (_Q + 4 * n_out)))
    # LeakyReLU: below lf a negative value would make sm * v reach 2**30
    lr = (1 << (ss - 1)) if ss else 0
    lf = -((1 << 30) // sm - 1) if sm else 0
    for i, v in enumerate((n_in, n_out, lo, hi, has_bias, 0, n_out, 0, sx, zw, xsx, sm, ss, lr,
                           lf)):
        q[i] = v
    b_max = 0
    if has_bias:
        b = r.array("i", n_out, 4, "layer %d bias" % index)
        for c in range(n_out):
            q[_Q + 4 * c] = b[c]
            b_max = max(b_max, abs(b[c]))
        b = None
    # Offset-binary weights: a running sum is b + (some w x) - 128 (the other x),
    # so it stays within max|b| + 128 n max|x|; check that here, on the board.
    run = b_max + zw * n_in * x_max
    if run >= _SMALL:
        raise bad("running sum can reach %d >= 2**30 (8-bit weights are offset by 128)" % run)
    mult = r.array("i", n_out, 4, "layer %d multipliers" % index)
    shift = r.array("B", n_out, 1, "layer %d shifts" % index)
    r.skip(4 * n_out, "layer %d weight scales" % index)
    for c in range(n_out):
        m = mult[c]
        s = shift[c]
        # Recheck the exporter's arithmetic: no product may reach 2**30. From shift
        # 15 on the kernels split the accumulator (mult < 2**14; rnd keeps the
        # rounding term's part above bit 15); below it they multiply it whole.
        if s >= 15:
            rnd = (1 << (s - 16)) if s > 15 else 0
            ok = m < 16384
        else:
            rnd = (1 << (s - 1)) if s else 0
            ok = bound * m + rnd < _SMALL
        if m < 1 or s > 45 or not ok:
            raise bad("requantizer of channel %d (mult %d, shift %d) can reach 2**30" % (c, m, s))
        j = _Q + 4 * c
        q[j + 1] = m
        q[j + 2] = rnd
        q[j + 3] = s
    return q, w, w_pos, wsize, act == _ACT_RELU


def _read(f, kernel, keep):
    # Parse and check a whole model stream; returns the Net and each layer's
    # weight offset (for streaming and zero-copy use).
    r = _Reader(f)
    h = r.fill(bytearray(_HEADER_SIZE), "header")
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
    sx = 32 if _word_bits() == 64 else 0
    layers = []
    n_in = n_inputs
    x_max = max(-in_lo, in_hi)
    x_lo = in_lo
    for i in range(n_layers):
        # viper sign-extends inputs only where they can be negative
        q, w, w_pos, wsize, relu = _read_layer(
            r, i, n_in, x_max, fsize, keep, sx, sx if x_lo < 0 else 0
        )
        x_max = max(-q[2], q[3])
        x_lo = q[2]
        layer = Layer(q, w, wsize, relu, _kernel(kernel, wsize), kernel == "viper")
        layer.w_pos = w_pos
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
    return Net(layers, in_lo, in_hi, out_scale, kernel)


def _word_bits():
    # 64 on the unix port and CPython, 32 on MCUs: viper's int is one machine word.
    try:
        import sys

        return 64 if sys.maxsize > 0x7FFFFFFF else 32
    except (ImportError, AttributeError):
        return 32


def _pick(kernel):
    if kernel is None:
        return "viper" if _fast else "portable"
    _kernel(kernel, 1)  # raises for an unknown or unavailable kernel
    return kernel


def load(src, kernel=None, stream=False, chunk=2048):
    """Load a model from a path, an open binary file, or a module holding MODEL bytes.

    kernel: 'viper', 'native' or 'portable' (default: the fastest this port has).
    stream=True keeps the weights in the file (path or file only) and reads
    `chunk` bytes of them at a time (at least four rows of the widest layer):
    RAM grows with layer width, not with the number of parameters.
    A module's 8-bit weights are used in place, not copied.
    """
    kernel = _pick(kernel)
    if isinstance(src, str):
        f = open(src, "rb")
        try:
            net = _read(f, kernel, 0 if stream else 3)
        except Exception:
            f.close()
            raise
        if stream:
            return _streaming(net, f, chunk)
        f.close()
        return net._ready()
    if hasattr(src, "readinto"):
        net = _read(src, kernel, 0 if stream else 3)
        return _streaming(net, src, chunk) if stream else net._ready()
    if hasattr(src, "MODEL"):
        if stream:
            raise ValueError("stream=True needs a model file, not a module")
        try:
            from io import BytesIO
        except ImportError:
            from uio import BytesIO
        # 8-bit weights are used where they are (no RAM when the module is
        # frozen or in ROMFS); 16-bit ones are copied, as they need alignment.
        data = src.MODEL
        net = _read(BytesIO(data), kernel, 2)
        for layer in net.layers:
            if layer.w is None:
                layer.w = data
                layer.q[7] = layer.w_pos
        return net._ready()
    raise TypeError("load() takes a path, a binary file or a model module")


def _streaming(net, f, chunk):
    # Streaming needs one weight buffer that holds at least one row of every layer.
    widest = 0
    sizes = 0
    for layer in net.layers:
        widest = max(widest, layer.n_in * layer.wsize)
        sizes |= layer.wsize
    net.chunk_bytes = max(chunk, 4 * widest)  # four rows: what the kernels take at once
    net.chunk8 = bytearray(net.chunk_bytes) if sizes & 1 else None
    net.chunk16 = array("h", bytes(net.chunk_bytes)) if sizes & 2 else None
    net.stream = f
    return net._ready()
