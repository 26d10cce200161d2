# Fast kernels for micromlp_net.py on ports with the viper emitter: an 8-bit network in
# RAM in one call (net8), the input clamp, the copy of the outputs and argmax. The
# per-layer kernels (streaming, 16-bit weights), the 'native' kernel and viper's float
# quantizer are in micromlp_viper_layers.py, imported only where a net needs them.
#
# Same integers as micromlp_portable.linear (the portable kernel): y = clamp(round((W x + b)
# * mult / 2**shift)) per layer; layout of q in micromlp_net.py. Every value stays below
# 2**30 (the exporter proves it), so a viper machine word never wraps. Viper loads are
# unsigned: 8-bit weights are stored as w + 128 (so sum(w x) = sum(u x) - 128 sum(x)),
# and on 64-bit ports ptr32 loads are sign-extended by a shift pair (q[_SX] = 32;
# q[_X_SX] = 32 too when the layer's inputs can be negative).
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
def prep(x, xq: ptr32, b: ptr32, lim):
    # xq = x clamped to lim = [lo, hi] (objects), b = n, lo, hi, ...: compared as
    # objects, so an int past the machine word clamps right (int() alone would
    # keep its low word); only values in range are converted.
    lo_o = lim[0]
    hi_o = lim[1]
    n = b[0]
    i = 0
    while i < n:
        xo = x[i]
        if xo < lo_o:
            v = b[1]
        elif xo > hi_o:
            v = b[2]
        else:
            v = int(xo)
        xq[i] = v
        i += 1


@micropython.viper
def copy(y: ptr32, out, b: ptr32):
    # out[i] = y[i] for the b[4] outputs, sign-extended by b[5] on 64-bit ports; into
    # an array('i') long enough by words (a store through out as an object boxes each
    # value: ten times the cost), else item by item (a list; a short out raises)
    sx = b[5]
    n = b[4]
    i = n
    head = ptr8(int(id(out)))
    if head[8 if b[6] else 4] == 0x69 and int(len(out)) >= n:  # 0x69: 'i'
        o = ptr32(out)
        while i:
            i -= 1
            o[i] = y[i]
        return
    i = 0
    while i < n:
        out[i] = (y[i] << sx) >> sx
        i += 1


@micropython.viper
def argmax(y: ptr32, b: ptr32) -> int:
    # index of the largest of the b[4] outputs (the first on a tie), sign-extended by b[5]
    sx = b[5]
    n = b[4]
    best = 0
    top = (y[0] << sx) >> sx
    i = 1
    while i < n:
        v = (y[i] << sx) >> sx
        if v > top:
            top = v
            best = i
        i += 1
    return best




# What net8() runs: Net sets them before each call (a parameter would take one of
# the machine registers viper gives the first three locals). SRC: the inputs, an
# array (the engine's own net.x, or the caller's).
PLAN = None
SRC = None


