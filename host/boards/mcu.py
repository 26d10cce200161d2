"""MCU boards from MicroPython's own source: the qemu port's Cortex-M boards in QEMU.

MicroPython v1.28.0 is built from source into a cache on first use (never copied into
this repository): from $MICROPYTHON_SRC (a source tree or its tarball), else the
tarball in ../shared/micropython/ beside this checkout, else a shallow clone of the
v1.28.0 tag. Each board runs under `qemu-system-arm -icount shift=0,sleep=off`: the
guest's clock advances 1 ns per instruction, so `time.ticks_us()` on the board counts
thousands of instructions, the same on every run whatever the host's load. Files reach
the board in a ROMFS image mounted at /rom (run()), over `mpremote mount` at /remote
(run(mount=True)), or frozen into its firmware (host/boards/frozen.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .emulate import BoardError

VERSION = "1.28.0"
TAG = f"v{VERSION}"
REPO_URL = "https://github.com/micropython/micropython"


@dataclass(frozen=True)
class McuBoard:
    """One of the qemu port's boards, as micromlp names it."""

    name: str  # what --vm and --board take
    board: str  # the qemu port's BOARD
    machine: str  # QEMU's -machine
    cpu: str
    march: str  # mpy-cross -march for native code on this core
    viper: bool  # whether the port has the native/viper emitters here
    romfs: int  # where QEMU loads a ROMFS image of the files a run needs (unused memory)
    romfs_max: int  # its size limit
    qemu_args: tuple[str, ...] = ()
    make_args: tuple[str, ...] = ()  # what its firmware build needs beside BOARD=

    @property
    def native(self) -> str | None:
        """The micromlp_c.mpy build this board loads (firmware/native/), or None where
        its firmware loads no native code (the M0 build)."""
        return self.march if self.viper else None


BOARDS = {
    b.name: b
    for b in (
        # the MPS2 boards run from 4 MB of RAM at 0 (firmware, heap, stack at the top):
        # 2 MB in, nothing is there
        McuBoard("cortex-m3", "MPS2_AN385", "mps2-an385", "Cortex-M3", "armv7m", True,
                 0x200000, 0x100000),
        McuBoard("cortex-m7", "MPS2_AN500", "mps2-an500", "Cortex-M7", "armv7emdp", True,
                 0x200000, 0x100000),
        # the MPS3 board runs from its 2 MB of RAM at 0x01000000; its DTCM (512 KB at
        # 0x20000000) is unused. Built with single-precision floats: the port's
        # double-precision libm does not compile with Debian's newlib (double_t unknown
        # in lib/libm_dbl/log.c). Its FPU is the M7's, so its native code is armv7emdp
        McuBoard("cortex-m55", "MPS3_AN547", "mps3-an547", "Cortex-M55", "armv7emdp", True,
                 0x20000000, 0x80000, make_args=("MICROPY_FLOAT_IMPL=float",)),
        # modern MicroPython on an nRF51 (this build gives it 256 KB of SRAM); Thumb-1
        # only: MicroPython has no native emitter for armv6m, so no viper. Its 1 MB of
        # flash holds the ~170 KB firmware from 0
        McuBoard("cortex-m0", "MICROBIT", "microbit", "Cortex-M0", "armv6m", False,
                 0x80000, 0x80000,
                 ("-global", "nrf51-soc.flash-size=1048576",
                  "-global", "nrf51-soc.sram-size=262144")),
    )
}
# Tried and not built here (shared/micropython/README.md): VIRT_RV32 links the 64-bit
# libgcc of Debian's multilib RISC-V toolchain.
NOT_BUILT = {
    "rv32": "Debian's RISC-V compiler has no C library without picolibc (about 1 GB), and "
            "with it VIRT_RV32 links against the 64-bit libgcc and crt0 of its multilib "
            "toolchain (ELFCLASS64 incompatible)",
}


def board(name: str) -> McuBoard:
    if name in BOARDS:
        return BOARDS[name]
    why = f" ({NOT_BUILT[name]})" if name in NOT_BUILT else ""
    raise BoardError(f"unknown MCU board {name!r}{why}; choose from {', '.join(BOARDS)}")


def cache_dir() -> Path:
    """Where MicroPython's source and the builds are kept ($MICROMLP_CACHE/mcu)."""
    root = Path(os.environ.get("MICROMLP_CACHE", Path.home() / ".cache" / "micromlp"))
    return root / "mcu"


@contextmanager
def _locked(name: str):
    # one build at a time per cache (two test processes, or a CLI beside them)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _shared_tarball() -> Path:
    # ../shared/micropython/ beside the checkout this package runs from
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "micropython" / f"micropython-{VERSION}.tar.gz"


