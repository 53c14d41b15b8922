"""Structured (channel) pruning: plans, dependency groups, pruned checkpoints, python -m qmdd.slim."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from qmdd.checkpoint import load_checkpoint, save_checkpoint
from qmdd.config import ConfigError, load_config
from qmdd.detector import build_detector, load_detector, resolve_model_defaults, validate_config
from qmdd.models import ShapeError, apply_layer_shapes, create_model, layer_shapes
from qmdd.prune import PruneError, channel_groups, group_importance, plan_removal, planned_parameters, prune_channels, pruned_config, remove_channels
from qmdd.prune import _structured

SIZE = 32


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _config(arch: str, *overrides: str):
    return resolve_model_defaults(validate_config(load_config(None, [f"model.arch={arch}", f"data.crop_size={SIZE}", *overrides])))


@pytest.mark.parametrize(
    ("arch", "scope"),
    [
        ("trunc_resnet18", "global"),
        ("trunc_resnet18", "layer"),
        ("mobilenet_v2", "layer"),
        ("efficientnet_b0", "global"),
        ("efficientnet_lite0", "layer"),
        pytest.param("resnet18", "global", marks=pytest.mark.slow),
        pytest.param("resnet50", "layer", marks=pytest.mark.slow),
    ],
)
def test_pruned_parameter_count_equals_the_plan_and_reaches_the_ratio(arch, scope):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    dense = _count(model)
    planned = prune_channels(model, _config(arch, "slim.importance=magnitude", f"slim.scope={scope}"), round(0.7 * dense))
    assert _count(model) == planned  # the closed form agrees with the pruned layers
    assert planned <= round(0.7 * dense)
    assert planned >= 0.66 * dense  # never far past the budget (one channel per step for global)
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 1)


def _silence_channels(model: nn.Module, conv: str, norm: str, nxt: str, channels: list[int]) -> None:
    """Make ``channels`` of conv -> norm -> ReLU -> next conv contribute nothing, and weigh nothing."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        modules[conv].weight[channels] = 0
        modules[norm].weight[channels] = 0
        modules[norm].bias[channels] = 0
        modules[nxt].weight[:, channels] = 0


def test_removing_zero_importance_channels_keeps_the_output():
    torch.manual_seed(0)
    model = create_model("trunc_resnet18").eval()
    with torch.no_grad():  # non-trivial statistics, so the output depends on every live channel
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    dead = {"backbone.layer1.0": [3, 7, 20], "backbone.layer2.1": [0, 5, 64, 100, 127]}
    for block, channels in dead.items():
        _silence_channels(model, f"{block}.conv1", f"{block}.bn1", f"{block}.conv2", channels)
    images = torch.rand(3, 3, SIZE, SIZE)
    expected = model(images)
    graph, groups = channel_groups(model, images[:1])
    scores = group_importance(graph, groups, "magnitude")
    cuts = [len(dead.get(group.name.rsplit(".", 1)[0], [])) if group.name.endswith("conv1") else 0 for group in groups]
    assert sum(cuts) == 8  # both blocks' conv1 groups were found
    removal, planned = plan_removal(model, groups, scores, planned_parameters(model, groups, cuts), "global")
    removed = {group.name: sorted(indices) for group, indices in zip(groups, removal) if indices}
    assert removed == {f"{block}.conv1": channels for block, channels in dead.items()}
    remove_channels(graph, groups, removal)
    assert _count(model) == planned
    torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-6)


def test_taylor_importance_needs_gradients_and_uses_them():
    torch.manual_seed(0)
    model = create_model("trunc_resnet18").eval()
    images = torch.rand(4, 3, SIZE, SIZE)
    graph, groups = channel_groups(model, images[:1])
    with pytest.raises(PruneError, match="needs gradients"):
        group_importance(graph, groups, "taylor")
    _structured.accumulate_taylor_gradients(model, [(images, torch.tensor([0, 1, 0, 1]))])
    scores = group_importance(graph, groups, "taylor")
    # Independent: |w * dL/dw| of the stem conv's output channel 0, before normalisation, is
    # part of its group's score; a channel whose weights are all zero scores zero.
    with torch.no_grad():
        model.backbone.layer1[0].conv1.weight[5] = 0
        model.backbone.layer1[0].bn1.weight[5] = 0
        model.backbone.layer1[0].bn1.bias[5] = 0
        model.backbone.layer1[0].conv2.weight[:, 5] = 0
    scores = group_importance(graph, groups, "taylor")
    block_group = [s for g, s in zip(groups, scores) if g.name == "backbone.layer1.0.conv1"][0]
    assert block_group[5] == 0 and block_group.min() == 0 and (block_group > 0).sum() >= block_group.numel() - 2


