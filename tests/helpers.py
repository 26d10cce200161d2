"""Shared builders for the tests: random MLPs, their exports, and VM runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from micromlp.export import modelfile
from micromlp.export.exporter import quantize_layers
from micromlp.export.qmodel import QuantModel
from micromlp.export.quantize import QuantOptions
from micromlp.export.torch_import import layers_from_module
from torch import nn


def make_mlp(sizes: list[int], bias: list[bool] | bool = True, seed: int = 0,
             act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Random nn.Sequential(Linear, act, ..., Linear) with per-layer bias choice."""
    torch.manual_seed(seed)
    n = len(sizes) - 1
    bias = [bias] * n if isinstance(bias, bool) else bias
    mods: list[nn.Module] = []
    for i in range(n):
        lin = nn.Linear(sizes[i], sizes[i + 1], bias=bias[i])
        if bias[i]:
            nn.init.uniform_(lin.bias, -0.5, 0.5)
        mods.append(lin)
        if i < n - 1:
            mods.append(act())
    return nn.Sequential(*mods).eval()


def calib_data(n_in: int, n: int = 256, seed: int = 1, kind: str = "float") -> np.ndarray:
    """Calibration/test inputs: standard normal floats, or integers 0..16 like digits."""
    rng = np.random.default_rng(seed)
    if kind == "int":
        return rng.integers(0, 17, size=(n, n_in)).astype(np.float64)
    return rng.normal(size=(n, n_in))


def export(
    module: nn.Sequential, x: np.ndarray, path: Path, opts: QuantOptions | None = None
) -> QuantModel:
    """Quantize module with calibration x and write it to path; returns the model."""
    model = quantize_layers(layers_from_module(module), x, opts)
    modelfile.save(model, path)
    return model


def torch_out(module: nn.Sequential, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.tensor(x, dtype=torch.float32)).double().numpy()


# For a script on the unix port: pre() and post(name, f0) around code that must take no
# heap block at all. With gc.threshold(1) any allocation runs a collection, which frees
# the garbage made in pre(), so mem_free grows: even a block freed at once (a bytecode
# frame) shows. Compute names before pre(): building one between them allocates.
HEAP_BLOCK_CHECK = """
import gc
def garbage():
    for i in range(50):
        [i] * 10
def pre():
    gc.collect()
    garbage()
    gc.threshold(1)
    return gc.mem_free()
def post(name, f0):
    f1 = gc.mem_free()
    gc.threshold(-1)
    print(name, 'COLLECTED' if f1 > f0 else 'ok')
"""
