"""Procedural generator families and processed-real controls.

Each family turns a real image into a fake that carries the trace a class of real
generators leaves (docs/benchmark.md; Zhang et al. WIFS 2019 "AutoGAN" showed that simulated
upsampling artifacts detect unseen GANs; Jeong et al. ECCV 2022 "FingerprintNet" trained on
reals passed through autoencoders with different upsamplers). A family function draws
fresh random weights for its fixed architecture on every call, as many trained instances
of one design would have.

Family functions take and return float64 HxWx3 images in [0, 1] whose sides are multiples
of 8; :func:`generate_fake` handles uint8 conversion, padding and validation.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from qmdd.data.embedded import _ops
from qmdd.data.embedded._decoder import reconstruct

__all__ = ["FAMILY_REGISTRY", "CONTROL_REGISTRY", "generate_fake", "apply_control", "FamilyFn"]

FamilyFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _refine(image: np.ndarray, rng: np.random.Generator, spread: float = 0.35, cross: float = 0.02) -> np.ndarray:
    """The trained 3x3 convolution that follows an upsampler in a generator block."""
    return _ops.conv2d(image, _ops.random_lowpass_kernel(rng, spread=spread, cross=cross))


def _mild_leaky(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A leaky-ReLU-like kink around mid-grey: slopes U(0.95, 1.05) on each side, per channel.

    Stands for the activation between generator convolutions, kept mild so that the kink
    does not turn into a global colour shift a histogram could see.
    """
    slopes = rng.uniform(0.95, 1.05, (2, 3))
    centred = image - 0.5
    return 0.5 + np.where(centred > 0, centred * slopes[0], centred * slopes[1])


def _tconv_kernel(rng: np.random.Generator, noise: float) -> np.ndarray:
    """4x4 transposed-conv kernel: bilinear taps [.25 .75 .75 .25]^2 per channel plus N(0, noise)."""
    taps = np.array([0.25, 0.75, 0.75, 0.25]) / 2.0  # /2: each phase sums to 1/2 per axis -> 1/4 in 2D
    kernel = np.einsum("i,j,co->ijco", taps, taps, np.eye(3))
    kernel = kernel + rng.normal(0.0, noise, kernel.shape) / 4.0
    # Unit mean gain per output channel (the phase gains still differ): keeps mean colour.
    return kernel / kernel.sum(axis=(0, 1, 2), keepdims=True)


