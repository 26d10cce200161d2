"""The export pipeline: source model → layer list → quantized model → files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import modelfile, pymodule
from .fold import fold_normalization
from .layers import ExportError, FloatLayer
from .qmodel import QuantModel
from .quantize import QuantOptions, quantize


@dataclass
class ExportResult:
    """The quantized model and the files written for it."""

    model: QuantModel
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def error_bound(self) -> float:
        return float(self.model.error_bound)


def load_calibration(path: str | Path) -> np.ndarray:
    """Calibration inputs from an .npz (x_train, else x) or .npy file."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: calibration file not found")
    if path.suffix == ".npy":
        return np.load(path)
    with np.load(path) as data:
        for key in ("x_train", "x"):
            if key in data:
                return data[key]
        raise ExportError(f"{path}: no 'x_train' or 'x' array (has: {', '.join(data.files)})")


def quantize_layers(
    layers: list[FloatLayer],
    calib: np.ndarray,
    opts: QuantOptions | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> QuantModel:
    """Fold the input normalization (if any) and quantize."""
    if mean is not None and std is not None:
        layers = fold_normalization(layers, mean, std)
    return quantize(layers, calib, opts)


def write(
    model: QuantModel, out_dir: str | Path, name: str = "model", mpy: bool = True
) -> dict[str, Path]:
    """Write name.mlp, name_mlp.py and (with mpy-cross) name_mlp.mpy into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = modelfile.to_bytes(model)
    modelfile.from_bytes(data)  # every file we write must load
    paths = {"mlp": out_dir / f"{name}.mlp", "py": out_dir / f"{name}_mlp.py"}
    paths["mlp"].write_bytes(data)
    paths["py"].write_text(pymodule.module_source(data, name))
    if mpy:
        paths["mpy"] = out_dir / f"{name}_mlp.mpy"
        pymodule.mpy_cross(paths["py"], paths["mpy"])
    return paths


def _export(source: Path, layers: list[FloatLayer], calib_path: Path, out_dir: str | Path,
            opts: QuantOptions | None, mean: np.ndarray | None, std: np.ndarray | None,
            **meta) -> ExportResult:
    # the tail both sources share: fold, quantize on the calibration data, write
    qmodel = quantize_layers(layers, load_calibration(calib_path), opts, mean, std)
    qmodel.meta.update(source=str(source), calibration=str(calib_path), **meta)
    return ExportResult(qmodel, write(qmodel, out_dir))


def export_onnx(
    onnx_path: str | Path,
    out_dir: str | Path,
    calib_path: str | Path | None = None,
    opts: QuantOptions | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> ExportResult:
    """Export an ONNX MLP; mean/std (if given) are folded into the first layer."""
    from .onnx_import import layers_from_onnx

    onnx_path = Path(onnx_path)
    layers, notes = layers_from_onnx(onnx_path)
    calib_path = Path(calib_path) if calib_path else onnx_path.with_suffix(".npz")
    if not calib_path.exists():
        raise ExportError(f"{onnx_path}: calibration data is needed: --calib DATA.npz "
                          f"(raw inputs as 'x_train' or 'x')")
    return _export(onnx_path, layers, calib_path, out_dir, opts, mean, std, notes=notes)


def export_checkpoint(
    model_path: str | Path,
    out_dir: str | Path,
    calib_path: str | Path | None = None,
    opts: QuantOptions | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    trust_pickle: bool = False,
) -> ExportResult:
    """Export a checkpoint written by `micromlp train` (weights only), a TorchScript
    file, or with trust_pickle a pickled nn.Module.

    mean/std override the normalization the checkpoint recorded.
    """
    from .torch_import import layers_from_module, load_module

    model_path = Path(model_path)
    module, ck_mean, ck_std, info = load_module(model_path, trust_pickle)
    mean = ck_mean if mean is None else mean
    std = ck_std if std is None else std
    calib_path = Path(calib_path) if calib_path else model_path.with_suffix(".npz")
    return _export(model_path, layers_from_module(module), calib_path, out_dir, opts, mean,
                   std, info=info)
