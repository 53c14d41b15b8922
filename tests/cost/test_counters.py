"""Counters against hand-computed toy networks and torch's FlopCounterMode."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from qmdd.config import QuantConfig
from qmdd.cost import cost_summary, count_costs, fp32_storage_bits, macs, parameter_count, storage_bits
from qmdd.models import create_model
from qmdd.quant import Quantizer, calibrate, quantize
from qmdd.report import main as report_main


def _toy() -> nn.Module:
    # 3x10x10 input. Hand counts per image:
    #   stem 3->8 3x3 pad 1:            8*10*10 outputs * 3*9      = 21600 MACs
    #   depthwise 8 3x3 s2 pad 1 g8:    8*5*5 outputs   * 1*9      =  1800
    #   grouped 1x1 8->4 g2:            4*5*5 outputs   * (8/2)*1  =   400
    #   linear 100->2:                  2 outputs       * 100      =   200
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, groups=2, bias=False),
        nn.Flatten(),
        nn.Linear(100, 2),
    )


HAND_MACS = {"0": 21600, "2": 1800, "4": 400, "6": 200}


def _calibrated(model: nn.Module, size: int) -> nn.Module:
    torch.manual_seed(0)
    calibrate(model, [torch.randn(2, 3, size, size)])
    return model.eval()


def test_toy_macs_match_hand_counts_and_flop_counter():
    model = _toy()
    report = count_costs(model, (3, 10, 10))
    assert {layer.name: layer.macs for layer in report.layers} == HAND_MACS
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 10, 10))
    assert counter.get_total_flops() == 2 * sum(HAND_MACS.values())


def test_toy_bops_flops_ops_follow_the_bit_widths():
    model = quantize(_toy(), QuantConfig(bits=2))  # first conv and last linear stay FP32
    report = count_costs(model, 10)
    by_name = {layer.name: layer for layer in report.layers}
    assert (by_name["0"].weight_bits, by_name["6"].act_bits) == (32, 32)
    assert report.bops == (1800 + 400) * 2 * 2
    assert report.flops == 21600 + 200
    assert report.ops == pytest.approx((1800 + 400) * 4 / 64 + 21600 + 200)
    assert report.fp32_ops == sum(HAND_MACS.values())
    assert report.ops_ratio == pytest.approx(sum(HAND_MACS.values()) / report.ops)


def test_toy_storage_counts_low_bit_weights_at_their_width():
    float_model = _toy()
    float_bits = 32 * sum(t.numel() for t in float_model.state_dict().values())
    assert storage_bits(float_model) == float_bits == fp32_storage_bits(float_model)
    model = quantize(float_model, QuantConfig(bits=3))
    quantizer_elements = sum(
        t.numel() for m in model.modules() if isinstance(m, Quantizer) for t in m.state_dict().values()
    )
    low_bit_weights = 8 * 9 + 4 * 4  # depthwise + grouped weights
    expected = float_bits - (32 - 3) * low_bit_weights + 32 * quantizer_elements
    assert storage_bits(model) == expected
    assert fp32_storage_bits(model) == float_bits
    assert parameter_count(model) == parameter_count(float_model)


def test_pruning_masks_cost_one_bit_per_weight():
    model = quantize(_toy(), QuantConfig(bits=2))
    before = storage_bits(model)
    fp32_before = fp32_storage_bits(model)
    prune.l1_unstructured(model[2], "weight", amount=0.5)
    assert storage_bits(model) == before + model[2].weight_mask.numel()
    assert fp32_storage_bits(model) == fp32_before


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("bits", [32, 2])
def test_torchvision_macs_match_flop_counter(arch: str, bits: int):
    torch.manual_seed(0)
    model = create_model(arch)
    if bits < 32:
        _calibrated(quantize(model, QuantConfig(bits=bits)), 32)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
    assert 2 * macs(model, 48) == counter.get_total_flops()


def test_bops_scale_with_the_product_of_bit_widths():
    w2 = count_costs(quantize(create_model("resnet18"), QuantConfig(bits=2)), 32)
    w3 = count_costs(quantize(create_model("resnet18"), QuantConfig(bits=3)), 32)
    assert w3.bops * 4 == w2.bops * 9
    assert w2.flops == w3.flops > 0
    assert w2.macs == w3.macs
    assert w2.storage_ratio > w3.storage_ratio > 1


def test_cost_summary_is_json_safe_and_fp32_has_unit_ratios():
    fp32 = cost_summary(create_model("resnet18"), 32)
    json.dumps(fp32, allow_nan=False)
    assert fp32["ops_ratio"] == pytest.approx(1.0) and fp32["storage_ratio"] == pytest.approx(1.0)
    w2 = cost_summary(quantize(create_model("resnet18"), QuantConfig(bits=2)), 32)
    assert w2["params"] == fp32["params"] and w2["macs"] == fp32["macs"]
    assert w2["ops_ratio"] > 5 and 10 < w2["storage_ratio"] < 16


def test_bad_input_size_is_rejected():
    with pytest.raises(ValueError, match="input_size"):
        count_costs(_toy(), (3, 0, 10))


def test_report_cli_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "cost.json"
    assert report_main(["--arch", "resnet18", "--bits", "2", "--input-size", "32", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ratios vs FP32" in printed and "layer1.0.conv1" in printed
    payload = json.loads(out.read_text())
    expected = cost_summary(quantize(create_model("resnet18"), QuantConfig(bits=2)), 32)
    assert payload["ops"] == pytest.approx(expected["ops"])
    assert payload["storage_bits"] == expected["storage_bits"]
    assert sum(row["macs"] for row in payload["layers"]) == payload["macs"]


def test_report_cli_rejects_mixed_sources(capsys):
    assert report_main(["--checkpoint", "x.pt", "--arch", "resnet18"]) == 2
    assert "either --checkpoint" in capsys.readouterr().err
    assert report_main(["--checkpoint", "missing.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
