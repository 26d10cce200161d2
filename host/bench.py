"""`micromlp bench`: speed, fuel, allocation and RAM of the engine on real VMs.

Every figure is measured beside a plain float nested-list implementation of the
same network, run in the same VM process (same load, same inputs), and is also
given as a ratio to it. Times on the unix port are medians of several rounds;
fuel on the 32-bit WASI port is a deterministic instruction count.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..export import modelfile
from ..export.pymodule import module_source, mpy_cross
from ..export.qmodel import QuantModel
from . import vms

# (label, kernel, stream, inputs): what run() is given, an array('i') (for C and viper
# with 8-bit weights in RAM: one call per inference) or a list (clamped first). All run
# in one process, interleaved with the float baseline. C: firmware/native/x64's module.
UNIX_CONFIGS = [
    ("c", "c", False, "array"),
    ("c", "c", False, "list"),
    ("c", "c", True, "array"),
    ("viper", "viper", False, "array"),
    ("viper", "viper", False, "list"),
    ("native", "native", False, "array"),
    ("portable", "portable", False, "array"),
    ("tiny", "tiny", False, "array"),
    ("viper", "viper", True, "array"),
    ("portable", "portable", True, "array"),
]
WASM_CONFIGS = [("portable", False), ("tiny", False), ("portable", True)]
WEBASSEMBLY_CONFIGS = [  # MicroPython's WebAssembly port under Node (the browser's)
    ("portable", "portable", False, "array"),
    ("tiny", "tiny", False, "array"),
]
HEAP_FORMS = ("mlp", "py", "mpy", "mlp-stream", "tiny", "tiny-stream", "tiny-mpy")


@dataclass
class KernelRun:
    """One engine configuration against the float baseline in the same VM process."""

    vm: str
    kernel: str
    stream: bool
    inputs: str = "array"  # what run() was given (see UNIX_CONFIGS)
    us: float | None = None  # median µs per inference over the rounds
    us_min: float | None = None
    us_max: float | None = None
    float_us: float | None = None  # the baseline's median
    speedup: float | None = None  # median over rounds of float time / engine time
    speedup_min: float | None = None
    speedup_max: float | None = None
    vs_c: float | None = None  # median engine time / median C kernel time
    fuel: float | None = None  # per inference (WASI)
    fuel_per_mac: float | None = None
    float_fuel: float | None = None
    fuel_ratio: float | None = None  # engine fuel / float fuel
    alloc: float | None = None  # bytes allocated per inference (net of frees)
    float_alloc: float | None = None
    # whether an inference takes any heap block at all, even one freed at once (a
    # bytecode frame): seen as a collection under gc.threshold(1)
    heap_block: bool | None = None
    float_heap_block: bool | None = None


@dataclass
class BenchReport:
    """All figures for one model."""

    model: str
    layers: str
    macs: int
    files: dict[str, int] = field(default_factory=dict)
    inputs: str = ""
    zero_inputs: float = 0.0  # fraction of input values that are 0
    runs: list[KernelRun] = field(default_factory=list)
    min_heap_unix: dict[str, int] = field(default_factory=dict)  # smallest -X heapsize
    # heap in use once the model is loaded and has run (gc.mem_alloc, same forms)
    resident_unix: dict[str, int] = field(default_factory=dict)
    c_us: float | None = None  # the C kernel (host/ckernel.py): median µs per inference
    c_us_min: float | None = None
    c_us_max: float | None = None
    c_note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# The float baseline: the same network as plain nested lists of floats, the way
# one would write it by hand. Its weights arrive as float32 in a file (a source
# literal of a big model is more than the compiler can take) and become lists
# at import.
FLOAT_MLP = """
from array import array
LAYERS = []

