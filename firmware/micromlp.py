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
    # Inference runs with the heap locked: MicroPython then keeps a bytecode
    # function's frame on the C stack instead of allocating it (docs/format.md).
    from micropython import heap_lock as _lock
    from micropython import heap_unlock as _unlock
except ImportError:

    def _lock():
        pass

    _unlock = _lock

try:
    import micromlp_viper as _fast
except (ImportError, SyntaxError, NameError):
    _fast = None

# File layout constants (docs/format.md).
_MAGIC = b"MMLP"
_VERSION = const(2)  # reads versions 1 and 2 (2: wide layers)
_HEADER_SIZE = const(40)
_LAYER_HEADER_SIZE = const(40)
_ACT_NONE = const(0)
_ACT_RELU = const(1)
_ACT_CLAMP = const(2)  # ReLU6, Hardtanh: the clamp [lo, hi] is the activation
_ACT_LEAKY = const(3)  # LeakyReLU: negative values times slope_mult / 2**slope_shift
_FLAG_BIAS = const(1)
_FLAG_FOLDED = const(2)  # informational: the bias came from folding
_FLAG_WIDE = const(4)  # 16-bit weights times 16-bit inputs: acc = b + floor(W x / 256)
_SMALL = const(0x40000000)  # 2**30: every value the engine forms stays below this
_F32_INF = const(0x7F800000)  # float32 bits of +inf: positive finite is 0 < bits < this
_REACH = const(0x20000000)  # 2**29: inputs and their zero points stay this close to 0

# A layer's parameters as one int32 array q, shared by every kernel; its slots:
_N_IN = const(0)  # inputs
_N_OUT = const(1)  # outputs
_LO = const(2)  # the output clamp [lo, hi]
_HI = const(3)
_HAS_BIAS = const(4)
_ROW0 = const(5)  # the rows a kernel call computes: first, end (streaming: a block)
_ROW_END = const(6)
_W_OFF = const(7)  # where row _ROW0's weights start in w
_SX = const(8)  # 32 on 64-bit ports (viper sign-extends 32-bit loads with it), else 0
_W_ZERO = const(9)  # weight zero point: 128 for 8-bit weights (stored offset-binary)
_X_SX = const(10)  # _SX where this layer's inputs can be negative, else 0
_SLOPE_M = const(11)  # LeakyReLU: slope_mult (0: no LeakyReLU), slope_shift, its
_SLOPE_S = const(12)  # rounding term, and the floor a negative value is clamped to
_SLOPE_RND = const(13)  # before the slope multiplies it
_SLOPE_FLOOR = const(14)
_WIDE = const(15)  # 1: a wide layer (the dot product in the inputs' two bytes)
# then per channel c at _Q + 4*c: bias, mult, rnd, shift; rnd = 2**(shift-1) (0 for
# shift 0), or from shift 15 on, 2**(shift-16) (0 for shift 15), the rounding term
# above bit 15.
_Q = const(16)

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
    # The portable kernel: rows q[_ROW0]..q[_ROW_END]-1 of y = clamp(round((W x + b) * mult
    # / 2**shift)), weights of row q[_ROW0] at w[q[_W_OFF]]. 8-bit weights are stored as
    # u = w + 128, so sum(w x) = sum(u x) - 128 sum(x): plain bytes, no sign
    # fix per multiply. Four rows share each pass over x, which saves loop steps
    # and index updates per multiply-add, and a zero input (ReLU makes many)
    # skips its four multiply-adds; the rest go one row at a time. A wide layer
    # (16-bit weights and inputs) sums w times each input's high and low byte
    # apart, so no sum reaches 2**30: acc = b + sum(w (x >> 8)) + (sum(w (x & 255)) >> 8),
    # which is b + floor(W x / 256).
    n = q[_N_IN]
    lo = q[_LO]
    hi = q[_HI]
    bias = q[_HAS_BIAS]
    o = q[_ROW0]
    end = q[_ROW_END]
    k = q[_W_OFF]
    s = 0
    if q[_W_ZERO]:
        for xv in x:
            s += xv
        s *= q[_W_ZERO]
    lm = q[_SLOPE_M]
    ls = q[_SLOPE_S]
    lr = q[_SLOPE_RND]
    lf = q[_SLOPE_FLOOR]
    n2 = n + n
    n3 = n2 + n
    acc = _ACC
    wide = q[_WIDE]
    while o < end:
        j = _Q + 4 * o
        if wide:
            a0 = q[j] if bias else 0
            a1 = 0
            for xv in x:
                wv = w[k]
                a0 += wv * (xv >> 8)
                a1 += wv * (xv & 255)
                k += 1
            acc[0] = a0 + (a1 >> 8)
            rows = 1
        elif o + 3 < end:
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


