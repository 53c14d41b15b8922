"""The fused N2UQ and SLR fake quantizers against their textbook references.

The fused autograd Functions (``n2uq_fake_quant``, ``n2uq_weight_fake_quant``,
``slr_fake_quant``) must compute the maths of the reference compositions they replace
(``*_reference``, the former implementations), on random tensors and at the range
boundaries: inputs exactly on thresholds, levels, rounding ties and clip limits (and one
float step either side), zeros of both signs, negatives on unsigned and signed grids.
Every test runs twice (the ``form`` fixture): with the fused Python forms, and with the
native kernels, which float32 CPU inputs at 2 to 4 bits dispatch to (float64 and 8-bit
grids keep the fused forms); the native kernels are held to the same bounds.

What "the same" means, and why:

- **forward**: bit for bit (``torch.equal``). The fused forms run the reference's own
  rounding steps (in place), or look values up exactly (sums of 0/1 masks, ``lerp`` with
  weights 0 and 1), so no tolerance is needed.
- **N2UQ input and N2UQ weight gradients**: bit for bit; each is the reference's product.
- **SLR input gradient**: the same factors, multiplied in another order
  ``((beta growth) m) / (|x| + beta)`` against ``((g beta) growth) m / (|x| + beta)``:
  at most a few roundings apart, so within ``4 eps |ref|`` elementwise.
- **parameter gradients** (N2UQ start, widths and output scale; SLR step and shift): sums
  over every element of per-element terms that are the reference's to a rounding or two,
  summed in another order (BLAS or pairwise reductions against scatter-adds and pairwise
  sums; the native kernels' 16 float lanes of at most 64 terms each, flushed into double). Reordering a sum of N terms moves it by at most ~log2(N) eps sum|terms| for the
  blocked/pairwise reductions used, so the bound used is ``64 eps sum|terms|`` with the
  terms' magnitudes taken from the reference's own per-element factors (~4x log2(N) for
  the sizes here). In float64 that is ~1e-14 of sum|terms|: a gradcheck-strength equality.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from qmdd.quant import N2UQActivationQuantizer, N2UQWeightQuantizer, SLRActivationQuantizer, _native
from qmdd.quant._n2uq import (
    n2uq_fake_quant,
    n2uq_fake_quant_reference,
    n2uq_thresholds,
    n2uq_weight_fake_quant,
    n2uq_weight_fake_quant_reference,
)
from qmdd.quant._slr import slr_fake_quant, slr_fake_quant_reference

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=["fused", "native"], autouse=True)
def form(request, monkeypatch):
    """Runs each test with the fused Python forms ("fused": the native kernels reported
    unavailable) and with the native kernels ("native": built, as CI builds them)."""
    if request.param == "fused":
        monkeypatch.setitem(_native._state, "kernels", None)
    elif os.environ.get(_native.NATIVE_ENV) == "0":
        pytest.skip(f"{_native.NATIVE_ENV}=0")
    else:
        assert _native.native_kernels() is not None
    return request.param


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _assert_sum_close(fused: torch.Tensor, ref: torch.Tensor, abs_terms: torch.Tensor, dtype: torch.dtype) -> None:
    """|fused - ref| <= 64 eps sum|terms| (module docstring), elementwise for vector sums."""
    tol = 64 * _eps(dtype) * abs_terms + torch.finfo(dtype).tiny
    assert fused.shape == ref.shape
    assert torch.all((fused - ref).abs() <= tol), (fused, ref, tol)


def _nudged(values: torch.Tensor) -> torch.Tensor:
    """Each value and its float neighbours either side: both sides of every boundary."""
    inf = torch.full_like(values, math.inf)
    return torch.cat([values, torch.nextafter(values, inf), torch.nextafter(values, -inf)])


# --------------------------------------------------------------------------------- N2UQ


def _n2uq_case(bits: int, qmin: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    levels = 2**bits - 1
    start = torch.tensor(qmin + 0.5, dtype=dtype) * 0.37
    widths = (torch.rand(levels - 1, generator=generator, dtype=dtype) * 0.6 + 0.1).requires_grad_()
    start.requires_grad_()
    scale = torch.tensor(levels * 0.37 / 2, dtype=dtype, requires_grad=True)
    grad_scale = torch.tensor(0.3, dtype=dtype)
    return start, widths, scale, grad_scale


def _n2uq_boundaries(start, widths, qmin: int) -> torch.Tensor:
    """Thresholds, the end of the last interval, zeros (both signs), far inputs."""
    with torch.no_grad():
        thresholds = n2uq_thresholds(start, widths)
        end = (thresholds[-1] + widths[-1]).reshape(1)
        special = torch.tensor([0.0, -0.0, 1e6, -1e6, 1e-30, -1e-30], dtype=start.dtype)
        points = torch.cat([thresholds, end, (thresholds[:-1] + thresholds[1:]) / 2])
        values = torch.cat([_nudged(points), special])
    return values if qmin < 0 else torch.cat([values, values.abs()])


def _compare_n2uq(x, start, widths, scale, qmin, grad_scale):
    x = x.detach().requires_grad_()
    fused = n2uq_fake_quant(x, start, widths, scale, qmin, grad_scale)
    ref = n2uq_fake_quant_reference(x, start, widths, scale, qmin, grad_scale)
    assert torch.equal(fused, ref)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    inputs = (x, start, widths, scale)
    fused_grads = torch.autograd.grad(fused, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    assert torch.equal(fused_grads[0], ref_grads[0])  # the GSTE slope, the same product
    dtype = x.dtype
    # Magnitudes of the per-element terms, from the reference's own factors: the start and
    # width terms are grad_x (times a ramp in [0, 1]), the scale terms g * delta * (code + qmin).
    slope_terms = ref_grads[0].abs().sum() * grad_scale
    level = (ref.detach() / (scale.detach() * 2 / (widths.numel() + 1))).abs()
    scale_terms = (grad_out.abs() * level).sum() * (2 / (widths.numel() + 1)) * grad_scale
    _assert_sum_close(fused_grads[1], ref_grads[1], slope_terms, dtype)
    _assert_sum_close(fused_grads[2], ref_grads[2], slope_terms, dtype)
    _assert_sum_close(fused_grads[3], ref_grads[3], scale_terms, dtype)
    # The fused eval path (no graph) gives the same levels.
    with torch.no_grad():
        assert torch.equal(n2uq_fake_quant(x, start, widths, scale, qmin, grad_scale), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,qmin", [(2, 0), (3, 0), (4, 0), (2, -2), (3, -4)])
def test_n2uq_fused_matches_reference_on_random_inputs(dtype, bits, qmin):
    start, widths, scale, grad_scale = _n2uq_case(bits, qmin, dtype)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, 9, 9, generator=generator, dtype=dtype) * (2**bits) * 0.3
    if qmin == 0:
        x = x.relu()  # post-ReLU inputs: mostly exact zeros, as an unsigned grid sees them
    _compare_n2uq(x, start, widths, scale, qmin, grad_scale)


@pytest.mark.parametrize("bits,qmin", [(3, 0), (2, -2)])
def test_n2uq_fused_matches_reference_across_blocks(monkeypatch, bits, qmin):
    # The fused function writes its (rows, N) temporaries block by block; with a block of
    # 7 elements the 4 * 6 * 9 * 9 input spans 278 blocks, the last one partial.
    import qmdd.quant._base as base

    monkeypatch.setattr(base, "BLOCK_ELEMENTS", 7)
    start, widths, scale, grad_scale = _n2uq_case(bits, qmin, torch.float32, seed=5)
    x = torch.randn(4, 6, 9, 9, generator=torch.Generator().manual_seed(6)) * (2**bits) * 0.3
    _compare_n2uq(x, start, widths, scale, qmin, grad_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,qmin", [(2, 0), (3, 0), (2, -2), (3, -4)])
def test_n2uq_fused_matches_reference_at_boundaries(dtype, bits, qmin):
    start, widths, scale, grad_scale = _n2uq_case(bits, qmin, dtype, seed=3)
    x = _n2uq_boundaries(start, widths, qmin)
    _compare_n2uq(x, start, widths, scale, qmin, grad_scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_n2uq_fused_matches_reference_with_coinciding_thresholds(dtype):
    # A width below the float resolution at the start: two thresholds become one value
    # and the interval between them is empty; both forms must put x in the same interval.
    start = torch.tensor(2.0**30, dtype=dtype, requires_grad=True)
    ulp = float(torch.nextafter(start.detach(), torch.tensor(math.inf, dtype=dtype)) - start.detach())
    widths = torch.tensor([8.0, 0.25, 8.0], dtype=dtype) * ulp  # the middle one rounds away
    widths.requires_grad_()
    scale = torch.tensor(1.5, dtype=dtype, requires_grad=True)
    grad_scale = torch.tensor(1.0, dtype=dtype)
    x = _n2uq_boundaries(start, widths, 0)
    x = torch.cat([x, start.detach() + torch.arange(-12, 30, dtype=dtype) * ulp])
    _compare_n2uq(x, start, widths, scale, 0, grad_scale)


def test_n2uq_8_bit_activations_run_the_reference_form():
    # 255 thresholds: the fused form's masks would take 256 floats per element.
    start, widths, scale, grad_scale = _n2uq_case(8, 0, torch.float64, seed=6)
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 80
    _compare_n2uq(x, start, widths, scale, 0, grad_scale)


def test_n2uq_fused_is_exact_under_reduced_matmul_precision():
    # The fused form's lookups must not go through matrix products that TF32/bf16
    # settings (torch.set_float32_matmul_precision) would round.
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        start, widths, scale, grad_scale = _n2uq_case(3, 0, torch.float32, seed=4)
        x = torch.randn(3, 5, 7, 7, generator=torch.Generator().manual_seed(5)).relu() * 3
        _compare_n2uq(x, start, widths, scale, 0, grad_scale)
    finally:
        torch.set_float32_matmul_precision(previous)


def _channel_on_clip_limits(channel: torch.Tensor, gamma: float) -> torch.Tensor:
    """``channel`` with its first two entries +-t, t the float with t / scale == 1 exactly.

    The scale gamma * mean|w| moves with t, so t is searched for: t* = gamma S / (K - 2 gamma)
    solves it in reals (S: sum of the other |w|), and w / scale is monotone in t.
    """
    channel = channel.clone()
    channel[2::3] = 0.0  # zeros: the rounding tie at w = 0
    others = channel[2:].abs().sum()
    t = gamma * others / (channel.numel() - 2 * gamma)
    up = torch.full_like(t, math.inf)
    for _ in range(200):  # a handful of ulps either way in practice
        channel[0], channel[1] = t, -t
        ratio = t / (gamma * channel.abs().mean()).clamp_min(1e-12)
        if ratio == 1:
            return channel
        t = torch.nextafter(t, up if ratio < 1 else -up)
    raise AssertionError("no float on the clip limit")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(8, 5, 3, 3), (6, 40)])
def test_n2uq_weight_fused_matches_reference(dtype, bits, shape):
    generator = torch.Generator().manual_seed(bits)
    weight = torch.randn(shape, generator=generator, dtype=dtype)
    levels = 2**bits - 1
    gamma = levels / 2 ** (bits - 1)
    flat = weight.view(shape[0], -1)
    # Channels 1 and 4: elements exactly on the clip limits w / scale = +-1 (and the next
    # float outward), zeros on the rounding tie at w = 0 (code (0 + 1) n / 2).
    flat[1] = _channel_on_clip_limits(flat[1], gamma)
    flat[4] = _channel_on_clip_limits(flat[4], gamma)
    for _ in range(4):  # a few floats outward: just beyond the limits (the mean moves too)
        flat[4, :2] = torch.nextafter(flat[4, :2], flat[4, :2] * 2)
    # Channel 2: values on every rounding tie and level of the grid, and their neighbours.
    with torch.no_grad():
        scale2 = gamma * flat[2].abs().mean()
        grid = torch.linspace(-1, 1, 2 * levels + 1, dtype=dtype)  # levels and midpoints
        special = _nudged(grid * scale2)[: flat.shape[1] - 2]
        flat[2, : special.numel()] = special
        flat[2, -2:] = torch.tensor([-0.0, 1e-30], dtype=dtype)
    flat[3] = 0.0  # an all-zero (pruned) channel: the scale's floor
    with torch.no_grad():
        normalised = flat / (gamma * flat.abs().mean(1, keepdim=True)).clamp_min(1e-12)
        assert torch.equal(normalised[1, :2].abs(), torch.ones(2, dtype=dtype))
        assert torch.all(normalised[4, :2].abs() > 1)
    weight = weight.detach().requires_grad_()
    fused = n2uq_weight_fake_quant(weight, bits)
    ref = n2uq_weight_fake_quant_reference(weight, bits)
    assert torch.equal(fused, ref)
    grad_out = torch.randn(shape, generator=generator, dtype=dtype)
    assert torch.equal(torch.autograd.grad(fused, weight, grad_out)[0], torch.autograd.grad(ref, weight, grad_out)[0])
    with torch.no_grad():
        assert torch.equal(n2uq_weight_fake_quant(weight, bits), ref)


# ---------------------------------------------------------------------------------- SLR


def _slr_case(dtype: torch.dtype, shift: float = 0.6, step: float = 0.45):
    return (
        torch.tensor(step, dtype=dtype, requires_grad=True),
        torch.tensor(shift, dtype=dtype, requires_grad=True),
        torch.tensor(0.3, dtype=dtype),
    )


def _slr_boundaries(step, shift, qmin: int, qmax: int) -> torch.Tensor:
    """Inputs at the output levels, at the rounding ties and at the clip limits (each with
    its float neighbours), both zeros, tiny and large values, and negatives."""
    with torch.no_grad():
        s, beta = step.detach(), shift.detach()
        k = torch.arange(qmin, qmax + 1, dtype=s.dtype)
        half = torch.arange(qmin, qmax, dtype=s.dtype) + 0.5
        points = torch.cat([k, half])  # in units of the log-domain step

        def to_x(v):  # the input whose u / s is v
            return torch.sign(v) * beta * torch.expm1(v.abs() * s)

        special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1e4, -1e4], dtype=s.dtype)
        values = torch.cat([_nudged(to_x(points)), special, -beta.reshape(1), -beta.reshape(1) / 2, -3 * beta.reshape(1)])
    return values


def _compare_slr(x, step, shift, qmin, qmax, grad_scale):
    x = x.detach().requires_grad_()
    fused = slr_fake_quant(x, step, shift, qmin, qmax, grad_scale)
    ref = slr_fake_quant_reference(x, step, shift, qmin, qmax, grad_scale)
    assert torch.equal(fused, ref)
    dtype = x.dtype
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    inputs = (x, step, shift)
    fused_grads = torch.autograd.grad(fused, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    # dQ/dx: the same factors in another order, a few roundings apart.
    assert torch.all((fused_grads[0] - ref_grads[0]).abs() <= 4 * _eps(dtype) * ref_grads[0].abs())
    assert torch.equal(fused_grads[0] == 0, ref_grads[0] == 0)  # the same clip range
    # Term magnitudes from the reference's factors: dq = g beta growth with growth =
    # exp(|q|) <= (|out| + beta) / beta, times |k - v| <= max(|qmin|, qmax) for the step,
    # and |out| / beta + |grad_x x| / beta for the shift.
    with torch.no_grad():
        beta = shift.detach()
        dq = grad_out.abs() * (ref.abs() + beta)
        bound = max(abs(qmin), abs(qmax))
        step_terms = (dq * bound).sum() * grad_scale
        shift_terms = ((grad_out * ref).abs() + (ref_grads[0] * x).abs()).sum() / beta * grad_scale
    _assert_sum_close(fused_grads[1], ref_grads[1], step_terms, dtype)
    _assert_sum_close(fused_grads[2], ref_grads[2], shift_terms, dtype)
    with torch.no_grad():
        assert torch.equal(slr_fake_quant(x, step, shift, qmin, qmax, grad_scale), ref)


SLR_GRIDS = [(0, 3), (0, 7), (0, 255), (-2, 1), (-4, 3), (-128, 127)]


@pytest.mark.parametrize("qmin,qmax", [(0, 3), (-4, 3)])
def test_slr_fused_matches_reference_across_blocks(monkeypatch, qmin, qmax):
    # The fused forward runs block by block; 7-element blocks split the input into 278,
    # the last one partial.
    import qmdd.quant._base as base

    monkeypatch.setattr(base, "BLOCK_ELEMENTS", 7)
    step, shift, grad_scale = _slr_case(torch.float32, step=1.8 / qmax)
    x = torch.randn(4, 6, 9, 9, generator=torch.Generator().manual_seed(7)) * 3
    _compare_slr(x, step, shift, qmin, qmax, grad_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qmin,qmax", SLR_GRIDS)
def test_slr_fused_matches_reference_on_random_inputs(dtype, qmin, qmax):
    step, shift, grad_scale = _slr_case(dtype, step=1.8 / qmax)
    x = torch.randn(4, 6, 9, 9, generator=torch.Generator().manual_seed(2), dtype=dtype) * 3
    if qmin == 0:
        # Post-ReLU inputs, plus some negatives: an unsigned grid must clip them to 0.
        x = torch.where(x < -2, x, x.relu())
    _compare_slr(x, step, shift, qmin, qmax, grad_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qmin,qmax", SLR_GRIDS)
def test_slr_fused_matches_reference_at_boundaries(dtype, qmin, qmax):
    step, shift, grad_scale = _slr_case(dtype, step=1.8 / qmax)
    _compare_slr(_slr_boundaries(step, shift, qmin, qmax), step, shift, qmin, qmax, grad_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qmin,qmax", [(0, 3), (-2, 1)])
def test_slr_fused_matches_reference_when_the_log_underflows(dtype, qmin, qmax):
    # A large shift: |x| / beta underflows to 0 for the tiniest negative inputs, whose v is
    # then -0, inside the range (the reference's sign(x) * log1p(0)); the unsigned fast path
    # must classify them the same way.
    step, shift, grad_scale = _slr_case(dtype, shift=1e4, step=0.5)
    tiny = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # the smallest subnormal
    x = torch.tensor([tiny, -tiny, 2 * tiny, -2 * tiny, 0.0, -0.0, -1e4, 3e4], dtype=dtype)
    _compare_slr(x, step, shift, qmin, qmax, grad_scale)


def test_slr_fused_only_computes_the_parameter_gradients_it_is_asked_for():
    step, shift, grad_scale = _slr_case(torch.float64)
    x = (torch.randn(50, dtype=torch.float64) * 2).requires_grad_()
    frozen_step, frozen_shift = step.detach(), shift.detach()
    fused = slr_fake_quant(x, frozen_step, frozen_shift, 0, 3, grad_scale)
    ref = slr_fake_quant_reference(x, frozen_step, frozen_shift, 0, 3, grad_scale)
    (gf,), (gr,) = torch.autograd.grad(fused.sum(), x), torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(gf, gr, rtol=1e-15, atol=0)


# ------------------------------------------------------------------------ the modules


def _calibrated(quantizer, data):
    quantizer.start_calibration()
    quantizer(data)
    quantizer.finish_calibration()
    return quantizer


@pytest.mark.parametrize("signed", [False, True])
def test_quantizer_modules_use_the_fused_forms_with_the_reference_gradients(signed):
    torch.manual_seed(0)
    data = torch.randn(16, 8, 6, 6, dtype=torch.float64) * 2
    data = data if signed else data.relu()
    x = (torch.randn(16, 8, 6, 6, dtype=torch.float64) * 2.5).requires_grad_()
    grad_out = torch.randn_like(x)
    n2uq = _calibrated(N2UQActivationQuantizer(3).double(), data)
    slr = _calibrated(SLRActivationQuantizer(3).double(), data)
    with torch.no_grad():  # move the parameters off their initial (LSQ-like) values
        for parameter in list(n2uq.parameters()) + list(slr.parameters()):
            parameter.mul_(1.07).add_(0.003)

    def n2uq_ref(x):
        return n2uq_fake_quant_reference(x, n2uq.start(), n2uq.widths(), n2uq.output_scale, n2uq.qmin, n2uq.grad_scale)

    def slr_ref(x):
        return slr_fake_quant_reference(x, slr.step, slr.shift, slr.qmin, slr.qmax, slr.grad_scale)

    for module, reference in ((n2uq, n2uq_ref), (slr, slr_ref)):
        params = [x] + list(module.parameters())
        fused, ref = module(x), reference(x)
        assert torch.equal(fused, ref)
        for a, b in zip(torch.autograd.grad(fused, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))

    weight = torch.randn(12, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    quantizer = N2UQWeightQuantizer(2, weight)
    assert torch.equal(quantizer(weight), n2uq_weight_fake_quant_reference(weight, 2))
