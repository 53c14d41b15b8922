"""The native (C++) kernels against the Python forms they replace.

LSQ against its chain (``_LSQFakeQuant``), N2UQ and SLR against their fused Python forms
(``_N2UQFakeQuant``, ``_SLRFakeQuant``; ``test_fused_n2uq_slr.py`` also runs its whole
comparison with the textbook references through the native kernels). What "the same"
means: the forward values and input gradients bit for bit (the kernels do the Python
forms' float32 operations in the same order; SLR's log is a series within 2 ulp of torch's
log1p, which redoes any block with a value near a rounding tie or clip limit, and its exp
is looked up from torch.exp at the codes), special values included; parameter gradients to
float rounding (the kernels sum in float lanes flushed into double over fixed chunks, so
their sums do not depend on the thread count, which is tested bit for bit).

The kernels must build here: CI has a compiler, and a silent fallback would leave the
native path untested. ``QMDD_NATIVE_KERNELS=0`` in the environment skips these tests.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from qmdd.quant import _native, _slr
from qmdd.quant._lsq import _LSQFakeQuant, _LSQNativeFakeQuant, lsq_fake_quant
from qmdd.quant._n2uq import _N2UQFakeQuant, _N2UQNativeFakeQuant, _N2UQWeightFakeQuant, _N2UQWeightNativeFakeQuant, n2uq_fake_quant
from qmdd.quant._n2uq import n2uq_weight_fake_quant
from qmdd.quant._slr import _SLRFakeQuant, _SLRNativeFakeQuant, slr_fake_quant

pytestmark = pytest.mark.skipif(os.environ.get(_native.NATIVE_ENV) == "0", reason=f"{_native.NATIVE_ENV}=0")

GRAD_SCALE = torch.tensor(0.01)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns: equal bits, not merely equal values (-0.0 vs 0.0)."""
    return t.contiguous().view(torch.int32)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns, and NaN where the other has NaN: IEEE 754 leaves a computed
    NaN's sign and payload open, and torch's AVX2 and AVX-512 kernels differ there."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(_bits(a[~nan]), _bits(b[~nan]))


def _boundary_inputs(step: float, qmin: int, qmax: int) -> torch.Tensor:
    """Levels, rounding ties, clip limits and one float step either side of each, zeros
    of both signs, values far outside the range, infinities and NaN."""
    points = [k * step for k in range(qmin - 2, qmax + 3)] + [(k + 0.5) * step for k in range(qmin - 2, qmax + 2)]
    x = torch.tensor(points, dtype=torch.float32)
    x = torch.cat([x, torch.nextafter(x, x + 1), torch.nextafter(x, x - 1), torch.tensor([0.0, -0.0, 1e6, -1e6, float("inf"), float("-inf"), float("nan")])])
    return x


def _run(apply, x: torch.Tensor, params, grad_out: torch.Tensor):
    """Output, input gradient and parameter gradients of one form on fresh leaves."""
    x = x.clone().requires_grad_()
    params = [p.clone().requires_grad_() for p in params]
    out = apply(x, *params)
    out.backward(grad_out)
    return out.detach(), x.grad, [p.grad for p in params]


def _both(x: torch.Tensor, step, qmin: int, qmax: int):
    """Forward and gradients of the chain and of the native kernel on the same inputs
    (``step``: a float, or a tensor of per-channel steps shaped to broadcast over dim 0)."""
    step = step if isinstance(step, torch.Tensor) else torch.tensor(step)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def chain(x, s):
        return _LSQFakeQuant.apply(x, s, qmin, qmax, GRAD_SCALE)

    def native(x, s):
        return _LSQNativeFakeQuant.apply(x, s, qmin, qmax, GRAD_SCALE, _native.native_kernels())

    return [(out, gx, grads[0]) for out, gx, grads in (_run(form, x, (step,), grad_out) for form in (chain, native))]


def test_native_kernels_build():
    assert _native.native_kernels() is not None and _native.kernels_in_use() == "native"


