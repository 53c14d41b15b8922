"""N2UQ and SLR quantizers: levels, ordering, analytic backward, state dicts, end to end."""

import math

import pytest
import torch
from torch import nn

from qmdd.config import QuantConfig
from qmdd.models import create_model
from qmdd.quant import (
    N2UQActivationQuantizer,
    N2UQWeightQuantizer,
    SLRActivationQuantizer,
    calibrate,
    get_quantizer,
    n2uq_fake_quant,
    quantize,
    quantized_layers,
    slr_fake_quant,
)

ACTIVATION_FAMILIES = {"n2uq": N2UQActivationQuantizer, "slr": SLRActivationQuantizer}


def _calibrated(cls, bits, data):
    quantizer = cls(bits)
    quantizer.start_calibration()
    quantizer(data)
    quantizer.finish_calibration()
    return quantizer


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize("name", sorted(ACTIVATION_FAMILIES))
@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("signed", [False, True])
def test_activation_outputs_at_most_2_pow_b_levels(name, bits, signed):
    torch.manual_seed(0)
    data = torch.randn(64, 50) * 2
    if not signed:
        data = data.relu()
    quantizer = _calibrated(ACTIVATION_FAMILIES[name], bits, data)
    wide = torch.linspace(-20, 20, 20001)  # far beyond the calibrated range on both sides
    out = quantizer(wide if signed else wide.relu())
    assert out.unique().numel() == 2**bits  # every level reachable, none extra
    assert quantizer.signed_grid is signed
    assert bool(out.min() < 0) is signed
    # Zero is an exact level, so post-ReLU zeros stay zero.
    assert quantizer(torch.zeros(5)).abs().max() == 0


@pytest.mark.parametrize("bits", [2, 3])
def test_n2uq_weights_2_pow_b_uniform_levels_per_channel(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    quantizer = N2UQWeightQuantizer(bits, weight)
    out = quantizer(weight).detach()
    levels = 2**bits - 1
    for w, q in zip(weight, out):
        scale = levels / 2 ** (bits - 1) * w.abs().mean()
        assert q.unique().numel() <= 2**bits
        codes = (q / scale + 1) * levels / 2  # levels -1 + 2k/(2^b - 1) -> k
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.min() >= -1e-4 and codes.max() <= levels + 1e-4
    # Clipped STE: weights beyond the scale get no gradient.
    w = weight.clone().requires_grad_()
    quantizer(w).sum().backward()
    scale = (levels / 2 ** (bits - 1) * weight.abs().flatten(1).mean(1)).view(-1, 1, 1, 1)
    assert torch.equal(w.grad, (weight.abs() / scale <= 1).float())


def test_slr_levels_are_denser_near_zero_than_lsq():
    torch.manual_seed(0)
    data = torch.randn(256, 64).relu()
    slr = _calibrated(SLRActivationQuantizer, 2, data)
    levels = slr.levels()
    gaps = levels.diff()
    assert torch.all(gaps.diff() > 0)  # geometric: each gap wider than the previous
    lsq = get_quantizer("lsq").activation(2)
    lsq.start_calibration(), lsq(data), lsq.finish_calibration()
    # Same top level as LSQ's clip point at initialisation, finer first step.
    assert levels[-1].item() == pytest.approx(3 * lsq.step.item(), rel=1e-5)
    assert levels[1].item() < lsq.step.item()


def test_n2uq_initialisation_equals_lsq():
    torch.manual_seed(0)
    data = torch.randn(128, 40).relu() * 3
    n2uq = _calibrated(N2UQActivationQuantizer, 3, data)
    lsq = get_quantizer("lsq").activation(3)
    lsq.start_calibration(), lsq(data), lsq.finish_calibration()
    x = torch.rand(5000) * 30
    assert torch.allclose(n2uq(x), lsq(x), atol=1e-5)


# -------------------------------------------------------------------------- thresholds


def test_n2uq_thresholds_stay_ordered_under_large_steps():
    torch.manual_seed(0)
    quantizer = _calibrated(N2UQActivationQuantizer, 3, torch.randn(64, 30).relu())
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=1e4)
    for _ in range(20):
        optimizer.zero_grad()
        x = torch.randn(64, 30) * 3
        # A loss that pushes every threshold around hard, in random directions.
        (quantizer(x) * torch.randn_like(x) * 100).sum().backward()
        optimizer.step()
        thresholds = quantizer.thresholds().detach()
        assert torch.isfinite(thresholds).all()
        assert torch.all(thresholds.diff() > 0), thresholds
    out = quantizer(torch.linspace(-1e6, 1e6, 100001))
    assert out.unique().numel() <= 8


