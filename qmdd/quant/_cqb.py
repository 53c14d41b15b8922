"""Connected Quantized Blocks (CQB): a full-precision shortcut around every quantized conv.

QMDD (Tao et al., IJCAI 2025) says its CQB "extracts common forgery features via the
quantized path and retains method-specific textures through the shortcut connections"; the
equations are not public. qmdd reads it the Bi-Real-Net way (Liu et al., ECCV 2018): inside
a residual block, the output of *each* convolution (after its BatchNorm, before its
activation) is added to a full-precision copy of that convolution's own input, matched in
shape without learned parameters where possible:

ResNet ``BasicBlock`` (Bi-Real's block exactly)::

    a1  = relu(bn1(conv1(x)) + S(x))        S = identity, or the block's own downsample
    out = relu(bn2(conv2(a1)) + a1)

ResNet ``Bottleneck`` (conv2 carries the stride)::

    a1  = relu(bn1(conv1(x)) + R(x))        R: mean over groups of C_in / width channels
    a2  = relu(bn2(conv2(a1)) + P(a1))      P: identity, or average pooling with conv2's
                                            kernel, stride and padding (same output size)
    out = relu(bn3(conv3(a2)) + S(x))       the block's own residual spans conv3

MobileNetV2/V3 ``InvertedResidual``: the depthwise conv gets ``P`` (its input and output
have the same channels); its result is added after its BatchNorm, before its activation.
The 1x1 expansion and projection change the channel count by ratios that are not always
integers (MobileNetV3: 72/24, 200/80), and the projection output already meets the block's
own residual wherever shapes allow, so they keep the block as it is.

The block's downsample conv (1x1, stride 2) lies on the shortcut, so CQB keeps it in full
precision (Bi-Real and ReActNet do the same): it becomes a :class:`ShortcutConv2d`, which
``qmdd.quant.quantize`` does not swap (its swap table matches exact types).

Weights: the transform adds no parameters and keeps every parameter name, so a state dict
of the plain backbone (e.g. a trained FP32 ``resnet18``) loads into the CQB model with
strict key matching. The function is not the plain one (the shortcuts are new paths), so
loaded weights are a starting point for fine-tuning, as in Bi-Real-Net, which also starts
its low-bit training from real-valued weights.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from qmdd.quant._layers import conv_sharing_parameters

#: Values of ``quant.block``: the backbone's own blocks, or Connected Quantized Blocks.
BLOCKS = ("plain", "cqb")

__all__ = ["BLOCKS", "connect_blocks", "has_connectable_blocks", "ShortcutConv2d", "ConnectedBasicBlock", "ConnectedBottleneck", "ConnectedConvNormActivation", "is_connected"]


class ShortcutConv2d(nn.Conv2d):
    """A conv on a full-precision shortcut: a distinct type so ``quantize`` leaves it in FP32."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "ShortcutConv2d":
        return conv_sharing_parameters(cls, conv)


def _full_precision_downsample(downsample: nn.Module | None) -> nn.Module | None:
    if downsample is None:
        return None
    for name, child in downsample.named_children():
        if type(child) is nn.Conv2d:
            setattr(downsample, name, ShortcutConv2d.from_conv(child))
    return downsample


def _spatial_shortcut(conv: nn.Conv2d) -> nn.Module | None:
    """Parameter-free map from ``conv``'s input to its output shape, or None if none fits.

    Needs equal in/out channels; a strided conv gets average pooling with the conv's own
    kernel, stride and padding, so the output size matches for every input size.
    """
    if conv.in_channels != conv.out_channels or conv.dilation != (1, 1):
        return None
    if conv.stride == (1, 1):
        return nn.Identity()
    return nn.AvgPool2d(conv.kernel_size, conv.stride, conv.padding, count_include_pad=False)


def _channel_mean(x: torch.Tensor, group: int) -> torch.Tensor:
    """Average consecutive groups of ``group`` channels (C a multiple of it; 1 = identity).

    Written without branching on the tensor's shape, so FX can trace it (the int8 path).
    """
    return x.unflatten(1, (-1, group)).mean(dim=2)


class ConnectedBasicBlock(nn.Module):
    """ResNet BasicBlock with Bi-Real shortcuts (module docstring); same parameter names."""

    def __init__(self, block: torchvision.models.resnet.BasicBlock) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = block.conv1, block.bn1, block.relu
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.downsample = _full_precision_downsample(block.downsample)
        self.stride = block.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        a1 = self.relu(self.bn1(self.conv1(x)) + shortcut)
        return self.relu(self.bn2(self.conv2(a1)) + a1)


