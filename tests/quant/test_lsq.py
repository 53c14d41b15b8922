import math

import pytest
import torch
from torch import nn

from qmdd.config import QuantConfig
from qmdd.models import create_model, list_models
from qmdd.quant import (
    LSQActivationQuantizer,
    LSQWeightQuantizer,
    NotCalibratedError,
    QConv2d,
    QLinear,
    calibrate,
    lsq_fake_quant,
    plan_precision,
    quantize,
    quantized_layers,
)


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 1),
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_levels_per_output_channel(bits):
    conv = nn.Conv2d(16, 12, 3)
    quantizer = LSQWeightQuantizer(bits, conv.weight)
    calibrate(nn.Sequential(QConv2d.from_float(conv, quantizer)), [torch.randn(2, 16, 8, 8)])
    effective = quantizer(conv.weight).detach()
    for channel in effective:
        assert channel.unique().numel() <= 2**bits
    # Values are exact integer multiples of the channel's step.
    codes = effective / quantizer.step.detach().view(-1, 1, 1, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("signed", [False, True])
def test_activation_levels_and_sign_from_data(signed):
    quantizer = LSQActivationQuantizer(2)
    x = torch.randn(64, 32) * 3
    if not signed:
        x = x.relu()
    quantizer.start_calibration()
    quantizer(x)
    quantizer.finish_calibration()
    out = quantizer(torch.randn(256, 32) * 5 if signed else (torch.randn(256, 32) * 5).relu())
    assert out.unique().numel() <= 4
    assert quantizer.signed_grid is signed
    assert bool(out.min() < 0) is signed


def _reference_lsq(x, step, qmin, qmax, g):
    """LSQ from composed autograd ops (the paper's pseudo-code), to check the fused node."""
    scaled_step = (step - step * g).detach() + step * g
    v = torch.clamp(x / scaled_step, qmin, qmax)
    return ((v.round() - v).detach() + v) * scaled_step


@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_backward_matches_composed_reference(per_channel):
    torch.manual_seed(0)
    x = (torch.randn(6, 5, 4, 4) * 2).requires_grad_()
    step_shape = (6, 1, 1, 1) if per_channel else ()
    step = (torch.rand(step_shape) * 0.5 + 0.2).requires_grad_()
    g = torch.tensor(1 / math.sqrt(80 * 3))
    grad_out = torch.randn(6, 5, 4, 4)
    out = lsq_fake_quant(x, step, -4, 3, g)
    gx, gs = torch.autograd.grad(out, (x, step), grad_out)
    x2, s2 = x.detach().clone().requires_grad_(), step.detach().clone().requires_grad_()
    ref = _reference_lsq(x2, s2, -4, 3, g)
    rx, rs = torch.autograd.grad(ref, (x2, s2), grad_out)
    assert torch.equal(out, ref)
    assert torch.allclose(gx, rx)
    assert torch.allclose(gs, rs, rtol=1e-5, atol=1e-6)


def test_gradients_reach_weights_and_steps():
    model = quantize(_conv_model(), QuantConfig(bits=2, first_layer_bits=8, last_layer_bits=8))
    calibrate(model, [torch.randn(4, 3, 16, 16)])
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    for name, layer in quantized_layers(model):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
        assert layer.weight_quantizer.step.grad.abs().sum() > 0, name
        assert layer.input_quantizer.step.grad.abs().sum() > 0, name


def test_quantized_layers_share_float_parameters():
    conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(5, 2)
    qconv = QConv2d.from_float(conv, LSQWeightQuantizer(2, conv.weight))
    qlinear = QLinear.from_float(linear, LSQWeightQuantizer(2, linear.weight))
    assert qconv.weight is conv.weight and qconv.bias is conv.bias
    assert qlinear.weight is linear.weight
    back = qconv.to_float()
    assert type(back) is nn.Conv2d and back.weight is conv.weight
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(back(x), conv(x))
    assert type(qlinear.to_float()) is nn.Linear


def test_policy_keeps_first_and_last_layers():
    model = _conv_model()
    plan = {p.name: p for p in plan_precision(model, QuantConfig(bits=2, keep_full_precision=("6",)))}
    assert (plan["0"].weight_bits, plan["0"].reason) == (32, "first layer")
    assert (plan["9"].weight_bits, plan["9"].reason) == (32, "last layer")
    assert plan["3"].weight_bits == plan["3"].act_bits == 2
    assert plan["6"].weight_bits == 32
    quantize(model, QuantConfig(bits=2, keep_full_precision=("6",)))
    assert type(model[0]) is nn.Conv2d and type(model[9]) is nn.Linear and type(model[6]) is nn.Conv2d
    assert isinstance(model[3], QConv2d)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, QuantConfig(bits=2))


def test_uncalibrated_use_is_a_clear_error():
    model = quantize(_conv_model(), QuantConfig(bits=2))
    with pytest.raises(NotCalibratedError, match="calibrate"):
        model(torch.randn(2, 3, 8, 8))


def test_calibration_leaves_batchnorm_statistics_alone():
    model = quantize(_conv_model(), QuantConfig(bits=3))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    calibrate(model, [torch.randn(8, 3, 16, 16) * 4 + 2 for _ in range(3)])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_state_dict_restores_calibration_and_grid():
    model = quantize(_conv_model(), QuantConfig(bits=2, first_layer_bits=4))
    calibrate(model, [torch.randn(4, 3, 16, 16)])
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    expected = model(x)
    fresh = quantize(_conv_model(), QuantConfig(bits=2, first_layer_bits=4))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert fresh[0].input_quantizer.signed_grid  # the first conv sees signed, normalised pixels
    assert not fresh[3].input_quantizer.signed_grid  # post-ReLU input: unsigned grid
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("arch", list_models())
def test_every_backbone_quantizes_and_trains_a_step(arch):
    torch.manual_seed(0)
    model = quantize(create_model(arch), QuantConfig(bits=2))
    x = torch.randn(2, 3, 32, 32)
    calibrate(model, [x])
    layers = quantized_layers(model)
    assert layers, arch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), torch.tensor([0.0, 1.0]))
    loss.backward()
    optimizer.step()
    assert model(x).shape == (2, 1)
    # Every low-bit body layer keeps at most 4 weight values per output channel.
    for _, layer in layers:
        if layer.weight_bits == 2:
            weight = layer.quantized_weight().detach()
            assert max(row.unique().numel() for row in weight.flatten(1)) <= 4
