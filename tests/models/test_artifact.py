"""Artifact-input backbones (NPR's truncated ResNet) and their input filters."""

import numpy as np
import pytest
import pywt
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from qmdd.config import QuantConfig
from qmdd.cost import count_costs
from qmdd.models import (
    ArtifactResNet,
    DWTHighHighFilter,
    FilteredBackbone,
    HighPassFilter,
    NPRFilter,
    create_model,
    default_input_filter,
    list_input_filters,
    list_models,
)
from qmdd.quant import calibrate, connect_blocks, plan_precision, quantize

# Published network (NPR-DeepfakeDetection networks/resnet.py, counted from its code):
# bias-free convs, BN gamma/beta, fc 512 -> 1 with bias.
NPR_RESNET50_PARAMS = 1_437_761


def _conv_params(c_in, c_out, k):
    return c_in * c_out * k * k


def _bn(c):
    return 2 * c


def _trunc_resnet18_by_hand() -> int:
    stem = _conv_params(3, 64, 3) + _bn(64)
    basic = lambda c_in, c: _conv_params(c_in, c, 3) + _bn(c) + _conv_params(c, c, 3) + _bn(c)  # noqa: E731
    layer1 = 2 * basic(64, 64)
    layer2 = basic(64, 128) + _conv_params(64, 128, 1) + _bn(128) + basic(128, 128)
    return stem + layer1 + layer2 + 128 + 1


def test_both_sizes_are_registered_with_their_own_filter_by_default():
    assert {"npr_resnet50", "trunc_resnet18"} <= set(list_models())
    for arch, filter_type in (("npr_resnet50", NPRFilter), ("trunc_resnet18", HighPassFilter)):
        assert default_input_filter(arch) == filter_type.name
        model = create_model(arch)
        assert isinstance(model, FilteredBackbone) and type(model.input_filter) is filter_type
    assert default_input_filter("resnet18") == "none"
    assert not isinstance(create_model("resnet18"), FilteredBackbone)


def test_npr_resnet50_is_the_published_network():
    model = create_model("npr_resnet50", input_filter="none")
    assert isinstance(model, ArtifactResNet)
    assert sum(p.numel() for p in model.parameters()) == NPR_RESNET50_PARAMS
    # 3x3 stride-2 stem, max-pool, Bottlenecks [3, 4] ending at 512 channels, no layer3/4.
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.out_channels) == ((3, 3), (2, 2), 64)
    assert [type(b) for b in model.layer1] == [Bottleneck] * 3 and [type(b) for b in model.layer2] == [Bottleneck] * 4
    assert model.layer2[-1].conv3.out_channels == 512 and model.fc.in_features == 512
    assert not hasattr(model, "layer3")


def test_trunc_resnet18_parameter_count_matches_a_hand_count():
    model = create_model("trunc_resnet18")
    assert isinstance(model.backbone, ArtifactResNet)
    assert [type(b) for b in model.backbone.layer1] == [BasicBlock] * 2
    assert sum(p.numel() for p in model.parameters()) == _trunc_resnet18_by_hand() == 675_521


@pytest.mark.parametrize("arch", ["npr_resnet50", "trunc_resnet18"])
@pytest.mark.parametrize("size", [32, 64, 65])
def test_one_logit_at_any_input_size(arch, size):
    model = create_model(arch).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 1)


def test_pretrained_weights_are_refused():
    with pytest.raises(RuntimeError, match="model.pretrained: false"):
        create_model("trunc_resnet18", pretrained=True)


def test_npr_filter_is_each_pixel_minus_its_block_top_left_times_two_thirds():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(1, 2, 4, 5) ** 1.5
    expected = torch.empty_like(x)
    for i in range(4):
        for j in range(5):
            expected[..., i, j] = x[..., i, j] - x[..., i - i % 2, j - j % 2]
    assert torch.allclose(NPRFilter()(x), expected * 2 / 3)


def test_npr_filter_equals_the_published_interpolate_form_on_even_sides():
    x = torch.randn(2, 3, 16, 12)
    down_up = nn.functional.interpolate(nn.functional.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2, mode="nearest")
    assert torch.allclose(NPRFilter()(x), (x - down_up) * 2 / 3)


def test_npr_filter_is_zero_on_a_nearest_upsampled_image():
    # The trace it looks for: a nearest x2 upsampler leaves exactly nothing in the residual
    # when the crop keeps the grid's phase, and a full residual when it does not.
    low = torch.randn(1, 3, 8, 8)
    up = nn.functional.interpolate(low, scale_factor=2, mode="nearest")
    assert NPRFilter()(up).abs().max() == 0
    assert NPRFilter()(up[..., 1:, 1:]).abs().max() > 0.1


