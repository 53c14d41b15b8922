"""Small numpy image operations the generator families are built from.

Images are float64 arrays, HxWxC, values nominally in [0, 1]. Convolutions are
correlations (as in deep-learning frameworks) with kernels laid out (kh, kw, C_in, C_out).
numpy rather than torch: the families are a few thousand multiply-adds per pixel, and
float64 numpy gives the same bytes on every run.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

__all__ = [
    "conv2d",
    "area_down",
    "nearest_up2",
    "bilinear_up2",
    "transposed_conv_up2",
    "pixel_shuffle2",
    "gaussian_blur",
    "lanczos_down_up",
    "tv_denoise",
    "random_lowpass_kernel",
    "identity_kernel",
    "colour_mix",
]


def conv2d(image: np.ndarray, kernel: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """'Same'-size correlation of HxWxCin ``image`` with a (kh, kw, Cin, Cout) ``kernel``."""
    kh, kw, cin, cout = kernel.shape
    if image.shape[2] != cin:
        raise ValueError(f"kernel expects {cin} channels, image has {image.shape[2]}")
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(image, ((top, kh - 1 - top), (left, kw - 1 - left), (0, 0)), mode=pad_mode)
    windows = sliding_window_view(padded, (kh, kw), axis=(0, 1))  # H, W, Cin, kh, kw
    height, width = image.shape[:2]
    flat = windows.reshape(height * width, cin * kh * kw)
    return (flat @ kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)).reshape(height, width, cout)


def area_down(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (box-filter antialiasing, then decimation)."""
    height, width, channels = image.shape
    h, w = height // factor, width // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor, channels).mean(axis=(1, 3))


def nearest_up2(image: np.ndarray) -> np.ndarray:
    """Nearest-neighbour x2: every pixel becomes a 2x2 block."""
    return np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)


def _bilinear_up2_axis(image: np.ndarray, axis: int) -> np.ndarray:
    # Half-pixel centres (align_corners=False): out[2i] = .75 x[i] + .25 x[i-1],
    # out[2i+1] = .75 x[i] + .25 x[i+1], edges replicated.
    x = np.moveaxis(image, axis, 0)
    prev = np.concatenate([x[:1], x[:-1]], axis=0)
    nxt = np.concatenate([x[1:], x[-1:]], axis=0)
    out = np.empty((2 * x.shape[0],) + x.shape[1:], dtype=x.dtype)
    out[0::2] = 0.75 * x + 0.25 * prev
    out[1::2] = 0.75 * x + 0.25 * nxt
    return np.moveaxis(out, 0, axis)


def bilinear_up2(image: np.ndarray) -> np.ndarray:
    """Bilinear x2 with half-pixel centres, separable."""
    return _bilinear_up2_axis(_bilinear_up2_axis(image, 0), 1)


