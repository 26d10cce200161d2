"""Every way a user holds an MLP → a Source: its layer list and its own float runtime.

Accepted: a live ``nn.Module`` (incl. TorchScript) or ``torch.export`` ExportedProgram;
an ``onnx.ModelProto``; a scikit-learn ``MLPClassifier``/``MLPRegressor`` or a
``Pipeline`` of scalers and one; or a file: ``.onnx``, ``.pt2`` (torch.export),
TorchScript, a ``micromlp train`` checkpoint, a plain state dict (with ``module=`` a
class from the user's file, or ``arch=`` sizes for a Linear+ReLU Sequential), or
(only with ``trust_pickle``) a pickled module whose class may live in ``module``'s file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chain import dropped_trailing
from .layers import ExportError, FloatLayer, one_line

FORMS = (
    "an nn.Module, a torch.export ExportedProgram (.pt2), TorchScript, a 'micromlp train' "
    "checkpoint, a state dict with --module FILE.py:Class or --arch SIZES, a pickled module "
    "(--trust-pickle), ONNX (.onnx), or a scikit-learn MLPClassifier/MLPRegressor (or a "
    "Pipeline of scalers and one)"
)


@dataclass
class Source:
    """A model reduced to float layers, with the runtime that computes it in float."""

    layers: list[FloatLayer]
    notes: list[str] = field(default_factory=list)
    kind: str = ""  # "pytorch", "torch.export", "torchscript", "onnx", "sklearn", ...
    name: str = ""
    mean: np.ndarray | None = None  # input normalization a checkpoint recorded
    std: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    # raw inputs -> the source's own float answer (its runtime: PyTorch, onnxruntime,
    # scikit-learn); `comparable` when that answer is the layer list's outputs (no
    # trailing Softmax/Sigmoid dropped), else it is used for the class only.
    runtime: Callable[[np.ndarray], np.ndarray] | None = None
    runtime_name: str = ""
    comparable: bool = True

    def evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(outputs, classes) from one run of the source's own runtime.

        outputs are in the layer list's output space: the runtime's where they are that
        (comparable), else the float64 forward of the layer list; classes are what the
        runtime predicts.
        """
        x = np.asarray(x, dtype=np.float64)
        if self.runtime is None:
            out = self.layer_outputs(x)
            return out, np.argmax(out, axis=1)
        y = np.asarray(self.runtime(x), dtype=np.float64).reshape(len(x), -1)
        if y.shape[1] == 1:  # one logit (comparable) or one probability (a dropped Sigmoid)
            classes = (y[:, 0] > (0.0 if self.comparable else 0.5)).astype(np.int64)
        else:
            classes = np.argmax(y, axis=1)
        if not self.comparable:
            return self.layer_outputs(x), classes
        if y.shape[1] == 1 and self.layers[-1].n_out == 2:  # logit z -> [-z/2, z/2]
            y = np.hstack([-y / 2, y / 2])
        return y, classes

    def float_outputs(self, x: np.ndarray) -> np.ndarray:
        """The float outputs of evaluate()."""
        return self.evaluate(x)[0]

    def layer_outputs(self, x: np.ndarray) -> np.ndarray:
        """Float64 forward pass of the layer list (normalization applied first)."""
        from .layers import forward

        x = np.asarray(x, dtype=np.float64)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return forward(self.layers, x)


def load_source(model, *, module: str | None = None, module_args=None,
                arch: str | list[int] | None = None, trust_pickle: bool = False) -> Source:
    """A Source from any accepted form (see the module docstring); a Source as it is."""
    if isinstance(model, Source):
        return model
    if isinstance(model, (str, Path)):
        return _from_path(Path(model), module, module_args, arch, trust_pickle)
    kind = type(model).__module__.split(".")[0]
    if kind == "sklearn":
        from .sklearn_import import source_from_sklearn

        return source_from_sklearn(model)
    if kind == "onnx" or type(model).__name__ == "ModelProto":
        return _onnx_source(model, "ONNX model")
    if type(model).__name__ == "ExportedProgram":
        return _exported_source(model, "ExportedProgram")
    import torch

    if isinstance(model, torch.nn.Module):
        return _torch_source(model, type(model).__name__, "pytorch")
    if isinstance(model, dict):
        return _state_dict_source(model, "state dict", module, module_args, arch)
    raise ExportError(f"cannot export a {type(model).__name__}; give {FORMS}")


