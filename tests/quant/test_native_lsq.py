"""The native (C++) LSQ kernel against the Python chain it replaces (``_LSQFakeQuant``).

What "the same" means: the forward values and input gradients bit for bit (the kernel
computes ``x / s``, the clip, round-half-to-even and ``* s`` in float32 as the chain does,
and the mask from the same ``x / s``); the step gradient to float rounding (the kernel sums
in double per chunk, the chain pairwise in float32).

The kernel must build here: CI has a compiler, and a silent fallback would leave the
native path untested. ``QMDD_NATIVE_KERNELS=0`` in the environment skips these tests.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from qmdd.quant import _native
from qmdd.quant._lsq import _LSQFakeQuant, _LSQNativeFakeQuant, lsq_fake_quant

pytestmark = pytest.mark.skipif(os.environ.get(_native.NATIVE_ENV) == "0", reason=f"{_native.NATIVE_ENV}=0")

GRAD_SCALE = torch.tensor(0.01)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns: equal bits, not merely equal values (-0.0 vs 0.0, NaN)."""
    return t.contiguous().view(torch.int32)


def _boundary_inputs(step: float, qmin: int, qmax: int) -> torch.Tensor:
    """Levels, rounding ties, clip limits and one float step either side of each, zeros
    of both signs, values far outside the range, infinities and NaN."""
    points = [k * step for k in range(qmin - 2, qmax + 3)] + [(k + 0.5) * step for k in range(qmin - 2, qmax + 2)]
    x = torch.tensor(points, dtype=torch.float32)
    x = torch.cat([x, torch.nextafter(x, x + 1), torch.nextafter(x, x - 1), torch.tensor([0.0, -0.0, 1e6, -1e6, float("inf"), float("-inf"), float("nan")])])
    return x


def _both(x: torch.Tensor, step, qmin: int, qmax: int):
    """Forward and gradients of the chain and of the native kernel on the same inputs
    (``step``: a float, or a tensor of per-channel steps shaped to broadcast over dim 0)."""
    results = []
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for native in (False, True):
        xr = x.clone().requires_grad_()
        s = (step.clone() if isinstance(step, torch.Tensor) else torch.tensor(step)).requires_grad_()
        if native:
            out = _LSQNativeFakeQuant.apply(xr, s, qmin, qmax, GRAD_SCALE, _native.native_lsq())
        else:
            out = _LSQFakeQuant.apply(xr, s, qmin, qmax, GRAD_SCALE)
        out.backward(grad_out)
        results.append((out.detach(), xr.grad, s.grad))
    return results


def test_native_kernel_builds():
    assert _native.native_lsq() is not None and _native.lsq_kernel_in_use() == "native"


@pytest.mark.parametrize("qmin,qmax", [(0, 3), (0, 7), (-2, 1), (-4, 3)])
@pytest.mark.parametrize("inputs", ["random", "boundaries"])
def test_native_lsq_matches_the_chain(qmin, qmax, inputs):
    step = 0.37
    if inputs == "random":
        x = torch.randn(4, 8, 33, 35, generator=torch.Generator().manual_seed(0)) * 2
    else:
        x = _boundary_inputs(step, qmin, qmax)
    (out_py, gx_py, gs_py), (out_nat, gx_nat, gs_nat) = _both(x, step, qmin, qmax)
    assert torch.equal(_bits(out_nat), _bits(out_py))
    assert torch.equal(_bits(gx_nat), _bits(gx_py))
    if inputs == "boundaries":  # infinities and NaN make the step gradient NaN in both
        assert gs_nat.isnan() and gs_py.isnan()
        finite = x.isfinite()
        (out_py, gx_py, gs_py), (out_nat, gx_nat, gs_nat) = _both(x[finite], step, qmin, qmax)
        x = x[finite]
    # A sum of N terms reordered moves by at most ~N eps sum|terms| (float32 pairwise in
    # the chain); the terms are g * out and g * x, each of size |g| (|x| + |out|).
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    bound = 1e-6 * float((grad_out.abs() * (x.abs() + out_py.abs())).sum()) * float(GRAD_SCALE) / step
    assert abs(float(gs_nat) - float(gs_py)) <= bound + 1e-12


