"""The quantizer interface shared by every fake-quantizer family.

A quantizer is a child module of a quantized layer. It maps a float tensor onto its
quantization grid and returns it in float ("fake" quantization), so training runs on
ordinary float kernels while the values are exactly the low-bit ones.

Life cycle, made explicit because a scale set lazily inside ``forward`` makes DDP replicas
drift apart and breaks ONNX export:

1. **observing**: during :func:`qmdd.quant.calibrate` the quantizer records statistics
   and passes values through unchanged;
2. **calibrated**: ``finish_calibration`` turns the statistics into the initial learned
   parameters; from then on ``forward`` quantizes. The state is a plain Python flag,
   restored to True when the parameters are loaded from a state dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qmdd.config import FULL_PRECISION

__all__ = [
    "SUPPORTED_BITS",
    "Quantizer",
    "ActivationQuantizer",
    "FullPrecision",
    "NotCalibratedError",
    "WeightCodes",
    "UniformGrid",
    "LevelTable",
    "signed_range",
    "unsigned_range",
    "element_blocks",
]

#: Bit widths a layer's weights or inputs may take; 32 means full precision.
SUPPORTED_BITS = (2, 3, 4, 8, FULL_PRECISION)


@dataclass(frozen=True)
class WeightCodes:
    """A quantized weight as integers: ``weight == (codes - zero_point) * scale``.

    What a family exports (the packed file stores ``codes`` at ``bits`` bits each, with
    ``zero_point`` and the per-channel ``scale``) and what the int8 path multiplies with.

    Attributes:
        codes: unsigned integer codes in ``[0, 2**bits)``, the weight's shape (int64).
        zero_point: the code of the value 0; an integer for LSQ, a half-integer for grids
            without a zero level.
        scale: one float32 scale per output channel (dim 0 of the weight).
        bits: bit width of the codes.
    """

    codes: torch.Tensor
    zero_point: float
    scale: torch.Tensor
    bits: int

    def values(self) -> torch.Tensor:
        """The float weight the codes stand for."""
        shape = (-1,) + (1,) * (self.codes.dim() - 1)
        return (self.codes.to(torch.float32) - self.zero_point) * self.scale.view(shape)


@dataclass(frozen=True)
class UniformGrid:
    """An activation quantizer's grid when it is uniform: ``round(clip(x / step, qmin, qmax)) * step``."""

    step: float
    qmin: int
    qmax: int


@dataclass(frozen=True)
class LevelTable:
    """An input quantizer as a step function: ``x -> levels[#{k : x >= thresholds[k]}]``.

    Every family's activation quantizer has this form (n thresholds, n + 1 output levels,
    both ascending, float64); it is what the int8 path and the ONNX export evaluate when
    a grid is not uniform. ``grid`` is the uniform grid the *levels* lie on when they do
    (LSQ, and N2UQ, whose thresholds are free but whose outputs are uniform), so the levels
    are ``k * grid.step`` for the integers k in ``[grid.qmin, grid.qmax]``; None when they
    do not (SLR's log-spaced levels).

    Rounding ties: at ``x == thresholds[k]`` the table gives the upper level; LSQ and SLR
    round half to even there, a set of measure zero.
    """

    thresholds: torch.Tensor
    levels: torch.Tensor
    grid: UniformGrid | None = None

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """The level of each element of ``x``, in ``x``'s dtype."""
        thresholds = self.thresholds.to(x.dtype)
        return self.levels.to(x.dtype)[torch.bucketize(x, thresholds, right=True)]


#: Elements per block of the fused quantizers' per-element temporaries (N2UQ's comparison
#: rows and ramps, SLR's log and growth): with 9 rows (N2UQ, 3 bits) a block is 2.4 MB, so
#: they are written and read again in cache, not in main memory (docs/performance.md); per
#: block the Python loop costs a few microseconds per operator.
BLOCK_ELEMENTS = 1 << 16


