"""The Python API: what `import micromlp` offers a notebook, and what the CLI calls.

    import micromlp
    q = micromlp.export(model, calib=X_train, out="out")   # any accepted model form
    print(q)                                               # notes and the layer table
    r = q.verify(X_test, y_test)                           # float vs reference vs VMs
    q.run(X, vm="unix").predicted                          # on a real MicroPython VM
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..export import modelfile
from ..export.exporter import ExportResult, export_model
from ..export.layers import ExportError
from ..export.qmodel import QuantModel
from ..export.quantize import BIAS_CORRECTION, CALIB_METHODS, QuantOptions
from ..export.report import fidelity_table, layer_table
from ..export.sources import Source, load_source
from . import vms
from .verify import VerifyReport, format_report, verify_arrays


@dataclass
class RunResult:
    """Outputs of a model on some inputs: the integers, as floats, and the classes."""

    ints: np.ndarray  # [n, n_outputs] integers the board computes
    floats: np.ndarray  # the same, dequantized
    predicted: np.ndarray  # argmax per row
    vm: str = "reference"


def _vm_names(names: tuple[str, ...] | str) -> tuple[str, ...]:
    """VM names as a tuple, from a tuple or a comma-separated string."""
    if isinstance(names, str):
        return tuple(v.strip() for v in names.split(","))
    return tuple(names)


class Exported:
    """A fixed-point model (with its files, and the float model it came from if known)."""

    def __init__(self, model: QuantModel, paths: dict[str, Path] | None = None,
                 source: Source | None = None) -> None:
        self.model = model
        self.paths = dict(paths or {})
        self.source = source
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def notes(self) -> list[str]:
        """What the exporter folded, dropped or warns about."""
        return list(self.model.meta.get("notes", []))

    @property
    def error_bound(self) -> float:
        return float(self.model.error_bound)

    @property
    def fidelity(self) -> list[dict]:
        """Per layer, on the calibration data: SQNR (dB), fraction clipped, mean squared
        and max |error| (empty for a model loaded from a file: the float layers are not
        in it)."""
        return list(self.model.meta.get("fidelity", []))

    def __str__(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        lines.append(layer_table(self.model))
        if self.fidelity:
            lines.append(fidelity_table(self.fidelity))
        lines.append(f"PyTorch agreement bound: |fixed - float| <= {self.error_bound:.4g} per "
                     f"output, for inputs that saturate no clamp")
        lines += [f"wrote {p} ({p.stat().st_size} bytes)" for p in self.paths.values()
                  if p.exists()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        shape = "-".join([str(self.model.n_inputs)] + [str(ly.n_out) for ly in
                                                       self.model.layers])
        return f"<micromlp.Exported {shape} {self.model.layers[0].w_bits}-bit>"

    def mlp_path(self) -> Path:
        """The .mlp file (written to a temporary folder if the export wrote none)."""
        if "mlp" not in self.paths:
            self._tmp = tempfile.TemporaryDirectory(prefix="micromlp-")
            self.paths["mlp"] = Path(self._tmp.name) / "model.mlp"
            modelfile.save(self.model, self.paths["mlp"])
        return self.paths["mlp"]

    def verify(self, x, y=None, vms: tuple[str, ...] | str = vms.FIRMWARE_VMS,
               float_model=None, max_accuracy_drop: float = 0.01,
               min_agreement: float = 0.99, layers: bool = False,
               task: str = "auto", max_mean_error: float = 0.02) -> VerifyReport:
        """Float model vs host reference vs the engine on each MicroPython VM.

        float_model defaults to the model this was exported from. x may have any shape
        (N, ...) whose trailing size is the model's inputs (images are flattened). task:
        "classification", "regression" or "auto" (a scikit-learn regressor, or targets
        y that are not class labels: several columns or fractional values, are a
        regression). The report's .ok is False on any VM mismatch or a broken bound; for
        classification, on an accuracy drop of more than max_accuracy_drop (a fraction)
        or top-1 agreement below min_agreement; for regression, on an R² drop of more
        than 0.01 or an output whose mean error is above max_mean_error (a fraction) of its
        span. With layers,
        .layers says where the error comes from, layer by layer.
        """
        return verify_arrays(self.mlp_path(), x, y, self._float_source(float_model),
                             _vm_names(vms), max_accuracy_drop, min_agreement, layers, task,
                             max_mean_error=max_mean_error)

    def report(self, x, y=None, out: str | Path = "report.html",
               vms: tuple[str, ...] | str = vms.FIRMWARE_VMS, float_model=None) -> Path:
        """Write one self-contained HTML page on this model's fidelity on (x, y): what
        verify checks, per layer, with plots (micromlp report)."""
        from .report_page import build

        source = self._float_source(float_model)
        if source is None:
            raise ExportError("the report needs the float model (float_model=...)")
        return build(self.mlp_path(), x, y, source, out, _vm_names(vms))[0]

    def _float_source(self, float_model):
        # the float model verify and report compare with: the one this was exported
        # from unless another is given (any form export takes)
        return self.source if float_model is None else load_source(float_model)

    def run(self, x, vm: str = "reference", ints: bool = False,
            what: str = "inputs") -> RunResult:
        """Run on float inputs (quantized as the board's would be), or on the input
        integers with ints=True; vm: reference, cpython, unix or wasm. `what` names the
        inputs in error messages (the CLI passes the file)."""
        from ..export.data import check_inputs
        from .reference import run as run_reference

        x = check_inputs(x, what, self.model.n_inputs)  # images flattened, as verify does
        if ints:
            bad = (x != np.round(x)) | (np.abs(x) >= 2**30)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise ExportError(f"{what}: row {r}, column {c} is {x[r, c]:g}: integer "
                                  f"inputs must be whole numbers below 2**30")
            xq = np.clip(x, self.model.in_lo, self.model.in_hi).astype(np.int64)
        else:
            xq = self.model.quantize_input(x)
        if vm == "reference":
            out = run_reference(self.model, xq).out
        else:  # run_firmware names the VMs it knows
            out = vms.run_firmware(vm, self.mlp_path(), xq, self.model.n_outputs)
        return RunResult(out, self.model.dequantize_output(out), np.argmax(out, axis=1), vm)


def quant_options(weight_bits: int = 8, act_bits: int = 8, out_bits: int = 16,
                  per_tensor: bool = False, input_range=None, input_bits: int | None = None,
                  calib_method: str = "minmax", bias_correction: str = "bias",
                  equalize: str = "auto", input_tail: float | None = None) -> QuantOptions:
    """QuantOptions from the CLI's option names, checked."""
    if input_bits is not None:
        if not 1 <= int(input_bits) <= 29:
            raise ExportError(f"input bits must be 1..29, got {input_bits}")
        input_range = (0, (1 << int(input_bits)) - 1)
    if input_range is not None:
        lo, hi = (int(v) for v in input_range)
        if lo >= hi:
            raise ExportError(f"input range [{lo}, {hi}]: LO must be below HI")
        input_range = (lo, hi)
    for name, v, allowed in (("calib_method", calib_method, CALIB_METHODS),
                             ("bias_correction", bias_correction, BIAS_CORRECTION),
                             ("equalize", equalize, ("auto", "on", "off"))):
        if v not in allowed:
            raise ExportError(f"{name} must be one of {', '.join(allowed)}, got {v!r}")
    if input_tail is not None and not 0 <= float(input_tail) <= 1000:
        raise ExportError(f"input_tail must be 0..1000 standard deviations, got {input_tail}")
    return QuantOptions(weight_bits=weight_bits, act_bits=act_bits, out_bits=out_bits,
                        per_channel=not per_tensor, input_range=input_range,
                        calib_method=calib_method, bias_correction=bias_correction,
                        equalize=equalize,
                        input_sigmas=None if input_tail is None else float(input_tail))


def export(model, calib=None, out: str | Path | None = "out", *, input_mean=None,
           input_std=None, input_range=None, input_bits: int | None = None,
           weight_bits: int = 8, act_bits: int = 8, out_bits: int = 16,
           per_tensor: bool = False, calib_method: str = "minmax",
           bias_correction: str = "bias", equalize: str = "auto", input_tail: float | None = None,
           module: str | None = None, module_args=None,
           arch=None, trust_pickle: bool = False, name: str = "model",
           mpy: bool = True, max_size_mb: float | None = None) -> Exported:
    """Export any accepted model form to fixed point; writes out/model.mlp (+ module
    forms) unless out is None. The keyword options are the CLI's."""
    mean = None if input_mean is None else np.atleast_1d(np.asarray(input_mean, np.float64))
    std = None if input_std is None else np.atleast_1d(np.asarray(input_std, np.float64))
    if (mean is None) != (std is None):
        raise ExportError("input_mean and input_std go together")
    opts = quant_options(weight_bits, act_bits, out_bits, per_tensor, input_range, input_bits,
                         calib_method, bias_correction, equalize, input_tail)
    res: ExportResult = export_model(model, out, calib, opts, mean, std, module=module,
                                     module_args=module_args, arch=arch,
                                     trust_pickle=trust_pickle, name=name, mpy=mpy,
                                     max_size_mb=max_size_mb)
    return Exported(res.model, res.paths, res.source)


def finetune(model, x, y, calib=None, *, epochs: int = 20, lr: float = 1e-4,
             input_mean=None, input_std=None, weight_bits: int = 8, act_bits: int = 8,
             out_bits: int = 16, per_tensor: bool = False, calib_method: str = "minmax",
             bias_correction: str = "bias", equalize: str = "auto", input_tail: float | None = None,
             progress: bool = True):
    """Quantization-aware fine-tuning (host/qat.py): returns an nn.Sequential over raw
    inputs, trained through the exact grids the exporter chooses for it. Export it
    with the same options, equalize="off" and bias_correction="off"."""
    from .qat import finetune as _finetune

    opts = quant_options(weight_bits, act_bits, out_bits, per_tensor, None, None,
                         calib_method, bias_correction, equalize, input_tail)
    return _finetune(model, x, y, calib, epochs=epochs, lr=lr, opts=opts, mean=input_mean,
                     std=input_std, progress=progress)


def load(path: str | Path, float_model=None) -> Exported:
    """A .mlp file (checked on load), optionally with the float model it came from."""
    src = None if float_model is None else load_source(float_model)
    return Exported(modelfile.load(path), {"mlp": Path(path)}, src)


__all__ = ["Exported", "RunResult", "export", "finetune", "load", "format_report"]
