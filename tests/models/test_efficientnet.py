"""EfficientNet-B0 and EfficientNet-Lite0: structure, parameter count, quantization, export."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from qmdd.config import RunConfig, load_config
from qmdd.cost import cost_summary
from qmdd.deploy import load_packed, save_packed
from qmdd.detector import build_detector, fake_probability, resolve_model_defaults, validate_config
from qmdd.models import create_model, list_models
from qmdd.models._efficientnet import to_lite
from qmdd.quant import QConv2d, calibrate

# EfficientNet-Lite's published table (tensorflow/tpu, lite/README.md): lite0 has 4.7M
# parameters with its 1000-class head.
LITE0_PUBLISHED_MILLIONS = 4.7


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lite0_has_neither_squeeze_excitation_nor_silu():
    lite = create_model("efficientnet_lite0")
    kinds = {type(m) for m in lite.modules()}
    assert SqueezeExcitation not in kinds and nn.SiLU not in kinds and nn.Sigmoid not in kinds
    assert nn.ReLU6 in kinds
    # B0 is the network Lite0 is derived from: it has both.
    b0_kinds = {type(m) for m in create_model("efficientnet_b0").modules()}
    assert SqueezeExcitation in b0_kinds and nn.SiLU in b0_kinds


def test_lite0_parameter_count_is_b0_without_squeeze_excitation_and_the_published_one():
    b0 = torchvision.models.efficientnet_b0(weights=None)
    se_params = sum(_count(m) for m in b0.modules() if isinstance(m, SqueezeExcitation))
    lite = to_lite(torchvision.models.efficientnet_b0(weights=None))  # 1000-class head, as published
    assert _count(lite) == _count(b0) - se_params
    assert round(_count(lite) / 1e6, 1) == LITE0_PUBLISHED_MILLIONS
    # The single-logit head replaces 1280 x 1000 + 1000 by 1280 + 1.
    assert _count(create_model("efficientnet_lite0")) == _count(lite) - 1280 * 1000 - 1000 + 1281


def test_registered_and_lite0_refuses_pretrained_weights():
    assert {"efficientnet_b0", "efficientnet_lite0"} <= set(list_models("efficientnet*"))
    with pytest.raises(RuntimeError, match="no ImageNet weights are published for efficientnet_lite0"):
        create_model("efficientnet_lite0", pretrained=True)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "efficientnet_lite0"])
def test_quantized_efficientnet_counts_exports_and_scores(arch, tmp_path):
    config = resolve_model_defaults(validate_config(load_config(None, [f"model.arch={arch}", "quant.bits=2", "data.crop_size=32"])))
    model = build_detector(config).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    quantized = [m for m in convs if isinstance(m, QConv2d)]
    assert len(quantized) == len(convs) - 1  # every conv but the first (first_layer_bits=32)
    images = torch.rand(2, 3, 32, 32)
    calibrate(model, [images])
    probabilities = fake_probability(model, images)
    assert probabilities.shape == (2,) and torch.all((probabilities >= 0) & (probabilities <= 1))
    cost = cost_summary(model, 32)
    fp32 = cost_summary(build_detector(resolve_model_defaults(load_config(None, [f"model.arch={arch}", "data.crop_size=32"]))), 32)
    assert cost["params"] == fp32["params"] and cost["ops"] < fp32["ops"] / 4  # W2A2 body: far fewer OPs
    if arch == "efficientnet_b0":
        return  # the export reads layers, not architectures: Lite0's round trip covers both (saves CI time)
    save_packed(tmp_path / "model.qmdd", model, config)
    packed = load_packed(tmp_path / "model.qmdd")
    torch.testing.assert_close(packed.model(images), model(images), rtol=1e-4, atol=1e-5)


def test_efficientnet_config_round_trip():
    config = load_config(None, ["model.arch=efficientnet_lite0"])
    assert validate_config(config) is config and isinstance(config, RunConfig)
