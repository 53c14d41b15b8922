"""LSQ: Learned Step size Quantization (Esser et al., ICLR 2020).

Forward, for step s > 0 and integer range [-Qn, Qp]:

    q(x) = round(clip(x / s, -Qn, Qp)) * s

Backward (straight-through round, analytic, one fused autograd node):

    dq/dx = 1                    if -Qn <= x/s <= Qp, else 0
    dq/ds = round(x/s) - x/s     inside the range
          = -Qn or Qp            below / above it
    and the step gradient is multiplied by g = 1 / sqrt(N * Qp)   (N: elements per step)

Ranges (Esser et al.): weights are signed, [-2^(b-1), 2^(b-1) - 1], with one step per
output channel; activations are unsigned, [0, 2^b - 1], when they are non-negative (after
ReLU) and signed otherwise, with one step per tensor. Whether an input is non-negative is
read from the calibration batches, so MobileNet block outputs (which can be negative) get a
signed grid and post-ReLU ResNet inputs an unsigned one without per-architecture rules.

Initialisation (LSQ): s = 2 * mean|x| / sqrt(Qp), from the weights themselves and, for
activations, from the calibration batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from qmdd.quant._base import ActivationQuantizer, Quantizer, UniformGrid, WeightCodes, signed_range
from qmdd.quant._native import native_applies, native_kernels

__all__ = ["LSQWeightQuantizer", "LSQActivationQuantizer", "lsq_fake_quant", "LSQ_MIN_STEP"]

#: A step below this (in input units) would divide by ~0; all-zero (e.g. pruned) channels
#: initialise to it and stay exactly zero after quantization. The forward pass clamps the
#: step to it, so a decoder of version-1 packed files (which stored the raw step) does too.
LSQ_MIN_STEP = 1e-8
_MIN_STEP = LSQ_MIN_STEP


class _LSQFakeQuant(torch.autograd.Function):
    """Quantize-dequantize with LSQ's analytic backward in a single autograd node.

    Written for memory traffic and operator count, which is what fake quantization costs
    (a few flops per element; on a busy multi-core CPU every operator also pays a thread
    hand-off). With v = x/s, c = clip(v, qmin, qmax), q = round(c), m = [c == v] (the
    inside-the-range mask):

        forward:  out = q * s and m, from one division, one clip and one comparison;
                  the rounding and scaling run in place;
        backward: grad_x = g * m, and the step gradient of the module docstring,
                  sum g * (m (q - v) + (1 - m) clip-bound)  =  (sum g * out - sum grad_x * x) / s

    (q is the clip bound wherever m = 0), so the backward needs no ``v`` and no comparison. Per output channel (weights: a few thousand elements per
    step) the two sums are batched dot products, reading the tensors once and writing
    nothing; per tensor (activations: up to ~10^6 elements per step) they stay one
    pairwise-summed reduction, because fp32 dots that long lose ~1e-5 relative accuracy to
    the cancellation between the two terms. In all, five elementwise operators forward and
    three or four backward, against four and eleven for the textbook form.

    Kept for the backward: the mask (0/1 in x's dtype, one float per element, traded for
    speed); ``x`` and ``out`` are alive anyway (the layer's input, and what the
    convolution saves).
    """

    @staticmethod
    def forward(ctx, x, step, qmin: int, qmax: int, grad_scale):  # type: ignore[override]
        # Not torch.fake_quantize_per_*_affine: its CPU kernel is slower than this chain,
        # and its mask is taken after rounding, not over LSQ's clip range.
        scaled = x.div(step)
        out = scaled.clamp(qmin, qmax)
        # The mask as 0/1 in x's dtype, written by the comparison over ``scaled`` itself
        # (no new buffer: on large activations each fresh allocation pays its page faults),
        # so that the backward is a plain product (docs/performance.md).
        inside = torch.eq(out, scaled, out=scaled)
        # round(clip(v)) == clip(round(v)) for integer bounds, as LSQ defines it.
        out.round_().mul_(step)
        ctx.save_for_backward(x, out, step, grad_scale, inside)
        return out

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, out, step, grad_scale, inside = ctx.saved_tensors
        # A float mask: grad * mask is one streaming product, ~9x faster here than
        # torch.where on a bool mask (and ~50x faster than a float-times-bool product).
        grad_x = grad_output * inside
        grad_step = None
        if ctx.needs_input_grad[1]:
            if step.dim() == 0:
                local = grad_output * out
                local.addcmul_(grad_x, x, value=-1.0)
                sums = local.sum()
            else:
                sums = _channel_dots(grad_output, out) - _channel_dots(grad_x, x)
            grad_step = sums.view(step.shape).div_(step).mul_(grad_scale)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_step, None, None, None


class _LSQNativeFakeQuant(torch.autograd.Function):
    """:class:`_LSQFakeQuant` in the C++ kernels of :mod:`qmdd.quant._native`, for one
    step per tensor (activations) or per output channel (weights): one pass forward
    (``out``), one backward (the input gradient and the step gradient's two sums per step,
    the mask and the output found again from ``x`` instead of stored or read back)."""

    @staticmethod
    def forward(ctx, x, step, qmin: int, qmax: int, grad_scale, kernels, ceiling: float = 0.0):  # type: ignore[override]
        out = kernels.lsq_forward(x, step, qmin, qmax, ceiling)
        ctx.save_for_backward(x, step, grad_scale)
        ctx.qmin, ctx.qmax, ctx.kernels, ctx.ceiling = qmin, qmax, kernels, ceiling
        return out

    @staticmethod
    @once_differentiable  # the C++ backward is not itself differentiable: say so, not drop terms
    def backward(ctx, grad_output):  # type: ignore[override]
        x, step, grad_scale = ctx.saved_tensors
        grad_x, sums = ctx.kernels.lsq_backward(grad_output.contiguous(), x, step, ctx.qmin, ctx.qmax, ctx.ceiling)
        grad_step = None
        if ctx.needs_input_grad[1]:
            grad_step = sums.to(step.dtype).view(step.shape).div_(step).mul_(grad_scale)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_step, None, None, None, None, None


def _channel_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) over every dimension but the first: batched dots, no a * b temporary."""
    channels = a.shape[0]
    return torch.einsum("ck,ck->c", a.reshape(channels, -1), b.reshape(channels, -1))


