"""micromlp_c.mpy: the engine's kernels in C (firmware/native/micromlp_c.c) as a MicroPython
dynamic native module, one per architecture, built with MicroPython's own rules
(`py/dynruntime.mk`, `tools/mpy_ld.py`) from the v1.28.0 source host/boards/mcu.py
fetches. The builds ship in firmware/native/<arch>/ (`make native` rebuilds them);
`python -m micromlp.host.boards.native check` rebuilds each one whose compiler is here
and fails if it differs from the committed file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .emulate import BoardError

# sys.implementation._mpy >> 10: MicroPython's MP_NATIVE_ARCH_* (py/persistentcode.h)
MPY_ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
             "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")
# the Thumb architectures, each able to load a module built for any one before it
_THUMB = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")


@dataclass(frozen=True)
class Arch:
    name: str  # dynruntime.mk's ARCH
    compiler: str  # the C compiler the build runs
    apt: str  # the Debian package with it
    boards: str  # which boards load it (README, CLI)


ARCHS = {a.name: a for a in (
    Arch("x64", "gcc", "gcc", "the unix port on x86-64 (PCs, CI)"),
    Arch("armv6m", "arm-none-eabi-gcc", "gcc-arm-none-eabi",
         "Cortex-M0/M0+: RP2040 (Pico), SAMD21; any Cortex-M also loads it"),
    Arch("armv7m", "arm-none-eabi-gcc", "gcc-arm-none-eabi", "Cortex-M3"),
    Arch("armv7emsp", "arm-none-eabi-gcc", "gcc-arm-none-eabi",
         "Cortex-M4F/M7 with single-precision float: STM32F4, nRF52, RP2350 (ARM cores)"),
    Arch("armv7emdp", "arm-none-eabi-gcc", "gcc-arm-none-eabi",
         "Cortex-M7 with double-precision float: STM32F7/H7, Teensy 4, i.MX RT"),
    Arch("rv32imc", "riscv64-unknown-elf-gcc", "gcc-riscv64-unknown-elf",
         "ESP32-C3/C6, RP2350's RISC-V cores (built here, not run: no RISC-V board builds)"),
)}
# Not built, and why (README, `micromlp firmware --help`)
NOT_BUILT = {
    "xtensa": "ESP8266: Debian's gcc-xtensa-lx106 12.2 compiles the module, but "
              "MicroPython 1.28's mpy_ld cannot link its objects (an offset into the qstr "
              "table; MicroPython's own examples/natmod/features1 fails the same way)",
    "xtensawin": "ESP32 (Xtensa): needs Espressif's xtensa-esp32-elf toolchain, which "
                 "Debian does not package",
}
SOURCE_FILES = ("micromlp_c.c", "Makefile", "freestanding/assert.h",
                "freestanding/errno.h", "freestanding/string.h")
MODULE = "micromlp_c.mpy"


def native_dir() -> Path:
    """firmware/native/ as installed: the C source and the per-arch builds."""
    from ..vms import engine_source

    return engine_source().with_name("native")


def module_path(arch: str) -> Path:
    """The shipped micromlp_c.mpy for arch."""
    return native_dir() / arch / MODULE


def arch_of(mpy: int | None) -> str | None:
    """The native architecture a port reports in sys.implementation._mpy (None: none)."""
    if mpy is None:
        return None
    i = mpy >> 10
    return MPY_ARCHS[i] if i < len(MPY_ARCHS) else None


def module_for(port_arch: str | None) -> str | None:
    """The shipped build a port of this architecture loads: its own, or on Thumb the
    newest one before it (an armv7emsp port takes the armv7emsp build, a Cortex-M33's
    armv7emsp... an armv7m port the armv7m one); None where none fits."""
    if port_arch in ARCHS and module_path(port_arch).exists():
        return port_arch
    if port_arch in _THUMB:
        for a in reversed(_THUMB[: _THUMB.index(port_arch) + 1]):
            if a in ARCHS and module_path(a).exists():
                return a
    return None


def missing_compiler(arch: str) -> str | None:
    """Why arch cannot be built here (its compiler is missing), or None."""
    a = ARCHS[arch]
    if shutil.which(a.compiler) is None:
        return f"{a.compiler} is missing (apt-get install {a.apt})"
    return None


def build(arch: str, out: Path) -> Path:
    """Build micromlp_c.mpy for arch from the project's C source into the folder out."""
    from . import mcu

    if arch not in ARCHS:
        why = NOT_BUILT.get(arch, f"choose from {', '.join(ARCHS)}")
        raise BoardError(f"micromlp_c for {arch!r} is not built: {why}")
    why = missing_compiler(arch)
    if why:
        raise BoardError(f"building micromlp_c for {arch}: {why}")
    tree = mcu.source_tree()
    with tempfile.TemporaryDirectory(prefix=f"micromlp-native-{arch}-") as tmp:
        work = Path(tmp)
        for name in SOURCE_FILES:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(native_dir() / name, work / name)
        r = subprocess.run(["make", f"ARCH={arch}", f"MPY_DIR={tree}", f"PYTHON={sys.executable}"],
                           cwd=work, capture_output=True, text=True)
        if r.returncode:
            raise BoardError(f"building micromlp_c for {arch} failed:\n"
                             f"{(r.stdout + r.stderr)[-1500:]}")
        out.mkdir(parents=True, exist_ok=True)
        data = (work / MODULE).read_bytes()
        (out / MODULE).write_bytes(data + trailer(len(data)))
    return out / MODULE