def transposed_conv_up2(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution with a (4, 4, Cin, Cout) kernel.

    Implemented as zero insertion followed by a 4x4 correlation. Output pixels of the two
    phases of each axis see disjoint tap pairs of the kernel (taps 0/2 for even rows, 1/3 for
    odd rows), so unequal tap sums give the phase-dependent gain that shows as a checkerboard.
    With the kernel [.25, .75, .75, .25] per axis this is exactly bilinear x2.
    """
    if kernel.shape[:2] != (4, 4):
        raise ValueError(f"transposed_conv_up2 needs a 4x4 kernel, got {kernel.shape[:2]}")
    height, width, channels = image.shape
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
    zeros = np.zeros((2 * padded.shape[0], 2 * padded.shape[1], channels), dtype=image.dtype)
    zeros[0::2, 0::2] = padded
    windows = sliding_window_view(zeros, (4, 4), axis=(0, 1))[2 : 2 + 2 * height, 2 : 2 + 2 * width]
    cin, cout = kernel.shape[2:]
    flat = windows.reshape(4 * height * width, cin * 16)
    # Zero insertion halves the mean; the x4 restores unit gain (each output sees 4 of 16 taps).
    return 4.0 * (flat @ kernel.transpose(2, 0, 1, 3).reshape(cin * 16, cout)).reshape(2 * height, 2 * width, cout)


def pixel_shuffle2(image: np.ndarray, phase_kernels: np.ndarray) -> np.ndarray:
    """Sub-pixel convolution x2: phase (a, b) of the output is ``conv2d(image, phase_kernels[a, b])``.

    ``phase_kernels`` has shape (2, 2, kh, kw, Cin, Cout): four independent kernels, one per
    output phase, as a conv to 4*Cout channels followed by PixelShuffle(2) computes.
    """
    height, width = image.shape[:2]
    cout = phase_kernels.shape[-1]
    out = np.empty((2 * height, 2 * width, cout), dtype=image.dtype)
    for a in range(2):
        for b in range(2):
            out[a::2, b::2] = conv2d(image, phase_kernels[a, b], pad_mode="edge")
    return out


def _gaussian_1d(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, ``sigma`` in pixels, reflect padding."""
    taps = _gaussian_1d(sigma)
    radius = len(taps) // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        windows = sliding_window_view(padded, len(taps), axis=axis)
        out = windows @ taps
    return out


def lanczos_down_up(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample down by ``factor`` and back up with Lanczos-3 (Pillow, float32 per channel)."""
    height, width, channels = image.shape
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    out = np.empty_like(image)
    for c in range(channels):
        plane = Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
        plane = plane.resize(small, Image.LANCZOS, reducing_gap=None).resize((width, height), Image.LANCZOS)
        out[:, :, c] = np.asarray(plane, dtype=np.float64)
    return out


def tv_denoise(image: np.ndarray, weight: float, iterations: int = 30) -> np.ndarray:
    """Total-variation denoising by Chambolle's dual projection algorithm (JMIV 2004).

    Minimises ||u - f||^2 / (2 weight) + TV(u), isotropic TV, per channel. ``weight`` is in
    image units (0.1 = strong for [0, 1] images). Step tau = 1/4, the value Chambolle reports
    to work in practice (1/8 is the proven bound).
    """
    tau = 0.25
    f = image
    p = np.zeros((2,) + f.shape, dtype=f.dtype)  # dual field: (row, col) components

    def divergence(field: np.ndarray) -> np.ndarray:
        rows = np.concatenate([field[0][:1], field[0][1:-1] - field[0][:-2], -field[0][-2:-1]], axis=0)
        cols = np.concatenate(
            [field[1][:, :1], field[1][:, 1:-1] - field[1][:, :-2], -field[1][:, -2:-1]], axis=1
        )
        return rows + cols

    for _ in range(iterations):
        u = divergence(p) - f / weight
        grad = np.zeros_like(p)
        grad[0, :-1] = u[1:] - u[:-1]
        grad[1, :, :-1] = u[:, 1:] - u[:, :-1]
        norm = np.sqrt((grad**2).sum(axis=0, keepdims=True))
        p = (p + tau * grad) / (1.0 + tau * norm)
    return f - weight * divergence(p)


def identity_kernel(size: int = 3, channels: int = 3) -> np.ndarray:
    """A (size, size, C, C) kernel that passes the image through unchanged."""
    kernel = np.zeros((size, size, channels, channels))
    kernel[size // 2, size // 2] = np.eye(channels)
    return kernel


def random_lowpass_kernel(
    rng: np.random.Generator, *, spread: float, cross: float, size: int = 3, channels: int = 3
) -> np.ndarray:
    """A random, mostly smoothing (size, size, C, C) kernel with unit DC gain per output channel.

    Stands for one trained convolution after an upsampler: a positive spatial profile (centre
    weight 1, neighbours ~ U(0, spread)), perturbed per channel, plus cross-channel taps of
    std ``cross``. Unit DC gain keeps mean colour, so colour histograms do not separate the
    fakes from the reals they were made from.
    """
    spatial = rng.uniform(0.0, spread, (size, size))
    spatial[size // 2, size // 2] = 1.0
    kernel = np.einsum("ij,co->ijco", spatial, np.eye(channels))
    kernel *= 1.0 + rng.normal(0.0, 0.1, kernel.shape)
    kernel += rng.normal(0.0, cross, kernel.shape)
    return kernel / kernel.sum(axis=(0, 1, 2), keepdims=True)


def colour_mix(rng: np.random.Generator, strength: float, channels: int = 3) -> np.ndarray:
    """A (C, C) matrix near identity whose rows sum to 1 (greys stay grey)."""
    matrix = np.eye(channels) + rng.normal(0.0, strength, (channels, channels))
    return matrix / matrix.sum(axis=1, keepdims=True)
