"""PyTorch → checked layer list, and the checkpoint format `micromlp train` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .fold import fold_batchnorm
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


_FUNCTIONS = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "flatten": nn.Flatten(),
              "dropout": nn.Dropout()}


def _traced(module: nn.Module):
    """(name, leaf) in forward order for a custom module whose forward is a chain.

    Traced with torch.fx; a node that takes more than the previous node's output
    (a skip connection, a branch) is refused by name.
    """
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:
        raise ExportError(f"{type(module).__name__}: its forward cannot be traced "
                          f"({type(e).__name__}: {e}); write it as an nn.Sequential") from None
    prev = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise ExportError(f"{type(module).__name__}: more than one input ({node.name})")
            prev = node
            continue
        used = [a for a in node.all_input_nodes]
        if node.op == "output":
            if used != [prev]:
                raise ExportError(f"output '{node.name}': returns more than the last layer's "
                                  f"output")
            return
        if used != [prev]:
            raise ExportError(
                f"node '{node.name}' ({node.target}) takes {[u.name for u in used]}: only a "
                f"chain of layers is supported, not branches or skip connections")
        if node.op == "call_module":
            yield str(node.target), gm.get_submodule(node.target)
        elif node.op in ("call_function", "call_method"):
            fname = getattr(node.target, "__name__", str(node.target))
            if fname not in _FUNCTIONS and fname not in ("view", "reshape", "contiguous"):
                raise ExportError(f"node '{node.name}': {fname} is not supported; supported "
                                  f"layers: {SUPPORTED}")
            yield node.name, _FUNCTIONS.get(fname, nn.Identity())
        else:
            raise ExportError(f"node '{node.name}': {node.op} is not supported")
        prev = node


def layers_from_module(module: nn.Module) -> list[FloatLayer]:
    """Reduce an MLP module to FloatLayers; refuse anything else by name and index.

    Takes nn.Sequential (nested too), a bare nn.Linear, or a custom module whose
    forward is a chain of supported layers (traced with torch.fx). BatchNorm1d
    right after a Linear is folded into it.
    """
    if isinstance(module, nn.Linear):
        module = nn.Sequential(module)
    leaves = _walk(module) if isinstance(module, nn.Sequential) else _traced(module)
    layers: list[FloatLayer] = []
    ended = None  # a trailing Softmax/LogSoftmax: dropped, argmax is unchanged
    for index, (name, leaf) in enumerate(leaves):
        kind = type(leaf).__name__
        where = f"layer {index} '{name}' ({kind})"
        if isinstance(leaf, (nn.Softmax, nn.LogSoftmax)) and layers:
            ended = where
            continue
        if ended and not isinstance(leaf, _PASS_THROUGH):
            raise ExportError(f"{where}: comes after {ended}; a Softmax is supported only at "
                              f"the end")
        if isinstance(leaf, nn.Linear):
            w = leaf.weight.detach().double().numpy().copy()
            b = None if leaf.bias is None else leaf.bias.detach().double().numpy().copy()
            layers.append(FloatLayer(w, b, "none", name))
        elif isinstance(leaf, nn.LeakyReLU):
            if not layers:
                raise ExportError(f"{where}: an activation before the first Linear is not "
                                  f"supported")
            try:
                layers[-1].then("leaky", float(leaf.negative_slope))
            except ExportError as e:
                raise ExportError(f"{where}: {e}") from None
        elif isinstance(leaf, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
            if not layers:
                raise ExportError(f"{where}: an activation before the first Linear is not "
                                  f"supported")
            if isinstance(leaf, nn.ReLU):
                layers[-1].then("relu")
            else:  # ReLU6 is a Hardtanh(0, 6)
                layers[-1].then("clamp", float(leaf.min_val), float(leaf.max_val))
        elif isinstance(leaf, nn.BatchNorm1d):
            if not layers or layers[-1].act != "none":
                raise ExportError(f"{where}: BatchNorm1d is supported right after a Linear "
                                  f"(it is folded into it)")
            if not leaf.track_running_stats or leaf.running_mean is None:
                raise ExportError(f"{where}: BatchNorm1d without running statistics")
            gamma = leaf.weight.detach().double().numpy() if leaf.affine else np.ones(
                leaf.num_features)
            beta = leaf.bias.detach().double().numpy() if leaf.affine else np.zeros(
                leaf.num_features)
            layers[-1] = fold_batchnorm(layers[-1], gamma, beta,
                                        leaf.running_mean.double().numpy(),
                                        leaf.running_var.double().numpy(), leaf.eps, where)
        elif isinstance(leaf, _PASS_THROUGH):
            if isinstance(leaf, nn.Flatten) and layers:
                raise ExportError(f"{where}: Flatten after a Linear is not supported")
        else:
            raise ExportError(f"{where} is not supported; supported layers: {SUPPORTED}")
    return check(layers)


def build_sequential(arch: list[dict]) -> nn.Sequential:
    """nn.Sequential from the architecture list a checkpoint stores."""
    simple = {"ReLU": nn.ReLU, "Identity": nn.Identity, "Dropout": nn.Dropout,
              "Flatten": nn.Flatten}
    mods: list[nn.Module] = []
    for i, spec in enumerate(arch):
        kind = spec.get("type")
        if kind == "Linear":
            mods.append(nn.Linear(int(spec["in"]), int(spec["out"]), bias=bool(spec["bias"])))
        elif kind == "LeakyReLU":
            mods.append(nn.LeakyReLU(float(spec["slope"])))
        elif kind == "Hardtanh":
            mods.append(nn.Hardtanh(float(spec["min"]), float(spec["max"])))
        elif kind == "BatchNorm1d":
            mods.append(nn.BatchNorm1d(int(spec["features"]), eps=float(spec["eps"])))
        elif kind in simple:
            mods.append(simple[kind]())
        else:
            raise ExportError(f"architecture entry {i}: unknown layer type {kind!r}")
    return nn.Sequential(*mods)


def arch_of(model: nn.Sequential) -> list[dict]:
    """The architecture list of an nn.Sequential of supported layers."""
    arch = []
    for _, leaf in _walk(model):
        if isinstance(leaf, nn.Linear):
            arch.append({"type": "Linear", "in": leaf.in_features, "out": leaf.out_features,
                         "bias": leaf.bias is not None})
        elif isinstance(leaf, nn.LeakyReLU):
            arch.append({"type": "LeakyReLU", "slope": float(leaf.negative_slope)})
        elif isinstance(leaf, nn.Hardtanh):  # ReLU6 too
            arch.append({"type": "Hardtanh", "min": float(leaf.min_val),
                         "max": float(leaf.max_val)})
        elif isinstance(leaf, nn.BatchNorm1d):
            arch.append({"type": "BatchNorm1d", "features": leaf.num_features,
                         "eps": float(leaf.eps)})
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


def _from_script(module) -> nn.Module:
    """An eager copy of a TorchScript Sequential MLP (children known by original_name)."""
    kind = getattr(module, "original_name", type(module).__name__)
    if kind == "Sequential":
        return nn.Sequential(*[_from_script(c) for _, c in module.named_children()])
    params = dict(module.named_parameters(recurse=False))
    buffers = dict(module.named_buffers(recurse=False))
    if kind == "Linear":
        w = params["weight"]
        lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in params)
        lin.load_state_dict({k: v.detach() for k, v in params.items()})
        return lin
    if kind == "BatchNorm1d":
        bn = nn.BatchNorm1d(buffers["running_mean"].shape[0], eps=float(module.eps))
        bn.load_state_dict({**{k: v.detach() for k, v in params.items()}, **buffers},
                           strict=False)
        return bn
    if kind in ("ReLU6", "Hardtanh"):
        return nn.Hardtanh(float(module.min_val), float(module.max_val))
    if kind == "LeakyReLU":
        return nn.LeakyReLU(float(module.negative_slope))
    simple = {"ReLU": nn.ReLU, "Identity": nn.Identity, "Dropout": nn.Dropout,
              "Flatten": nn.Flatten, "Softmax": nn.Softmax, "LogSoftmax": nn.LogSoftmax}
    if kind in simple:
        return simple[kind]()
    raise ExportError(f"TorchScript layer {kind} is not supported; supported layers: "
                      f"{SUPPORTED}")


def load_module(path: str | Path, trust_pickle: bool = False):
    """(module, mean, std, info) from a micromlp checkpoint, a TorchScript file, or -
    only with trust_pickle - a fully pickled nn.Module (unpickling runs code)."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such file")
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        scripted = None
    if scripted is not None:
        return _from_script(scripted).eval(), None, None, {"source": "torchscript"}
    if trust_pickle:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
        if isinstance(obj, nn.Module):
            return obj.eval(), None, None, {"source": "pickle"}
    try:
        return load_checkpoint(path)
    except ExportError as e:
        if trust_pickle:
            raise
        raise ExportError(f"{e}; if it is a pickled nn.Module you trust, pass --trust-pickle "
                          f"(unpickling runs the file's code)") from None