def test_dwt_hh_matches_a_hand_computation_and_pywavelets():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) ** 2
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    band = (a - b - c + d) / 2
    assert torch.allclose(DWTHighHighFilter()(x), nn.functional.interpolate(band, size=(4, 4), mode="bilinear", align_corners=False))
    # Against the wavelet library SAFE's transform follows: bior1.3's HH band (the
    # coefficients of full blocks; periodization mode has no padding coefficients).
    image = np.random.default_rng(0).normal(size=(12, 10))
    _, (_, _, hh) = pywt.dwt2(image, "bior1.3", mode="periodization")
    half = DWTHighHighFilter()
    t = torch.from_numpy(image)[None, None]
    ours = (t[..., 0::2, 0::2] - t[..., 0::2, 1::2] - t[..., 1::2, 0::2] + t[..., 1::2, 1::2]) / 2
    assert np.allclose(ours[0, 0].numpy(), hh)
    assert half(t.float()).shape == t.shape


def test_highpass_is_each_pixel_minus_its_binomial_blur():
    x = torch.randn(1, 3, 6, 7)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    weights = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    expected = torch.empty_like(x)
    for i in range(6):
        for j in range(7):
            expected[..., i, j] = x[..., i, j] - (padded[..., i : i + 3, j : j + 3] * weights).sum(dim=(-1, -2))
    assert torch.allclose(HighPassFilter()(x), expected, atol=1e-6)


def test_highpass_removes_flat_and_linear_content_and_keeps_a_checkerboard():
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ramp = (0.3 * rows + 0.1 * cols).expand(1, 3, 8, 8)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the replicated border
    assert HighPassFilter()(ramp)[inner].abs().max() < 1e-5
    board = ((rows + cols) % 2).expand(1, 3, 8, 8)
    assert HighPassFilter()(board)[inner].abs().min() == pytest.approx(0.5)


def test_highpass_commutes_with_shifts_and_npr_does_not():
    x = torch.randn(1, 3, 16, 16)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert torch.allclose(HighPassFilter()(x)[..., 1:, 1:][inner], HighPassFilter()(x[..., 1:, 1:])[inner], atol=1e-6)
    assert not torch.allclose(NPRFilter()(x)[..., 1:, 1:][inner], NPRFilter()(x[..., 1:, 1:])[inner])


@pytest.mark.parametrize("name", list_input_filters())
def test_every_filter_works_in_front_of_a_torchvision_backbone(name):
    model = create_model("resnet18", input_filter=name).eval()
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 1)


def test_unknown_filter_lists_the_valid_ones():
    with pytest.raises(ValueError, match="npr"):
        create_model("resnet18", input_filter="wavelet")


def test_filter_adds_no_state_and_first_layer_policy_still_keeps_the_stem_fp32():
    model = create_model("trunc_resnet18")
    assert all(key.startswith("backbone.") for key in model.state_dict())
    plan = {layer.name: layer for layer in plan_precision(model, QuantConfig(bits=2))}
    assert plan["backbone.conv1"].reason == "first layer" and plan["backbone.fc"].reason == "last layer"


@pytest.mark.parametrize("quantizer", ["lsq", "n2uq", "slr"])
@pytest.mark.parametrize("block", ["plain", "cqb"])
def test_quantize_and_cqb_apply_to_the_small_backbone(quantizer, block):
    model = create_model("trunc_resnet18")
    if block == "cqb":
        connect_blocks(model)
    quantize(model, QuantConfig(bits=2, quantizer=quantizer))
    calibrate(model, [torch.randn(4, 3, 32, 32)])
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 1) and torch.isfinite(out).all()


def test_cost_counters_count_the_filter_as_fp32_flops():
    report = count_costs(create_model("trunc_resnet18", input_filter="npr"), 64)
    rows = [layer for layer in report.layers if layer.kind == "filter"]
    assert len(rows) == 1 and rows[0].flops == 3 * 64 * 64 * 2 and rows[0].macs == 0  # subtract, scale
    plain = count_costs(create_model("trunc_resnet18", input_filter="none"), 64)
    assert report.macs == plain.macs and report.flops == plain.flops + rows[0].flops
    assert report.fp32_ops == report.ops  # all layers FP32: the filter counts on both sides
    highpass = count_costs(create_model("trunc_resnet18"), 64)
    assert [layer.flops for layer in highpass.layers if layer.kind == "filter"] == [3 * 64 * 64 * 19]