def element_blocks(numel: int):
    """(lo, hi): consecutive blocks of at most :data:`BLOCK_ELEMENTS` of ``numel`` elements."""
    for lo in range(0, numel, BLOCK_ELEMENTS):
        yield lo, min(lo + BLOCK_ELEMENTS, numel)


def signed_range(bits: int) -> tuple[int, int]:
    """Integer range (-Qn, Qp) of a signed b-bit grid: 2^b levels."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    """Integer range (0, Qp) of an unsigned b-bit grid: 2^b levels."""
    return 0, 2**bits - 1


#: Input dtypes a quantizer computes in FP32 (mixed precision, ``train.amp``).
_HALF_DTYPES = (torch.bfloat16, torch.float16)


class NotCalibratedError(RuntimeError):
    """A quantizer was used before :func:`qmdd.quant.calibrate` initialised it."""


class Quantizer(nn.Module):
    """Base class of fake quantizers.

    Subclasses implement :meth:`observe`, :meth:`finish_calibration` and :meth:`quantize`.

    Attributes:
        bits: bit width b; the output takes at most 2**b distinct values (per channel for
            per-channel weight quantizers).
        enabled: when False the quantizer is a pass-through (for ablations and debugging).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        if bits not in SUPPORTED_BITS or bits == FULL_PRECISION:
            low_bits = [b for b in SUPPORTED_BITS if b != FULL_PRECISION]
            raise ValueError(
                f"{type(self).__name__} supports bits in {low_bits}, got {bits}; "
                f"use FullPrecision for 32 bits"
            )
        self.bits = bits
        self.enabled = True
        self.observing = False
        self.calibrated = False

    # -- calibration ------------------------------------------------------------------
    def start_calibration(self) -> None:
        self.observing = True

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish_calibration(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _end_observing(self) -> None:
        self.observing = False
        self.calibrated = True

    # -- forward ----------------------------------------------------------------------
    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x.detach())
            return x
        if not self.enabled:
            return x
        if not self.calibrated:
            raise NotCalibratedError(
                f"{type(self).__name__} has not been initialised: call "
                "qmdd.quant.calibrate(model, batches) after quantize() and before training, "
                "or load a calibrated checkpoint"
            )
        if x.dtype in _HALF_DTYPES:
            # Under autocast (train.amp) inputs arrive in 16-bit floats: quantize in FP32,
            # so the grid (steps, thresholds, logs) and the step gradients (sums over ~10^6
            # elements) keep FP32 precision; the levels go back in the input's dtype.
            return self.quantize(x.float()).to(x.dtype)
        return self.quantize(x)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        # Learned parameters present in a checkpoint are a finished calibration.
        if any(key.startswith(prefix) for key in state_dict):
            self._after_load()
            self.calibrated = True

    def _after_load(self) -> None:
        """Hook for subclasses that mirror loaded buffers into Python attributes."""

    # -- export -----------------------------------------------------------------------
    def weight_codes(self, weight: torch.Tensor) -> WeightCodes | None:
        """``weight`` as integer codes and per-channel scales, or None when this family's
        weight grid has no such form (the packed file then stores float32)."""
        return None

    def uniform_grid(self) -> UniformGrid | None:
        """This input quantizer's uniform grid, or None when its levels are not uniform or
        its thresholds are not the midpoints between them (the int8 path then evaluates
        :meth:`level_table`)."""
        return None

    def level_table(self) -> LevelTable | None:
        """This input quantizer as thresholds and levels (:class:`LevelTable`), or None
        when it has no such form. A uniform grid gives its own table (thresholds at the
        half-steps); families with other thresholds or levels override this."""
        grid = self.uniform_grid()
        if grid is None:
            return None
        k = torch.arange(grid.qmin, grid.qmax + 1, dtype=torch.float64)
        return LevelTable(thresholds=(k[:-1] + 0.5) * grid.step, levels=k * grid.step, grid=grid)

    def adopt_codes(self, codes: WeightCodes) -> None:
        """The layer's weight was just loaded as ``codes.values()`` (a packed file): make
        the forward pass and :meth:`weight_codes` reproduce exactly those codes.

        Nothing to do for families whose scale is a learned parameter loaded with the
        weight (LSQ: the decoded weight quantizes back to the same codes). Families that
        derive their scale from the weight itself override this (N2UQ).
        """

    def extra_repr(self) -> str:
        return f"bits={self.bits}, calibrated={self.calibrated}"