@pytest.mark.parametrize("qmin,qmax", [(0, 3), (0, 7), (-2, 1), (-4, 3)])
@pytest.mark.parametrize("inputs", ["random", "boundaries"])
def test_native_lsq_matches_the_chain(qmin, qmax, inputs):
    step = 0.37
    if inputs == "random":
        x = torch.randn(4, 8, 33, 35, generator=torch.Generator().manual_seed(0)) * 2
    else:
        x = _boundary_inputs(step, qmin, qmax)
    (out_py, gx_py, gs_py), (out_nat, gx_nat, gs_nat) = _both(x, step, qmin, qmax)
    assert _same_bits(out_nat, out_py)
    assert _same_bits(gx_nat, gx_py)
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
    assert _same_bits(out_nat, out_py) and _same_bits(gx_nat, gx_py)
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
    assert _same_bits(out_nat, out_py) and _same_bits(gx_nat, gx_py)
    assert gs_nat.shape == gs_py.shape == steps.shape
    assert torch.allclose(gs_nat, gs_py, rtol=1e-4, atol=1e-8)


# ---------------------------------------------------------------------- N2UQ and SLR

SPECIALS = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-44, -1e-44, 1e6, -1e6, 1.6e38, -1.6e38, 3e38, -3e38, float("inf"), float("-inf"), float("nan")])


