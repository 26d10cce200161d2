"""`micromlp deploy`: put the engine and a model on a board over mpremote, then self-test.

Steps: probe the board (MicroPython version, .mpy version, free heap, viper),
choose what to send (engine and its form, model in RAM or streamed), copy the
files (to a temporary name, then renamed, where the board can rename), and run
a self-test whose expected integers come from the host reference.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..export import modelfile
from ..export.pymodule import mpy_cross
from ..export.qmodel import QuantModel
from . import reference, vms

# Free heap below which the full engine does not fit: it takes ~13 KB as .py
# source compiled on the board and ~8 KB as .mpy (32-bit figures); below it the
# tiny engine (one small module, compiled on the board) goes instead.
FULL_ENGINE_MIN_FREE = {"py": 40_000, "mpy": 24_000}
TINY_ENGINE_RAM = 2_800  # resident after import, measured on a micro:bit
# Heap to leave for the user's code, the REPL and the self-test. Measured on
# the emulated micro:bit: with ~2.9 KB left (digits, streamed) the REPL's
# parser fails now and then; with ~4 KB left (iris) it never did.
HEADROOM = 3_000
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


def connect(port: str, resume: bool):
    """Open the port and enter the raw REPL (soft reset unless resume)."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        t = SerialTransport(port, baudrate=115200)
    except TransportError as e:
        raise DeployError(
            f"no board on {port}: {e} (is it plugged in, and the name right?)"
        ) from None
    except Exception as e:  # pyserial raises several types for a bad port
        raise DeployError(f"no board on {port}: {e}") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints what it read
            t.enter_raw_repl(soft_reset=not resume)
    except Exception as e:
        t.close()
        raise DeployError(
            f"the board on {port} does not answer ({e}); it may be in use by another "
            f"program, running code that ignores Ctrl-C, or not running MicroPython"
        ) from None
    return t


@contextlib.contextmanager
def session(port: str, resume: bool):
    """connect(), then leave the raw REPL and close the port however the work ends."""
    t = connect(port, resume)
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


def probe(t) -> Board:
    """Ask the board what it is."""
    f = _line(_exec(t, _PROBE, "probe"), "PROBE")
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
        msg = (e.error_output or "").strip().splitlines()
        raise DeployError(f"{what} failed on the board: {msg[-1] if msg else e}") from None


