# micromlp_net: the Net of micromlp.py and what runs it, imported by micromlp.load()
# once the file is read (micromlp_load.py checks it and is dropped first); the net is
# put together by micromlp_build.py, which load() drops again once the net is ready.
#
# Kernels: 'c' is micromlp_c.mpy, a native module built for one architecture
# (firmware/native/); 'viper' and 'native' live in micromlp_viper.py (the whole-net call)
# and micromlp_viper_layers.py (the per-layer kernels; ports without the viper emitter
# cannot even compile these); 'portable' is micromlp_portable.py, imported only by a net
# on it or on 'native'; streaming is micromlp_stream.py. All four compute the same integers.
# Integer arithmetic only, MicroPython 1.9-era syntax.

from array import array

# This module's globals are few (11: its dictionary's size before the step to 17
# slots): the sibling modules a net imports are kept in _MODULES, a net on the C
# kernels holds micromlp_c itself (Net.kern), and const() is only CPython's (MicroPython's
# parser folds `_NAME = const(N)` away).
try:
    # Inference runs with the heap locked: MicroPython then keeps a bytecode
    # function's frame on the C stack instead of allocating it (docs/format.md).
    from micropython import heap_lock as _lock
    from micropython import heap_unlock as _unlock
except ImportError:  # CPython

    def const(x):
        return x

    def _lock():
        pass

    _unlock = _lock


def _viper(i=0):
    # micromlp_viper (i 0) or micromlp_viper_layers (i 1), imported where a net needs
    # them (a net on the C kernels never does): the module, or None where the port has
    # no viper emitter (it cannot even compile them)
    m = _MODULES.get(i, _MODULES)
    if m is _MODULES:  # not tried yet
        try:
            if i:
                import micromlp_viper_layers as m
            else:
                import micromlp_viper as m
        except (ImportError, SyntaxError, NameError):
            m = None
        _MODULES[i] = m
    return m


# A layer's parameters as one int32 array q, shared by every kernel (on viper, from a
# frozen model module, a view of the module's words in flash: micromlp_build._flash_q);
# its slots:
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
# then per channel c at _Q + 3*c: bias, mult, shift. (The kernels make the rounding
# term from shift: 12 bytes per channel rather than 16 in RAM.)
_Q = const(16)

# micromlp_float and micromlp_portable by name, micromlp_viper and micromlp_viper_layers
# by 0 and 1 (_viper), once imported
_MODULES = {}

try:  # the front module's import of a module beside it
    from micromlp import _sibling
except ImportError:  # CPython, as the package module micromlp.firmware.micromlp_net
    from .micromlp import _sibling


def _module(name):
    # A sibling module imported on first use (micromlp_float: the float API;
    # micromlp_portable: the bytecode kernels, for a net that uses them), through
    # micromlp._sibling. Small: a larger frame would be allocated on every float API call.
    m = _MODULES.get(name)
    if m is None:
        m = _MODULES[name] = _sibling(name)
    return m


class Layer:
    """One Linear (+ optional ReLU) layer in integer form: q (its parameter array),
    n_in, n_out, has_bias, relu, w (bytes-like: 8-bit weights offset by 128; or
    array('h'): 16-bit) and y (its outputs, in the first n_out items: on viper and C an
    array shared with the layers two before and after it, a list for the bytecode
    kernels); set by micromlp_build.py (a streaming net's layers also hold
    what micromlp_stream.py reads and runs them with)."""

    def __repr__(self):
        return "Layer(%d->%d%s%s)" % (
            self.n_in,
            self.n_out,
            ", bias" if self.has_bias else "",
            ", relu" if self.relu else "",
        )


class Net:
    """A loaded model: run(x) maps quantized input ints to output ints. Its attributes
    are set by micromlp_build.py (it describes them); a net holds few, since each costs
    8 bytes of its dictionary, which grows in steps: 17 slots, then 23."""

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
        self.kern.copy(self.y, out, self.bounds)
        return out

    def predict(self, x):
        """Index of the largest output (the first one on a tie); allocation-free."""
        if not self._net8(x):
            self._infer(x)
        return self.kern.argmax(self.y, self.bounds)

    def _net8(self, x):
        # The one viper or C call (clamp and every layer; no bytecode frame, so nothing
        # is allocated even without heap_lock) where x is an array('i'): True if it ran.
        if self.net8 is None or type(x) is not array:
            return False
        fast = self.kern  # micromlp_c or micromlp_viper
        if self.kernel == "c":
            return fast.net8(x, self.net8)
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
        if not ((self.kernel == "portable" or self.kernel == "native")
                and type(x) is array and type(x[0]) is int
                and min(x) >= self.in_lo and max(x) <= self.in_hi):
            self.kern.prep(x, self.x, self.bounds, self.lim)
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

    # The float API lives in micromlp_float.py, imported on first use: a model fed
    # ints never holds it in RAM.
    @property
    def inputs(self):
        """The engine's own float32 inputs (an array('f')): fill it, then quantize it."""
        return _module("micromlp_float").inputs(self)

    def quantize(self, values, xq=None):
        """Floats (a list, net.inputs or your own array('f')) -> the input ints, into xq
        (an array('i'); default the engine's own); exactly the host's quantize_input:
        clamp(floor(x / scale + 1/2) + zero) on the exact rational, ties up, +-inf
        clamped, NaN refused. Allocates nothing for a list or net.inputs, nor for your
        own array('f') after the first call with it (which makes a view of its bits)."""
        return _module("micromlp_float").quantize(self, values, xq)

    def predict_float(self, values):
        """Index of the largest output for float inputs (quantize, then predict)."""
        return self.predict(self.quantize(values))

    def dequantize(self, out, buf=None):
        """Output ints as floats, into buf (an array('f') or a list; default a new
        list). A float is a heap object on most ports: this allocates there."""
        return _module("micromlp_float").dequantize(self, out, buf)

    def probabilities(self, out, buf=None):
        """The softmax of the dequantized outputs (one output: its sigmoid), into buf.
        Allocates floats where they are heap objects."""
        return _module("micromlp_float").probabilities(self, out, buf)

    def close(self):
        """Close the model file of a streaming net."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
