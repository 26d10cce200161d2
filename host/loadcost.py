"""What loading a model costs on the board, now that every loader checks the file.

The loaders recompute the 2**30 proof from the weights (a pass over every weight),
check each field, and the tiny engine compiles its loader scripts on the board. This
measures a load against one inference of the same model: microseconds on the unix port
(median of interleaved rounds) and deterministic fuel on the 32-bit WASI port.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..export import modelfile
from . import vms

# (name, engine, load() options)
CONFIGS = (
    ("full, viper", "full", "kernel='viper'"),
    ("full, portable", "full", "kernel='portable'"),
    ("full, streaming", "full", "kernel='portable', stream=True"),
    ("tiny", "tiny", ""),
)

_UNIX = """
import sys, time
sys.path.insert(0, {dir!r})
from array import array
import micromlp
x = array('i', bytes(4 * {n_in}))
def t_load(n):
    t = time.ticks_us()
    for i in range(n):
        net = micromlp.load('model.mlp'{opts})
    return time.ticks_diff(time.ticks_us(), t) / n, net
def t_run(net, n):
    out = [0] * net.n_outputs
    t = time.ticks_us()
    for i in range(n):
        net.run(x, out)
    return time.ticks_diff(time.ticks_us(), t) / n
for r in range({rounds}):
    lt, net = t_load(5)
    print('T', lt, t_run(net, 50))
"""

_FUEL = """
import sys
sys.path.insert(0, '/input')
from array import array
import micromlp
x = array('i', bytes(4 * {n_in}))
for i in range({loads}):
    net = micromlp.load('/input/model.mlp'{opts})
out = [0] * {n_out}
for i in range({runs}):
    net.run(x, out)
"""


@dataclass
class LoadCost:
    """One engine configuration: a load against one inference."""

    name: str
    load_us: float  # unix port, median
    run_us: float
    load_fuel: float  # WASI: the first load
    again_fuel: float  # WASI: each load after the first (the tiny engine's code is kept)
    run_fuel: float

    @property
    def loads_in_runs(self) -> float:
        return self.load_fuel / self.run_fuel


def _stage(model_path: Path, tmp: Path, engine: str, mpy: bool = False) -> None:
    import shutil

    vms.stage_firmware(tmp, mpy=mpy, tiny=engine == "tiny")
    shutil.copy(model_path, tmp / "model.mlp")


def _fuel(model_path: Path, engine: str, opts: str, n_in: int, n_out: int) -> tuple:
    with tempfile.TemporaryDirectory(prefix="micromlp-load-") as tmp:
        tmp = Path(tmp)
        _stage(model_path, tmp, engine)
        fuel = {}
        for key, loads, runs in (("base", 0, 0), ("one", 1, 0), ("two", 2, 0), ("run", 1, 4)):
            code = _FUEL.format(n_in=n_in, n_out=n_out, loads=loads, runs=runs,
                                opts=", " + opts if opts else "")
            # 8 MB: no collection in these few loads (see wasi.py), and gc.mem_free (both
            # engines ask it) scans the whole heap: a huge one would dominate
            fuel[key] = vms.wasm_run(code, readonly_dir=tmp, heapsize="8M").fuel_used
    return (fuel["one"] - fuel["base"], fuel["two"] - fuel["one"],
            (fuel["run"] - fuel["one"]) / 4)


def _unix(model_path: Path, engine: str, opts: str, n_in: int, rounds: int) -> tuple:
    with tempfile.TemporaryDirectory(prefix="micromlp-load-") as tmp:
        tmp = Path(tmp)
        _stage(model_path, tmp, engine, mpy=engine == "full")
        (tmp / "d.py").write_text(_UNIX.format(dir=str(tmp), n_in=n_in, rounds=rounds,
                                               opts=", " + opts if opts else ""))
        p = subprocess.run([vms.unix_exe(), "d.py"], cwd=tmp, capture_output=True, text=True,
                           timeout=600)
        rows = [line.split()[1:] for line in p.stdout.splitlines() if line.startswith("T ")]
        if not rows:
            raise vms.VMError(f"unix: the load timing failed: {p.stderr.strip()[-300:]}")
    return (statistics.median(float(r[0]) for r in rows),
            statistics.median(float(r[1]) for r in rows))


def load_costs(model_path: str | Path, rounds: int = 7) -> list[LoadCost]:
    """Every configuration's load and inference cost for one model."""
    model_path = Path(model_path)
    m = modelfile.load(model_path)
    out = []
    for name, engine, opts in CONFIGS:
        if engine == "tiny" and any(layer.w_bits != 8 for layer in m.layers):
            continue
        load_us, run_us = _unix(model_path, engine, opts, m.n_inputs, rounds)
        if "viper" in opts:  # no viper on WASI: the fuel columns are the portable kernel's
            opts = "kernel='portable'"
        one, again, run = _fuel(model_path, engine, opts, m.n_inputs, m.n_outputs)
        out.append(LoadCost(name, load_us, run_us, one, again, run))
    return out


def format_costs(costs: list[LoadCost], weights: int) -> str:
    """A markdown table of load_costs."""
    lines = [
        "| engine | load (µs, unix) | inference (µs, unix) | load fuel (WASI) | again | "
        "inference fuel | a load is | load fuel per weight |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        lines.append(
            f"| {c.name} | {c.load_us:,.0f} | {c.run_us:,.1f} | {c.load_fuel:,.0f} | "
            f"{c.again_fuel:,.0f} | {c.run_fuel:,.0f} | {c.loads_in_runs:,.1f} inferences | "
            f"{c.load_fuel / weights:,.0f} |")
    return "\n".join(lines)
