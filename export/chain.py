"""The chain builder every importer feeds: ops in forward order → checked layer list.

A PyTorch module, a torch.fx / torch.export / TorchScript graph and an ONNX graph are
each walked node by node; every node becomes one call here (a linear op, an
activation, an elementwise op with a constant, a BatchNorm, a pass-through, or a
trailing op such as Softmax). Elementwise preprocessing before the first linear op
(``(x - mean) / std``, a scaler) and elementwise constants right after a linear op
are folded into that op's weights and bias, so the board still runs Linear + ReLU.
"""

from __future__ import annotations

import numpy as np

from .fold import fold_batchnorm, fold_input_affine
from .layers import ExportError, FloatLayer, check

# The note that says a trailing op was dropped: the source's own outputs are then its
# probabilities (or a label), not the layer list's outputs.
_DROPPED = "dropped the trailing "


def dropped_trailing(notes: list[str]) -> bool:
    """Whether the notes of a chain say a trailing Softmax/Sigmoid/... was dropped."""
    return any(n.startswith(_DROPPED) for n in notes)


class ChainBuilder:
    """Collects FloatLayers from a chain of ops; refuses what it cannot compute exactly."""

    def __init__(self) -> None:
        self.layers: list[FloatLayer] = []
        self.notes: list[str] = []
        self.ended: str | None = None  # where the trailing op that ended the MLP is
        self.sigmoid = False
        self._scale: np.ndarray | float = 1.0  # pending input preprocessing x' = s x + c
        self._offset: np.ndarray | float = 0.0
        self._pre: list[str] = []

    # -- the ops -----------------------------------------------------------------
    def linear(self, weight, bias, name: str, where: str) -> None:
        """y = W x + b with W [n_out, n_in]; b may be None."""
        self._not_ended(where)
        w = np.array(weight, dtype=np.float64)
        if w.ndim != 2:
            raise ExportError(f"{where}: weight has shape {w.shape}, expected a matrix")
        b = None if bias is None else np.array(bias, dtype=np.float64).reshape(-1)
        if b is not None and b.size == 1 and w.shape[0] != 1:
            b = np.full(w.shape[0], float(b[0]))
        layer = FloatLayer(w, b, "none", name)
        if not self.layers and self._pre:
            scale, offset = self._broadcast(self._scale, w.shape[1], where), \
                self._broadcast(self._offset, w.shape[1], where)
            layer = fold_input_affine(layer, scale, offset, "folded input preprocessing")
            self.notes.append(f"folded the input preprocessing ({', '.join(self._pre)}) into "
                              f"the first layer: the board takes the raw inputs")
        self.layers.append(layer)

    def activation(self, kind: str, where: str, lo: float = 0.0, hi: float = 0.0) -> None:
        """kind: relu, clamp (to [lo, hi], either may be infinite), leaky (slope lo)."""
        self._not_ended(where)
        if not self.layers:
            raise ExportError(f"{where}: an activation before the first linear op is not "
                              f"supported")
        try:
            self.layers[-1].then(kind, lo, hi)
        except ExportError as e:
            raise ExportError(f"{where}: {e}") from None

    def elementwise(self, op: str, const, where: str, const_first: bool = False) -> None:
        """x op const (or const op x): sub, add, mul, div with a constant."""
        self._not_ended(where)
        k = np.array(const, dtype=np.float64)
        if k.ndim > 1:
            if any(d != 1 for d in k.shape[:-1]):
                raise ExportError(f"{where}: {op} with a constant of shape {k.shape}: only a "
                                  f"scalar or one value per feature can be folded")
            k = k.reshape(-1)
        if not np.all(np.isfinite(k)):
            raise ExportError(f"{where}: {op} with a constant that is NaN or infinite")
        scale, offset = 1.0, 0.0  # this op as x -> scale x + offset
        if op == "add":
            offset = k
        elif op == "sub":
            scale, offset = (-1.0, k) if const_first else (1.0, -k)
        elif op == "mul":
            scale = k
        elif op == "div" and not const_first:
            if np.any(k == 0):
                raise ExportError(f"{where}: division by zero")
            scale = 1.0 / k
        else:
            raise ExportError(f"{where}: {'constant / x' if op == 'div' else op} is not a "
                              f"linear map and cannot be folded")
        if not self.layers:
            self._scale = self._scale * scale
            self._offset = self._offset * scale + offset
            self._pre.append(f"{op} {_short(k)}")
            return
        last = self.layers[-1]
        if last.act != "none":
            raise ExportError(f"{where}: {op} by a constant after an activation cannot be "
                              f"folded; it is supported before the first linear op (input "
                              f"preprocessing) or right after a linear op")
        s = self._broadcast(scale, last.n_out, where)
        c = self._broadcast(offset, last.n_out, where)
        last.weight = last.weight * s[:, None]
        if last.bias is not None:
            last.bias = last.bias * s + c
        elif np.any(c != 0):
            last.bias, last.bias_note = c.copy(), f"folded {op}"

    def batchnorm(self, gamma, beta, mean, var, eps: float, where: str,
                  training: bool = False) -> None:
        """BatchNorm with running statistics: folded into the linear op before it, or
        into the input preprocessing when it comes first."""
        self._not_ended(where)
        if training:
            raise ExportError(f"{where}: BatchNorm in training mode uses the batch's "
                              f"statistics; export the model in eval mode")
        g, bt = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
        m, v = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        if not self.layers:
            scale = g / np.sqrt(v + eps)
            self.elementwise("mul", scale, where)
            self.elementwise("add", bt - m * scale, where)
            return
        if self.layers[-1].act != "none":
            raise ExportError(f"{where}: BatchNorm after an activation cannot be folded; "
                              f"put it right after the linear op")
        self.layers[-1] = fold_batchnorm(self.layers[-1], g, bt, m, v, eps, where)

    def trailing(self, kind: str, where: str, axis: int | None = -1) -> None:
        """A trailing Softmax / LogSoftmax / ArgMax / Sigmoid: dropped (same class)."""
        if axis is not None and axis in (0, -2):
            raise ExportError(f"{where}: {kind} along axis {axis} mixes the samples of a "
                              f"batch; only the feature axis (-1 or 1) is supported")
        if not self.layers:
            raise ExportError(f"{where}: {kind} before any linear op is not supported")
        if self.ended is None:
            self.ended = where
            self.sigmoid = kind == "sigmoid"
            self.notes.append(f"{_DROPPED}{kind} ({where}): the board's argmax of the outputs "
                              f"gives the same class")
        else:
            self.notes.append(f"dropped {kind} after {self.ended}")

    def clip(self, lo: float | None, hi: float | None, where: str) -> None:
        """Clip/clamp with either bound optional (None); min > max is refused, since it
        computes the max everywhere; no bounds is the identity."""
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        if lo > hi:
            raise ExportError(f"{where}: Clip with min {lo} > max {hi}")
        if lo == 0 and hi == np.inf:
            self.activation("relu", where)
        elif np.isfinite(lo) or np.isfinite(hi):
            self.activation("clamp", where, lo, hi)

    # -- the result --------------------------------------------------------------
    def finish(self) -> tuple[list[FloatLayer], list[str]]:
        """The checked layer list, and notes on what was folded or dropped."""
        if not self.layers:
            raise ExportError("the model has no linear layer (Linear, Gemm or MatMul)")
        last = self.layers[-1]
        if self.sigmoid and last.n_out == 1:
            # one logit z -> two outputs [-z/2, z/2]: argmax is (z > 0), and their
            # softmax is exactly [1 - sigmoid(z), sigmoid(z)].
            last.weight = np.vstack([-last.weight / 2, last.weight / 2])
            if last.bias is not None:
                last.bias = np.concatenate([-last.bias / 2, last.bias / 2])
            if last.act != "none":
                raise ExportError(f"{self.ended}: a Sigmoid after an activation is not "
                                  f"supported")
            self.notes.append("binary classifier: its one logit z became two outputs "
                              "[-z/2, z/2], whose argmax is the class and whose softmax is "
                              "[1 - sigmoid(z), sigmoid(z)]")
        return check(self.layers), self.notes

    # -- helpers -----------------------------------------------------------------
    def _not_ended(self, where: str) -> None:
        if self.ended is not None:
            raise ExportError(f"{where}: comes after {self.ended}, which is supported only "
                              f"at the end of the model (an MLP followed by Softmax, "
                              f"LogSoftmax, ArgMax or Sigmoid)")

    @staticmethod
    def _broadcast(v, n: int, where: str) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.size == 1:
            return np.full(n, float(v[0]))
        if v.size != n:
            raise ExportError(f"{where}: a constant with {v.size} values meets {n} features")
        return v


def _short(k: np.ndarray) -> str:
    k = np.asarray(k).reshape(-1)
    return f"{k[0]:.4g}" if k.size == 1 else f"[{k.size} values]"
