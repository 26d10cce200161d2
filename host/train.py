"""`micromlp train`: train a Linear/ReLU MLP on a bundled dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..export.torch_import import save_checkpoint
from . import datasets


@dataclass
class TrainResult:
    """Where train wrote its files and how the float model scored."""

    model_path: Path
    data_path: Path
    train_accuracy: float
    test_accuracy: float
    n_params: int


def make_mlp(n_in: int, hidden: list[int], n_out: int, bias: bool = True) -> nn.Sequential:
    """nn.Sequential(Linear, ReLU, ..., Linear)."""
    sizes = [n_in] + list(hidden) + [n_out]
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.tensor(x, dtype=torch.float32)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def train(
    dataset: str = "digits",
    hidden: list[int] | None = None,
    bias: bool = True,
    epochs: int = 60,
    seed: int = 0,
    out: str | Path = "model.pt",
    lr: float = 0.01,
    batch_size: int = 64,
    progress: bool = True,
    qat_epochs: int = 0,
) -> TrainResult:
    """Train on a bundled dataset; writes out (checkpoint) and its split as out.npz.
    qat_epochs > 0 then fine-tunes through the exporter's default 8-bit grids
    (host/qat.py); that checkpoint takes raw inputs (its normalization folded in)."""
    hidden = [32, 16] if hidden is None else hidden
    ds = datasets.load(dataset)
    train_idx, test_idx = datasets.split(len(ds.x), 0.2, seed)
    x_train, y_train = ds.x[train_idx], ds.y[train_idx]
    x_test, y_test = ds.x[test_idx], ds.y[test_idx]
    mean, std = datasets.normalization(ds, x_train)

    torch.manual_seed(seed)
    model = make_mlp(ds.n_features, hidden, ds.n_classes, bias=bias)
    xt = torch.tensor((x_train - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(
        range(epochs),
        desc=f"train {dataset}",
        unit="epoch",
        disable=None if progress else True,
        leave=False,
    )
    for _ in bar:
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(xt):.4f}")
    model.eval()
    info = {"dataset": dataset, "classes": list(ds.classes), "seed": seed, "epochs": epochs}
    if qat_epochs > 0:
        from .qat import finetune

        model = finetune(model, x_train, y_train, epochs=qat_epochs, mean=mean, std=std,
                         seed=seed, progress=progress)
        mean, std = np.zeros_like(mean), np.ones_like(std)  # folded into the first layer
        info["qat_epochs"] = qat_epochs

    # The checkpoint stores the normalization; the model itself sees normalized inputs.
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, mean, std, info)
    data_path = out.with_suffix(".npz")
    np.savez(data_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    norm = lambda x: (x - mean) / std  # noqa: E731
    return TrainResult(
        model_path=out,
        data_path=data_path,
        train_accuracy=accuracy(model, norm(x_train), y_train),
        test_accuracy=accuracy(model, norm(x_test), y_test),
        n_params=sum(p.numel() for p in model.parameters()),
    )