# -- live objects -------------------------------------------------------------------
def _torch_source(mod, name: str, kind: str, mean=None, std=None, info=None) -> Source:
    import torch

    from .torch_import import layers_and_notes

    with _eval_mode(mod) as switched:
        layers, notes = layers_and_notes(mod)
    if switched is not None:
        which = f" ({', '.join(switched)} in eval mode)" if switched else ""
        notes.append(f"the model was in training mode: exported in eval mode{which}, as "
                     f"torch.onnx.export does; your model object is left in training mode")
    dtype = _float_dtype(mod)

    src = Source(layers, notes, kind, name, mean, std, info or {}, None, "PyTorch",
                 not dropped_trailing(notes))

    def runtime(x: np.ndarray) -> np.ndarray:
        if src.mean is not None and src.std is not None:  # normalization outside the model
            x = (x - src.mean) / src.std
        with torch.no_grad(), _eval_mode(mod):
            return mod(torch.tensor(x, dtype=dtype)).double().numpy()

    src.runtime = runtime
    return src


class _eval_mode:
    """Eval mode while inside, the user's own training flags restored after: export
    never leaves the object it was given switched. Yields the kinds of layer that were
    in training mode whose eval mode differs (Dropout, BatchNorm; None when the model
    was in eval mode)."""

    def __init__(self, mod) -> None:
        self.mod = mod

    def __enter__(self) -> list[str] | None:
        self.flags = [(m, m.training) for m in self.mod.modules()]
        if not any(training for _, training in self.flags):
            return None
        self.mod.eval()
        kinds = {getattr(m, "original_name", type(m).__name__) for m, t in self.flags if t}
        return sorted(k for k in kinds if "Dropout" in k or "Norm" in k)

    def __exit__(self, *exc) -> None:
        for m, training in self.flags:
            m.training = training


def _float_dtype(mod):
    """The dtype a module computes in: its first floating parameter's (float32 if none),
    so a float64 model is run in float64."""
    import torch

    for t in [*mod.parameters(), *mod.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _exported_source(ep, name: str) -> Source:
    import torch

    from .torch_import import layers_from_exported

    layers, notes = layers_from_exported(ep, name)
    fn = ep.module()
    dtype, batch = _exported_input(ep)

    def runtime(x: np.ndarray) -> np.ndarray:
        t = torch.tensor(x, dtype=dtype)
        with torch.no_grad():
            if batch is None:
                return fn(t).double().numpy()
            # exported with a fixed batch: run in batches of that size, the last padded
            pad = (-len(t)) % batch
            t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])
            out = torch.cat([fn(t[i:i + batch]) for i in range(0, len(t), batch)])
            return out[:len(x)].double().numpy()

    return Source(layers, notes, "torch.export", name, runtime=runtime,
                  runtime_name="PyTorch (torch.export)", comparable=not dropped_trailing(notes))


def _exported_input(ep):
    """(dtype, fixed batch size or None) of an ExportedProgram's data input, from the
    example it was exported with."""
    import torch
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == InputKind.USER_INPUT]
    for node in ep.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if node.name in user[:1] and isinstance(val, torch.Tensor):
            first = val.shape[0] if val.dim() > 1 else None
            fixed = isinstance(first, int)  # a dynamic batch is a symbol, not an int
            return val.dtype, (int(first) if fixed else None)
    return torch.float32, None


def _onnx_source(model, name: str) -> Source:
    from .onnx_import import parse_onnx

    layers, notes, result = parse_onnx(model, name)

    def runtime(x: np.ndarray) -> np.ndarray:
        return onnx_outputs(model, result, x)

    return Source(layers, notes, "onnx", name, runtime=runtime, runtime_name="onnxruntime")


