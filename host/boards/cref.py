"""The C reference on an MCU board: the engine's integer arithmetic in C (host/ckernel.py's
loops, the model's integers as C arrays), compiled for the board's core as a MicroPython
dynamic native module (`py/dynruntime.mk`, `-Os` as MicroPython builds them) and run on
the board, its outputs checked against the host reference before its cost counts.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import mcu

_GLUE = """
#define NIN {n_in}
#define NOUT {n_out}
static mp_obj_t run(mp_obj_t n_obj) {{
    mp_int_t n = mp_obj_get_int(n_obj);
    int32_t sink = 0;
    for (mp_int_t r = 0; r < n; r++) {{
        infer(XS);
        sink += x[0];
    }}
    return mp_obj_new_int(sink);
}}
static MP_DEFINE_CONST_FUN_OBJ_1(run_obj, run);

static mp_obj_t outputs(void) {{
    mp_obj_t items[NOUT];
    infer(XS);
    for (int o = 0; o < NOUT; o++) {{
        items[o] = mp_obj_new_int(x[o]);
    }}
    return mp_obj_new_list(NOUT, items);
}}
static MP_DEFINE_CONST_FUN_OBJ_0(outputs_obj, outputs);

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {{
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_run, MP_OBJ_FROM_PTR(&run_obj));
    mp_store_global(MP_QSTR_outputs, MP_OBJ_FROM_PTR(&outputs_obj));
    MP_DYNRUNTIME_INIT_EXIT
}}
"""

_MAKEFILE = """MPY_DIR = {mpy_dir}
MOD = cref
SRC = cref.c
ARCH = {arch}
LINK_RUNTIME = 1
include $(MPY_DIR)/py/dynruntime.mk
# a copy loop must stay a loop: a native module has no memcpy to call
CFLAGS += -fno-tree-loop-distribute-patterns
"""

_SCRIPT = """
import time, cref
print('OUT', ' '.join([str(v) for v in cref.outputs()]))
n = 1
while True:
    t = time.ticks_us()
    cref.run(n)
    dt = time.ticks_diff(time.ticks_us(), t)
    if dt >= {min_us}:
        break
    n *= 4
print('TIME', n, dt)
"""


def build(board: mcu.McuBoard, model, row: list[int], out: Path) -> Path:
    """cref.mpy for the board's core: the model run on one input row."""
    from ..ckernel import c_model

    out.mkdir(parents=True, exist_ok=True)
    src = '#include "py/dynruntime.h"\n' + c_model(model, [row]) + _GLUE.format(
        n_in=model.n_inputs, n_out=model.n_outputs)
    (out / "cref.c").write_text(src)
    (out / "Makefile").write_text(_MAKEFILE.format(mpy_dir=mcu.source_tree(),
                                                   arch=board.march))
    r = subprocess.run(["make"], cwd=out, capture_output=True, text=True)
    if r.returncode:
        raise mcu.BoardError(f"building the C reference for {board.name} ({board.march}) "
                             f"failed:\n{(r.stdout + r.stderr)[-1200:]}")
    return out / "cref.mpy"


def instructions(board_name: str, model, row: list[int]) -> tuple[float, str]:
    """(instructions per inference of the C reference on the board, a note saying what
    it is). Raises BoardError when it cannot be built or its outputs are wrong."""
    from .. import reference
    from .mcubench import INSTRUCTIONS_PER_US, MIN_US

    board = mcu.board(board_name)
    want = " ".join(str(v) for v in reference.run(model, np.array([row])).out[0])
    with tempfile.TemporaryDirectory(prefix="micromlp-cref-") as tmp:
        folder = Path(tmp) / "board"
        folder.mkdir()
        mpy = build(board, model, row, Path(tmp) / "build")
        mpy.rename(folder / "cref.mpy")
        (folder / "bench.py").write_text(_SCRIPT.format(min_us=MIN_US))
        lines = mcu.run(board.name, folder, "bench.py").splitlines()
    got = [ln[4:] for ln in lines if ln.startswith("OUT ")]
    times = [ln.split() for ln in lines if ln.startswith("TIME ")]
    if got != [want] or not times:
        raise mcu.BoardError(f"the C reference on {board.name} gave {got or lines[-3:]}, the "
                             f"host reference {want}")
    _, n, us = times[0]
    note = (f"C reference: the same integer arithmetic, scalar (host/ckernel.py's loops), "
            f"arm-none-eabi-gcc -Os for {board.march} as a native module, outputs checked "
            f"against the host reference")
    return int(us) * INSTRUCTIONS_PER_US / int(n), note
