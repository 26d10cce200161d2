"""Post-training quantization fidelity: activation equalization, bias correction for
bias-free layers, calibration methods, the per-layer report and the per-cell bound.
Each gain is measured against the same model exported without the feature, and every
exported variant stays bit-exact on the MicroPython VMs."""

from __future__ import annotations

import micromlp
import numpy as np
import pytest
import torch
from micromlp.export.equalize import equalize
from micromlp.export.fold import fold_normalization
from micromlp.export.layers import ExportError, forward
from micromlp.export.quantize import activation_range
from micromlp.host import fidelity, reference
from micromlp.host.datasets import load as load_dataset
from micromlp.host.study import fit, split


@pytest.fixture(scope="module")
def outlier():
    """Wine, normalized in the model's first layer, with one hidden unit scaled 100x (and
    its outgoing weights 1/100x): the same function, the case that breaks int8 grids."""
    d = load_dataset("wine")
    xtr, ytr, xte, yte = split(d.x, d.y)
    mu, sd = xtr.mean(0), xtr.std(0)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                            torch.nn.ReLU(), torch.nn.Linear(16, 3))
    fit(m, (xtr - mu) / sd, ytr, 200)
    with torch.no_grad():
        m[0].weight[5] *= 100
        m[0].bias[5] *= 100
        m[2].weight[:, 5] /= 100
    return m, xtr, xte, dict(input_mean=mu, input_std=sd)


