"""Small detectors from the lottery-ticket paper (arXiv 2507.15636): MesoNet and CNN-5.

Both are plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` stacks ending in one logit,
so :func:`qmdd.quant.quantize` swaps their layers, the cost counters count them and masks
keyed by parameter name apply to them like to the torchvision backbones.

**MesoNet** is Meso-4 (Afchar et al., "MesoNet: a Compact Facial Video Forgery Detection
Network", WIFS 2018), layer for layer::

    conv 3x3,  3 -> 8,  ReLU, BN, max-pool 2      (Keras order: conv+ReLU, then BN)
    conv 5x5,  8 -> 8,  ReLU, BN, max-pool 2
    conv 5x5,  8 -> 16, ReLU, BN, max-pool 2
    conv 5x5, 16 -> 16, ReLU, BN, max-pool 4  -> here: adaptive max-pool to 4 x 4
    dropout 0.5, dense 16*4*4 -> 16, LeakyReLU(0.1), dropout 0.5, dense 16 -> 1

The one change: Meso-4's last 4x4 max-pool becomes an adaptive max-pool to a 4 x 4 grid,
so the first dense layer has a fixed input of 256 features at any image size. Meso-4's
parameter count depends on its input through that layer (16 * (H/32) * (W/32) inputs):

    input 256 x 256 (the original):  11,577 + 1024*16 + 16 = 27,977 parameters
    input 128 x 128:                 11,577 +  256*16 + 16 = 15,689 parameters

qmdd's MesoNet has 15,689 parameters at every input size, and is exactly Meso-4 at 128 px
(where the adaptive pool is a 4x4 max-pool). The lottery-ticket paper's "about 15k" matches
Meso-4 at 128 px, which is presumably its input size; the original paper's 256 px gives 28k.
At qmdd's 64 px crops the adaptive pool takes 2x2 windows of the 8x8 map.

**CNN-5** is not specified beyond "5 conv layers, about 0.3M parameters" in the paper, so
qmdd defines it (VGG-style, the common reading of a plain 5-layer CNN)::

    5 x [conv 3x3 (no bias: BN follows), BN, ReLU], channels 32, 64, 96, 128, 128,
    max-pool 2 after each of the first four, global average pool, dropout 0.5, dense 128 -> 1

333,665 parameters (332,640 in the convs). The global pool makes it size-agnostic; at 64 px
its last feature map is 4 x 4.

Neither has ImageNet weights: ``pretrained=True`` raises a ``RuntimeError`` that says so.
"""

from __future__ import annotations

from torch import nn

from qmdd.models._registry import register_model
from qmdd.models._torchvision import single_logit_head

__all__ = ["MesoNet", "CNN5"]

# Meso-4's dense layer sees a 4x4 grid of its 16 channels (exact Meso-4 at 128 px input).
_MESO_GRID = 4
# Meso-4 (Keras): LeakyReLU(alpha=0.1) after the hidden dense layer, dropout 0.5 before
# both dense layers.
_MESO_LEAK = 0.1
_DROPOUT = 0.5
_CNN5_CHANNELS = (32, 64, 96, 128, 128)


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise RuntimeError(
            f"{name} has no pretrained (ImageNet) weights; set model.pretrained: false to train it from scratch"
        )


def _meso_block(in_channels: int, out_channels: int, kernel: int, pool: nn.Module | None) -> nn.Sequential:
    # Keras 'same' padding for odd kernels; Meso-4 applies BN after the ReLU.
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels),
    ]
    if pool is not None:
        layers.append(pool)
    return nn.Sequential(*layers)


class MesoNet(nn.Module):
    """Meso-4 with an adaptive final pool (module docstring): 15,689 parameters."""

    def __init__(self) -> None:
        super().__init__()
        # The last block ends at its BN; its pool is ``self.pool``, so ``features`` is the
        # last full-resolution feature map (what Grad-CAM looks at by default).
        self.features = nn.Sequential(
            _meso_block(3, 8, 3, nn.MaxPool2d(2)),
            _meso_block(8, 8, 5, nn.MaxPool2d(2)),
            _meso_block(8, 16, 5, nn.MaxPool2d(2)),
            _meso_block(16, 16, 5, None),
        )
        self.pool = nn.AdaptiveMaxPool2d(_MESO_GRID)
        hidden = nn.Linear(16 * _MESO_GRID * _MESO_GRID, 16)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(_DROPOUT),
            hidden,
            nn.LeakyReLU(_MESO_LEAK),
            nn.Dropout(_DROPOUT),
            single_logit_head(16),
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class CNN5(nn.Module):
    """Five 3x3 conv blocks (32-64-96-128-128), global average pool, one logit: 333,665 parameters."""

    def __init__(self, channels: tuple[int, ...] = _CNN5_CHANNELS) -> None:
        super().__init__()
        blocks = []
        in_channels = 3
        for index, out_channels in enumerate(channels):
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            if index < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(_DROPOUT), single_logit_head(in_channels))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model
def mesonet(pretrained: bool = False) -> nn.Module:
    _no_pretrained("mesonet", pretrained)
    return MesoNet()


@register_model
def cnn5(pretrained: bool = False) -> nn.Module:
    _no_pretrained("cnn5", pretrained)
    return CNN5()
