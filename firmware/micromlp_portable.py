# micromlp_portable: the portable kernel of micromlp_net.py (bytecode: every port runs
# it) and the bytecode input clamp, copy and argmax, which the 'native' kernel uses too.
# A net on the viper or C kernels never imports this module, so on a board its bytecode
# is not in the heap then. Integer arithmetic only, MicroPython 1.9-era syntax.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# The slots of a layer's parameter array q (micromlp_net.py describes them)
_N_IN = const(0)
_N_OUT = const(1)
_LO = const(2)
_HI = const(3)
_HAS_BIAS = const(4)
_ROW0 = const(5)
_ROW_END = const(6)
_W_OFF = const(7)
_SX = const(8)
_W_ZERO = const(9)
_X_SX = const(10)
_SLOPE_M = const(11)
_SLOPE_S = const(12)
_SLOPE_RND = const(13)
_SLOPE_FLOOR = const(14)
_WIDE = const(15)
_Q = const(16)

_ACC1 = [0]
_ACC = [0, 0, 0, 0]  # the portable kernel's accumulators, handed to its epilogue


def linear(x, w, q, y):
    # The portable kernel: rows q[_ROW0]..q[_ROW_END]-1 of y = clamp(round((W x + b) * mult
    # / 2**shift)), weights of row q[_ROW0] at w[0][q[_W_OFF]]. w is the layer's weights
    # and views of them one, two and three rows on (made once, see _lanes()), so the four
    # rows of a pass read their weights at one index k: w1[k] is w0[k + n]. 8-bit
    # weights are stored as u = w + 128, so sum(w x) = sum(u x) - 128 sum(x): plain
    # bytes, no sign fix per multiply. Four rows share each pass over x, which saves
    # loop steps and index updates per multiply-add, and a zero input (ReLU makes
    # many) skips its four multiply-adds; the last rows of a layer are the four-row
    # pass ending there (a row computed twice gives the same integers). A wide layer
    # (16-bit weights and inputs) sums w times each input's high and low byte apart,
    # so no sum reaches 2**30: acc = b + sum(w (x >> 8)) + (sum(w (x & 255)) >> 8),
    # which is b + floor(W x / 256). The hot names come first: MicroPython's
    # bytecode reaches its first 16 locals with shorter instructions.
    w0, w1, w2, w3 = w
    k = q[_W_OFF]
    xv = a0 = a1 = a2 = a3 = 0
    n = q[_N_IN]
    o = q[_ROW0]
    end = q[_ROW_END]
    lo = q[_LO]
    hi = q[_HI]
    bias = q[_HAS_BIAS]
    s = sum(x) * q[_W_ZERO] if q[_W_ZERO] else 0  # (a sum the proof covers)
    lm = q[_SLOPE_M]
    ls = q[_SLOPE_S]
    lr = q[_SLOPE_RND]
    lf = q[_SLOPE_FLOOR]
    acc = _ACC
    one = _ACC1
    wide = q[_WIDE]
    four = not wide and end - o > 3  # four-row passes, to the last row
    while o < end:
        if four and o + 3 >= end:  # the last rows: the pass ending at end
            k -= (o + 4 - end) * n
            o = end - 4
        j = _Q + 3 * o
        if wide:
            a0 = q[j] if bias else 0
            a1 = 0
            for xv in x:
                wv = w0[k]
                a0 += wv * (xv >> 8)
                a1 += wv * (xv & 255)
                k += 1
            one[0] = a0 + (a1 >> 8)
            rows = one
        elif four:
            a0 = a1 = a2 = a3 = -s
            if bias:
                a0 += q[j]
                a1 += q[j + 3]
                a2 += q[j + 6]
                a3 += q[j + 9]
            for xv in x:
                if xv:
                    a0 += w0[k] * xv
                    a1 += w1[k] * xv
                    a2 += w2[k] * xv
                    a3 += w3[k] * xv
                k += 1
            acc[0] = a0
            acc[1] = a1
            acc[2] = a2
            acc[3] = a3
            k += 3 * n
            rows = acc
        else:
            a0 = (q[j] if bias else 0) - s
            for xv in x:
                a0 += w0[k] * xv
                k += 1
            one[0] = a0
            rows = one
        # Requantize: round half up ((v + 2**(shift-1)) >> shift; >> floors), clamp.
        # From shift 15 on, v splits at bit 15 so no product reaches 2**30:
        # v * m + 2**(sh-1) == ((v >> 15) * m + r) * 2**15 + (v & 32767) * m + r_lo,
        # r = 2**(sh-16) (0 at sh 15), r_lo = 2**14 at sh 15 (else 0). q holds no
        # rounding terms: 2**(t-1) is (1 << t) >> 1 below 15, and 1 << (t - 1) above
        # (1 << 30 is no small int on a 32-bit port: it would allocate).
        for v in rows:
            m = q[j + 1]
            sh = q[j + 2]
            if sh < 15:
                v = (v * m + ((1 << sh) >> 1)) >> sh
            else:
                sh -= 15
                v = ((v >> 15) * m + ((1 << (sh - 1)) if sh else 0)
                     + (((v & 32767) * m + (0 if sh else 16384)) >> 15)) >> sh
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
            j += 3


def prep(x, xq, b, lim):
    # xq = x clamped to lim = [lo, hi] by comparisons, so any int clamps right;
    # xq is an array('i'): a float is refused there. Small frame (see micromlp_net's Net.run).
    i = b[0]
    while i:
        i -= 1
        v = x[i]
        if v < lim[0]:
            v = lim[0]
        elif v > lim[1]:
            v = lim[1]
        xq[i] = v


def copy(y, out, b):
    i = b[4]
    while i:
        i -= 1
        out[i] = y[i]


def argmax(y, b):
    # index of the largest of the b[4] outputs, the first one on a tie
    i = b[4] - 1
    best = i
    while i:
        i -= 1
        if y[i] >= y[best]:
            best = i
    return best


def lanes(w, n):
    # The bytecode kernels' weights: w and views of it one, two and three rows of n on
    v = memoryview(w)
    return (w, v[n:], v[n + n:], v[3 * n:])