class _GentleSerial:
    """A serial port that writes in small, spaced pieces. Boards whose REPL has
    no flow control (MicroPython before 1.14 has no raw-paste mode) can lose
    bytes when a command arrives faster than they drain their UART."""

    def __init__(self, serial, piece: int = 32, pause: float = 0.004):
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
    """Rough bytes of heap the model takes once loaded (32-bit board)."""
    chans = sum(layer.n_out for layer in model.layers)
    weights = 0 if stream else sum(layer.w.size * layer.w_bits // 8 for layer in model.layers)
    widest = max(layer.n_in for layer in model.layers)
    return weights + 16 * chans + 8 * (chans + model.n_inputs) + (4 * widest if stream else 0) + 600


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
    engine_ram = TINY_ENGINE_RAM if engine == "tiny" else FULL_ENGINE_MIN_FREE[form] // 2
    budget = board.free - engine_ram
    ram = model_ram(model, False)
    if stream is None:
        stream = ram + HEADROOM > budget
        reasons.append(
            (
                f"streaming weights from the file: the model needs ~{ram} bytes in RAM, about "
                f"{budget} are left after the engine"
            )
            if stream
            else f"weights in RAM: the model needs ~{ram} bytes, about {budget} are left"
        )
    need = model_ram(model, stream)
    if need + HEADROOM > budget:
        raise DeployError(
            f"the board is too small for this model: it needs ~{need} bytes of heap "
            f"{'even streaming' if stream else 'in RAM'} and ~{HEADROOM} more for your code "
            f"and the REPL; {board.free} are free and the engine takes ~{engine_ram}. "
            f"Try {'' if stream else '--stream, '}fewer or narrower layers, or a board with "
            f"more RAM"
        )
    return Plan(engine, form, board.viper and engine == "full", stream, reasons)


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
    parts = [src] + ([src.with_name("micromlp_viper.py")] if p.viper else [])
    for part in parts:
        if p.engine_format == "mpy" and part.name == "micromlp.py":
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "m.mpy"
                mpy_cross(part, out)
                files["micromlp.mpy"] = out.read_bytes()
        else:  # viper machine code is per architecture: send source, compiled on the board
            files[part.name] = part.read_bytes()
    return files


# The board reads a file back: its size and a hash (in small ints: a 32-bit board
# makes no bignum), which the host compares with what it sent.
_READ_BACK = """n = h = 0
f = open({name!r}, 'rb')
b = f.read(64)
while b:
    n += len(b)
    for v in b:
        h = (h * 31 + v) % 65521
    b = f.read(64)
f.close()
print(n, h)
"""


def content_hash(data: bytes) -> int:
    """The hash _READ_BACK computes on the board."""
    h = 0
    for v in data:
        h = (h * 31 + v) % 65521
    return h


def write_file(t, name: str, data: bytes, board: Board, tries: int = 3) -> None:
    """Write a file, via a temporary name where the board can rename, and check what
    landed: its size and a hash of its content, read back on the board."""
    tmp = name + ".part" if board.rename else name
    for attempt in range(tries):
        try:
            t.fs_writefile(tmp, data, chunk_size=128)
            got = _exec(t, _READ_BACK.format(name=tmp), f"reading back {name}").split()
            if [int(v) for v in got[-2:]] != [len(data), content_hash(data)]:
                raise DeployError(f"{name}: the board holds {got[-2:]} (bytes, hash), "
                                  f"{[len(data), content_hash(data)]} sent")
            if board.rename:
                _exec(
                    t,
                    f"import os\ntry:\n os.remove({name!r})\nexcept OSError:\n pass\n"
                    f"os.rename({tmp!r},{name!r})",
                    f"renaming {tmp}",
                )
            return
        except Exception as e:  # a dropped byte on a slow serial line: write it again
            if attempt == tries - 1:
                raise DeployError(f"copying {name} to the board failed: {e}") from None


def _vectors(model: QuantModel, n: int) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(12345)
    x = rng.integers(model.in_lo, model.in_hi + 1, size=(n, model.n_inputs))
    x[:, ::2] = np.clip(0, model.in_lo, model.in_hi)  # ReLU-like zeros
    return x.tolist(), reference.run(model, x).out.tolist()


# The self-test: the vectors go over as a file (int32: inputs, then expected
# outputs, per vector) and one snippet does the rest, compiled once the model is
# loaded (loading, which checks the file on the board, needs the larger peak).
_ST_LOAD = """import gc
gc.collect()
net = micromlp.load('model.mlp'{opts})
out = [0] * net.n_outputs
gc.collect()
print('FREE', gc.mem_free())
"""
_ST_CHECK = """def _mlp_check(k):
    import struct
    n = net.n_inputs
    m = net.n_outputs
    f = open('mlp_test.bin', 'rb')
    ok = 0
    for _ in range(k):
        net.run(struct.unpack('<%di' % n, f.read(4 * n)), out)
        ok += list(struct.unpack('<%di' % m, f.read(4 * m))) == list(out)
    f.close()
    print('MATCH', ok)
"""
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
              runs: int = 10) -> SelfTest:
    """Run stored test vectors on the board; expected integers from the host reference."""
    xs, es = _vectors(model, vectors)
    rows = [np.concatenate([x, e]) for x, e in zip(xs, es, strict=True)]
    write_file(t, "mlp_test.bin", np.array(rows, dtype="<i4").tobytes(), board)
    _exec(t, "f = w = v = m = vp = n = None\nimport gc\ngc.collect()", "freeing memory")
    _exec(t, "import micromlp", "importing the engine")  # compiled alone: its peak is the largest
    # load() compiles and checks the file on a small board (its peak comes next), then the
    # check is compiled, and dropped before the timing is: a micro:bit has room for one
    opts = ", stream=True" if p.stream else ""
    free = int(_line(_exec(t, _ST_LOAD.format(opts=opts), "loading the model"), "FREE")[0])
    _exec(t, _ST_CHECK, "compiling the self-test")
    passed = int(_line(_exec(t, f"_mlp_check({len(xs)})", "the self-test"), "MATCH")[0])
    try:
        _exec(t, "del _mlp_check\ngc.collect()", "freeing the check")
        _exec(t, _ST_TIME, "compiling the timing")
        dt, alloc = (float(v) for v in _line(_exec(t, f"_mlp_time({runs})", "timing"), "TIME"))
    except DeployError:  # no heap left for the figures: the check is what counts
        dt = alloc = -1.0
    _exec(t, "net = out = None\nimport os\nos.remove('mlp_test.bin')\ngc.collect()",
          "cleaning up")
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
    with session(port, resume) as t:
        # every write is gentle until the board says it has raw-paste flow control
        # (MicroPython 1.14+): the probe itself garbled on a loaded machine before
        raw, t.serial = t.serial, _GentleSerial(t.serial)
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
        stale = {"micromlp.py", "micromlp.mpy", "micromlp_viper.py", "micromlp_tiny_load.py",
                 "micromlp_tiny_fill.py", "micromlp_tiny_run.py",
                 "micromlp_tiny_float.py"} - set(files)
        # a stale .py would shadow a new .mpy
        remove = "import os\nfor n in " + repr(sorted(stale))
        _exec(
            t,
            remove + ":\n try:\n  os.remove(n)\n except OSError:\n  pass",
            "removing stale engine files",
        )
        for name, data in files.items():
            log(f"copy: {name} ({len(data)} bytes)")
            write_file(t, name, data, board)
        test = self_test(t, model, p, board)
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
        return DeployReport(port, board, p, {k: len(v) for k, v in files.items()}, test)


def device_bench(port: str, resume: bool = True, stream: bool = False, runs: int = 50) -> dict:
    """µs per inference, free heap and allocation per inference of the deployed model."""
    with session(port, resume) as t:
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
