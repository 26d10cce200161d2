"""PyTorch → checked layer list, and the checkpoint format `micromlp train` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .chain import ChainBuilder
from .layers import SUPPORTED, ExportError, FloatLayer, one_line

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


def _t(v) -> np.ndarray:
    return v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(
        v, dtype=np.float64)


def _module_op(b: ChainBuilder, leaf: nn.Module, where: str, name: str) -> None:
    """One leaf module of a chain."""
    if isinstance(leaf, nn.Linear):
        b.linear(_t(leaf.weight), None if leaf.bias is None else _t(leaf.bias), name, where)
    elif isinstance(leaf, nn.LeakyReLU):
        b.activation("leaky", where, float(leaf.negative_slope))
    elif isinstance(leaf, nn.ReLU):
        b.activation("relu", where)
    elif isinstance(leaf, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        b.activation("clamp", where, float(leaf.min_val), float(leaf.max_val))
    elif isinstance(leaf, nn.BatchNorm1d):
        if not leaf.track_running_stats or leaf.running_mean is None:
            raise ExportError(f"{where}: BatchNorm1d without running statistics")
        n = leaf.num_features
        b.batchnorm(_t(leaf.weight) if leaf.affine else np.ones(n),
                    _t(leaf.bias) if leaf.affine else np.zeros(n),
                    _t(leaf.running_mean), _t(leaf.running_var), float(leaf.eps), where)
    elif isinstance(leaf, (nn.Softmax, nn.LogSoftmax)):
        b.trailing(type(leaf).__name__.lower(), where,
                   None if leaf.dim is None else int(leaf.dim))
    elif isinstance(leaf, nn.Sigmoid) and b.layers:
        b.trailing("sigmoid", where)
    elif isinstance(leaf, nn.Flatten):
        if leaf.start_dim == 0:
            raise ExportError(f"{where}: Flatten(start_dim=0) mixes the samples of a batch")
        if b.layers and not b.ended:
            raise ExportError(f"{where}: Flatten after a Linear is not supported")
    elif isinstance(leaf, _PASS_THROUGH):
        pass
    else:
        raise ExportError(f"{where} is not supported; supported layers: {SUPPORTED}")


class _Data:
    """The value flowing through the chain (as opposed to a constant)."""


_DATA = _Data()
_META = _Data()  # a shape query on the data, and what is computed from it (checks)
_SHAPE_QUERIES = {"dim", "size", "len", "numel"}
_PASS_FUNCS = {"view", "reshape", "_unsafe_view", "contiguous", "clone", "detach", "alias",
               "to", "float", "type_as", "flatten", "squeeze", "unsqueeze", "getitem",
               "identity", "dropout", "feature_dropout", "alpha_dropout", "lift_fresh_copy"}
_ELEMENTWISE = {"sub": "sub", "rsub": "rsub", "add": "add", "mul": "mul", "div": "div",
                "truediv": "div", "true_divide": "div", "iadd": "add", "isub": "sub",
                "imul": "mul", "itruediv": "div"}


def _op_name(target) -> str:
    """aten.linear.default -> linear, operator.truediv -> truediv, F.relu -> relu."""
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet or target, "__name__", str(target))
    name = name.split("::")[-1].split(".")[0]
    return name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name


def _function_op(b: ChainBuilder, name: str, args: list, kwargs: dict, where: str,
                 node_name: str) -> None:
    """One function node of a graph (torch.fx, torch.export or TorchScript), whose data
    argument is _DATA and the others constants; node_name names a linear layer."""
    def arg(i, key, default=None):
        if len(args) > i:
            return args[i]
        return kwargs.get(key, default)

    data_at = [i for i, a in enumerate(args) if a is _DATA]
    if name == "linear":
        b.linear(_t(arg(1, "weight")), None if arg(2, "bias") is None else _t(arg(2, "bias")),
                 node_name, where)
    elif name == "addmm" and data_at == [1]:
        b.linear(_t(args[2]).T, _t(args[0]), node_name, where)
    elif name in ("mm", "matmul") and data_at == [0]:
        b.linear(_t(args[1]).T, None, node_name, where)
    elif name in ("relu", "relu6", "hardtanh", "clamp", "clip", "clamp_min", "clamp_max",
                  "threshold"):
        if name == "relu":
            b.activation("relu", where)
        elif name == "relu6":
            b.activation("clamp", where, 0.0, 6.0)
        elif name == "hardtanh":
            b.activation("clamp", where, float(arg(1, "min_val", -1.0)),
                         float(arg(2, "max_val", 1.0)))
        elif name == "threshold" and float(arg(1, "threshold")) == 0 and float(
                arg(2, "value")) == 0:
            b.activation("relu", where)
        elif name in ("clamp", "clip", "clamp_min", "clamp_max"):
            lo = arg(1, "min") if name != "clamp_max" else None
            hi = arg(2, "max") if name in ("clamp", "clip") else (
                arg(1, "max") if name == "clamp_max" else None)
            b.clip(None if lo is None else float(_t(lo)), None if hi is None else float(_t(hi)),
                   where)
        else:
            raise ExportError(f"{where}: {name} is not supported; supported: {SUPPORTED}")
    elif name == "leaky_relu":
        b.activation("leaky", where, float(arg(1, "negative_slope", 0.01)))
    elif name in _ELEMENTWISE and len(data_at) == 1:
        op = _ELEMENTWISE[name]
        other = args[1 - data_at[0]] if len(args) > 1 else kwargs.get("other")
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if op == "rsub":  # other - alpha * x
            b.elementwise("mul", alpha, where)
            b.elementwise("sub", _t(other), where, const_first=True)
            return
        if op in ("add", "sub") and alpha != 1:
            other = _t(other) * float(alpha)
        b.elementwise(op, _t(other), where, const_first=data_at[0] == 1)
    elif name in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
                  "_native_batch_norm_legit_functional"):
        # every variant but ..._no_training has (..., training, momentum, eps, ...)
        no_training = name == "_native_batch_norm_legit_no_training"
        training = not no_training and bool(arg(5, "training", False))
        eps = arg(6, "eps") if no_training else arg(7, "eps")
        n = _t(arg(3, "running_mean")).size
        w, bias = arg(1, "weight"), arg(2, "bias")
        b.batchnorm(np.ones(n) if w is None else _t(w), np.zeros(n) if bias is None else _t(bias),
                    _t(arg(3, "running_mean")), _t(arg(4, "running_var")), float(eps), where,
                    training)
    elif name in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
        dim = arg(1, "dim")
        b.trailing(name.strip("_").replace("_", ""), where, None if dim is None else int(dim))
    elif name == "argmax":
        dim = arg(1, "dim")
        b.trailing("argmax", where, 0 if dim is None else int(dim))
    elif name == "sigmoid" and b.layers:
        b.trailing("sigmoid", where)
    elif name == "flatten" and int(arg(1, "start_dim", 0)) == 0:
        raise ExportError(f"{where}: flatten from dim 0 mixes the samples of a batch; use "
                          f"start_dim=1")
    elif name in ("dropout", "feature_dropout", "alpha_dropout") and bool(arg(2, "train",
                                                                              False)):
        raise ExportError(f"{where}: dropout in training mode; export the model in eval mode")
    elif name in _PASS_FUNCS:
        if name == "getitem" and args[1] != 0:
            raise ExportError(f"{where}: takes item {args[1]} of a layer's result")
    else:
        raise ExportError(f"{where}: {name} is not supported; supported layers: {SUPPORTED}")


def _hashable(a) -> bool:
    try:
        hash(a)
    except TypeError:
        return False
    return True


def _flatten(xs) -> list:
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out.extend(_flatten(x))
        else:
            out.append(x)
    return out


def _fx_nodes(gm, consts: dict):
    """(node, name, args, kwargs, evaluate) for a torch.fx graph; call_module leaves
    are handed to _module_op directly."""
    import operator

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node.name in consts or node.target in consts:
                value = consts.get(node.name, consts.get(node.target))
                yield node, "constant", [], {}, (lambda a, k, t=value: t)
            continue
        if node.op == "get_attr":
            attr = gm
            for part in str(node.target).split("."):
                attr = getattr(attr, part)
            yield node, "constant", [], {}, (lambda a, k, t=attr: t)
        elif node.op == "call_module":
            leaf = gm.get_submodule(node.target)
            yield node, "module", list(node.args), dict(node.kwargs), (
                lambda a, k, m=leaf: m(*a, **k))
        elif node.op == "call_function":
            target = node.target
            name = _op_name(target)
            if target is operator.getitem:
                name = "getitem"
            yield node, name, list(node.args), dict(node.kwargs), (
                lambda a, k, f=target: f(*a, **k))
        elif node.op == "call_method":
            yield node, node.target, list(node.args), dict(node.kwargs), (
                lambda a, k, m=node.target: getattr(a[0], m)(*a[1:], **k))


def _layers_from_fx(gm, what: str, consts: dict | None = None
                    ) -> tuple[list[FloatLayer], list[str]]:
    """Layers from a torch.fx GraphModule (symbolically traced, or torch.export's)."""
    b = ChainBuilder()
    consts = consts or {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"
                    and n.name not in consts and n.target not in consts]
    if len(placeholders) != 1:
        raise ExportError(f"{what}: expected one data input, found "
                          f"{[n.name for n in placeholders]}")
    env: dict = {placeholders[0]: _DATA}
    cur = placeholders[0]
    for node, name, args, kwargs, evaluate in _fx_nodes(gm, consts):
        where = f"node '{node.name}' ({name if name != 'module' else node.target})"
        vals = _resolve(args, env)
        kvals = {k: _resolve([v], env)[0] for k, v in kwargs.items()}
        flat = _flatten(vals) + _flatten(list(kvals.values()))
        if not any(x is _DATA for x in flat):
            try:
                env[node] = evaluate(vals, kvals)
            except Exception as e:
                raise ExportError(f"{where}: evaluating it on constants failed ({e})") from None
            continue
        users = [n for n in node.all_input_nodes if env.get(n) is _DATA]
        if users != [cur] or sum(x is _DATA for x in flat) != 1:
            raise ExportError(f"{where} takes {[u.name for u in users]}: only a chain of "
                              f"layers is supported, not branches or skip connections")
        if name == "module":
            leaf = gm.get_submodule(node.target)
            _module_op(b, leaf, f"layer '{node.target}' ({type(leaf).__name__})",
                       str(node.target))
        else:
            _function_op(b, name, vals, kvals, where, node.name)
        env[node] = _DATA
        cur = node
    out = [n for n in gm.graph.nodes if n.op == "output"]
    if out:
        res = _flatten(list(out[0].args))
        if [r for r in res if env.get(r) is _DATA] != [cur] or len(res) != 1:
            raise ExportError(f"{what}: returns {[getattr(r, 'name', r) for r in res]}, not "
                              f"just the last layer's output")
    return b.finish()


def _resolve(args, env):
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.append(type(a)(_resolve(list(a), env)))
        elif _hashable(a) and a in env:
            out.append(env[a])
        else:
            out.append(a)
    return out


def layers_from_module(module: nn.Module) -> list[FloatLayer]:
    """Reduce an MLP module to FloatLayers; refuse anything else by name and index."""
    return layers_and_notes(module)[0]


def layers_and_notes(module: nn.Module) -> tuple[list[FloatLayer], list[str]]:
    """Layers and notes (what was folded or dropped) from an nn.Module.

    Takes nn.Sequential (nested too), a bare nn.Linear, or a custom module whose
    forward is a chain of supported layers and constant arithmetic such as
    ``(x - self.mean) / self.std`` (traced with torch.fx). BatchNorm1d is folded.
    """
    if isinstance(module, torch.jit.ScriptModule):
        return layers_from_script(module)
    if isinstance(module, nn.Linear):
        module = nn.Sequential(module)
    if isinstance(module, nn.Sequential):
        b = ChainBuilder()
        leaves = list(_walk(module))
        ends = _PASS_THROUGH + (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)
        for index, (name, leaf) in enumerate(leaves):
            where = f"layer {index} '{name}' ({type(leaf).__name__})"
            if isinstance(leaf, nn.Sigmoid) and not all(isinstance(m, ends)
                                                         for _, m in leaves[index:]):
                raise ExportError(f"{where} is not supported; supported layers: {SUPPORTED} "
                                  f"(and Sigmoid as the last layer)")
            _module_op(b, leaf, where, name)
        return b.finish()
    from torch import fx

    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:
        raise ExportError(f"{type(module).__name__}: its forward cannot be traced "
                          f"({type(e).__name__}: {one_line(e)}); write it as an "
                          f"nn.Sequential, or save it with torch.export") from None
    return _layers_from_fx(gm, type(module).__name__)


def layers_from_exported(ep, what: str = "ExportedProgram") -> tuple[list[FloatLayer],
                                                                      list[str]]:
    """Layers from a torch.export ExportedProgram (a .pt2 file): its aten graph, with
    parameters, buffers and constants read from the program."""
    from torch.export.graph_signature import InputKind

    consts = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        t = spec.target
        val = ep.state_dict.get(t) if t in ep.state_dict else ep.constants.get(t)
        if val is None:
            raise ExportError(f"{what}: input '{spec.arg.name}' ({spec.kind.name}) has no value")
        consts[spec.arg.name] = val
    return _layers_from_fx(ep.graph_module, what, consts)


def layers_from_script(module) -> tuple[list[FloatLayer], list[str]]:
    """Layers from a TorchScript module: frozen, then its aten graph walked as a chain."""
    what = getattr(module, "original_name", "TorchScript module")
    try:
        frozen = torch.jit.freeze(module.eval())
    except Exception as e:
        raise ExportError(f"TorchScript {what}: cannot be frozen ({one_line(e)})") from None
    graph = frozen.graph
    inputs = list(graph.inputs())[1:]  # [0] is self
    if len(inputs) != 1:
        raise ExportError(f"TorchScript {what}: expected one data input, found {len(inputs)}")
    b = ChainBuilder()
    env: dict = {inputs[0]: _DATA}
    cur = inputs[0]
    for index, node in enumerate(graph.nodes()):
        kind = node.kind()
        outs = list(node.outputs())
        where = f"TorchScript node {index} ({kind})"
        if kind == "prim::Constant":
            env[outs[0]] = outs[0].toIValue() if outs else None
            continue
        if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            vals = [env.get(i, None) for i in node.inputs()]
            env[outs[0]] = _DATA if any(v is _DATA for v in vals) else vals
            if env[outs[0]] is _DATA:
                raise ExportError(f"{where}: packs the layer's result into a list")
            continue
        name = kind.split("::")[-1]
        args = [env[i] if i in env else None for i in node.inputs()]
        if kind in ("prim::If", "prim::RaiseException", "prim::Uninitialized") or any(
                a is _META for a in args) or (name in _SHAPE_QUERIES and args[0] is _DATA):
            for o in outs:  # shape checks (BatchNorm's input.dim()): no effect on values
                env[o] = _META
            continue
        if not any(a is _DATA for a in _flatten(args)):
            try:
                op = getattr(torch.ops.aten, name)
                env[outs[0]] = op(*args)
            except Exception as e:
                raise ExportError(f"{where}: evaluating it on constants failed "
                                  f"({one_line(e)})") from None
            continue
        if [i for i in node.inputs() if env.get(i) is _DATA] != [cur]:
            raise ExportError(f"{where}: only a chain of layers is supported, not branches "
                              f"or skip connections")
        _function_op(b, _op_name(name), args, {}, where, f"node{index}")
        env[outs[0]] = _DATA
        cur = outs[0]
    if [o for o in graph.outputs()] != [cur]:
        raise ExportError(f"TorchScript {what}: returns more than the last layer's output")
    return b.finish()


def build_sequential(arch: list[dict], state_dict: dict | None = None) -> nn.Sequential:
    """nn.Sequential from the architecture list a checkpoint stores; widths are checked
    against the state dict before anything is allocated."""
    simple = {"ReLU": nn.ReLU, "Identity": nn.Identity, "Dropout": nn.Dropout,
              "Flatten": nn.Flatten}
    mods: list[nn.Module] = []
    for i, spec in enumerate(arch):
        kind = spec.get("type")
        if kind == "Linear":
            n_in, n_out = int(spec["in"]), int(spec["out"])
            w = (state_dict or {}).get(f"{len(mods)}.weight")
            if state_dict is not None and (w is None or tuple(w.shape) != (n_out, n_in)):
                raise ValueError(f"architecture entry {i}: Linear({n_in}, {n_out}) but the "
                                 f"state dict has {len(mods)}.weight "
                                 f"{None if w is None else tuple(w.shape)}")
            mods.append(nn.Linear(n_in, n_out, bias=bool(spec["bias"])))
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
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ExportError(f"{path}: not a micromlp checkpoint ({one_line(e)})") from None
    return checkpoint_from_dict(ck, path)


def checkpoint_from_dict(ck, path) -> tuple[nn.Sequential, np.ndarray | None,
                                             np.ndarray | None, dict]:
    """The model a checkpoint dict describes, every field checked."""
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ExportError(
            f"{path}: not a micromlp checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}, as written by 'micromlp train')"
        )
    arch, sd = ck.get("arch"), ck.get("state_dict")
    if not isinstance(arch, list) or not all(isinstance(e, dict) for e in arch):
        raise ExportError(f"{path}: checkpoint field 'arch' is missing or not a list of layers")
    if not isinstance(sd, dict):
        raise ExportError(f"{path}: checkpoint field 'state_dict' is missing or not a dict")
    try:
        model = build_sequential(arch, sd)
        model.load_state_dict(sd)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: state dict does not match its architecture: "
                          f"{one_line(e)}") from None
    model.eval()
    norm = []
    for key in ("mean", "std"):
        v = ck.get(key)
        if v is not None:
            if not isinstance(v, torch.Tensor) or v.ndim > 1 or (
                    v.numel() not in (1, model_inputs(model))):
                raise ExportError(f"{path}: checkpoint field {key!r} is not a vector of "
                                  f"{model_inputs(model)} values")
            v = v.double().numpy()
        norm.append(v)
    info = ck.get("info", {})
    return model, norm[0], norm[1], dict(info) if isinstance(info, dict) else {}


def model_inputs(model: nn.Sequential) -> int:
    return next(m.in_features for m in model.modules() if isinstance(m, nn.Linear))
