# micromlp_tiny_run: the tiny engine's runtime, a script micromlp_tiny.py runs a
# statement at a time (like the loader) once the model is loaded, so that it
# compiles in the heap the loader has left; load() returns its Net(d). Each
# method is a function of its own, a statement small enough for a micro:bit.
from array import array

try:  # frames of the layer loop stay off the heap while it is locked (see run)
    from micropython import heap_lock as _lock, heap_unlock as _unlock  # noqa: I001
except ImportError:
    def _lock():
        pass
    _unlock = _lock

# Net.run, predict and _in keep their frames small: MicroPython allocates a
# larger bytecode frame on the heap unless the heap is locked, and the layer
# loop runs locked (except when streaming, which opens the file each run).


def net_init(self, d):
    # d from micromlp_tiny_fill.py: (n_inputs, lo, hi, layers, path, input table, scale)
    self.n_inputs, self.lo, self.hi, self.layers, self.path, self.tab, self.out_scale = d
    self.in_lo, self.in_hi = self.lo, self.hi  # the names micromlp.py's Net has
    self.n_outputs = self.layers[-1][1]
    self.x = array("i", [0] * self.n_inputs)  # the clamped inputs
    self.y = self.layers[-1][8]  # the last layer's outputs


def net_run(self, x, out=None):
    if out is None:
        out = [0] * self.n_outputs
    self._in(x)
    y = self.y
    i = self.n_outputs
    while i:
        i -= 1
        out[i] = y[i]
    return out


def net_predict(self, x):
    self._in(x)
    y = self.y
    return y.index(max(y))


def net_in(self, x):
    if len(x) != self.n_inputs:
        raise ValueError("expected %d inputs" % self.n_inputs)
    xq = self.x  # clamped by comparisons (any int); a float is refused here
    i = self.n_inputs
    while i:
        i -= 1
        v = x[i]
        xq[i] = self.lo if v < self.lo else (self.hi if v > self.hi else v)
    if self.path:
        self._layers()
    else:
        _lock()
        self._layers()
        _unlock()


def net_skip(f, w, skip):
    # streaming: read past what lies between two layers' weights, into the row buffer
    while skip > 0:
        n = min(skip, len(w))
        try:
            f.readinto(w, n)
        except TypeError:  # CPython's readinto takes no count
            f.readinto(memoryview(w)[:n])
        skip -= n


def net_layers(self):
    x = self.x
    f = open(self.path, "rb") if self.path else None
    for _, no, w, b, m, s, lo, hi, y, skip, k, lm, ls, lf in self.layers:
        # sum(w x) with weights stored as w + 128: start at b - 128 * sum(x)
        t = 0
        for v in x:
            t += v
        if f:
            net_skip(f, w, skip)
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


class Net:
    __init__ = net_init
    run = net_run
    predict = net_predict
    _in = net_in
    _layers = net_layers
