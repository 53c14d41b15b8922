"""A ReLU6 fused into the activation quantizer after it (qmdd/quant/_fuse.py) computes
what the two modules compute in a row: forward, input gradient and parameter gradients,
in the native kernels and in the Python forms, and outside autograd it is a ReLU6 again."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from qmdd.config import QuantConfig
from qmdd.deploy import lowbit_float_model
from qmdd.quant import DeferredClamp, QConv2d, calibrate, fuse_activation_clamps, quantize, unfuse_activation_clamps
from qmdd.quant import _native
from qmdd.quant._lsq import lsq_fake_quant
from qmdd.quant._n2uq import n2uq_fake_quant
from qmdd.quant._slr import slr_fake_quant

FAMILIES = ("lsq", "n2uq", "slr")
GRAD_SCALE = torch.tensor(0.05)
#: Inputs at and around the clamp's ends, and the values that propagate.
SPECIALS = torch.tensor([0.0, -0.0, 6.0, 5.9999995, 6.0000005, -1e-30, 1e-30, 7.0, -3.0, float("inf"), float("-inf"), float("nan")])


def _family(family: str):
    """(fake_quant(x, params, ceiling), params) with learnable parameters, 2 bits."""
    if family == "lsq":
        params = (torch.tensor(1.7),)
        return (lambda x, p, ceiling=None: lsq_fake_quant(x, p[0], 0, 3, GRAD_SCALE, ceiling)), params
    if family == "n2uq":
        params = (torch.tensor(0.4), torch.tensor([1.1, 1.9, 1.5]), torch.tensor(4.0))
        return (lambda x, p, ceiling=None: n2uq_fake_quant(x, p[0], p[1], p[2], 0, GRAD_SCALE, ceiling=ceiling)), params
    params = (torch.tensor(0.45), torch.tensor(0.6))
    return (lambda x, p, ceiling=None: slr_fake_quant(x, p[0], p[1], 0, 3, GRAD_SCALE, ceiling=ceiling)), params


def _run(function, x, params, fused: bool):
    x = x.clone().requires_grad_()
    params = [p.clone().requires_grad_() for p in params]
    out = function(x, params, 6.0) if fused else function(F.hardtanh(x, 0.0, 6.0), params)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(weights)
    return out.detach(), x.grad, [p.grad for p in params]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_fused_clamp_gives_hardtanh_then_the_quantizer(family, native, monkeypatch):
    if native and _native.native_kernels() is None:
        pytest.skip("native kernels not built on this machine")
    if not native:
        monkeypatch.setattr(_native, "native_kernels", lambda: None)
        for module in ("qmdd.quant._lsq", "qmdd.quant._n2uq", "qmdd.quant._slr"):
            monkeypatch.setattr(f"{module}.native_kernels", lambda: None)
    function, params = _family(family)
    x = torch.randn(3, 5, 41, 37, generator=torch.Generator().manual_seed(0)) * 4 + 2  # beyond both ends
    x.view(-1)[: SPECIALS.numel()] = SPECIALS
    out_f, gx_f, grads_f = _run(function, x, params, fused=True)
    out_r, gx_r, grads_r = _run(function, x, params, fused=False)
    assert torch.equal(out_f.isnan(), out_r.isnan()) and torch.equal(out_f.nan_to_num(), out_r.nan_to_num())
    assert torch.equal(gx_f.isnan(), gx_r.isnan()) and torch.equal(gx_f.nan_to_num(), gx_r.nan_to_num())
    assert (gx_f[x > 6] == 0).all() and (gx_f[x < 0] == 0).all()  # ReLU6's mask
    for g_f, g_r in zip(grads_f, grads_r):
        assert torch.allclose(g_f, g_r, rtol=1e-5, atol=1e-6, equal_nan=True)


def _chain_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
        nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(4.0)  # BN outputs well beyond 6 and below 0
    return model


def _unfused_twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    assert unfuse_activation_clamps(twin) == 2
    assert not any(isinstance(m, DeferredClamp) for m in twin.modules())
    assert all(getattr(m, "input_ceiling", None) is None for m in twin.modules())
    return twin


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bits", [2, 3])
def test_a_quantized_chain_trains_as_with_its_relu6(family, bits):
    model = quantize(_chain_model(), QuantConfig(bits=bits, quantizer=family))
    # conv0 -> ReLU6 -> [dw conv -> BN -> ReLU6] -> conv4 -> BN -> ReLU6 -> pool -> linear:
    # the first two ReLU6 feed quantized convs (one across the nested Sequential), the
    # third the pooling, and stays.
    assert [type(m) for m in (model[2], model[3][2], model[6])] == [DeferredClamp, DeferredClamp, nn.ReLU6]
    assert isinstance(model[3][0], QConv2d) and model[3][0].input_quantizer.input_ceiling == 6.0
    calibrate(model, [torch.randn(4, 3, 16, 16)])
    twin = _unfused_twin(model)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    results = []
    for network in (model, twin):
        network.train()
        inputs = x.clone().requires_grad_()
        out = network(inputs)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), inputs.grad, [p.grad.clone() for p in network.parameters()]))
    (out_f, gx_f, grads_f), (out_r, gx_r, grads_r) = results
    assert torch.equal(out_f, out_r) and torch.equal(gx_f, gx_r)
    for g_f, g_r in zip(grads_f, grads_r):
        assert torch.allclose(g_f, g_r, rtol=1e-5, atol=1e-7)
    model.eval(), twin.eval()
    with torch.no_grad():  # outside autograd the ReLU6 clamps itself
        assert torch.equal(model(x), twin(x))


def test_deferred_clamp_passes_through_only_while_autograd_records():
    clamp = DeferredClamp(6.0)
    x = torch.tensor([-2.0, 3.0, 9.0])
    assert torch.equal(clamp(x), x)
    with torch.no_grad():
        assert torch.equal(clamp(x), torch.tensor([0.0, 3.0, 6.0]))
    traced = torch.jit.trace(clamp, x)
    assert torch.equal(traced(x), torch.tensor([0.0, 3.0, 6.0]))
    # The exports see a plain Hardtanh again.
    model = quantize(_chain_model(), QuantConfig(bits=2))
    calibrate(model, [torch.randn(2, 3, 16, 16)])
    float_model, _, _ = lowbit_float_model(model)
    assert not any(isinstance(m, DeferredClamp) for m in float_model.modules())
    assert sum(type(m) is nn.Hardtanh for m in float_model.modules()) == 2


def test_mobilenet_v2_fuses_the_relu6_inside_its_inverted_residuals():
    model = quantize(torchvision.models.mobilenet_v2(num_classes=1), QuantConfig(bits=2, quantizer="slr"))
    fused = [m for m in model.modules() if isinstance(m, DeferredClamp)]
    # 17 blocks: expand (16 of them) and depthwise feed quantized convs; the stem's ReLU6
    # feeds a block and the last one the pooling, so both stay.
    assert len(fused) == 33
    assert type(model.features[0][2]) is nn.ReLU6 and type(model.features[18][2]) is nn.ReLU6
    assert fuse_activation_clamps(model) == 0  # idempotent
