"""Emulated boards: the unix-port MicroPython behind a pty, and a micro:bit in QEMU.

What `micromlp board --emulate serial|microbit` starts, for trying `deploy` and `bench`
without hardware; the tests use the same code. See ../shared/guide/targets.md.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import vms

KINDS = ("serial", "microbit") + vms.MCU_VMS


class BoardError(RuntimeError):
    """An emulator is missing or did not start; the message says which and how to get it."""


@dataclass
class EmulatedBoard:
    """A running emulator: the port to pass to deploy/bench, and where its files land."""

    kind: str
    port: str
    proc: subprocess.Popen
    files: Path | None = None  # the serial board's working folder (None: on the micro:bit)
    _tmp: tempfile.TemporaryDirectory | None = None

    def describe(self) -> str:
        if self.kind == "serial":
            what = (f"a serial board (the MicroPython unix port behind socat) on {self.port}; "
                    f"files copied to it land in {self.files}. It exits on a soft reset, "
                    f"so pass --resume to deploy")
        elif self.kind == "microbit":
            what = (f"a BBC micro:bit v1 (MicroPython 1.9.2, ~9 KB of heap) in QEMU on "
                    f"{self.port}; files live until it stops")
        else:
            from .mcu import VERSION, board

            b = board(self.kind)
            return (f"a {b.cpu} board ({b.board}: MicroPython {VERSION} built from source) "
                    f"in QEMU on {self.port}, counting instructions (-icount shift=0: "
                    f"time.ticks_us() is thousands of instructions). It has no writable "
                    f"filesystem: serve a folder with mpremote mount.\nUse it with: "
                    f"mpremote connect {self.port} mount DIR exec \"import micromlp\"")
        resume = " --resume" if self.kind == "serial" else ""
        return f"{what}.\nUse it with: micromlp deploy OUT --port {self.port}{resume}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def emulate(kind: str, files: str | Path | None = None,
            firmware: str | Path | None = None) -> EmulatedBoard:
    """Start an emulated board: "serial" (files land in `files`, a new temporary folder
    by default), "microbit", or an MCU board from MicroPython's source (cortex-m3,
    cortex-m7, cortex-m55, cortex-m0; `firmware`: an ELF to boot instead of the plain
    build)."""
    if kind == "microbit":
        proc, port = start_qemu_microbit()
        return EmulatedBoard(kind, port, proc)
    if kind in KINDS[2:]:
        from .mcu import Qemu

        q = Qemu(kind, None if firmware is None else Path(firmware))
        return EmulatedBoard(kind, q.port, q.proc)
    if kind != "serial":
        raise BoardError(f"unknown board {kind!r}: choose {' or '.join(KINDS)}")
    tmp = tempfile.TemporaryDirectory(prefix="micromlp-board-")
    folder = Path(files) if files else Path(tmp.name) / "board"
    folder.mkdir(parents=True, exist_ok=True)
    link = Path(tmp.name) / "ttyV0"
    proc = start_socat_board(folder, link)
    return EmulatedBoard(kind, str(link), proc, folder, tmp)


def start_socat_board(workdir: Path, link: Path) -> subprocess.Popen:
    """The unix-port MicroPython behind a pty at `link` (an emulated serial board); files
    copied to it land in workdir."""
    import shutil
    import time

    socat = shutil.which("socat")
    if socat is None:
        raise BoardError("socat is not installed (apt-get install socat)")
    try:
        exe = vms.unix_exe()
    except vms.VMError as e:
        raise BoardError(str(e)) from None
    import os

    # its home is its own folder too: `mip install` puts packages in ~/.micropython/lib
    env = dict(os.environ, HOME=str(workdir))
    proc = subprocess.Popen(
        [socat, f"PTY,link={link},raw,echo=0", f"EXEC:{exe},pty,raw,echo=0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(100):
        if link.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise BoardError(f"socat did not create {link}")


QEMU_FIRMWARE = Path("/usr/share/firmware-microbit-micropython/firmware.hex")


def start_qemu_microbit() -> tuple[subprocess.Popen, str]:
    """A BBC micro:bit v1 (MicroPython 1.9.2) in QEMU on a pty: (process, port)."""
    import re
    import shutil
    import time

    qemu = shutil.which("qemu-system-arm")
    if qemu is None or not QEMU_FIRMWARE.exists():
        raise BoardError(
            "qemu-system-arm and firmware-microbit-micropython are needed "
            "(apt-get install qemu-system-arm firmware-microbit-micropython)"
        )
    proc = subprocess.Popen(
        [
            qemu,
            "-M",
            "microbit",
            "-device",
            f"loader,file={QEMU_FIRMWARE}",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "pty",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 20
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"(/dev/pts/\d+)", line)
        if m:
            time.sleep(1.0)  # let the firmware boot to its REPL
            return proc, m.group(1)
    proc.kill()
    raise BoardError(f"QEMU did not report its serial pty: {line.strip()}")
