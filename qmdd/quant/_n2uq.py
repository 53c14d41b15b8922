"""N2UQ: Nonuniform-to-Uniform Quantization (Liu et al., CVPR 2022).

**Activations** (learnable non-uniform thresholds, uniform output levels). With
n = 2^b - 1 and 0 < a_1, ..., a_(n-1) the learned interval widths:

    thresholds   T_1 = start,  T_(k+1) = T_k + a_k          (k = 1 .. n-1)
    code(x)      = #{k : x >= T_k}                            in 0 .. n
    Q(x)         = s * (2 / n) * (code(x) + qmin)

``start`` and the widths are learned; s is a learned output scale, so the outputs sit on a
*uniform* grid of 2^b levels (what integer hardware needs) while the input intervals that
map to them are free. ``qmin`` is 0 for non-negative inputs and -2^(b-1) for signed ones.

Backward, the generalized straight-through estimator (GSTE): Q is treated as the
piecewise-linear surrogate that rises one output step Delta = s * 2 / n across each
interval,

    dQ/dx = Delta / a_k   for T_k <= x < T_(k+1),
          = 0             below T_1 (the start),
          = Delta / a_(n-1) for T_n <= x < T_n + a_(n-1)   (qmdd's choice, see below),
          = 0             above that;

and the threshold parameters get the gradient of that same surrogate (moving a threshold
right lowers the surrogate on the intervals after it). The output scale gets the exact
gradient dQ/ds = (2/n) * (code + qmin).

*Above the last threshold* the papers leave the surrogate open. There are n thresholds but
only n-1 intervals between them, while the output rises n steps; qmdd gives the surrogate
one more interval of the last learned width above T_n, so it rises exactly n steps from T_1
to T_n + a_(n-1) and then saturates (zero gradient, like LSQ's clip).

**Weights**: per output channel, scale = ((2^b - 1) / 2^(b-1)) * mean|W|, detached (a
statistic, recomputed at every forward, not learned); W/scale is clipped to [-1, 1] and
rounded to the 2^b uniform levels -1 + 2k/(2^b - 1); straight-through inside the clip, zero
gradient outside.

Source: Z. Liu, K.-T. Cheng, D. Huang, E. Xing, Z. Shen, "Nonuniform-to-Uniform
Quantization: Towards Accurate Quantization via Generalized Straight-Through Estimation",
CVPR 2022. qmdd's choices where the paper is silent (initialisation, parametrisation,
signed inputs, the threshold learning rate) are listed in ``docs/method.md``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from qmdd.quant._base import ActivationQuantizer, Quantizer
from qmdd.quant._base import signed_range

__all__ = ["N2UQActivationQuantizer", "N2UQWeightQuantizer", "n2uq_fake_quant", "n2uq_thresholds"]

# Smallest interval width, relative to the calibrated reference step: keeps every width
# strictly positive (so thresholds stay ordered) and the GSTE slope Delta / a bounded
# (at most 1000x the uniform slope) whatever an optimizer step does.
_MIN_RELATIVE_WIDTH = 1e-3


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class _N2UQFakeQuant(torch.autograd.Function):
    """Threshold quantization with the GSTE backward, in one autograd node.

    Inputs: ``x``; ``start`` (0-dim, T_1); ``widths`` (n-1 positive widths); ``scale``
    (0-dim output scale s); ``qmin``; ``grad_scale`` (0-dim, multiplies the parameter
    gradients, as LSQ's g); ``surrogate`` (bool): return the piecewise-linear surrogate
    instead of the staircase. The surrogate exists so that the analytic backward can be
    checked against finite differences (the staircase has none); training never uses it.
    """

    @staticmethod
    def forward(ctx, x, start, widths, scale, qmin: int, grad_scale, surrogate: bool = False):  # type: ignore[override]
        levels = widths.numel() + 1  # n
        thresholds = n2uq_thresholds(start, widths)
        # The surrogate's last interval repeats the last learned width (module docstring).
        interval_widths = torch.cat([widths, widths[-1:]])
        end = thresholds[-1] + widths[-1]
        code = torch.searchsorted(thresholds, x.contiguous(), right=True)  # 0 .. n
        index = (code - 1).clamp_min(0)
        inside = (code >= 1) & (x < end)
        width = interval_widths[index]
        frac = ((x - thresholds[index]) / width) * inside  # 0..1 inside, 0 outside
        delta = 2.0 / levels
        if surrogate:
            # code - 1 + frac inside; 0 below T_1; n above the end.
            level = torch.where(inside, (code - 1).to(x.dtype) + frac, (x >= end).to(x.dtype) * levels)
        else:
            level = code.to(x.dtype)
        ctx.save_for_backward(index, inside, width, frac, level, scale, grad_scale)
        ctx.levels, ctx.qmin = levels, qmin
        return scale * delta * (level + qmin)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        index, inside, width, frac, level, scale, grad_scale = ctx.saved_tensors
        levels, qmin = ctx.levels, ctx.qmin
        delta = 2.0 / levels
        # d(output)/dx on the surrogate: Delta / a inside the intervals, 0 outside.
        slope = grad_output * inside * (scale * delta / width)
        grad_x = slope if ctx.needs_input_grad[0] else None
        grad_start = grad_widths = grad_scale_param = None
        if ctx.needs_input_grad[1]:
            # T_k = start + sum_(j<k) a_j: moving the start shifts every interval right.
            grad_start = -slope.sum() * grad_scale
        if ctx.needs_input_grad[2]:
            # Per surrogate interval i (0-based, i = n-1 is the extra one above T_n):
            # sums of the slope-weighted gradient and of the same times the fraction.
            flat_index = index.reshape(-1)
            per_interval = torch.zeros(levels, dtype=slope.dtype, device=slope.device)
            per_interval.scatter_add_(0, flat_index, slope.reshape(-1))
            per_interval_frac = torch.zeros(levels, dtype=slope.dtype, device=slope.device)
            per_interval_frac.scatter_add_(0, flat_index, (slope * frac).reshape(-1))
            # Width a_j moves every threshold after it (intervals i > j) and stretches its
            # own interval i = j (and the extra interval, which reuses the last width).
            after = per_interval.flip(0).cumsum(0).flip(0)  # after[i] = sum over i' >= i
            grad = -(after[1:] + per_interval_frac[:-1])
            grad[-1] = grad[-1] - per_interval_frac[-1]
            grad_widths = grad * grad_scale
        if ctx.needs_input_grad[3]:
            grad_scale_param = (grad_output * delta * (level + qmin)).sum() * grad_scale
        return grad_x, grad_start, grad_widths, grad_scale_param, None, None, None


def n2uq_thresholds(start: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """The n thresholds T_1 = start, T_(k+1) = T_k + a_k (increasing when widths > 0)."""
    return torch.cat([start.reshape(1), start + widths.cumsum(0)])


def n2uq_fake_quant(
    x: torch.Tensor,
    start: torch.Tensor,
    widths: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    grad_scale: torch.Tensor,
    surrogate: bool = False,
) -> torch.Tensor:
    """N2UQ activation quantization (module docstring) with its GSTE backward.

    ``widths`` must be positive (the quantizer's parametrisation guarantees it).
    """
    return _N2UQFakeQuant.apply(x, start, widths, scale, qmin, grad_scale, surrogate)


class N2UQActivationQuantizer(ActivationQuantizer):
    """N2UQ activations: learned thresholds, uniform output levels, GSTE backward.

    Parametrisation (qmdd's, see ``docs/method.md``): every threshold parameter is stored
    relative to ``ref_step``, the LSQ initial step s0 = 2 * mean|x| / sqrt(Qp) of the
    calibration data, and multiplied by ``threshold_lr_scale`` c:

        start = ref_step * c * start_param
        a_k   = ref_step * (softplus(c * width_param_k) + 1e-3)

    Softplus keeps every width positive whatever the optimizer does, so the thresholds stay
    ordered. Because Adam's update size does not depend on the gradient's scale, the factor
    c makes the thresholds move c times slower per step than ordinary parameters: N2UQ's
    recipe trains them at lr/10 (c = 0.1, ``quant.n2uq_threshold_lr_scale``) without a
    separate optimizer parameter group.

    Initialisation reproduces LSQ exactly: thresholds at (qmin + k - 1/2) * s0, all widths
    s0, output scale n * s0 / 2 (one output step = s0).
    """

    def __init__(self, bits: int, threshold_lr_scale: float = 0.1) -> None:
        super().__init__(bits)
        if threshold_lr_scale <= 0:
            raise ValueError(f"threshold_lr_scale must be > 0, got {threshold_lr_scale}")
        self.levels = 2**bits - 1  # n: number of thresholds
        self.start_param = nn.Parameter(torch.zeros(()))
        self.width_param = nn.Parameter(torch.zeros(self.levels - 1))
        self.output_scale = nn.Parameter(torch.ones(()))
        self.register_buffer("ref_step", torch.tensor(1.0))
        self.register_buffer("threshold_lr_scale", torch.tensor(float(threshold_lr_scale)))
        self.register_buffer("grad_scale", torch.tensor(1.0))
        self._lr_scale = float(threshold_lr_scale)

    @property
    def qmax(self) -> int:
        return self.qmin + self.levels

    def finish_calibration(self) -> None:
        self._decide_grid()
        # LSQ's initial step for the same grid; every threshold parameter is relative to it.
        qmax_lsq = signed_range(self.bits)[1] if self.signed_grid else self.levels
        ref = max(2.0 * self.mean_abs_seen / math.sqrt(qmax_lsq), 1e-8)
        self.ref_step.fill_(ref)
        c = self._lr_scale
        self.start_param.data.fill_((self.qmin + 0.5) / c)
        self.width_param.data.fill_(_inverse_softplus(1.0 - _MIN_RELATIVE_WIDTH) / c)
        self.output_scale.data.fill_(ref * self.levels / 2.0)
        self.grad_scale.fill_(1.0 / math.sqrt(self.features_per_sample * qmax_lsq))
        self._end_observing()

    def _after_load(self) -> None:
        super()._after_load()
        self._lr_scale = float(self.threshold_lr_scale)

    def start(self) -> torch.Tensor:
        return self.ref_step * self._lr_scale * self.start_param

    def widths(self) -> torch.Tensor:
        return self.ref_step * (F.softplus(self._lr_scale * self.width_param) + _MIN_RELATIVE_WIDTH)

    def thresholds(self) -> torch.Tensor:
        """The current n thresholds T_1 < ... < T_n, in input units."""
        return n2uq_thresholds(self.start(), self.widths())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return n2uq_fake_quant(x, self.start(), self.widths(), self.output_scale, self.qmin, self.grad_scale)

    def extra_repr(self) -> str:
        grid = "signed" if self.signed_grid else "unsigned"
        return f"{super().extra_repr()}, {grid}, threshold_lr_scale={self._lr_scale}"


class _N2UQWeightFakeQuant(torch.autograd.Function):
    """Per-channel mean-|W| scaling, clip to [-1, 1], round to 2^b levels; clipped STE."""

    @staticmethod
    def forward(ctx, weight, bits: int):  # type: ignore[override]
        levels = 2**bits - 1
        gamma = levels / 2 ** (bits - 1)
        flat = weight.reshape(weight.shape[0], -1)
        scale = (gamma * flat.abs().mean(dim=1)).clamp_min(1e-12).view(-1, *([1] * (weight.dim() - 1)))
        normalised = weight / scale
        inside = normalised.abs() <= 1
        code = ((normalised.clamp(-1, 1) + 1) * (levels / 2)).round()  # 0 .. 2^b - 1
        ctx.save_for_backward(inside)
        return (code * (2.0 / levels) - 1) * scale

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None


class N2UQWeightQuantizer(Quantizer):
    """N2UQ weights (module docstring): no learned parameters, no data to calibrate from.

    The scale is a statistic of the current weight, recomputed at every forward, so the
    quantizer is ready at construction (``calibrated`` is True from the start and survives
    any state-dict round trip trivially).
    """

    def __init__(self, bits: int, weight: torch.Tensor | None = None) -> None:
        super().__init__(bits)
        self.calibrated = True

    def observe(self, weight: torch.Tensor) -> None:
        pass

    def finish_calibration(self) -> None:
        self._end_observing()

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return _N2UQWeightFakeQuant.apply(weight, self.bits)

    def integer_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Codes in 0 .. 2^b - 1 (level -1 + 2k / (2^b - 1) of the channel scale)."""
        levels = 2**self.bits - 1
        gamma = levels / 2 ** (self.bits - 1)
        flat = weight.reshape(weight.shape[0], -1)
        scale = (gamma * flat.abs().mean(dim=1)).clamp_min(1e-12).view(-1, *([1] * (weight.dim() - 1)))
        return (((weight / scale).clamp(-1, 1) + 1) * (levels / 2)).round()