@pytest.fixture(scope="module")
def nobias_regression():
    """bias=False layers on non-negative, unnormalized inputs (a smooth regression)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, size=(2000, 6))
    y = np.sin(x[:, 0]) + 0.03 * x[:, 1] * x[:, 2] + np.cos(x[:, 3] * x[:, 4] / 5)
    xtr, ytr, xte, _ = split(x, y)
    m = torch.nn.Sequential(torch.nn.Linear(6, 32, bias=False), torch.nn.ReLU(),
                            torch.nn.Linear(32, 1, bias=False))
    fit(m, xtr, ytr, 800, regression=True)
    return m, xtr, xte


def _mean_error(q, model, x, kw=None):
    kw = kw or {}
    xin = (x - kw["input_mean"]) / kw["input_std"] if "input_mean" in kw else x
    with torch.no_grad():
        yf = model(torch.tensor(xin, dtype=torch.float32)).numpy().astype(np.float64)
    return float(np.abs(q.run(x).floats - yf).mean() / (yf.max() - yf.min()))


def test_equalization_is_the_same_float_function(outlier):
    m, xtr, _, kw = outlier
    src = micromlp.export(m, calib=xtr, out=None, equalize="off", **kw).source
    layers = fold_normalization(src.layers, src.mean, src.std)
    eq, changed = equalize(layers, xtr)
    assert changed == 2
    np.testing.assert_allclose(forward(eq, xtr), forward(layers, xtr), rtol=1e-9, atol=1e-9)
    # the outlier unit's range is now in line with the others
    a0 = np.abs(layers[0].forward(xtr)).max(0)
    a1 = np.abs(eq[0].forward(xtr)).max(0)
    assert a0.max() / np.median(a0) > 50 and a1.max() / np.median(a1) < 10


def test_equalization_rescues_an_outlier_channel_and_the_report_points_at_it(outlier):
    m, xtr, xte, kw = outlier
    off = micromlp.export(m, calib=xtr, out=None, equalize="off", **kw)
    auto = micromlp.export(m, calib=xtr, out=None, **kw)
    assert any(n.startswith("activation equalization kept") for n in auto.notes), auto.notes
    assert _mean_error(auto, m, xte, kw) < 0.5 * _mean_error(off, m, xte, kw)
    # without it, layer 1's input grid is set by the outlier unit: the report's SQNR
    # drops most there, and equalization lifts it
    s_off = [r["sqnr_db"] for r in off.fidelity]
    s_auto = [r["sqnr_db"] for r in auto.fidelity]
    drops = np.diff(s_off)
    assert drops.argmin() == 0 and drops[0] < -6, s_off
    assert s_auto[1] > s_off[1] + 6, (s_off, s_auto)
    assert "layer fidelity on the calibration data" in str(auto)


def test_equalization_is_not_kept_where_it_does_not_help():
    # a single hidden unit: nothing to balance, so nothing is tried
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.ReLU(), torch.nn.Linear(1, 2))
    x = np.random.default_rng(0).normal(size=(200, 3))
    q = micromlp.export(m, calib=x, out=None)
    assert not any(n.startswith("activation equalization") for n in q.notes)


def test_bias_correction_all_gives_bias_free_layers_a_bias(nobias_regression):
    m, xtr, xte = nobias_regression
    plain = micromlp.export(m, calib=xtr, out=None, equalize="off")
    allb = micromlp.export(m, calib=xtr, out=None, equalize="off", bias_correction="all")
    assert not any(ly.has_bias for ly in plain.model.layers)
    assert all(ly.has_bias and ly.bias_note == "bias correction" for ly in allb.model.layers)
    assert "yes (bias correction)" in str(allb)
    assert _mean_error(allb, m, xte) < 0.9 * _mean_error(plain, m, xte)


def test_calibration_methods_place_the_grid_edge():
    rng = np.random.default_rng(0)
    h = rng.random(size=(5000, 8))
    h[0, 0] = 3.0  # one outlier, three times the rest

    def err(edge, hi):
        s = edge / hi
        return float(((np.minimum(np.floor(h / s + 0.5), hi) * s - h) ** 2).mean())

    top = activation_range(h, 255, "minmax", 0.0)
    assert top == 3.0 and activation_range(h, 255, "minmax", 0.1) == pytest.approx(3.3)
    assert activation_range(h, 255, "percentile", 0.0) < 1.01  # the outlier clips
    for hi in (255, 15):  # the least-squares edge is never worse than the largest value
        mse = activation_range(h, hi, "mse", 0.0)
        assert mse <= top and err(mse, hi) <= err(top, hi)
    assert activation_range(h, 15, "mse", 0.0) < 1.5  # on a coarse grid it clips
    with pytest.raises(ExportError, match="calib_method must be one of"):
        micromlp.export(torch.nn.Linear(8, 2), calib=h, out=None, calib_method="kl")


def test_cell_bound_holds_inside_every_cell_and_is_far_tighter(outlier):
    m, xtr, xte, kw = outlier
    q = micromlp.export(m, calib=xtr, out=None, **kw)
    layers = fold_normalization(q.source.layers, q.source.mean, q.source.std)
    cert = fidelity.certify(q.model, layers, xte)
    model = q.model
    xq = model.quantize_input(xte)
    board = model.dequantize_output(reference.run(model, xq).out)
    center = (xq - model.in_zero) * model.in_scale
    inside = (xq > model.in_lo) & (xq < model.in_hi)
    rng = np.random.default_rng(0)
    for _ in range(50):  # random floats in each sample's cell: the board gives the same ints
        xp = np.where(inside, center + (rng.random(center.shape) - 0.5) * model.in_scale
                      * 0.999, xte)
        assert np.array_equal(model.quantize_input(xp), xq)
        err = np.abs(board - forward(layers, xp)).max(axis=1)
        assert np.all(err <= cert.bound * (1 + 1e-9))
        cls = np.argmax(forward(layers, xp), axis=1)
        assert np.all(cls[cert.certified] == np.argmax(board, axis=1)[cert.certified])
    assert np.all(cert.observed <= cert.bound)
    assert np.median(cert.bound) < q.error_bound / 10
    assert cert.certified.mean() > 0.8


def test_verify_reports_cells_and_clipping_and_variants_stay_bit_exact(outlier, tmp_path):
    m, xtr, xte, kw = outlier
    q = micromlp.export(m, calib=xtr, out=tmp_path, calib_method="mse",
                        bias_correction="all", **kw)
    rep = q.verify(xte, vms=("unix", "wasm"))
    assert rep.bit_exact and rep.ok, rep.failures
    assert rep.certified is not None and rep.cell_bound_median < rep.error_bound / 10
    assert not rep.cell_bound_broken
    text = micromlp.format_report(rep)
    assert "per-sample bound over each input's cell" in text
    # a feature pushed past its calibrated range is listed as clipped
    far = xte.copy()
    far[:5, 2] = xtr[:, 2].max() * 3
    rep = q.verify(far, vms=())
    assert any(c["feature"] == 2 and c["fraction"] >= 5 / len(far)
               for c in rep.clipped_features)


def test_finetune_trains_on_the_grids_the_export_uses():
    from micromlp.host import qat

    # wine: float features, so each input has a step of its own (the first layer's grid
    # is on the weights times those steps)
    d = load_dataset("wine")
    xtr, ytr, xte, _ = split(d.x, d.y)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(13, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    kw = dict(input_mean=xtr.mean(0), input_std=xtr.std(0))
    fit(m, (xtr - kw["input_mean"]) / kw["input_std"], ytr, 200)
    ft = micromlp.finetune(m, xtr, ytr, epochs=5, progress=False, **kw)
    q = micromlp.export(ft, calib=xtr, out=None, equalize="off", bias_correction="off")
    # the fake-quantized forward the fine-tuning optimized is what the board computes:
    # within a few steps of the 16-bit output grid (ties the float path rounds otherwise)
    from micromlp.export.exporter import quantize_layers
    from micromlp.export.quantize import QuantOptions

    layers = qat.from_module(ft, q.model.meta["float_layers"])
    grids = qat._Grids(quantize_layers(layers, xtr, QuantOptions(equalize="off",
                                                                  bias_correction="off")))
    with torch.no_grad():
        fake = qat._forward(ft, grids, torch.tensor(xte)).double().numpy()
    board = q.run(xte).floats
    step = q.model.out_scale
    assert np.median(np.abs(fake - board)) < 4 * step
    assert (fake.argmax(1) == board.argmax(1)).mean() > 0.99


def test_train_qat_writes_a_checkpoint_export_keeps_on_its_grids(tmp_path):
    from micromlp.host.train import train

    r = train("iris", [8], epochs=30, out=tmp_path / "m.pt", progress=False, qat_epochs=3)
    q = micromlp.export(tmp_path / "m.pt", out=tmp_path / "out")
    assert any(n.startswith("quantization-aware checkpoint") for n in q.notes), q.notes
    assert not any(n.startswith("activation equalization") for n in q.notes)
    data = np.load(r.data_path)
    rep = q.verify(data["x_test"], data["y_test"], vms=("unix",))
    assert rep.ok, rep.failures


def test_16_bit_activations_with_8_bit_weights_use_the_full_grid(outlier, tmp_path):
    # the weights have 127 levels: the product budget goes to the activations
    m, xtr, xte, kw = outlier
    q = micromlp.export(m, calib=xtr, out=tmp_path, weight_bits=8, act_bits=16, **kw)
    assert [ly.hi for ly in q.model.layers[:-1]] == [65535, 65535]
    assert q.model.in_hi == 65535
    rep = q.verify(xte, vms=("unix", "wasm"))
    assert rep.bit_exact and rep.ok, rep.failures


def test_align_units_recovers_the_equalized_layers_from_the_file(outlier, tmp_path):
    m, xtr, _, kw = outlier
    q = micromlp.export(m, calib=xtr, out=tmp_path, **kw)
    assert any(n.startswith("activation equalization kept") for n in q.notes), q.notes
    kept = q.model.meta["float_layers"]  # what export quantized, unit by unit
    loaded = micromlp.load(tmp_path / "model.mlp", float_model=m).model  # no meta
    src = q.source
    plain = fold_normalization(src.layers, src.mean, src.std)
    aligned = fidelity.align_units(plain, loaded)
    for a, k in zip(aligned, kept, strict=True):
        scale = np.abs(k.weight).max()
        assert np.abs(a.weight - k.weight).max() < 0.01 * scale
    # without the alignment the rescaled hidden units do not match at all
    assert np.abs(plain[0].weight - kept[0].weight).max() > 10 * np.abs(kept[0].weight).max()


def test_verify_layers_points_at_the_lossy_layer_and_bounds_hold(outlier, tmp_path):
    m, xtr, xte, kw = outlier
    off = micromlp.export(m, calib=xtr, out=tmp_path / "off", equalize="off", **kw)
    auto = micromlp.export(m, calib=xtr, out=tmp_path / "auto", **kw)
    r_off = off.verify(xte, vms=(), layers=True).layers
    r_auto = auto.verify(xte, vms=(), layers=True).layers
    assert [r["layer"] for r in r_off] == [0, 1, 2]
    # without equalization the outlier unit coarsens the grid between layers 0 and 1
    # (layer 0's outputs, layer 1's inputs): quantizing either alone costs far more
    # than the last layer, and far more than once equalized
    alone = [r["alone_mean_error"] for r in r_off]
    for i in (0, 1):
        assert alone[i] > 10 * alone[2] and alone[i] > 3 * r_auto[i]["alone_mean_error"]
    assert r_off[0]["levels_used"] < r_auto[0]["levels_used"] / 3
    for r in r_off + r_auto:
        # the proven per-layer bound holds where no clamp was touched
        assert r["max_abs_error_in_range"] <= r["error_bound"]
        assert r["p99_abs_error"] <= r["max_abs_error"]
        assert 0 < r["levels_used"] <= r["grid_levels"]
    # one layer: quantizing it alone is quantizing the whole network
    single = torch.nn.Sequential(torch.nn.Linear(13, 3))
    q1 = micromlp.export(single, calib=xtr, out=None)
    rep = q1.verify(xte, vms=(), layers=True)
    yf = q1.source.evaluate(xte)[0]
    full = np.abs(q1.run(xte).floats - yf).mean() / (yf.max() - yf.min())
    assert rep.layers[0]["alone_mean_error"] == pytest.approx(full, rel=1e-6)
    text = micromlp.format_report(rep)
    assert "with only this layer quantized" in text


def test_verify_layers_needs_the_float_model(outlier, tmp_path, capsys):
    from micromlp.host.cli import main

    m, xtr, xte, kw = outlier
    micromlp.export(m, calib=xtr, out=tmp_path, **kw)
    np.savez(tmp_path / "t.npz", x_test=xte)
    rc = main(["verify", str(tmp_path / "model.mlp"), "--data", str(tmp_path / "t.npz"),
               "--layers", "--vm", "cpython"])
    err = capsys.readouterr().err
    assert rc != 0 and "needs the float model" in err and "Traceback" not in err


def test_inputs_on_a_decimal_lattice_are_represented_exactly():
    from micromlp.export.qmodel import quantize_floats
    from micromlp.export.quantize import quantize_inputs

    rng = np.random.default_rng(0)
    tenths = np.round(rng.normal(5.0, 1.0, size=(150, 1)), 1)  # iris-like, 1 decimal
    halves = rng.integers(0, 40, size=(150, 1)) * 0.5
    noise = rng.normal(0.0, 1.0, size=(150, 1))  # no lattice: the plain step
    x = np.hstack([tenths, halves, noise])
    scale, zero, lo, hi, _ = quantize_inputs(x, 8, headroom=0.1, sigmas=5.0)
    # every value (and every other value on the lattice inside the range) is a grid point
    fresh = np.hstack([np.round(rng.normal(5.0, 1.0, size=(50, 1)), 1),
                       rng.integers(0, 40, size=(50, 1)) * 0.5, np.zeros((50, 1))])
    for data in (x, fresh):
        q = quantize_floats(data, scale, zero, lo, hi)
        back = (q - zero) * scale
        np.testing.assert_allclose(back[:, :2], data[:, :2], rtol=1e-6, atol=1e-6)
    # the lattice steps divide the lattice, and the grid still covers the widened range
    assert round(0.1 / scale[0]) == pytest.approx(0.1 / scale[0], abs=1e-4)
    assert round(0.5 / scale[1]) == pytest.approx(0.5 / scale[1], abs=1e-4)
    covered = (hi - lo) * scale
    assert covered[0] >= 1.2 * np.ptp(tenths) and covered[1] >= 1.2 * np.ptp(halves)
    # no lattice: the data's values are not grid points
    q = quantize_floats(noise.T[0][:, None].repeat(3, 1), scale, zero, lo, hi)
    assert np.abs((q[:, 2] - zero[2]) * scale[2] - noise[:, 0]).max() > 1e-3


def test_a_feature_with_a_tail_gets_room_a_bounded_one_does_not():
    from micromlp.export.quantize import quantize_inputs

    rng = np.random.default_rng(1)
    uniform = rng.uniform(0, 10, size=(130, 1))
    tailed = rng.normal(3.0, 1.0, size=(130, 1))  # tails: a small set understates them
    x = np.hstack([uniform, tailed])
    scale, zero, lo, hi, _ = quantize_inputs(x, 8, headroom=0.1, sigmas=5.0)
    top = (hi - zero) * scale
    # the bounded feature: its range plus 10 % of its span, no more
    span = uniform.max() - uniform.min()
    assert top[0] == pytest.approx(uniform.max() + 0.1 * span, rel=0.01)
    # the tailed one reaches 5 standard deviations, past the plain headroom: fewer
    # fresh samples from its distribution clip
    assert top[1] >= tailed.mean() + 5 * tailed.std() - scale[1]
    s0, z0, _, h0, _ = quantize_inputs(x, 8, headroom=0.1, sigmas=0.0)  # the rule off
    plain = (h0 - z0) * s0
    assert plain[0] == pytest.approx(top[0]) and plain[1] < top[1]
    fresh = rng.normal(3.0, 1.0, size=100_000)
    assert (fresh > top[1]).mean() < 0.5 * (fresh > plain[1]).mean()


def test_qat_recovers_what_post_training_int8_loses(outlier):
    # one weight scale per layer and no equalization: the 100x unit sets every grid it
    # touches, and post-training int8 loses points; fine-tuning on those grids wins
    # them back
    m, xtr, xte, kw = outlier
    d = load_dataset("wine")
    _, ytr, _, yte = split(d.x, d.y)
    hard = dict(per_tensor=True, equalize="off", bias_correction="off")
    with torch.no_grad():
        xin = torch.tensor((xte - kw["input_mean"]) / kw["input_std"], dtype=torch.float32)
        float_acc = float((m(xin).argmax(1).numpy() == yte).mean())
    ptq = micromlp.export(m, calib=xtr, out=None, **kw, **hard)
    ptq_acc = float((ptq.run(xte).predicted == yte).mean())
    assert ptq_acc <= float_acc - 0.01
    torch.manual_seed(0)
    ft = micromlp.finetune(m, xtr, ytr, epochs=60, progress=False, **kw, **hard)
    q = micromlp.export(ft, calib=xtr, out=None, **hard)
    qat_acc = float((q.run(xte).predicted == yte).mean())
    assert qat_acc >= ptq_acc + 0.01 and qat_acc >= float_acc - 0.005, (ptq_acc, qat_acc)


def test_16_bit_weights_and_activations_take_full_grids_in_wide_layers(tmp_path):
    from micromlp.host import peers, study

    # the study's digits model: inputs 0..16 keep the first layer plain, the rest are wide
    name, m, xtr, _, xte, _, kw, _ = next(c for c in study.cases() if c[0] == "digits")
    q = micromlp.export(m, calib=xtr, out=tmp_path, weight_bits=16, act_bits=16, **kw)
    first, hidden, last = q.model.layers
    assert not first.wide and hidden.wide and last.wide
    assert (first.lo, first.hi) == (0, 65535) and int(np.abs(hidden.w).max()) == 32767
    assert (tmp_path / "model.mlp").read_bytes()[4] == 2  # format version 2
    assert q.verify(xte, vms=("unix", "wasm")).bit_exact
    yf = study._float(m, xte, kw)
    mine = np.abs(q.run(xte).floats - yf).mean()
    theirs = min(np.abs(y - yf).mean() for y in peers.onnxruntime_outputs(
        m, xtr, xte, kw, bits=16).values())
    assert mine < theirs, (mine, theirs)  # onnxruntime's int16 QDQ, emulated in float
    # 8-bit weights stay plain, in a version 1 file
    q8 = micromlp.export(m, calib=xtr, out=tmp_path / "a16", act_bits=16, **kw)
    assert not any(ly.wide for ly in q8.model.layers)
    assert (tmp_path / "a16" / "model.mlp").read_bytes()[4] == 1
