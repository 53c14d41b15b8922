"""The ``learned_decoder`` family: a tiny convolutional autoencoder trained on the reals.

Latent-diffusion images are decoded by a VAE decoder from a latent at 1/8 resolution with
4 channels; the decoder's upsampling convolutions leave a fingerprint on every image,
whatever the diffusion model drew (Ricker et al. 2024; Rajan et al. ICLR 2025 build aligned
fakes by just passing reals through that autoencoder). This module trains a miniature of
that autoencoder: encoder 3 -> 1/8 resolution x 4 channels, decoder 3 x (nearest x2 +
3x3 conv + ReLU), trained briefly on crops of the training photos with a fixed seed.

The trained weights ship as package data (``qmdd/data/assets/decoder/learned_decoder.npz``,
~0.1 MB) instead of being trained at build time: a build stays fast on a laptop CPU, and
every machine decodes with the same weights (CPU training is not bit-reproducible across
thread counts). Reproduce them with::

    python -m qmdd.data.embedded._decoder            # rewrites the .npz (a few minutes on CPU)
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TRAIN_SEED", "trained_autoencoder", "reconstruct"]

TRAIN_SEED = 20250  # fixed: the "generator" is one trained model, whatever the benchmark seed
TRAIN_STEPS = 3000  # a few minutes on 2 CPU cores; a blurry-but-faithful reconstruction
TRAIN_CROP = 32  # px; the net is fully convolutional, so small crops train it as well
TRAIN_BATCH = 32
LATENT_CHANNELS = 4  # as the Stable Diffusion VAE

# (C_out, C_in, k, stride) for the encoder; decoder below. Sizes kept tiny on purpose.
_ENCODER = ((16, 3, 3, 1), (24, 16, 4, 2), (32, 24, 4, 2), (LATENT_CHANNELS, 32, 4, 2))
_DECODER = ((32, LATENT_CHANNELS, 3), (32, 32, 3), (24, 32, 3), (16, 24, 3), (3, 16, 3))


def _init(rng: np.random.Generator) -> list[torch.Tensor]:
    params = []
    for cout, cin, k, *_ in _ENCODER + _DECODER:
        bound = np.sqrt(6.0 / (cin * k * k))  # He-uniform for ReLU nets
        params.append(torch.tensor(rng.uniform(-bound, bound, (cout, cin, k, k)), dtype=torch.float32))
        params.append(torch.zeros(cout))
    return params


def _encode(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for index, (_, _, k, stride) in enumerate(_ENCODER):
        pad = (k - 1) // 2 if stride == 1 else 1
        x = F.conv2d(x, params[2 * index], params[2 * index + 1], stride=stride, padding=pad)
        if index < len(_ENCODER) - 1:
            x = F.relu(x)
    return x


def _decode(params: Sequence[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    offset = 2 * len(_ENCODER)
    x = z
    for index in range(len(_DECODER)):
        weight, bias = params[offset + 2 * index], params[offset + 2 * index + 1]
        if 1 <= index <= 3:  # three nearest-x2 stages: 1/8 -> 1/1 resolution
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(x, weight, bias, padding=1)
        if index < len(_DECODER) - 1:
            x = F.relu(x)
    return x


def weights_path() -> Path:
    """The shipped trained weights (package data)."""
    return Path(__file__).resolve().parent.parent / "assets" / "decoder" / "learned_decoder.npz"


def train_autoencoder(steps: int = TRAIN_STEPS, seed: int = TRAIN_SEED) -> list[torch.Tensor]:
    """Train the autoencoder on random 32 px crops of the train-split photos (L1 loss, Adam).

    Only train-split photos: the test photos stay unseen by every generator and detector.
    """
    from qmdd.data.embedded._photos import load_photos

    rng = np.random.default_rng(seed)
    images = [image for _, image in load_photos("train")]
    params = [p.requires_grad_(True) for p in _init(rng)]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        batch = np.empty((TRAIN_BATCH, TRAIN_CROP, TRAIN_CROP, 3), dtype=np.float32)
        for b in range(TRAIN_BATCH):
            image = images[rng.integers(len(images))]
            top = rng.integers(image.shape[0] - TRAIN_CROP + 1)
            left = rng.integers(image.shape[1] - TRAIN_CROP + 1)
            batch[b] = image[top : top + TRAIN_CROP, left : left + TRAIN_CROP] / 255.0
        x = torch.from_numpy(batch).permute(0, 3, 1, 2) - 0.5
        loss = F.l1_loss(_decode(params, _encode(params, x)), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return [p.detach() for p in params]


@functools.lru_cache(maxsize=1)
def trained_autoencoder() -> tuple[torch.Tensor, ...]:
    """Parameters of the trained autoencoder, loaded once per process from the package data."""
    path = weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing (package data qmdd/data/assets/**/*); reinstall qmdd or "
            "recreate it with `python -m qmdd.data.embedded._decoder`"
        )
    with np.load(path) as archive:
        return tuple(torch.from_numpy(archive[f"p{i}"].astype(np.float32)) for i in range(len(archive.files)))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the caller's setting.

    The split of a convolution over threads can change float32 rounding, so the bytes of a
    fake would depend on the thread count (and differ between a serial and a parallel
    build); one thread makes them the same everywhere on one machine. The convolutions
    here are small (128 px, <= 32 channels), so one thread costs little.
    """
    previous = torch.get_num_threads()
    if previous == 1:  # already single-threaded (e.g. inside a build): nothing to change
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main() -> int:
    """Train and write the shipped weights (maintainer command)."""
    params = train_autoencoder()
    path = weights_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"p{i}": p.numpy() for i, p in enumerate(params)})
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def reconstruct(image: np.ndarray, rng: np.random.Generator, weight_jitter: float) -> np.ndarray:
    """Encode and decode an HxWx3 float image in [0, 1] (H, W multiples of 8).

    Every call multiplies each decoder weight by ``1 + N(0, weight_jitter)``: fresh weights
    per image, as many trained instances of one decoder design would have.
    """
    params = list(trained_autoencoder())
    offset = 2 * len(_ENCODER)
    for index in range(offset, len(params), 2):
        noise = rng.normal(1.0, weight_jitter, tuple(params[index].shape))
        params[index] = params[index] * torch.from_numpy(noise.astype(np.float32))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None] - 0.5
    with torch.no_grad(), one_thread():
        out = _decode(params, _encode(params, x))
    return out[0].permute(1, 2, 0).double().numpy() + 0.5
