"""EfficientNet-B0 and EfficientNet-Lite0 with the single-logit head.

``efficientnet_b0`` is torchvision's builder (Tan & Le, "EfficientNet: Rethinking Model
Scaling for Convolutional Neural Networks", ICML 2019): MBConv blocks with SiLU (swish)
activations and squeeze-and-excitation, ImageNet weights through torchvision when
``model.pretrained`` is set.

``efficientnet_lite0`` is the edge variant the TensorFlow authors published with
EfficientNet-Lite (tensorflow/tpu, ``models/official/efficientnet/lite/README.md``, 2020):
the same B0 network (width 1.0, depth 1.0, stem 32 and head 1280 channels, dropout 0.2)
with two changes that make it friendly to integer kernels:

* every SiLU (swish) becomes ReLU6, whose bounded range quantizes well;
* the squeeze-and-excitation modules are removed (they need a per-image global pool and a
  sigmoid gate in the middle of every block).

It is built here as torchvision's B0 with those two substitutions, so the layer names
(``features.N.M.block.K``) and the torchvision initialisation are B0's; with a
1000-class head it has 4,652,008 parameters, the 4.7M of the published table
(``tests/models/test_efficientnet.py`` counts them). torchvision publishes no Lite
weights, so ``pretrained=True`` is refused with a sentence; B0's ImageNet weights do not
fit a network without SE and with another activation.

Both end in a one-output Linear (``classifier.1``) drawn like every qmdd head.
"""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from qmdd.models._registry import register_model
from qmdd.models._torchvision import _build, single_logit_head

__all__ = ["to_lite"]


def _swap_head(model: nn.Module) -> nn.Module:
    model.classifier[-1] = single_logit_head(model.classifier[-1].in_features)
    return model


def to_lite(model: nn.Module) -> nn.Module:
    """A torchvision EfficientNet turned into its Lite form, in place: SiLU -> ReLU6, SE removed."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(parent, name, nn.ReLU6(inplace=True))
            elif isinstance(child, SqueezeExcitation):
                setattr(parent, name, nn.Identity())
    return model


@register_model
def efficientnet_b0(pretrained: bool = False) -> nn.Module:
    model = _build(torchvision.models.efficientnet_b0, torchvision.models.EfficientNet_B0_Weights, pretrained)
    return _swap_head(model)


@register_model
def efficientnet_lite0(pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise RuntimeError(
            "no ImageNet weights are published for efficientnet_lite0 in torchvision (B0's do not fit "
            "its ReLU6 activations and missing squeeze-and-excitation); set model.pretrained: false"
        )
    return _swap_head(to_lite(torchvision.models.efficientnet_b0(weights=None)))
