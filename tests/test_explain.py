"""Grad-CAM: a map computable by hand, default layers, quantized and pruned models, the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from qmdd.config import PruneConfig, load_config
from qmdd.explain import main
from qmdd.gradcam import GradCAM, attention_shift, default_target_layer, heat_colours, overlay
from qmdd.models import create_model
from qmdd.prune import Mask, prune_to_level
from qmdd.quant import calibrate
from qmdd.checkpoint import save_checkpoint
from qmdd.detector import build_detector


def _mean_of_channel0() -> nn.Module:
    """logit = mean over pixels of ReLU(channel 0): Grad-CAM is ReLU(channel 0) / its max."""
    picker = nn.Conv2d(3, 1, 1, bias=False)
    head = nn.Linear(1, 1)
    with torch.no_grad():
        picker.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        head.weight.fill_(1.0)
        head.bias.zero_()
    return nn.Sequential(nn.Sequential(picker, nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_gradcam_by_hand():
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0, :3, :3] = 2.0  # a bright corner in channel 0
    x[1, 0, 4:, 4:] = 1.0
    x[:, 1] = 5.0  # other channels do not reach the logit
    model = _mean_of_channel0()
    cam = GradCAM(model)(x)
    assert GradCAM(model).layer is None and default_target_layer(model, x) == "0"
    expected = torch.zeros(2, 8, 8)
    expected[0, :3, :3] = 1.0
    expected[1, 4:, 4:] = 1.0
    assert torch.allclose(cam, expected)
    assert torch.equal(GradCAM(model)(x, target="real"), torch.zeros(2, 8, 8))  # no evidence for real
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("mesonet", "features"), ("cnn5", "features")])
def test_default_layer_is_the_last_feature_map(arch, layer):
    assert default_target_layer(create_model(arch), torch.randn(1, 3, 64, 64)) == layer


def test_attention_shift_is_the_frobenius_norm_of_the_difference():
    a, b = torch.ones(3, 4, 4), torch.zeros(3, 4, 4)
    b[1, 0, 0] = 1.0
    assert attention_shift(a, a).tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(attention_shift(a, b), torch.tensor([4.0, 15**0.5, 4.0]))
    assert attention_shift(a, torch.ones(3, 2, 2)).tolist() == [0.0, 0.0, 0.0]  # resized first


def _w2_mesonet(sparse_level: int | None = None):
    config = load_config(None, ["model.arch=mesonet", "quant.bits=2", "data.crop_size=32"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(8, 3, 32, 32)])
    if sparse_level is not None:
        dense = Mask.dense(model, PruneConfig())
        prune_to_level(dict(model.named_parameters()), dense, 0.2, sparse_level, "global").apply(model)
    # BatchNorm statistics of the data, as training would leave them: with the initial
    # (0, 1) statistics an untrained 2-bit model collapses in eval mode.
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    for bn in batchnorms:
        bn.momentum = 0.1
    return model, config


def test_quantized_and_pruned_models_give_maps_and_an_attention_shift():
    x = torch.randn(4, 3, 32, 32)
    dense, _ = _w2_mesonet()
    pruned, _ = _w2_mesonet(sparse_level=7)
    maps_dense, maps_pruned = GradCAM(dense)(x), GradCAM(pruned)(x)
    for maps in (maps_dense, maps_pruned):
        assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
    assert (attention_shift(maps_dense, maps_dense) == 0).all()
    assert attention_shift(maps_dense, maps_pruned).mean() > 0
    # A conv whose successor is an in-place ReLU can be the target too.
    assert GradCAM(dense, "features.1.0")(x).shape == (4, 32, 32)


def test_overlay_colours_and_size():
    assert heat_colours(np.array([0.0, 1.0])).tolist() == [[0, 0, 128], [128, 0, 0]]
    image = overlay(np.zeros((8, 8, 3), dtype=np.uint8), torch.ones(8, 8), scale=3)
    assert image.size == (24, 24)


def test_cli_writes_overlays_and_the_attention_shift(tmp_path, tiny_root):
    for name, level in (("dense.pt", None), ("pruned.pt", 7)):
        model, config = _w2_mesonet(level)
        save_checkpoint(tmp_path / name, config=config, model=model)
    out = tmp_path / "cams"
    images = str(tiny_root / "test" / "seen")
    assert main(["--checkpoint", str(tmp_path / "dense.pt"), "--compare", str(tmp_path / "pruned.pt"), images, "--limit", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert len(summary["images"]) == 3 and summary["target_layers"] == ["features", "features"]
    assert summary["mean_attention_shift"] > 0 and summary["map_size"] == [32, 32]
    for record in summary["images"]:
        for path in record["overlays"]:
            assert Image.open(path).size == (128, 128)  # 32 px crop, enlarged 4x
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), images]) == 1


def test_matches_a_hand_computation_on_a_w2_resnet():
    """On a W2A2 ResNet-18, the hook-based maps equal Grad-CAM computed by hand: layer4's
    output taken from an explicit forward pass, its gradient by autograd, then the
    published formula (alpha_k = spatial mean of dy/dA^k, L = ReLU(sum_k alpha_k A^k)),
    min-max scaled and upsampled as the grad-cam package does."""
    config = load_config(None, ["model.arch=resnet18", "quant.bits=2"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(8, 3, 64, 64)])
    model.eval()
    x = torch.randn(4, 3, 64, 64)
    stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    features = model.layer4(model.layer3(model.layer2(model.layer1(stem)))).detach().requires_grad_(True)
    logits = model.fc(torch.flatten(model.avgpool(features), 1)).reshape(-1)
    (grads,) = torch.autograd.grad(logits.sum(), features)
    alpha = grads.mean(dim=(2, 3)).numpy()
    maps = features.detach().numpy()
    expected = []
    for image in range(4):
        cam = np.maximum((alpha[image][:, None, None] * maps[image]).sum(axis=0), 0.0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        expected.append(torch.from_numpy(cam))
    expected = nn.functional.interpolate(torch.stack(expected)[:, None].float(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    ours = GradCAM(model)(x)
    assert GradCAM(model).layer is None and default_target_layer(model, x) == "layer4"
    assert torch.allclose(ours, expected.clamp(0, 1), atol=1e-5)
