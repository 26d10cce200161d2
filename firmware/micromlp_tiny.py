# micromlp_tiny: the micromlp engine cut to fit a ~10 KB heap (BBC micro:bit v1,
# which compiles every module on the board and has no .mpy import). Same file
# format and the same integers as micromlp.py, 8-bit weights only; API:
# load(path, stream=False), net.run(x, out), net.predict(x), net.n_inputs,
# net.n_outputs. It refuses every file micromlp.py refuses (the same checks,
# shorter messages): the 2**30 proof is recomputed from the weights here.
#
# Deployed as micromlp.py, next to three scripts load() runs in turn, each a
# statement at a time (only one statement is ever compiled at once: a micro:bit
# cannot compile more) in a namespace of its own: micromlp_tiny_load.py reads
# and checks the file (dropped after: its code needs RAM only while loading),
# micromlp_tiny_run.py defines the Net that runs the model, compiled in the
# heap the loader has left, and micromlp_tiny_fill.py reads the arrays (dropped).
# Where the heap has room (not a micro:bit v1), micromlp_tiny_float.py adds the
# float API and a faster (four-row) layer loop.


try:  # the scripts are next to this file
    _HERE = __file__[:__file__.rfind("/") + 1]
except NameError:  # the micro:bit: no __file__, one flat directory
    _HERE = ""


class ModelError(ValueError):
    pass


def _big():  # gc.mem_free where there is none (CPython)
    return 1 << 30


_CODE = {}  # script name -> its compiled statements, where the heap has room for them
try:
    _compile = compile
except NameError:  # the micro:bit has no compile(): its statements are compiled anew
    _compile = None


def _exec(name, g):
    # Run a script one top-level statement at a time in namespace g, and return g.
    # A statement's lines are joined once (not grown line by line, which leaves a
    # heap of partial copies). On a small heap a collection before the join and
    # one before each exec leave them the largest free blocks; a heap with 64 KB
    # free keeps the compiled statements for the next load, where the port has
    # compile() (with less, keeping them all runs a heap of ~50 KB out).
    import gc

    code = _CODE.get(name)
    if code:
        for c in code:
            exec(c, g)
        return g
    keep = _compile and getattr(gc, "mem_free", _big)() >= 65536
    code = []
    f = open(_HERE + name)
    lines = []
    while True:
        line = f.readline()
        if lines and (not line or line[0] not in " \t\n#"
                      and line[:4] not in ("exce", "else", "fina", "elif")):
            if not keep and getattr(gc, "mem_free", _big)() < 32768:
                gc.collect()
            s = "".join(lines)
            lines = []
            if keep:
                s = _compile(s, name, "exec")
                code.append(s)
            elif getattr(gc, "mem_free", _big)() < 32768:
                gc.collect()
            exec(s, g)
            s = None
        if not line:
            break
        lines.append(line)
    f.close()
    if keep:
        _CODE[name] = code
    return g


def load(src, stream=False):
    """src: a path, or a module holding MODEL bytes. stream=True (paths only) reads
    the weights from the file on every run, a row at a time (it opens the file:
    an allocation per run, and a little time)."""
    import gc

    d = _exec("micromlp_tiny_load.py", {"src": src, "stream": stream, "err": ModelError})["d"]
    # the runtime is compiled before the arrays fragment the heap; Net is called
    # here rather than in a script: a micro:bit's stack is short
    roomy = getattr(gc, "mem_free", _big)() > 16384  # not a micro:bit v1
    run = _exec("micromlp_tiny_run.py", {})
    net = run["Net"](_exec("micromlp_tiny_fill.py", {"src": src, "d": d})["d"])
    if roomy:  # the float API and the four-row loop; a micro:bit v1 has no heap for them
        try:
            _exec("micromlp_tiny_float.py", {"net": net, "run": run})
        except MemoryError:  # no room to compile it after all: ints and the plain loop
            gc.collect()  # (what it attached before that works as well)
    return net
