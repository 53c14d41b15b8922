"""Synthetic trees in the real ForenSynths / UniversalFakeDetect layouts, and a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qmdd.config import config_from_dict
from qmdd.checkpoint import save_checkpoint
from qmdd.detector import build_detector


def write_images(folder: Path, count: int, *, size: int = 32, seed: int = 0, fake: bool = False) -> None:
    """``count`` PNGs; fakes carry a checkerboard so a trained detector could tell them apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        array = rng.integers(60, 200, (size, size, 3)).astype(np.float64)
        if fake:
            array += ((np.indices((size, size)).sum(0) % 2) * 40 - 20)[..., None]
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="session")
def forensynths_root(tmp_path_factory) -> Path:
    """test/ with per-class progan and stylegan, flat biggan and stargan (with a corrupt
    file and odd modes), gaugan without reals; the other sets are absent."""
    root = tmp_path_factory.mktemp("forensynths")
    test = root / "test"
    for seed, cls in enumerate(("car", "cat")):
        write_images(test / "progan" / cls / "0_real", 3, seed=seed)
        write_images(test / "progan" / cls / "1_fake", 3, seed=seed + 10, fake=True)
    write_images(test / "stylegan" / "bedroom" / "0_real", 2, seed=20)
    write_images(test / "stylegan" / "bedroom" / "1_fake", 4, seed=21, fake=True)
    write_images(test / "biggan" / "0_real", 5, seed=30)
    write_images(test / "biggan" / "1_fake", 5, seed=31, fake=True)
    write_images(test / "stargan" / "0_real", 3, seed=40)
    write_images(test / "stargan" / "1_fake", 3, seed=41, fake=True)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(test / "stargan/0_real/grey_L.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)).save(test / "stargan/1_fake/alpha_RGBA.png")
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(test / "stargan/1_fake/deep_16bit.tif")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("CMYK").save(test / "stargan/0_real/print_CMYK.tif")
    good = (test / "stargan/1_fake/000.png").read_bytes()
    (test / "stargan/1_fake/truncated.png").write_bytes(good[: len(good) // 3])
    write_images(test / "gaugan" / "1_fake", 3, seed=50, fake=True)
    return root


@pytest.fixture(scope="session")
def ufd_root(tmp_path_factory) -> Path:
    """The published layout (shared laion / imagenet reals) plus one repacked set."""
    root = tmp_path_factory.mktemp("ufd") / "diffusion_datasets"
    write_images(root / "imagenet" / "0_real", 6, seed=1)
    write_images(root / "laion" / "0_real", 9, seed=2)
    write_images(root / "guided" / "1_fake", 7, seed=3, fake=True)
    write_images(root / "ldm_200" / "1_fake", 8, seed=4, fake=True)
    write_images(root / "ldm_100" / "1_fake", 3, seed=5, fake=True)
    write_images(root / "glide_100_27" / "0_real", 2, seed=6)  # repacked: own reals
    write_images(root / "glide_100_27" / "1_fake", 2, seed=7, fake=True)
    return root.parent


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained FP32 ResNet-18 saved as a qmdd checkpoint (crop 24): fast and real."""
    config = config_from_dict({"data": {"crop_size": 24}, "quant": {"bits": 32}})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "fp32" / "best.pt"
    save_checkpoint(path, config=config, model=build_detector(config))
    return path


@pytest.fixture(scope="session")
def checkpoint_w2(tmp_path_factory) -> Path:
    config = config_from_dict({"data": {"crop_size": 24}, "quant": {"bits": 2}})
    torch.manual_seed(1)
    model = build_detector(config)
    from qmdd.quant import calibrate

    calibrate(model, [torch.randn(4, 3, 24, 24)])
    path = tmp_path_factory.mktemp("ckpt") / "w2" / "best.pt"
    save_checkpoint(path, config=config, model=model)
    return path
