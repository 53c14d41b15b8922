"""MesoNet and CNN-5: sizes counted by hand, single logit, quantize and cost counters."""

import pytest
import torch
from torch import nn

from qmdd.config import QuantConfig
from qmdd.cost import count_costs, parameter_count
from qmdd.models import CNN5, MesoNet, create_model, list_models
from qmdd.quant import QConv2d, QLinear, calibrate, quantize, quantized_layers

# Meso-4 by hand: convs (3*3*3+1)*8, (5*5*8+1)*8, (5*5*8+1)*16, (5*5*16+1)*16; BN gamma and
# beta of 8+8+16+16 channels; dense 16*4*4 -> 16 and 16 -> 1, with biases.
MESO_PARAMS = 224 + 1608 + 3216 + 6416 + 2 * 48 + (256 * 16 + 16) + 17
# CNN-5 by hand: bias-free 3x3 convs 3-32-64-96-128-128, BN gamma/beta, dense 128 -> 1.
CNN5_PARAMS = 9 * (3 * 32 + 32 * 64 + 64 * 96 + 96 * 128 + 128 * 128) + 2 * (32 + 64 + 96 + 128 + 128) + 129


def test_small_models_are_registered_beside_the_torchvision_backbones():
    assert {"mesonet", "cnn5", "resnet18"} <= set(list_models())
    assert isinstance(create_model("mesonet"), MesoNet) and isinstance(create_model("cnn5"), CNN5)


@pytest.mark.parametrize(("arch", "expected"), [("mesonet", MESO_PARAMS), ("cnn5", CNN5_PARAMS)])
def test_parameter_counts_match_the_documented_designs(arch, expected):
    model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert parameter_count(model) == expected
    assert (MESO_PARAMS, CNN5_PARAMS) == (15_689, 333_665)


def test_original_meso4_at_256_px_has_28k_parameters():
    # The original's first dense layer sees 16 x 8 x 8 features at 256 px (no adaptive pool).
    assert MESO_PARAMS - (256 * 16 + 16) + (1024 * 16 + 16) == 27_977


@pytest.mark.parametrize("arch", ["mesonet", "cnn5"])
@pytest.mark.parametrize("size", [32, 64, 100])
def test_one_logit_at_any_input_size(arch, size):
    model = create_model(arch).eval()
    assert model(torch.randn(3, 3, size, size)).shape == (3, 1)


@pytest.mark.parametrize("arch", ["mesonet", "cnn5"])
def test_pretrained_weights_are_refused_with_the_fix(arch):
    with pytest.raises(RuntimeError, match="model.pretrained: false"):
        create_model(arch, pretrained=True)


@pytest.mark.parametrize("arch", ["mesonet", "cnn5"])
def test_quantize_swaps_every_conv_and_linear_but_the_first_and_last(arch):
    model = quantize(create_model(arch), QuantConfig(bits=2))
    calibrate(model, [torch.randn(4, 3, 32, 32)])
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    quantized = dict(quantized_layers(model))
    assert not isinstance(layers[0], QConv2d) and not isinstance(layers[-1], QLinear)  # FP32 by policy
    assert len(quantized) == len(layers) - 2
    assert all(layer.weight_bits == 2 for layer in quantized.values())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)


def test_mesonet_macs_counted_by_hand_at_64_px():
    # Per image: out_h*out_w*out_c*(in_c*kh*kw) for each conv, in*out for each dense layer.
    by_hand = 64 * 64 * 8 * 27 + 32 * 32 * 8 * 200 + 16 * 16 * 16 * 200 + 8 * 8 * 16 * 400 + 256 * 16 + 16
    assert count_costs(create_model("mesonet"), 64).macs == by_hand
    w2 = count_costs(quantize(create_model("mesonet"), QuantConfig(bits=2)), 64)
    assert w2.macs == by_hand and w2.bops > 0 and w2.storage_ratio > 1
