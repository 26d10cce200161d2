# micromlp_tiny_fill: reads a model file micromlp_tiny_load.py has checked, for
# the arrays the engine keeps. A script run like that one (a statement at a
# time, in a namespace holding d and src, then dropped), last, so that the
# arrays do not fragment the heap the other scripts compile in. Leaves d =
# (n_inputs, lo, hi, layers, the model path when streaming) for the Net.
import struct
from array import array

data = None if isinstance(src, str) else src.MODEL
f = None if data else open(src, "rb")
p = 0  # the offset read up to


def get(k):  # the next k bytes
    global p
    p += k
    return data[p - k:p] if data else f.read(k)


def fill():  # -> d for the Net. One function, defined before any array exists, so
    # that nothing is compiled once they fragment the heap (a micro:bit's parser
    # then fails), and calling only get() (a micro:bit's stack is short)
    scale = struct.unpack("<f", get(40)[28:32])[0]  # the output scale (dequantize)
    tab = get(8 * d[0])  # the input table: float32 scales, int32 zero points (quantize)
    layers = []
    end = 0
    for i in range(len(d[3]) // 7):  # each layer as the Net takes it
        ni, no, fl, lo, hi, lm, ls = d[3][7 * i:7 * i + 7]
        get(40)
        k0 = p
        skip = k0 - end  # streaming: the bytes between two layers' weights
        if d[4] or data:  # weights stay in the file (a row buffer) or in MODEL
            w = data or bytearray(ni)
            for _ in range(no):
                get(ni)
        else:
            w = get(ni * no)
            k0 = 0
        end = p
        get(-(ni * no) & 3)
        b = array("i", get(4 * no)) if fl & 1 else None
        m = array("i", get(4 * no))
        s = get((no + 3) & ~3)
        get(4 * no)
        lf = -((1 << 30) // lm - 1) if lm else 0  # LeakyReLU floor: keeps lm * a < 2**30
        layers.append((ni, no, w, b, m, s, lo, hi, [0] * no, skip, k0, lm, ls, lf))
    if f:
        f.close()
    return d[0], d[1], d[2], layers, d[4], tab, scale


d = fill()
