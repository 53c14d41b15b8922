"""Artifact-input detectors trained from scratch: NPR's truncated ResNet and qmdd's default.

NPR (Tan et al., CVPR 2024) and SAFE (Li et al., KDD 2025) detect generated images with a
ResNet cut after its second stage, fed a fixed high-pass view of the image (the input
filter, :mod:`qmdd.models._filters`) and trained from scratch. Cutting after ``layer2``
keeps the network at stride 8, where the upsampling traces live, and makes it small::

    conv 3x3 stride 2 (3 -> 64), BN, ReLU, max-pool 3x3 stride 2
    layer1: residual blocks at 64 (x expansion) channels
    layer2: residual blocks at 128 (x expansion) channels, first one stride 2
    global average pool, fc -> 1 logit

``npr_resnet50`` is the published network: ResNet-50's ``Bottleneck`` blocks, [3, 4] of
them, so layer2 ends at 512 channels; 1,437,761 parameters counted from the published code
(1.44M in the SAFE paper), checked by ``tests/models/test_artifact.py``.

``trunc_resnet18`` is qmdd's default detector, the CPU-sized variant of the same design:
ResNet-18's ``BasicBlock``, [2, 2] of them (64 and 128 channels), 675,521 parameters,
looking at the high-pass residual of the image (``highpass``) rather than NPR's. On the
embedded benchmark it beats the published network with either filter in a fraction of the
time (docs/results.md).

Both use torchvision's block classes, so Connected Quantized Blocks
(:func:`qmdd.quant.connect_blocks`) and every ResNet-aware tool apply to them unchanged.
Initialisation is torchvision's ResNet one (He normal, fan-out, for convs; BN weight 1,
bias 0), which is also the published code's; the head follows the other qmdd backbones.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from qmdd.models._registry import register_model
from qmdd.models._torchvision import single_logit_head

__all__ = ["ArtifactResNet"]

# Stage widths before the block expansion (ResNet's layer1 and layer2).
_STAGE_WIDTHS = (64, 128)
_STEM_WIDTH = 64


class ArtifactResNet(nn.Module):
    """A ResNet cut after ``layer2``, with a 3x3 stride-2 stem (module docstring).

    Args:
        block: torchvision's ``BasicBlock`` or ``Bottleneck``.
        blocks: how many blocks ``layer1`` and ``layer2`` hold.

    The input filter is not part of this class: :func:`qmdd.models.create_model` puts the
    configured one in front (by default ``npr`` for ``npr_resnet50``, ``highpass`` for
    ``trunc_resnet18``).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_WIDTH, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = _STEM_WIDTH
        stages = []
        for index, (width, count) in enumerate(zip(_STAGE_WIDTHS, blocks)):
            stride = 1 if index == 0 else 2
            stages.append(self._stage(block, in_channels, width, count, stride))
            in_channels = width * block.expansion
        self.layer1, self.layer2 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = single_logit_head(in_channels)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(block, in_channels: int, width: int, count: int, stride: int) -> nn.Sequential:
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [block(in_channels, width, stride, downsample)]
        layers += [block(out_channels, width) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise RuntimeError(
            f"{name} is trained from scratch (as NPR and SAFE are) and has no ImageNet weights; "
            "set model.pretrained: false"
        )


@register_model(input_filter="npr")
def npr_resnet50(pretrained: bool = False) -> nn.Module:
    """NPR's published detector: ResNet-50 Bottlenecks [3, 4], 1.44M parameters."""
    _no_pretrained("npr_resnet50", pretrained)
    return ArtifactResNet(Bottleneck, (3, 4))


@register_model(input_filter="highpass")
def trunc_resnet18(pretrained: bool = False) -> nn.Module:
    """qmdd's default: ResNet-18 BasicBlocks [2, 2], 0.68M parameters, high-pass input."""
    _no_pretrained("trunc_resnet18", pretrained)
    return ArtifactResNet(BasicBlock, (2, 2))