class ConnectedBottleneck(nn.Module):
    """ResNet Bottleneck with a shortcut around each conv (module docstring)."""

    def __init__(self, block: torchvision.models.resnet.Bottleneck) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.relu = block.relu
        self.downsample = _full_precision_downsample(block.downsample)
        self.stride = block.stride
        width = self.conv1.out_channels
        # conv1 reduces channels (256 -> 64 ...): a group mean matches when they divide.
        self.reduce_channels = self.conv1.stride == (1, 1) and self.conv1.in_channels % width == 0
        self.channel_group = self.conv1.in_channels // width
        conv2_shortcut = _spatial_shortcut(self.conv2)
        self._conv2_connected = conv2_shortcut is not None
        self.conv2_shortcut = conv2_shortcut or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        h1 = self.bn1(self.conv1(x))
        if self.reduce_channels:
            h1 = h1 + _channel_mean(x, self.channel_group)
        a1 = self.relu(h1)
        h2 = self.bn2(self.conv2(a1))
        if self._conv2_connected:
            h2 = h2 + self.conv2_shortcut(a1)
        a2 = self.relu(h2)
        return self.relu(self.bn3(self.conv3(a2)) + shortcut)


class ConnectedConvNormActivation(nn.Module):
    """conv -> BN -> (+ shortcut(input)) -> activation, replacing a ``Conv2dNormActivation``.

    The plain layer's children keep their names (``0`` conv, ``1`` BN, ``2`` activation),
    and the shortcut has no state, so the parameter names are the plain layer's.
    """

    def __init__(self, layer: Conv2dNormActivation, shortcut: nn.Module) -> None:
        super().__init__()
        self.stages = len(layer)
        for index, child in enumerate(layer.children()):
            self.add_module(str(index), child)
        self.shortcut = shortcut
        self.out_channels = layer[0].out_channels

    def __getitem__(self, index: int) -> nn.Module:
        return getattr(self, str(index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self[1](self[0](x)) + self.shortcut(x)
        for index in range(2, self.stages):
            out = self[index](out)
        return out


def _connect_inverted_residual(block: nn.Module) -> bool:
    body = getattr(block, "conv", None) or getattr(block, "block", None)
    if body is None:
        return False
    for index, layer in enumerate(body):
        if type(layer) is Conv2dNormActivation and isinstance(layer[0], nn.Conv2d):
            conv = layer[0]
            if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
                shortcut = _spatial_shortcut(conv)
                if shortcut is not None:
                    body[index] = ConnectedConvNormActivation(layer, shortcut)
                    return True
    return False


def connect_blocks(model: nn.Module) -> nn.Module:
    """Turn every residual block of ``model`` into a Connected Quantized Block, in place.

    Handles torchvision's ResNet ``BasicBlock``/``Bottleneck`` and MobileNetV2/V3
    ``InvertedResidual``; :func:`qmdd.quant.quantize` calls it for ``quant.block: cqb``,
    on the float model, before it swaps layers.
    Returns ``model``. Raises ``ValueError`` when the model has no such block (a CQB run
    that silently trained the plain model would mislead).
    """
    from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
    from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if is_connected(model):
        raise ValueError("model already has connected blocks; connect_blocks() a plain model once")
    connected = 0
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(module) is BasicBlock:
            setattr(parent, child, ConnectedBasicBlock(module))
            connected += 1
        elif type(module) is Bottleneck:
            setattr(parent, child, ConnectedBottleneck(module))
            connected += 1
        elif type(module) in (InvertedResidualV2, InvertedResidualV3):
            connected += _connect_inverted_residual(module)
    if connected == 0:
        raise ValueError(
            f"connect_blocks found no ResNet or MobileNet residual block in {type(model).__name__}; "
            "use quant.block=plain for this backbone"
        )
    return model


def has_connectable_blocks(model: nn.Module) -> bool:
    """True when ``model`` has a block :func:`connect_blocks` can connect (ResNet blocks,
    MobileNet inverted residuals with a depthwise conv)."""
    from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
    from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return any(type(m) in (BasicBlock, Bottleneck, InvertedResidualV2, InvertedResidualV3) for m in model.modules())


def is_connected(model: nn.Module) -> bool:
    """True when ``model`` already holds Connected Quantized Blocks."""
    return any(
        isinstance(m, (ConnectedBasicBlock, ConnectedBottleneck, ConnectedConvNormActivation)) for m in model.modules()
    )
