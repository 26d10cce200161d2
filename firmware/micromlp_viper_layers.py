# The per-layer kernels of micromlp_net.py on ports with the native and viper emitters,
# and viper's float quantizer: what an inference of an 8-bit model in RAM never needs
# (micromlp_viper.net8 runs it whole), so micromlp_net imports this module only for
# streaming, 16-bit weights, the 'native' kernel or net.quantize: its machine code is
# not in a board's heap otherwise (about 5 KB on a Cortex-M3).
#
# Same contract as micromlp_portable.linear (the portable kernel): rows q[_ROW0]..q[_ROW_END]-1 of
# y = clamp(round((W x + b) * mult / 2**shift)); layout of q in micromlp_net.py.
# Every value stays below 2**30 (the exporter proves it), so a viper machine
# word never wraps. Viper loads are unsigned: 8-bit weights are stored as
# w + 128 (so sum(w x) = sum(u x) - 128 sum(x)), 16-bit ones are sign-extended
# by xor/subtract, and on 64-bit ports ptr32 loads by a shift pair (q[_SX] = 32;
# q[_X_SX] = 32 too when the layer's inputs can be negative). linear16 also runs
# wide layers (16-bit weights times 16-bit inputs), whose sums it forms in the
# inputs' two bytes as micromlp_portable.linear does.
import micropython
from micropython import const

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


@micropython.viper
def linear8(x: ptr32, w: ptr8, q: ptr32, y: ptr32):
    n = q[_N_IN]
    lo = q[_LO]
    hi = q[_HI]
    bias = q[_HAS_BIAS]
    o = q[_ROW0]
    end = q[_ROW_END]
    k = q[_W_OFF]
    sx = q[_SX]
    xsx = q[_X_SX]  # 0 when this layer's inputs are never negative
    lm = q[_SLOPE_M]
    ls = q[_SLOPE_S]
    lr = q[_SLOPE_RND]
    lf = (q[_SLOPE_FLOOR] << sx) >> sx
    lo = (lo << sx) >> sx
    hi = (hi << sx) >> sx
    # (the loops count down and add the product first: see micromlp_viper.net8)
    s = 0
    i = n
    while i:
        i -= 1
        s += (x[i] << xsx) >> xsx
    s = s << 7
    while o < end:
        j = _Q + 3 * o
        acc = 0 - s
        if bias:
            acc += (q[j] << sx) >> sx
        wr = ptr8(int(w) + k)  # this row's weights
        i = n
        if xsx:
            while i:
                i -= 1
                acc = int(wr[i]) * ((x[i] << xsx) >> xsx) + acc
        else:
            while i:
                i -= 1
                xv = x[i]
                if xv:
                    acc = int(wr[i]) * xv + acc
        k += n
        m = q[j + 1]
        sh = q[j + 2]
        if sh < 15:  # (the rounding term 2**(sh-1) is (1 << sh) >> 1)
            acc = (acc * m + ((1 << sh) >> 1)) >> sh
        else:  # split at bit 15 so no product reaches 2**30 (see micromlp_portable.linear)
            sh -= 15
            lo15 = 0
            if sh == 0:
                lo15 = 16384
            acc = ((acc >> 15) * m + ((1 << sh) >> 1) + (((acc & 32767) * m + lo15) >> 15)) >> sh
        if acc < 0 and lm:  # LeakyReLU
            if acc < lf:
                acc = lf
            acc = (acc * lm + lr) >> ls
        if acc < lo:
            acc = lo
        elif acc > hi:
            acc = hi
        y[o] = acc
        o += 1


