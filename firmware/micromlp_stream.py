# micromlp_stream: the weights stay in the model file (micromlp.load(..., stream=True)):
# one buffer holds a block of rows at a time, read before the kernel runs on them, so
# RAM grows with a layer's width, not with the model. Imported only by a streaming net.
# Integer arithmetic only, MicroPython 1.9-era syntax.

from array import array

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# The slots of a layer's parameter array q (micromlp_net.py describes them)
_ROW0 = const(5)
_ROW_END = const(6)


def setup(net, f, chunk, build, parts):
    # Streaming needs one weight buffer that holds at least one row of every layer;
    # build: micromlp_build (its weights(net, layer, buf) is the view of buf layer's
    # kernel takes); parts: the reader's (each layer's weights' offset in the file). The
    # caller then makes the net ready (which sets each layer's kernel, fn).
    widest = 0
    sizes = 0
    for i in range(len(net.layers)):
        layer = net.layers[i]
        size = build.wsize(layer)
        layer.w_pos = parts[0][i][2]
        layer.row_bytes = layer.n_in * size
        widest = max(widest, layer.row_bytes)
        sizes |= size
    net.chunk_bytes = max(chunk, 4 * widest)  # four rows: what the kernels take at once
    chunk8 = bytearray(net.chunk_bytes) if sizes & 1 else None
    chunk16 = array("h", bytes(net.chunk_bytes)) if sizes & 2 else None
    for layer in net.layers:  # each layer's buffer, and its kernel's view of it
        layer.chunk_buf = chunk8 if build.wsize(layer) == 1 else chunk16
        layer.chunk = build.weights(net, layer, layer.chunk_buf)
    net.stream = f
    net.stream_layer = run_layer


def run_layer(net, x, layer):
    # Weights stay in the file: read a block of rows at a time into the one
    # preallocated buffer and run the kernel on just those rows.
    f = net.stream
    q = layer.q
    n_out = layer.n_out
    row_bytes = layer.row_bytes
    rows = net.chunk_bytes // row_bytes
    w = layer.chunk  # the kernel's view of the buffer (see setup)
    o = 0
    while o < n_out:
        end = o + rows
        if end > n_out:
            end = n_out
            if end - o < 4 <= n_out:  # read four rows: the kernel's four-row pass
                o = end - 4
        f.seek(layer.w_pos + o * row_bytes)
        f.readinto(layer.chunk_buf)
        q[_ROW0] = o
        q[_ROW_END] = end
        layer.fn(x, w, q, layer.y)
        o = end
    q[_ROW0] = 0
    q[_ROW_END] = n_out
