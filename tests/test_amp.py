"""Mixed precision (train.amp / --amp bf16): quantizers under autocast, the loop, the config."""

import math

import pytest
import torch
from torch import nn

from qmdd.config import ConfigError, DataConfig, QuantConfig, load_config
from qmdd.data import build_training_data
from qmdd.quant import calibrate, quantize
from qmdd.train import main
from qmdd.training import Trainer
from qmdd.training._loop import autocast


def _bn_model(quantizer: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1),
    )
    config = QuantConfig(bits=2, quantizer=quantizer)
    quantize(model, config)
    return model


@pytest.mark.parametrize("quantizer", ["lsq", "n2uq", "slr"])
def test_quantizers_run_under_bf16_autocast_with_fp32_parameters_and_gradients(quantizer):
    model = _bn_model(quantizer)
    images = torch.randn(8, 3, 16, 16)
    calibrate(model, [images])
    reference = model(images)
    with autocast(torch.device("cpu"), "bf16"):
        logits = model(images)
    assert logits.dtype == torch.bfloat16  # the convolutions ran in bf16
    # bf16 keeps 8 bits of mantissa: close to FP32, not equal.
    assert torch.allclose(logits.float(), reference, atol=0.05 * reference.abs().max().item())
    logits.float().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), name


def test_the_loop_trains_in_bf16(tiny_root):
    data = build_training_data(DataConfig(root=str(tiny_root), crop_size=16), seed=0)
    model = _bn_model("lsq")
    calibrate(model, [torch.stack([data.train[i][0] for i in range(8)])])
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model, torch.optim.Adam(model.parameters(), lr=1e-3), data.train, data.val,
        batch_size=8, device=torch.device("cpu"), seed=0, amp="bf16",
    )
    state = trainer.fit(1)
    assert state.step == 6 and math.isfinite(state.history[0]["ap"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="amp must be one of"):
        Trainer(model, trainer.optimizer, data.train, data.val, batch_size=8, device=torch.device("cpu"), seed=0, amp="fp8")


def test_amp_config_key_and_flag(tmp_path, capsys):
    assert load_config(None, ["train.amp=bf16"]).train.amp == "bf16"
    assert load_config(None, []).train.amp == "none"
    with pytest.raises(ConfigError, match="did you mean 'bf16'"):
        load_config(None, ["train.amp=bf15"])
    assert main(["--amp", "bf16", "--print-config"]) == 0
    assert "amp: bf16" in capsys.readouterr().out
    assert main(["--amp", "fp8", "--out", str(tmp_path / "x")]) == 2
    assert "train.amp='fp8' is unknown" in capsys.readouterr().err
