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

Implementation: each quantizer is one autograd node whose forward and backward run a few
whole-tensor operators (``_N2UQFakeQuant``, ``_N2UQWeightFakeQuant``; their docstrings give
the rewriting). The textbook compositions they replace are kept as
:func:`n2uq_fake_quant_reference` and :func:`n2uq_weight_fake_quant_reference`, the
definitions ``tests/quant/test_fused_n2uq_slr.py`` checks them against (``docs/performance.md``).
On a float32 CPU tensor the activation form runs in the native kernel ``native/n2uq.h``
(:class:`_N2UQNativeFakeQuant`, ``tests/quant/test_native_kernels.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from qmdd.quant._base import ActivationQuantizer, LevelTable, Quantizer, UniformGrid, WeightCodes
from qmdd.quant._base import element_blocks, signed_range
from qmdd.quant._native import native_applies, native_kernels

__all__ = [
    "N2UQActivationQuantizer",
    "N2UQWeightQuantizer",
    "n2uq_fake_quant",
    "n2uq_fake_quant_reference",
    "n2uq_thresholds",
    "n2uq_weight_fake_quant",
    "n2uq_weight_fake_quant_reference",
]

# Smallest interval width, relative to the calibrated reference step: keeps every width
# strictly positive (so thresholds stay ordered) and the GSTE slope Delta / a bounded
# (at most 1000x the uniform slope) whatever an optimizer step does.
_MIN_RELATIVE_WIDTH = 1e-3


#: Most thresholds n the fused activation form takes (4 bits): its masks hold n + 1 floats
#: per element. Wider grids (8 bits, e.g. a first layer at ``quant.first_layer_bits=8``)
#: run the reference form, whose memory does not grow with n.
_FUSED_MAX_LEVELS = 15


#: Threshold counts the native kernel takes: 2, 3 and 4 bits (its loops over the
#: thresholds are unrolled for each).
_NATIVE_THRESHOLDS = (3, 7, 15)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class _N2UQReference(torch.autograd.Function):
    """Threshold quantization with the GSTE backward: the textbook composition.

    The definition the fused :class:`_N2UQFakeQuant` is tested against (and the only form
    with the surrogate): a search for the code, gathers of the interval's threshold and
    width, and scatter-adds per interval for the width gradients.

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


def _blocks_with_buffer(numel: int, rows: int, like: torch.Tensor):
    """(lo, hi, buffer): the :func:`element_blocks` of ``numel`` elements, each with a
    contiguous (rows, hi - lo) buffer carved from one allocation reused by every block."""
    storage = None
    for lo, hi in element_blocks(numel):
        if storage is None:  # the first block is the largest
            storage = torch.empty(rows * (hi - lo), dtype=like.dtype, device=like.device)
        yield lo, hi, storage[: rows * (hi - lo)].view(rows, hi - lo)


def _interval_slope(above: torch.Tensor, slopes: torch.Tensor, out: torch.Tensor) -> None:
    """out = slopes[code - 1] inside [T_1, end), 0 outside, from the rows [x >= B_k].

    Walking up the bounds, lerp(slope, value, [x >= B_k]) is exactly ``value`` at weight 1
    and ``slope`` at weight 0, so each row overwrites the slope of the elements at or above
    it: a lookup without a search or a gather.
    """
    levels = slopes.numel()  # n: rows 0 .. n - 1 are the thresholds, row n the end
    torch.mul(above[0], slopes[0], out=out)
    for k in range(1, levels):
        out.lerp_(slopes[k], above[k])
    out.lerp_(slopes.new_zeros(()), above[levels])


class _N2UQFakeQuant(torch.autograd.Function):
    """N2UQ's staircase and GSTE backward in a few whole-tensor operators.

    The reference (:class:`_N2UQReference`) searches each element's interval, gathers its
    threshold and width, and scatter-adds per interval: per-element searches, gathers and
    serial scatters, the slowest operators a CPU has. Here, with the n + 1 bounds
    B = (T_1, ..., T_n, end):

        forward:  above[k] = [x >= B_k], one comparison written as 0/1 floats (n + 1 rows);
                  code = #{k < n : x >= T_k}   (searchsorted(thresholds, x, right=True));
                  out = (scale * delta) * (code + qmin), the reference's product;
                  when training, each element's GSTE slope Delta / a_(code-1), 0 outside
                  [T_1, end): a chain of lerp(slope, Delta / a_k, above[k]) up the rows,
                  exact because a lerp with weight 1 (0) returns its end (start) bit for
                  bit: a lookup without a search or a gather;
        backward: grad_x = grad * slope (the reference's product);
                  grad_start = -sum grad_x and grad_scale = delta * sum grad * (code +
                  qmin): one (2, N) matrix-vector product over the saved rows;
                  grad_width_j = -sum grad_x * r_j(x), with the ramp r_j(x) =
                  clip((x - T_j) / a_j, 0, 1): 1 above the interval (every later threshold
                  moves with a_j), its fraction inside it (the interval stretches), 0 below;
                  the last width also stretches the extra interval above T_n (see
                  :func:`_ramp_parameters` for the one place the ramp and the reference's
                  intervals can part: a band of an ulp or two above each threshold).

    Kept for the backward: the slope and the code (two floats per element) and ``x``
    (alive anyway: the layer's input); the forward's masks are freed on return. The
    ramps make the width gradients one (n, N) product instead of two serial scatters.
    """

    @staticmethod
    def forward(ctx, x, start, widths, scale, qmin: int, grad_scale, train: bool = True):  # type: ignore[override]
        levels = widths.numel() + 1  # n
        thresholds, bounds, interval_widths, step = _n2uq_grid(start, widths, scale)
        flat = x.reshape(-1)
        # The code and the slope Delta / a of each element's interval, as the two rows of
        # one (2, N) tensor (the backward reduces both with one matrix-vector product).
        rows = torch.empty((2, flat.shape[0]), dtype=x.dtype, device=x.device)
        slope, level = rows
        slopes = (step / interval_widths).to(x.dtype)  # Delta / a, as the reference divides
        for lo, hi, above in _blocks_with_buffer(flat.shape[0], levels + 1, x):
            torch.ge(flat[lo:hi], bounds.unsqueeze(1), out=above)  # above[k] = [x >= B_k]
            torch.sum(above[:levels], 0, out=level[lo:hi])  # the code: small integers, exact in any order
            if train:
                _interval_slope(above, slopes, slope[lo:hi])
        if qmin:
            level.add_(qmin)
        if not train:
            return (level * step).view(x.shape)
        out = level * step
        ctx.save_for_backward(x, rows, thresholds, interval_widths, grad_scale)
        ctx.levels = levels
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, rows, thresholds, interval_widths, grad_scale = ctx.saved_tensors
        grad = grad_output.reshape(-1)
        grad_x = grad * rows[0]
        grad_start = grad_widths = grad_scale_param = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            # sum grad * slope = sum grad_x, and sum grad * (code + qmin), in one product.
            sums = torch.mv(rows, grad) * grad_scale
            grad_start = -sums[0]
            grad_scale_param = sums[1] * (2.0 / ctx.levels)
        if ctx.needs_input_grad[2]:
            origins, spans = _ramp_parameters(thresholds.to(x.dtype), interval_widths.to(x.dtype))
            flat = x.reshape(-1)
            per_ramp = torch.zeros_like(origins)
            for lo, hi, ramps in _blocks_with_buffer(flat.shape[0], origins.numel(), x):
                torch.sub(flat[lo:hi], origins.unsqueeze(1), out=ramps)
                ramps.div_(spans.unsqueeze(1)).clamp_(0, 1)
                per_ramp.addmv_(ramps, grad_x[lo:hi])
            width_grad = -per_ramp[:-1]
            width_grad[-1] -= per_ramp[-1]  # the extra interval above T_n reuses the last width
            grad_widths = width_grad * grad_scale
        grad_x = grad_x.view(x.shape) if ctx.needs_input_grad[0] else None
        return grad_x, grad_start, grad_widths, grad_scale_param, None, None, None


class _N2UQNativeFakeQuant(torch.autograd.Function):
    """:class:`_N2UQFakeQuant` in the C++ kernel of :mod:`qmdd.quant._native`: one pass
    forward (the code from the threshold comparisons, the output), one backward that finds
    each element's code and slope again from ``x`` and reduces the start, scale and ramp
    sums in the same pass. Kept: ``x`` only (the Python form keeps two rows per element)."""

    @staticmethod
    def forward(ctx, x, start, widths, scale, qmin: int, grad_scale, train: bool, kernels, ceiling: float = 0.0):  # type: ignore[override]
        thresholds, bounds, interval_widths, step = _n2uq_grid(start, widths, scale)
        bounds = bounds.to(x.dtype)
        out = kernels.n2uq_forward(x, bounds, float(step), qmin, ceiling)
        if train:
            ctx.save_for_backward(x, bounds, thresholds, interval_widths, step, grad_scale)
            ctx.levels, ctx.qmin, ctx.kernels, ctx.ceiling = widths.numel() + 1, qmin, kernels, ceiling
        return out

    @staticmethod
    @once_differentiable  # the C++ backward is not itself differentiable: say so, not drop terms
    def backward(ctx, grad_output):  # type: ignore[override]
        x, bounds, thresholds, interval_widths, step, grad_scale = ctx.saved_tensors
        slopes = (step / interval_widths).to(x.dtype)  # Delta / a, as the Python form divides
        origins, spans = _ramp_parameters(thresholds.to(x.dtype), interval_widths.to(x.dtype))
        with_sums = any(ctx.needs_input_grad[1:4])
        grad_x, sums = ctx.kernels.n2uq_backward(
            grad_output.contiguous(), x, bounds, slopes, origins, spans, ctx.qmin, with_sums, ctx.needs_input_grad[2], ctx.ceiling
        )
        grad_start = grad_widths = grad_scale_param = None
        if with_sums:
            sums = sums.to(x.dtype) * grad_scale
            grad_start = -sums[0]
            grad_scale_param = sums[1] * (2.0 / ctx.levels)
            if ctx.needs_input_grad[2]:
                per_ramp = sums[2:]
                grad_widths = -per_ramp[:-1]
                grad_widths[-1] -= per_ramp[-1]  # the extra interval above T_n reuses the last width
        grad_x = grad_x if ctx.needs_input_grad[0] else None
        return grad_x, grad_start, grad_widths, grad_scale_param, None, None, None, None, None


def _n2uq_grid(start: torch.Tensor, widths: torch.Tensor, scale: torch.Tensor):
    """What the fused and native forms derive from the parameters, in one place so that
    they compute it alike: the n thresholds, the n + 1 bounds (the thresholds and the end
    of the surrogate's last interval), the n interval widths (the last learned width
    repeated for the interval above T_n) and the output step Delta = 2 s / n."""
    thresholds = n2uq_thresholds(start, widths)
    bounds = torch.cat([thresholds, (thresholds[-1] + widths[-1]).reshape(1)])
    return thresholds, bounds, torch.cat([widths, widths[-1:]]), scale * (2.0 / (widths.numel() + 1))


def _ramp_parameters(thresholds: torch.Tensor, interval_widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin and span of each width's ramp r_j(x) = clip((x - origin_j) / span_j, 0, 1).

    The ramp is T_j and a_j: inside the interval [T_j, T_(j+1)) it is the reference's
    fraction (x - T_j) / a_j bit for bit, below it 0, and from T_j + a_j on 1, where the
    reference counts "after the interval" from T_(j+1) = fl(start + sum a). The two agree
    but for x in [T_(j+1), T_j + a_j), a band as wide as the rounding of that sum (an ulp
    or two of T), where the ramp is within that rounding of 1 -- except when the rounding
    swallows a whole width and T_(j+1) == T_j: the interval is empty, and its ramp must be
    the step [x >= T_j], written as a ramp from T_j's float predecessor over one ulp.
    """
    empty = torch.zeros_like(thresholds, dtype=torch.bool)
    empty[:-1] = thresholds[1:] == thresholds[:-1]
    before = torch.nextafter(thresholds, torch.full_like(thresholds, -math.inf))
    return torch.where(empty, before, thresholds), torch.where(empty, thresholds - before, interval_widths)


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
    ceiling: float | None = None,
) -> torch.Tensor:
    """N2UQ activation quantization (module docstring) with its GSTE backward.

    ``widths`` must be positive (the quantizer's parametrisation guarantees it). The
    staircase runs, up to 4 bits, in the native kernel (:class:`_N2UQNativeFakeQuant`) on
    a float32 CPU tensor when it is built, else as the fused :class:`_N2UQFakeQuant`: the
    same values. 8-bit grids (255 thresholds: the fused form's masks would take 256 floats
    per element) and ``surrogate=True`` (finite-difference checks only) run
    :func:`n2uq_fake_quant_reference`. ``ceiling``: ``hardtanh(x, 0, ceiling)`` first (a
    fused ReLU6, :mod:`qmdd.quant._fuse`), inside the kernel when it runs.
    """
    native = (
        not surrogate
        and native_applies(x)
        and widths.numel() + 1 in _NATIVE_THRESHOLDS
        and all(t.dtype == torch.float32 for t in (start, widths, scale))
    )
    kernels = native_kernels() if native else None
    if kernels is None and ceiling is not None:
        x = F.hardtanh(x, 0.0, ceiling)
    if surrogate or widths.numel() + 1 > _FUSED_MAX_LEVELS:
        return n2uq_fake_quant_reference(x, start, widths, scale, qmin, grad_scale, surrogate)
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (x, start, widths, scale))
    if kernels is not None:
        return _N2UQNativeFakeQuant.apply(x, start, widths, scale, qmin, grad_scale, train, kernels, ceiling or 0.0)
    return _N2UQFakeQuant.apply(x, start, widths, scale, qmin, grad_scale, train)


def n2uq_fake_quant_reference(
    x: torch.Tensor,
    start: torch.Tensor,
    widths: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    grad_scale: torch.Tensor,
    surrogate: bool = False,
) -> torch.Tensor:
    """The textbook form of :func:`n2uq_fake_quant` (same maths, separate ops): the reference."""
    return _N2UQReference.apply(x, start, widths, scale, qmin, grad_scale, surrogate)


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

    def quantize(self, x: torch.Tensor, ceiling: float | None = None) -> torch.Tensor:
        return n2uq_fake_quant(x, self.start(), self.widths(), self.output_scale, self.qmin, self.grad_scale, ceiling=ceiling)

    def level_table(self) -> LevelTable:
        """The learned thresholds and the uniform output levels ``Delta * (code + qmin)``,
        Delta = 2 s / n: non-uniform inputs, a uniform output grid (exact in int8)."""
        with torch.no_grad():
            thresholds = self.thresholds().detach().to(torch.float64)
            step = float(self.output_scale.detach()) * (2.0 / self.levels)
        codes = torch.arange(self.qmin, self.qmax + 1, dtype=torch.float64)
        return LevelTable(thresholds=thresholds, levels=codes * step, grid=UniformGrid(step, self.qmin, self.qmax))

    def extra_repr(self) -> str:
        grid = "signed" if self.signed_grid else "unsigned"
        return f"{super().extra_repr()}, {grid}, threshold_lr_scale={self._lr_scale}"


class _N2UQWeightReference(torch.autograd.Function):
    """Per-channel mean-|W| scaling, clip to [-1, 1], round to 2^b levels; clipped STE.

    The textbook composition, kept as the reference of :class:`_N2UQWeightFakeQuant`.
    """

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


class _N2UQWeightFakeQuant(torch.autograd.Function):
    """:class:`_N2UQWeightReference` with the same operations, fewer passes over memory.

    Every rounding step of the reference is kept (``(c + 1) * (n / 2)``, its rounding, then
    ``code * (2 / n) - 1`` and the scale: reassociating them would move weights that sit
    on a rounding tie, e.g. w = 0, to another level), but the chain runs in place on the
    clipped copy; the inside-the-clip mask is ``clip(v) == v`` (the same set as
    ``|v| <= 1``), written as 0/1 floats so the backward is one plain product: a product
    with a bool tensor converts it first, and ``where`` is slower still on CPU.
    """

    @staticmethod
    def forward(ctx, weight, bits: int, train: bool = True):  # type: ignore[override]
        levels = 2**bits - 1
        magnitude = weight.abs()
        scale = _channel_scale_of(magnitude, bits).view(-1, *([1] * (weight.dim() - 1)))
        normalised = torch.div(weight, scale, out=magnitude)  # one buffer for |w|, v, mask
        if train:
            out = normalised.clamp(-1, 1)
            ctx.save_for_backward(torch.eq(out, normalised, out=normalised))
            del normalised, magnitude
        else:
            out = normalised.clamp_(-1, 1)
        out.add_(1).mul_(levels / 2).round_()  # the code, 0 .. 2^b - 1
        return out.mul_(2.0 / levels).sub_(1).mul_(scale)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None


class _N2UQWeightNativeFakeQuant(torch.autograd.Function):
    """:class:`_N2UQWeightFakeQuant` in the C++ kernel of :mod:`qmdd.quant._native`: the
    channel scales computed here as there (a reduction whose order only torch
    reproduces), then one pass forward and one backward, which finds the clip mask again
    from the weight. Kept: the weight (a parameter) and its scales."""

    @staticmethod
    def forward(ctx, weight, bits: int, train: bool, kernels):  # type: ignore[override]
        scale = _channel_scale_of(weight.abs(), bits)
        out = kernels.n2uq_weight_forward(weight, scale, bits)
        if train:
            ctx.save_for_backward(weight, scale)
            ctx.kernels = kernels
        return out

    @staticmethod
    @once_differentiable  # the C++ backward is not itself differentiable: say so, not drop terms
    def backward(ctx, grad_output):  # type: ignore[override]
        weight, scale = ctx.saved_tensors
        return ctx.kernels.n2uq_weight_backward(grad_output.contiguous(), weight, scale), None, None, None


def _channel_scale_of(magnitude: torch.Tensor, bits: int) -> torch.Tensor:
    """The per-output-channel scale ((2^b - 1) / 2^(b-1)) * mean|W|, clamped away from 0,
    from ``magnitude`` = |W|; shape (C,)."""
    gamma = (2**bits - 1) / 2 ** (bits - 1)
    return (gamma * magnitude.reshape(magnitude.shape[0], -1).mean(dim=1)).clamp_min(1e-12)


def n2uq_weight_fake_quant(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """N2UQ weight quantization (module docstring) with its clipped straight-through
    backward: in the native kernel on a float32 CPU tensor when it is built, else fused."""
    train = torch.is_grad_enabled() and weight.requires_grad
    if native_applies(weight) and weight.dim() > 0:
        kernels = native_kernels()
        if kernels is not None:
            return _N2UQWeightNativeFakeQuant.apply(weight, bits, train, kernels)
    return _N2UQWeightFakeQuant.apply(weight, bits, train)


def n2uq_weight_fake_quant_reference(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The textbook form of :func:`n2uq_weight_fake_quant`: the reference."""
    return _N2UQWeightReference.apply(weight, bits)


class N2UQWeightQuantizer(Quantizer):
    """N2UQ weights (module docstring): no learned parameters, no data to calibrate from.

    The scale is a statistic of the current weight, recomputed at every forward, so the
    quantizer is ready at construction (``calibrated`` is True from the start and survives
    any state-dict round trip trivially).
    """

    def __init__(self, bits: int, weight: torch.Tensor | None = None) -> None:
        super().__init__(bits)
        self.calibrated = True
        self._adopted: WeightCodes | None = None

    def observe(self, weight: torch.Tensor) -> None:
        pass

    def finish_calibration(self) -> None:
        self._end_observing()

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        if self._adopted is not None:
            return weight  # loaded as the adopted codes' values: already on the grid
        return n2uq_weight_fake_quant(weight, self.bits)

    def _channel_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """Per-channel scale ((2^b - 1) / 2^(b-1)) * mean|W|, shaped to broadcast."""
        return _channel_scale_of(weight.abs(), self.bits).view(-1, *([1] * (weight.dim() - 1)))

    def integer_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Codes in 0 .. 2^b - 1 (level -1 + 2k / (2^b - 1) of the channel scale)."""
        levels = 2**self.bits - 1
        return (((weight / self._channel_scale(weight)).clamp(-1, 1) + 1) * (levels / 2)).round()

    def weight_codes(self, weight: torch.Tensor) -> WeightCodes:
        """Codes 0 .. n (n = 2^b - 1) with zero point n / 2 and scale 2 * scale_c / n.

        The levels -1 + 2k / n of the channel scale have no zero level, so the zero point
        is a half-integer: ``(code - n/2) * (2 scale_c / n)`` is the forward pass's
        ``(code * 2/n - 1) * scale_c`` up to float rounding (an ulp or two). A packed file
        stores these codes; its loader calls :meth:`adopt_codes`, because the scale is a
        statistic of the float weight, which the file does not hold.
        """
        if self._adopted is not None:
            return self._adopted
        levels = 2**self.bits - 1
        with torch.no_grad():
            weight = weight.detach()
            codes = self.integer_codes(weight).to(torch.int64)
            scale = (self._channel_scale(weight).reshape(-1) * (2.0 / levels)).to(torch.float32).clone()
        return WeightCodes(codes=codes, zero_point=levels / 2, scale=scale, bits=self.bits)

    def adopt_codes(self, codes: WeightCodes) -> None:
        """Keep ``codes`` as this layer's weight codes: the loaded weight is their values,
        from which mean|W| (and so the forward's scale) cannot be recomputed."""
        self._adopted = codes
