"""Quantization-aware fine-tuning: train on exactly the grids the exporter chooses.

finetune() turns any model micromlp exports into its float layer list (normalization
folded in, equalized where the exporter would keep it), rebuilds it as an
nn.Sequential over raw inputs, and trains it with fake quantization: at the start of
every epoch the exporter quantizes the current weights (same options) and the forward
pass then rounds the inputs, each layer's weights (per row, on that layer's clipped
grid) and each layer's outputs (on its activation grid) exactly where the board does,
with straight-through gradients. Export the returned model with the same options and
equalize="off", bias_correction="off": its integers are those of the grids it was
trained on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..export.exporter import quantize_layers
from ..export.layers import ExportError, FloatLayer
from ..export.qmodel import QuantModel
from ..export.quantize import QuantOptions, quantize
from ..export.sources import load_source


def to_module(layers: list[FloatLayer]) -> nn.Sequential:
    """A float layer list as nn.Sequential (Linear + its activation), float32."""
    mods: list[nn.Module] = []
    for layer in layers:
        lin = nn.Linear(layer.n_in, layer.n_out, bias=layer.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(layer.weight))
            if layer.bias is not None:
                lin.bias.copy_(torch.tensor(layer.bias))
        mods.append(lin)
        if layer.act == "relu":
            mods.append(nn.ReLU())
        elif layer.act == "leaky":
            mods.append(nn.LeakyReLU(layer.slope))
        elif layer.act == "clamp":
            mods.append(nn.Hardtanh(layer.clamp_lo, layer.clamp_hi))
    return nn.Sequential(*mods)


def from_module(net: nn.Sequential, like: list[FloatLayer]) -> list[FloatLayer]:
    """The module's current weights as a float layer list shaped like `like`."""
    from dataclasses import replace

    lins = [m for m in net if isinstance(m, nn.Linear)]
    return [replace(ly, weight=lin.weight.detach().double().numpy().copy(),
                    bias=None if lin.bias is None else lin.bias.detach().double().numpy().copy())
            for ly, lin in zip(like, lins, strict=True)]


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q forward, x's gradient (the straight-through estimator)."""
    return x + (q - x).detach()


def _round(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)  # round half up, as the board


class _Grids:
    """The exporter's grids for the current weights, as torch tensors."""

    def __init__(self, q: QuantModel) -> None:
        t = lambda v: torch.tensor(np.asarray(v, dtype=np.float64), dtype=torch.float64)  # noqa: E731
        self.in_scale, self.in_zero = t(q.in_scale), t(q.in_zero)
        self.in_lo, self.in_hi = q.in_lo, q.in_hi
        self.layers = [(t(ly.w_scale), float(np.abs(ly.w).max()), float(ly.out_scale),
                        ly.lo, ly.hi) for ly in q.layers]


def _forward(net: nn.Sequential, g: _Grids, x: torch.Tensor) -> torch.Tensor:
    # The board's first layer takes the input integers q: the input table is folded into
    # it (weights W * step, rounded on that layer's grid; bias b - (W * step) . zero,
    # from the unrounded weights, as export/fold.py does); the other layers take the
    # previous layer's grid values.
    h = torch.clamp(_round(x / g.in_scale) + g.in_zero, g.in_lo, g.in_hi).float()
    lins = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    for k, i in enumerate(lins):
        lin = net[i]
        s_w, w_max, s_y, lo, hi = g.layers[k]
        s_w = s_w.float()[:, None]
        w, b = lin.weight, lin.bias
        if k == 0:
            w = w * g.in_scale.float()[None, :]
            shift = -(w @ g.in_zero.float())
            b = shift if b is None else b + shift
        w = _ste(w, torch.clamp(_round(w / s_w), -w_max, w_max) * s_w)
        h = nn.functional.linear(h, w, b)
        end = lins[k + 1] if k + 1 < len(lins) else len(net)
        for m in net[i + 1:end]:  # the layer's activation
            h = m(h)
        h = _ste(h, torch.clamp(_round(h / s_y), lo, hi) * s_y)
    return h


def finetune(model, x, y, calib=None, *, epochs: int = 20, lr: float = 1e-4,
             batch_size: int = 64, opts: QuantOptions | None = None, seed: int = 0,
             mean: np.ndarray | None = None, std: np.ndarray | None = None,
             progress: bool = True, **source_kwargs) -> nn.Sequential:
    """Fine-tune any exportable model with fake quantization; returns an nn.Sequential
    over raw inputs (normalization folded in). y: class indices (cross-entropy) when
    the model has several outputs and y holds integers, else targets (squared error).
    calib defaults to x; mean/std: an input normalization the model expects (else the
    one its checkpoint records). Export the result with the same options,
    equalize="off" (it is already equalized where that helps) and bias_correction="off"
    (a checkpoint from `micromlp train --qat` records this, and export applies it)."""
    opts = opts or QuantOptions()
    src = load_source(model, **source_kwargs)
    x = np.asarray(x, dtype=np.float64)
    calib = x if calib is None else np.asarray(calib, dtype=np.float64)
    y = np.asarray(y)
    if len(y) != len(x):
        raise ExportError(f"{len(y)} targets for {len(x)} samples")
    mean = src.mean if mean is None else np.asarray(mean, dtype=np.float64)
    std = src.std if std is None else np.asarray(std, dtype=np.float64)
    start = quantize_layers(src.layers, calib, opts, mean, std)
    layers = start.meta["float_layers"]  # folded, and equalized if the exporter keeps it
    # the grids of the weights as they are: no equalization (done once, above) and no
    # bias correction (fine-tuning corrects the biases itself)
    fixed = QuantOptions(**{**opts.__dict__, "equalize": "off", "bias_correction": "off"})
    net = to_module(layers)
    classify = layers[-1].n_out > 1 and np.all(y == np.round(y))
    yt = torch.tensor(y, dtype=torch.long if classify else torch.float32)
    if not classify:
        yt = yt.reshape(len(y), -1)
    xt = torch.tensor(x, dtype=torch.float64)
    loss_fn = nn.CrossEntropyLoss() if classify else nn.MSELoss()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="fine-tune (quantization-aware)", unit="epoch",
               disable=None if progress else True, leave=False)
    for _ in bar:
        # the layers are folded already: quantize them as they are (no report needed)
        grids = _Grids(quantize(from_module(net, layers), calib, fixed))
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(0, len(xt), batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad()
            loss = loss_fn(_forward(net, grids, xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(xt):.4f}")
    net.eval()
    return net


__all__ = ["finetune", "to_module", "from_module"]
