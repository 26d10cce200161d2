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
    return check_inputs(x, str(path)), None if y is None else np.asarray(y).reshape(-1)


def check_inputs(x, what: str, n_features: int | None = None) -> np.ndarray:
    """x as a finite float64 [n, features] array, or a named error."""
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{what}: inputs are not numbers ({one_line(e)})") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ExportError(f"{what}: inputs have shape {x.shape}, expected [samples, features]")
    if n_features is not None and x.shape[1] != n_features:
        raise ExportError(f"{what}: rows have {x.shape[1]} values, the model takes "
                          f"{n_features}")
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ExportError(f"{what}: row {r}, column {c} is {x[r, c]} (NaN and infinity are "
                          f"not inputs); {int(bad.sum())} such values in all")
    return x


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
