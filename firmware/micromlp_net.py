# micromlp_net: the kernels and the Net of micromlp.py, imported by micromlp.load()
# once the file is read (micromlp_load.py checks it and is dropped first).
#
# Kernels: 'c' is micromlp_c.mpy, a native module built for one architecture
# (firmware/native/); 'viper' and 'native' live in micromlp_viper.py (the whole-net call)
# and micromlp_viper_layers.py (the per-layer kernels; ports without the viper emitter
# cannot even compile these); 'portable' is micromlp_portable.py, imported only by a net
# on it or on 'native'; streaming is micromlp_stream.py. All four compute the same integers.
# Integer arithmetic only, MicroPython 1.9-era syntax.

from array import array

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    # Inference runs with the heap locked: MicroPython then keeps a bytecode
    # function's frame on the C stack instead of allocating it (docs/format.md).
    from micropython import heap_lock as _lock
    from micropython import heap_unlock as _unlock
except ImportError:

    def _lock():
        pass

    _unlock = _lock

# micromlp_viper and micromlp_viper_layers, imported where a net needs them (a net on the
# C kernels never does): the module, or None where the port has no viper emitter (it
# cannot even compile them); _UNTRIED before the first try.
_UNTRIED = 0
_VIPER = [_UNTRIED, _UNTRIED]


def _viper(i=0):
    # micromlp_viper (i 0) or micromlp_viper_layers (i 1)
    if _VIPER[i] is _UNTRIED:
        try:
            if i:
                import micromlp_viper_layers as m
            else:
                import micromlp_viper as m
        except (ImportError, SyntaxError, NameError):
            m = None
        _VIPER[i] = m
    return _VIPER[i]


# micromlp_c (the kernels in C, firmware/native/) where it loads, and why a
# micromlp_c.mpy on the path was not taken: set by build() from what micromlp_load.native()
# found (the search runs in the reader, which load() drops again).
_c = None
C_NOTE = None

# A layer's parameters as one int32 array q, shared by every kernel; its slots:
_N_IN = const(0)  # inputs
_N_OUT = const(1)  # outputs
_LO = const(2)  # the output clamp [lo, hi]
_HI = const(3)
_HAS_BIAS = const(4)
_ROW0 = const(5)  # the rows a kernel call computes: first, end (streaming: a block)
_ROW_END = const(6)
_W_OFF = const(7)  # where row _ROW0's weights start in w
_SX = const(8)  # 32 on 64-bit ports (viper sign-extends 32-bit loads with it), else 0
_W_ZERO = const(9)  # weight zero point: 128 for 8-bit weights (stored offset-binary)
_X_SX = const(10)  # _SX where this layer's inputs can be negative, else 0
_SLOPE_M = const(11)  # LeakyReLU: slope_mult (0: no LeakyReLU), slope_shift, its
_SLOPE_S = const(12)  # rounding term, and the floor a negative value is clamped to
_SLOPE_RND = const(13)  # before the slope multiplies it
_SLOPE_FLOOR = const(14)
_WIDE = const(15)  # 1: a wide layer (the dot product in the inputs' two bytes)
# then per channel c at _Q + 4*c: bias, mult, rnd, shift; rnd = 2**(shift-1) (0 for
# shift 0), or from shift 15 on, 2**(shift-16) (0 for shift 15), the rounding term
# above bit 15.
_Q = const(16)

_FLOAT = None  # micromlp_float, once imported
_PORTABLE = None  # micromlp_portable, once imported


def _float():
    global _FLOAT
    if _FLOAT is None:
        try:
            import micromlp_float as f
        except ImportError:  # CPython, as the package module micromlp.firmware.micromlp
            from . import micromlp_float as f
        _FLOAT = f
    return _FLOAT


def _portable():
    # the bytecode kernels (micromlp_portable.py), imported by a net that uses them
    global _PORTABLE
    if _PORTABLE is None:
        try:
            import micromlp_portable as m
        except ImportError:  # CPython, as the package module micromlp.firmware.micromlp_net
            from . import micromlp_portable as m
        _PORTABLE = m
    return _PORTABLE


def _kernel(name, wsize):
    # The kernel function for a layer (micromlp.load has checked the name).
    if name == "portable":
        return _portable().linear
    if name == "c":
        return _c.linear8 if wsize == 1 else _c.linear16
    fast = _viper(1)
    if fast is None:
        raise ValueError("kernel %r needs micromlp_viper_layers.py here" % name)
    if name == "viper":
        return fast.linear8 if wsize == 1 else fast.linear16
    return fast.linear_native


class Layer:
    """One Linear (+ optional ReLU) layer in integer form."""

    def __init__(self, q, w, wsize, relu, typed):
        self.q = q
        self.n_in = q[_N_IN]
        self.n_out = q[_N_OUT]
        self.has_bias = q[_HAS_BIAS]
        self.w = w  # bytes-like (8-bit weights, offset by 128) or array('h') (16-bit)
        self.wsize = wsize
        self.relu = relu
        self.fn = None  # the kernel function (Net._ready), where net8 does not run it
        self.w_pos = 0  # streaming: where the weights start in the file
        # Outputs: an array for viper (ptr32), a list for the bytecode kernels
        # (faster to iterate); either way made once, here.
        self.y = array("i", bytes(4 * self.n_out)) if typed else [0] * self.n_out

    def __repr__(self):
        return "Layer(%d->%d%s%s)" % (
            self.n_in,
            self.n_out,
            ", bias" if self.has_bias else "",
            ", relu" if self.relu else "",
        )