def lsq_fake_quant(
    x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: torch.Tensor, ceiling: float | None = None
) -> torch.Tensor:
    """LSQ quantize-dequantize of ``x`` with a step broadcastable to ``x``.

    ``grad_scale`` is LSQ's g = 1/sqrt(N * Qp), a 0-dim tensor so that it travels with the
    state dict and a resumed run trains exactly as an uninterrupted one. One step per
    tensor or per slice of dim 0 on a float32 CPU tensor runs in the native kernels
    (:mod:`qmdd.quant._native`) when they are built, anything else in
    :class:`_LSQFakeQuant`: the same values. ``ceiling``: ``hardtanh(x, 0, ceiling)``
    first (a fused ReLU6, :mod:`qmdd.quant._fuse`), inside the kernel when it runs.
    """
    step = step.clamp_min(_MIN_STEP)
    if native_applies(x) and step.dtype == torch.float32 and _one_step_per_tensor_or_slice(x, step) and (ceiling is None or step.dim() == 0):
        kernels = native_kernels()
        if kernels is not None:
            return _LSQNativeFakeQuant.apply(x, step, qmin, qmax, grad_scale, kernels, ceiling or 0.0)
    if ceiling is not None:
        x = F.hardtanh(x, 0.0, ceiling)
    return _LSQFakeQuant.apply(x, step, qmin, qmax, grad_scale)


