# micromlp_load: the checked reader of model files, for micromlp.load().
#
# micromlp.load() imports it, reads a file with it and drops it, so its code is not
# in RAM beside a loaded model (micromlp_net.py holds what runs). It checks the
# whole file (docs/format.md); its host twin is micromlp/export/modelfile.py, which
# raises the same messages. MicroPython 1.9-era syntax, like micromlp.py.

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

ModelError = ValueError  # micromlp.load sets micromlp.ModelError here before reading

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

# A layer's parameter array q: micromlp_net.py names its slots; the reader fills
# the header slots in order (see _read_layer) and names the few it reads back.
_N_OUT = const(1)
_LO = const(2)
_HI = const(3)
_Q = const(16)  # per channel c at _Q + 3*c: bias, mult, shift


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


def _weights(r, n_in, n_out, wsize, keep, what, buf):
    # A layer's weights, kept in RAM (in buf, made before the reader came in, where it
    # has the right type and size) or (keep false) read through a row at a time;
    # returns them and each row's sum |w|, which the bound check needs.
    zw = 128 if wsize == 1 else 0
    nbytes = n_in * n_out * wsize
    r.need(nbytes, what)
    sums = [0] * n_out
    w = None
    if keep:
        if wsize == 1:
            w = buf if isinstance(buf, bytearray) and len(buf) == nbytes else bytearray(nbytes)
        else:
            w = buf if isinstance(buf, array) and len(buf) * 2 == nbytes and not isinstance(
                buf, bytearray) else array("h", bytes(nbytes))
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