def test_n2uq_threshold_lr_scale_slows_threshold_updates():
    torch.manual_seed(0)
    data = torch.randn(64, 30).relu()
    moved = {}
    for scale in (1.0, 0.1):
        quantizer = N2UQActivationQuantizer(2, threshold_lr_scale=scale)
        quantizer.start_calibration(), quantizer(data), quantizer.finish_calibration()
        before = quantizer.thresholds().detach().clone()
        optimizer = torch.optim.Adam([quantizer.start_param, quantizer.width_param], lr=1e-2)
        for _ in range(5):
            optimizer.zero_grad()
            (quantizer(data) - data * 0.5).pow(2).sum().backward()
            optimizer.step()
        moved[scale] = (quantizer.thresholds().detach() - before).abs().max().item()
    assert moved[0.1] < 0.3 * moved[1.0]


# ---------------------------------------------------------------- analytic backward


def _n2uq_params(dtype=torch.float64):
    start = torch.tensor(0.3, dtype=dtype, requires_grad=True)
    widths = torch.tensor([0.5, 0.9, 0.4, 0.7, 0.6, 1.1], dtype=dtype, requires_grad=True)  # b = 3
    scale = torch.tensor(1.7, dtype=dtype, requires_grad=True)
    return start, widths, scale


def _away_from_breakpoints(points, breakpoints, margin=1e-3):
    keep = (points.unsqueeze(-1) - breakpoints).abs().min(-1).values > margin
    return points[keep]


@pytest.mark.parametrize("qmin", [0, -4])
def test_n2uq_backward_matches_finite_differences_of_its_surrogate(qmin):
    start, widths, scale = _n2uq_params()
    with torch.no_grad():
        thresholds = torch.cat([start.reshape(1), start + widths.cumsum(0)])
        breakpoints = torch.cat([thresholds, thresholds[-1:] + widths[-1:]])
    x = torch.linspace(-1.0, 6.5, 80, dtype=torch.float64)
    x = _away_from_breakpoints(x, breakpoints).requires_grad_()
    grad_scale = torch.tensor(0.37, dtype=torch.float64)

    def surrogate(x, start, widths, scale):
        # grad_scale is 1 here: finite differences see the unscaled surrogate.
        return n2uq_fake_quant(x, start, widths, scale, qmin, torch.tensor(1.0, dtype=torch.float64), True)

    assert torch.autograd.gradcheck(surrogate, (x, start, widths, scale), eps=1e-6, atol=1e-6)
    # The staircase has the same backward as the surrogate for x and thresholds (GSTE),
    # the parameter gradients scaled by grad_scale; the output scale's is exact.
    hard = n2uq_fake_quant(x, start, widths, scale, qmin, grad_scale)
    soft = n2uq_fake_quant(x, start, widths, scale, qmin, torch.tensor(1.0, dtype=torch.float64), True)
    g = torch.randn_like(x)
    hx, hs, hw = torch.autograd.grad(hard, (x, start, widths), g)
    sx, ss, sw = torch.autograd.grad(soft, (x, start, widths), g)
    assert torch.allclose(hx, sx) and torch.allclose(hs, ss * 0.37) and torch.allclose(hw, sw * 0.37)
    # The staircase is at or above the surrogate by less than one output step.
    step = scale.detach() * 2 / 7
    gap = (hard - soft).detach()
    assert torch.all(gap >= -1e-9) and torch.all(gap <= step + 1e-9)


def test_n2uq_surrogate_slope_is_delta_over_width():
    start, widths, scale = _n2uq_params()
    delta = scale.item() * 2 / 7
    thresholds = (torch.cat([start.reshape(1), start + widths.cumsum(0)])).detach()
    for k in range(6):
        x = ((thresholds[k] + thresholds[k + 1]) / 2).reshape(1).clone().requires_grad_()
        n2uq_fake_quant(x, start, widths, scale, 0, torch.tensor(1.0, dtype=torch.float64)).sum().backward()
        assert x.grad.item() == pytest.approx(delta / widths[k].item())
    for outside in (thresholds[0] - 0.1, thresholds[-1] + widths[-1].detach() + 0.1):
        x = outside.reshape(1).clone().requires_grad_()
        n2uq_fake_quant(x, start, widths, scale, 0, torch.tensor(1.0, dtype=torch.float64)).sum().backward()
        assert x.grad.item() == 0.0


def _slr_reference(x, step, shift, qmin, qmax, g):
    """SLR from composed autograd ops with a straight-through round and LSQ's g."""
    step = (step - step * g).detach() + step * g
    shift = (shift - shift * g).detach() + shift * g
    u = torch.where(x >= 0, torch.log1p(x.abs() / shift), -torch.log1p(x.abs() / shift))
    v = torch.clamp(u / step, qmin, qmax)
    q = ((v.round() - v).detach() + v) * step
    # Branches written so that the derivative at q = 0 is exp(0) = 1 on both sides.
    return torch.where(q >= 0, shift * torch.expm1(q), -shift * torch.expm1(-q))