def onnx_outputs(model, tensor: str, x: np.ndarray) -> np.ndarray:
    """The value of one tensor of an ONNX model on inputs x, computed by onnxruntime."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    if tensor not in [o.name for o in m.graph.output]:
        m.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT,
                                                                 None))
    consts = {t.name for t in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in consts)
    elem = inp.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    dims = inp.type.tensor_type.shape.dim
    xx = np.asarray(x, dtype=dtype)
    if len(dims) == 2 and dims[0].dim_value and dims[0].dim_value != len(xx) and (
            dims[1].dim_value in (0, len(xx))):  # transA graphs take [features, batch]
        return sess.run([tensor], {inp.name: xx.T})[0]
    if len(dims) == 2 and dims[0].dim_value == 1 and len(xx) != 1:  # exported for batch 1
        return np.concatenate([sess.run([tensor], {inp.name: xx[i:i + 1]})[0]
                               for i in range(len(xx))])
    return sess.run([tensor], {inp.name: xx})[0]


# -- files ----------------------------------------------------------------------------
def _from_path(path: Path, module, module_args, arch, trust_pickle) -> Source:
    if not path.exists():
        raise ExportError(f"{path}: no such file")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder, expected a model file ({FORMS})")
    if path.suffix == ".onnx":
        from .onnx_import import load_onnx

        return _with_name(_onnx_source(load_onnx(path), str(path)), path)
    if path.suffix == ".pt2":
        return _with_name(_exported_source(_load_pt2(path), str(path)), path)
    import torch

    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        scripted = None
    if scripted is not None:
        return _torch_source(scripted, str(path), "torchscript")
    if _is_zip_with(path, "serialized_exported_program"):
        return _exported_source(_load_pt2(path), str(path))
    if trust_pickle:
        return _from_pickle(path, module)
    obj = _weights_only(path)
    from .torch_import import CHECKPOINT_FORMAT, checkpoint_from_dict

    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        mod, mean, std, info = checkpoint_from_dict(obj, path)
        return _torch_source(mod, str(path), "checkpoint", mean, std, info)
    if isinstance(obj, dict):
        return _state_dict_source(obj, str(path), module, module_args, arch)
    raise ExportError(f"{path}: holds a {type(obj).__name__}, not a model; give {FORMS}")


def _with_name(src: Source, path: Path) -> Source:
    src.name = str(path)
    return src


def _is_zip_with(path: Path, member: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(member in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_pt2(path: Path):
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as e:
        raise ExportError(f"{path}: not a torch.export program ({one_line(e)})") from None


def _weights_only(path: Path):
    """torch.load(weights_only=True), with torch's long message condensed."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        msg = one_line(e)
        if "Unsupported global" in str(e):
            raise ExportError(
                f"{path}: holds pickled code, not only weights; if it is a pickled nn.Module "
                f"you trust, pass --trust-pickle (unpickling runs the file's code), with "
                f"--module FILE.py if its class is defined in your script") from None
        raise ExportError(f"{path}: not a PyTorch file ({msg})") from None


def _state_dict_source(obj: dict, name: str, module, module_args, arch) -> Source:
    """A state dict with the class that holds it (module) or Linear+ReLU sizes (arch)."""
    import torch

    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ExportError(f"{name}: no tensors found (keys: {list(obj)[:8]})")
    if module:
        cls = _load_class(module)
        args, kwargs = _module_args(module_args)
        try:
            mod = cls(*args, **kwargs)
        except Exception as e:
            raise ExportError(f"{module}: building {cls.__name__}(*{args}, **{kwargs}) failed "
                              f"({one_line(e)}); pass its constructor arguments with "
                              f"--module-args") from None
        misfit = _misfit(mod.state_dict(), tensors)
        if misfit:
            raise ExportError(f"{name}: does not fit {cls.__name__}: {misfit}")
        try:
            mod.load_state_dict(tensors)
        except RuntimeError as e:
            raise ExportError(f"{name}: does not fit {cls.__name__}: {one_line(e)}") from None
        return _torch_source(mod, name, "state dict")
    if arch is not None:
        return _torch_source(_sequential_from_arch(tensors, arch, name), name, "state dict")
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(tensors.items())[:6])
    raise ExportError(f"{name}: a state dict holds weights, not the architecture ({shapes}); "
                      f"pass --module FILE.py:ClassName (the class that defines the model) "
                      f"or --arch SIZES (e.g. 64,32,10 for Linear+ReLU layers)")


