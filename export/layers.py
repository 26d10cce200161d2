"""The checked layer list: the exporter's float view of an MLP.

Every source (a PyTorch module, a state dict with its architecture, later ONNX)
is reduced to a list of FloatLayer before anything is quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED = (
    "Linear (with or without bias), ReLU, ReLU6, Hardtanh, LeakyReLU, BatchNorm1d after a "
    "Linear, "
    "Identity, Dropout, Flatten, and a trailing Softmax/LogSoftmax/Sigmoid (dropped: the "
    "class is the same)"
)


class ExportError(ValueError):
    """A model the exporter cannot take; the message says which layer and why."""


@dataclass
class FloatLayer:
    """y = act(W x + b) in float64; b is None for a Linear built with bias=False."""

    weight: np.ndarray  # [n_out, n_in]
    bias: np.ndarray | None  # [n_out] or None
    act: str = "none"  # "none", "relu", or "clamp" (to [clamp_lo, clamp_hi]: ReLU6, Hardtanh)
    name: str = ""
    bias_note: str = ""  # why a layer without bias in the source got one (folding)
    clamp_lo: float = 0.0
    clamp_hi: float = 0.0
    slope: float = 0.0  # LeakyReLU's negative slope

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        if self.act == "relu":
            return np.maximum(y, 0.0)
        if self.act == "clamp":
            return np.clip(y, self.clamp_lo, self.clamp_hi)
        if self.act == "leaky":
            return np.where(y < 0, self.slope * y, y)
        return y

    def then(self, act: str, lo: float = 0.0, hi: float = 0.0) -> None:
        """Apply an activation after this layer's current one (they compose as clamps)."""
        if act == "leaky" or self.act == "leaky":
            if self.act != "none" or not 0 < lo < 1:
                raise ExportError(f"{self.name or 'Linear'}: LeakyReLU is supported right after "
                                  f"a Linear, with a slope between 0 and 1 (got {lo})")
            self.act, self.slope = "leaky", float(lo)
            return
        if act == "relu":
            act, lo, hi = "clamp", 0.0, np.inf
        if self.act == "none":
            cur_lo, cur_hi = -np.inf, np.inf
        elif self.act == "relu":
            cur_lo, cur_hi = 0.0, np.inf
        else:
            cur_lo, cur_hi = self.clamp_lo, self.clamp_hi
        new_lo, new_hi = max(cur_lo, lo), min(cur_hi, max(hi, lo))
        if new_lo == 0.0 and new_hi == np.inf:
            self.act = "relu"
        else:
            self.act, self.clamp_lo, self.clamp_hi = "clamp", float(new_lo), float(new_hi)


def forward(layers: list[FloatLayer], x: np.ndarray) -> np.ndarray:
    """Float64 forward pass of a layer list."""
    for layer in layers:
        x = layer.forward(x)
    return x


def check(layers: list[FloatLayer]) -> list[FloatLayer]:
    """Check shapes chain and values are finite; returns the list unchanged."""
    if not layers:
        raise ExportError("the model has no Linear layer")
    for i, layer in enumerate(layers):
        where = f"layer {i} ({layer.name or 'Linear'})"
        if layer.weight.ndim != 2:
            raise ExportError(f"{where}: weight has shape {layer.weight.shape}, expected 2-D")
        if layer.bias is not None and layer.bias.shape != (layer.n_out,):
            raise ExportError(
                f"{where}: bias has shape {layer.bias.shape}, expected ({layer.n_out},)"
            )
        if not np.all(np.isfinite(layer.weight)) or (
            layer.bias is not None and not np.all(np.isfinite(layer.bias))
        ):
            raise ExportError(f"{where}: weights contain NaN or infinity")
        if i and layers[i - 1].n_out != layer.n_in:
            raise ExportError(
                f"{where}: takes {layer.n_in} inputs but the layer before gives "
                f"{layers[i - 1].n_out}"
            )
        if layer.n_in > 65535 or layer.n_out > 65535:
            raise ExportError(f"{where}: widths above 65535 do not fit the model file")
    return layers


def one_line(e: BaseException) -> str:
    """A library's multi-line message (torch, onnx), condensed to its first line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