def clamp_deferred() -> bool:
    """Whether a ReLU6 fused into the quantizer after it (:mod:`qmdd.quant._fuse`) runs
    inside that quantizer: while autograd records, outside TorchScript tracing and
    scripting. The two modules ask this same global question, so within one forward pass
    they always agree."""
    return torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.jit.is_scripting()


class ActivationQuantizer(Quantizer):
    """Base of per-tensor activation quantizers (LSQ, N2UQ, SLR).

    It owns what they share: the calibration statistics (mean |x| over the calibration
    batches, the minimum, the features per sample that LSQ-style gradient scales need) and
    the grid decision: signed when any calibration value was negative, unsigned otherwise.
    The decision is persisted in the ``signed`` buffer and mirrored in the Python attribute
    ``signed_grid``, so the forward pass never reads a tensor to choose its control flow.
    """

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.register_buffer("signed", torch.tensor(False))
        self.signed_grid = False
        #: c when a ReLU6 (hardtanh(x, 0, c)) in front was fused into this quantizer
        #: (:func:`qmdd.quant.fuse_activation_clamps`); structural, not in the state dict.
        self.input_ceiling: float | None = None
        self._reset_stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_ceiling is None or not clamp_deferred():
            return super().forward(x)
        if self.observing or not self.enabled or not self.calibrated or x.dtype in _HALF_DTYPES:
            return super().forward(torch.nn.functional.hardtanh(x, 0.0, self.input_ceiling))
        return self.quantize(x, ceiling=self.input_ceiling)

    def quantize(self, x: torch.Tensor, ceiling: float | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        """Fake-quantize ``x``, after ``hardtanh(x, 0, ceiling)`` when a ceiling is given
        (in the family's kernel where it has one)."""
        raise NotImplementedError

    def _reset_stats(self) -> None:
        self._abs_sum = 0.0
        self._batches = 0
        self._min = math.inf
        self._features = 1

    def start_calibration(self) -> None:
        super().start_calibration()
        self._reset_stats()

    def observe(self, x: torch.Tensor) -> None:
        self._abs_sum += float(x.abs().mean())
        self._min = min(self._min, float(x.min()))
        self._batches += 1
        # N in LSQ's g = 1/sqrt(N * Qp) is the number of features per sample.
        self._features = x[0].numel() if x.dim() > 0 else 1

    @property
    def qmin(self) -> int:
        """Lowest integer code of the b-bit grid: -2^(b-1) when signed, else 0."""
        return signed_range(self.bits)[0] if self.signed_grid else 0

    @property
    def qmax(self) -> int:
        """Highest integer code: 2^(b-1) - 1 when signed, else 2^b - 1."""
        return signed_range(self.bits)[1] if self.signed_grid else unsigned_range(self.bits)[1]

    @property
    def mean_abs_seen(self) -> float:
        """Mean |x| over the calibration batches."""
        return self._abs_sum / self._batches

    @property
    def features_per_sample(self) -> int:
        return self._features

    def _decide_grid(self) -> None:
        """Fix the signed/unsigned grid from the calibration data (call first in finish)."""
        if self._batches == 0:
            raise RuntimeError(f"{type(self).__name__} saw no input during calibration")
        self.signed_grid = self._min < 0
        self.signed.fill_(self.signed_grid)

    def _after_load(self) -> None:
        self.signed_grid = bool(self.signed)


class FullPrecision(Quantizer):
    """Pass-through used where a layer keeps 32-bit weights or inputs."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.bits = FULL_PRECISION
        self.enabled = False
        self.observing = False
        self.calibrated = True

    def observe(self, x: torch.Tensor) -> None:
        pass

    def finish_calibration(self) -> None:
        self._end_observing()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "bits=32"