@micropython.viper
def linear16(x: ptr32, w: ptr16, q: ptr32, y: ptr32):
    n = q[_N_IN]
    lo = q[_LO]
    hi = q[_HI]
    bias = q[_HAS_BIAS]
    o = q[_ROW0]
    end = q[_ROW_END]
    k = q[_W_OFF] >> 1  # byte offset to int16 index
    sx = q[_SX]
    lm = q[_SLOPE_M]
    ls = q[_SLOPE_S]
    lr = q[_SLOPE_RND]
    lf = (q[_SLOPE_FLOOR] << sx) >> sx
    lo = (lo << sx) >> sx
    hi = (hi << sx) >> sx
    wide = q[_WIDE]
    while o < end:
        j = _Q + 3 * o
        acc = 0
        if bias:
            acc = (q[j] << sx) >> sx
        wr = ptr16(int(w) + 2 * k)  # this row's weights (counted down, as in linear8)
        k += n
        i = n
        if wide:  # b + sum(w (x >> 8)) + (sum(w (x & 255)) >> 8): no sum reaches 2**30
            low = 0
            while i:
                i -= 1
                wv = (int(wr[i]) ^ 0x8000) - 0x8000
                xv = (x[i] << sx) >> sx
                acc = wv * (xv >> 8) + acc
                low = wv * (xv & 255) + low
            acc += low >> 8
        while i:
            i -= 1
            acc = ((int(wr[i]) ^ 0x8000) - 0x8000) * ((x[i] << sx) >> sx) + acc
        m = q[j + 1]
        sh = q[j + 2]
        if sh < 15:  # (the rounding term 2**(sh-1) is (1 << sh) >> 1)
            acc = (acc * m + ((1 << sh) >> 1)) >> sh
        else:  # split at bit 15 so no product reaches 2**30 (see micromlp_portable.linear)
            sh -= 15
            lo15 = 0
            if sh == 0:
                lo15 = 16384
            acc = ((acc >> 15) * m + ((1 << sh) >> 1) + (((acc & 32767) * m + lo15) >> 15)) >> sh
        if acc < 0 and lm:  # LeakyReLU
            if acc < lf:
                acc = lf
            acc = (acc * lm + lr) >> ls
        if acc < lo:
            acc = lo
        elif acc > hi:
            acc = hi
        y[o] = acc
        o += 1


_ACC_N1 = [0]
_ACC_N = [0, 0, 0, 0]  # linear_native's accumulators


@micropython.native
def linear_native(x, w, q, y):
    # micromlp_portable.linear, line for line, compiled to machine code (about 1.8x
    # faster); tests/test_kernels.py checks that the two stay identical.
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
    acc = _ACC_N
    one = _ACC_N1
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


@micropython.viper
def quantize(xf: ptr32, xq: ptr32, tab: ptr32, b: ptr32) -> int:
    # Floats (float32 bits, read as words) to the input ints: clamp(floor(x / s + 1/2)
    # + z, lo, hi) on the exact rational x / s (docs/format.md), with the file's input
    # table tab (its scale bits, then its zero points) and b = n, lo, hi, ..., sx at
    # b[6], the table's step and entries at b[7] and b[8] (step 0: one entry for all).
    # Integer arithmetic only: no float object, nothing allocated. Returns 0, or
    # i + 1 for the first input i that is NaN.
    n = b[0]
    sx = b[6]
    step = b[7]
    tn = b[8]
    lo = (b[1] << sx) >> sx
    hi = (b[2] << sx) >> sx
    i = 0
    while i < n:
        bits = xf[i]
        e = (bits >> 23) & 0xFF
        m = bits & 0x7FFFFF
        neg = (bits >> 31) & 1
        ti = i * step
        z = (tab[tn + ti] << sx) >> sx
        q = z
        if e == 0xFF:
            if m:
                return i + 1
            q = lo if neg else hi
        elif e or m:
            if e:
                m = m | 0x800000
            else:  # a denormal: normalize
                e = 1
                while m < 0x800000:
                    m = m << 1
                    e -= 1
            sb = tab[ti]
            se = (sb >> 23) & 0xFF
            sm = sb & 0x7FFFFF
            if se:
                sm = sm | 0x800000
            else:
                se = 1
                while sm < 0x800000:
                    sm = sm << 1
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
                    r = r << 1
                    a = a << 1
                    if r >= dv:
                        r -= dv
                        a += 1
                    k -= 1
                if a > t:
                    q = lo if neg else hi
                elif neg:
                    if r > sm:
                        a += 1
                    q = z - a
                else:
                    if r >= sm:
                        a += 1
                    q = z + a
        if q < lo:
            q = lo
        elif q > hi:
            q = hi
        xq[i] = q
        i += 1
    return 0
