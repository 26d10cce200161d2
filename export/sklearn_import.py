"""scikit-learn → Source: MLPClassifier / MLPRegressor from coefs_ and intercepts_,
alone or at the end of a Pipeline whose earlier steps are scalers (folded)."""

from __future__ import annotations

import numpy as np

from .chain import ChainBuilder
from .layers import ExportError

_ACTS = ("relu", "identity")
_SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler")


def _scaler(b: ChainBuilder, step, where: str) -> None:
    """A fitted scaler as x -> x * scale + offset before the first layer."""
    name = type(step).__name__
    if name == "StandardScaler":
        if step.with_mean:
            b.elementwise("sub", step.mean_, where)
        if step.with_std:
            b.elementwise("div", step.scale_, where)
    elif name == "MinMaxScaler":
        if getattr(step, "clip", False):
            raise ExportError(f"{where}: MinMaxScaler(clip=True) is not a linear map")
        b.elementwise("mul", step.scale_, where)
        b.elementwise("add", step.min_, where)
    elif name == "MaxAbsScaler":
        b.elementwise("div", np.where(step.scale_ == 0, 1.0, step.scale_), where)
    elif name == "RobustScaler":
        if step.center_ is not None:
            b.elementwise("sub", step.center_, where)
        if step.scale_ is not None:
            b.elementwise("div", step.scale_, where)


def source_from_sklearn(est):
    """Source of a fitted MLPClassifier/MLPRegressor or Pipeline(scalers..., MLP)."""
    from .sources import Source

    steps = [("", est)]
    if type(est).__name__ == "Pipeline":
        steps = list(est.steps)
    b = ChainBuilder()
    mlp = None
    for i, (name, step) in enumerate(steps):
        kind = type(step).__name__
        where = f"step {i} '{name}' ({kind})" if name else kind
        if step in (None, "passthrough"):
            continue
        if kind in _SCALERS and mlp is None:
            _scaler(b, step, where)
        elif kind in ("MLPClassifier", "MLPRegressor") and i == len(steps) - 1:
            mlp = step
            if not hasattr(step, "coefs_"):
                raise ExportError(f"{where}: not fitted")
            if step.activation not in _ACTS:
                raise ExportError(f"{where}: activation {step.activation!r} is not supported "
                                  f"(supported: {', '.join(_ACTS)}); retrain with "
                                  f"activation='relu'")
            for j, (w, c) in enumerate(zip(step.coefs_, step.intercepts_, strict=True)):
                b.linear(np.asarray(w).T, c, f"layer{j}", f"{where} layer {j}")
                if j < len(step.coefs_) - 1 and step.activation == "relu":
                    b.activation("relu", f"{where} layer {j}")
            out = getattr(step, "out_activation_", "identity")
            if out in ("softmax", "logistic"):
                b.trailing("sigmoid" if out == "logistic" else "softmax", f"{where} output")
            elif out != "identity":
                raise ExportError(f"{where}: output activation {out!r} is not supported")
        else:
            raise ExportError(f"{where} is not supported: a Pipeline of {', '.join(_SCALERS)} "
                              f"steps ending in an MLPClassifier or MLPRegressor is")
    if mlp is None:
        raise ExportError(f"{type(est).__name__}: no MLPClassifier or MLPRegressor in it")
    layers, notes = b.finish()
    classifier = type(mlp).__name__ == "MLPClassifier"
    # logistic outputs are one binary logit, or one per label of a multi-label model
    # (whose argmax is not its answer)
    if classifier and mlp.out_activation_ == "logistic" and mlp.coefs_[-1].shape[1] > 1:
        raise ExportError(f"{type(mlp).__name__}: multi-label output is not supported")

    def runtime(x: np.ndarray) -> np.ndarray:
        return est.predict_proba(x) if classifier else est.predict(x)

    return Source(layers, notes, "sklearn", type(est).__name__,
                  info={"task": "classification" if classifier else "regression"},
                  runtime=runtime, runtime_name="scikit-learn", comparable=not classifier)