def _n2uq_case(qmin: int, levels: int):
    """(apply_fused, apply_native, parameters) for an N2UQ grid of ``levels`` thresholds."""
    widths = torch.rand(levels - 1, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.1
    start = torch.tensor((qmin + 0.5) * 0.37)
    scale = torch.tensor(levels * 0.37 / 2)

    def fused(x, *params):
        return _N2UQFakeQuant.apply(x, *params, qmin, GRAD_SCALE, True)

    def native(x, *params):
        return _N2UQNativeFakeQuant.apply(x, *params, qmin, GRAD_SCALE, True, _native.native_kernels())

    return fused, native, (start, widths, scale)


def _slr_case(qmin: int, qmax: int):
    def fused(x, step, shift):
        return _SLRFakeQuant.apply(x, step, shift, qmin, qmax, GRAD_SCALE, True)

    def native(x, step, shift):
        return _SLRNativeFakeQuant.apply(x, step, shift, qmin, qmax, GRAD_SCALE, True, _native.native_kernels())

    return fused, native, (torch.tensor(0.45), torch.tensor(0.6))


CASES = {
    "n2uq-w2-unsigned": lambda: _n2uq_case(0, 3),
    "n2uq-w3-unsigned": lambda: _n2uq_case(0, 7),
    "n2uq-w4-unsigned": lambda: _n2uq_case(0, 15),
    "n2uq-w2-signed": lambda: _n2uq_case(-2, 3),
    "n2uq-w3-signed": lambda: _n2uq_case(-4, 7),
    "slr-w2-unsigned": lambda: _slr_case(0, 3),
    "slr-w3-unsigned": lambda: _slr_case(0, 7),
    "slr-w4-unsigned": lambda: _slr_case(0, 15),
    "slr-w2-signed": lambda: _slr_case(-2, 1),
    "slr-w3-signed": lambda: _slr_case(-4, 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_native_n2uq_and_slr_match_the_fused_forms(case):
    """Forward and input gradient bit for bit, zeros of both signs, tiny, huge, infinite
    and NaN inputs included; parameter gradients to rounding (NaN in the same places:
    with these inputs, every SLR sum and the N2UQ width sums)."""
    fused, native, params = CASES[case]()
    x = torch.randn(4, 8, 33, 35, generator=torch.Generator().manual_seed(0)) * 2
    x.view(-1)[: SPECIALS.numel()] = SPECIALS
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out_py, gx_py, grads_py = _run(fused, x, params, grad_out)
    out_nat, gx_nat, grads_nat = _run(native, x, params, grad_out)
    assert _same_bits(out_nat, out_py)
    assert _same_bits(gx_nat, gx_py)
    for g_nat, g_py in zip(grads_nat, grads_py):
        assert torch.equal(g_nat.isnan(), g_py.isnan())
        assert torch.allclose(g_nat, g_py, rtol=1e-4, atol=1e-6, equal_nan=True)
    finite = x.view(-1)[SPECIALS.numel() :].clone()  # the random part, flat (any shape goes)
    grad_finite = grad_out.view(-1)[SPECIALS.numel() :].clone()
    _, _, grads_py = _run(fused, finite, params, grad_finite)
    _, _, grads_nat = _run(native, finite, params, grad_finite)
    for g_nat, g_py in zip(grads_nat, grads_py):
        assert g_nat.shape == g_py.shape
        assert torch.allclose(g_nat, g_py, rtol=1e-4, atol=1e-6), (g_nat, g_py)


@pytest.mark.parametrize("case", ["n2uq-w2-unsigned", "n2uq-w3-signed", "slr-w2-unsigned", "slr-w3-signed"])
def test_native_results_do_not_depend_on_the_thread_count(case):
    """More elements than one parallel chunk (32768): one thread and two give the same
    bits, parameter-gradient sums included (fixed chunks, added in order), and the same
    forward and input gradient as the fused form."""
    fused, native, params = CASES[case]()
    x = torch.randn(3, 64, 31, 29, generator=torch.Generator().manual_seed(2)) * 2
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2):
            torch.set_num_threads(count)
            runs.append(_run(native, x, params, grad_out))
        out_py, gx_py, _ = _run(fused, x, params, grad_out)
    finally:
        torch.set_num_threads(threads)
    (out_1, gx_1, grads_1), (out_2, gx_2, grads_2) = runs
    assert _same_bits(out_1, out_2) and _same_bits(gx_1, gx_2)
    assert all(_same_bits(a, b) for a, b in zip(grads_1, grads_2))
    assert _same_bits(out_2, out_py) and _same_bits(gx_2, gx_py)


def test_the_slr_kernels_log_is_within_two_float_steps_of_torchs():
    """The SLR kernels' series log1p, on which their exactness rests (slr.h: a block is
    redone with torch's log where v comes within 2^-18 |v| of a tie or a clip limit, a
    margin sized for 2 ulp here): over t in [-1/2, 2^20], dense near 0 and near 1 + t = 2^e."""
    generator = torch.Generator().manual_seed(5)
    spans = [torch.rand(400_000, generator=generator) * 0.5 - 0.5, torch.rand(400_000, generator=generator) * 4]
    spans.append(torch.exp2(torch.rand(400_000, generator=generator) * 40 - 20))  # 1e-6 .. 1e6
    powers = torch.exp2(torch.arange(-24.0, 21.0)) - 1
    spans.append(torch.cat([powers, torch.nextafter(powers, powers + 1), torch.nextafter(powers, powers - 1)]).clamp_min(-0.5))
    spans.append(torch.tensor([0.0, -0.0, -0.5, 1e-30, -1e-30, 2.0**20]))
    t = torch.cat(spans)
    t = t[(t.abs() >= torch.finfo(torch.float32).tiny) | (t == 0)]  # subnormal t: the kernels ask torch
    ours, torchs = _native.native_kernels().series_log1p(t), torch.log1p(t)
    assert torch.equal(ours.sign(), torchs.sign())
    steps = (ours.view(torch.int32).long() - torchs.view(torch.int32).long()).abs()  # same sign: float steps apart
    assert int(steps.max()) <= 2
    assert _same_bits(ours[t == 0], t[t == 0])  # log1p(+-0) = +-0


@pytest.mark.parametrize("qmin, qmax", [(0, 3), (0, 7), (-2, 1), (-4, 3)])
def test_native_slr_is_exact_next_to_every_tie_and_clip_limit(qmin, qmax):
    """Inputs within 64 float steps of each rounding tie and clip limit of the grid (where
    the kernel's series log and torch's could round v differently): the same output and
    input gradient as the fused form, bit for bit, and parameter gradients to rounding."""
    fused, native, (step, shift) = _slr_case(qmin, qmax)
    ties = _slr.slr_thresholds(float(step), float(shift), qmin, qmax)
    limits = _slr.slr_thresholds(float(step), float(shift), qmin - 1, qmax + 1)  # includes v = qmin, qmax
    centres = torch.cat([ties, limits]).float()
    below, above = centres.clone(), centres.clone()
    neighbours = [centres]
    for _ in range(64):
        below, above = torch.nextafter(below, below - 1), torch.nextafter(above, above + 1)
        neighbours += [below, above]
    x = torch.cat(neighbours).repeat(3)  # several blocks' worth, so some blocks have no doubt
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out_py, gx_py, grads_py = _run(fused, x, (step, shift), grad_out)
    out_nat, gx_nat, grads_nat = _run(native, x, (step, shift), grad_out)
    assert _same_bits(out_nat, out_py)
    assert _same_bits(gx_nat, gx_py)
    for g_nat, g_py in zip(grads_nat, grads_py):
        assert torch.allclose(g_nat, g_py, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(24, 16, 3, 3), (96, 32, 1, 1), (10, 70)])
def test_native_n2uq_weights_match_the_fused_form(bits, shape):
    """Per output channel: outputs and gradients bit for bit, weights on the clip limits
    and on rounding ties (w = 0 sits on one at every width) included, on two threads."""
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) * 0.1
    flat = weight.view(shape[0], -1)
    levels = 2**bits - 1
    scale = levels / 2 ** (bits - 1) * flat.abs().mean(dim=1)
    flat[:, 0] = 0.0
    flat[1, 1] = scale[1]  # on the clip limit (approximately: the mean moves with it)
    flat[2, 1] = -3 * scale[2]  # outside it
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for native in (False, True):
            w = weight.clone().requires_grad_()
            if native:
                out = _N2UQWeightNativeFakeQuant.apply(w, bits, True, _native.native_kernels())
            else:
                out = _N2UQWeightFakeQuant.apply(w, bits, True)
            out.backward(grad_out)
            results.append((out.detach(), w.grad))
    finally:
        torch.set_num_threads(threads)
    (out_py, gw_py), (out_nat, gw_nat) = results
    assert _same_bits(out_nat, out_py) and _same_bits(gw_nat, gw_py)
    assert bool((gw_py == 0).any())  # the clip is exercised