def load(path):
    f = open(path, 'rb')
    head = array('i', bytes(4))
    f.readinto(head)
    for _ in range(head[0]):
        h = array('i', bytes(12))
        f.readinto(h)
        n_out, n_in, flags = h[0], h[1], h[2]
        W = []
        for j in range(n_out):
            row = array('f', bytes(4 * n_in))
            f.readinto(row)
            W.append([v for v in row])
        b = None
        if flags & 1:
            bb = array('f', bytes(4 * n_out))
            f.readinto(bb)
            b = [v for v in bb]
        LAYERS.append((W, b, bool(flags & 2)))
    f.close()

def run(x):
    for W, b, relu in LAYERS:
        y = []
        for j in range(len(W)):
            row = W[j]
            s = b[j] if b else 0.0
            for i in range(len(x)):
                s += row[i] * x[i]
            if relu and s < 0.0:
                s = 0.0
            y.append(s)
        x = y
    return x
"""


def float_weights(model: QuantModel) -> bytes:
    """The baseline's weights: the dequantized network, float32, for FLOAT_MLP.load."""
    out = [np.array([len(model.layers)], "<i4").tobytes()]
    s_x = 1.0
    for layer in model.layers:
        w = layer.w.astype(np.float64) * layer.w_scale[:, None].astype(np.float64)
        flags = (1 if layer.b is not None else 0) | (2 if layer.act else 0)
        out.append(np.array([layer.n_out, layer.n_in, flags], "<i4").tobytes())
        out.append(w.astype("<f4").tobytes())
        if layer.b is not None:
            unit = 256 if layer.wide else 1  # a wide layer's bias counts in 256 products
            out.append((layer.b * unit * s_x * layer.w_scale).astype("<f4").tobytes())
        s_x = float(layer.out_scale)
    return b"".join(out)


def _float_heap(model: QuantModel) -> str:
    """A heap that holds the baseline's lists and a few inferences' garbage."""
    params = sum(layer.w.size for layer in model.layers)
    return f"{max(8, (params * 256) >> 20)}M"


# Runs on the VM: every configuration and the float baseline in one process, each
# round timing all of them in turn, so that machine load affects them alike.
_TIMING = """
import sys
sys.path.insert(0, {dir!r})
import gc, time
from array import array
import micromlp, micromlp_tiny, float_mlp
float_mlp.load({dir!r} + '/float_mlp.bin')
CONFIGS = {configs!r}
X = [array('i', r) for r in {xs!r}]
XF = [[float(v) for v in r] for r in {xs!r}]
NETS = []
for label, kernel, stream, inputs in CONFIGS:
    if kernel == 'tiny':
        NETS.append(micromlp_tiny.load({dir!r} + '/model.mlp', stream=stream))
    else:
        NETS.append(micromlp.load({dir!r} + '/model.mlp', kernel=kernel, stream=stream))
out = array('i', bytes(4 * NETS[0].n_outputs))
XL = [list(r) for r in X]
NET = ROWS = None
def run_n(n):  # few locals: a larger frame would go on the heap and be counted
    t = time.ticks_us()
    for i in range(n):
        NET.run(ROWS[i % {nx}], out)
    return time.ticks_diff(time.ticks_us(), t)
def timer(c, n):
    global NET, ROWS
    NET = NETS[c]
    ROWS = X if CONFIGS[c][3] == 'array' else XL
    return run_n(n)
def t_float(n):
    t = time.ticks_us()
    for i in range(n):
        float_mlp.run(XF[i % {nx}])
    return time.ticks_diff(time.ticks_us(), t)
def calibrate(f):  # runs per timed stretch of about {budget} us (a coarse clock too)
    n = 1
    t = f(n)
    while t < {budget} // 4:
        n *= 2
        t = f(n)
    return max(1, n * {budget} // max(1, t))
N = [calibrate(lambda n: timer(c, n)) for c in range(len(CONFIGS))]
NF = calibrate(t_float)
for r in range({rounds}):
    print('T', ' '.join([str(timer(c, N[c]) / N[c]) for c in range(len(CONFIGS))]),
          t_float(NF) / NF)
def alloc(f, n):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    f(n)
    a = gc.mem_alloc() - a
    gc.enable()
    return a / n
def blocks(f):
    # with gc.threshold(1) any allocation collects, and the garbage made first is
    # freed, so mem_free grows: a block taken and freed at once still shows
    gc.collect()
    for i in range(50):
        [i] * 10
    gc.threshold(1)
    a = gc.mem_free()
    f(1)
    b = gc.mem_free()
    gc.threshold(-1)
    return 1 if b > a else 0
def both(f, n):  # net allocation; a block freed at once (only worth a look when net is 0:
    # under gc.threshold(1) each allocation collects the whole heap)
    a = alloc(f, n)
    return a, 1 if a > 0 else blocks(f)
for c in range(len(CONFIGS)):
    timer(c, 1)  # NET and ROWS set: what follows measures run_n alone
    print('A', c, *both(run_n, 20))
print('F', *both(t_float, 2))
"""

