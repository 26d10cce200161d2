"""`micromlp verify`: PyTorch float vs host reference vs the engine on each VM."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..export import modelfile
from . import fidelity, reference, vms


@dataclass
class VMResult:
    """How one VM's integer outputs compare with the reference."""

    vm: str
    bit_exact: float  # fraction of samples whose every output integer matches
    mismatched_samples: int
    error: str = ""


@dataclass
class VerifyReport:
    """Everything verify measured; ok is False on any mismatch, broken bound, or a
    fixed-point model that lost accuracy against its float model."""

    model: str
    samples: int
    vms: list[VMResult] = field(default_factory=list)
    float_model: str = ""  # what the float outputs come from (PyTorch, onnxruntime, ...)
    float_accuracy: float | None = None
    fixed_accuracy: float | None = None
    top1_agreement: float | None = None
    max_abs_error: float | None = None
    max_abs_error_unsaturated: float | None = None
    error_bound: float = 0.0
    saturated_samples: int = 0
    output_range: float | None = None
    max_accuracy_drop: float = 0.01  # fail when fixed accuracy < float - this
    min_agreement: float = 0.99  # fail when top-1 agreement with float is below this
    per_class: dict = field(default_factory=dict)  # class -> {float, fixed, samples}
    confusion: list = field(default_factory=list)  # [true][predicted] of the fixed point
    notes: list[str] = field(default_factory=list)
    # per sample, over its input cell (host/fidelity.certify): median and max of the
    # bound on |fixed - float|, the fraction whose class it certifies (None: regression)
    cell_bound_median: float | None = None
    cell_bound_max: float | None = None
    certified: float | None = None
    clipped_features: list = field(default_factory=list)  # host/fidelity.input_clipping
    cell_bound_broken: bool = False  # an observed error above its cell bound: a bug
    # verify(..., layers=True): per layer, host/fidelity.layer_report's row with
    # layer_alone's (the output error when only this layer is quantized) merged in
    layers: list = field(default_factory=list)
    # "classification" (accuracy, top-1 agreement) or "regression" (R², errors per output)
    task: str = "classification"
    float_r2: float | None = None  # regression with targets: R² averaged over the outputs
    fixed_r2: float | None = None
    max_r2_drop: float = 0.01  # fail when fixed R² < float R² - this
    max_mean_error: float = 0.02  # fail when an output's mean error is above this * span
    # regression, per output: span (of the float outputs), max/mean |fixed - float| and
    # the same as fractions of the span, R² of float and fixed against the targets
    outputs: list = field(default_factory=list)

    @property
    def bit_exact(self) -> bool:
        return all(r.bit_exact == 1.0 and not r.error for r in self.vms)

    @property
    def bounded(self) -> bool:
        return (
            self.max_abs_error_unsaturated is None
            or self.max_abs_error_unsaturated <= self.error_bound
        )

    @property
    def failures(self) -> list[str]:
        """Why the result is FAILED (empty when OK)."""
        why = []
        if not self.bit_exact:
            why.append("a VM computed other integers than the host reference")
        if not self.bounded:
            why.append("the error exceeds the exporter's proven bound")
        if self.cell_bound_broken:
            why.append("an error exceeds its per-sample cell bound (a bug in the bound)")
        if self.float_accuracy is not None and self.fixed_accuracy is not None and (
                self.fixed_accuracy < self.float_accuracy - self.max_accuracy_drop - 1e-12):
            why.append(f"fixed-point accuracy {100 * self.fixed_accuracy:.2f} % is more than "
                       f"{100 * self.max_accuracy_drop:.2g} points below float "
                       f"{100 * self.float_accuracy:.2f} %")
        if self.top1_agreement is not None and self.top1_agreement < self.min_agreement:
            why.append(f"top-1 agreement with the float model {100 * self.top1_agreement:.2f} % "
                       f"is below {100 * self.min_agreement:.3g} %")
        if self.float_r2 is not None and self.fixed_r2 is not None and (
                self.fixed_r2 < self.float_r2 - self.max_r2_drop - 1e-12):
            why.append(f"fixed-point R² {self.fixed_r2:.4f} is more than {self.max_r2_drop:.3g} "
                       f"below float {self.float_r2:.4f}")
        for o in self.outputs:
            if o.get("mean_error") is not None and o["mean_error"] > self.max_mean_error:
                why.append(f"output {o['output']}: mean |fixed - float| is "
                           f"{100 * o['mean_error']:.3g} % of its span, above "
                           f"{100 * self.max_mean_error:.3g} %")
        return why

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, bit_exact_all=self.bit_exact, within_bound=self.bounded,
                 failures=self.failures)
        return d


