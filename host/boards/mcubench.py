"""`micromlp bench --vm cortex-m3`: cost on a real MCU instruction set, deterministically.

Each board runs under QEMU with `-icount shift=0` (host/boards/mcu.py): one guest
instruction is 1 ns of the board's clock, so `time.ticks_us()` counts thousands of
instructions and a figure is the same on every run. Per kernel: instructions per
inference (one `net.run(x, out)` call on an array('i'), a dense random in-range row) and
per multiply-add; per way of getting the engine onto the board (source compiled on the
board; .mpy from MicroPython's own mpy-cross, loaded into RAM as from a copied file,
which `mpremote mount` serves; .mpy in a ROMFS image, used in place; frozen into the
firmware; frozen with the model): the heap the engine and model hold after a load and
one run, a collection done (`gc.mem_alloc()` against the same figure before the
engine was imported; the caller's input and output arrays, made before, not counted). Beside
them the same integer arithmetic in C, compiled for the same core (host/boards/cref.py).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...export import modelfile
from . import mcu

FORMS = ("py", "mpy", "romfs", "romfs+c", "frozen", "frozen+model")
# where the smallest heap is searched (one boot each, a soft reset per trial; the forms
# served by mpremote mount or compiled from source are left out: slow, and the mount's
# objects are not what a board's own filesystem costs)
HEAP_FORMS = ("romfs", "romfs+c", "frozen", "frozen+model")
HEAP_STEP = 256  # the search's resolution, bytes
HEAP_WINDOW = 4096  # above the answer, every 512 bytes must pass too (not monotone)
TIMED_FORM = "romfs+c"  # where every kernel is timed: the engine and micromlp_c.mpy in ROMFS
# time.ticks_us() runs on the board's clock: at -icount shift=0, 1 us = 1000 instructions
INSTRUCTIONS_PER_US = 1000
MIN_US = 20000  # time each kernel over at least this much board time (20 M instructions)

_SCRIPT = """
import gc, time
from array import array
x = array('i', {row!r})
out = array('i', bytes(4 * {n_out}))
gc.collect()
a0 = gc.mem_alloc()
import micromlp
{model_import}
net = micromlp.load({src})
net.run(x, out)
gc.collect()
print('HELD', gc.mem_alloc() - a0)
print('OUT', ' '.join([str(v) for v in out]))
net = None
for k in {kernels!r}:
    gc.collect()
    net = micromlp.load({src}, kernel=k)
    net.run(x, out)
    ok = ' '.join([str(v) for v in out])
    n = 1
    while True:
        t = time.ticks_us()
        for i in range(n):
            net.run(x, out)
        dt = time.ticks_diff(time.ticks_us(), t)
        if dt >= {min_us}:
            break
        n *= 4
    print('TIME', k, n, dt, ok)
    net = None
"""


# One trial of the smallest-heap search: a bytearray takes all but `leave` bytes of the
# free heap, then the engine loads the model and runs it once
_HEAP_TRIAL = """
import gc
from array import array
x = array('i', {row!r})
out = array('i', bytes(4 * {n_out}))
gc.collect()
_block = bytearray(max(gc.mem_free() - {leave}, 16))
gc.collect()
free = gc.mem_free()
try:
    import micromlp
    {model_import}
    net = micromlp.load({src})
    net.run(x, out)
    print('HEAP', free, ' '.join([str(v) for v in out]))
except MemoryError:
    print('HEAP', free, 'MemoryError')
"""


def smallest_heap(session: mcu.Session, trial: str, want: str) -> int:
    """The smallest free heap (gc.mem_free() once the rest is taken) from which load and
    one run give the reference's outputs: a binary search in HEAP_STEP steps, then moved
    up past any failure in the HEAP_WINDOW above (a larger heap can fail where a smaller
    one passed: the collector runs at other moments)."""
    def ok(leave: int) -> tuple[bool, int]:
        out = session.run(trial.replace("{leave}", str(leave)))
        f = next((ln.split(" ", 2) for ln in out.splitlines() if ln.startswith("HEAP ")),
                 None)
        if f is None:
            raise mcu.BoardError(f"{session.name}: a heap trial did not run:\n{out[-600:]}")
        if f[2] not in (want, "MemoryError"):
            raise mcu.BoardError(f"{session.name}: outputs {f[2]} differ from the host "
                                 f"reference's {want}")
        return f[2] == want, int(f[1])

    lo, hi = 0, 1 << 17
    if not ok(hi)[0]:
        raise mcu.BoardError(f"{session.name}: the model does not run even with {hi} B free")
    while hi - lo > HEAP_STEP:
        mid = (lo + hi) // 2 // HEAP_STEP * HEAP_STEP
        lo, hi = (lo, mid) if ok(mid)[0] else (mid, hi)
    while True:
        fails = [h for h in range(hi + 512, hi + HEAP_WINDOW + 1, 512) if not ok(h)[0]]
        if not fails:
            return ok(hi)[1]
        hi = max(fails) + HEAP_STEP
        while not ok(hi)[0]:
            hi += HEAP_STEP


@dataclass
class McuRun:
    """One kernel's cost on one board."""

    board: str
    form: str
    kernel: str
    instructions: float  # per inference
    per_mac: float


