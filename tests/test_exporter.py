"""What the exporter takes, what it refuses (by name), and the 2**30 proof."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import calib_data, make_mlp
from micromlp.export.exporter import export_checkpoint, quantize_layers
from micromlp.export.layers import ExportError
from micromlp.export.qmodel import MAX_SHIFT, MULT_LIMIT, SMALL_INT, SPLIT_SHIFT, requant_ok
from micromlp.export.quantize import QuantOptions, choose_multiplier
from micromlp.export.torch_import import layers_from_module, save_checkpoint
from micromlp.host import reference
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
         r"layer 0 '0' \(ReLU\): an activation before the first linear op"),
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


def test_wide_inputs_are_fitted_into_the_proof_or_refused():
    # raw 16-bit sensor integers into a 1000-wide layer: the input grid is fitted
    # (not kept exact) so that sum|w| * max|x| and the running sums stay below 2**30
    module = make_mlp([1000, 4])
    x = np.random.default_rng(0).integers(0, 60_000, size=(64, 1000)).astype(float)
    for opts in (QuantOptions(act_bits=16), QuantOptions(16, 16)):
        model = quantize_layers(layers_from_module(module), x, opts)
        assert model.in_hi < 60_000
        assert all(layer.acc_bound < SMALL_INT for layer in model.layers)
        res = reference.run(model, np.full((1, 1000), model.in_hi))  # the worst corner
        assert res.out.shape == (1, 4)
    # a layer whose bias alone needs more than the accumulator has is refused
    huge = make_mlp([3, 2])
    with torch.no_grad():
        huge[0].weight.fill_(1e-9)
        huge[0].bias.fill_(1e9)
    with pytest.raises(ExportError, match=r"layer 0 \(3->2\): the bias of channel 0 would be "
                                          r".* >= 2\*\*30"):
        quantize_layers(layers_from_module(huge), calib_data(3))


@pytest.mark.parametrize("m_real", [1e-9, 1e-6, 0.003, 0.2, 0.7, 1.0, 3.5, 1234.5])
@pytest.mark.parametrize("bound", [1, 1000, 300_000, (1 << 29)])
def test_multiplier_is_applicable_and_as_precise_as_allowed(m_real, bound):
    mult, shift = choose_multiplier(m_real, bound)
    if mult == 0:  # refused: even the coarsest direct multiplier overflows
        assert m_real >= 0.25 and bound * max(1, round(m_real)) >= SMALL_INT
        return
    assert requant_ok(bound, mult, shift)
    assert abs(mult / 2**shift - m_real) <= 0.5 / 2**shift
    if m_real < 0.25 and shift < MAX_SHIFT:
        # the split form: a full 14-bit multiplier whatever the bound
        assert shift >= SPLIT_SHIFT and MULT_LIMIT // 2 <= mult < MULT_LIMIT
    elif m_real >= 0.25 and shift < SPLIT_SHIFT - 1:  # one more bit would overflow
        m2 = int(np.floor(m_real * 2 ** (shift + 1) + 0.5))
        assert bound * m2 + (1 << shift) >= SMALL_INT


def test_requantizer_precision_does_not_depend_on_the_bound():
    for bound in (100, 1 << 20, (1 << 30) - 1):
        mult, shift = choose_multiplier(0.001234, bound)
        assert abs(mult / 2**shift / 0.001234 - 1) < 1e-4


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
    with pytest.raises(ExportError, match="x.pt: not a PyTorch file"):
        export_checkpoint(bad, tmp_path)
    torch.save({"hello": 1}, tmp_path / "y.pt")
    with pytest.raises(ExportError, match="y.pt: no tensors found"):
        export_checkpoint(tmp_path / "y.pt", tmp_path)
    with pytest.raises(ExportError, match="no such file"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path)


@pytest.mark.parametrize("dataset", ["digits", "iris", "wine", "breast_cancer"])
def test_16_bit_models_are_within_1e_3_of_float_on_the_bundled_datasets(dataset, tmp_path):
    from micromlp.export.torch_import import load_checkpoint
    from micromlp.host import reference
    from micromlp.host.train import train

    tr = train(dataset, [32, 16], epochs=20, out=tmp_path / "m.pt", progress=False)
    res = export_checkpoint(tr.model_path, tmp_path / "out",
                            opts=QuantOptions(weight_bits=16, act_bits=16))
    model = res.model
    module, mean, std, _ = load_checkpoint(tr.model_path)
    data = np.load(tr.data_path)
    x = data["x_test"]
    with torch.no_grad():
        want = module(torch.tensor((x - mean) / std, dtype=torch.float32)).numpy()
    raw = np.floor(x / model.in_scale + 0.5) + model.in_zero
    inside = ~np.any((raw < model.in_lo) | (raw > model.in_hi), axis=1)  # in the declared range
    ref = reference.run(model, model.quantize_input(x))
    ok = inside & ~ref.saturated
    err = np.abs(model.dequantize_output(ref.out) - want)[ok]
    assert ok.mean() > 0.9
    assert err.max() <= 1e-3 * np.abs(want).max()
    assert err.max() <= res.error_bound
    assert all(layer.acc_bound < SMALL_INT for layer in model.layers)


def test_torchscript_and_pickled_modules(tmp_path):
    from micromlp.host import reference

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU6(), nn.Linear(7, 3)).eval()
    module[1].running_mean.uniform_(-1, 1)
    x = calib_data(5, 200)
    np.savez(tmp_path / "s.npz", x_train=x)
    np.savez(tmp_path / "p.npz", x_train=x)
    torch.jit.script(module).save(str(tmp_path / "s.pt"))
    res = export_checkpoint(tmp_path / "s.pt", tmp_path / "out-s")
    with torch.no_grad():
        want = module(torch.tensor(x, dtype=torch.float32)).numpy()
    ref = reference.run(res.model, res.model.quantize_input(x))
    err = np.abs(res.model.dequantize_output(ref.out) - want)[~ref.saturated]
    assert err.max() <= res.error_bound
    # a fully pickled module: refused by default with the way out, taken with the flag
    torch.save(module, str(tmp_path / "p.pt"))
    with pytest.raises(ExportError, match="pass --trust-pickle"):
        export_checkpoint(tmp_path / "p.pt", tmp_path / "out-p")
    res2 = export_checkpoint(tmp_path / "p.pt", tmp_path / "out-p", trust_pickle=True)
    assert np.array_equal(res2.model.layers[0].w, res.model.layers[0].w)


def test_per_tensor_scales(tmp_path):
    from micromlp.host import reference, vms

    module = make_mlp([6, 9, 4])
    x = calib_data(6)
    model = quantize_layers(layers_from_module(module), x, QuantOptions(per_channel=False))
    for layer in model.layers:
        assert len(set(layer.w_scale.tolist())) == 1
    from micromlp.export import modelfile

    modelfile.save(model, tmp_path / "m.mlp")
    xq = model.quantize_input(x[:20])
    assert np.array_equal(vms.run_firmware("unix", tmp_path / "m.mlp", xq, 4),
                          reference.run(model, xq).out)