def _misfit(expected: dict, given: dict, most: int = 4) -> str:
    """The keys a state dict lacks or has too many of, and the shapes that differ, in a
    line ('' when it fits)."""
    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - most} more" if len(keys) > most else ""
        return ", ".join(keys[:most]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} is {tuple(given[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"missing keys {names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {names(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {names(shapes)}")
    return "; ".join(parts)


def _sequential_from_arch(tensors: dict, arch, name: str):
    """nn.Sequential(Linear, ReLU, ..., Linear) of the given sizes, filled with the
    state dict's weight/bias tensors in order."""
    from torch import nn

    sizes = [int(v) for v in arch.split(",")] if isinstance(arch, str) else list(arch)
    if len(sizes) < 2:
        raise ExportError(f"--arch {arch}: give at least the input and output sizes")
    mats = [(k, v) for k, v in tensors.items() if v.ndim == 2]
    if len(mats) != len(sizes) - 1:
        raise ExportError(f"{name}: has {len(mats)} weight matrices, --arch {arch} needs "
                          f"{len(sizes) - 1}")
    mods = []
    for i, (key, w) in enumerate(mats):
        if tuple(w.shape) != (sizes[i + 1], sizes[i]):
            raise ExportError(f"{name}: {key} has shape {tuple(w.shape)}, --arch needs "
                              f"({sizes[i + 1]}, {sizes[i]})")
        bkey = key[: -len("weight")] + "bias" if key.endswith("weight") else None
        bias = tensors.get(bkey) if bkey else None
        lin = nn.Linear(sizes[i], sizes[i + 1], bias=bias is not None)
        lin.weight.data.copy_(w)
        if bias is not None:
            lin.bias.data.copy_(bias)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def _load_class(spec: str):
    """FILE.py:ClassName → the class (the file is imported as a module)."""
    file, _, cls_name = spec.partition(":")
    mod = _import_file(file)
    if not cls_name:
        raise ExportError(f"--module {spec}: name the class, as FILE.py:ClassName")
    cls = getattr(mod, cls_name, None)
    if cls is None:
        found = [k for k, v in vars(mod).items() if isinstance(v, type)]
        raise ExportError(f"{file}: has no class {cls_name} (classes: {', '.join(found)})")
    return cls


def _import_file(file: str):
    path = Path(file)
    if not path.exists():
        raise ExportError(f"--module {file}: no such file")
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise ExportError(f"{file}: importing it failed ({type(e).__name__}: "
                          f"{one_line(e)})") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return mod


def _module_args(text) -> tuple[list, dict]:
    if text is None:
        return [], {}
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except json.JSONDecodeError as e:
            raise ExportError(f"--module-args: not JSON ({e})") from None
    if isinstance(text, dict):
        return [], text
    if isinstance(text, list):
        return text, {}
    return [text], {}


def _from_pickle(path: Path, module: str | None) -> Source:
    """A fully pickled nn.Module; its class may be defined in the user's script (pickled
    as __main__.Class): module names that file."""
    import torch

    main = sys.modules["__main__"]
    added = []
    if module:
        user = _import_file(module.partition(":")[0])
        for k, v in vars(user).items():
            if isinstance(v, type) and not hasattr(main, k):
                setattr(main, k, v)
                added.append(k)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as e:
        raise ExportError(
            f"{path}: the pickled model's class cannot be found ({one_line(e)}); pass "
            f"--module FILE.py, the file that defines it") from None
    except Exception as e:
        raise ExportError(f"{path}: not a pickled PyTorch model ({one_line(e)})") from None
    finally:
        for k in added:
            delattr(main, k)
    if isinstance(obj, torch.nn.Module):
        return _torch_source(obj, str(path), "pickle")
    if isinstance(obj, dict):
        from .torch_import import CHECKPOINT_FORMAT, checkpoint_from_dict

        if obj.get("format") == CHECKPOINT_FORMAT:
            mod, mean, std, info = checkpoint_from_dict(obj, path)
            return _torch_source(mod, str(path), "checkpoint", mean, std, info)
        return _state_dict_source(obj, str(path), module, None, None)
    raise ExportError(f"{path}: holds a {type(obj).__name__}, not a model; give {FORMS}")
