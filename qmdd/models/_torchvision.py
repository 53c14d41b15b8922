"""torchvision backbones with a single-logit head (real = 0, fake = 1).

The head follows CNNDetection: the ImageNet classifier is replaced by a one-output Linear
with weights drawn from N(0, 0.02) and a zero bias; the loss is BCE on that logit.
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from qmdd.models._registry import register_model

__all__ = ["single_logit_head"]

# CNNDetection initialises the new fc with N(0, 0.02).
_HEAD_INIT_STD = 0.02


def single_logit_head(in_features: int) -> nn.Linear:
    head = nn.Linear(in_features, 1)
    nn.init.normal_(head.weight, 0.0, _HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    return head


def _build(factory: Callable[..., nn.Module], weights_enum, pretrained: bool) -> nn.Module:
    if not pretrained:
        return factory(weights=None)
    try:
        return factory(weights=weights_enum.DEFAULT)
    except Exception as error:  # network errors surface as URLError, OSError, RuntimeError
        raise RuntimeError(
            f"could not load torchvision's ImageNet weights for {factory.__name__} ({error}). "
            f"Without network access, place the weight file in $TORCH_HOME/hub/checkpoints "
            f"(see docs/usage.md), or set model.pretrained: false to train from scratch."
        ) from None


@register_model
def resnet18(pretrained: bool = False) -> nn.Module:
    model = _build(torchvision.models.resnet18, torchvision.models.ResNet18_Weights, pretrained)
    model.fc = single_logit_head(model.fc.in_features)
    return model


@register_model
def resnet34(pretrained: bool = False) -> nn.Module:
    model = _build(torchvision.models.resnet34, torchvision.models.ResNet34_Weights, pretrained)
    model.fc = single_logit_head(model.fc.in_features)
    return model


@register_model
def resnet50(pretrained: bool = False) -> nn.Module:
    model = _build(torchvision.models.resnet50, torchvision.models.ResNet50_Weights, pretrained)
    model.fc = single_logit_head(model.fc.in_features)
    return model


@register_model
def mobilenet_v2(pretrained: bool = False) -> nn.Module:
    model = _build(torchvision.models.mobilenet_v2, torchvision.models.MobileNet_V2_Weights, pretrained)
    model.classifier[-1] = single_logit_head(model.classifier[-1].in_features)
    return model


@register_model
def mobilenet_v3_large(pretrained: bool = False) -> nn.Module:
    model = _build(
        torchvision.models.mobilenet_v3_large, torchvision.models.MobileNet_V3_Large_Weights, pretrained
    )
    model.classifier[-1] = single_logit_head(model.classifier[-1].in_features)
    return model