_FUEL = """
import sys
sys.path.insert(0, '/input')
from array import array
import micromlp, micromlp_tiny, float_mlp
float_mlp.load('/input/float_mlp.bin')
if {kernel!r} == 'tiny':
    net = micromlp_tiny.load('/input/model.mlp', stream={stream!r})
else:
    net = micromlp.load('/input/model.mlp', kernel={kernel!r}, stream={stream!r})
X = [array('i', r) for r in {xs!r}]
XF = [[float(v) for v in r] for r in {xs!r}]
out = array('i', bytes(4 * net.n_outputs))
for i in range({n_int}):
    net.run(X[i % {nx}], out)
for i in range({n_float}):
    float_mlp.run(XF[i % {nx}])
print('done')
"""

_HEAP = {
    "mlp": "import micromlp\nnet = micromlp.load('model.mlp', kernel='portable')\n",
    "mlp-stream": "import micromlp\nnet = micromlp.load('model.mlp', kernel='portable', "
    "stream=True)\n",
    "py": "import micromlp, model_mlp\nnet = micromlp.load(model_mlp, kernel='portable')\n",
    "mpy": "import micromlp, model_mlp\nnet = micromlp.load(model_mlp, kernel='portable')\n",
    # the cut-down engine deploy sends to small boards (firmware/micromlp_tiny.py)
    "tiny": "import micromlp\nnet = micromlp.load('model.mlp')\n",
    "tiny-stream": "import micromlp\nnet = micromlp.load('model.mlp', stream=True)\n",
    "tiny-mpy": "import micromlp, model_mlp\nnet = micromlp.load(model_mlp)\n",
}
_HEAP_RUN = "x = [{x}]\nprint(list(net.run(x)) == {expect})\n"


def _stage(model_path: Path, workdir: Path, model: QuantModel, mpy: bool = True,
           native: str | None = None) -> None:
    vms.stage_firmware(workdir, native=native)
    for f in [vms.engine_source().with_name("micromlp_tiny.py")] + vms.tiny_loader_files():
        shutil.copy(f, workdir / f.name)  # the tiny engine, importable as micromlp_tiny
    shutil.copy(model_path, workdir / "model.mlp")
    (workdir / "float_mlp.py").write_text(FLOAT_MLP)
    (workdir / "float_mlp.bin").write_bytes(float_weights(model))
    if mpy:
        mpy_cross(workdir / "float_mlp.py", workdir / "float_mlp.mpy")
        (workdir / "float_mlp.py").unlink()