def source_tree() -> Path:
    """MicroPython's source, unpacked in the cache (see the module docstring)."""
    tree = cache_dir() / f"micropython-{VERSION}"
    if (tree / "py" / "mpconfig.h").exists():
        return tree
    with _locked("source"):
        if (tree / "py" / "mpconfig.h").exists():
            return tree
        given = os.environ.get("MICROPYTHON_SRC")
        src = Path(given) if given else _shared_tarball()
        tmp = cache_dir() / f".unpack-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if given and src.is_dir():
            shutil.copytree(src, tmp / tree.name, symlinks=True)
        elif src.is_file():
            with tarfile.open(src) as t:
                t.extractall(tmp, filter="data")
        elif given:
            raise BoardError(f"MICROPYTHON_SRC={given}: no such file or folder")
        else:
            if shutil.which("git") is None:
                raise BoardError(f"MicroPython's source is needed: set MICROPYTHON_SRC to a "
                                 f"{TAG} tree or tarball (no {src}, and git is missing)")
            r = subprocess.run(["git", "clone", "-q", "--depth", "1", "-b", TAG, REPO_URL,
                                str(tmp / tree.name)], capture_output=True, text=True)
            if r.returncode:
                raise BoardError(f"cloning MicroPython {TAG} failed: {r.stderr.strip()[-300:]}"
                                 f"; set MICROPYTHON_SRC to a {TAG} tree or tarball")
        unpacked = next(p for p in tmp.iterdir() if (p / "py" / "mpconfig.h").exists())
        unpacked.rename(tree)
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


def _make(args: list[str], what: str, cwd: Path, arm: bool = True) -> None:
    # arm: the build needs the ARM cross compiler (mpy-cross needs the host's only)
    if arm and shutil.which("arm-none-eabi-gcc") is None:
        raise BoardError("arm-none-eabi-gcc is missing (apt-get install gcc-arm-none-eabi "
                         "libnewlib-arm-none-eabi; `make test` installs them)")
    r = subprocess.run(["make", "-j", str(os.cpu_count() or 2), *args], cwd=cwd,
                       capture_output=True, text=True)
    if r.returncode:
        raise BoardError(f"building {what} failed:\n{(r.stdout + r.stderr)[-1500:]}")


def mpy_cross() -> Path:
    """MicroPython's own mpy-cross, built from the same source (the boards' .mpy ABI)."""
    tree = source_tree()
    exe = tree / "mpy-cross" / "build" / "mpy-cross"
    if not exe.exists():
        with _locked("mpy-cross"):
            if not exe.exists():
                _make([], f"MicroPython {VERSION}'s mpy-cross", tree / "mpy-cross", arm=False)
    return exe


def firmware(name: str, manifest: Path | None = None) -> Path:
    """The board's firmware.elf, built on first use: plain (no frozen modules), or with
    a manifest's modules frozen in (a build folder per manifest content)."""
    b = board(name)
    tree = source_tree()
    tag = "plain"
    if manifest is not None:
        tag = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]
    build = cache_dir() / "builds" / f"{b.board}-{tag}"
    elf = build / "firmware.elf"
    if elf.exists() and manifest is None:
        return elf
    mpy_cross()
    lib = cache_dir() / "lib"  # the manifest tools want a micropython-lib folder
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "README.md").write_text("an empty micropython-lib for frozen manifests\n")
    with _locked(f"build-{b.board}"):
        args = [f"BOARD={b.board}", f"BUILD={build}", f"MPY_LIB_DIR={lib}",
                f"FROZEN_MANIFEST={manifest or ''}", *b.make_args]
        _make(args, f"MicroPython {VERSION} for {b.name} ({b.board})", tree / "ports" / "qemu")
    return elf


