# micromlp_build: puts a Net (micromlp_net.py) together from the parts micromlp_load.py
# read and checked. micromlp.load() imports it once the reader is gone and drops it
# again once the net is ready: a loaded model's heap then holds only what inference
# needs (the net's assembly is about a third of the engine's code).
# Integer arithmetic only, MicroPython 1.9-era syntax.

from array import array

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    import micromlp_net as N
except ImportError:  # CPython, as the package module micromlp.firmware.micromlp_build
    from . import micromlp_net as N

# The slots of a layer's parameter array q (micromlp_net.py describes them)
_N_IN = const(0)
_N_OUT = const(1)
_LO = const(2)
_HAS_BIAS = const(4)
_W_OFF = const(7)
_W_ZERO = const(9)


def build(parts, kernel, native=(None, None)):
    # The Net from micromlp_load.read's parts (the last: the port's word size); kernel
    # None: the fastest this port has (saying so where a micromlp_c.mpy was there and
    # could not be used); native: micromlp_load.native()'s (module, note).
    c, note = native
    if kernel is None:
        kernel = "c" if c else ("viper" if N._viper() else "portable")
        if note:
            print("micromlp: %s; using the %s kernel" % (note, kernel))
    if kernel == "c" and c is None:
        raise ValueError("kernel 'c' needs micromlp_c.mpy built for this port's "
                         "architecture (firmware/native/): %s" % (note or "not found"))
    if kernel in ("viper", "native") and N._viper() is None:
        raise ValueError("kernel %r needs micromlp_viper.py and a port with viper" % kernel)
    typed = kernel in ("viper", "c")
    # outputs: arrays for viper and C (ptr32), where layer i writes into layer i - 2's
    # (read by layer i - 1 only): two arrays serve every layer; lists for the bytecode
    # kernels (faster to iterate), one per layer. Either way made once, here.
    ys = None
    if typed:
        sizes = [0, 0]
        for i in range(len(parts[0])):
            sizes[i & 1] = max(sizes[i & 1], parts[0][i][0][_N_OUT])
        ys = [array("i", bytes(4 * n)) for n in sizes]
    layers = []
    for i in range(len(parts[0])):
        q = parts[0][i][0]
        layers.append(_layer(q, parts[0][i][1], parts[0][i][4],
                             ys[i & 1] if ys else [0] * q[_N_OUT]))
    return _net(layers, parts[1], parts[2], parts[3], parts[4], kernel, parts[5], c)


def _layer(q, w, relu, y):
    # (seven attributes: an instance's dictionary has 7 slots, then 11; the weights'
    # size comes from their type (wsize), their place in the file from the reader's parts)
    layer = N.Layer()
    layer.q = q
    layer.n_in = q[_N_IN]
    layer.n_out = q[_N_OUT]
    layer.has_bias = q[_HAS_BIAS]
    layer.w = w
    layer.relu = relu
    layer.y = y
    return layer


def _net(layers, in_lo, in_hi, out_scale, table, kernel, bits, c):
    net = N.Net()
    n = layers[0].n_in
    net.layers = layers
    net.n_inputs = n
    net.n_outputs = layers[-1].n_out
    net.in_lo = in_lo
    net.in_hi = in_hi
    net.out_scale = out_scale
    net.kernel = kernel
    net.stream = None  # the open model file when weights stay on storage
    fast = N._viper() if kernel == "viper" else None
    # the clamped inputs: an array('i'), so a float in x is refused, not computed with
    net.x = array("i", bytes(4 * n))
    net.y = layers[-1].y  # the last layer's outputs (predict reads them in place)
    # the module with prep (the input clamp), copy (of the result) and argmax
    net.kern = c if kernel == "c" else (fast or N._module("micromlp_portable"))
    net.lim = (in_lo, in_hi)  # (a tuple: one object, where a list is two)
    # What the clamp, copy, argmax and quantizers read: n, the input range, then viper's
    # sign extension on 64-bit ports where values can be < 0 (inputs, outputs, any),
    # then the input table's step and entries: n float32 scales and n int32 zero points,
    # or one of each where every input has the same (micromlp_load keeps that one
    # entry); the quantizers read entry i * step
    sx = 32 if fast and bits == 64 else 0
    entries = len(table) // 8
    net.bounds = array("i", [n, in_lo, in_hi, sx if in_lo < 0 else 0, net.n_outputs,
                             sx if layers[-1].q[_LO] < 0 else 0, sx,
                             1 if entries > 1 else 0, entries])
    # (plan and net8: set by ready())
    # floats in: the float API's buffers (net.inputs and the views quantize reads) are
    # made on first use, in f32 (micromlp_float.py): a model fed ints never pays for them
    net.in_table = table
    net.f32 = None
    return net