class Net:
    """A loaded model: run(x) maps quantized input ints to output ints."""

    def __init__(self, layers, in_lo, in_hi, out_scale, kernel, bits):
        self.layers = layers
        self.n_inputs = layers[0].n_in
        self.n_outputs = layers[-1].n_out
        self.in_lo = in_lo
        self.in_hi = in_hi
        self.out_scale = out_scale
        self.kernel = kernel
        self.stream = None  # the open model file when weights stay on storage
        # micromlp_viper where this net runs on viper (the float API then quantizes with
        # viper too), else None
        fast = _viper() if kernel == "viper" else None
        # the bytecode kernels take a caller's array of ints in range as it is
        self.bytecode = kernel in ("native", "portable")
        # the clamped inputs: an array('i'), so a float in x is refused, not computed with
        self.x = array("i", bytes(4 * self.n_inputs))
        self.y = layers[-1].y  # the last layer's outputs (predict reads them in place)
        # what run() needs, gathered once: the input clamp, each layer's kernel
        # call, and the copy of the result
        self.fast = fast
        # the module with prep, copy and argmax
        kern = _c if kernel == "c" else (fast or _portable())
        self.prep = kern.prep
        self.copy = kern.copy
        self.argmax = kern.argmax
        self.lim = [in_lo, in_hi]
        # viper sign-extends 32-bit loads on 64-bit ports where values can be < 0;
        # the last two slots: the input table's step and entries (see _floats)
        sx = 32 if fast and bits == 64 else 0
        self.bounds = array(
            "i",
            [
                self.n_inputs,
                in_lo,
                in_hi,
                sx if in_lo < 0 else 0,
                self.n_outputs,
                sx if layers[-1].q[_LO] < 0 else 0,
                sx,
                1,
                self.n_inputs,
            ],
        )
        self.plan = None
        # floats in: the input table comes from the file (see _floats); net.inputs is
        # made on first use (a model that takes ints never pays for it)
        self.in_table = None
        self._fin = None
        self.fb = self.tb = None  # the bytecode path's 16-bit views of inputs and table
        self.vsrc = self.vb = None  # the caller's own array('f') and its view (quantize)

    def _ready(self):
        # Each layer's kernel call, gathered once its weights are in place; for viper
        # and C with 8-bit weights in RAM, the whole network as one call (net8)
        self.plan = self.net8 = None
        if self.kernel in ("viper", "c") and self.stream is None and all(
                [layer.wsize == 1 for layer in self.layers]):
            flat = [self.x, self.bounds]
            if self.kernel == "c":  # and room for the inputs packed in pairs (its DSP path)
                widest = max([layer.n_in for layer in self.layers])
                flat.append(array("i", bytes(_c.SCRATCH * (widest & ~3))))
            for layer in self.layers:
                flat += [layer.w, layer.q, layer.y]
            self.net8 = tuple(flat)
            return self
        for layer in self.layers:  # (the per-layer kernels only where net8 is not used)
            layer.fn = _kernel(self.kernel, layer.wsize)
        self.plan = tuple([(layer.fn, self._weights(layer, layer.w), layer.q, layer.y)
                           for layer in self.layers])
        return self

    def _weights(self, layer, w):
        # the weights argument of layer's kernel: viper and C take w, the others lanes(w)
        return w if w is None or not self.bytecode else _portable().lanes(w, layer.n_in)

    def __repr__(self):
        return "Net(%s)" % ", ".join([repr(layer) for layer in self.layers])

    # run, predict and _infer keep their frames small (a few locals): MicroPython
    # puts a larger bytecode frame on the heap unless the heap is locked, and the
    # layers run with it locked, so an inference allocates nothing. Nothing in the
    # locked part can raise (inputs are checked before it); a Ctrl-C there leaves
    # the heap locked until micropython.heap_unlock() or the REPL.

    def run(self, x, out=None):
        """Integer outputs for the integer inputs x; allocation-free when out is given."""
        if out is None:
            out = array("i", bytes(4 * self.n_outputs))
        if not self._net8(x):
            self._infer(x)
        self.copy(self.y, out, self.bounds)
        return out

    def predict(self, x):
        """Index of the largest output (the first one on a tie); allocation-free."""
        if not self._net8(x):
            self._infer(x)
        return self.argmax(self.y, self.bounds)

    def _net8(self, x):
        # The one viper or C call (clamp and every layer; no bytecode frame, so nothing
        # is allocated even without heap_lock) where x is an array('i'): True if it ran.
        if self.net8 is None or type(x) is not array:
            return False
        if self.kernel == "c":
            return _c.net8(x, self.net8)
        fast = self.fast
        fast.PLAN = self.net8
        fast.SRC = x
        done = fast.net8()
        # let go: a module global holding the plan kept a dropped net's weights alive
        fast.PLAN = fast.SRC = None
        return done

    def _infer(self, x):
        # Clamp inputs to the declared range: the overflow proof assumes it. The
        # bytecode kernels take an array of ints already in range as it is (min and
        # max run in C: no copy, and no bytecode loop over the inputs).
        if len(x) != self.n_inputs:
            raise ValueError("expected %d inputs, got %d" % (self.n_inputs, len(x)))
        if not (self.bytecode and type(x) is array and type(x[0]) is int
                and min(x) >= self.in_lo and max(x) <= self.in_hi):
            self.prep(x, self.x, self.bounds, self.lim)
            x = self.x
        _lock()
        self._layers(x)
        _unlock()

    def _layers(self, xq):
        if self.net8:  # the inputs are clamped into self.x already
            self._net8(xq)
            return
        if self.stream is None:
            for fn, w, q, y in self.plan:
                fn(xq, w, q, y)
                xq = y
        else:
            run = self.stream_layer  # micromlp_stream.run_layer
            for layer in self.layers:
                run(self, xq, layer)
                xq = layer.y

    def _floats(self, table):
        # the file's input table, for quantize: n float32 scales, then n int32 zero
        # points; or one of each where every input has the same (micromlp_load keeps
        # that one entry): the quantizers read entry i * step of the table's entries
        self.in_table = table
        entries = len(table) // 8
        self.bounds[7] = 1 if entries > 1 else 0
        self.bounds[8] = entries

    # The float API lives in micromlp_float.py, imported on first use: a model fed
    # ints never holds it in RAM.
    @property
    def inputs(self):
        """The engine's own float32 inputs (an array('f')): fill it, then quantize it."""
        return _float().inputs(self)

    def quantize(self, values, xq=None):
        """Floats (a list, net.inputs or your own array('f')) -> the input ints, into xq
        (an array('i'); default the engine's own); exactly the host's quantize_input:
        clamp(floor(x / scale + 1/2) + zero) on the exact rational, ties up, +-inf
        clamped, NaN refused. Allocates nothing for a list or net.inputs, nor for your
        own array('f') after the first call with it (which makes a view of its bits)."""
        return _float().quantize(self, values, xq)

    def predict_float(self, values):
        """Index of the largest output for float inputs (quantize, then predict)."""
        return self.predict(self.quantize(values))

    def dequantize(self, out, buf=None):
        """Output ints as floats, into buf (an array('f') or a list; default a new
        list). A float is a heap object on most ports: this allocates there."""
        return _float().dequantize(self, out, buf)

    def probabilities(self, out, buf=None):
        """The softmax of the dequantized outputs (one output: its sigmoid), into buf.
        Allocates floats where they are heap objects."""
        return _float().probabilities(self, out, buf)

    def close(self):
        """Close the model file of a streaming net."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def build(parts, kernel, bits, native=(None, None)):
    # The Net from micromlp_load.read's parts; kernel None: the fastest this port has
    # (saying so where a micromlp_c.mpy was there and could not be used); bits: the
    # port's word size; native: micromlp_load.native()'s (module, note).
    global _c, C_NOTE
    _c, C_NOTE = native
    if kernel is None:
        kernel = "c" if _c else ("viper" if _viper() else "portable")
        if C_NOTE:
            print("micromlp: %s; using the %s kernel" % (C_NOTE, kernel))
    if kernel == "c" and _c is None:
        raise ValueError("kernel 'c' needs micromlp_c.mpy built for this port's "
                         "architecture (firmware/native/): %s" % (C_NOTE or "not found"))
    if kernel in ("viper", "native") and _viper() is None:
        raise ValueError("kernel %r needs micromlp_viper.py and a port with viper" % kernel)
    layers = []
    for q, w, w_pos, wsize, relu in parts[0]:
        layer = Layer(q, w, wsize, relu, kernel in ("viper", "c"))
        layer.w_pos = w_pos
        layers.append(layer)
    net = Net(layers, parts[1], parts[2], parts[3], kernel, bits)
    net._floats(parts[4])
    return net


def in_place(net, data):
    # The module form: 8-bit weights used where they are, in the module's bytes (no
    # RAM when the module is frozen or in ROMFS); 16-bit ones were copied (alignment).
    for layer in net.layers:
        if layer.w is None:
            layer.w = data
            layer.q[_W_OFF] = layer.w_pos
    # The input table too (n float32 scales, n int32 zero points at offset 40, checked by
    # the reader), where it is word-aligned in the module's bytes: the float API reads it
    # by words, which a Cortex-M0 cannot do unaligned. Its RAM copy then goes (a
    # table of one entry stays: 8 bytes).
    try:
        import uctypes

        if net.bounds[8] > 1 and (uctypes.addressof(data) + 40) & 3 == 0:
            net.in_table = memoryview(data)[40:40 + 8 * net.n_inputs]
    except (ImportError, TypeError):  # CPython; a port whose bytes have no address
        pass
    return net._ready()
