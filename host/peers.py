"""Other post-training quantizers on the same float models, for the fidelity study
(host/study.py): onnxruntime's quantize_static (QDQ, per-channel weights; int8 and
int16) and PyTorch's eager-mode post-training quantization (x86 and qnnpack engines).
Each returns the quantized model's outputs on the test rows, so the study measures
them exactly as it measures micromlp's."""

from __future__ import annotations

import copy
import logging
import os
import tempfile

import numpy as np
import torch


class _Norm(torch.nn.Module):
    """The input normalization micromlp folds into the first layer, as a float op."""

    def __init__(self, mu, sd):
        super().__init__()
        self.mu = torch.tensor(np.asarray(mu), dtype=torch.float32)
        self.sd = torch.tensor(np.asarray(sd), dtype=torch.float32)

    def forward(self, x):
        return (x - self.mu) / self.sd


def _with_norm(m: torch.nn.Module, norm: dict) -> torch.nn.Module:
    return torch.nn.Sequential(_Norm(norm["input_mean"], norm["input_std"]), m) if norm else m


def onnxruntime_outputs(m: torch.nn.Module, xtr: np.ndarray, xte: np.ndarray, norm: dict,
                        bits: int = 8) -> dict[str, np.ndarray]:
    """quantize_static (QDQ, per-channel weights) by calibration method: int8 weights
    with uint8 activations, or int16 weights with int16 activations; outputs on xte."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, x):
            self.it = iter([{"x": r[None].astype(np.float32)} for r in x])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)
    act, wt = ((QuantType.QUInt8, QuantType.QInt8) if bits == 8
               else (QuantType.QInt16, QuantType.QInt16))
    extra = {} if bits == 8 else {"UseQDQContribOps": True}
    out = {}
    with tempfile.TemporaryDirectory() as d:
        f32, qf = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
        torch.onnx.export(_with_norm(m, norm), torch.zeros(1, xtr.shape[1]), f32,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}},
                          dynamo=False)
        for meth in (CalibrationMethod.MinMax, CalibrationMethod.Percentile,
                     CalibrationMethod.Entropy):
            quantize_static(f32, qf, Reader(xtr), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=act, weight_type=wt,
                            calibrate_method=meth, extra_options=extra)
            sess = ort.InferenceSession(qf, providers=["CPUExecutionProvider"])
            out[meth.name] = sess.run(None, {"x": xte.astype(np.float32)})[0].astype(np.float64)
    return out


def torch_ptq_outputs(m: torch.nn.Module, xtr: np.ndarray, xte: np.ndarray, norm: dict
                      ) -> dict[str, np.ndarray]:
    """PyTorch eager post-training quantization (Linear+ReLU fused, the engine's default
    qconfig: x86 = per-channel int8 weights, histogram-calibrated 7-bit activations;
    qnnpack = per-tensor weights, 8-bit activations); outputs on xte."""
    from torch.ao import quantization as tq

    class Wrapped(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.quant, self.body, self.dequant = tq.QuantStub(), body, tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.body(self.quant(x)))

    out = {}
    for engine in ("x86", "qnnpack"):
        body = copy.deepcopy(m).eval()
        pairs = [[str(i), str(i + 1)] for i in range(len(body) - 1)
                 if isinstance(body[i], torch.nn.Linear) and isinstance(body[i + 1],
                                                                        torch.nn.ReLU)]
        if pairs:
            body = tq.fuse_modules(body, pairs)
        w = Wrapped(body).eval()
        torch.backends.quantized.engine = engine
        w.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(w, inplace=True)
        xin = _with_norm(torch.nn.Identity(), norm)
        with torch.no_grad():
            w(xin(torch.tensor(xtr, dtype=torch.float32)))
            tq.convert(w, inplace=True)
            out["torch " + engine] = w(xin(torch.tensor(xte, dtype=torch.float32))).numpy(
            ).astype(np.float64)
    return out


__all__ = ["onnxruntime_outputs", "torch_ptq_outputs"]
