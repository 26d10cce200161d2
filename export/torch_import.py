"""PyTorch → checked layer list, and the checkpoint format `micromlp train` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .layers import SUPPORTED, ExportError, FloatLayer, check

CHECKPOINT_FORMAT = "micromlp-checkpoint-1"
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


def _walk(module: nn.Module, prefix: str = ""):
    """Yield (name, leaf module) in forward order through nested Sequentials."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _walk(child, full + ".")
        else:
            yield full, child


def layers_from_module(module: nn.Module) -> list[FloatLayer]:
    """Reduce an nn.Sequential of Linear/ReLU to FloatLayers; refuse anything else by name."""
    if isinstance(module, nn.Linear):
        module = nn.Sequential(module)
    if not isinstance(module, nn.Sequential):
        raise ExportError(f"expected an nn.Sequential of {SUPPORTED}, got {type(module).__name__}")
    layers: list[FloatLayer] = []
    for index, (name, leaf) in enumerate(_walk(module)):
        kind = type(leaf).__name__
        where = f"layer {index} '{name}' ({kind})"
        if isinstance(leaf, nn.Linear):
            w = leaf.weight.detach().double().numpy().copy()
            b = None if leaf.bias is None else leaf.bias.detach().double().numpy().copy()
            layers.append(FloatLayer(w, b, "none", name))
        elif isinstance(leaf, nn.ReLU):
            if not layers:
                raise ExportError(f"{where}: ReLU before the first Linear is not supported")
            layers[-1].act = "relu"  # ReLU twice is ReLU
        elif isinstance(leaf, _PASS_THROUGH):
            if isinstance(leaf, nn.Flatten) and layers:
                raise ExportError(f"{where}: Flatten after a Linear is not supported")
        else:
            raise ExportError(f"{where} is not supported; supported layers: {SUPPORTED}")
    return check(layers)


def build_sequential(arch: list[dict]) -> nn.Sequential:
    """nn.Sequential from the architecture list a checkpoint stores."""
    mods: list[nn.Module] = []
    for i, spec in enumerate(arch):
        kind = spec.get("type")
        if kind == "Linear":
            mods.append(nn.Linear(int(spec["in"]), int(spec["out"]), bias=bool(spec["bias"])))
        elif kind == "ReLU":
            mods.append(nn.ReLU())
        else:
            raise ExportError(f"architecture entry {i}: unknown layer type {kind!r}")
    return nn.Sequential(*mods)


def arch_of(model: nn.Sequential) -> list[dict]:
    """The architecture list of an nn.Sequential of Linear/ReLU."""
    arch = []
    for _, leaf in _walk(model):
        if isinstance(leaf, nn.Linear):
            arch.append(
                {
                    "type": "Linear",
                    "in": leaf.in_features,
                    "out": leaf.out_features,
                    "bias": leaf.bias is not None,
                }
            )
        else:
            arch.append({"type": type(leaf).__name__})
    return arch


def save_checkpoint(
    path: str | Path, model: nn.Sequential, mean: np.ndarray, std: np.ndarray, info: dict
) -> None:
    """Save weights + architecture + input normalization; loadable with weights_only=True."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": arch_of(model),
            "state_dict": model.state_dict(),
            "mean": torch.tensor(np.asarray(mean, dtype=np.float64)),
            "std": torch.tensor(np.asarray(std, dtype=np.float64)),
            "info": info,
        },
        str(path),
    )


def load_checkpoint(
    path: str | Path,
) -> tuple[nn.Sequential, np.ndarray | None, np.ndarray | None, dict]:
    """Load a micromlp checkpoint: (model, mean, std, info). Never unpickles code."""
    path = Path(path)
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many types for a bad file
        raise ExportError(
            f"{path}: not a PyTorch checkpoint loadable with weights_only ({e})"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ExportError(
            f"{path}: not a micromlp checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}, as written by 'micromlp train')"
        )
    model = build_sequential(ck["arch"])
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise ExportError(f"{path}: state dict does not match its architecture: {e}") from None
    model.eval()
    mean = ck.get("mean")
    std = ck.get("std")
    return (
        model,
        None if mean is None else mean.numpy(),
        None if std is None else std.numpy(),
        dict(ck.get("info", {})),
    )