def test_pruned_checkpoint_rebuilds_without_the_pruning_library(tmp_path):
    torch.manual_seed(0)
    config = _config("mobilenet_v2", "slim.importance=magnitude")
    model = build_detector(config).eval()
    prune_channels(model, config, round(0.75 * _count(model)))
    shaped = pruned_config(config, model)
    assert shaped.model.pruned_shapes and all("=" in entry for entry in shaped.model.pruned_shapes)
    save_checkpoint(tmp_path / "pruned.pt", config=shaped, model=model)
    images = torch.rand(2, 3, SIZE, SIZE)
    torch.save({"images": images, "expected": model(images).detach()}, tmp_path / "io.pt")
    script = f"""
import sys, torch
sys.modules["torch_pruning"] = None  # any import of the pruning library now fails
from qmdd.detector import load_detector
io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
loaded = load_detector({str(tmp_path / 'pruned.pt')!r})
torch.testing.assert_close(loaded.model(io["images"]), io["expected"], rtol=1e-5, atol=1e-6)
assert "torch_pruning" not in sys.modules or sys.modules["torch_pruning"] is None
print("rebuilt", sum(p.numel() for p in loaded.model.parameters()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["rebuilt", str(_count(model))]


def test_bad_pruned_shapes_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="model.pruned_shapes entry 'fc=0'"):
        load_config(None, ["model.pruned_shapes=[fc=0]"])
    config = load_config(None, ['model.pruned_shapes=["backbone.nolayer=3,4"]'])
    with pytest.raises(ConfigError, match="model.pruned_shapes does not fit model.arch='trunc_resnet18'.*nolayer"):
        validate_config(config)
    with pytest.raises(ShapeError, match="depthwise conv needs as many outputs as inputs"):
        apply_layer_shapes(create_model("mobilenet_v2"), ["features.1.conv.0.0=16,8"])


def test_quantized_models_and_a_missing_library_are_refused(monkeypatch):
    config = _config("trunc_resnet18", "quant.bits=2")
    with pytest.raises(PruneError, match="prune the float model first, then quantize"):
        channel_groups(build_detector(config), torch.rand(1, 3, SIZE, SIZE))
    monkeypatch.setattr(_structured, "tp", None)
    with pytest.raises(PruneError, match=r"pip install 'qmdd\[slim\]'"):
        channel_groups(create_model("trunc_resnet18"), torch.rand(1, 3, SIZE, SIZE))


def _fp32_source(tiny_root: Path, path: Path) -> Path:
    """A float detector checkpoint on the tiny data (untrained: pruning needs no skill)."""
    torch.manual_seed(0)
    config = _config("trunc_resnet18", f"data.root={tiny_root}", "train.batch_size=8", "train.device=cpu")
    save_checkpoint(path, config=config, model=build_detector(config))
    return path


def test_slim_iterative_reaches_the_ratio_then_quantizes_exports_and_runs_int8(tiny_root, tmp_path):
    from qmdd.deploy import calibration_images, load_packed, save_packed, to_int8
    from qmdd.slim import main as slim_main
    from qmdd.train import main as train_main

    source = _fp32_source(tiny_root, tmp_path / "fp32.pt")
    out = tmp_path / "slim"
    args = ["--from", str(source), "--ratio", "0.3", "--steps", "2", "--epochs", "1", "--distill", "--set", "slim.taylor_batches=2", "--out", str(out)]
    assert slim_main(args) == 0
    rows = json.loads((out / "slim.json").read_text())["rows"]
    dense = rows[0]["parameters"]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert 0.15 <= rows[1]["removed"] < 0.16 and 0.30 <= rows[2]["removed"] < 0.31
    assert rows[2]["macs"] < rows[0]["macs"]
    assert load_checkpoint(out / "step_01" / "best.pt")["config"]["train"]["teacher"] == str(source)
    pruned = load_detector(out / "pruned.pt")
    assert sum(p.numel() for p in pruned.model.parameters()) == rows[2]["parameters"] < dense
    assert slim_main(args) == 0  # a finished experiment is read back, not redone
    # Prune first, then quantize: W2A2 from the pruned weights, with the pruned config.
    w2 = tmp_path / "w2a2"
    assert train_main(["--config", str(out / "pruned.yaml"), "--init", str(out / "pruned.pt"), "--bits", "2", "--epochs", "1", "--out", str(w2)]) == 0
    quantized = load_detector(w2 / "best.pt")
    assert quantized.config.model.pruned_shapes == pruned.config.model.pruned_shapes
    save_packed(tmp_path / "w2.qmdd", quantized.model, quantized.config, quantized.threshold)
    packed = load_packed(tmp_path / "w2.qmdd")
    images = torch.cat(calibration_images(quantized.config.data, count=4, batch_size=4))
    torch.testing.assert_close(packed.model(images), quantized.model(images), rtol=1e-4, atol=1e-5)
    int8 = to_int8(quantized.model, [images])
    agreement = (torch.sigmoid(int8(images)) > 0.5) == (torch.sigmoid(quantized.model(images)) > 0.5)
    assert agreement.float().mean() >= 0.75


def test_slim_refuses_a_quantized_source_in_one_sentence(tiny_root, tmp_path, capsys):
    from qmdd.slim import main as slim_main

    config = _config("trunc_resnet18", "quant.bits=2")
    save_checkpoint(tmp_path / "w2.pt", config=config, model=build_detector(config))
    assert slim_main(["--from", str(tmp_path / "w2.pt"), "--data-root", str(tiny_root), "--out", str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "prune the float model first" in message and "Traceback" not in message
    assert slim_main(["--from", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