@dataclass
class McuBenchReport:
    model: str
    layers: str
    macs: int
    board: str
    cpu: str
    held: dict = field(default_factory=dict)  # form -> bytes held after load + one run
    smallest: dict = field(default_factory=dict)  # form -> smallest free heap that works
    runs: list[McuRun] = field(default_factory=list)
    c_instructions: float | None = None  # the C reference, per inference
    c_note: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _kernels(board: mcu.McuBoard) -> tuple[str, ...]:
    if not board.viper:
        return ("portable",)
    return ("c", "viper", "native", "portable") if board.native else ("viper", "native",
                                                                      "portable")


def _stage(folder: Path, form: str, board: mcu.McuBoard) -> None:
    """The engine in folder as the form needs it on the board (frozen: nothing)."""
    from .. import vms

    if form.startswith("frozen"):
        return
    if form == "romfs+c" and board.native:
        from . import native

        shutil.copy(native.module_path(board.native), folder / native.MODULE)
    for f in vms.firmware_files(viper=board.viper):
        if form == "py":
            shutil.copy(f, folder / f.name)
        else:  # MicroPython's own mpy-cross: machine code for this core where viper
            import subprocess

            flags = [f"-march={board.march}"] if f.stem in vms.MACHINE_CODE else []
            subprocess.run([str(mcu.mpy_cross()), *flags, "-o", str(folder / f"{f.stem}.mpy"),
                            str(f)], check=True, capture_output=True)


def _firmware(board: str, form: str, model_path: Path, work: Path) -> Path | None:
    """The firmware for a form: the plain build, or one with the engine (and the model)
    frozen in."""
    from .frozen import build

    if not form.startswith("frozen"):
        return None
    out = work / form.replace("+", "-")
    return build(board, out, model_path if form == "frozen+model" else None).firmware


def bench_board(board_name: str, model_path: str | Path, forms: tuple[str, ...] = FORMS,
                row: list[int] | None = None, progress=None, heap: bool = True
                ) -> McuBenchReport:
    """Measure one model on one MCU board (see the module docstring); heap: also search
    the smallest heap of each of HEAP_FORMS among forms."""
    from .. import reference

    board = mcu.board(board_name)
    model_path = Path(model_path)
    model = modelfile.load(model_path)
    if row is None:
        rng = np.random.default_rng(0)
        row = rng.integers(model.in_lo, model.in_hi + 1, size=model.n_inputs).tolist()
    want = " ".join(str(v) for v in reference.run(model, np.array([row])).out[0])
    macs = sum(ly.n_in * ly.n_out for ly in model.layers)
    shape = "-".join(str(v) for v in [model.n_inputs] + [ly.n_out for ly in model.layers])
    rep = McuBenchReport(str(model_path), shape, macs, board.name, board.cpu)
    with tempfile.TemporaryDirectory(prefix="micromlp-mcubench-") as tmp:
        work = Path(tmp)
        # a board whose firmware loads no native code (the M0 build): no C form, and the
        # kernels are timed with the engine alone
        timed = TIMED_FORM if board.native else "romfs"
        for form in forms:
            if progress:
                progress(f"{board.name} {form}")
            if form == "romfs+c" and not board.native:
                rep.notes.append(f"no micromlp_c on {board.name}: its firmware loads no native "
                                 f"code from .mpy")
                continue
            folder = work / "board"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            _stage(folder, form, board)
            frozen_model = form == "frozen+model"
            if not frozen_model:
                shutil.copy(model_path, folder / "model.mlp")
            elf = _firmware(board.name, form, model_path, work)
            script = _SCRIPT.format(
                model_import="import model_mlp" if frozen_model else "",
                src="model_mlp" if frozen_model else "'model.mlp'", row=row,
                n_out=model.n_outputs,
                kernels=_kernels(board) if form == timed else (), min_us=MIN_US)
            (folder / "bench.py").write_text(script)
            out = mcu.run(board.name, folder, "bench.py", elf=elf, mount=form == "mpy")
            lines = out.splitlines()
            held = [ln for ln in lines if ln.startswith("HELD ")]
            if not held:
                raise mcu.BoardError(f"{board.name} ({form}): the bench did not run:\n"
                                     + "\n".join(lines[-8:]))
            rep.held[form] = int(held[0].split()[1])
            got = [ln[4:] for ln in lines if ln.startswith("OUT ")]
            for ln in lines:
                if ln.startswith("TIME "):
                    _, kernel, n, us, *ints = ln.split()
                    got.append(" ".join(ints))
                    ins = int(us) * INSTRUCTIONS_PER_US / int(n)
                    rep.runs.append(McuRun(board.name, form, kernel, ins, ins / macs))
            if any(g != want for g in got):
                raise mcu.BoardError(f"{board.name} ({form}): outputs {got} differ from the "
                                     f"host reference's {want}")
            if heap and form in HEAP_FORMS:
                trial = _HEAP_TRIAL.format(
                    row=row, n_out=model.n_outputs, leave="{leave}",
                    model_import="import model_mlp" if frozen_model else "",
                    src="model_mlp" if frozen_model else "'model.mlp'")
                with mcu.Session(board.name, folder, elf) as session:
                    rep.smallest[form] = smallest_heap(session, trial, want)
    from . import cref

    try:
        rep.c_instructions, rep.c_note = cref.instructions(board.name, model, row)
    except mcu.BoardError as e:  # the board's own last word (the M0 build loads no
        # native code from .mpy: "ValueError: native code in .mpy unsupported")
        rep.c_note = f"no C reference on {board.name}: {str(e).splitlines()[-1]}"
    return rep