def trailer(size: int) -> bytes:
    """What build() appends to a module of size bytes: b'MLPC' and the whole file's
    length. MicroPython ignores bytes after a module, but its reader loops forever on a
    truncated .mpy: the engine checks this trailer before importing (micromlp_net)."""
    return b"MLPC" + struct.pack("<I", size + 8)


def package_json(arch: str) -> str:
    """mip's package for one architecture (firmware/native/<arch>/package.json)."""
    return json.dumps({"urls": [[MODULE, MODULE]], "deps": [], "version": _version()},
                      indent=2) + "\n"


def _version() -> str:
    from ..vms import engine_source

    for line in engine_source().read_text().splitlines():
        if line.startswith("VERSION = "):
            return line.split('"')[1]
    raise BoardError("firmware/micromlp.py has no VERSION line")


def build_all(dest: Path | None = None, log=print) -> list[str]:
    """Build every architecture whose compiler is here into dest/<arch>/ (default:
    firmware/native/) with its mip package.json; returns the ones skipped and why."""
    dest = dest or native_dir()
    skipped = []
    for arch in ARCHS:
        why = missing_compiler(arch)
        if why:
            skipped.append(f"{arch}: {why}")
            continue
        path = build(arch, dest / arch)
        (dest / arch / "package.json").write_text(package_json(arch))
        log(f"native: {arch}: {path} ({path.stat().st_size} bytes)")
    for arch, why in NOT_BUILT.items():
        skipped.append(f"{arch}: {why}")
    return skipped


def check(log=print) -> list[str]:
    """Rebuild each architecture whose compiler is here and compare with the shipped
    file; returns the problems (a build that differs, a missing file or compiler)."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="micromlp-native-check-") as tmp:
        for arch in ARCHS:
            shipped = module_path(arch)
            if not shipped.exists():
                problems.append(f"{arch}: {shipped} is missing (make native)")
                continue
            if (shipped.parent / "package.json").read_text() != package_json(arch):
                problems.append(f"{arch}: package.json differs from what make native writes")
            why = missing_compiler(arch)
            if why:
                problems.append(f"{arch}: not rebuilt: {why}")
                continue
            fresh = build(arch, Path(tmp) / arch).read_bytes()
            same = fresh == shipped.read_bytes()
            log(f"native: {arch}: {'same as' if same else 'DIFFERS from'} {shipped}")
            if not same:
                problems.append(f"{arch}: a rebuild from micromlp_c.c differs from {shipped} "
                                f"({len(fresh)} vs {shipped.stat().st_size} bytes): run "
                                f"make native and commit the result")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m micromlp.host.boards.native",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["build", "check"],
                   help="build: into firmware/native/<arch>/; check: rebuild and compare")
    args = p.parse_args(argv)
    try:
        if args.what == "build":
            for line in build_all():
                print(f"native: skipped {line}")
            return 0
        problems = check()
    except BoardError as e:
        print(f"native: {e}", file=sys.stderr)
        return 1
    for line in problems:
        print(f"native: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
