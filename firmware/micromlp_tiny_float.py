# micromlp_tiny_float: what the tiny engine adds where the heap has room, a script
# load() runs (a statement at a time) in a namespace holding net (and run, the
# namespace micromlp_tiny_run.py left). Floats in and out:
# net.inputs, quantize, predict_float, dequantize and probabilities, the same API
# and the same integers as micromlp.py's (docs/format.md), in plain ints; they
# allocate (floats are heap objects on small ports). And the layer loop with the
# portable kernel's four-row blocking and zero skip (micromlp_portable.linear), for weights
# in RAM or in a module (streaming keeps the row-at-a-time loop): same integers,
# each pass over the inputs feeds four rows, a zero input skips its four
# multiply-adds. A micro:bit v1 has no heap for this beside a model: there, pass
# ints (its sensors give ints), and the plain loop runs.
import struct
from array import array


def q1(b, s, z, lo, hi, i):
    # one float32 (bits b) with scale bits s, zero point z: clamp(floor(x / s + 1/2) + z),
    # x and s as exact ints (both times 2**150)
    e = b >> 23 & 255
    if e == 255:
        if b & 0x7FFFFF:
            raise ValueError("input %d is NaN: no integer stands for it" % i)
        return lo if b >> 31 else hi
    num = (b & 0x7FFFFF | (e and 0x800000)) << (e or 1)
    e = s >> 23 & 255
    den = (s & 0x7FFFFF | (e and 0x800000)) << (e or 1)
    q = (den - 2 * num if b >> 31 else 2 * num + den) // (2 * den)
    return max(lo, min(hi, q + z))


def quantize(values, xq=None):
    n = net.n_inputs
    if len(values) != n:
        raise ValueError("expected %d inputs" % n)
    xq = net.x if xq is None else xq
    t = net.tab
    for i in range(n):
        b = struct.unpack("<I", struct.pack("<f", values[i]))[0]
        s = struct.unpack("<I", t[4 * i:4 * i + 4])[0]
        z = struct.unpack("<i", t[4 * (n + i):4 * (n + i) + 4])[0]
        xq[i] = q1(b, s, z, net.in_lo, net.in_hi, i)
    return xq


def predict_float(values):
    return net.predict(quantize(values))


def dequantize(out, buf=None):
    buf = [0.0] * len(out) if buf is None else buf
    for i in range(len(out)):
        buf[i] = out[i] * net.out_scale
    return buf


def probabilities(out, buf=None):
    from math import exp

    buf = dequantize(out, buf)
    if len(out) == 1:
        buf[0] = 1 / (1 + exp(-buf[0]))
        return buf
    top = max(buf)
    t = 0.0
    for i in range(len(out)):
        buf[i] = exp(buf[i] - top)
        t += buf[i]
    for i in range(len(out)):
        buf[i] = buf[i] / t
    return buf


net.inputs = array("f", [0.0] * net.n_inputs)  # float inputs: fill it, then quantize it
net.quantize = quantize
net.predict_float = predict_float
net.dequantize = dequantize
net.probabilities = probabilities


acc = [0, 0, 0, 0]  # the four rows' sums (one: a row's), handed to the requantizer
one = [0]


def lanes(layer):  # a layer's weights one, two and three rows on: w1[k] is w[k + n]
    v = memoryview(layer[2])
    n = layer[0]
    return v[n:], v[n + n:], v[3 * n:]


# made once (a view is an allocation), for the blocked loop (weights in RAM or a module)
views = None if net.path else [lanes(layer) for layer in net.layers]


def layers(x=None):
    # the hot names first: bytecode reaches its first 16 locals with shorter instructions
    v = a0 = a1 = a2 = a3 = k = 0
    w = w1 = w2 = w3 = None
    x = net.x if x is None else x
    i = 0
    for _, no, w, b, m, s, lo, hi, y, _, k, lm, ls, lf in net.layers:
        w1, w2, w3 = views[i]
        i += 1
        n = len(x)
        t = sum(x) * 128  # sum(w x) with weights stored as w + 128: start at b - 128 sum(x)
        o = 0
        while o < no:
            if 3 < no < o + 4:  # the last rows: the four-row pass ending at no (a row
                k -= (o + 4 - no) * n  # computed twice gives the same integers)
                o = no - 4
            if o + 3 < no:
                a0 = a1 = a2 = a3 = -t
                if b:
                    a0 += b[o]
                    a1 += b[o + 1]
                    a2 += b[o + 2]
                    a3 += b[o + 3]
                for v in x:
                    if v:
                        a0 += w[k] * v
                        a1 += w1[k] * v
                        a2 += w2[k] * v
                        a3 += w3[k] * v
                    k += 1
                k += 3 * n
                acc[0] = a0
                acc[1] = a1
                acc[2] = a2
                acc[3] = a3
                rows = acc
            else:
                a0 = (b[o] if b else 0) - t
                for v in x:
                    if v:
                        a0 += w[k] * v
                    k += 1
                one[0] = a0
                rows = one
            for a in rows:  # requantize as micromlp_tiny_run.net_layers does
                sh = s[o]
                if sh < 15:
                    a = (a * m[o] + ((1 << sh) >> 1)) >> sh
                else:  # split at bit 15 so no product reaches 2**30 (docs/format.md)
                    a = ((a >> 15) * m[o] + ((1 << sh - 16) if sh > 15 else 0)
                         + (((a & 32767) * m[o] + (16384 if sh == 15 else 0)) >> 15)) >> (sh - 15)
                if a < 0 and lm:  # LeakyReLU
                    a = (max(a, lf) * lm + ((1 << ls) >> 1)) >> ls
                y[o] = lo if a < lo else (hi if a > hi else a)
                o += 1
        x = y


_lock = run["_lock"]  # micromlp_tiny_run's heap lock (the layer loop's frame stays
_unlock = run["_unlock"]  # off the heap while it is locked)
plain_in = net._in


def direct_in(x):
    # net._in for an array of ints already in range: used as it is (min and max run
    # in C; no copy, no bytecode loop over the inputs); anything else is clamped
    if (type(x) is array and len(x) == net.n_inputs and type(x[0]) is int
            and min(x) >= net.lo and max(x) <= net.hi):
        _lock()
        layers(x)
        _unlock()
    else:
        plain_in(x)


if not net.path:  # weights in RAM or in a module: the blocked loop
    net._layers = layers
    net._in = direct_in
