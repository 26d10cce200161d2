# micromlp: fixed-point MLP inference for MicroPython (and CPython).
#
# Integer arithmetic only, MicroPython 1.9-era syntax (no f-strings), so it runs
# unchanged from a 16 KB micro:bit to CPython. The file format is described in
# docs/format.md.
#
#   import micromlp
#   net = micromlp.load('model.mlp')
#   out = net.run(x_int)        # list/array of quantized input ints
#   label = net.predict(x_int)
#
# This module stays small: load() imports micromlp_load.py (the checked reader),
# reads the file with it and drops it, then micromlp_build.py, which puts the Net
# (micromlp_net.py) together and is dropped too: the heap keeps a loaded model and
# what runs it, not the code that read and assembled it.
# micromlp_float.py (net.quantize and the rest of the float API) is imported on
# first use, micromlp_portable.py (the bytecode kernels) by a net on the portable or
# native kernel, micromlp_stream.py by a streaming net, micromlp_viper.py (the fast
# kernels; micromlp_viper_layers.py with the per-layer ones, imported only where a net
# needs them) where the port has viper, and micromlp_c.mpy (the kernels in C,
# firmware/native/) where it is on the path.

VERSION = "0.1.0"
KERNELS = ("c", "viper", "native", "portable")


class ModelError(ValueError):
    pass


def _sibling(name):
    # A module beside this one: top-level on a board; on CPython, in the package
    # this one is part of (micromlp.firmware). micromlp_net imports with it too.
    try:
        return __import__(name)
    except ImportError:
        if "." not in __name__:  # a board missing the file: say which
            raise
        from importlib import import_module

        return import_module(__name__.rpartition(".")[0] + "." + name)


def _buffers(f, keep):
    # The weight buffers and the layers' q arrays, made before the reader is imported:
    # its code lands wherever the heap has room, and a large layer found no gap in one
    # piece afterwards (a 256x128 layer reloaded on a 139 KB Cortex-M3 heap); and with
    # the q arrays among the reader's objects, its departure left holes where the net's
    # import failed (Cortex-M0, 14.8 KB free, where 12.5 KB worked). Sizes from the
    # layer headers, reached by seeking; nothing is trusted: the reader checks every
    # field and takes a buffer only where it has the size the layer needs. None where
    # the file cannot seek, looks wrong, or the heap has no room now.
    import struct
    from array import array

    try:
        here = f.seek(0, 1)  # (mpremote's mounted files have seek but no tell)
        end = f.seek(0, 2) - here
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    try:
        f.seek(here + 12)
        n_layers, n_in = struct.unpack("<HH", f.read(4))
        pos = 40 + 8 * n_in
        sizes = []
        wsizes = []
        outs = []
        for _ in range(n_layers):
            f.seek(here + pos)
            size, a, b, bits = struct.unpack("<IHHB", f.read(9))
            wsize = bits >> 3
            sizes.append(a * b * wsize if wsize in (1, 2) and keep & wsize else 0)
            wsizes.append(wsize)
            outs.append(b)
            pos += size
            # (a layer's q, 64 + 12 n_out bytes, is less than twice the layer's size)
            if size < 40 or pos > end or sum(sizes) > end or 12 * b + 64 > 2 * size:
                return None
        # per layer [weights, q] (micromlp_net.py's parameter array), made in one
        # stretch of the heap: the weights, the largest first, then q, the reader's
        # objects after them, so that the reader leaves one gap behind, not many
        bufs = [[None, None] for _ in range(n_layers)]
        for i in sorted(range(n_layers), key=lambda i: -sizes[i]):
            if sizes[i]:
                n = sizes[i]
                bufs[i][0] = bytearray(n) if wsizes[i] == 1 else array("h", bytes(n))
        for i in range(n_layers):
            bufs[i][1] = array("i", bytes(64 + 12 * outs[i]))
        return bufs
    except Exception:  # a short or odd file (CPython's struct.error too): the reader says
        return None
    finally:
        f.seek(here)


def _read(f, keep, bits=None):
    # The checked parts of a model stream (bits: the word size to build q for; None:
    # this port's), and micromlp_c where it loads (the reader finds it:
    # micromlp_load.native()); load() drops the reader afterwards.
    bufs = _buffers(f, keep)
    m = _sibling("micromlp_load")
    m.ModelError = ModelError
    return m.read(f, keep, bits, bufs), m.native()


def _drop(name, collect):
    # A module load() is done with leaves the heap (on MicroPython: on CPython it stays
    # imported, as memory is no concern there): the reader, then the net's assembly.
    # After the reader, on a small heap, a collection follows: the net's code then goes
    # into the reader's room rather than wherever it fits between the model's arrays
    # (digits needed a 36 KB heap, 28 KB with it). Called once _read has returned:
    # inside its frame a stale reference kept the reader alive now and then (the
    # collector is conservative), and the net's import failed in a heap 2.5 KB larger
    # than one that worked (Cortex-M0). Only on a small heap: the 32-bit WASI build's
    # collector cannot see WebAssembly locals (host/wasi.py).
    import sys

    if sys.implementation.name == "micropython":
        pkg = __name__.rpartition(".")[0] + "." if "." in __name__ else ""
        sys.modules.pop(pkg + name, None)
        import gc

        if collect and gc.mem_free() < 32768:
            gc.collect()


def load(src, kernel=None, stream=False, chunk=2048):
    """Load a model from a path, an open binary file, or a module holding MODEL bytes.

    kernel: 'c' (micromlp_c.mpy, the native module for this port's architecture),
    'viper', 'native' or 'portable' (default: the fastest this port has).
    stream=True keeps the weights in the file (path or file only) and reads
    `chunk` bytes of them at a time (at least four rows of the widest layer):
    RAM grows with layer width, not with the number of parameters.
    A module's 8-bit weights are used in place, not copied.
    """
    if kernel is not None and kernel not in KERNELS:
        raise ValueError("unknown kernel %r, expected one of %r" % (kernel, KERNELS))
    data = None
    if isinstance(src, str):
        f = open(src, "rb")
    elif hasattr(src, "readinto"):
        f = src
    elif hasattr(src, "MODEL"):
        if stream:
            raise ValueError("stream=True needs a model file, not a module")
        try:
            from io import BytesIO
        except ImportError:
            from uio import BytesIO
        data = src.MODEL
        f = BytesIO(data)
    else:
        raise TypeError("load() takes a path, a binary file or a model module")
    try:
        # read first, then import the net: the reader is gone before the net comes in
        try:
            parts, native = _read(f, 2 if data is not None else (0 if stream else 3))
        finally:
            _drop("micromlp_load", True)
        try:
            net = _assemble(parts, kernel, native, f, stream, chunk, data,
                            getattr(src, "Q32", None))
        finally:
            _drop("micromlp_build", False)
    except Exception:
        if f is not src:
            f.close()
        raise
    if f is not src and not stream:
        f.close()
    return net


def _assemble(parts, kernel, native, f, stream, chunk, data, words):
    # The Net from the reader's parts (micromlp_build.py, dropped again by load())
    b = _sibling("micromlp_build")
    net = b.build(parts, kernel, native)
    if stream:
        _sibling("micromlp_stream").setup(net, f, chunk, b, parts)
    elif data is not None:
        return b.in_place(net, data, words, parts)
    return b.ready(net)