def _inputs(model: QuantModel, n: int = 8, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(model.in_lo, model.in_hi + 1, size=(n, model.n_inputs)).tolist()


def _unix_timings(model_path: Path, model: QuantModel, rounds: int,
                  xs: list[list[int]], vm: str = "unix") -> list[KernelRun]:
    """Every configuration the model allows, in one interleaved process: UNIX_CONFIGS
    on the unix port, WEBASSEMBLY_CONFIGS on the WebAssembly port (Node)."""
    configs = [c for c in (UNIX_CONFIGS if vm == "unix" else WEBASSEMBLY_CONFIGS)
               if (c[1] != "tiny" or all(ly.w_bits == 8 for ly in model.layers))
               and (c[1] != "c" or vms.unix_native())]
    with tempfile.TemporaryDirectory(prefix="micromlp-bench-") as tmp:
        tmp = Path(tmp)
        _stage(model_path, tmp, model, native=vms.unix_native() if vm == "unix" else None)
        if vm == "unix":
            (tmp / "t.py").write_text(_TIMING.format(
                dir=str(tmp), configs=configs, xs=xs, nx=len(xs), rounds=rounds, budget=20000))
            proc = subprocess.run(
                [vms.unix_exe(), "-X", f"heapsize={_float_heap(model)}", "t.py"],
                cwd=tmp, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise vms.VMError(f"unix bench: {proc.stderr.strip()[-400:]}")
            stdout = proc.stdout
        else:
            from . import webassembly

            # its clock ticks in milliseconds: longer timed stretches
            code = _TIMING.format(dir="/work", configs=configs, xs=xs, nx=len(xs),
                                  rounds=rounds, budget=300000)
            try:
                stdout = webassembly.run(code, tmp, heapsize=64 << 20)
            except webassembly.WebAssemblyError as e:
                raise vms.VMError(str(e)) from None
    rows, allocs, fl = [], {}, None
    for line in stdout.splitlines():
        f = line.split()
        if f[0] == "T":
            rows.append([float(v) for v in f[1:]])
        elif f[0] == "A":
            allocs[int(f[1])] = (float(f[2]), f[3] == "1")
        elif f[0] == "F":
            fl = (float(f[1]), f[2] == "1")
    t = np.array(rows)  # [round, config + float]
    runs = []
    for c, (label, _kernel, stream, inputs) in enumerate(configs):
        run = KernelRun(vm, label, stream, inputs)
        ratios = t[:, -1] / t[:, c]  # float time / engine time, round by round
        run.us, run.us_min, run.us_max = (float(np.median(t[:, c])), float(t[:, c].min()),
                                          float(t[:, c].max()))
        run.float_us = float(np.median(t[:, -1]))
        run.speedup = float(np.median(ratios))
        run.speedup_min, run.speedup_max = float(ratios.min()), float(ratios.max())
        run.alloc, run.heap_block = allocs[c]
        run.float_alloc, run.float_heap_block = fl
        runs.append(run)
    return runs


def _wasm_fuel(
    model_path: Path,
    model: QuantModel,
    kernel: str,
    stream: bool,
    macs: int,
    xs: list[list[int]],
) -> KernelRun:
    n = 2  # fuel is deterministic: a couple of runs is exact
    with tempfile.TemporaryDirectory(prefix="micromlp-bench-") as tmp:
        tmp = Path(tmp)
        _stage(model_path, tmp, model)
        fuel = {}
        for key, n_int, n_float in (("base", 0, 0), ("int", n, 0), ("float", 0, n)):
            code = _FUEL.format(
                kernel=kernel, stream=stream, xs=xs, nx=len(xs), n_int=n_int, n_float=n_float
            )
            # a heap so large that no collection runs (see wasi.py on this build's GC)
            fuel[key] = vms.wasm_run(code, readonly_dir=tmp, heapsize="128M").fuel_used
    run = KernelRun("wasm", kernel, stream)
    run.fuel = (fuel["int"] - fuel["base"]) / n
    run.float_fuel = (fuel["float"] - fuel["base"]) / n
    run.fuel_per_mac = run.fuel / macs
    run.fuel_ratio = run.fuel / run.float_fuel
    return run


def _heap_ok(workdir: Path, form: str, heap: int, check: str) -> bool:
    (workdir / "h.py").write_text(_HEAP[form] + check)
    proc = subprocess.run(
        [vms.unix_exe(), "-X", f"heapsize={heap}", "h.py"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode == 0 and proc.stdout.strip() == "True"


# min_heap checks every 256-byte step this far above its answer, then every 512 bytes up
# to MONOTONE_WINDOW above (the tiny engine's thresholds made failures 20-30 KB above)
MONOTONE_FINE = 4096
MONOTONE_WINDOW = 65536


_RESIDENT = "import gc\ngc.collect()\nstart = gc.mem_alloc()\n{load}{check}" \
    "gc.collect()\nprint(gc.mem_alloc() - start)\n"


def _resident(workdir: Path, form: str, check: str) -> int:
    """Bytes of heap in use after the load and one run (a heap far larger than needed)."""
    (workdir / "r.py").write_text(_RESIDENT.format(load=_HEAP[form], check=check))
    proc = subprocess.run([vms.unix_exe(), "-X", "heapsize=4M", "r.py"], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.split()
    if proc.returncode or lines[:1] != ["True"]:
        raise vms.VMError(f"{form}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return int(lines[1])


def min_heap(model_path: Path, model: QuantModel, form: str) -> tuple[int, int]:
    """Smallest `micropython -X heapsize` (bytes, 256-byte steps) from which every
    larger size (checked up to MONOTONE_WINDOW above, see there) loads and runs the model
    correctly in this form, with the engine as .mpy and the portable kernel (forms
    "tiny*": the cut-down engine, as .mpy); and the heap in use after that load and
    run (what is left for the rest of a program, in a large heap)."""
    from . import reference

    x = _inputs(model, 1)[0]
    expect = reference.run(model, np.array([x])).out[0].tolist()
    check = _HEAP_RUN.format(x=", ".join(map(str, x)), expect=expect)
    with tempfile.TemporaryDirectory(prefix="micromlp-heap-") as tmp:
        tmp = Path(tmp)
        if form.startswith("tiny"):
            mpy_cross(vms.engine_source().with_name("micromlp_tiny.py"), tmp / "micromlp.mpy")
            for f in vms.tiny_loader_files():  # run as source by the engine
                shutil.copy(f, tmp / f.name)
        else:  # the engine's bytecode modules (the portable kernel: no viper here)
            vms.stage_firmware(tmp, mpy=True, viper=False)
        shutil.copy(model_path, tmp / "model.mlp")
        if form in ("py", "mpy", "tiny-mpy"):
            (tmp / "model_mlp.py").write_text(module_source(model_path.read_bytes()))
            if form.endswith("mpy"):
                mpy_cross(tmp / "model_mlp.py", tmp / "model_mlp.mpy")
                (tmp / "model_mlp.py").unlink()
        resident = _resident(tmp, form, check)
        lo, hi = 1024, 1 << 16
        while not _heap_ok(tmp, form, hi, check):
            lo, hi = hi, hi * 2
            if hi > 1 << 28:
                raise vms.VMError(f"{form}: does not run even with a {hi} byte heap")
        while hi - lo > 256:
            mid = (lo + hi) // 2 // 256 * 256
            if _heap_ok(tmp, form, mid, check):
                hi = mid
            else:
                lo = mid
        # The smallest working heap is not monotone (a larger one can fail where a
        # smaller one passed: the collector runs at other moments, a threshold switches
        # something on): move up past every failure in the window above, so that every
        # size from the answer up passes.
        while True:
            sizes = list(range(hi + 256, hi + MONOTONE_FINE + 1, 256)) + list(
                range(hi + MONOTONE_FINE + 512, hi + MONOTONE_WINDOW + 1, 512))
            fails = [h for h in sizes if not _heap_ok(tmp, form, h, check)]
            if not fails:
                return hi, resident
            hi = max(fails) + 256
            while not _heap_ok(tmp, form, hi, check):
                hi += 256


def file_sizes(model_path: Path) -> dict[str, int]:
    """Bytes of the model in each form and of the engine."""
    sizes = {"model.mlp": model_path.stat().st_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "model_mlp.py").write_text(module_source(model_path.read_bytes()))
        mpy_cross(tmp / "model_mlp.py", tmp / "model_mlp.mpy")
        for name in ("model_mlp.py", "model_mlp.mpy"):
            sizes[name] = (tmp / name).stat().st_size
        engine = vms.firmware_files(viper=False)
        vms.stage_firmware(tmp, mpy=True, viper=False)
        sizes[f"engine .mpy ({len(engine)} files)"] = sum(
            (tmp / (f.stem + ".mpy")).stat().st_size for f in engine)
    sizes["engine .py"] = sum(f.stat().st_size for f in engine)
    return sizes


def bench(
    model_path: str | Path,
    rounds: int = 7,
    heap: bool = True,
    progress: bool = True,
    inputs: np.ndarray | None = None,
    vms: tuple[str, ...] = ("unix", "webassembly", "wasm"),
) -> BenchReport:
    """Measure one model on every VM and kernel (see the module docstring); vms picks
    which VMs (the C reference and the heap search go with unix).

    inputs: float rows to quantize and cycle through (default: 8 random in-range
    integer rows). The kernels skip zero inputs, so real data with ReLU-style
    sparsity runs faster than dense random rows.
    """
    model_path = Path(model_path)
    model = modelfile.load(model_path)
    if inputs is None:
        xs = _inputs(model)
    else:
        xs = model.quantize_input(np.asarray(inputs)[:8]).tolist()
    macs = sum(layer.n_in * layer.n_out for layer in model.layers)
    shape = "-".join(str(v) for v in [model.n_inputs] + [ly.n_out for ly in model.layers])
    rep = BenchReport(
        str(model_path),
        shape,
        macs,
        file_sizes(model_path),
        inputs="random in-range integers" if inputs is None else "given data",
        zero_inputs=float(np.mean(np.array(xs) == 0)),
    )
    tiny_ok = all(ly.w_bits == 8 for ly in model.layers)  # the tiny engine's one limit
    steps = (
        [(v, "kernels", False) for v in ("unix", "webassembly") if v in vms]
        + ([("c", "kernel", False)] if "unix" in vms else [])
        + [("wasm", k, s) for k, s in WASM_CONFIGS if "wasm" in vms and (k != "tiny" or tiny_ok)]
        + ([("heap", f, False) for f in HEAP_FORMS if not f.startswith("tiny") or tiny_ok]
           if heap and "unix" in vms else [])
    )
    bar = tqdm(steps, desc=f"bench {shape}", disable=None if progress else True, leave=False)
    for what, kind, stream in bar:
        bar.set_postfix_str(f"{what} {kind}{' stream' if stream else ''}")
        if what in ("unix", "webassembly"):
            rep.runs += _unix_timings(model_path, model, rounds, xs, what)
        elif what == "c":
            _c_reference(rep, model, xs, rounds)
        elif what == "wasm":
            rep.runs.append(_wasm_fuel(model_path, model, kind, stream, macs, xs))
        else:
            rep.min_heap_unix[kind], rep.resident_unix[kind] = min_heap(model_path, model, kind)
    return rep


def _c_reference(rep: BenchReport, model: QuantModel, xs: list[list[int]], rounds: int) -> None:
    """The C kernel's time, and each unix run's ratio to it (same machine, same moment)."""
    from . import ckernel

    times = ckernel.c_times(model, xs, rounds)
    if times is None:
        rep.c_note = "no C compiler on this machine: no C reference"
        return
    rep.c_us = float(np.median(times))
    rep.c_us_min, rep.c_us_max = float(min(times)), float(max(times))
    rep.c_note = (f"C kernel: the same integer arithmetic, scalar ({ckernel.compiler()} "
                  f"{' '.join(ckernel.FLAGS)}), outputs checked against the reference")
    for r in rep.runs:
        if r.us is not None:
            r.vs_c = r.us / rep.c_us


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_report(rep: BenchReport, markdown: bool = False) -> str:
    """The report as aligned text or as Markdown tables."""
    head = ["vm", "kernel", "weights", "run() gets", "us/inf median (range)", "float us",
            "x float, median (range)", "x C", "fuel/inf", "fuel/MAC", "float fuel/MAC",
            "fuel ratio", "B alloc/inf", "float B alloc/inf", "heap block/inf"]
    rows = []
    for r in rep.runs:
        rows.append([
            r.vm,
            r.kernel,
            "file (stream)" if r.stream else "RAM",
            r.inputs,
            "-" if r.us is None else f"{r.us:.2f} ({r.us_min:.2f}-{r.us_max:.2f})",
            _fmt(r.float_us),
            "-" if r.speedup is None else
            f"{r.speedup:.1f}x ({r.speedup_min:.1f}-{r.speedup_max:.1f})",
            "-" if r.vs_c is None else f"{r.vs_c:.2f}",
            _fmt(r.fuel, ".0f"),
            _fmt(r.fuel_per_mac, ".0f"),
            "-" if r.float_fuel is None else f"{r.float_fuel / rep.macs:.0f}",
            "-" if r.fuel_ratio is None else f"{r.fuel_ratio:.2f} ({1 / r.fuel_ratio:.1f}x less)",
            _fmt(r.alloc, ".0f"),
            _fmt(r.float_alloc, ".0f"),
            "-" if r.heap_block is None else ("yes" if r.heap_block else "none"),
        ])
    title = f"model {rep.layers} ({rep.macs} multiply-adds): {rep.model}"
    files = ", ".join(f"{k} {v} B" for k, v in rep.files.items())
    heap = ", ".join(f"{k} {v} B" for k, v in rep.min_heap_unix.items())
    resident = ", ".join(f"{k} {v} B" for k, v in rep.resident_unix.items())
    notes = [
        f"inputs: {rep.inputs}, {100 * rep.zero_inputs:.0f} % of input values are 0",
        f"files: {files}",
    ]
    if rep.c_us is not None:
        notes.append(f"{rep.c_note}: {rep.c_us:.3f} us per inference, median "
                     f"({rep.c_us_min:.3f}-{rep.c_us_max:.3f}); *x C* is the engine's median "
                     f"over it")
    elif rep.c_note:
        notes.append(rep.c_note)
    if heap:
        notes.append(
            f"smallest `-X heapsize` from which every larger one (checked in 256-byte steps "
            f"up to {MONOTONE_FINE} B above, 512-byte ones up to {MONOTONE_WINDOW} B above) "
            f"loads and runs it (unix port, 64-bit, engine "
            f".mpy, portable kernel; tiny: the cut-down engine deploy sends to small boards): "
            f"{heap}"
        )
        notes.append(f"heap in use once loaded and run once (`gc.mem_alloc()` after a "
                     f"collection, engine and model included; same forms): {resident}")
    return render_table(title, head, rows, notes, markdown)


def render_table(title: str, head: list[str], rows: list[list[str]], notes: list[str],
                 markdown: bool = False) -> str:
    """A titled table with notes below: aligned text, or a Markdown section."""
    if markdown:
        out = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([title, line(head)] + [line(r) for r in rows] + notes)


def synthetic_model(sizes: list[int], out_dir: Path, seed: int = 0) -> Path:
    """A random-weight Linear/ReLU model of the given sizes (for timing), as .mlp."""
    from ..export.exporter import quantize_layers
    from ..export.layers import FloatLayer

    rng = np.random.default_rng(seed)
    layers = []
    for i in range(len(sizes) - 1):
        w = rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i])
        b = rng.normal(size=sizes[i + 1]) * 0.1
        act = "relu" if i < len(sizes) - 2 else "none"
        layers.append(FloatLayer(w, b, act))
    calib = np.maximum(rng.normal(size=(256, sizes[0])), 0)  # ReLU-like, sparse inputs
    model = quantize_layers(layers, calib)
    path = Path(out_dir) / ("synthetic-" + "-".join(map(str, sizes)) + ".mlp")
    modelfile.save(model, path)
    return path
