"""Connected Quantized Blocks: plain weights load, shortcuts carry what dead convs drop."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from qmdd.config import ModelConfig, QuantConfig, RunConfig
from qmdd.models import create_model
from qmdd.quant import ShortcutConv2d, connect_blocks, is_connected
from qmdd.quant import QConv2d, calibrate
from qmdd.detector import build_detector


def _eval_bn_identity(module: nn.Module) -> None:
    """BatchNorm as identity in eval mode, so block outputs are easy to reason about."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    module.eval()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_plain_fp32_state_dict_loads_strictly_into_cqb(arch):
    torch.manual_seed(0)
    plain = create_model(arch)
    connected = connect_blocks(create_model(arch))
    assert is_connected(connected) and not is_connected(plain)
    connected.load_state_dict(plain.state_dict())  # strict: same names, same shapes
    for name, tensor in plain.state_dict().items():
        assert torch.equal(connected.state_dict()[name], tensor), name
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), connected.eval()
    # Same weights, different function: the new shortcuts are live paths.
    assert not torch.allclose(plain(x), connected(x))


def test_basic_block_shortcut_carries_conv1_past_a_dead_conv2():
    torch.manual_seed(0)
    for downsample in (False, True):
        block = torchvision.models.resnet.BasicBlock(
            8, 16 if downsample else 8, stride=2 if downsample else 1,
            downsample=nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16)) if downsample else None,
        )
        nn.init.zeros_(block.conv2.weight)
        plain = block
        connected = connect_blocks(nn.Sequential(copy.deepcopy(block)))
        _eval_bn_identity(plain), _eval_bn_identity(connected)
        x = torch.randn(2, 8, 8, 8)
        before_plain, before_cqb = plain(x), connected(x)
        with torch.no_grad():
            plain.conv1.weight.add_(1.0)
            connected[0].conv1.weight.add_(1.0)
        # The plain block's output ignores conv1 once conv2 is dead; the CQB output does not.
        assert torch.equal(plain(x), before_plain)
        assert not torch.allclose(connected(x), before_cqb)


def test_bottleneck_connects_conv1_and_conv2():
    torch.manual_seed(0)
    block = torchvision.models.resnet.Bottleneck(
        32, 8, stride=2, downsample=nn.Sequential(nn.Conv2d(32, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    )
    nn.init.zeros_(block.conv1.weight)
    nn.init.zeros_(block.conv2.weight)
    connected = connect_blocks(nn.Sequential(block))[0]
    _eval_bn_identity(connected)
    x = torch.randn(2, 32, 9, 9)
    # conv1 and conv2 dead: a2 = relu(avgpool(relu(mean over channel groups of x))).
    a1 = torch.relu(x.view(2, 8, 4, 9, 9).mean(2))
    a2 = torch.relu(nn.functional.avg_pool2d(a1, 3, 2, 1, count_include_pad=False))
    expected = torch.relu(connected.bn3(connected.conv3(a2)) + connected.downsample(x))
    assert torch.allclose(connected(x), expected, atol=1e-6)


def test_mobilenet_depthwise_shortcut_carries_the_expansion_past_a_dead_depthwise_conv():
    torch.manual_seed(0)
    model = connect_blocks(create_model("mobilenet_v2"))
    block = model.features[3]  # stride 1, 24 -> 24, expand 6: has the block residual too
    depthwise = block.conv[1][0]
    nn.init.zeros_(depthwise.weight)
    _eval_bn_identity(block)
    x = torch.randn(2, 24, 8, 8)
    before = block(x)
    with torch.no_grad():
        block.conv[0][0].weight.mul_(2.0)
    assert not torch.allclose(block(x), before)
    # Strided depthwise convs get average pooling of the same geometry.
    strided = model.features[2]
    assert strided(torch.randn(2, 16, 9, 9)).shape == (2, 24, 5, 5)


@pytest.mark.parametrize("quantizer", ["lsq", "slr"])
def test_cqb_detector_keeps_shortcut_convs_in_full_precision(quantizer):
    config = RunConfig(model=ModelConfig(arch="resnet18"), quant=QuantConfig(bits=2, quantizer=quantizer, block="cqb"))
    model = build_detector(config)
    shortcut_convs = [n for n, m in model.named_modules() if isinstance(m, ShortcutConv2d)]
    assert shortcut_convs == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    body_convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".conv" in n]
    assert body_convs and all(isinstance(model.get_submodule(n), QConv2d) for n in body_convs)
    calibrate(model, [torch.randn(2, 3, 16, 16)])
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 1)


def test_connect_blocks_refuses_models_without_blocks_and_double_application():
    with pytest.raises(ValueError, match="no ResNet or MobileNet residual block"):
        connect_blocks(nn.Sequential(nn.Conv2d(3, 4, 3)))
    model = connect_blocks(create_model("resnet18"))
    with pytest.raises(ValueError, match="already"):
        connect_blocks(model)
