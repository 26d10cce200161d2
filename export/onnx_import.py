"""ONNX → checked layer list, for MLPs from PyTorch's exporter or any other producer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fold import fold_batchnorm
from .layers import ExportError, FloatLayer, check

SUPPORTED_OPS = (
    "Gemm, MatMul + Add, Relu, Clip, LeakyRelu, BatchNormalization (after a linear op), "
    "Flatten, "
    "Reshape, Identity, Dropout, Transpose of a constant, Constant, and a trailing "
    "Softmax/LogSoftmax/ArgMax"
)
_TRAILING = ("Softmax", "LogSoftmax", "ArgMax")
_PASS = ("Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze")


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def load_onnx(path: str | Path):
    """onnx.load with the error named."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ExportError(f"{path}: not an ONNX model ({e})") from None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if opset < 9:
        raise ExportError(f"{path}: opset {opset}; ONNX opset 9 or later is supported")
    return model


def layers_from_onnx(path: str | Path) -> tuple[list[FloatLayer], list[str]]:
    """The MLP in an ONNX file as FloatLayers, and notes on what was dropped."""
    from onnx import numpy_helper

    path = Path(path)
    model = load_onnx(path)
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64)
              for t in graph.initializer if t.data_type != 7}  # 7: int64 (shapes)
    shapes = {t.name for t in graph.initializer if t.data_type == 7}
    data_inputs = [i.name for i in graph.input if i.name not in consts and i.name not in shapes]
    if len(data_inputs) != 1:
        raise ExportError(f"{path}: expected one data input, found {data_inputs}")
    cur = data_inputs[0]
    layers: list[FloatLayer] = []
    notes: list[str] = []
    linear_out = None  # the tensor a bias Add or a BatchNormalization may follow
    ended = None  # a trailing op that ends the MLP
    mlp_out = None  # the MLP's result, which trailing ops (probabilities, label) may share

    for index, node in enumerate(graph.node):
        op = node.op_type
        where = f"ONNX node {index} '{node.name or node.output[0]}' ({op})"
        a = _attrs(node)
        if op == "Constant":
            value = a.get("value")
            if value is not None and value.data_type == 7:
                shapes.add(node.output[0])
            elif value is not None:
                consts[node.output[0]] = numpy_helper.to_array(value).astype(np.float64)
            elif "value_float" in a:
                consts[node.output[0]] = np.array(a["value_float"], np.float64)
            elif "value_floats" in a:
                consts[node.output[0]] = np.array(a["value_floats"], np.float64)
            continue
        ins = [i for i in node.input if i]
        data = [i for i in ins if i not in consts and i not in shapes]
        if not data:  # constant arithmetic, e.g. a Transpose of a weight
            if op == "Transpose":
                perm = a.get("perm")
                consts[node.output[0]] = np.transpose(consts[ins[0]], perm)
                continue
            if op in ("Identity", "Cast"):
                consts[node.output[0]] = consts[ins[0]]
                continue
            raise ExportError(f"{where}: constant {op} is not supported; supported: "
                              f"{SUPPORTED_OPS}")
        trailing_branch = ended is not None and data == [mlp_out] and op in _TRAILING + _PASS
        if data != [cur] and not trailing_branch:
            raise ExportError(f"{where}: takes {data}, expected only '{cur}': only a chain of "
                              f"layers is supported, not branches or skip connections")
        if ended is not None:
            if op in _TRAILING or op in _PASS:
                notes.append(f"dropped {op} after {ended}")
                cur = node.output[0]
                continue
            raise ExportError(f"{where}: comes after the trailing {ended}; only an MLP "
                              f"followed by Softmax/LogSoftmax/ArgMax is supported")
        if op == "Gemm":
            if a.get("transA", 0):
                # A graph that takes its input as [features, batch]: the same MLP, and
                # the board takes one feature vector either way. Elsewhere it is not an MLP.
                if layers or cur != data_inputs[0]:
                    raise ExportError(f"{where}: transA=1 is supported on the graph input only")
                notes.append(f"{where}: transA=1 - the graph takes inputs as [features, "
                             f"batch]; give the board one feature vector")
            b = consts.get(node.input[1]) if len(node.input) > 1 else None
            if b is None:
                raise ExportError(f"{where}: weight B is not a constant")
            b = b.T if a.get("transB", 0) else b  # now [n_in, n_out]
            w = float(a.get("alpha", 1.0)) * b.T
            bias = None
            if len(node.input) > 2 and node.input[2]:
                c = consts.get(node.input[2])
                if c is None:
                    raise ExportError(f"{where}: bias C is not a constant")
                bias = float(a.get("beta", 1.0)) * np.broadcast_to(c, (1, w.shape[0]))[0]
            layers.append(FloatLayer(np.array(w), None if bias is None else np.array(bias),
                                     "none", node.name or f"node{index}"))
            linear_out = node.output[0]
        elif op == "MatMul":
            b = consts.get(node.input[1])
            if b is None or b.ndim != 2:
                raise ExportError(f"{where}: the second input must be a constant matrix")
            layers.append(FloatLayer(b.T.copy(), None, "none", node.name or f"node{index}"))
            linear_out = node.output[0]
        elif op == "Add":
            c = next((consts[i] for i in ins if i in consts), None)
            if cur != linear_out or c is None or layers[-1].act != "none":
                raise ExportError(f"{where}: Add is supported as the bias right after a "
                                  f"Gemm or MatMul")
            add = np.broadcast_to(c, (1, layers[-1].n_out))[0]
            last = layers[-1]
            last.bias = add.copy() if last.bias is None else last.bias + add
            linear_out = node.output[0]
        elif op == "BatchNormalization":
            if cur != linear_out:
                raise ExportError(f"{where}: BatchNormalization is supported right after a "
                                  f"Gemm or MatMul (it is folded into it)")
            g, beta, mean, var = (consts.get(i) for i in node.input[1:5])
            if any(v is None for v in (g, beta, mean, var)):
                raise ExportError(f"{where}: BatchNormalization parameters must be constants")
            layers[-1] = fold_batchnorm(layers[-1], g, beta, mean, var,
                                        float(a.get("epsilon", 1e-5)), where)
            linear_out = node.output[0]
        elif op in ("Relu", "Clip"):
            if not layers:
                raise ExportError(f"{where}: an activation before the first linear op is not "
                                  f"supported")
            if op == "Relu":
                layers[-1].then("relu")
            else:
                lo = a.get("min", -np.inf)
                hi = a.get("max", np.inf)
                if len(node.input) > 1 and node.input[1]:
                    lo = float(consts[node.input[1]])
                if len(node.input) > 2 and node.input[2]:
                    hi = float(consts[node.input[2]])
                if lo == 0 and hi == np.inf:
                    layers[-1].then("relu")
                elif np.isfinite(lo) and np.isfinite(hi):
                    layers[-1].then("clamp", float(lo), float(hi))
                else:
                    raise ExportError(f"{where}: Clip with bounds [{lo}, {hi}]: supported are "
                                      f"min 0 (ReLU) or both bounds finite")
            linear_out = None
        elif op in _PASS:
            if op in ("Flatten", "Reshape") and layers and cur == linear_out:
                pass  # already a vector: [batch, features] stays as it is
        elif op in _TRAILING:
            ended, mlp_out = op, cur
            notes.append(f"dropped the trailing {op}: the board's argmax of the outputs "
                         f"gives the same class")
        elif op == "LeakyRelu":
            if not layers:
                raise ExportError(f"{where}: an activation before the first linear op is not "
                                  f"supported")
            try:
                layers[-1].then("leaky", float(a.get("alpha", 0.01)))
            except ExportError as e:
                raise ExportError(f"{where}: {e}") from None
            linear_out = None
        else:
            raise ExportError(f"{where} is not supported; supported: {SUPPORTED_OPS}")
        cur = node.output[0]

    outs = [o.name for o in graph.output]
    if ended is None and cur not in outs:
        raise ExportError(f"{path}: the MLP's result '{cur}' is not a graph output "
                          f"(outputs: {outs})")
    for o in outs:
        if o != (mlp_out or cur):
            notes.append(f"graph output '{o}' is not the MLP's result: the board gives the "
                         f"MLP's outputs and their argmax instead")
    return check(layers), notes
