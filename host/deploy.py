"""`micromlp deploy`: put the engine and a model on a board over mpremote, then self-test.

Steps: probe the board (MicroPython version, .mpy version, free heap, viper),
choose what to send (engine and its form, model in RAM or streamed), copy the
files (to a temporary name, then renamed, where the board can rename), and run
a self-test whose expected integers come from the host reference.
"""

from __future__ import annotations

import ast
import contextlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..export import modelfile
from ..export.pymodule import mpy_cross
from ..export.qmodel import QuantModel
from . import reference, serialcopy, vms

# Free heap below which the full engine does not fit: it takes ~13 KB as .py
# source compiled on the board and ~8 KB as .mpy (32-bit figures); below it the
# tiny engine (compiled on the board, a statement at a time) goes instead.
FULL_ENGINE_MIN_FREE = {"py": 40_000, "mpy": 24_000}
# Heap to leave for the user's code, the REPL and the self-test (full engine).
HEADROOM = 3_000
# The tiny engine's figures, measured on the emulated micro:bit (MicroPython 1.9.2,
# 8,480 bytes free after a soft reset; docs/microbit.md): a
# load takes 3,520-3,600 bytes beyond tiny_ram() (the engine's code, namespaces,
# what compiling on the board leaves). What decides whether the self-test (and a
# REPL) then works is a free block for the parser (~0.5 KB) in the heap the arrays
# leave in pieces: 4-input models with 3,790 bytes or more left after the load
# passed on fresh boards 10 times in 10; 30-input ones failed with ~3,940 left.
# Streaming opens the model file on every run and fragments more: 2- and 3-layer
# models failed with up to 4,064 bytes left, those with 4,224 or more passed.
TINY_ENGINE_RAM = 3_600
TINY_HEADROOM = 3_700  # bytes left after the load, weights in RAM ...
TINY_STREAM_HEADROOM = 4_150  # ... and streaming
TINY_HEADROOM_PER_INPUT = 12  # the inputs' buffers (the self-test's, your code's)
OLDEST = (1, 9)


class DeployError(RuntimeError):
    """A deploy that cannot go on; the message says why and what to try."""


@dataclass
class Board:
    """What the probe found."""

    version: tuple[int, ...]
    mpy: int | None  # sys.implementation._mpy, None before MicroPython 1.12
    free: int  # gc.mem_free() after gc.collect()
    viper: bool
    rename: bool  # os.rename exists
    stat: bool  # os.stat exists (mpremote cp/ls need it)
    machine: str


@dataclass
class Plan:
    """What deploy sends, and why."""

    engine: str  # "full" or "tiny"
    engine_format: str  # "mpy" or "py"
    viper: bool
    stream: bool
    reasons: list[str] = field(default_factory=list)
    native: str | None = None  # the micromlp_c.mpy build sent (firmware/native/<arch>/)


@dataclass
class SelfTest:
    """The on-device check against the host reference."""

    passed: int
    total: int
    us_per_inference: float | None
    free_after_load: int | None
    alloc_per_inference: float | None = None

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total


_PROBE = """import sys, gc, os
v = sys.implementation.version
m = getattr(sys.implementation, '_mpy', None)
vp = 0
try:
    exec('import micropython\\n@micropython.viper\\ndef _mlp_v(x:int)->int:\\n return x')
    vp = 1
except Exception:
    pass
gc.collect()
print('PROBE', v[0], v[1], v[2], m, gc.mem_free(), vp, int(hasattr(os, 'rename')),
      int(hasattr(os, 'stat')), sys.platform)
"""


# Ports that exit on a soft reset instead of restarting (the unix port: a serial
# board emulated with socat goes away): deploy asks the board first and does
# not reset these.
EXITS_ON_SOFT_RESET = ("linux", "darwin", "win32", "webassembly")


