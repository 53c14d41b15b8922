"""``python -m qmdd.predict`` on bad arguments and hostile images: an argparse error naming
the flag, and one line per image (``nan  unreadable  path`` for those it cannot read) with
the reason on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from qmdd.predict import collect_images, main as predict_main


@pytest.mark.parametrize(("flag", "value"), [("--threads", "-1"), ("--threads", "0"), ("--threads", "two"), ("--batch-size", "0")])
def test_counts_below_one_are_argparse_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as caught:
        predict_main(["--model", "never-read.qmdd", flag, value, "x.png"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be an integer >= 1" in err and "usage:" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory) -> Path:
    from qmdd.config import load_config
    from qmdd.deploy import save_packed
    from qmdd.detector import build_detector
    from qmdd.quant import calibrate

    config = load_config(None, ["model.arch=cnn5", "quant.bits=2", "data.crop_size=24"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(4, 3, 24, 24)])
    path = tmp_path_factory.mktemp("packed") / "m.qmdd"
    save_packed(path, model.eval(), config, threshold=0.5)
    return path


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG header claiming ``width`` x ``height`` and a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 31)) + chunk(b"IEND", b""))


@pytest.fixture
def hostile_folder(tmp_path, monkeypatch) -> tuple[Path, list[str], list[str]]:
    """Good images and every kind of unreadable one, with allocation guards: a resize or
    decode the limits should have prevented fails the test instead of taking gigabytes."""
    resize, load = Image.Image.resize, ImageFile.ImageFile.load

    def guarded_resize(self, size, *args, **kwargs):
        assert size[0] * size[1] <= 4_000_000, f"resize to {size} was not prevented"
        return resize(self, size, *args, **kwargs)

    def guarded_load(self):
        assert self.size[0] * self.size[1] <= 4_000_000, f"decode of {self.size} was not prevented"
        return load(self)

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a_good.png", "z_good.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(folder / "b_transform_fails.png")
    Image.new("RGB", (1, 60000)).save(folder / "c_thin_1x60000.png")
    Image.new("RGB", (3, 20000)).save(folder / "d_thin_3x20000.png")
    _png_claiming(folder / "e_huge_12000.png", 12000, 12000)
    (folder / "f_corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    os.symlink("g_loop.png", folder / "g_loop.png")
    bad = ["b_transform_fails.png", "c_thin_1x60000.png", "d_thin_3x20000.png", "e_huge_12000.png", "f_corrupt.jpg", "g_loop.png"]
    return folder, ["a_good.png", "z_good.png"], bad


def _fail_on_30x30(monkeypatch) -> None:
    """The test transform raises for 30x30 images: an error in the transform, not the loader."""
    from qmdd.data.transforms import DetectorTransform

    call = DetectorTransform.__call__

    def failing(self, image, rng):
        if image.size == (30, 30):
            raise RuntimeError("transform exploded")
        return call(self, image, rng)

    monkeypatch.setattr(DetectorTransform, "__call__", failing)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_every_image_keeps_its_line_in_order_and_unreadable_ones_are_reported(packed_model, hostile_folder, monkeypatch, capsys, batch_size):
    folder, good, bad = hostile_folder
    _fail_on_30x30(monkeypatch)
    assert [p.name for p in collect_images([str(folder)])] == sorted(good + bad)  # the loop is listed too
    status = predict_main(["--model", str(packed_model), "--engine", "fake-quant", "--batch-size", str(batch_size), "--threads", "1", str(folder)])
    out, err = capsys.readouterr()
    assert status == 1 and "Traceback" not in err
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [Path(path).name for _, _, path in lines] == sorted(good + bad)
    for probability, verdict, path in lines:
        if Path(path).name in bad:
            assert math.isnan(float(probability)) and verdict == "unreadable"
        else:
            assert 0.0 <= float(probability) <= 1.0 and verdict in ("real", "fake")
    errors = err.strip().splitlines()
    for name in bad:
        assert sum(name in line for line in errors) == 1, name
    reasons = {name: next(line for line in errors if name in line) for name in bad}
    assert "transform exploded" in reasons["b_transform_fails.png"]
    assert "MAX_ASPECT_RATIO" in reasons["c_thin_1x60000.png"] and "MAX_ASPECT_RATIO" in reasons["d_thin_3x20000.png"]
    assert "MAX_IMAGE_PIXELS" in reasons["e_huge_12000.png"]
    assert "symbolic links" in reasons["g_loop.png"]
    assert errors[-1] == f"error: {len(bad)} of {len(good) + len(bad)} image(s) unreadable (their lines say 'unreadable')"


def test_scores_do_not_depend_on_unreadable_neighbours(packed_model, hostile_folder, capsys):
    folder, good, bad = hostile_folder
    assert predict_main(["--model", str(packed_model), "--engine", "fake-quant", *(str(folder / n) for n in good)]) == 0
    alone = capsys.readouterr().out.strip().splitlines()
    assert predict_main(["--model", str(packed_model), "--engine", "fake-quant", str(folder)]) == 1
    mixed = [line for line in capsys.readouterr().out.strip().splitlines() if Path(line.split("\t")[2]).name in good]
    assert mixed == alone
