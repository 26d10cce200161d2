"""`micromlp verify`: PyTorch float vs host reference vs the engine on each VM."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..export import modelfile
from . import reference, vms


@dataclass
class VMResult:
    """How one VM's integer outputs compare with the reference."""

    vm: str
    bit_exact: float  # fraction of samples whose every output integer matches
    mismatched_samples: int
    error: str = ""


@dataclass
class VerifyReport:
    """Everything verify measured; ok is False on any mismatch or broken bound."""

    model: str
    samples: int
    vms: list[VMResult] = field(default_factory=list)
    float_accuracy: float | None = None
    fixed_accuracy: float | None = None
    top1_agreement: float | None = None
    max_abs_error: float | None = None
    max_abs_error_unsaturated: float | None = None
    error_bound: float = 0.0
    saturated_samples: int = 0
    output_range: float | None = None

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
    def ok(self) -> bool:
        return self.bit_exact and self.bounded

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, bit_exact_all=self.bit_exact, within_bound=self.bounded)
        return d


def load_data(path: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) from an .npz written by train (x_<split>, y_<split>; or x, y) or an .npy."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: data file not found")
    if path.suffix == ".npy":
        return np.load(path), None
    with np.load(path) as d:
        for xk, yk in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if xk in d:
                return d[xk], (d[yk] if yk in d else None)
    raise ValueError(f"{path}: no 'x_{split}' or 'x' array (has: {', '.join(d.files)})")


def torch_outputs(torch_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Float outputs of the checkpoint on raw inputs x (its normalization applied)."""
    import torch

    from ..export.torch_import import load_checkpoint

    module, mean, std, _ = load_checkpoint(torch_path)
    xn = x if mean is None else (x - mean) / std
    with torch.no_grad():
        return module(torch.tensor(xn, dtype=torch.float32)).double().numpy()


def verify(
    mlp_path: str | Path,
    data_path: str | Path,
    torch_path: str | Path | None = None,
    vm_names: tuple[str, ...] = vms.FIRMWARE_VMS,
    split: str = "test",
) -> VerifyReport:
    """Compare every VM with the reference bit for bit, and the reference with PyTorch."""
    model = modelfile.load(mlp_path)
    x, y = load_data(data_path, split)
    if x.ndim != 2 or x.shape[1] != model.n_inputs:
        raise ValueError(
            f"{data_path}: inputs have shape {x.shape}, the model takes {model.n_inputs} features"
        )
    xq = model.quantize_input(x)
    raw_q = np.floor(x / model.in_scale + 0.5) + model.in_zero
    ref = reference.run(model, xq)
    saturated = ref.saturated | np.any((raw_q < model.in_lo) | (raw_q > model.in_hi), axis=1)
    rep = VerifyReport(
        model=str(mlp_path),
        samples=len(x),
        error_bound=model.error_bound,
        saturated_samples=int(saturated.sum()),
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
    if y is not None:
        rep.fixed_accuracy = float((pred == y).mean())
    if torch_path is not None:
        yf = torch_outputs(torch_path, x)
        err = np.abs(model.dequantize_output(ref.out) - yf).max(axis=1)
        rep.max_abs_error = float(err.max())
        rep.max_abs_error_unsaturated = float(err[~saturated].max()) if (~saturated).any() else None
        rep.top1_agreement = float((np.argmax(yf, axis=1) == pred).mean())
        rep.output_range = float(np.abs(yf).max())
        if y is not None:
            rep.float_accuracy = float((np.argmax(yf, axis=1) == y).mean())
    return rep


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
            f"  accuracy: float {pct(rep.float_accuracy)}, fixed-point "
            f"{pct(rep.fixed_accuracy)} "
            f"({100 * (rep.fixed_accuracy - rep.float_accuracy):+.2f} points)"
        )
    elif rep.fixed_accuracy is not None:
        lines.append(f"  accuracy: fixed-point {pct(rep.fixed_accuracy)}")
    if rep.top1_agreement is not None:
        lines.append(f"  top-1 agreement with PyTorch: {pct(rep.top1_agreement)}")
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
    lines.append("  result: " + ("OK" if rep.ok else "FAILED"))
    return "\n".join(lines)
