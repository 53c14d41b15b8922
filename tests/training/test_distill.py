"""Distillation loss, frozen teacher, --init from FP32 weights, and the CLI end to end."""

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qmdd.config import load_config
from qmdd.train import main
from qmdd.checkpoint import load_checkpoint
from qmdd.detector import build_detector
from qmdd.training._distill import DistillationLoss, distillation_loss, init_state_dict
from tiny_data import make_tiny_forensynths

TINY = ["--batch-size", "8", "--set", "data.crop_size=24", "--set", "train.log_every=1"]


def test_alpha_zero_is_plain_bce_and_alpha_one_is_the_soft_term():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(16), torch.randn(16) * 3, torch.randint(0, 2, (16,)).float()
    bce = F.binary_cross_entropy_with_logits(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.0, 4.0), bce)
    soft = 16.0 * F.binary_cross_entropy_with_logits(student / 4, torch.sigmoid(teacher / 4))
    assert torch.allclose(distillation_loss(student, teacher, labels, 1.0, 4.0), soft)


def test_soft_term_is_minimal_at_the_teacher_and_t_squared_keeps_its_gradient_size():
    teacher = torch.tensor([0.3, -0.2, 0.1])
    at_teacher = teacher.clone().requires_grad_()
    distillation_loss(at_teacher, teacher, torch.zeros(3), 1.0, 4.0).backward()
    assert torch.allclose(at_teacher.grad, torch.zeros(3), atol=1e-7)
    grads = []
    for temperature in (2.0, 8.0):
        student = (teacher + 0.05).requires_grad_()
        distillation_loss(student, teacher, torch.zeros(3), 1.0, temperature).backward()
        grads.append(student.grad)
    # Near the teacher the tempered gradient is ~ sigma'(0) * (z_s - z_t) / n for every T.
    assert torch.allclose(grads[0], grads[1], rtol=0.05)
    assert torch.allclose(grads[0], torch.full((3,), 0.25 * 0.05 / 3), rtol=0.05)


def test_teacher_stays_frozen_and_in_eval_mode():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = DistillationLoss(teacher, alpha=0.7, temperature=2.0)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.1)
    teacher.train()  # e.g. someone calls .train() on everything: the loss puts it back
    for _ in range(2):
        loss = loss_fn(student, torch.randn(4, 3, 8, 8), torch.tensor([0.0, 1.0, 0.0, 1.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats too
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(teacher, alpha=1.5, temperature=2.0)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    # One step per epoch: these runs test wiring and exact resumption, not learning.
    return make_tiny_forensynths(tmp_path_factory.mktemp("small_tree"), per_class=2)


@pytest.fixture(scope="module")
def fp32_run(small_root, tmp_path_factory):
    tiny_root = small_root
    out = tmp_path_factory.mktemp("fp32")
    assert main(["--data-root", str(tiny_root), "--out", str(out), *TINY, "--bits", "32", "--epochs", "1"]) == 0
    return out


def test_init_loads_the_fp32_weights_before_quantization(fp32_run):
    config = load_config(overrides=["quant.bits=2", "quant.quantizer=n2uq", "quant.block=cqb"])
    float_model = build_detector(load_config(overrides=["quant.block=cqb"]))
    shapes = {k: v.shape for k, v in float_model.state_dict().items()}
    state = init_state_dict(fp32_run / "best.pt", "trunc_resnet18", shapes)
    model = build_detector(config, init_state=state)
    trained = load_checkpoint(fp32_run / "best.pt")["model"]
    assert torch.equal(model.backbone.layer1[0].conv1.weight, trained["backbone.layer1.0.conv1.weight"])
    assert torch.equal(model.backbone.fc.weight, trained["backbone.fc.weight"])
    with pytest.raises(ValueError, match="holds a trunc_resnet18 model"):
        init_state_dict(fp32_run / "best.pt", "mobilenet_v2", {})
    with pytest.raises(ValueError, match="missing: extra.weight"):
        init_state_dict(fp32_run / "best.pt", "trunc_resnet18", {**shapes, "extra.weight": torch.Size([1])})


@pytest.mark.slow
def test_cli_distils_with_init_and_resumes_exactly(small_root, tmp_path, fp32_run):
    tiny_root = small_root
    teacher = str(fp32_run / "best.pt")
    flags = [*TINY, "--bits", "2", "--quantizer", "slr", "--block", "cqb", "--init", teacher, "--teacher", teacher]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["--data-root", str(tiny_root), "--out", str(straight), *flags, "--epochs", "2"]) == 0
    assert main(["--data-root", str(tiny_root), "--out", str(resumed), *flags, "--epochs", "1"]) == 0
    assert main(["--data-root", str(tiny_root), "--out", str(resumed), *flags, "--epochs", "2", "--resume"]) == 0
    payload = load_checkpoint(straight / "last.pt")
    assert payload["config"]["train"]["teacher"] == teacher and payload["config"]["quant"]["block"] == "cqb"
    # The teacher is not part of the student's checkpoint.
    assert set(payload["model"]) == set(build_detector(load_config(overrides=["quant.bits=2", "quant.quantizer=slr", "quant.block=cqb"])).state_dict())
    a, b = payload["model"], load_checkpoint(resumed / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((straight / "metrics.json").read_text())["test"] == json.loads((resumed / "metrics.json").read_text())["test"]


def test_cli_rejects_a_bad_init_and_bad_distillation_settings(small_root, tmp_path, fp32_run, capsys):
    tiny_root = small_root
    out = tmp_path / "bad"
    assert main(["--data-root", str(tiny_root), "--out", str(out), *TINY, "--arch", "mobilenet_v2", "--init", str(fp32_run / "best.pt")]) == 1
    assert "holds a trunc_resnet18 model" in capsys.readouterr().err
    assert main(["--data-root", str(tiny_root), "--out", str(out), "--set", "train.distill_alpha=2"]) == 2
    assert "train.distill_alpha=2.0 must be a probability" in capsys.readouterr().err
    assert main(["--data-root", str(tiny_root), "--out", str(out), "--block", "cqbb"]) == 2
    assert "did you mean 'cqb'" in capsys.readouterr().err
