"""The bundled datasets (copied from scikit-learn, see host/data/LICENSE)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources

import numpy as np

# name: (file, has a header line, input normalization)
# digits pixels are integers 0..16: scale them by 1/16 rather than standardizing,
# since near-constant pixels would give huge folded weights.
_FILES = {
    "digits": ("digits.csv.gz", False, "range"),
    "iris": ("iris.csv", True, "standard"),
    "wine": ("wine_data.csv", True, "standard"),
    "breast_cancer": ("breast_cancer.csv", True, "standard"),
}
NAMES = tuple(_FILES)


@dataclass
class Dataset:
    """Features x [n, n_features] (float64), labels y [n] (int64), class names."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    normalization: str

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def load(name: str) -> Dataset:
    """Load a bundled dataset by name."""
    if name not in _FILES:
        raise ValueError(f"unknown dataset {name!r}; bundled: {', '.join(NAMES)}")
    fname, has_header, norm = _FILES[name]
    raw = resources.files("micromlp.host.data").joinpath(fname).read_bytes()
    if fname.endswith(".gz"):
        raw = gzip.decompress(raw)
    lines = raw.decode("ascii").strip().splitlines()
    classes = [str(i) for i in range(10)]
    if has_header:
        classes = lines[0].split(",")[2:]
        lines = lines[1:]
    table = np.array([[float(v) for v in line.split(",")] for line in lines])
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    return Dataset(name, x, y, classes, norm)


def normalization(ds: Dataset, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) the model is trained on: x_norm = (x - mean) / std."""
    if ds.normalization == "range":
        span = float(np.abs(x_train).max()) or 1.0
        return np.zeros(ds.n_features), np.full(ds.n_features, span)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled train/test index split."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])
