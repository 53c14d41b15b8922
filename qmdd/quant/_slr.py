"""SLR: the Shifted Logarithmic Redistribution quantizer of QMDD.

QMDD (Tao et al., "Unlocking the Potential of Lightweight Quantized Models for Deepfake
Detection", IJCAI 2025) describes SLR as a quantizer that "mitigates information loss in
near-zero domains by unfolding the unbalanced activations, enabling finer quantization
granularity"; its equations are not public. qmdd implements the reading in which the
activation is mapped through a shifted logarithm, quantized uniformly there with a learned
LSQ step, and mapped back. With a learned shift beta > 0 and a learned step s > 0:

    u(x)   = sign(x) * log(1 + |x| / beta)                (the redistribution)
    q      = round(clip(u / s, qmin, qmax)) * s           (LSQ in the log domain)
    Q(x)   = sign(q) * beta * (exp(|q|) - 1)              (back to activation units)

u is log(x + beta) - log(beta) for x >= 0: the shifted log, offset so that 0 maps to 0 and
stays an exact level (post-ReLU activations are mostly zeros). The levels
beta * (exp(k s) - 1) are dense near zero and sparse in the tail, where post-ReLU
activations are rare. A small beta makes the grid more logarithmic; beta -> infinity gives
back LSQ's uniform grid. The grid has 2^b levels: [0, 2^b - 1] for non-negative inputs,
LSQ's signed [-2^(b-1), 2^(b-1) - 1] mirrored through the symmetric log otherwise (read
from the calibration data, as for LSQ).

Backward (one fused node; straight-through round, exact chain rule elsewhere):

    dQ/dx    = beta * exp(|q|) / (|x| + beta)   inside the clip range (~1), 0 outside
    dQ/ds    = beta * exp(|q|) * (round(u/s) - u/s, or qmin / qmax when clipped) * g
    dQ/dbeta = sign(q) (exp(|q|) - 1) - beta exp(|q|) x / (beta (beta + |x|))  [2nd term inside]
    (times g, LSQ's gradient scale 1 / sqrt(N * qmax)).

beta is stored as log(beta), so it stays positive whatever the optimizer does.

Weights use LSQ (signed, per output channel): QMDD describes SLR for activations, whose
post-ReLU distribution is the unbalanced one; weights are roughly symmetric bell curves,
which a uniform grid fits.

Implementation: ``_SLRFakeQuant`` runs the forward in place and reduces the backward to one
product and one matrix-vector product (its docstring gives the rewriting); the textbook
composition it replaces is kept as :func:`slr_fake_quant_reference`, the definition
``tests/quant/test_fused_n2uq_slr.py`` checks it against (``docs/performance.md``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from qmdd.quant._base import ActivationQuantizer, LevelTable, element_blocks
from qmdd.quant._lsq import _MIN_STEP
from qmdd.quant._native import native_applies, native_kernels

__all__ = ["SLRActivationQuantizer", "slr_fake_quant", "slr_fake_quant_reference", "slr_levels", "slr_thresholds"]


class _SLRReference(torch.autograd.Function):
    """Shifted-log quantize-dequantize with an analytic backward: the textbook composition.

    The definition the fused :class:`_SLRFakeQuant` is tested against. ``surrogate=True``
    skips the rounding (clip only): the smooth function whose exact derivative the
    backward computes, used only to check the backward against finite differences;
    training never uses it.
    """

    @staticmethod
    def forward(ctx, x, step, shift, qmin: int, qmax: int, grad_scale, surrogate: bool = False):  # type: ignore[override]
        magnitude = x.abs()
        u = torch.sign(x) * torch.log1p(magnitude / shift)
        scaled = u / step
        clipped = scaled.clamp(qmin, qmax)
        q = (clipped if surrogate else clipped.round()) * step
        growth = torch.exp(q.abs())  # exp(|q|): d(sign(q)(exp|q| - 1))/dq
        ctx.save_for_backward(x, scaled, step, shift, growth, grad_scale)
        ctx.qmin, ctx.qmax, ctx.surrogate = qmin, qmax, surrogate
        return torch.sign(q) * shift * (growth - 1)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, scaled, step, shift, growth, grad_scale = ctx.saved_tensors
        qmin, qmax = ctx.qmin, ctx.qmax
        below = scaled < qmin
        above = scaled > qmax
        inside = ~(below | above)
        dq = grad_output * shift * growth  # dL/dq
        grad_x = grad_step = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_x = dq * inside / (x.abs() + shift)
        if ctx.needs_input_grad[1]:
            clipped = torch.where(below, float(qmin), float(qmax)).to(scaled.dtype)
            rounding = scaled.round() - scaled if not ctx.surrogate else torch.zeros_like(scaled)
            local = torch.where(inside, rounding, clipped)
            grad_step = (dq * local).sum_to_size(step.shape) * grad_scale
        if ctx.needs_input_grad[2]:
            q_sign = torch.sign(scaled.clamp(qmin, qmax) if ctx.surrogate else scaled.clamp(qmin, qmax).round())
            direct = grad_output * q_sign * (growth - 1)
            through_u = dq * inside * (-x / (shift * (shift + x.abs())))
            grad_shift = (direct + through_u).sum_to_size(shift.shape) * grad_scale
        return grad_x, grad_step, grad_shift, None, None, None, None


def _slr_block(x, step, shift, qmin: int, qmax: int, out, slope_x, rows, needs_rows: bool) -> None:
    """The fused SLR forward (:class:`_SLRFakeQuant`) on one block of a flat input:
    writes ``out`` and, when ``slope_x`` is given (training), A into ``slope_x`` and B, C
    into the two rows of ``rows`` (when ``needs_rows``)."""
    if qmin < 0:
        magnitude = x.abs()
        scaled = magnitude / shift
        scaled.log1p_().copysign_(x)  # u = sign(x) log(1 + |x| / beta)
    else:
        # Unsigned grid: a negative v only ever clips to 0 (below the range), so only
        # its sign matters, and log1p(x / beta) has the sign of x for x > -beta (the
        # clamp keeps it finite). Where v is inside the range, x >= 0 or its log
        # underflowed to -0, so this ``magnitude`` is |x| to the last bit of |x| + beta.
        magnitude = x.clamp_min(-0.5 * shift)
        scaled = magnitude / shift
        scaled.log1p_()
    scaled.div_(step)  # v = u / s
    if slope_x is not None:
        # clipped and code live in the two rows that the backward's B and C replace.
        clipped, code = rows[0], rows[1]
        torch.clamp(scaled, qmin, qmax, out=clipped)
        inside = torch.eq(clipped, scaled, out=scaled)  # m, over v (no longer needed)
        del scaled
        torch.round(clipped, out=code)
    else:
        clipped = scaled.clamp_(qmin, qmax)
        code = clipped.round_()
    growth = code * step  # q
    if qmin < 0:
        growth.abs_()
    growth.exp_()  # exp(|q|)
    torch.sub(growth, 1, out=out).mul_(shift)
    if qmin < 0:
        out.copysign_(code)  # sign(q) * beta * (exp(|q|) - 1); unsigned: q >= 0
    if slope_x is None:
        return
    # Per element, what the backward multiplies the incoming gradient by:
    #   A = beta growth m / (|x| + beta)          (dQ/dx),
    #   B = beta growth (k - c m)                 (dQ/ds: k - v inside, c == v there;
    #                                              the clip bound k outside),
    #   C = out - A x                             (beta dQ/dbeta: out / beta is
    #                                              sign(k)(growth - 1), A x / beta
    #                                              the term through u).
    factor = growth.mul_(shift)
    if needs_rows:
        torch.addcmul(code, clipped, inside, value=-1, out=clipped).mul_(factor)  # B
    torch.mul(factor, inside, out=slope_x).div_(magnitude.add_(shift))  # A
    if needs_rows:
        torch.addcmul(out, slope_x, x, value=-1, out=code)  # C


class _SLRFakeQuant(torch.autograd.Function):
    """:class:`_SLRReference` in fewer, in-place passes, with a leaner backward.

    With v = u / s (u the shifted log), c = clip(v, qmin, qmax), k = round(c), m = [c == v]
    (inside the clip range), growth = exp(|k s|):

        forward:  out = sign(k) * beta * (growth - 1), the reference's operations run in
                  place (the sign as ``copysign``, the same product); on an unsigned grid
                  the signs are dropped (k >= 0) and u is log1p(x / beta) (negative inputs
                  only need to stay negative: they clip to 0);
                  when training, per element, the three factors of the backward:
                  A = beta growth m / (|x| + beta)      (dQ/dx)
                  B = beta growth (k - c m)             (dQ/ds: k - v inside, the clip
                                                         bound outside)
                  C = out - A x                         (beta dQ/dbeta: the docstring's
                                                         sign(k)(growth - 1) = out / beta
                                                         and beta growth m x / (beta (beta
                                                         + |x|)) = A x / beta)
        backward: grad_x = grad * A;  (grad_step, beta grad_shift) = g * [B; C] grad,
                  one product and one (2, N) matrix-vector product, where the reference
                  recomputed its masks in some thirty elementwise passes.

    Kept: A, B and C (three floats per element; the reference kept three as well).
    """

    @staticmethod
    def forward(ctx, x, step, shift, qmin: int, qmax: int, grad_scale, train: bool = True):  # type: ignore[override]
        flat = x.reshape(-1)
        out = torch.empty_like(flat)
        slope_x = rows = None
        needs_rows = train and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        if train:
            slope_x = torch.empty_like(flat)
            # B and C as the rows of one (2, N) matrix: the backward is then one product
            # and one matrix-vector product.
            rows = torch.empty((2, flat.numel()), dtype=x.dtype, device=x.device)
        # Block by block, so that the per-element temporaries (|x|, the log, the growth)
        # stay in cache; only the output and the backward's factors reach main memory.
        for lo, hi in element_blocks(flat.numel()):
            _slr_block(
                flat[lo:hi], step, shift, qmin, qmax, out[lo:hi],
                None if slope_x is None else slope_x[lo:hi],
                None if rows is None else rows[:, lo:hi], needs_rows,
            )
        if train:
            ctx.save_for_backward(slope_x.view(x.shape), rows if needs_rows else None, shift, grad_scale)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        slope_x, rows, shift, grad_scale = ctx.saved_tensors
        grad_x = grad_output * slope_x if ctx.needs_input_grad[0] else None
        grad_step = grad_shift = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            sums = torch.mv(rows, grad_output.reshape(-1)) * grad_scale
            grad_step, grad_shift = sums[0], sums[1] / shift
        return grad_x, grad_step, grad_shift, None, None, None, None


#: Grids the native kernel takes: 2, 3 and 4 bits (an 8-bit grid, e.g. a first layer at
#: ``quant.first_layer_bits=8``, runs the fused Python form).
_NATIVE_LEVELS = (4, 8, 16)


class _SLRNativeFakeQuant(torch.autograd.Function):
    """:class:`_SLRFakeQuant` in the C++ kernel of :mod:`qmdd.quant._native`: one pass
    forward, one backward, the same output and input gradient bit for bit (the kernel's
    log is a short series, checked against torch's log1p near every rounding tie and clip
    limit and replaced by it there; ``qmdd/quant/native/slr.h``). The exp is looked up in
    ``exp(|k s|)`` for the 2^b codes k, computed here with torch.exp on the codes'
    products, as the Python form computes it per element. Kept: ``x`` and v (the scaled
    log), from which the backward finds A, B and C again (C = out - A x, as the Python
    form keeps it), which costs less than writing A and B forward and reading them back."""

    @staticmethod
    def forward(ctx, x, step, shift, qmin: int, qmax: int, grad_scale, train: bool, kernels, ceiling: float = 0.0):  # type: ignore[override]
        growth = torch.arange(qmin, qmax + 1, dtype=x.dtype) * step  # q = k s, as the Python form
        if qmin < 0:
            growth = growth.abs()
        growth = growth.exp_()
        grid = (float(step), float(shift), qmin, qmax)
        out, scaled = kernels.slr_forward(x, growth, *grid, train, ceiling)
        if train:
            ctx.save_for_backward(x, scaled, growth, shift, grad_scale)
            ctx.grid, ctx.kernels, ctx.ceiling = grid, kernels, ceiling
        return out

    @staticmethod
    @once_differentiable  # the C++ backward is not itself differentiable: say so, not drop terms
    def backward(ctx, grad_output):  # type: ignore[override]
        x, scaled, growth, shift, grad_scale = ctx.saved_tensors
        with_rows = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_x, sums = ctx.kernels.slr_backward(grad_output.contiguous(), x, scaled, growth, *ctx.grid, with_rows, ctx.ceiling)
        grad_step = grad_shift = None
        if sums is not None:
            sums = sums.to(shift.dtype) * grad_scale
            grad_step, grad_shift = sums[0], sums[1] / shift
        return grad_x if ctx.needs_input_grad[0] else None, grad_step, grad_shift, None, None, None, None, None, None


def slr_fake_quant(
    x: torch.Tensor,
    step: torch.Tensor,
    shift: torch.Tensor,
    qmin: int,
    qmax: int,
    grad_scale: torch.Tensor,
    surrogate: bool = False,
    ceiling: float | None = None,
) -> torch.Tensor:
    """SLR quantize-dequantize of ``x`` (module docstring); ``step`` and ``shift`` > 0.

    Runs the native kernel (:class:`_SLRNativeFakeQuant`) on a float32 CPU tensor at 2 to 4
    bits when it is built, else the fused :class:`_SLRFakeQuant`: the same values. ``surrogate=True``
    (finite-difference checks only) runs :func:`slr_fake_quant_reference`. ``ceiling``:
    ``hardtanh(x, 0, ceiling)`` first (a fused ReLU6, :mod:`qmdd.quant._fuse`), inside the
    kernel when it runs.
    """
    native = (
        not surrogate
        and native_applies(x)
        and qmax - qmin + 1 in _NATIVE_LEVELS
        and step.dtype == shift.dtype == torch.float32
        and step.dim() == shift.dim() == 0
    )
    kernels = native_kernels() if native else None
    if kernels is None and ceiling is not None:
        x = torch.nn.functional.hardtanh(x, 0.0, ceiling)
    if surrogate:
        return slr_fake_quant_reference(x, step, shift, qmin, qmax, grad_scale, True)
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (x, step, shift))
    step = step.clamp_min(_MIN_STEP)
    if kernels is not None:
        return _SLRNativeFakeQuant.apply(x, step, shift, qmin, qmax, grad_scale, train, kernels, ceiling or 0.0)
    return _SLRFakeQuant.apply(x, step, shift, qmin, qmax, grad_scale, train)


def slr_fake_quant_reference(
    x: torch.Tensor,
    step: torch.Tensor,
    shift: torch.Tensor,
    qmin: int,
    qmax: int,
    grad_scale: torch.Tensor,
    surrogate: bool = False,
) -> torch.Tensor:
    """The textbook form of :func:`slr_fake_quant` (same maths, separate ops): the reference."""
    return _SLRReference.apply(x, step.clamp_min(_MIN_STEP), shift, qmin, qmax, grad_scale, surrogate)


def slr_levels(step: float, shift: float, qmin: int, qmax: int) -> torch.Tensor:
    """The 2^b output levels sign(k) * shift * (exp(|k| step) - 1), k = qmin .. qmax."""
    k = torch.arange(qmin, qmax + 1, dtype=torch.float64)
    return torch.sign(k) * shift * torch.expm1(k.abs() * step)


def slr_thresholds(step: float, shift: float, qmin: int, qmax: int) -> torch.Tensor:
    """The 2^b - 1 inputs where the code steps up: u(x) / step = k + 1/2 (the rounding
    boundaries in the log domain), x = sign(v) * shift * (exp(|v| step) - 1), v = k + 1/2."""
    v = torch.arange(qmin, qmax, dtype=torch.float64) + 0.5
    return torch.sign(v) * shift * torch.expm1(v.abs() * step)


class SLRActivationQuantizer(ActivationQuantizer):
    """SLR activations: learned log-domain step and learned shift (module docstring).

    Initialisation from calibration data (qmdd's choice, ``docs/method.md``): the shift is
    ``shift_init`` times mean|x| (``quant.slr_shift_init``), and the step is chosen so that
    the largest level equals LSQ's initial clip point qmax * s0, s0 = 2 mean|x| / sqrt(qmax):
    the grid spans the same range as LSQ's but puts more of its levels near zero.
    """

    def __init__(self, bits: int, shift_init: float = 0.5) -> None:
        super().__init__(bits)
        if shift_init <= 0:
            raise ValueError(f"shift_init must be > 0, got {shift_init}")
        self.shift_init = float(shift_init)
        self.step = nn.Parameter(torch.ones(()))
        self.log_shift = nn.Parameter(torch.zeros(()))
        self.register_buffer("grad_scale", torch.tensor(1.0))

    @property
    def shift(self) -> torch.Tensor:
        return self.log_shift.exp()

    def finish_calibration(self) -> None:
        self._decide_grid()
        mean_abs = max(self.mean_abs_seen, 1e-8)
        shift = self.shift_init * mean_abs
        clip_point = self.qmax * 2.0 * mean_abs / math.sqrt(self.qmax)  # LSQ's qmax * s0
        self.log_shift.data.fill_(math.log(shift))
        self.step.data.fill_(max(math.log1p(clip_point / shift) / self.qmax, _MIN_STEP))
        self.grad_scale.fill_(1.0 / math.sqrt(self.features_per_sample * self.qmax))
        self._end_observing()

    def levels(self) -> torch.Tensor:
        """The current output levels, ascending (float64)."""
        return slr_levels(float(self.step.detach().clamp_min(_MIN_STEP)), float(self.shift.detach()), self.qmin, self.qmax)

    def quantize(self, x: torch.Tensor, ceiling: float | None = None) -> torch.Tensor:
        return slr_fake_quant(x, self.step, self.shift, self.qmin, self.qmax, self.grad_scale, ceiling=ceiling)

    def level_table(self) -> LevelTable:
        """Log-spaced levels (:func:`slr_levels`) and the inputs where the code changes
        (:func:`slr_thresholds`); the levels lie on no uniform grid (``grid`` None)."""
        step = float(self.step.detach().clamp_min(_MIN_STEP))
        shift = float(self.shift.detach())
        return LevelTable(thresholds=slr_thresholds(step, shift, self.qmin, self.qmax), levels=slr_levels(step, shift, self.qmin, self.qmax))

    def extra_repr(self) -> str:
        grid = "signed" if self.signed_grid else "unsigned"
        return f"{super().extra_repr()}, {grid}"
