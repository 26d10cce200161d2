"""ONNX → checked layer list, for MLPs from PyTorch's exporter or any other producer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .chain import ChainBuilder
from .layers import ExportError, FloatLayer

SUPPORTED_OPS = (
    "Gemm, MatMul + Add, Relu, Clip, LeakyRelu, BatchNormalization, Flatten, Reshape, "
    "Identity, Dropout, Cast, Transpose of a constant, Constant, Sub/Add/Mul/Div by a "
    "constant and Scaler (folded), and a trailing Softmax/LogSoftmax/ArgMax/Sigmoid"
)
_PASS = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Cast")


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
    """The MLP in an ONNX file as FloatLayers, and notes on what was folded or dropped."""
    layers, notes, _ = parse_onnx(load_onnx(path), str(path))
    return layers, notes


def _constants(graph) -> tuple[dict, set]:
    """Float initializers as arrays; the names of every other initializer (shapes,
    int64 indices, string class labels)."""
    from onnx import TensorProto, numpy_helper

    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64)
              for t in graph.initializer if t.data_type in floats}
    other = {t.name for t in graph.initializer if t.data_type not in floats}
    return consts, other


def parse_onnx(model, what: str = "ONNX model") -> tuple[list[FloatLayer], list[str], str]:
    """(layers, notes, name of the tensor that holds the MLP's outputs) of an ONNX model."""
    from onnx import numpy_helper

    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    consts, other = _constants(graph)
    data_inputs = [i.name for i in graph.input if i.name not in consts and i.name not in other]
    if len(data_inputs) != 1:
        raise ExportError(f"{what}: expected one data input, found {data_inputs}")
    b = ChainBuilder()
    cur = data_inputs[0]
    post: set[str] = set()  # tensors computed from the MLP's result after its trailing op
    mlp_out = None

    for index, node in enumerate(graph.node):
        op = node.op_type
        where = f"ONNX node {index} '{node.name or node.output[0]}' ({op})"
        a = _attrs(node)
        if op == "Constant":
            value = a.get("value")
            if value is not None and value.data_type in (1, 10, 11, 16):
                consts[node.output[0]] = numpy_helper.to_array(value).astype(np.float64)
            elif value is None and ("value_float" in a or "value_floats" in a):
                consts[node.output[0]] = np.array(a.get("value_float", a.get("value_floats")),
                                                  np.float64)
            else:
                other.add(node.output[0])
            continue
        ins = [i for i in node.input if i]
        data = [i for i in ins if i not in consts and i not in other]
        if not data:
            _constant_op(node, op, a, ins, consts, other, where)
            continue
        if any(d in post for d in data) or (b.ended is not None and data == [mlp_out]):
            post.update(node.output)  # probabilities, a label: post-processing, dropped
            if op in _TRAILING_OPS:
                b.trailing(_TRAILING_OPS[op], where, _axis(op, a, opset))
            else:
                b.notes.append(f"dropped {op} after the MLP's result ({where})")
            continue
        if data != [cur]:
            raise ExportError(f"{where}: takes {data}, expected only '{cur}': only a chain of "
                              f"layers is supported, not branches or skip connections")
        if op in _TRAILING_OPS and (op != "Sigmoid" or b.layers):
            mlp_out = cur
            b.trailing(_TRAILING_OPS[op], where, _axis(op, a, opset))
            post.update(node.output)
            continue
        _chain_op(b, node, op, a, ins, consts, where, cur, data_inputs[0])
        cur = node.output[0]

    outs = [o.name for o in graph.output]
    result = mlp_out or cur
    if b.ended is None and cur not in outs:
        raise ExportError(f"{what}: the MLP's result '{cur}' is not a graph output "
                          f"(outputs: {outs})")
    layers, notes = b.finish()
    for o in outs:
        if o != result:
            notes.append(f"graph output '{o}' is not the MLP's result: the board gives the "
                         f"MLP's outputs and their argmax instead")
    return layers, notes, result


_TRAILING_OPS = {"Softmax": "softmax", "LogSoftmax": "logsoftmax", "ArgMax": "argmax",
                 "Sigmoid": "sigmoid"}
_ELEMENTWISE = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


def _axis(op: str, a: dict, opset: int) -> int:
    """The axis a trailing op works along, with ONNX's defaults (ArgMax: 0; Softmax: 1
    before opset 13, -1 from it)."""
    if op == "ArgMax":
        return int(a.get("axis", 0))
    if op == "Sigmoid":
        return -1
    return int(a.get("axis", -1 if opset >= 13 else 1))


def _constant_op(node, op, a, ins, consts, other, where) -> None:
    """An op on constants only (a transposed weight, a cast)."""
    if any(i in other for i in ins) or ins[0] not in consts:
        other.update(node.output)
        return
    if op == "Transpose":
        consts[node.output[0]] = np.transpose(consts[ins[0]], a.get("perm"))
    elif op in ("Identity", "Cast"):
        consts[node.output[0]] = consts[ins[0]]
    elif op in _ELEMENTWISE and len(ins) == 2 and ins[1] in consts:
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        consts[node.output[0]] = f(consts[ins[0]], consts[ins[1]])
    elif op in ("Sqrt", "Neg", "Reciprocal"):
        f = {"Sqrt": np.sqrt, "Neg": np.negative, "Reciprocal": np.reciprocal}[op]
        consts[node.output[0]] = f(consts[ins[0]])
    else:
        raise ExportError(f"{where}: constant {op} is not supported; supported: "
                          f"{SUPPORTED_OPS}")


def _const(consts: dict, name: str, where: str, role: str) -> np.ndarray:
    """A float constant the chain folds, or a one-line refusal naming the node."""
    if name not in consts:
        raise ExportError(f"{where}: {role} '{name}' is not a float constant (a graph input, "
                          f"or an integer tensor): only float constants can be folded")
    return consts[name]


def _chain_op(b: ChainBuilder, node, op, a, ins, consts, where, cur, graph_input) -> None:
    """One op of the MLP's chain."""
    name = node.name or node.output[0]
    if op == "Gemm":
        if a.get("transA", 0):
            # A graph that takes its input as [features, batch]: the same MLP, and
            # the board takes one feature vector either way. Elsewhere it is not an MLP.
            if b.layers or cur != graph_input:
                raise ExportError(f"{where}: transA=1 is supported on the graph input only")
            b.notes.append(f"{where}: transA=1 - the graph takes inputs as [features, batch]; "
                           f"give the board one feature vector")
        w = consts.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            raise ExportError(f"{where}: weight B is not a constant")
        w = w.T if a.get("transB", 0) else w  # now [n_in, n_out]
        w = float(a.get("alpha", 1.0)) * w.T
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = consts.get(node.input[2])
            if c is None:
                raise ExportError(f"{where}: bias C is not a constant")
            if c.size not in (1, w.shape[0]) or c.ndim > 2 or c.ndim == 2 and c.shape[0] != 1:
                raise ExportError(f"{where}: bias C has shape {c.shape}, expected one value "
                                  f"per output ({w.shape[0]}) or a scalar")
            bias = float(a.get("beta", 1.0)) * np.broadcast_to(c.reshape(-1),
                                                                (w.shape[0],)).copy()
        b.linear(w, bias, name, where)
    elif op == "MatMul":
        w = consts.get(node.input[1])
        if w is None or w.ndim != 2 or node.input[0] != cur:
            raise ExportError(f"{where}: the second input must be a constant matrix")
        b.linear(w.T.copy(), None, name, where)
    elif op in _ELEMENTWISE:
        k_first = node.input[0] != cur
        operand = node.input[0 if k_first else 1]
        b.elementwise(_ELEMENTWISE[op], _const(consts, operand, where, "operand"), where,
                      k_first)
    elif op == "Scaler":  # ai.onnx.ml: y = (x - offset) * scale
        b.elementwise("sub", np.asarray(a.get("offset", [0.0]), np.float64), where)
        b.elementwise("mul", np.asarray(a.get("scale", [1.0]), np.float64), where)
    elif op == "BatchNormalization":
        g, beta, mean, var = (consts.get(i) for i in node.input[1:5])
        if any(v is None for v in (g, beta, mean, var)):
            raise ExportError(f"{where}: BatchNormalization parameters must be constants")
        b.batchnorm(g, beta, mean, var, float(a.get("epsilon", 1e-5)), where,
                    training=bool(a.get("training_mode", 0)))
    elif op == "Relu":
        b.activation("relu", where)
    elif op == "Clip":
        lo, hi = a.get("min"), a.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = float(_const(consts, node.input[1], where, "min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(_const(consts, node.input[2], where, "max"))
        b.clip(lo, hi, where)
    elif op == "LeakyRelu":
        b.activation("leaky", where, float(a.get("alpha", 0.01)))
    elif op == "Dropout":
        mode = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if mode is not None and (mode not in consts or bool(np.any(consts[mode]))):
            raise ExportError(f"{where}: Dropout with training_mode; export in eval mode")
    elif op == "Flatten":
        if int(a.get("axis", 1)) == 0:
            raise ExportError(f"{where}: Flatten with axis 0 mixes the samples of a batch")
    elif op in _PASS:
        pass
    else:
        raise ExportError(f"{where} is not supported; supported: {SUPPORTED_OPS}")
