# micromlp_tiny_load: the tiny engine's loader, a script. micromlp_tiny.py
# (micromlp.py on the board) runs it one top-level statement at a time in a
# namespace holding src, stream and err (ModelError), takes d from it and drops
# it: a micro:bit can compile neither the whole file at once nor keep its code,
# and top-level code is freed once it has run. Keep every top-level statement
# starting at column 0 and none much longer than the layer loop.
#
# It checks everything firmware/micromlp.py checks, with shorter messages: the
# layer chain, every reserved and informational field the format fixes, the
# CRC, and the 2**30 proof, recomputed from the weights (the file's accumulator
# bound is only cross-checked). It leaves d = (n_inputs, lo, hi, each layer's
# n_in, n_out, flags, lo, hi, slope_mult, slope_shift in one array, the model
# path when streaming else None) for micromlp_tiny_fill.py, which reads the rest.
import struct
from array import array

try:
    from binascii import crc32
except ImportError:  # the micro:bit: computed bit by bit below
    crc32 = None
B = 1 << 30  # every value formed stays below this in magnitude
R = 1 << 29  # inputs and their zero points stay this close to 0 (net.quantize)
INF = 0x7F800000  # float32 bits of +inf


def ck(ok, at, what):
    if not ok:
        raise err("offset %d: bad %s" % (at, what))


def get(n):  # the next n bytes (calls nothing more: a micro:bit's stack is short)
    global pos
    b = f.read(n)
    if len(b) != n:
        raise err("offset %d: bad length" % pos)
    pos += n
    return b


def reopen():
    global f, pos
    pos = 0
    if data is None:
        f = open(src, "rb")
    else:
        try:
            from io import BytesIO
        except ImportError:
            from uio import BytesIO
        f = BytesIO(data)


data = None if isinstance(src, str) else src.MODEL  # model_mlp.py / .mpy
size = len(data or "")
reopen()
if data is None:  # files on a micro:bit cannot seek: count the bytes
    k = bytearray(64)
    n = f.readinto(k)
    while n:
        size += n
        n = f.readinto(k)
    f.close()
    reopen()
c = 0  # the CRC of all but the last 4 bytes, a chunk at a time
n = size - 4
while n > 0:
    k = f.read(min(64, n))
    n -= 64
    if crc32:
        c = crc32(k, c)
    else:
        c ^= 0xFFFFFFFF
        for v in k:
            c ^= v
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        c ^= 0xFFFFFFFF
ck(size > 44 and f.read(4) == struct.pack("<I", c & 0xFFFFFFFF), size - 4, "CRC")
f.close()
reopen()
del reopen  # each helper goes once it is no longer needed: RAM for the next statement
h = get(40)
ver, hs, fs, nl, n, n_out, wd, lo, hi, osc, _, res = struct.unpack("<HHIHHHHiiIfI", h[4:])
ck(h[:4] == b"MMLP" and ver == 1 and hs == 40, 0, "header")
ck(fs == size, 8, "size")
ck(nl > 0 and -R < lo <= hi < R and 0 < osc < INF and not res, 12, "header")
ck(48 + 8 * n + 56 * nl <= size, 12, "counts")  # each layer record has 56 bytes or more
for _ in range(n):
    ck(0 < struct.unpack("<I", get(4))[0] < INF, pos - 4, "input scale")
for _ in range(n):  # zero points: within 2**29 of both ends of the input range
    v = struct.unpack("<i", get(4))[0]
    ck(hi - v < R and v - lo < R, pos - 4, "zero point")
# each layer's n_in, n_out, flags, lo, hi, slope_mult, slope_shift: one array made
# now, not a tuple per layer scattered among the loop's garbage
d = (n, lo, hi, array("i", bytes(28 * nl)), src if stream and not data else None)
xm = max(-lo, hi)
wide = n


def head(n):  # a layer header, checked -> its fields, its offset
    at = pos
    h = struct.unpack("<IHHBBBBiiIfIfHBB", get(40))
    sz, ni, no, wb, fl, act, r1, lo, hi, bd, _, ol, _, lm, ls, r2 = h
    ck(ni == n and no and wb == 8 and act < 4 and fl < 4 and fl != 2
       and not (r1 or r2) and -B < lo <= hi < B and bd < B, at, "layer")
    ck(0 < lm < 8192 and ls <= 20 if act == 3 else not (lm or ls), at, "slope")
    ck(sz == 40 + (-(-ni * no // 4) + no * (2 + (fl & 1)) + -(-no // 4)) * 4
       and at + sz + 4 <= size, at, "layer size")
    return h, at


def weights(ni, no):  # -> each row's sum |w| (stored as w + 128), via one row buffer
    global pos
    t = [0] * no
    w = bytearray(ni)
    for c in range(no):
        if f.readinto(w) != ni:
            raise err("offset %d: bad length" % pos)
        pos += ni
        for v in w:
            t[c] += v - 128 if v > 128 else 128 - v
    get(-(ni * no) & 3)
    return t


def bias(h, at, xm, t):  # each channel's worst case, recomputed
    no, bd = h[2], h[9]
    b = array("i", get(4 * no)) if h[4] & 1 else None
    m = 0
    for c in range(no):  # the file's accumulator bound is a cross-check
        v = abs(b[c]) if b else 0
        m = max(m, v)
        ck(v + xm * t[c] <= bd, at, "accumulator bound")
    ck(m + 128 * max(h[1], 2) * xm < B, at, "running sum")


def requant(h, at):  # the multipliers and shifts: no product may reach 2**30
    no, bd = h[2], h[9]
    m = array("i", get(4 * no))
    s = get((no + 3) & ~3)
    get(4 * no)
    for c in range(no):
        v = s[c]
        ck(m[c] > 0 and v <= 45 and (m[c] < 16384 if v >= 15 else
           bd * m[c] + ((1 << v) >> 1) < B), at, "requantizer")


for i in range(nl):  # each layer record
    h, at = head(n)
    bias(h, at, xm, weights(h[1], h[2]))
    requant(h, at)
    for k, v in enumerate((1, 2, 4, 7, 8, 13, 14)):
        d[3][7 * i + k] = h[v]
    n = h[2]
    wide = max(wide, n)
    xm = max(-h[7], h[8])
    ol = h[11]
ck(n == n_out and wd == wide and ol == osc, 16, "header")
ck(pos + 4 == size, pos, "size")
f.close()
del head, weights, bias, requant