def test_native_lsq_is_exact_across_parallel_chunks():
    """More elements than one parallel chunk (32768), on two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(3, 64, 31, 29, generator=torch.Generator().manual_seed(2)).relu_()
        (out_py, gx_py, gs_py), (out_nat, gx_nat, gs_nat) = _both(x, 0.21, 0, 3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(out_nat), _bits(out_py)) and torch.equal(_bits(gx_nat), _bits(gx_py))
    assert torch.allclose(gs_nat, gs_py, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("shape", [(24, 16, 3, 3), (256, 129, 1, 1)])
def test_native_lsq_per_channel_matches_the_chain(shape):
    """Weights: one step per output channel, signed grid; channels of 144 elements (a
    multiple of the kernel's 16 lanes) and of 129 (a remainder), the larger on two threads
    (more than one parallel task)."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(*shape, generator=generator) * 0.1
    steps = (torch.rand(shape[0], generator=generator) * 0.05 + 0.01).view(-1, 1, 1, 1)
    weight.view(shape[0], -1)[0, :3] = steps[0, 0, 0, 0] * torch.tensor([0.5, 1.5, -2.5])  # rounding ties
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (out_py, gx_py, gs_py), (out_nat, gx_nat, gs_nat) = _both(weight, steps, -2, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(out_nat), _bits(out_py)) and torch.equal(_bits(gx_nat), _bits(gx_py))
    assert gs_nat.shape == gs_py.shape == steps.shape
    assert torch.allclose(gs_nat, gs_py, rtol=1e-4, atol=1e-8)


def test_lsq_fake_quant_dispatches_per_tensor_and_per_channel_steps_only(monkeypatch):
    calls = []
    kernels = _native.native_lsq()

    class Counting:
        def lsq_forward(self, *args):
            calls.append("forward")
            return kernels.lsq_forward(*args)

        def lsq_backward(self, *args):
            calls.append("backward")
            return kernels.lsq_backward(*args)

    monkeypatch.setitem(_native._state, "lsq", Counting())
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    lsq_fake_quant(x, torch.tensor(0.5, requires_grad=True), 0, 3, GRAD_SCALE).sum().backward()
    assert calls == ["forward", "backward"]
    lsq_fake_quant(torch.randn(4, 3, 3, 3), torch.full((4, 1, 1, 1), 0.5), -2, 1, GRAD_SCALE)  # per channel
    assert calls == ["forward", "backward", "forward"]
    # Other dtypes, non-contiguous inputs and steps laid out otherwise keep the chain.
    lsq_fake_quant(torch.randn(4, 3, 3, 3), torch.full((1, 3, 1, 1), 0.5), -2, 1, GRAD_SCALE)
    lsq_fake_quant(torch.randn(4, 4), torch.full((4,), 0.5), -2, 1, GRAD_SCALE)  # broadcasts along dim 1
    assert lsq_fake_quant(torch.randn(5), torch.full((1, 1), 0.5), -2, 1, GRAD_SCALE).shape == (1, 5)
    lsq_fake_quant(torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), 0, 3, GRAD_SCALE)
    lsq_fake_quant(torch.randn(4, 4, 3).transpose(0, 2), torch.tensor(0.5), 0, 3, GRAD_SCALE)
    assert calls == ["forward", "backward", "forward"]


def test_a_failed_build_is_said_once_and_training_goes_on(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("error: command 'c++' failed: No such file or directory")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(_native, "_state", {})
    assert _native.lsq_kernel_in_use() is None  # not needed yet: nothing to record
    with pytest.warns(RuntimeWarning, match="could not build its native LSQ kernel.*c\\+\\+"):
        assert _native.native_lsq() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.native_lsq() is None  # decided once: no second attempt, no second warning
        assert _native.lsq_kernel_in_use() == "python"
        x = torch.randn(2, 3, 4, 4)
        assert torch.equal(lsq_fake_quant(x, torch.tensor(0.5), 0, 3, GRAD_SCALE), _LSQFakeQuant.apply(x, torch.tensor(0.5), 0, 3, GRAD_SCALE))


def test_the_environment_switch_skips_the_build(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setenv(_native.NATIVE_ENV, "0")
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("built although disabled"))
    assert _native.native_lsq() is None


def test_tracing_sees_the_python_chain():
    """TorchScript tracing (and ONNX export, which traces) records the chain's operators,
    not an opaque C++ call: the traced model runs without the kernel."""
    from qmdd.config import QuantConfig
    from qmdd.quant import calibrate, quantize

    model = quantize(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)), QuantConfig(bits=2))
    x = torch.randn(2, 3, 8, 8)
    calibrate(model, [x])
    model.eval()
    traced = torch.jit.trace(model, x, check_trace=False)
    assert "qmdd_native" not in str(traced.graph)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_native_backward_refuses_double_backward():
    """Its backward is not differentiable: differentiating it again is an error, not a
    silently missing term."""
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = lsq_fake_quant(x, torch.tensor(0.5), 0, 3, GRAD_SCALE)
    weights = torch.randn(out.shape, requires_grad=True)
    (grad,) = torch.autograd.grad(out, x, weights, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