def wsize(layer):
    # bytes per weight: 16-bit weights are an array('h'), 8-bit ones bytes-like; where
    # they stay in the file (w None), from q's weight zero point (128 for 8 bits; q
    # is an array then, not _flash_q's byte view)
    if layer.w is None:
        return 1 if layer.q[_W_ZERO] else 2
    return 2 if type(layer.w) is array else 1


def _kernel(net, layer):
    # The kernel function for a layer (micromlp.load has checked the net's kernel name).
    name = net.kernel
    if name == "portable":
        return N._module("micromlp_portable").linear
    if name == "c":
        return net.kern.linear8 if wsize(layer) == 1 else net.kern.linear16
    fast = N._viper(1)
    if fast is None:
        raise ValueError("kernel %r needs micromlp_viper_layers.py here" % name)
    if name == "viper":
        return fast.linear8 if wsize(layer) == 1 else fast.linear16
    return fast.linear_native


def weights(net, layer, w):
    # the weights argument of layer's kernel: viper and C take w, the others lanes(w)
    if w is None or net.kernel not in ("native", "portable"):
        return w
    return N._module("micromlp_portable").lanes(w, layer.n_in)


def ready(net):
    # Each layer's kernel call, gathered once its weights are in place; for viper
    # and C with 8-bit weights in RAM, the whole network as one call (net8)
    net.plan = net.net8 = None
    if net.kernel in ("viper", "c") and net.stream is None and all(
            [wsize(layer) == 1 for layer in net.layers]):
        flat = [net.x, net.bounds]
        if net.kernel == "c":  # and room for the inputs packed in pairs (its DSP path)
            widest = max([layer.n_in for layer in net.layers])
            flat.append(array("i", bytes(net.kern.SCRATCH * (widest & ~3))))
        for layer in net.layers:
            flat += [layer.w, layer.q, layer.y]
        net.net8 = tuple(flat)
        return net
    # (the per-layer kernels only where net8 is not used)
    net.plan = tuple([(_kernel(net, layer), weights(net, layer, layer.w), layer.q,
                       layer.y) for layer in net.layers])
    if net.stream is not None:  # micromlp_stream.run_layer calls each layer's kernel
        for i in range(len(net.layers)):
            net.layers[i].fn = net.plan[i][0]
    return net


def in_place(net, data, words, parts):
    # The module form: 8-bit weights used where they are, in the module's bytes (no
    # RAM when the module is frozen or in ROMFS); 16-bit ones were copied (alignment).
    # parts: the reader's, with each layer's weights' offset in data.
    for i in range(len(net.layers)):
        layer = net.layers[i]
        if layer.w is None:
            layer.w = data
            layer.q[_W_OFF] = parts[0][i][2]
    # The input table too (n float32 scales, n int32 zero points at offset 40, checked by
    # the reader), where it is word-aligned in the module's bytes: the float API reads it
    # by words, which a Cortex-M0 cannot do unaligned. Its RAM copy then goes (a
    # table of one entry stays: 8 bytes).
    try:
        import uctypes

        if net.bounds[8] > 1 and (uctypes.addressof(data) + 40) & 3 == 0:
            net.in_table = memoryview(data)[40:40 + 8 * net.n_inputs]
        if words is not None and net.kernel == "viper":
            _flash_q(net, words, uctypes)
    except (ImportError, TypeError):  # CPython; a port whose bytes have no address
        pass
    return ready(net)


def _flash_q(net, words, uctypes):
    # A frozen module's Q32 (micromlp firmware --model): every layer's q as this engine
    # builds it on a 32-bit port, four times over with a byte between copies, so
    # that one copy is word-aligned wherever the bytes landed (a frozen bytes constant
    # is a C string literal: byte-aligned at -Os). Viper's ptr32 reads q through a view
    # of that copy, in place: q leaves RAM (16 bytes per output channel). Only where
    # every layer's words equal the q just built from MODEL; else (a 64-bit port,
    # another engine) q stays in RAM; compared through a view of its bytes, not a copy
    # (a load's peak). The C kernels take only an array('i') for q, the bytecode ones
    # index its ints.
    size = (len(words) - 3) // 4
    at = (-uctypes.addressof(words) & 3) * (size + 1)
    end = at + size
    views = []
    for layer in net.layers:
        n = 4 * len(layer.q)
        if at + n > end:
            return
        view = memoryview(words)[at:at + n]
        if view != uctypes.bytearray_at(uctypes.addressof(layer.q), n):
            return
        views.append(view)
        at += n
    for i in range(len(views)):
        net.layers[i].q = views[i]
