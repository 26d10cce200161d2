"""The emulated boards' tools, and the Debian packages that bring the missing ones.

`make test` runs `python -m micromlp.host.boards.tools install`: it asks apt only for
the packages whose tool is missing, so a machine that has a tool from elsewhere (Node and
npm from NodeSource, whose `nodejs` conflicts with Debian's `npm`) is never asked to
replace it. `python -m micromlp.host.boards.tools check` simulates that request
(`apt-get install -s`) as a fresh machine would see it: with the boards' tools hidden.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tool:
    """One thing the boards need: a command on PATH or a file, and the package with it."""

    name: str
    package: str
    command: str | None = None
    path: str | None = None

    def present(self, which: Callable[[str], str | None] = shutil.which) -> bool:
        if self.command is not None:
            return which(self.command) is not None
        return Path(self.path).exists()


TOOLS = (
    Tool("socat (the serial board's pty)", "socat", command="socat"),
    Tool("QEMU for ARM boards", "qemu-system-arm", command="qemu-system-arm"),
    Tool("the micro:bit's MicroPython 1.9.2", "firmware-microbit-micropython",
         path="/usr/share/firmware-microbit-micropython/firmware.hex"),
    Tool("Chromium (the playground and report pages)", "chromium", command="chromium"),
    Tool("the ARM compiler (MCU firmware, native modules)", "gcc-arm-none-eabi",
         command="arm-none-eabi-gcc"),
    Tool("the ARM C library", "libnewlib-arm-none-eabi",
         path="/usr/lib/arm-none-eabi/newlib/libc.a"),
    # the rv32imc build of micromlp_c.mpy, which CI rebuilds to check the committed one
    Tool("the RISC-V compiler (native modules)", "gcc-riscv64-unknown-elf",
         command="riscv64-unknown-elf-gcc"),
)
# Node and npm come as a pair: Debian's `npm` needs Debian's `nodejs`, which conflicts
# with the NodeSource build many machines have. Ask for them only where both are absent.
NODE = (Tool("Node.js", "nodejs", command="node"), Tool("npm", "npm", command="npm"))


def missing_packages(which: Callable[[str], str | None] = shutil.which,
                     tools: tuple[Tool, ...] = TOOLS) -> tuple[list[str], list[str]]:
    """(Debian packages to install, notes on what is missing but not asked for)."""
    packages = [t.package for t in tools if not t.present(which)]
    notes = []
    node, npm = (t.present(which) for t in NODE)
    if not node and not npm:
        packages += [t.package for t in NODE]
    elif not (node and npm):
        have, lack = ("node", "npm") if node else ("npm", "node")
        notes.append(f"{lack} is missing but {have} is not: install {lack} from where "
                     f"{have} came (Debian's nodejs/npm would conflict with it)")
    return packages, notes


def hidden_which(hide: tuple[Tool, ...] = TOOLS) -> Callable[[str], str | None]:
    """shutil.which with the boards' own tools hidden, as a fresh machine sees them."""
    hidden = {t.command for t in hide if t.command}

    def which(cmd: str) -> str | None:
        return None if cmd in hidden else shutil.which(cmd)
    return which


def apt(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], env=env, text=True, capture_output=True)


def simulate(packages: list[str]) -> subprocess.CompletedProcess:
    """`apt-get install -s PACKAGES`: does apt resolve exactly this request?"""
    return apt(["install", "-s", "-y", "--no-install-recommends", *packages])


def install() -> int:
    """Install the missing tools' packages (one apt request, only what is missing)."""
    packages, notes = missing_packages()
    for note in notes:
        print(f"boards: {note}", file=sys.stderr)
    if not packages:
        print("boards: every tool is present")
        return 0
    print(f"boards: apt-get install {' '.join(packages)}")
    for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends",
                                      *packages]):
        r = apt(args)
        if r.returncode:
            print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
            print(f"boards: apt-get {args[0]} failed (exit {r.returncode})", file=sys.stderr)
            return r.returncode
    return 0


def check() -> int:
    """Simulate a fresh machine's request (the boards' tools hidden) with `apt-get -s`."""
    packages, _ = missing_packages(hidden_which())
    r = simulate(packages)
    print(f"boards: apt-get install -s {' '.join(packages)}: exit {r.returncode}")
    if r.returncode:
        print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    commands = {"install": install, "check": check}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m micromlp.host.boards.tools {{{'|'.join(commands)}}}")
    sys.exit(commands[sys.argv[1]]())