@micropython.viper
def net8() -> int:
    # Every layer of an all-8-bit network in one call: PLAN = (x, Net.bounds, then w,
    # q, y of each layer); the inputs SRC, clamped into x first. Returns 1, or 0 when
    # SRC is not an array('i') of the right length (nothing is computed).
    # Same integers as micromlp_viper_layers.linear8 layer by layer (tests/test_engine.py).
    # Written for the code viper emits on Thumb, where it keeps two locals in registers
    # (i and xv, which every multiply-add reads; three on x64) and the rest in the frame:
    # - eight rows share each pass over x (each input loaded and zero-tested once per
    #   eight multiply-adds; two or one at a layer's end, one where inputs can be
    #   negative: a four-row pass too cost more code, in RAM on a board, than it saved),
    #   each row's weights read through a view of its own (w0..w7 at the row's start)
    #   by the input's index;
    # - loops count down to 0 (`while i` is one compare; `while i < n` makes a boolean
    #   and tests it): the sums are exact, so their order is free;
    # - `a = w * x + a` loads a after the product (`a += w * x` spills a to the frame
    #   while the product is made);
    # - a layer's input sum (for the weights' offset) is made as its inputs are: in the
    #   clamp, then as each output is requantized;
    # - the rows' sums go to y and are requantized from there (no chain of tests to
    #   pick one of eight locals).
    i = 0
    xv = 0
    a0 = 0
    a1 = 0
    a2 = 0
    a3 = 0
    k = 0
    n = 0
    w0 = ptr8(0)
    w1 = ptr8(0)
    w2 = ptr8(0)
    w3 = ptr8(0)
    a4 = 0
    a5 = 0
    a6 = 0
    a7 = 0
    w4 = ptr8(0)
    w5 = ptr8(0)
    w6 = ptr8(0)
    w7 = ptr8(0)
    plan = PLAN
    x = ptr32(plan[0])
    b = ptr32(plan[1])  # Net.bounds: n, lo, hi, ..., 64-bit sign extension at b[6]
    # The inputs: SRC must be an array('i') of n values (its typecode byte follows the
    # object's type pointer, as in every MicroPython since 1.0), else 0 is returned
    # and the caller takes the checked path. Clamped into x, sign-extended by b[6] on
    # 64-bit ports: any int32 clamps right.
    src = SRC
    sx = b[6]
    n = b[0]
    head = ptr8(int(id(src)))
    if head[8 if sx else 4] != 0x69 or int(len(src)) != n:  # 0x69: 'i'
        return 0
    xs = ptr32(src)
    lo = (b[1] << sx) >> sx
    hi = (b[2] << sx) >> sx
    s = 0  # the sum of a layer's inputs, made as they are (the weights' offset, below)
    i = n
    while i:
        i -= 1
        xv = (xs[i] << sx) >> sx
        if xv < lo:
            xv = lo
        elif xv > hi:
            xv = hi
        x[i] = xv
        s += xv
    nl = (int(len(plan)) - 2) // 3
    li = 0
    while li < nl:
        w = ptr8(plan[3 * li + 2])
        q = ptr32(plan[3 * li + 3])
        y = ptr32(plan[3 * li + 4])
        n = q[_N_IN]
        end = q[_N_OUT]
        lo = q[_LO]
        hi = q[_HI]
        bias = q[_HAS_BIAS]
        k = q[_W_OFF]
        sx = q[_SX]
        xsx = q[_X_SX]
        lm = q[_SLOPE_M]
        ls = q[_SLOPE_S]
        lr = q[_SLOPE_RND]
        lf = (q[_SLOPE_FLOOR] << sx) >> sx
        lo = (lo << sx) >> sx
        hi = (hi << sx) >> sx
        z = 0 - (s << 7)  # 8-bit weights are stored + 128: sum(w x) = sum(u x) - 128 sum(x)
        s = 0
        o = 0
        while o < end:
            j = _Q + 3 * o
            a0 = z
            a1 = z
            a2 = z
            a3 = z
            a4 = z
            a5 = z
            a6 = z
            a7 = z
            rows = 1
            if not xsx:
                rows = end - o
                if rows >= 8:
                    rows = 8
                elif rows >= 2:
                    rows = 2
            if bias:
                qj = ptr32(int(q) + 4 * j)
                a0 += (qj[0] << sx) >> sx
                if rows > 1:
                    a1 += (qj[3] << sx) >> sx
                if rows > 2:
                    a2 += (qj[6] << sx) >> sx
                    a3 += (qj[9] << sx) >> sx
                    a4 += (qj[12] << sx) >> sx
                    a5 += (qj[15] << sx) >> sx
                    a6 += (qj[18] << sx) >> sx
                    a7 += (qj[21] << sx) >> sx
            i = n
            w0 = ptr8(int(w) + k)
            w1 = ptr8(int(w0) + n)
            w2 = ptr8(int(w1) + n)
            w3 = ptr8(int(w2) + n)
            w4 = ptr8(int(w3) + n)
            w5 = ptr8(int(w4) + n)
            w6 = ptr8(int(w5) + n)
            w7 = ptr8(int(w6) + n)
            k += rows * n
            if xsx:  # inputs that can be negative: one row at a time, sign-extended
                while i:
                    i -= 1
                    a0 = int(w0[i]) * ((x[i] << xsx) >> xsx) + a0
            elif rows == 8:
                while i:
                    i -= 1
                    xv = x[i]
                    if xv:
                        a0 = int(w0[i]) * xv + a0
                        a1 = int(w1[i]) * xv + a1
                        a2 = int(w2[i]) * xv + a2
                        a3 = int(w3[i]) * xv + a3
                        a4 = int(w4[i]) * xv + a4
                        a5 = int(w5[i]) * xv + a5
                        a6 = int(w6[i]) * xv + a6
                        a7 = int(w7[i]) * xv + a7
            elif rows == 2:
                while i:
                    i -= 1
                    xv = x[i]
                    if xv:
                        a0 = int(w0[i]) * xv + a0
                        a1 = int(w1[i]) * xv + a1
            else:
                while i:
                    i -= 1
                    xv = x[i]
                    if xv:
                        a0 = int(w0[i]) * xv + a0
            # the rows' sums into y, then each requantized where it lies
            y[o] = a0
            if rows > 1:
                y[o + 1] = a1
            if rows > 2:
                y[o + 2] = a2
                y[o + 3] = a3
                y[o + 4] = a4
                y[o + 5] = a5
                y[o + 6] = a6
                y[o + 7] = a7
            t = rows
            while t:
                t -= 1
                acc = (y[o] << sx) >> sx
                qj = ptr32(int(q) + 4 * j)
                m = qj[1]
                sh = qj[2]
                if sh < 15:  # (the rounding term 2**(sh-1) is (1 << sh) >> 1)
                    acc = (acc * m + ((1 << sh) >> 1)) >> sh
                else:  # split at bit 15 so no product reaches 2**30 (see micromlp_portable.linear)
                    sh -= 15
                    lo15 = 0
                    if sh == 0:
                        lo15 = 16384
                    acc = ((acc >> 15) * m + ((1 << sh) >> 1)
                           + (((acc & 32767) * m + lo15) >> 15)) >> sh
                if acc < 0 and lm:  # LeakyReLU
                    if acc < lf:
                        acc = lf
                    acc = (acc * lm + lr) >> ls
                if acc < lo:
                    acc = lo
                elif acc > hi:
                    acc = hi
                y[o] = acc
                s += acc
                o += 1
                j += 3
        x = y
        li += 1
    return 1