def format_report(rep: McuBenchReport, mhz: float = 100.0, markdown: bool = False) -> str:
    """Kernels (instructions per inference and per multiply-add, an estimate at `mhz`)
    and the heap each form holds."""
    head = ["kernel", "instructions/inf", "per MAC", f"ms at {mhz:g} MHz (1 IPC)", "x C"]
    rows = [[r.kernel, f"{r.instructions:,.0f}", f"{r.per_mac:.1f}",
             f"{r.instructions / (mhz * 1000):.3f}",
             "-" if not rep.c_instructions else f"{r.instructions / rep.c_instructions:.1f}"]
            for r in rep.runs]
    if rep.c_instructions:
        rows.append(["C reference", f"{rep.c_instructions:,.0f}",
                     f"{rep.c_instructions / rep.macs:.1f}",
                     f"{rep.c_instructions / (mhz * 1000):.3f}", "1.0"])
    title = (f"{rep.board} ({rep.cpu}, MicroPython {mcu.VERSION} in QEMU, -icount "
             f"shift=0,sleep=off): model {rep.layers} ({rep.macs} multiply-adds)")
    forms = {"py": "engine .py (compiled on the board)", "mpy": "engine .mpy (in RAM)",
             "romfs": "engine .mpy in ROMFS (in place)",
             "romfs+c": "engine .mpy and micromlp_c.mpy in ROMFS",
             "frozen": "engine frozen, model from a file",
             "frozen+model": "engine and model frozen"}
    held = [f"{forms[k]}: {v:,} B" for k, v in rep.held.items()]
    notes = [f"heap held after load + one run (gc.mem_alloc() after a collection, against "
             f"the same before the engine's import; the caller's input and output arrays "
             f"not counted): {'; '.join(held)}"]
    if rep.smallest:
        notes.append(
            "smallest free heap from which load + one run works (gc.mem_free() once a "
            f"bytearray has taken the rest; {HEAP_STEP}-byte steps, every 512 bytes up to "
            f"{HEAP_WINDOW} above checked too): " + "; ".join(
                f"{forms[k]}: {v:,} B" for k, v in rep.smallest.items()))
    with_c = "and micromlp_c.mpy " if any(r.kernel == "c" for r in rep.runs) else ""
    notes.append(f"kernels timed with the engine {with_c}as .mpy in ROMFS; one "
                 "net.run(x, out) per inference on an array('i') of dense random in-range "
                 "inputs (viper and the bytecode kernels skip zero inputs: real ReLU-sparse "
                 "data costs them less; C does every multiply-add)")
    notes += rep.notes
    if rep.c_note:
        notes.append(rep.c_note)
    from ..bench import render_table

    return render_table(title, head, rows, notes, markdown)
