# micromlp_tiny: the micromlp engine cut to fit a ~10 KB heap (BBC micro:bit v1,
# which compiles every module on the board and has no .mpy import). Same file
# format and the same integers as micromlp.py; API: load(path, stream=False),
# net.run(x, out), net.predict(x), net.n_inputs, net.n_outputs. It checks what corruption breaks
# (magic, version, layer chain, CRC); `micromlp deploy` checks every field and
# the 2**30 proof on the host before it sends a model. Deployed as micromlp.py.
import struct
from array import array

try:
    from binascii import crc32
except ImportError:
    crc32 = None


class ModelError(ValueError):
    pass


class Net:
    def __init__(self, src, stream=False):
        if isinstance(src, str):
            f = open(src, "rb")
        else:  # a module holding MODEL bytes (model_mlp.py / .mpy)
            try:
                from io import BytesIO
            except ImportError:
                from uio import BytesIO
            f = BytesIO(src.MODEL)
            stream = False
        data = None if isinstance(src, str) else src.MODEL
        self.f = f
        self.path = src if stream else None
        end = 0  # where the previous layer's weights end
        self.pos = 0
        self.crc = 0
        h = self._get(40)
        ver, _, _, nl, n, _, _, self.lo, self.hi = struct.unpack("<HHIHHHHii", h[4:28])
        if h[:4] != b"MMLP" or ver != 1:
            raise ModelError("offset 0: not a version 1 micromlp model")
        self._get(8 * n)
        self.n_inputs = n
        self.x = [0] * n
        self.layers = []
        for _ in range(nl):
            h = self._get(40)
            _, ni, no, wb, fl, act, _, lo, hi = struct.unpack("<IHHBBBBii", h[:20])
            lm, ls = struct.unpack("<HB", h[36:39]) if act == 3 else (0, 0)
            if ni != n or wb != 8 or act > 3:
                raise ModelError("offset %d: bad layer" % self.pos)
            skip = self.pos - end
            k0 = 0
            if stream or data:  # weights stay in the file (one row buffer) or in MODEL
                k0 = self.pos
                for _ in range(no):
                    self._get(ni)
                w = data or bytearray(ni)
            else:
                w = self._get(ni * no)
            end = self.pos
            self._get(-(ni * no) & 3)
            b = array("i", self._get(4 * no)) if fl & 1 else None
            m = array("i", self._get(4 * no))
            s = self._get((no + 3) & ~3)
            self._get(4 * no)
            lf = -((1 << 30) // lm - 1) if lm else 0  # LeakyReLU floor: keeps lm * a < 2**30
            self.layers.append((ni, no, w, b, m, s, lo, hi, [0] * no, skip, k0, lm, ls, lf))
            n = no
        crc = self.crc
        if self._get(4, 0) != struct.pack("<I", crc):
            raise ModelError("offset %d: CRC mismatch" % (self.pos - 4))
        f.close()
        self.n_outputs = n

    def _get(self, n, check=1):
        d = self.f.read(n)
        if len(d) != n:
            raise ModelError("truncated at offset %d" % self.pos)
        if check:
            c = self.crc
            if crc32:
                c = crc32(d, c)
            else:
                c ^= 0xFFFFFFFF
                for v in d:
                    c ^= v
                    for _ in range(8):
                        c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
                c ^= 0xFFFFFFFF
            self.crc = c
        self.pos += n
        return d

    def run(self, x, out=None):
        if out is None:
            out = [0] * self.n_outputs
        for i in range(self.n_inputs):
            self.x[i] = min(max(x[i], self.lo), self.hi)
        x = self.x
        f = open(self.path, "rb") if self.path else None
        for _, no, w, b, m, s, lo, hi, y, skip, k, lm, ls, lf in self.layers:
            # sum(w x) with weights stored as w + 128: start at b - 128 * sum(x)
            t = 0
            for v in x:
                t += v
            if f:  # read past what lies between the weights, into the row buffer
                while skip > 0:
                    n = min(skip, len(w))
                    try:
                        f.readinto(w, n)
                    except TypeError:  # CPython's readinto takes no count
                        f.readinto(memoryview(w)[:n])
                    skip -= n
            for o in range(no):
                if f:  # streaming: the next weight row from the file
                    f.readinto(w)
                    k = 0
                a = (b[o] if b else 0) - 128 * t
                for v in x:
                    a += w[k] * v
                    k += 1
                sh = s[o]
                if sh < 15:
                    a = (a * m[o] + ((1 << sh) >> 1)) >> sh
                else:  # split at bit 15 so no product reaches 2**30 (docs/format.md)
                    a = ((a >> 15) * m[o] + ((1 << sh - 16) if sh > 15 else 0)
                         + (((a & 32767) * m[o] + (16384 if sh == 15 else 0)) >> 15)) >> (sh - 15)
                if a < 0 and lm:  # LeakyReLU, as in micromlp.py
                    a = (max(a, lf) * lm + ((1 << ls) >> 1)) >> ls
                y[o] = lo if a < lo else (hi if a > hi else a)
            x = y
        if f:
            f.close()
        for i in range(self.n_outputs):
            out[i] = x[i]
        return out

    def predict(self, x):
        y = self.run(x, self.layers[-1][8])
        return y.index(max(y))


def load(src, stream=False):
    """src: a path, or a module holding MODEL bytes. stream=True (paths only) reads
    the weights from the file on every run, a row at a time (it opens the file:
    an allocation per run, and a little time)."""
    return Net(src, stream)