def _prep(x, xq, b, lim):
    # xq = x clamped to lim = [lo, hi] by comparisons, so any int clamps right;
    # xq is an array('i'): a float is refused there. Small frame (see Net.run).
    i = b[0]
    while i:
        i -= 1
        v = x[i]
        if v < lim[0]:
            v = lim[0]
        elif v > lim[1]:
            v = lim[1]
        xq[i] = v


def _copy(y, out, b):
    i = b[4]
    while i:
        i -= 1
        out[i] = y[i]


def _argmax(y, b):
    # index of the largest of the b[4] outputs, the first one on a tie
    i = b[4] - 1
    best = i
    while i:
        i -= 1
        if y[i] >= y[best]:
            best = i
    return best


_FLOAT = None  # micromlp_float, once imported


def _float():
    global _FLOAT
    if _FLOAT is None:
        try:
            import micromlp_float as f
        except ImportError:  # CPython, as the package module micromlp.firmware.micromlp
            from . import micromlp_float as f
        _FLOAT = f
    return _FLOAT


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
        self.n_in = q[_N_IN]
        self.n_out = q[_N_OUT]
        self.has_bias = q[_HAS_BIAS]
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
        # the clamped inputs: an array('i'), so a float in x is refused, not computed with
        self.x = array("i", bytes(4 * self.n_inputs))
        self.y = layers[-1].y  # the last layer's outputs (predict reads them in place)
        # what run() needs, gathered once: the input clamp, each layer's kernel
        # call, and the copy of the result
        self.fast = fast  # micromlp_viper where this net runs on viper, else None
        self.prep = fast.prep if fast else _prep
        self.copy = fast.copy if fast else _copy
        self.argmax = fast.argmax if fast else _argmax
        self.lim = [in_lo, in_hi]
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
                sx if layers[-1].q[_LO] < 0 else 0,
                sx,
            ],
        )
        self.plan = None
        # floats in: the input table comes from the file (see _floats); net.inputs is
        # made on first use (a model that takes ints never pays for it)
        self.in_table = None
        self._fin = None
        self.fb = self.tb = None  # the bytecode path's 16-bit views of inputs and table

    def _ready(self):
        # Each layer's kernel call, gathered once its weights are in place; for viper
        # with 8-bit weights in RAM, the whole network as one call (micromlp_viper.net8)
        self.plan = tuple([(layer.fn, layer.w, layer.q, layer.y) for layer in self.layers])
        self.net8 = None
        if self.kernel == "viper" and self.stream is None and all(
                [layer.wsize == 1 for layer in self.layers]):
            flat = [self.x, self.bounds]
            for layer in self.layers:
                flat += [layer.w, layer.q, layer.y]
            self.net8 = tuple(flat)
        return self

    def __repr__(self):
        return "Net(%s)" % ", ".join([repr(layer) for layer in self.layers])

    # run, predict and _infer keep their frames small (a few locals): MicroPython
    # puts a larger bytecode frame on the heap unless the heap is locked, and the
    # layers run with it locked, so an inference allocates nothing. Nothing in the
    # locked part can raise (inputs are checked before it); a Ctrl-C there leaves
    # the heap locked until micropython.heap_unlock() or the REPL.

    def run(self, x, out=None):
        """Integer outputs for the integer inputs x; allocation-free when out is given."""
        if out is None:
            out = array("i", bytes(4 * self.n_outputs))
        if not self._net8(x):
            self._infer(x)
        self.copy(self.y, out, self.bounds)
        return out

    def predict(self, x):
        """Index of the largest output (the first one on a tie); allocation-free."""
        if not self._net8(x):
            self._infer(x)
        return self.argmax(self.y, self.bounds)

    def _net8(self, x):
        # The one viper call (clamp and every layer; no bytecode frame, so nothing is
        # allocated even without heap_lock) where x is an array('i'): True if it ran.
        if self.net8 is None or type(x) is not array:
            return False
        _fast.PLAN = self.net8
        _fast.SRC = x
        return _fast.net8()

    def _infer(self, x):
        # Clamp inputs to the declared range: the overflow proof assumes it.
        if len(x) != self.n_inputs:
            raise ValueError("expected %d inputs, got %d" % (self.n_inputs, len(x)))
        self.prep(x, self.x, self.bounds, self.lim)
        _lock()
        self._layers()
        _unlock()

    def _layers(self):
        if self.net8:  # the inputs are clamped into self.x already
            self._net8(self.x)
            return
        xq = self.x
        if self.stream is None:
            for fn, w, q, y in self.plan:
                fn(xq, w, q, y)
                xq = y
        else:
            for layer in self.layers:
                self._stream_layer(xq, layer)
                xq = layer.y

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
            q[_ROW0] = o
            q[_ROW_END] = end
            layer.fn(x, w, q, layer.y)
            o = end
        q[_ROW0] = 0
        q[_ROW_END] = n_out

    def _floats(self, table):
        # the file's input table (n float32 scales, n int32 zero points), for quantize
        self.in_table = table

    # The float API lives in micromlp_float.py, imported on first use: a model fed
    # ints never holds it in RAM.
    @property
    def inputs(self):
        """The engine's own float32 inputs (an array('f')): fill it, then quantize it."""
        return _float().inputs(self)

    def quantize(self, values, xq=None):
        """Floats (a list, or net.inputs: an array('f')) -> the input ints, into xq (an
        array('i'); default the engine's own); exactly the host's quantize_input:
        clamp(floor(x / scale + 1/2) + zero) on the exact rational, ties up, +-inf
        clamped, NaN refused. Allocates nothing for a list or net.inputs."""
        return _float().quantize(self, values, xq)

    def predict_float(self, values):
        """Index of the largest output for float inputs (quantize, then predict)."""
        return self.predict(self.quantize(values))

    def dequantize(self, out, buf=None):
        """Output ints as floats, into buf (an array('f') or a list; default a new
        list). A float is a heap object on most ports: this allocates there."""
        return _float().dequantize(self, out, buf)

    def probabilities(self, out, buf=None):
        """The softmax of the dequantized outputs (one output: its sigmoid), into buf.
        Allocates floats where they are heap objects."""
        return _float().probabilities(self, out, buf)

    def close(self):
        """Close the model file of a streaming net."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class _Reader:
    # Reads a model stream in order, tracking the byte offset and the CRC.
    # size: the stream's real length in bytes (None when it cannot seek).

    def __init__(self, f, size):
        self.f = f
        self.size = size
        self.pos = 0
        self.crc = 0
        self.crc_fn = _crc32 or _soft_crc32
        self.scratch = bytearray(32)

    def need(self, nbytes, what):
        # Refuse a section the file cannot hold before reading or allocating it.
        if self.size is not None and self.pos + nbytes > self.size:
            raise ModelError(
                "truncated at offset %d: %s needs %d bytes, got %d"
                % (self.pos, what, nbytes, max(0, self.size - self.pos))
            )

    def fill(self, buf, what, nbytes=0):
        # nbytes: the size in bytes when buf is a typed array (len counts items)
        nbytes = nbytes or len(buf)
        self.need(nbytes, what)
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
        self.need(nbytes, what)
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

    def array(self, typecode, count, itemsize, what):
        # A typed array read straight from the stream; 'B' is a bytearray,
        # which (unlike array()) needs no zeroed temporary copy to create.
        nbytes = count * itemsize
        self.need(nbytes, what)
        buf = bytearray(nbytes) if typecode == "B" else array(typecode, bytes(nbytes))
        self.fill(buf, what, nbytes)
        self.pad(nbytes, what)
        return buf

    def pad(self, nbytes, what):
        pad = (-nbytes) & 3
        if pad:
            self.fill(bytearray(pad), what + " padding")


def _abs_sum(w, k, n, zw):
    # sum of |w[i] - zw| for i in k..k+n-1: one row's weight magnitudes
    s = 0
    for i in range(k, k + n):
        v = w[i] - zw
        s += v if v > 0 else -v
    return s


def _weights(r, n_in, n_out, wsize, keep, what):
    # A layer's weights, kept in RAM or (keep false) read through a row at a
    # time; returns them and each row's sum |w|, which the bound check needs.
    zw = 128 if wsize == 1 else 0
    nbytes = n_in * n_out * wsize
    r.need(nbytes, what)
    sums = [0] * n_out
    w = None
    if keep:
        w = bytearray(nbytes) if wsize == 1 else array("h", bytes(nbytes))
        r.fill(w, what, nbytes)
        for c in range(n_out):
            sums[c] = _abs_sum(w, c * n_in, n_in, zw)
    else:
        row = bytearray(n_in) if wsize == 1 else array("h", bytes(2 * n_in))
        for c in range(n_out):
            r.fill(row, what, n_in * wsize)
            sums[c] = _abs_sum(row, 0, n_in, zw)
    r.pad(nbytes, what)
    return w, sums


def _check_layer_header(bad, n_in, n_in_expected, n_out, w_bits, flags, act, res, lo, hi,
                        bound, sm, ss, version):
    if n_in != n_in_expected:
        raise bad("n_in is %d, expected %d" % (n_in, n_in_expected))
    if n_out < 1:
        raise bad("n_out is 0")
    if w_bits not in (8, 16):
        raise bad("weight bits %d, expected 8 or 16" % w_bits)
    if act not in (_ACT_NONE, _ACT_RELU, _ACT_CLAMP, _ACT_LEAKY):
        raise bad("unknown activation code %d" % act)
    if act == _ACT_LEAKY:
        if not (1 <= sm < 8192 and ss <= 20):
            raise bad("LeakyReLU slope %d / 2**%d is out of range" % (sm, ss))
    elif sm or ss:
        raise bad("slope fields are %d, %d without LeakyReLU, expected 0" % (sm, ss))
    if flags & ~(_FLAG_BIAS | _FLAG_FOLDED | _FLAG_WIDE):
        raise bad("unknown flags 0x%x" % flags)
    if flags & (_FLAG_BIAS | _FLAG_FOLDED) == _FLAG_FOLDED:
        raise bad("flag 0x2 (folded bias) is set without flag 0x1 (bias)")
    if flags & _FLAG_WIDE and (version < 2 or w_bits != 16):
        raise bad("flag 0x4 (wide) needs 16-bit weights and format version 2, got %d-bit "
                  "weights in version %d" % (w_bits, version))
    if res[0] or res[1]:
        raise bad("reserved bytes are %d, %d, expected 0" % res)
    if lo > hi:
        raise bad("clamp range [%d, %d] is empty" % (lo, hi))
    if lo <= -_SMALL or hi >= _SMALL:
        raise bad("clamp range [%d, %d] reaches 2**30" % (lo, hi))
    if bound >= _SMALL:
        raise bad("accumulator bound %d is not below 2**30" % bound)


def _read_layer(r, index, n_in_expected, x_max, keep, sx, xsx, version):
    # keep: bit 0 keeps 8-bit weights in RAM, bit 1 keeps 16-bit ones.
    # Every bound of the 2**30 proof is recomputed here from the weights, biases
    # and clamp ranges; the file's own accumulator bound is only cross-checked.
    at = r.pos
    h = r.fill(bytearray(_LAYER_HEADER_SIZE), "layer %d header" % index)
    size, n_in, n_out, w_bits, flags, act, r11, lo, hi, bound = struct.unpack(
        "<IHHBBBBiiI", h[:24]
    )
    sm, ss, r39 = struct.unpack("<HBB", h[36:40])

    def bad(msg):
        return ModelError("layer %d at offset %d: %s" % (index, at, msg))

    _check_layer_header(bad, n_in, n_in_expected, n_out, w_bits, flags, act, (r11, r39), lo,
                        hi, bound, sm, ss, version)
    wsize = w_bits // 8
    has_bias = flags & _FLAG_BIAS
    wide = 1 if flags & _FLAG_WIDE else 0
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
    if r.size is not None and at + size + 4 > r.size:  # before anything is allocated
        raise bad("%d bytes run past the file size %d" % (size, r.size))
    w_pos = r.pos
    w, sums = _weights(r, n_in, n_out, wsize, keep & wsize, "layer %d weights" % index)
    zw = 128 if wsize == 1 else 0
    q = array("i", bytes(4 * (_Q + 4 * n_out)))
    # LeakyReLU: below lf a negative value would make sm * v reach 2**30
    lr = (1 << (ss - 1)) if ss else 0
    lf = -((1 << 30) // sm - 1) if sm else 0
    for i, v in enumerate((n_in, n_out, lo, hi, has_bias, 0, n_out, 0, sx, zw, xsx, sm, ss, lr,
                           lf, wide)):
        q[i] = v
    b_max = 0
    b = r.array("i", n_out, 4, "layer %d bias" % index) if has_bias else None
    wide_sums = 0  # a wide layer's largest sum of the inputs' high or low bytes
    for c in range(n_out):
        bc = b[c] if b is not None else 0
        q[_Q + 4 * c] = bc
        bc = -bc if bc < 0 else bc
        b_max = max(b_max, bc)
        need = x_max * sums[c]
        if wide:
            need = (need + 255) >> 8
            wide_sums = max(wide_sums, bc + sums[c] * ((x_max + 255) >> 8), sums[c] * 255)
        need += bc
        if need > bound:
            raise bad("channel %d can reach %d, above the recorded accumulator bound %d"
                      % (c, need, bound))
    b = sums = None
    if wide_sums >= _SMALL:
        raise bad("a sum of the inputs' bytes can reach %d >= 2**30 (wide layer)" % wide_sums)
    # Offset-binary weights: a running sum is b + (some w x) - 128 (the other x),
    # so it stays within max|b| + 128 n max|x| (one product u x: 256 max|x|).
    run = b_max + zw * max(n_in, 2) * x_max
    if run >= _SMALL:
        raise bad("running sum can reach %d >= 2**30 (8-bit weights are offset by 128)" % run)
    mult = r.array("i", n_out, 4, "layer %d multipliers" % index)
    shift = r.array("B", n_out, 1, "layer %d shifts" % index)
    r.skip(4 * n_out, "layer %d weight scales" % index)
    for c in range(n_out):
        m = mult[c]
        s = shift[c]
        # No product may reach 2**30. From shift 15 on the kernels split the
        # accumulator (mult < 2**14; rnd keeps the rounding term's part above
        # bit 15); below it they multiply it whole.
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
    out_bits = struct.unpack("<I", h[28:32])[0]
    return q, w, w_pos, wsize, act == _ACT_RELU, out_bits


def _file_size(f):
    # Bytes from the current position to the end, or None for a stream that cannot seek.
    try:
        here = f.tell()
        end = f.seek(0, 2)
        f.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError, TypeError):
        return None


def _input_table(r, n, in_lo, in_hi):
    # The input table, kept (net.quantize reads it): n float32 scales, each positive
    # and finite, then n int32 zero points, each within 2**29 of both ends of the range.
    r.need(4 * n, "input table")  # first: the table is at most twice what the file holds
    table = bytearray(8 * n)
    view = memoryview(table)
    r.fill(view[: 4 * n], "input table")
    for i in range(n):
        bits = struct.unpack_from("<I", table, 4 * i)[0]
        if not 0 < bits < _F32_INF:
            raise ModelError("offset %d: input scale %d is 0x%08x, not a positive finite float32"
                             % (_HEADER_SIZE + 4 * i, i, bits))
    r.need(4 * n, "input table")
    r.fill(view[4 * n:], "input table")
    for i in range(n):
        z = struct.unpack_from("<i", table, 4 * (n + i))[0]
        if in_hi - z >= _REACH or z - in_lo >= _REACH:
            raise ModelError("offset %d: input zero point %d is %d, 2**29 or more from the "
                             "input range [%d, %d]" % (_HEADER_SIZE + 4 * (n + i), i, z, in_lo,
                                                       in_hi))
    return table


def _check_header(h, size):
    magic = bytes(h[0:4])
    if magic != _MAGIC:
        raise ModelError("offset 0: bad magic %r, expected %r" % (magic, _MAGIC))
    version, hsize, fsize, n_layers = struct.unpack("<HHIH", h[4:14])
    in_lo, in_hi, out_bits, reserved = struct.unpack("<iiII", h[20:28] + h[28:32] + h[36:40])
    if version < 1 or version > _VERSION:
        raise ModelError("offset 4: format version %d, this engine reads versions 1 and 2"
                         % version)
    if hsize != _HEADER_SIZE:
        raise ModelError("offset 6: header size %d, expected %d" % (hsize, _HEADER_SIZE))
    if size is not None and fsize != size:
        raise ModelError("offset 8: size field is %d, the file has %d bytes" % (fsize, size))
    if n_layers < 1:
        raise ModelError("offset 12: model has no layers")
    if in_lo > in_hi:
        raise ModelError("offset 20: input range [%d, %d] is empty" % (in_lo, in_hi))
    if in_lo <= -_REACH or in_hi >= _REACH:
        raise ModelError("offset 20: input range [%d, %d] reaches 2**29" % (in_lo, in_hi))
    if not 0 < out_bits < _F32_INF:
        raise ModelError("offset 28: output scale 0x%08x is not a positive finite float32"
                         % out_bits)
    if reserved:
        raise ModelError("offset 36: reserved field is %d, expected 0" % reserved)
    return version


def _read(f, kernel, keep):
    # Parse and check a whole model stream; returns the Net and each layer's
    # weight offset (for streaming and zero-copy use).
    r = _Reader(f, _file_size(f))
    h = r.fill(bytearray(_HEADER_SIZE), "header")
    version = _check_header(h, r.size)
    fsize = struct.unpack("<I", h[8:12])[0]
    n_layers, n_inputs, n_outputs, width, in_lo, in_hi = struct.unpack("<HHHHii", h[12:28])
    out_bits = struct.unpack("<I", h[28:32])[0]
    table = _input_table(r, n_inputs, in_lo, in_hi)
    sx = 32 if _word_bits() == 64 else 0
    layers = []
    n_in = n_inputs
    widest = n_inputs
    x_max = max(-in_lo, in_hi)
    x_lo = in_lo
    for i in range(n_layers):
        # viper sign-extends inputs only where they can be negative
        q, w, w_pos, wsize, relu, last_bits = _read_layer(
            r, i, n_in, x_max, keep, sx, sx if x_lo < 0 else 0, version
        )
        x_max = max(-q[_LO], q[_HI])
        x_lo = q[_LO]
        layer = Layer(q, w, wsize, relu, _kernel(kernel, wsize), kernel == "viper")
        layer.w_pos = w_pos
        layers.append(layer)
        n_in = layer.n_out
        widest = max(widest, n_in)
    if n_in != n_outputs:
        raise ModelError("offset 16: header says %d outputs, last layer has %d" % (n_outputs, n_in))
    if width != widest:
        raise ModelError("offset 18: widest layer field is %d, expected %d" % (width, widest))
    if out_bits != last_bits:
        raise ModelError("offset 28: output scale 0x%08x differs from the last layer's 0x%08x"
                         % (out_bits, last_bits))
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
    if r.size is None and at + 4 != fsize:  # a stream that cannot seek: the size field
        raise ModelError("offset 8: size field is %d, model ends at %d" % (fsize, at + 4))
    if f.read(1):
        raise ModelError("offset %d: unexpected data after the CRC" % (at + 4))
    net = Net(layers, in_lo, in_hi, struct.unpack("<f", h[28:32])[0], kernel)
    net._floats(table)
    return net


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
                layer.q[_W_OFF] = layer.w_pos
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
