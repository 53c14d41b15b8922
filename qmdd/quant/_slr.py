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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qmdd.quant._base import ActivationQuantizer
from qmdd.quant._lsq import _MIN_STEP

__all__ = ["SLRActivationQuantizer", "slr_fake_quant", "slr_levels"]


class _SLRFakeQuant(torch.autograd.Function):
    """Shifted-log quantize-dequantize with an analytic backward, in one autograd node.

    ``surrogate=True`` skips the rounding (clip only): the smooth function whose exact
    derivative the backward computes, used only to check the backward against finite
    differences; training never uses it.
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


def slr_fake_quant(
    x: torch.Tensor,
    step: torch.Tensor,
    shift: torch.Tensor,
    qmin: int,
    qmax: int,
    grad_scale: torch.Tensor,
    surrogate: bool = False,
) -> torch.Tensor:
    """SLR quantize-dequantize of ``x`` (module docstring); ``step`` and ``shift`` > 0."""
    return _SLRFakeQuant.apply(x, step.clamp_min(_MIN_STEP), shift, qmin, qmax, grad_scale, surrogate)


def slr_levels(step: float, shift: float, qmin: int, qmax: int) -> torch.Tensor:
    """The 2^b output levels sign(k) * shift * (exp(|k| step) - 1), k = qmin .. qmax."""
    k = torch.arange(qmin, qmax + 1, dtype=torch.float64)
    return torch.sign(k) * shift * torch.expm1(k.abs() * step)


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

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return slr_fake_quant(x, self.step, self.shift, self.qmin, self.qmax, self.grad_scale)

    def extra_repr(self) -> str:
        grid = "signed" if self.signed_grid else "unsigned"
        return f"{super().extra_repr()}, {grid}"
