"""Reading inputs and labels: .npz (keys in any case), .npy and .csv (header optional).

Every value is checked finite here, so NaN or infinity is named by row and column
instead of flowing on as a wrong number.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .layers import ExportError, one_line

ACCEPTED = (".npz with x_train/x_test/x (and y_...) arrays, keys in any case (X_train too); "
            ".npy of inputs; .csv of numbers, with or without a header row "
            "(--label-column names the label column)")


def load_xy(path: str | Path, split: str = "test", label_column: str | int | None = None,
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(x [n, features] float64, y [n] or None) from a data file.

    .npz: x_<split> (X_<split>), else x (X), with y_<split>/y likewise; .npy: x only;
    .csv: every column is an input, except label_column (a header name or an index).
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: data file not found")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder, expected a data file ({ACCEPTED})")
    try:
        if path.suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        elif path.suffix == ".npz":
            x, y = _from_npz(path, split)
        elif path.suffix == ".csv":
            x, y = _from_csv(path, label_column)
        else:
            raise ExportError(f"{path}: unknown data file type; accepted: {ACCEPTED}")
    except ExportError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ExportError(f"{path}: cannot be read ({one_line(e)})") from None
    # checked here, flattened where they are used (check_inputs again, which notes it)
    return check_inputs(x, str(path)).reshape(np.shape(x)), (
        None if y is None else targets_of(y))


def targets_of(y) -> np.ndarray:
    """y as [n] (class labels, one target) or [n, k] (k regression targets)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y
    return y.reshape(-1)


def check_inputs(x, what: str, n_features: int | None = None,
                 notes: list[str] | None = None) -> np.ndarray:
    """x as a finite float64 [n, features] array, or a named error. Samples of any shape
    (N, ...), images for a model that starts with nn.Flatten, are flattened to rows
    (with a note in notes)."""
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{what}: inputs are not numbers ({one_line(e)})") from None
    shape = x.shape
    if x.ndim == 1:
        x = x[None, :]
    elif x.ndim > 2:
        x = x.reshape(len(x), -1)
        if notes is not None and (n_features is None or x.shape[1] == n_features):
            notes.append(f"{what}: samples of shape {shape[1:]} taken as rows of "
                         f"{x.shape[1]} values (flattened, as nn.Flatten does)")
    if x.ndim != 2:
        raise ExportError(f"{what}: inputs have shape {x.shape}, expected [samples, features]")
    if n_features is not None and x.shape[1] != n_features:
        per = "rows have" if len(shape) <= 2 else f"samples of shape {shape[1:]} have"
        raise ExportError(f"{what}: {per} {x.shape[1]} values, the model takes "
                          f"{n_features}{_extra_column_hint(x, n_features)}")
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ExportError(f"{what}: row {r}, column {c} is {x[r, c]} (NaN and infinity are "
                          f"not inputs); {int(bad.sum())} such values in all")
    return x


def _extra_column_hint(x: np.ndarray, n_features: int) -> str:
    """Why a file might hold one value too many per row."""
    if x.shape[1] != n_features + 1:
        return ""
    if len(x) > 1 and np.array_equal(x[:, 0], np.arange(len(x)) + x[0, 0]):
        return ("; its first column counts 0, 1, 2, ...: a pandas index? "
                "(DataFrame.to_csv(index=False) leaves it out)")
    return "; one too many: if a column is the label, name it with --label-column"


def _from_npz(path: Path, split: str):
    with np.load(path, allow_pickle=False) as d:
        keys = {k.lower(): k for k in d.files}
        for xk, yk in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if xk in keys:
                return d[keys[xk]], (d[keys[yk]] if yk in keys else None)
        raise ExportError(f"{path}: no 'x_{split}' or 'x' array (any case; has: "
                          f"{', '.join(d.files)})")


def _from_csv(path: Path, label_column):
    lines = path.read_text().splitlines()
    if not lines:
        raise ExportError(f"{path}: empty")
    first = [c.strip() for c in lines[0].split(",")]
    header = None
    try:
        [float(c) for c in first]
    except ValueError:
        header = first
    body = np.loadtxt(lines[1:] if header else lines, delimiter=",", ndmin=2)
    if label_column is None:
        return body, None
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        if not header or label_column not in header:
            raise ExportError(f"{path}: no column named {label_column!r} "
                              f"(header: {header or 'none'})")
        col = header.index(label_column)
    else:
        col = int(label_column) % body.shape[1]
    return np.delete(body, col, axis=1), body[:, col]