class _Counting:
    """The compiled kernels, recording the name of each one called."""

    def __init__(self, calls: list):
        self._kernels, self._calls = _native.native_kernels(), calls

    def __getattr__(self, name):
        kernel = getattr(self._kernels, name)

        def counted(*args):
            self._calls.append(name)
            return kernel(*args)

        return counted


def test_lsq_fake_quant_dispatches_per_tensor_and_per_channel_steps_only(monkeypatch):
    calls = []
    monkeypatch.setitem(_native._state, "kernels", _Counting(calls))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    lsq_fake_quant(x, torch.tensor(0.5, requires_grad=True), 0, 3, GRAD_SCALE).sum().backward()
    assert calls == ["lsq_forward", "lsq_backward"]
    lsq_fake_quant(torch.randn(4, 3, 3, 3), torch.full((4, 1, 1, 1), 0.5), -2, 1, GRAD_SCALE)  # per channel
    assert calls == ["lsq_forward", "lsq_backward", "lsq_forward"]
    # Other dtypes, non-contiguous inputs and steps laid out otherwise keep the chain.
    lsq_fake_quant(torch.randn(4, 3, 3, 3), torch.full((1, 3, 1, 1), 0.5), -2, 1, GRAD_SCALE)
    lsq_fake_quant(torch.randn(4, 4), torch.full((4,), 0.5), -2, 1, GRAD_SCALE)  # broadcasts along dim 1
    assert lsq_fake_quant(torch.randn(5), torch.full((1, 1), 0.5), -2, 1, GRAD_SCALE).shape == (1, 5)
    lsq_fake_quant(torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), 0, 3, GRAD_SCALE)
    lsq_fake_quant(torch.randn(4, 4, 3).transpose(0, 2), torch.tensor(0.5), 0, 3, GRAD_SCALE)
    assert calls == ["lsq_forward", "lsq_backward", "lsq_forward"]


