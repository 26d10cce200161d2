# micromlp_tiny_float: floats in and out for the tiny engine, a script load() runs
# (a statement at a time) where the heap has room, in a namespace holding net: it
# gives net.inputs, quantize, predict_float, dequantize and probabilities, the same
# API and the same integers as micromlp.py's (docs/format.md), in plain ints. It
# allocates (floats are heap objects on small ports). A micro:bit v1 has no heap
# for it beside a model: there, pass ints (its sensors give ints).
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