def transposed_conv(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downsample x2, stride-2 transposed conv (4x4 bilinear kernel plus noise), refining 3x3 conv.

    Trace: checkerboard, i.e. spectral lines and peaks at the Nyquist frequency, because the
    even and odd output phases see different tap sums (Odena et al. 2016, "Deconvolution and
    checkerboard artifacts"). Stands for DCGAN-style decoders, CycleGAN, StarGAN, GauGAN and
    the deepfake autoencoders, which all upsample with transposed convolutions.
    """
    low = _ops.area_down(image, 2)
    up = _ops.transposed_conv_up2(low, _tconv_kernel(rng, noise=rng.uniform(0.02, 0.05)))
    return _refine(up, rng, spread=rng.uniform(0.05, 0.3))


def nearest_up(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downsample x2, nearest-neighbour x2, random 3x3 conv, slight colour mix.

    Trace: replicas of the low-resolution spectrum around the Nyquist corners, shaped by the
    conv, and a 2x2 block grid in the pixels. Stands for ProGAN and StyleGAN, which upsample
    by nearest (or bilinear) interpolation followed by a convolution; this family plays
    ProGAN's role as the single training generator.
    """
    low = _ops.area_down(image, 2)
    up = _refine(_ops.nearest_up2(low), rng, spread=rng.uniform(0.2, 0.6))
    return up @ _ops.colour_mix(rng, 0.02).T


def bilinear_up(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downsample x2, bilinear x2 (half-pixel centres), random 3x3 conv, slight colour mix.

    Trace: weak, attenuated spectral replicas (the bilinear kernel is a low-pass), plus the
    loss of detail above half the output Nyquist. Stands for StyleGAN2 and BigGAN-like
    generators whose upsampling is (filtered) bilinear interpolation plus convolution.
    """
    low = _ops.area_down(image, 2)
    up = _refine(_ops.bilinear_up2(low), rng, spread=rng.uniform(0.0, 0.3))
    return up @ _ops.colour_mix(rng, 0.02).T


def pixel_shuffle(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downsample x2, four phase-specific random 3x3 kernels, then pixel shuffle (sub-pixel conv).

    Each output phase has its own kernel (bilinear-like taps plus independent noise), so the
    four phases get different gains and responses. Trace: a period-2 pattern like the
    checkerboard of a transposed conv (Shi et al. 2016 sub-pixel convolution; Aitken et al. 2017 on its
    checkerboard). Stands for super-resolution networks (ESPCN/ESRGAN-style), SAN and
    sub-pixel GAN decoders.
    """
    low = _ops.area_down(image, 2)
    weights = {0: np.array([0.25, 0.75, 0.0]), 1: np.array([0.0, 0.75, 0.25])}  # per-axis phase taps
    noise = rng.uniform(0.02, 0.05)
    kernels = np.empty((2, 2, 3, 3, 3, 3))
    for a in range(2):
        for b in range(2):
            base = np.einsum("i,j,co->ijco", weights[a], weights[b], np.eye(3))
            kernels[a, b] = base + rng.normal(0.0, noise / 3.0, base.shape)
    # Unit gain averaged over the four phases, per output channel (mean colour kept).
    kernels /= kernels.sum(axis=(2, 3, 4), keepdims=True).mean(axis=(0, 1), keepdims=True)
    return _ops.pixel_shuffle2(low, kernels)


def two_stage_x4(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downsample x4, then two x2 stages, each a random choice of nearest, bilinear or
    transposed conv, each followed by a random 3x3 conv and a mild leaky-ReLU kink.

    Trace: a period-4 grid of spectral peaks (at 1/4 and 1/2 of the sampling rate) from the
    cascade. Stands for multi-block GAN generators (ProGAN / StyleGAN / BigGAN at their last
    two resolutions, CRN, IMLE) whose final blocks each upsample by 2.
    """
    x = _ops.area_down(image, 4)
    for _ in range(2):
        kind = rng.integers(3)
        if kind == 0:
            x = _ops.nearest_up2(x)
        elif kind == 1:
            x = _ops.bilinear_up2(x)
        else:
            x = _ops.transposed_conv_up2(x, _tconv_kernel(rng, noise=rng.uniform(0.01, 0.03)))
        x = _mild_leaky(_refine(x, rng, spread=rng.uniform(0.1, 0.5)), rng)
    return x


def diffusion_like(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (sigma 0.04-0.10), total-variation denoise, light regrain.

    A diffusion model's last steps denoise a slightly noisy image; TV denoising stands for
    that learned denoiser: flat, piecewise-smooth patches, weakened fine texture, and noise
    statistics unlike a camera's. Trace: no periodic peaks, altered noise statistics.
    Stands for pixel-space diffusion models (ADM / guided, DDPM, GLIDE's base stage).
    """
    sigma = rng.uniform(0.04, 0.10)
    noisy = image + rng.normal(0.0, sigma, image.shape)
    clean = _ops.tv_denoise(noisy, weight=sigma * rng.uniform(0.5, 0.8), iterations=20)
    return clean + rng.normal(0.0, rng.uniform(0.002, 0.006), image.shape)


def learned_decoder(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reconstruction by a tiny trained conv autoencoder (1/8 resolution, 4 latent channels,
    nearest+conv decoder), its decoder weights jittered by 2 % per image.

    Trace: the decoder's fingerprint (three nearest-x2 + conv stages, so replicas at
    periods 2, 4 and 8) and the autoencoder's loss of detail. Stands for latent diffusion
    (LDM, Stable Diffusion, DALL-E style decoders): every such image leaves through a VAE
    decoder of this shape.
    """
    return reconstruct(image, rng, weight_jitter=0.02)


#: name -> family function, in registry order. Mechanisms and stood-for generators are in
#: each docstring and in docs/benchmark.md.
FAMILY_REGISTRY: dict[str, FamilyFn] = {
    "transposed_conv": transposed_conv,
    "nearest_up": nearest_up,
    "bilinear_up": bilinear_up,
    "pixel_shuffle": pixel_shuffle,
    "two_stage_x4": two_stage_x4,
    "diffusion_like": diffusion_like,
    "learned_decoder": learned_decoder,
}

_MULTIPLE = 8  # px; the deepest family (learned_decoder) works at 1/8 resolution


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {shape} dtype {dtype}")
    if min(image.shape[:2]) < _MULTIPLE:
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} px; it must be at least {_MULTIPLE} px")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _padded_call(fn: FamilyFn, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    pad_h, pad_w = -height % _MULTIPLE, -width % _MULTIPLE
    x = image.astype(np.float64) / 255.0
    if pad_h or pad_w:
        x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    return fn(x, rng)[:height, :width]


def generate_fake(family: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fake made from ``image`` (HxWx3 uint8) by ``family``; HxWx3 uint8, same shape.

    Sides that are not multiples of 8 are reflect-padded for the family and cropped back.
    Raises ValueError for an unknown family (listing the valid ones) or a malformed image.
    """
    if family not in FAMILY_REGISTRY:
        raise ValueError(f"unknown generator family {family!r}; valid: {', '.join(FAMILY_REGISTRY)}")
    _check_image(image)
    return _to_uint8(_padded_call(FAMILY_REGISTRY[family], image, rng))


def blur_control(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma U(0.5, 1.5) px: a real as soft as an x2-upsampled fake."""
    return _ops.gaussian_blur(image, rng.uniform(0.5, 1.5))


def resample_control(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lanczos down by U(1.4, 2.6) and back up: a real that went through a resize.

    Non-integer factors, so no fixed-period grid that could pass for an upsampler's trace.
    """
    return _ops.lanczos_down_up(image, rng.uniform(1.4, 2.6))


#: Processed reals, labelled real: keep a detector from learning "smooth = fake".
CONTROL_REGISTRY: dict[str, FamilyFn] = {"blur": blur_control, "resample": resample_control}


def apply_control(control: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A processed real (HxWx3 uint8 -> same) made by ``control`` ('blur' or 'resample')."""
    if control not in CONTROL_REGISTRY:
        raise ValueError(f"unknown control {control!r}; valid: {', '.join(CONTROL_REGISTRY)}")
    _check_image(image)
    return _to_uint8(CONTROL_REGISTRY[control](image.astype(np.float64) / 255.0, rng))