def connect(port: str):
    """Open the port and enter the raw REPL, without a reset (soft_reset() does that,
    for boards that survive one)."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        # a read timeout: a reply lost on the line fails the command (serialcopy then
        # resynchronises) instead of waiting forever
        t = SerialTransport(port, baudrate=115200, timeout=20)
    except TransportError as e:
        raise DeployError(
            f"no board on {port}: {e} (is it plugged in, and the name right?)"
        ) from None
    except Exception as e:  # pyserial raises several types for a bad port
        raise DeployError(f"no board on {port}: {e}") from None
    try:
        serialcopy.raw_repl(t)
    except Exception as e:
        t.close()
        raise DeployError(
            f"the board on {port} does not answer ({e}); it may be in use by another "
            f"program, running code that ignores Ctrl-C, or not running MicroPython"
        ) from None
    return t


@contextlib.contextmanager
def session(port: str):
    """connect(), then leave the raw REPL and close the port however the work ends."""
    t = connect(port)
    try:
        yield t
    finally:
        try:
            t.exit_raw_repl()
        except Exception:
            pass  # the board may be gone; closing the port is what matters
        try:
            t.close()
        except OSError:
            pass  # the port vanished: the error that ended the work is the one to report


def soft_reset(t, log=print) -> bool:
    """Soft-reset the board (a fresh heap) unless its port exits on one; True if it did."""
    plat = _line(_exec(t, "import sys\nprint('PLATFORM', sys.platform)", "asking the port"),
                 "PLATFORM")
    if plat and plat[0] in EXITS_ON_SOFT_RESET:
        log(f"board: the {plat[0]} port exits on a soft reset: going on without one")
        return False
    _reset(t)
    return True


def _reset(t) -> None:
    # a soft reset, back in the raw REPL
    try:
        serialcopy.raw_repl(t, soft_reset=True)
    except Exception as e:
        raise DeployError(
            f"the board did not come back from a soft reset ({e}); if it exits on one, "
            f"deploy with --resume"
        ) from None


def probe(t, tries: int = 3) -> Board:
    """Ask the board what it is. The probe only reads, so a reply garbled on the serial
    line (the emulated micro:bit's UART drops a byte now and then: "PRBE 1 9 2 ...") is
    asked for again, up to `tries` times."""
    for attempt in range(tries):
        try:
            return _board(_line(_exec(t, _PROBE, "probe"), "PROBE"))
        except (DeployError, ValueError, IndexError):
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _board(f: list[str]) -> Board:
    # the PROBE line's fields (a garbled one raises ValueError or IndexError)
    return Board(
        version=(int(f[0]), int(f[1]), int(f[2])),
        mpy=None if f[3] == "None" else int(f[3]),
        free=int(f[4]),
        viper=f[5] == "1",
        rename=f[6] == "1",
        stat=f[7] == "1",
        machine=" ".join(f[8:]),
    )


def _exec(t, code: str, what: str) -> bytes:
    from mpremote.transport import TransportExecError

    try:
        return t.exec(code)
    except TransportExecError as e:
        raise DeployError(f"{what} failed on the board: {serialcopy.error_line(e)}") from None


class _GentleSerial:
    """A serial port that writes in small, spaced pieces. Boards whose REPL has
    no flow control (MicroPython before 1.14 has no raw-paste mode) can lose
    bytes when a command arrives faster than they drain their UART. Measured on the
    emulated micro:bit with both cores of the host busy, 12 KB copied: 32-byte pieces
    lost a byte in 20 of ~150 commands, 16-byte pieces in none (64-byte pieces lose
    bytes even on an idle host)."""

    def __init__(self, serial, piece: int = 16, pause: float = 0.004):
        self._serial, self._piece, self._pause = serial, piece, pause

    def write(self, data: bytes) -> int:
        import time

        for i in range(0, len(data), self._piece):
            self._serial.write(data[i : i + self._piece])
            time.sleep(self._pause)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._serial, name)


def local_mpy_version() -> int:
    """The .mpy version this host's mpy-cross writes (bytecode-only files load on
    any board of that version, whatever its sub-version or architecture)."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "v.py"
        p.write_text("x = 1\n")
        mpy_cross(p, p.with_suffix(".mpy"))
        head = p.with_suffix(".mpy").read_bytes()[:4]
    return head[1]


