"""The int8 CPU path: exact low-bit grids in int8, agreement with fake-quant, predict CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from qmdd.config import QuantConfig, load_config
from qmdd.deploy import Int8LSQInput, LSQInput, lowbit_float_model, save_packed, to_int8
from qmdd.predict import main as predict_main
from qmdd.quant import calibrate, quantize
from qmdd.detector import build_detector


def _reestimate_batchnorm(model: nn.Module, batches) -> None:
    """Fresh BN statistics, so an untrained model's activations are not degenerate."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    model.eval()


def _chain() -> nn.Module:
    """Conv stack without residuals: every LSQ input has exactly one producer and consumer."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1)]
    return nn.Sequential(*layers)


def _prepared(model: nn.Module, batches) -> nn.Module:
    calibrate(model, batches[:1])
    _reestimate_batchnorm(model, batches)
    calibrate(model, batches[:1])  # steps for the re-normalised activations
    return model.eval()


def _codes_by_layer(model: nn.Module, kind: type, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, out, n=n: seen.__setitem__(n.replace(".", "_").removesuffix("_int8"), out.dequantize() if out.is_quantized else out))
        for n, m in model.named_modules()
        if isinstance(m, kind)
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    model = _prepared(quantize(_chain(), QuantConfig(bits=2)), batches)
    with torch.no_grad():
        model[4].weight[::2] *= -1  # negative gammas: BatchNorm folding flips those channels
    return model, to_int8(model, batches), batches


def test_float_deploy_model_is_the_fake_quant_model(chain):
    model, _, batches = chain
    float_model, codes, float_layers = lowbit_float_model(model)
    with torch.no_grad():
        assert torch.equal(float_model(batches[0]), model(batches[0]))
    assert len(codes) == 3 and float_layers == ["0", "14"]  # first conv and classifier stay FP


def test_int8_weights_are_the_lsq_codes(chain):
    model, int8, _ = chain
    _, codes, _ = lowbit_float_model(model)
    flipped = 0
    for name, layer_codes in codes.items():
        weight = int8.graph.get_submodule(name).weight()
        # BatchNorm folding multiplies channel c by gamma_c / sigma_c; int8 scales are
        # positive, so channels with a negative gamma carry the negated codes.
        gamma = model[int(name.split(".")[0]) + 1].weight.detach()
        signs = torch.where(gamma < 0, -1, 1).to(torch.int8).view(-1, 1, 1, 1)
        assert torch.equal(weight.int_repr(), layer_codes * signs), name
        flipped += int((gamma < 0).sum())
    assert flipped > 0  # the sign handling was exercised


def test_int8_layer_inputs_carry_exactly_the_lsq_codes(chain):
    model, int8, _ = chain
    float_model, _, _ = lowbit_float_model(model)
    x = torch.randn(16, 3, 16, 16)
    expected = _codes_by_layer(float_model, LSQInput, x)
    actual = _codes_by_layer(int8.graph, Int8LSQInput, x)
    assert expected.keys() == actual.keys() and len(actual) == 3
    for name in expected:
        mismatched = (expected[name] - actual[name]).abs() > 1e-5
        assert mismatched.float().mean() < 1e-3, name  # ties under float rounding only
    with torch.no_grad():
        fake, fast = torch.sigmoid(model(x)), torch.sigmoid(int8(x))
    # Only the classifier's input passes an 8-bit (not LSQ) grid.
    assert (fake - fast).abs().max() < 0.02


@pytest.mark.parametrize(("arch", "prefix"), [("resnet18", ""), ("trunc_resnet18", "backbone_")])
def test_resnet_first_block_is_exact_and_predictions_agree(arch, prefix):
    config = load_config(None, ["quant.bits=2", "data.crop_size=32", f"model.arch={arch}"])
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    model = _prepared(build_detector(config), batches)
    int8 = to_int8(model, batches)
    float_model, _, _ = lowbit_float_model(model)
    x = torch.randn(8, 3, 32, 32)
    expected = _codes_by_layer(float_model, LSQInput, x)
    actual = _codes_by_layer(int8.graph, Int8LSQInput, x)
    for name in (f"{prefix}layer1_0_conv1_0", f"{prefix}layer1_0_conv2_0"):
        assert torch.equal(expected[name], actual[name]), name
    assert not any(isinstance(m, LSQInput) for m in int8.modules()), "every LSQ input runs in int8"


def _write_images(folder, count: int) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_cli_prints_one_probability_per_image(tmp_path, capsys):
    config = load_config(None, ["quant.bits=2", "data.crop_size=32"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(4, 3, 32, 32)])
    model.eval()
    save_packed(tmp_path / "m.qmdd", model, config, threshold=0.25)
    (tmp_path / "imgs").mkdir()
    images = _write_images(tmp_path / "imgs", 3)
    assert predict_main(["--model", str(tmp_path / "m.qmdd"), "--engine", "fake-quant", str(tmp_path / "imgs")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == [str(p) for p in images]
    from qmdd.data import DetectorTransform, load_rgb

    transform = DetectorTransform(config.data, "test")
    batch = torch.stack([transform(load_rgb(p), np.random.default_rng(0)) for p in images])
    with torch.no_grad():
        expected = torch.sigmoid(model(batch)).reshape(-1)
    printed = torch.tensor([float(line.split("\t")[0]) for line in lines])
    assert torch.allclose(printed, expected, atol=1e-6)
    # The verdict uses the threshold stored in the file, or --threshold.
    assert [line.split("\t")[1] for line in lines] == ["fake" if p > 0.25 else "real" for p in printed.tolist()]
    assert predict_main(["--model", str(tmp_path / "m.qmdd"), "--engine", "fake-quant", "--threshold", "1", str(images[0])]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "real"
    assert predict_main(["--model", str(tmp_path / "m.qmdd"), "--threshold", "2", str(images[0])]) == 2
    assert "--threshold" in capsys.readouterr().err

    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert predict_main(["--model", str(tmp_path / "m.qmdd"), str(images[0]), str(tmp_path / "broken.jpg")]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and len(captured.out.strip().splitlines()) == 2
    assert captured.out.strip().splitlines()[1] == f"nan\tunreadable\t{tmp_path / 'broken.jpg'}"
    probability = float(captured.out.split("\t")[0])
    assert 0.0 <= probability <= 1.0
    assert predict_main(["--model", str(tmp_path / "missing.qmdd"), str(images[0])]) == 1


def _int8_cases():
    """Every registered backbone whose module types are not all found in another one.

    The int8 conversion works module type by module type, so ``resnet18``/``resnet34``
    (blocks and layers all in ``trunc_resnet18``) and ``resnet50`` (all in ``npr_resnet50``)
    would add only run time to the suite.
    """
    from qmdd.models import create_model, list_models
    from qmdd.quant import has_connectable_blocks

    models = {arch: create_model(arch) for arch in list_models()}
    # The root module's own class (ResNet, ...) holds no layer of its own: left out.
    types = {arch: {type(m) for m in model.modules() if m is not model} for arch, model in models.items()}
    for arch, model in models.items():
        if any(other != arch and types[arch] < types[other] or (types[arch] == types[other] and other < arch) for other in models):
            continue
        yield arch, "plain"
        if has_connectable_blocks(model):
            yield arch, "cqb"


@pytest.mark.parametrize(("arch", "block"), list(_int8_cases()))
def test_every_backbone_runs_in_int8_and_agrees_with_fake_quant(arch, block):
    """The int8 path covers every registered backbone, plain and with Connected Quantized Blocks."""
    config = load_config(None, ["quant.bits=2", "data.crop_size=32", f"model.arch={arch}", f"quant.block={block}"])
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    model = _prepared(build_detector(config), batches)
    int8 = to_int8(model, batches)
    assert not any(isinstance(m, LSQInput) for m in int8.modules()), "every LSQ input runs in int8"
    float_model, _, _ = lowbit_float_model(model)
    x = torch.randn(8, 3, 32, 32)
    expected = _codes_by_layer(float_model, LSQInput, x)
    actual = _codes_by_layer(int8.graph, Int8LSQInput, x)
    assert expected.keys() == actual.keys() and actual
    # The first low-bit layer sees the fake-quant codes, up to the 8-bit rounding of an FP stem
    # before it: a few values cross one LSQ boundary, none more. Deeper, that rounding drifts on
    # random weights, so end-to-end agreement is measured on trained checkpoints
    # (benchmarks/deployed_agreement.py).
    first = next(iter(expected))
    difference = (expected[first] - actual[first]).abs()
    step = expected[first].abs()[expected[first].abs() > 0].min()
    assert (difference > 1e-5).float().mean() < 0.02, first
    assert difference.max() <= step * 1.001, first
    with torch.no_grad():
        assert torch.isfinite(int8(x)).all()


def test_cqb_on_a_backbone_without_residual_blocks_is_a_config_error():
    from qmdd.config import ConfigError
    from qmdd.detector import validate_config

    with pytest.raises(ConfigError, match="quant.block=cqb"):
        validate_config(load_config(None, ["model.arch=mesonet", "quant.block=cqb"]))