def _one_step_per_tensor_or_slice(x: torch.Tensor, step: torch.Tensor) -> bool:
    """A 0-dim step, or one per slice of dim 0 shaped (C, 1, ..., 1) like ``x``: the two
    layouts the native kernel reads (any other broadcast keeps the chain)."""
    if step.dim() == 0:
        return True
    return step.dim() == x.dim() and step.shape[0] == x.shape[0] and all(size == 1 for size in step.shape[1:])


def _init_step(mean_abs: torch.Tensor, qmax: int) -> torch.Tensor:
    return (2.0 * mean_abs / math.sqrt(qmax)).clamp_min(_MIN_STEP)


def _grad_scale(elements_per_step: int, qmax: int) -> float:
    return 1.0 / math.sqrt(elements_per_step * qmax)


class LSQWeightQuantizer(Quantizer):
    """Signed LSQ with one learned step per output channel (dim 0 of the weight).

    Per-channel N in g = 1/sqrt(N * Qp) is the number of weights one step scales
    (in_channels * kh * kw for a conv), the per-channel reading of LSQ's per-tensor N.
    """

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)
        self.qmin, self.qmax = signed_range(bits)
        channels = weight.shape[0]
        elements_per_step = weight[0].numel()
        self.step = nn.Parameter(torch.ones(channels, device=weight.device))
        self.register_buffer(
            "grad_scale", torch.tensor(_grad_scale(elements_per_step, self.qmax), device=weight.device)
        )

    def observe(self, weight: torch.Tensor) -> None:
        mean_abs = weight.reshape(weight.shape[0], -1).abs().mean(dim=1)
        self.step.data.copy_(_init_step(mean_abs, self.qmax))
        self._seen = True

    def finish_calibration(self) -> None:
        if not getattr(self, "_seen", False):
            raise RuntimeError("LSQWeightQuantizer saw no weight during calibration")
        self._end_observing()

    def _step_like(self, weight: torch.Tensor) -> torch.Tensor:
        return self.step.view(-1, *([1] * (weight.dim() - 1)))

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return lsq_fake_quant(weight, self._step_like(weight), self.qmin, self.qmax, self.grad_scale)

    def integer_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes round(clip(w / s)) in [qmin, qmax]: what an export stores."""
        step = self._step_like(weight).clamp_min(_MIN_STEP)
        return (weight / step).clamp(self.qmin, self.qmax).round()

    def weight_codes(self, weight: torch.Tensor) -> WeightCodes:
        """The signed codes shifted by -qmin (unsigned), zero point -qmin, scale = step.

        ``values()`` then computes ``code * step`` with the step the forward pass uses,
        the same product, so a decoded weight quantizes back to the same codes.
        """
        with torch.no_grad():
            codes = self.integer_codes(weight.detach()).to(torch.int64) - self.qmin
            scale = self.step.detach().clamp_min(_MIN_STEP).to(torch.float32).clone()
        return WeightCodes(codes=codes, zero_point=float(-self.qmin), scale=scale, bits=self.bits)


class LSQActivationQuantizer(ActivationQuantizer):
    """LSQ with one learned step per tensor; unsigned when calibration saw no negatives."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("grad_scale", torch.tensor(1.0))

    def finish_calibration(self) -> None:
        self._decide_grid()
        mean_abs = torch.tensor(self.mean_abs_seen)
        self.step.data.copy_(_init_step(mean_abs, self.qmax))
        self.grad_scale.fill_(_grad_scale(self.features_per_sample, self.qmax))
        self._end_observing()

    def quantize(self, x: torch.Tensor, ceiling: float | None = None) -> torch.Tensor:
        return lsq_fake_quant(x, self.step, self.qmin, self.qmax, self.grad_scale, ceiling)

    def uniform_grid(self) -> UniformGrid:
        return UniformGrid(float(self.step.detach().clamp_min(_MIN_STEP)), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        grid = "signed" if self.signed_grid else "unsigned"
        return f"{super().extra_repr()}, {grid}"