class Qemu:
    """A board running in QEMU until stop(), its REPL on a pty (`port`); romfs: an image
    QEMU places at the board's ROMFS address."""

    def __init__(self, name: str, elf: Path | None = None, icount: bool = True,
                 romfs: Path | None = None) -> None:
        self.board = board(name)
        qemu = shutil.which("qemu-system-arm")
        if qemu is None:
            raise BoardError("qemu-system-arm is missing (apt-get install qemu-system-arm)")
        elf = elf or firmware(name)
        cmd = [qemu, "-machine", self.board.machine, "-nographic", "-monitor", "null",
               "-semihosting", "-serial", "pty", *self.board.qemu_args, "-kernel", str(elf)]
        if romfs is not None:
            cmd += ["-device", f"loader,file={romfs},addr={self.board.romfs:#x},force-raw=on"]
        if icount:
            # sleep=off: while the board idles (waiting for the host), its clock runs at
            # real speed instead of jumping to the next deadline, so its timeouts (the
            # mount protocol's 1 s poll) mean what they say; computing, it counts
            # instructions as ever
            cmd[1:1] = ["-icount", "shift=0,sleep=off"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline, line = time.time() + 20, ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            m = re.search(r"(/dev/pts/\d+)", line)
            if m:
                self.port = m.group(1)
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise BoardError(f"QEMU ({self.board.name}) did not report its serial pty: "
                         f"{line.strip()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Qemu:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# What a run on a ROMFS image starts with: the image mounted at /rom, the current folder
_ROMFS_MOUNT = """import vfs, uctypes, os, sys
vfs.mount(vfs.VfsRom(uctypes.bytearray_at({addr:#x}, {size})), '/rom')
os.chdir('/rom')
sys.path.insert(0, '/rom')
del vfs, uctypes, os, sys
"""


def romfs_image(folder: Path) -> bytes:
    """A ROMFS image (MicroPython's read-only filesystem, vfs.VfsRom) of folder's files,
    sources left as they are."""
    import contextlib
    import io

    from mpremote.romfs import make_romfs

    with contextlib.redirect_stdout(io.StringIO()):
        return make_romfs(str(folder), mpy_cross=False)


def _romfs(b: McuBoard, folder: Path, tmp: Path) -> tuple[Path, str]:
    """folder's ROMFS image written into tmp, and the code that mounts it on the board."""
    data = romfs_image(folder)
    if len(data) > b.romfs_max:
        raise BoardError(f"{b.name}: the files take {len(data)} bytes of ROMFS, more than "
                         f"the {b.romfs_max} this board has room for")
    image = tmp / "romfs.img"
    image.write_bytes(data)
    return image, _ROMFS_MOUNT.format(addr=b.romfs, size=len(data))


class Session:
    """A board booted once with folder's files in ROMFS (at /rom, the current folder),
    running one piece of code after another, each after mpremote's soft reset: a fresh
    heap every time, as a boot gives, without booting again (the smallest-heap search
    runs a couple of dozen trials)."""

    def __init__(self, name: str, folder: Path, elf: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="micromlp-session-")
        image, self._mount = _romfs(board(name), folder, Path(self._tmp.name))
        self.name = name
        self.qemu = Qemu(name, elf, romfs=image)

    def run(self, code: str, timeout: float = 120) -> str:
        """What code printed (run after a soft reset, the ROMFS mounted first)."""
        script = Path(self._tmp.name) / "s.py"
        script.write_text(self._mount + code)
        try:
            r = subprocess.run(["mpremote", "connect", self.qemu.port, "run", str(script)],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BoardError(f"{self.name}: a run did not finish in {timeout:.0f} s") from None
        if r.returncode:
            raise BoardError(f"{self.name}: mpremote exited with {r.returncode}: "
                             f"{(r.stderr + r.stdout).strip()[-800:]}")
        return r.stdout

    def close(self) -> None:
        self.qemu.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run(name: str, folder: Path, script: str, timeout: float = 300,
        elf: Path | None = None, mount: bool = False) -> str:
    """Boot the board with folder's files and run script (a file in folder) there;
    return what it printed.

    The files reach the board as a ROMFS image QEMU places in memory, mounted at /rom:
    a real filesystem (reading it allocates nothing, as a board's flash filesystem) and
    no traffic on the serial line. mount=True serves the folder with `mpremote mount`
    at /remote instead (its files are Python objects on the board: reading allocates,
    so streaming weights under heap_lock fails there; what loading a copied .mpy costs
    in RAM shows only there, as a .mpy in ROMFS runs in place). A run that stalls (the
    board and mpremote's mount protocol end up each waiting for the other now and then)
    is tried once more on a fresh boot; a second stall is an error."""
    b = board(name)
    with tempfile.TemporaryDirectory(prefix="micromlp-romfs-") as tmp:
        image, text = None, (folder / script).read_text()
        if not mount:
            image, prefix = _romfs(b, folder, Path(tmp))
            text = prefix + text
        (Path(tmp) / script).write_text(text)
        for attempt in (1, 2):
            with Qemu(name, elf, romfs=image) as q:
                cmd = ["mpremote", "connect", q.port]
                cmd += ["mount", str(folder)] if mount else []
                cmd += ["run", str(Path(tmp) / script)]
                try:
                    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True,
                                       timeout=timeout)
                except subprocess.TimeoutExpired:
                    if attempt == 2:
                        raise BoardError(f"{name}: {script} did not finish in {timeout:.0f} "
                                         f"s, twice") from None
                    continue
            if r.returncode and "BEGIN" not in r.stdout:
                raise BoardError(f"{name}: mpremote exited with {r.returncode}: "
                                 f"{(r.stderr + r.stdout).strip()[-800:]}")
            return r.stdout
    raise AssertionError("unreachable")