def load_data(path: str | Path, split: str = "test", label_column=None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) from a data file (see micromlp.export.data.load_xy)."""
    from ..export.data import load_xy

    return load_xy(path, split, label_column)


def verify(
    mlp_path: str | Path,
    data_path: str | Path,
    float_model=None,
    vm_names: tuple[str, ...] = vms.FIRMWARE_VMS,
    split: str = "test",
    max_accuracy_drop: float = 0.01,
    min_agreement: float = 0.99,
    label_column=None,
    layers: bool = False,
    task: str = "auto",
    max_mean_error: float = 0.02,
) -> VerifyReport:
    """verify_arrays on a data file; float_model is any form micromlp exports (a path
    or an object) or a Source."""
    x, y = load_data(data_path, split, label_column)
    source = None
    if float_model is not None:
        from ..export.sources import load_source

        source = load_source(float_model)
    return verify_arrays(mlp_path, x, y, source, vm_names, max_accuracy_drop, min_agreement,
                         layers, task, str(data_path), max_mean_error)


TASKS = ("auto", "classification", "regression")


def task_of(task: str, source=None, y=None) -> str:
    """The task verify checks: as given, else a scikit-learn regressor's, else regression
    for targets that are not class labels (several columns, or fractional values)."""
    from ..export.layers import ExportError

    if task not in TASKS:
        raise ExportError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != "auto":
        return task
    if source is not None and source.info.get("task"):
        return source.info["task"]
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 2 or y.dtype.kind == "f" and np.any(y != np.round(y)):
            return "regression"
    return "classification"


def verify_arrays(
    mlp_path: str | Path,
    x: np.ndarray,
    y: np.ndarray | None = None,
    source=None,
    vm_names: tuple[str, ...] = vms.FIRMWARE_VMS,
    max_accuracy_drop: float = 0.01,
    min_agreement: float = 0.99,
    layers: bool = False,
    task: str = "auto",
    data_name: str = "the inputs",
    max_mean_error: float = 0.02,
) -> VerifyReport:
    """Compare every VM with the reference bit for bit, and the reference with the float
    model (a Source) when one is given; with layers, where the error comes from, layer
    by layer (needs the float model). task: classification (accuracy, top-1 agreement),
    regression (R², error per output; max_mean_error: the largest mean |fixed - float| an
    output may have, as a fraction of its span) or auto (task_of)."""
    from ..export.data import check_inputs, targets_of
    from ..export.layers import ExportError

    if layers and source is None:
        raise ExportError("the per-layer report needs the float model the file was "
                          "exported from (--float MODEL)")
    model = modelfile.load(mlp_path)
    data_notes: list[str] = []
    x = check_inputs(x, data_name, model.n_inputs, data_notes)
    if len(x) == 0:
        raise ExportError(f"{mlp_path}: no samples to verify on (0 rows)")
    if y is not None:
        y = targets_of(y)
        if len(y) != len(x):
            raise ExportError(f"{len(y)} labels for {len(x)} samples")
    task = task_of(task, source, y)
    targets = None
    if task == "regression" and y is not None:
        targets = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if targets.shape[1] != model.n_outputs:
            raise ExportError(f"the targets have {targets.shape[1]} columns, the model "
                              f"{model.n_outputs} outputs")
    xq = model.quantize_input(x)
    ref = reference.run(model, xq)
    saturated = ref.saturated | fidelity.outside_range(model, x).any(axis=1)
    rep = VerifyReport(
        model=str(mlp_path),
        samples=len(x),
        error_bound=model.error_bound,
        saturated_samples=int(saturated.sum()),
        max_accuracy_drop=max_accuracy_drop,
        min_agreement=min_agreement,
        task=task,
        notes=data_notes,
        max_mean_error=max_mean_error,
    )
    for vm in vm_names:
        try:
            out = vms.run_firmware(vm, mlp_path, xq, model.n_outputs)
        except vms.VMError as e:
            rep.vms.append(VMResult(vm, 0.0, len(x), str(e)))
            continue
        same = np.all(out == ref.out, axis=1)
        rep.vms.append(VMResult(vm, float(same.mean()), int((~same).sum())))
    pred = np.argmax(ref.out, axis=1)
    fixed = model.dequantize_output(ref.out)
    labels = None
    if y is not None and task == "classification":
        labels = _class_indices(y, model.n_outputs)
        if labels is not None:
            rep.fixed_accuracy = float((pred == labels).mean())
    yf = None
    if source is not None:
        rep.float_model = source.runtime_name or source.kind
        yf, cls = source.evaluate(x)
        if yf.shape[1] != model.n_outputs:
            raise ExportError(f"the float model ({source.name or source.kind}) gives "
                              f"{yf.shape[1]} outputs, {mlp_path} {model.n_outputs}: not the "
                              f"model it was exported from")
        err = np.abs(fixed - yf).max(axis=1)
        rep.max_abs_error = float(err.max())
        rep.max_abs_error_unsaturated = float(err[~saturated].max()) if (~saturated).any() else None
        rep.output_range = float(np.abs(yf).max())
        if model.n_outputs > 1 and task == "classification":
            rep.top1_agreement = float((cls == pred).mean())
            if labels is not None:
                rep.float_accuracy = float((cls == labels).mean())
        float_layers = fidelity.matching_layers(model, source)
        _certify(rep, model, float_layers, x)
        if task == "regression":  # no class to certify
            rep.certified = None
        if layers:
            _layers(rep, model, float_layers, x)
        if not rep.bounded:
            rep.notes.append("an error past the proven bound means the float model here is "
                             "not the one exported: other weights, or another input "
                             "normalization (pass --input-mean/--input-std as given to export)")
        if not source.comparable:
            rep.notes.append(f"errors are against the float layer list (the {rep.float_model} "
                             f"model's answer is probabilities); classes against "
                             f"{rep.float_model}")
    if task == "regression":
        _regression(rep, fixed, yf, targets)
    rep.clipped_features = fidelity.input_clipping(model, x)
    if labels is not None and model.n_outputs > 1:
        n = model.n_outputs
        conf = np.zeros((n, n), dtype=int)
        np.add.at(conf, (labels, pred), 1)
        rep.confusion = conf.tolist()
        fcls = cls if source is not None else None
        for c in range(n):
            m = labels == c
            if m.any():
                rep.per_class[str(c)] = {
                    "samples": int(m.sum()), "fixed": float((pred[m] == c).mean()),
                    "float": None if fcls is None else float((fcls[m] == c).mean())}
    return rep


def _certify(rep: VerifyReport, model, layers: list, x: np.ndarray) -> None:
    """The per-cell bounds and certified classes against the float layers (raw input
    units, unit for unit as in the file: fidelity.matching_layers)."""
    cert = fidelity.certify(model, layers, x)
    rep.cell_bound_median = float(np.median(cert.bound))
    rep.cell_bound_max = float(cert.bound.max())
    rep.certified = float(cert.certified.mean()) if model.n_outputs > 1 else None
    rep.cell_bound_broken = bool(np.any(cert.observed > cert.bound * (1 + 1e-9) + 1e-12))


def _r2(target: np.ndarray, pred: np.ndarray) -> float:
    """The coefficient of determination of one output (scikit-learn's r2_score)."""
    total = float(((target - target.mean()) ** 2).sum())
    resid = float(((target - pred) ** 2).sum())
    return 1.0 - resid / total if total > 0 else (1.0 if resid == 0 else 0.0)


def _regression(rep: VerifyReport, fixed: np.ndarray, yf: np.ndarray | None,
                targets: np.ndarray | None) -> None:
    """Per output: the error against the float model as a fraction of the output's span,
    and R² of float and fixed point against the targets."""
    ref = yf if yf is not None else targets
    for j in range(fixed.shape[1]):
        row = {"output": j, "span": None, "max_abs_error": None, "mean_abs_error": None,
               "max_error": None, "mean_error": None, "float_r2": None, "fixed_r2": None}
        if ref is not None:
            span = float(ref[:, j].max() - ref[:, j].min()) or 1.0
            row["span"] = span
        if yf is not None:
            e = np.abs(fixed[:, j] - yf[:, j])
            row.update(max_abs_error=float(e.max()), mean_abs_error=float(e.mean()),
                       max_error=float(e.max()) / span, mean_error=float(e.mean()) / span)
        if targets is not None:
            row["fixed_r2"] = _r2(targets[:, j], fixed[:, j])
            if yf is not None:
                row["float_r2"] = _r2(targets[:, j], yf[:, j])
        rep.outputs.append(row)
    if targets is not None:
        rep.fixed_r2 = float(np.mean([o["fixed_r2"] for o in rep.outputs]))
        if yf is not None:
            rep.float_r2 = float(np.mean([o["float_r2"] for o in rep.outputs]))


def _layers(rep: VerifyReport, model, layers: list, x: np.ndarray) -> None:
    """Per layer: where the error comes from (host/fidelity), against the same layers."""
    for row, alone in zip(fidelity.layer_report(model, layers, x),
                          fidelity.layer_alone(model, layers, x), strict=True):
        row.update(alone_mean_error=alone["mean_error"], alone_max_error=alone["max_error"],
                   alone_agreement=alone["agreement"])
        rep.layers.append(row)


def _class_indices(y: np.ndarray, n_outputs: int) -> np.ndarray | None:
    """Labels as class indices 0..n-1 (None for regression targets)."""
    y = np.asarray(y)
    if n_outputs < 2 or y.dtype.kind == "f" and np.any(y != np.round(y)):
        return None
    yi = y.astype(np.int64)
    if yi.min() < 0 or yi.max() >= n_outputs:
        return None
    return yi


def format_report(rep: VerifyReport) -> str:
    """The report as text."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    lines = [f"verify {rep.model} on {rep.samples} samples"]
    for r in rep.vms:
        status = (
            "ERROR " + r.error
            if r.error
            else ("bit-exact" if r.bit_exact == 1.0 else f"{r.mismatched_samples} samples differ")
        )
        lines.append(f"  {r.vm:<9} vs reference: {pct(r.bit_exact)} identical  ({status})")
    if rep.float_accuracy is not None:
        lines.append(
            f"  accuracy: float ({rep.float_model}) {pct(rep.float_accuracy)}, fixed-point "
            f"{pct(rep.fixed_accuracy)} "
            f"({100 * (rep.fixed_accuracy - rep.float_accuracy):+.2f} points)"
        )
    elif rep.fixed_accuracy is not None:
        lines.append(f"  accuracy: fixed-point {pct(rep.fixed_accuracy)}")
    if rep.top1_agreement is not None:
        lines.append(f"  top-1 agreement with {rep.float_model}: {pct(rep.top1_agreement)}")
    if rep.fixed_r2 is not None:
        r2 = f"fixed-point {rep.fixed_r2:.4f}"
        if rep.float_r2 is not None:
            r2 = (f"float ({rep.float_model}) {rep.float_r2:.4f}, {r2} "
                  f"({rep.fixed_r2 - rep.float_r2:+.4f})")
        lines.append(f"  R² (regression, mean over {len(rep.outputs)} outputs): {r2}")
    for o in rep.outputs[:16]:
        if o["mean_abs_error"] is not None:
            lines.append(f"  output {o['output']}: |fixed - float| max {o['max_abs_error']:.4g} "
                         f"({pct(o['max_error'])} of its span {o['span']:.4g}), mean "
                         f"{o['mean_abs_error']:.4g} ({pct(o['mean_error'])})")
    if rep.max_abs_error is not None:
        lines.append(
            f"  max |fixed - float| output: {rep.max_abs_error:.4g} "
            f"(outputs span +-{rep.output_range:.4g})"
        )
        within = "within" if rep.bounded else "NOT within"
        unsat = rep.max_abs_error_unsaturated
        lines.append(
            f"  on the {rep.samples - rep.saturated_samples} samples that saturate no clamp: "
            f"{'n/a' if unsat is None else f'{unsat:.4g}'}, {within} the exporter's "
            f"proven bound {rep.error_bound:.4g}"
        )
    if rep.cell_bound_median is not None:
        cert = "" if rep.certified is None else (
            f"; the float model's class equals the board's in the whole cell for "
            f"{pct(rep.certified)} of samples")
        lines.append(
            f"  per-sample bound over each input's cell (affine arithmetic): median "
            f"{rep.cell_bound_median:.4g}, max {rep.cell_bound_max:.4g}{cert}")
    for c in rep.clipped_features[:8]:
        lines.append(f"  input feature {c['feature']}: {pct(c['fraction'])} of samples outside "
                     f"its range [{c['range'][0]:.4g}, {c['range'][1]:.4g}] (clamped)")
    if len(rep.clipped_features) > 8:
        lines.append(f"  ... and {len(rep.clipped_features) - 8} more clipped features")
    if rep.layers:
        lines.append(layers_table(rep.layers, indent="  "))
    lines += [f"  note: {n}" for n in rep.notes]
    lines.append("  result: " + ("OK" if rep.ok else "FAILED: " + "; ".join(rep.failures)))
    return "\n".join(lines)


def layers_table(rows: list[dict], indent: str = "") -> str:
    """verify's per-layer rows as text: the quantized network against float, layer by
    layer, then the output error with only that layer quantized."""
    lines = [
        "per layer (float outputs of each layer against the board's; \"alone\": the "
        "network's output error with only this layer quantized, % of the output span):",
        f"{'#':>3} {'shape':>9} {'SQNR dB':>8} {'max err':>9} {'p99 err':>9} "
        f"{'in range':>9} {'bound':>9} {'clipped':>8} {'levels used':>13} "
        f"{'alone mean':>10} {'alone max':>9} {'alone top-1':>11}"]
    for r in rows:
        sq = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        agree = "" if r["alone_agreement"] is None else f"{100 * r['alone_agreement']:.2f} %"
        lines.append(
            f"{r['layer']:>3} {r['shape']:>9} {sq:>8} {r['max_abs_error']:>9.3g} "
            f"{r['p99_abs_error']:>9.3g} {r['max_abs_error_in_range']:>9.3g} "
            f"{r['error_bound']:>9.3g} {100 * r['clipped']:>7.2f}% "
            f"{r['levels_used']:>6}/{r['grid_levels']:<6} "
            f"{100 * r['alone_mean_error']:>9.3f}% {100 * r['alone_max_error']:>8.3f}% "
            f"{agree:>11}")
    lines.append("('in range': max error over samples no clamp has touched up to that layer, "
                 "which the layer's proven bound holds)")
    return "\n".join(indent + ln for ln in lines)