def model_ram(model: QuantModel, stream: bool) -> int:
    """Rough bytes of heap the model takes once loaded (32-bit board): the weights, each
    layer's q (12 bytes per output channel), the outputs and inputs."""
    chans = sum(layer.n_out for layer in model.layers)
    weights = 0 if stream else sum(layer.w.size * layer.w_bits // 8 for layer in model.layers)
    widest = max(layer.n_in for layer in model.layers)
    return weights + 12 * chans + 8 * (chans + model.n_inputs) + (4 * widest if stream else 0) + 600


def tiny_ram(model: QuantModel, stream: bool) -> int:
    """Bytes of heap the tiny engine's arrays for the model take (32-bit board: 16-byte
    heap blocks, an object header per array)."""
    def blocks(n: int) -> int:
        return -(-n // 16) * 16

    ram = blocks(8 * model.n_inputs) + blocks(4 * model.n_inputs + 16)
    ram += blocks(4 * len(model.layers) + 16)
    for layer in model.layers:
        ni, no = layer.n_in, layer.n_out
        ram += blocks(ni) if stream else blocks(ni * no)  # a row buffer, or the weights
        arrays = 3 if layer.b is not None else 2  # bias, multipliers, outputs
        ram += arrays * blocks(4 * no + 16) + blocks(no + 16) + blocks(14 * 4 + 8)
    return ram


def plan(board: Board, model: QuantModel, fmt: str | None, stream: bool | None) -> Plan:
    """Choose the engine, its form, and where the weights live; say why."""
    if board.version[:2] < OLDEST:
        raise DeployError(
            f"MicroPython {'.'.join(map(str, board.version))} is too old for the engine "
            f"(it needs {OLDEST[0]}.{OLDEST[1]} or newer): update the board's firmware"
        )
    reasons = []
    local = local_mpy_version()
    board_mpy = None if board.mpy is None else board.mpy & 0xFF
    mpy_ok = board_mpy == local
    if fmt == "mpy" and not mpy_ok:
        raise DeployError(
            f"the board does not load this host's .mpy files (board .mpy "
            f"{board_mpy or 'unsupported'}, mpy-cross writes {local}); use --format py"
        )
    form = fmt or ("mpy" if mpy_ok else "py")
    if fmt is None:
        reasons.append(
            f".{form}: the board's .mpy version is {board_mpy or 'none'}, mpy-cross writes {local}"
        )
    engine = "full"
    if board.free < FULL_ENGINE_MIN_FREE[form]:
        engine = "tiny"
        form = "py"  # compiled on the board, which is what small boards can load
        reasons.append(
            f"tiny engine: {board.free} bytes free is below the full engine's "
            f"{FULL_ENGINE_MIN_FREE['mpy' if mpy_ok else 'py']}"
        )
        if any(layer.w_bits != 8 for layer in model.layers):
            raise DeployError(
                "the board is too small for the full engine and the tiny one takes only 8-bit "
                "weights: export with --weight-bits 8"
            )
    if engine == "tiny":
        engine_ram, ram_of = TINY_ENGINE_RAM, tiny_ram
        per_input = TINY_HEADROOM_PER_INPUT * model.n_inputs
        room = {False: TINY_HEADROOM + per_input, True: TINY_STREAM_HEADROOM + per_input}
    else:
        engine_ram, ram_of = FULL_ENGINE_MIN_FREE[form] // 2, model_ram
        room = {False: HEADROOM, True: HEADROOM}
    budget = board.free - engine_ram
    ram = ram_of(model, False)
    headroom = room[False]
    if stream is None:
        stream = ram + headroom > budget
        reasons.append(
            (
                f"streaming weights from the file: the model needs ~{ram} bytes in RAM, about "
                f"{budget} are left after the engine, {headroom} of them kept free"
            )
            if stream
            else f"weights in RAM: the model needs ~{ram} bytes, about {budget} are left "
                 f"after the engine, {headroom} of them kept free"
        )
    need, headroom = ram_of(model, stream), room[stream]
    if need + headroom > budget:
        raise DeployError(
            f"the board is too small for this model: it needs ~{need} bytes of heap "
            f"{'even streaming' if stream else 'in RAM'} and ~{headroom} more for your code "
            f"and the REPL; {board.free} are free and the engine takes ~{engine_ram}. "
            f"Try {'' if stream else '--stream, '}fewer or narrower layers, or a board with "
            f"more RAM"
        )
    native = _native_for(board, reasons) if engine == "full" else None
    return Plan(engine, form, board.viper and engine == "full", stream, reasons, native)


def _native_for(board: Board, reasons: list[str]) -> str | None:
    """The micromlp_c.mpy build for the board's architecture, where its firmware loads
    that module's .mpy version (the same version and sub-version, as native code needs);
    the reason, either way, goes into reasons."""
    from .boards import native

    arch = native.arch_of(board.mpy)
    if arch is None:
        reasons.append("no C kernels: the board's firmware loads no native code from .mpy")
        return None
    build = native.module_for(arch)
    if build is None:
        why = native.NOT_BUILT.get(arch, "no build of micromlp_c for it")
        reasons.append(f"no C kernels: {arch}: {why}")
        return None
    head = native.module_path(build).read_bytes()[:3]
    if board.mpy & 0xFF != head[1] or (board.mpy >> 8) & 3 != head[2] & 3:
        reasons.append(f"no C kernels: the board's .mpy version is {board.mpy & 0xFF}."
                       f"{(board.mpy >> 8) & 3}, micromlp_c.mpy is {head[1]}.{head[2] & 3}")
        return None
    reasons.append(f"micromlp_c.mpy ({build}): the kernels in C for this board's {arch} core")
    return build


def minify(source: str) -> str:
    """Source without comments and docstrings (smaller files, less to compile)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def engine_files(p: Plan) -> dict[str, bytes]:
    """Board file name -> contents for the chosen engine."""
    src = vms.engine_source()
    if p.engine == "tiny":
        tiny = src.with_name("micromlp_tiny.py").read_text()
        files = {"micromlp.py": minify(tiny).encode()}
        for f in vms.tiny_loader_files():
            files[f.name] = minify(f.read_text()).encode()
        return files
    files = {}
    for part in vms.firmware_files(p.viper):
        if p.engine_format == "mpy" and part.stem not in vms.MACHINE_CODE:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "m.mpy"
                mpy_cross(part, out)
                files[part.stem + ".mpy"] = out.read_bytes()
        else:  # viper machine code is per architecture: send source, compiled on the board
            files[part.name] = part.read_bytes()
    if p.native:
        from .boards import native

        files[native.MODULE] = native.module_path(p.native).read_bytes()
    return files


def write_file(t, name: str, data: bytes, board: Board) -> None:
    """Write a file to the board, each chunk checked on the board and the whole file
    read back (serialcopy.copy), via a temporary name where the board can rename."""
    from mpremote.transport import TransportError, TransportExecError

    try:
        serialcopy.copy(t, name, data, rename=board.rename)
    except serialcopy.CopyError as e:
        raise DeployError(str(e)) from None
    except (TransportError, TransportExecError, OSError) as e:  # pyserial's are OSErrors
        raise DeployError(f"copying {name} to the board failed: {e}") from None


def _vectors(model: QuantModel, n: int) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(12345)
    x = rng.integers(model.in_lo, model.in_hi + 1, size=(n, model.n_inputs))
    x[:, ::2] = np.clip(0, model.in_lo, model.in_hi)  # ReLU-like zeros
    return x.tolist(), reference.run(model, x).out.tolist()


# The self-test: the vectors go over as a file (int32: inputs, then expected
# outputs, per vector); the board runs them in statements small enough to compile
# in the fragmented heap a loaded model leaves on a micro:bit (no function is
# compiled there: the parser would need a larger free block).
_ST_LOAD = """import gc
gc.collect()
net = micromlp.load('model.mlp'{opts})
out = [0] * net.n_outputs
gc.collect()
print('FREE', gc.mem_free())
"""
_ST_OPEN = "import struct\nf = open('mlp_test.bin', 'rb')"
_ST_ONE = ("net.run(struct.unpack('<{n}i', f.read({n4})), out)\n"
           "print('MATCH', int(list(struct.unpack('<{m}i', f.read({m4}))) == list(out)))")
_ST_TIME = """def _mlp_time(r):
    x = [0] * net.n_inputs
    try:
        from time import ticks_us, ticks_diff
        t = ticks_us()
        for _ in range(r):
            net.run(x, out)
        t = ticks_diff(ticks_us(), t)
    except ImportError:
        t = -r
    try:
        a = gc.mem_alloc()
        net.run(x, out)
        a = gc.mem_alloc() - a
    except AttributeError:
        a = -1
    print('TIME', t / r, a)
"""


def _line(out: bytes, key: str) -> list[str]:
    for line in out.decode().splitlines():
        if line.startswith(key + " "):
            return line.split()[1:]
    raise DeployError(f"the board printed no {key} line: {out.decode().strip()[:200]}")


def self_test(t, model: QuantModel, p: Plan, board: Board, vectors: int = 3,
              runs: int = 10, reset: bool = False) -> SelfTest:
    """Run stored test vectors on the board; expected integers from the host reference.
    reset: the board survives a soft reset (the cleanup then starts from a fresh heap)."""
    xs, es = _vectors(model, vectors)
    rows = [np.concatenate([x, e]) for x, e in zip(xs, es, strict=True)]
    write_file(t, "mlp_test.bin", np.array(rows, dtype="<i4").tobytes(), board)
    _exec(t, "f = w = v = m = vp = n = None\nimport gc\ngc.collect()", "freeing memory")
    _exec(t, "import micromlp", "importing the engine")  # compiled alone: its peak is the largest
    opts = ", stream=True" if p.stream else ""
    free = int(_line(_exec(t, _ST_LOAD.format(opts=opts), "loading the model"), "FREE")[0])
    _exec(t, _ST_OPEN, "opening the test vectors")
    one = _ST_ONE.format(n=model.n_inputs, n4=4 * model.n_inputs, m=model.n_outputs,
                         m4=4 * model.n_outputs)
    passed = sum(int(_line(_exec(t, one, "the self-test"), "MATCH")[0]) for _ in xs)
    try:
        _exec(t, "f.close()\nf = None\ngc.collect()", "closing the test vectors")
        _exec(t, _ST_TIME, "compiling the timing")
        dt, alloc = (float(v) for v in _line(_exec(t, f"_mlp_time({runs})", "timing"), "TIME"))
    except DeployError:  # no heap left for the figures: the check is what counts
        dt = alloc = -1.0
    # The parser needs a free block in the heap the loaded model leaves in pieces: on a
    # micro:bit even `net = None` failed to compile now and then. A soft reset gives the
    # cleanup a fresh heap where the board survives one; elsewhere the model goes first.
    if reset:
        _reset(t)
    else:
        _exec(t, "net = out = None\ngc.collect()", "cleaning up")
    _exec(t, "import os\nos.remove('mlp_test.bin')", "cleaning up")
    return SelfTest(passed, len(xs), None if dt < 0 else dt, free,
                    None if alloc < 0 else alloc)


@dataclass
class DeployReport:
    """Everything deploy did."""

    port: str
    board: Board
    plan: Plan
    files: dict[str, int]
    test: SelfTest
    soft_reset: bool = False  # the board was soft-reset first (a fresh heap)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.test.ok
        return d


def deploy(
    outdir: str | Path,
    port: str,
    resume: bool = False,
    fmt: str | None = None,
    stream: bool | None = None,
    main: bool = False,
    log=print,
) -> DeployReport:
    """Deploy OUTDIR's model.mlp and the engine to the board on port, then self-test."""
    outdir = Path(outdir)
    mlp = outdir / "model.mlp" if outdir.is_dir() else outdir
    model = modelfile.load(mlp)  # every field and the 2**30 proof, checked here
    with session(port) as t:
        # every write is gentle until the board says it has raw-paste flow control
        # (MicroPython 1.14+): the probe itself garbled on a loaded machine before
        raw, t.serial = t.serial, _GentleSerial(t.serial)
        # a fresh heap: a previous deploy's model is still loaded
        was_reset = False if resume else soft_reset(t, log)
        board = probe(t)
        if board.version[:2] >= (1, 14):
            t.serial = raw
        log(
            f"board: MicroPython {'.'.join(map(str, board.version))} on {board.machine}, "
            f"{board.free} bytes free, .mpy {board.mpy}, viper {'yes' if board.viper else 'no'}"
        )
        p = plan(board, model, fmt, stream)
        for r in p.reasons:
            log(f"plan: {r}")
        files = engine_files(p)
        files["model.mlp"] = mlp.read_bytes()
        if main:
            files["main.py"] = vms.engine_source().with_name("main.py").read_bytes()
        for name, data in files.items():
            log(f"copy: {name} ({len(data)} bytes)")
            write_file(t, name, data, board)
        # the previous engine's files go only once the new ones are all on the board (a
        # failed copy leaves a working engine); a stale .py would shadow a new .mpy
        engine = vms.firmware_files() + vms.tiny_loader_files()
        stale = ({f.stem + ".mpy" for f in engine} | {f.name for f in engine}
                 | {"micromlp_c.mpy"}) - set(files)
        _exec(
            t,
            "import os\nfor n in " + repr(sorted(stale))
            + ":\n try:\n  os.remove(n)\n except OSError:\n  pass",
            "removing the previous engine's files",
        )
        if was_reset:  # the self-test starts from a fresh heap, as the board's main.py will
            _reset(t)
        test = self_test(t, model, p, board, reset=was_reset)
        speed = "n/a" if test.us_per_inference is None else f"{test.us_per_inference:.0f} us"
        log(
            f"self-test: {test.passed}/{test.total} vectors match the host reference; "
            f"{speed} per inference on the device; {test.free_after_load} bytes free after load"
            + (
                ""
                if test.alloc_per_inference is None
                else f"; {test.alloc_per_inference:.0f} bytes allocated per inference"
            )
        )
        return DeployReport(port, board, p, {k: len(v) for k, v in files.items()}, test,
                            was_reset)


def device_bench(port: str, resume: bool = True, stream: bool = False, runs: int = 50) -> dict:
    """µs per inference, free heap and allocation per inference of the deployed model
    (resume=False: soft-reset the board first, where it survives one)."""
    with session(port) as t:
        if not resume:
            soft_reset(t, log=lambda m: None)
        code = _DEVICE_BENCH.format(opts=", stream=True" if stream else "", n=runs)
        f = _line(_exec(t, code, "the device bench"), "DEVBENCH")
    return {
        "us_per_inference": float(f[0]),
        "free_after_load": int(f[1]),
        "alloc_per_inference": float(f[2]),
        "runs": runs,
    }


_DEVICE_BENCH = """import gc, micromlp
from time import ticks_us, ticks_diff
def bench(n):
    gc.collect()
    net = micromlp.load('model.mlp'{opts})
    gc.collect()
    free = gc.mem_free()
    x = [0] * net.n_inputs
    out = [0] * net.n_outputs
    net.run(x, out)
    a = gc.mem_alloc()
    t = ticks_us()
    for i in range(n):
        net.run(x, out)
    t = ticks_diff(ticks_us(), t)
    a = gc.mem_alloc() - a  # read before any float is made
    print('DEVBENCH', t / n, free, a / n)
bench({n})
"""
