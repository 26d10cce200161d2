"""What the exporter takes, what it refuses (by name), and the 2**30 proof."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import calib_data, make_mlp
from micromlp.export.exporter import export_checkpoint, quantize_layers
from micromlp.export.layers import ExportError
from micromlp.export.qmodel import SMALL_INT
from micromlp.export.quantize import QuantOptions, choose_multiplier
from micromlp.export.torch_import import layers_from_module, save_checkpoint
from torch import nn


@pytest.mark.parametrize(
    "module, match",
    [
        (
            nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)),
            r"layer 1 '1' \(Sigmoid\) is not supported; supported layers: Linear",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv1d(1, 1, 3)),
            r"layer 2 '2' \(Conv1d\) is not supported",
        ),
        (nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
         r"layer 0 '0' \(ReLU\): an activation before the first Linear"),
        (
            nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 2)),
            r"layer 1 \(1\): takes 4 inputs but the layer before gives 3",
        ),
        (nn.LSTM(4, 4), r"LSTM: its forward cannot be traced"),
    ],
)
def test_unsupported_models_are_refused_by_name(module, match):
    with pytest.raises(ExportError, match=match):
        layers_from_module(module)


def test_nested_sequential_and_pass_through_layers():
    inner = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Dropout(0.1))
    module = nn.Sequential(nn.Flatten(), inner, nn.Identity(), nn.Linear(6, 2)).eval()
    layers = layers_from_module(module)
    assert [(f.n_in, f.n_out, f.act) for f in layers] == [(5, 6, "relu"), (6, 2, "none")]
    assert layers[0].name == "1.0"


def test_nan_weights_are_refused():
    module = make_mlp([3, 2])
    with torch.no_grad():
        module[0].weight[1, 2] = float("nan")
    with pytest.raises(ExportError, match="layer 0 .*NaN"):
        layers_from_module(module)


def test_accumulator_past_2_pow_30_is_refused_with_advice():
    module = make_mlp([1000, 4])
    x = calib_data(1000)
    with pytest.raises(
        ExportError,
        match=r"layer 0 \(1000->4\): the accumulator can reach "
        r"\d+ >= 2\*\*30.*fewer weight or activation bits",
    ):
        quantize_layers(layers_from_module(module), x, QuantOptions(act_bits=16, weight_bits=16))
    # the same network at 8 bits fits
    model = quantize_layers(layers_from_module(module), x)
    assert all(layer.acc_bound < SMALL_INT for layer in model.layers)


@pytest.mark.parametrize("m_real", [1e-6, 0.003, 0.7, 1.0, 3.5, 1234.5])
@pytest.mark.parametrize("bound", [1, 1000, 300_000, (1 << 29)])
def test_multiplier_respects_bound_and_is_as_precise_as_allowed(m_real, bound):
    mult, shift = choose_multiplier(m_real, bound)
    if mult == 0:  # refused: even the coarsest multiplier overflows
        assert bound * max(1, round(m_real)) >= SMALL_INT or m_real * 2**30 < 0.5
        return
    rnd = (1 << (shift - 1)) if shift else 0
    assert bound * mult + rnd < SMALL_INT
    if shift < 30:  # one more bit of shift would break the bound
        m2 = int(np.floor(m_real * 2 ** (shift + 1) + 0.5))
        assert bound * m2 + (1 << shift) >= SMALL_INT
    assert abs(mult / 2**shift - m_real) <= 0.5 / 2**shift


def test_normalization_is_folded_into_the_first_layer(tmp_path):
    module = make_mlp([3, 5, 2])
    mean, std = np.array([10.0, -2.0, 0.5]), np.array([2.0, 0.5, 4.0])
    save_checkpoint(tmp_path / "m.pt", module, mean, std, {})
    rng = np.random.default_rng(0)
    x = mean + std * rng.normal(size=(300, 3))
    np.savez(tmp_path / "m.npz", x_train=x)
    res = export_checkpoint(tmp_path / "m.pt", tmp_path / "out")
    from micromlp.host import reference

    got = res.model.dequantize_output(reference.run(res.model, res.model.quantize_input(x)).out)
    with torch.no_grad():
        want = module(torch.tensor((x - mean) / std, dtype=torch.float32)).numpy()
    assert np.abs(got - want).max() <= res.error_bound
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert {p.suffix for p in res.paths.values()} == {".mlp", ".py", ".mpy"}


def test_checkpoint_errors_are_clear(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="x.pt: not a PyTorch checkpoint"):
        export_checkpoint(bad, tmp_path)
    torch.save({"hello": 1}, tmp_path / "y.pt")
    with pytest.raises(ExportError, match="y.pt: not a micromlp checkpoint"):
        export_checkpoint(tmp_path / "y.pt", tmp_path)
    with pytest.raises(ExportError, match="no such file"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path)