@pytest.mark.parametrize("qmin,qmax", [(0, 3), (-4, 3)])
def test_slr_fused_backward_matches_composed_reference(qmin, qmax):
    torch.manual_seed(0)
    x = (torch.randn(400, dtype=torch.float64) * 3).requires_grad_()
    step = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(0.2, dtype=torch.float64)
    out = slr_fake_quant(x, step, shift, qmin, qmax, g)
    ref = _slr_reference(x, step, shift, qmin, qmax, g)
    assert torch.allclose(out, ref, atol=1e-12)
    grad_out = torch.randn_like(x)
    for a, b in zip(torch.autograd.grad(out, (x, step, shift), grad_out), torch.autograd.grad(ref, (x, step, shift), grad_out)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("qmin,qmax", [(0, 3), (-4, 3)])
def test_slr_backward_matches_finite_differences_without_rounding(qmin, qmax):
    step = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    clip_hi = shift.item() * math.expm1(qmax * step.item())
    clip_lo = -shift.item() * math.expm1(-qmin * step.item())
    x = torch.linspace(-12, 12, 90, dtype=torch.float64)
    x = _away_from_breakpoints(x, torch.tensor([0.0, clip_lo, clip_hi], dtype=torch.float64)).requires_grad_()

    def surrogate(x, step, shift):
        return slr_fake_quant(x, step, shift, qmin, qmax, torch.tensor(1.0, dtype=torch.float64), True)

    assert torch.autograd.gradcheck(surrogate, (x, step, shift), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------- state and models


@pytest.mark.parametrize("name", sorted(ACTIVATION_FAMILIES))
@pytest.mark.parametrize("signed", [False, True])
def test_calibrated_state_survives_a_state_dict_round_trip(name, signed):
    torch.manual_seed(0)
    data = torch.randn(64, 20) * 2
    data = data if signed else data.relu()
    trained = _calibrated(ACTIVATION_FAMILIES[name], 2, data)
    with torch.no_grad():  # move the learned parameters off their initial values
        for parameter in trained.parameters():
            parameter.mul_(1.1).add_(0.01)
    fresh = ACTIVATION_FAMILIES[name](2)
    assert not fresh.calibrated
    fresh.load_state_dict(trained.state_dict())
    assert fresh.calibrated and fresh.signed_grid is signed
    x = torch.randn(1000) * 4
    assert torch.equal(fresh(x), trained(x))


def test_n2uq_lr_scale_is_restored_from_the_checkpoint():
    data = torch.randn(64, 20).relu()
    trained = N2UQActivationQuantizer(2, threshold_lr_scale=0.25)
    trained.start_calibration(), trained(data), trained.finish_calibration()
    fresh = N2UQActivationQuantizer(2)  # default 0.1: the parametrisation must follow the file
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.thresholds(), trained.thresholds())


@pytest.mark.parametrize("quantizer", ["n2uq", "slr"])
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_training_step_inside_quantize(quantizer, arch):
    torch.manual_seed(0)
    config = QuantConfig(bits=2, quantizer=quantizer, n2uq_threshold_lr_scale=0.5, slr_shift_init=0.25)
    model = quantize(create_model(arch), config)  # applies the family options too
    calibrate(model, [torch.randn(4, 3, 16, 16)])
    layers = quantized_layers(model)
    assert layers and all(layer.input_quantizer.calibrated for _, layer in layers)
    if quantizer == "n2uq":
        assert all(layer.input_quantizer._lr_scale == 0.5 for _, layer in layers)
    else:
        assert all(layer.input_quantizer.shift_init == 0.25 for _, layer in layers)
    # MobileNet block outputs are signed and must get a signed grid (docs/quantization.md).
    assert any(layer.input_quantizer.signed_grid for _, layer in layers) is (arch == "mobilenet_v2")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0.0, 1.0] * 2)
    loss = nn.functional.binary_cross_entropy_with_logits(model(images).squeeze(1), labels)
    optimizer.zero_grad()
    loss.backward()
    quantizer_params = [p for n, p in model.named_parameters() if "input_quantizer" in n]
    assert quantizer_params and all(p.grad is not None for p in quantizer_params)
    optimizer.step()
    with torch.no_grad():
        after = nn.functional.binary_cross_entropy_with_logits(model(images).squeeze(1), labels)
    assert math.isfinite(after.item()) and after.item() != loss.item()