def test_n2uq_and_slr_dispatch_float32_inputs_and_grids_of_2_to_4_bits_only(monkeypatch):
    calls = []
    monkeypatch.setitem(_native._state, "kernels", _Counting(calls))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    step, shift = torch.tensor(0.4, requires_grad=True), torch.tensor(0.5)
    slr_fake_quant(x, step, shift, 0, 3, GRAD_SCALE).sum().backward()
    widths = torch.full((2,), 0.3, requires_grad=True)
    n2uq_fake_quant(x, torch.tensor(0.1), widths, torch.tensor(0.6), 0, GRAD_SCALE).sum().backward()
    n2uq_weight_fake_quant(torch.randn(4, 3, 3, 3, requires_grad=True), 2).sum().backward()
    assert calls == ["slr_forward", "slr_backward", "n2uq_forward", "n2uq_backward", "n2uq_weight_forward", "n2uq_weight_backward"]
    calls.clear()
    # 8-bit grids, float64 and non-contiguous inputs keep the Python forms.
    slr_fake_quant(x.detach(), step, shift, 0, 255, GRAD_SCALE)
    slr_fake_quant(x.detach().double(), step.double(), shift.double(), 0, 3, GRAD_SCALE)
    slr_fake_quant(x.detach().transpose(1, 3), step, shift, 0, 3, GRAD_SCALE)
    n2uq_fake_quant(x.detach(), torch.tensor(0.1), torch.full((254,), 0.01), torch.tensor(0.6), 0, GRAD_SCALE)
    n2uq_fake_quant(x.detach().double(), torch.tensor(0.1).double(), widths.detach().double(), torch.tensor(0.6).double(), 0, GRAD_SCALE)
    n2uq_weight_fake_quant(torch.randn(4, 3, 3, 3, dtype=torch.float64), 2)
    assert calls == []


def test_a_failed_build_is_said_once_and_training_goes_on(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("error: command 'c++' failed: No such file or directory")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(_native, "_state", {})
    assert _native.kernels_in_use() is None  # not needed yet: nothing to record
    with pytest.warns(RuntimeWarning, match="could not build its native fake-quantization kernels.*c\\+\\+"):
        assert _native.native_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.native_kernels() is None  # decided once: no second attempt, no second warning
        assert _native.kernels_in_use() == "python"
        x = torch.randn(2, 3, 4, 4)
        assert torch.equal(lsq_fake_quant(x, torch.tensor(0.5), 0, 3, GRAD_SCALE), _LSQFakeQuant.apply(x, torch.tensor(0.5), 0, 3, GRAD_SCALE))


def test_the_environment_switch_skips_the_build(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setenv(_native.NATIVE_ENV, "0")
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("built although disabled"))
    assert _native.native_kernels() is None


@pytest.mark.parametrize("quantizer", ["lsq", "n2uq", "slr"])
def test_tracing_sees_the_python_forms(quantizer):
    """TorchScript tracing (and ONNX export, which traces) records the Python forms'
    operators, not an opaque C++ call: the traced model runs without the kernels and
    computes what the model computes with them."""
    from qmdd.config import QuantConfig
    from qmdd.quant import calibrate, quantize

    model = quantize(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)), QuantConfig(bits=2, quantizer=quantizer)
    )
    x = torch.randn(2, 3, 8, 8)
    calibrate(model, [x])
    model.eval()
    traced = torch.jit.trace(model, x, check_trace=False)
    assert "qmdd_native" not in str(traced.graph)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("family", ["lsq", "n2uq", "slr"])
def test_native_backward_refuses_double_backward(family):
    """Their backward is not differentiable: differentiating it again is an error, not a
    silently missing term."""
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    if family == "lsq":
        out = lsq_fake_quant(x, torch.tensor(0.5), 0, 3, GRAD_SCALE)
    elif family == "n2uq":
        out = n2uq_fake_quant(x, torch.tensor(0.1), torch.full((2,), 0.3), torch.tensor(0.6), 0, GRAD_SCALE)
    else:
        out = slr_fake_quant(x, torch.tensor(0.4), torch.tensor(0.5), 0, 3, GRAD_SCALE)
    weights = torch.randn(out.shape, requires_grad=True)
    (grad,) = torch.autograd.grad(out, x, weights, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
