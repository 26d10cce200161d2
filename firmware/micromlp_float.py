# micromlp_float: the float API of micromlp.py (net.inputs, net.quantize,
# net.dequantize, net.probabilities), imported on first use, so a model fed ints
# never holds it in RAM. Same rules as micromlp.py: MicroPython 1.9-era syntax, and
# quantize in integer arithmetic on the float32 bits (exactly the host's
# quantize_input: no float rounding anywhere).

from array import array

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    # quantize runs with the heap locked, as inference does (see micromlp_net.py)
    from micropython import heap_lock as _lock
    from micropython import heap_unlock as _unlock
except ImportError:

    def _lock():
        pass

    _unlock = _lock


_VQ = []  # viper's quantizer, once imported


def _vquantize():
    # micromlp_viper_layers.quantize (a net on viper: the port has it); no allocation
    # after the first call
    if not _VQ:
        import micromlp_viper_layers

        _VQ.append(micromlp_viper_layers.quantize)
    return _VQ[0]


# net.f32, made on first use: net.inputs, then (bytecode only) its 16-bit view and the
# input table's, then the caller's own array('f') last quantized and what reads it
_FIN = const(0)
_FIN_H = const(1)
_TABLE_H = const(2)
_VSRC = const(3)
_VSRC_H = const(4)


def _f32(net):
    f = net.f32
    if f is None:
        fin = array("f", bytes(4 * net.n_inputs))
        f = [fin, None, None, None, None]
        if net.kernel != "viper":  # no viper: read the float bits as 16-bit halves
            f[_FIN_H] = _halves(fin)
            f[_TABLE_H] = _halves(net.in_table)
        net.f32 = f
    return f


def inputs(net):
    # net.inputs: the engine's own float32 inputs, made on first use
    return _f32(net)[_FIN]


def quantize(net, values, xq):
    # net.quantize (its docstring says what)
    if len(values) != net.n_inputs:
        raise ValueError("expected %d inputs, got %d" % (net.n_inputs, len(values)))
    src = _floats32(net, values)
    if xq is None:
        xq = net.x
    if net.kernel == "viper":
        bad = _vquantize()(src, xq, net.in_table, net.bounds)
    else:
        _lock()
        bad = _quantize(src, xq, net.f32[_TABLE_H], net.bounds)
        _unlock()
    if bad:
        raise ValueError("input %d is NaN: no integer stands for it" % (bad - 1))
    return xq


def dequantize(net, out, buf):
    # net.dequantize
    if buf is None:
        buf = [0.0] * len(out)
    s = net.out_scale
    for i in range(len(out)):
        buf[i] = out[i] * s
    return buf


def probabilities(net, out, buf):
    # net.probabilities: softmax (one output: sigmoid) of the dequantized outputs
    from math import exp

    buf = dequantize(net, out, buf)
    n = len(out)
    if n == 1:
        buf[0] = 1 / (1 + exp(-buf[0]))
        return buf
    top = max(buf)
    t = 0.0
    for i in range(n):
        v = exp(buf[i] - top)
        buf[i] = v
        t += v
    for i in range(n):
        buf[i] = buf[i] / t
    return buf


def _quantize(fb, xq, tb, b):
    # micromlp_viper_layers.quantize in bytecode: the float32 bits as 16-bit halves (fb:
    # the floats, tb: the input table, entry i * step of its tn), so every value stays a
    # small int. Returns 0, or i + 1 for the first input i that is NaN.
    n = b[0]
    lo = b[1]
    hi = b[2]
    step = b[7]
    tn = b[8]
    for i in range(n):
        ti = i * step
        h = fb[2 * i + 1]
        e = (h >> 7) & 0xFF
        m = ((h & 0x7F) << 16) | fb[2 * i]
        neg = h >> 15
        j = 2 * (tn + ti)
        z = ((tb[j + 1] ^ 0x8000) - 0x8000) * 65536 + tb[j]
        q = z
        if e == 0xFF:
            if m:
                return i + 1
            q = lo if neg else hi
        elif e or m:
            if e:
                m |= 0x800000
            else:  # a denormal: normalize
                e = 1
                while m < 0x800000:
                    m <<= 1
                    e -= 1
            h = tb[2 * ti + 1]
            se = (h >> 7) & 0xFF
            sm = ((h & 0x7F) << 16) | tb[2 * ti]
            if se:
                sm |= 0x800000
            else:
                se = 1
                while sm < 0x800000:
                    sm <<= 1
                    se -= 1
            d = e - se  # x / s = (m / sm) * 2**d, m / sm in (1/2, 2)
            if d >= 31:
                q = lo if neg else hi
            elif d >= -1:
                # long division of m * 2**(d + 1) by 2 sm, stopped once past the edge
                t = (z - lo) if neg else (hi - z)
                dv = sm << 1
                a = 0
                r = m
                k = d + 1
                while k > 0 and a <= t:
                    r <<= 1
                    a <<= 1
                    if r >= dv:
                        r -= dv
                        a += 1
                    k -= 1
                if a > t:
                    q = lo if neg else hi
                elif neg:
                    q = z - a - (1 if r > sm else 0)
                else:
                    q = z + a + (1 if r >= sm else 0)
        if q < lo:
            q = lo
        elif q > hi:
            q = hi
        xq[i] = q
    return 0


def _halves(buf):
    # a view of buf's bytes as little-endian uint16s, made once (no allocation after)
    try:
        import uctypes

        n = len(buf) * (4 if isinstance(buf, array) else 1) // 2
        layout = {"h": (uctypes.ARRAY | 0, uctypes.UINT16 | n)}
        return uctypes.struct(uctypes.addressof(buf), layout, uctypes.LITTLE_ENDIAN).h
    except ImportError:  # CPython
        return memoryview(buf).cast("B").cast("H")


def _floats32(net, values):
    # What quantize reads: float32 bits, through viper's ptr32 or, in bytecode, as
    # 16-bit halves (reading a float element would make a float object). The caller's
    # own array('f') is read in place, through a view made the first time it is seen;
    # any other sequence is copied into the engine's own buffer.
    f = _f32(net)
    fin = f[_FIN]
    fast = net.kernel == "viper"
    if values is not fin and values is not f[_VSRC]:
        if not _is_float32(values):
            _fcopy(values, fin, net.n_inputs)
            return fin if fast else f[_FIN_H]
        f[_VSRC] = values
        f[_VSRC_H] = values if fast else _halves(values)
    if values is fin:
        return fin if fast else f[_FIN_H]
    return f[_VSRC_H]


def _is_float32(values):
    # an array('f') (MicroPython's arrays have no typecode: a float element, 4 bytes each)
    return (isinstance(values, array) and isinstance(values[0], float)
            and len(bytes(values)) == 4 * len(values))


def _fcopy(values, fin, n):
    # values (a list of floats, or any sequence) into the float32 buffer
    i = n
    while i:
        i -= 1
        fin[i] = values[i]
