"""The physical reference for `micromlp bench`: the engine's integer arithmetic in C.

The model's integers become C arrays and one plain scalar loop per layer (what a
hand-written C kernel on the same machine does), compiled with the system compiler
(`cc -O2 -fno-tree-vectorize`: one multiply-add at a time, as the Python kernels do).
Its outputs are checked against the host reference before its time counts.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..export.qmodel import ACT_LEAKY, QuantModel, leaky_floor

FLAGS = ["-O2", "-fno-tree-vectorize"]


def compiler() -> str | None:
    """The system C compiler, or None."""
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _ints(name: str, ctype: str, values) -> str:
    body = ",".join(str(int(v)) for v in np.asarray(values).ravel())
    return f"static const {ctype} {name}[] = {{{body}}};\n"


def c_source(model: QuantModel, xs: list[list[int]], runs: int) -> str:
    """A C program that runs the model on the rows xs `runs` times and prints ns per
    inference, then each row's outputs."""
    return ("#include <stdio.h>\n#include <stdint.h>\n#include <time.h>\n"
            + c_model(model, xs) + _main(model, xs, runs))


def c_model(model: QuantModel, xs: list[list[int]]) -> str:
    """The model as C: its arrays, the rows xs (XS), and infer(in), which leaves the
    outputs in x[]."""
    parts = []
    width = max([model.n_inputs] + [ly.n_out for ly in model.layers])
    calls = []
    for i, ly in enumerate(model.layers):
        parts.append(_ints(f"W{i}", "int16_t" if ly.w_bits == 16 else "int8_t", ly.w))
        parts.append(_ints(f"B{i}", "int32_t", ly.b if ly.b is not None else [0] * ly.n_out))
        parts.append(_ints(f"M{i}", "int32_t", ly.mult))
        parts.append(_ints(f"S{i}", "int32_t", ly.shift))
        leaky = ly.act == ACT_LEAKY
        floor = leaky_floor(ly.slope_mult) if leaky else 0
        rnd = (1 << (ly.slope_shift - 1)) if leaky and ly.slope_shift else 0
        calls.append(
            f"  for (int o = 0; o < {ly.n_out}; o++) {{\n"
            f"    const {'int16_t' if ly.w_bits == 16 else 'int8_t'} *w = W{i} + o * {ly.n_in};\n"
            + (f"    int64_t d = 0;\n"  # wide: b + floor(W x / 256)
               f"    for (int j = 0; j < {ly.n_in}; j++) d += (int64_t)w[j] * x[j];\n"
               f"    int32_t a = B{i}[o] + (int32_t)(d >> 8);\n" if ly.wide else
               f"    int32_t a = B{i}[o];\n"
               f"    for (int j = 0; j < {ly.n_in}; j++) a += w[j] * x[j];\n")
            + f"    int64_t s = S{i}[o];\n"
            f"    int64_t v = ((int64_t)a * M{i}[o] + (s ? (1LL << (s - 1)) : 0)) >> s;\n"
            + (f"    if (v < 0) {{ if (v < {floor}) v = {floor}; "
               f"v = (v * {ly.slope_mult} + {rnd}) >> {ly.slope_shift}; }}\n" if leaky else "")
            + f"    y[o] = v < {ly.lo} ? {ly.lo} : (v > {ly.hi} ? {ly.hi} : (int32_t)v);\n"
            f"  }}\n"
            f"  for (int o = 0; o < {ly.n_out}; o++) x[o] = y[o];\n")
    parts.append(_ints("XS", "int32_t", xs))
    parts.append(
        f"int32_t x[{width}], y[{width}];  /* not static: a native module's bss */\n"
        f"static void infer(const int32_t *in) {{\n"
        f"  for (int j = 0; j < {model.n_inputs}; j++) x[j] = in[j];\n"
        + "".join(calls) + "}\n")
    return "".join(parts)


def _main(model: QuantModel, xs: list[list[int]], runs: int) -> str:
    return (
        f"int main(void) {{\n"
        f"  struct timespec t0, t1;\n"
        f"  volatile int32_t sink = 0;\n"
        f"  clock_gettime(CLOCK_MONOTONIC, &t0);\n"
        f"  for (long r = 0; r < {runs}; r++) {{ infer(XS + (r % {len(xs)}) * {model.n_inputs}); "
        f"sink += x[0]; }}\n"
        f"  clock_gettime(CLOCK_MONOTONIC, &t1);\n"
        f"  printf(\"NS %f\\n\", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) "
        f"/ {runs});\n"
        f"  for (int r = 0; r < {len(xs)}; r++) {{\n"
        f"    infer(XS + r * {model.n_inputs});\n"
        f"    for (int o = 0; o < {model.n_outputs}; o++) printf(\"%d \", (int)x[o]);\n"
        f"    printf(\"\\n\");\n  }}\n  return 0;\n}}\n")


def c_times(model: QuantModel, xs: list[list[int]], rounds: int = 7,
            runs: int | None = None) -> list[float] | None:
    """µs per inference of the C kernel, one figure per round (None without a compiler).
    Raises if its outputs differ from the host reference's."""
    from . import reference

    cc = compiler()
    if cc is None:
        return None
    macs = sum(ly.n_in * ly.n_out for ly in model.layers)
    runs = runs or max(1000, 200_000_000 // max(1, macs) // 10)
    with tempfile.TemporaryDirectory(prefix="micromlp-c-") as tmp:
        src, exe = Path(tmp) / "k.c", Path(tmp) / "k"
        src.write_text(c_source(model, xs, runs))
        subprocess.run([cc, *FLAGS, str(src), "-o", str(exe)], check=True, capture_output=True)
        times = []
        for _ in range(rounds):
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
            lines = out.splitlines()
            times.append(float(lines[0].split()[1]) / 1000)
        got = np.array([[int(v) for v in ln.split()] for ln in lines[1:]])
    want = reference.run(model, np.array(xs)).out
    if not np.array_equal(got, want):
        raise RuntimeError("the C kernel's outputs differ from the host reference's")
    return times


__all__ = ["FLAGS", "c_model", "c_source", "c_times", "compiler"]
