"""Frozen firmware, the way products ship: the engine (and a model) compiled into the
firmware image, where its bytecode and the model's bytes stay in flash.

`micromlp firmware --board cortex-m3 [--model model.mlp] -o DIR` writes DIR/manifest.py
(with the engine and model_mlp.py beside it, so the folder is self-contained) and builds
MicroPython for an emulated board with it (DIR/firmware.elf). The same manifest serves a
real board's own build: `make BOARD=... FROZEN_MANIFEST=DIR/manifest.py`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import mcu

MANIFEST = '''# micromlp frozen into MicroPython (written by `micromlp firmware`).
# For a real board, keep the port's own frozen modules by uncommenting the include, then
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST={here}/manifest.py
# (rp2: ports/rp2 BOARD=RPI_PICO, stm32: ports/stm32 BOARD=..., likewise).
# include("$(PORT_DIR)/boards/manifest.py")
freeze("engine", ({engine}))
{model}'''


@dataclass
class FirmwareBuild:
    """What `micromlp firmware` made."""

    board: str
    manifest: Path
    firmware: Path
    frozen: list[str]  # the frozen modules' names


def write_manifest(out: Path, viper: bool, model: Path | None = None) -> tuple[Path, list[str]]:
    """out/manifest.py, with out/engine/ and out/model_mlp.py beside it."""
    from ...export import modelfile
    from ...export.pymodule import module_source
    from .. import vms

    out.mkdir(parents=True, exist_ok=True)
    engine = out / "engine"
    shutil.rmtree(engine, ignore_errors=True)
    engine.mkdir()
    # the full engine, viper where the core has it (the tiny engine is for ~10 KB heaps
    # that compile from source; frozen, the full engine costs less RAM than it)
    files = vms.firmware_files(viper=viper)
    for f in files:
        shutil.copy(f, engine / f.name)
    frozen = [f.stem for f in files]
    model_line = ""
    if model is not None:
        data = Path(model).read_bytes()
        modelfile.from_bytes(data)  # checked before it goes into a firmware
        # with the layers' parameter arrays for viper to read from flash (Q32), where
        # the core has viper (without, they would only take flash)
        (out / "model_mlp.py").write_text(module_source(data, flash_q=viper))
        model_line = 'module("model_mlp.py")  # import model_mlp; micromlp.load(model_mlp)\n'
        frozen.append("model_mlp")
    names = ", ".join(repr(f.name) for f in files)
    (out / "manifest.py").write_text(MANIFEST.format(here=out.resolve(), engine=names,
                                                     model=model_line))
    return out / "manifest.py", frozen


def build(board: str, out: str | Path, model: str | Path | None = None) -> FirmwareBuild:
    """Write the manifest into out and build board's firmware with it (out/firmware.elf)."""
    b = mcu.board(board)
    out = Path(out)
    manifest, frozen = write_manifest(out, b.viper, None if model is None else Path(model))
    elf = mcu.firmware(board, manifest)
    shutil.copy(elf, out / "firmware.elf")
    return FirmwareBuild(board, manifest, out / "firmware.elf", frozen)