def _read_layer(r, index, n_in_expected, x_max, keep, sx, xsx, version, buf):
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
    w, sums = _weights(r, n_in, n_out, wsize, keep & wsize, "layer %d weights" % index,
                       buf[0] if buf else None)
    zw = 128 if wsize == 1 else 0
    q = buf[1] if buf and isinstance(buf[1], array) and len(buf[1]) == _Q + 3 * n_out \
        else array("i", bytes(4 * (_Q + 3 * n_out)))
    # LeakyReLU: below lf a negative value would make sm * v reach 2**30
    lr = (1 << (ss - 1)) if ss else 0
    lf = -((1 << 30) // sm - 1) if sm else 0
    # slots 0.._Q-1 in micromlp_net.py's order: n_in, n_out, lo, hi, has_bias, the rows
    # (0, n_out) and their weights' offset (0), sx, the weight zero point, the inputs'
    # sx, the LeakyReLU slope (mult, shift, rounding, floor), wide
    for i, v in enumerate((n_in, n_out, lo, hi, has_bias, 0, n_out, 0, sx, zw, xsx, sm, ss, lr,
                           lf, wide)):
        q[i] = v
    b_max = 0
    b = r.array("i", n_out, 4, "layer %d bias" % index) if has_bias else None
    wide_sums = 0  # a wide layer's largest sum of the inputs' high or low bytes
    for c in range(n_out):
        bc = b[c] if b is not None else 0
        q[_Q + 3 * c] = bc
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
        # accumulator (mult < 2**14; the rounding term's part above bit 15 is added
        # to the high half's product); below it they multiply it whole.
        if s >= 15:
            ok = m < 16384
        else:  # (with the rounding term, 2**(s-1))
            ok = bound * m + ((1 << s) >> 1) < _SMALL
        if m < 1 or s > 45 or not ok:
            raise bad("requantizer of channel %d (mult %d, shift %d) can reach 2**30" % (c, m, s))
        j = _Q + 3 * c
        q[j + 1] = m
        q[j + 2] = s
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
    # One scale and one zero point for every input (raw pixels, or the same units on
    # every sensor): kept as that one entry, 8 bytes instead of 8 n
    i = 4 * n
    while i > 4:  # byte by byte: no allocation
        i -= 1
        if table[i] != table[i & 3] or table[i + 4 * n] != table[4 * n + (i & 3)]:
            return table
    return table[:4] + table[4 * n:4 * n + 4]


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


def word_bits():
    # 64 on the unix port and CPython, 32 on MCUs: viper's int is one machine word.
    try:
        import sys

        return 64 if sys.maxsize > 0x7FFFFFFF else 32
    except (ImportError, AttributeError):
        return 32


def read(f, keep, bits=None, bufs=None):
    # Parse and check a whole model stream. keep: bit 0 keeps 8-bit weights in RAM,
    # bit 1 16-bit ones; bits: the port's word size (None: this port's); bufs: per
    # layer, a weight buffer and a q array made beforehand (micromlp._buffers), each
    # used where it fits. Returns the layers' parts (q, w, weight offset in the file,
    # weight bytes, relu), the input range, the output scale, the input table and the
    # word size, for micromlp_build.build.
    if bits is None:
        bits = word_bits()
    r = _Reader(f, _file_size(f))
    h = r.fill(bytearray(_HEADER_SIZE), "header")
    version = _check_header(h, r.size)
    fsize = struct.unpack("<I", h[8:12])[0]
    n_layers, n_inputs, n_outputs, width, in_lo, in_hi = struct.unpack("<HHHHii", h[12:28])
    out_bits = struct.unpack("<I", h[28:32])[0]
    table = _input_table(r, n_inputs, in_lo, in_hi)
    sx = 32 if bits == 64 else 0
    layers = []
    n_in = n_inputs
    widest = n_inputs
    x_max = max(-in_lo, in_hi)
    x_lo = in_lo
    for i in range(n_layers):
        # viper sign-extends inputs only where they can be negative
        q, w, w_pos, wsize, relu, last_bits = _read_layer(
            r, i, n_in, x_max, keep, sx, sx if x_lo < 0 else 0, version,
            bufs[i] if bufs and i < len(bufs) else None
        )
        x_max = max(-q[_LO], q[_HI])
        x_lo = q[_LO]
        layers.append((q, w, w_pos, wsize, relu))
        n_in = q[_N_OUT]
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
    return layers, in_lo, in_hi, struct.unpack("<f", h[28:32])[0], table, bits


# The C kernels' module, looked for here (load() drops this module again, so the search's
# code is not in the heap beside a model; the module found stays).
C_ABI = 1  # the micromlp_c this engine calls (micromlp_c.c's ABI)


def native():
    # (micromlp_c or None, why a micromlp_c.mpy on the path was not taken or None)
    note = _c_damaged()
    if note:
        return None, note
    try:
        import micromlp_c as c
    except ImportError:  # not on the board: nothing to say
        return None, None
    except Exception as e:  # another architecture, another .mpy version, a damaged file
        return None, "micromlp_c.mpy not loaded: %s: %s" % (type(e).__name__, e)
    abi = getattr(c, "ABI", None)
    if abi != C_ABI:
        return None, "micromlp_c.mpy (%s) has ABI %r, this engine needs %d" % (
            getattr(c, "ARCH", "?"), abi, C_ABI)
    return c, None


def _c_damaged():
    # MicroPython's .mpy reader loops forever on a truncated file, so before the import
    # the file's last 8 bytes must be the trailer its build appended: b'MLPC' and the
    # file's length. What is wrong, or None (also where there is no such file).
    import sys

    if sys.implementation.name != "micropython":
        return None
    for d in sys.path:
        name = (d + "/" if d else "") + "micromlp_c.mpy"
        try:
            f = open(name, "rb")
        except OSError:
            continue
        try:
            n = f.seek(0, 2)
            f.seek(n - 8 if n > 8 else 0)
            t = f.read(8)
        finally:
            f.close()
        if len(t) == 8 and t[:4] == b"MLPC" and (
                t[4] | t[5] << 8 | t[6] << 16 | t[7] << 24) == n:
            return None
        return "%s is damaged (%d bytes, no trailer with its length)" % (name, n)
    return None
