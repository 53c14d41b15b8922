"""Fixed input filters: what an artifact-input detector looks at instead of the pixels.

Upsampling generators leave their trace in how neighbouring pixels relate inside the
upsampler's grid, not in the content. A filter that removes the content and keeps those
relations lets a small network trained from scratch find the trace quickly; the detectors
of the field that are trained from scratch all start with one (NPR, SAFE). The filter is a
part of the model (a module without parameters in front of the first conv), so
checkpoints, evaluation, export, the int8 path, Grad-CAM and the cost counters see the
detector a user deploys, and nobody has to remember to filter the input.

Filters (``model.input_filter``):

``none``
    The normalised image, unchanged.
``npr``
    Neighbouring Pixel Relationships (Tan et al., "Rethinking the Up-Sampling Operations in
    CNN-based Generative Network for Generalizable Deepfake Detection", CVPR 2024)::

        NPR(x) = 2/3 * (x - up_nearest(down_nearest(x, 1/2)))

    ``down_nearest`` keeps the top-left pixel of every 2x2 block, ``up_nearest`` repeats it
    over the block: each pixel minus the top-left pixel of its block. The factor 2/3 is the
    published one. Computed on the ImageNet-normalised tensor, as published. Odd sides are
    handled by a last, partial block (the published code needs even sides).
``highpass``
    The prediction-error residual of each colour channel::

        r = x - B * x,      B = [1 2 1]^T [1 2 1] / 16   (binomial 3x3 blur, replicate border)

    Up to a factor 3/4, ``r`` is each pixel minus the weighted mean of its 8 neighbours
    (weights 1 at the corners, 2 at the sides): the fixed linear predictor residual that
    forensic detectors have used since the steganalysis rich models (Fridrich & Kodovsky,
    "Rich Models for Steganalysis of Digital Images", IEEE TIFS 2012) and that Bayar & Stamm
    learn as a constrained first layer ("A Deep Learning Approach to Universal Image
    Manipulation Detection Using a New Convolutional Layer", IH&MMSec 2016). It removes the
    content's low frequencies and keeps everything near the Nyquist frequency, where
    upsampling leaves its trace.

    Unlike ``npr`` and ``dwt_hh`` it is shift-invariant: it keeps the differences *across*
    the upsampler's 2x2 blocks as well as those within them. That is what tells a smoothed
    upsampled image from a blurred photo: both have small within-block differences, but
    only the upsampled one has them smaller than the differences across blocks. NPR's
    residual (each pixel minus its block's top-left pixel) keeps only the within-block ones
    and cannot see that contrast; on the embedded benchmark a detector on ``npr`` calls
    about 60 % of the blurred training reals fake, one on ``highpass`` almost none
    (docs/method.md).
``dwt_hh``
    The high-high (diagonal detail) band of a one-level 2-D discrete wavelet transform, as
    SAFE feeds its network (Li et al., "Improving Synthetic Image Detection Towards
    Generalization: An Image Transformation Perspective", KDD 2025; wavelet bior1.3).
    The high-pass analysis filter of bior1.3 is Haar's, so the HH band is, per 2x2 block
    ``[[a, b], [c, d]]``::

        HH = (a - b - c + d) / 2

    at half resolution; it is resized back to the input size bilinearly, as SAFE does.
    SAFE's wavelet library pads the borders symmetrically and returns N/2 + 2 coefficients
    per side, the two extra ones from the padding; qmdd keeps the N/2 block coefficients
    (no border artefact to learn). The band is scaled by 1, as published.

``npr`` and ``dwt_hh`` work on the grid of 2x2 blocks anchored at the image's top-left
pixel: their crops must keep the grid's phase, or the same generator's trace looks
different from crop to crop (``data.crop_align``, which defaults to the filter's
``grid``). ``highpass`` and ``none`` commute with shifts; with them, random crop offsets
teach the detector every phase, and it scores shifted crops as well as centred ones
(docs/method.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["InputFilter", "NPRFilter", "DWTHighHighFilter", "HighPassFilter", "FILTERS", "list_input_filters", "make_input_filter", "FilteredBackbone"]


class InputFilter(nn.Module):
    """A fixed, parameter-free map from the normalised image to the detector's input.

    ``name`` is the config name; ``flops_per_element`` the arithmetic operations it spends
    per input element (channel x pixel), which the cost counters add to the model's FLOPs;
    ``grid`` the period in pixels of the block grid the filter is anchored to (1: the
    filter commutes with shifts), the crop alignment it needs (``data.crop_align``).
    """

    name = "none"
    flops_per_element = 0.0
    grid = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return self.name


def _block_top_left(x: torch.Tensor) -> torch.Tensor:
    """Each pixel replaced by the top-left pixel of its 2x2 block (same shape as ``x``)."""
    height, width = x.shape[-2], x.shape[-1]
    # nearest x1/2 keeps even rows and columns; nearest x2 repeats them over their block.
    # Slicing instead of interpolate(scale_factor=0.5): the same pixels, and odd sides get
    # a last partial block instead of a shape error.
    return F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")[..., :height, :width]


class NPRFilter(InputFilter):
    """``2/3 * (x - up_nearest(down_nearest(x)))`` (module docstring)."""

    name = "npr"
    # One subtraction and one scaling per element.
    flops_per_element = 2.0
    grid = 2  # anchored to the 2x2 blocks at the top-left pixel
    #: The published scale of the residual before the first conv.
    SCALE = 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - _block_top_left(x)) * self.SCALE


class DWTHighHighFilter(InputFilter):
    """The HH band of a one-level Haar / bior1.3 DWT, resized to the input (module docstring)."""

    name = "dwt_hh"
    grid = 2  # one coefficient per 2x2 block
    # Per input element: a 4-term signed sum and a scaling per block of 4 elements (5 ops
    # / 4), plus the bilinear resize (4 multiply-adds, 8 ops, per output element).
    flops_per_element = 5 / 4 + 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        # Replicate a last odd row/column so that every pixel belongs to a full block.
        padded = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        a = padded[..., 0::2, 0::2]
        b = padded[..., 0::2, 1::2]
        c = padded[..., 1::2, 0::2]
        d = padded[..., 1::2, 1::2]
        band = (a - b - c + d) * 0.5
        return F.interpolate(band, size=(height, width), mode="bilinear", align_corners=False)


class HighPassFilter(InputFilter):
    """The prediction-error residual ``x - binomial_3x3(x)`` per colour channel (module docstring)."""

    name = "highpass"
    # 9 multiply-adds per element for the blur, one subtraction.
    flops_per_element = 19.0

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        self.register_buffer("kernel", torch.outer(taps, taps).expand(3, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel, groups=3)
        return x - blurred


#: ``model.input_filter`` name -> filter class.
FILTERS: dict[str, type[InputFilter]] = {"none": InputFilter, "npr": NPRFilter, "dwt_hh": DWTHighHighFilter, "highpass": HighPassFilter}


def list_input_filters() -> list[str]:
    return list(FILTERS)


def _filter_class(name: str) -> type[InputFilter]:
    try:
        return FILTERS[name]
    except KeyError:
        raise ValueError(f"unknown input filter {name!r}; available: {', '.join(FILTERS)}") from None


def make_input_filter(name: str) -> InputFilter:
    return _filter_class(name)()


def filter_grid(name: str) -> int:
    """The block-grid period a filter is anchored to (1: shift-invariant); see ``InputFilter.grid``."""
    return _filter_class(name).grid


class FilteredBackbone(nn.Module):
    """``backbone(input_filter(x))``: a backbone that looks at a filtered image.

    The filter has no parameters or buffers, so the state dict is the backbone's, under
    ``backbone.``. The filter is the first module in module order and is not a conv, so the
    precision policy's "first layer" is still the backbone's first conv.
    """

    def __init__(self, input_filter: InputFilter, backbone: nn.Module) -> None:
        super().__init__()
        self.input_filter = input_filter
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.input_filter(x))
