import numpy as np
import pytest
import torch
from PIL import Image

from qmdd.config import DataConfig
from qmdd.data import DetectorTransform, ImageLoadError, ImageSet, find_labelled_images, load_rgb


def test_labels_come_from_folder_names(tmp_path):
    for folder, count in (("a/0_real", 2), ("a/1_fake", 3), ("b/x/0_real", 1), ("b/x/1_fake", 1)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / folder / f"{i}.png")
    (tmp_path / "a/1_fake/notes.txt").write_text("not an image")
    samples = find_labelled_images(tmp_path)
    assert len(samples) == 7
    assert all(label == (1 if "1_fake" in str(path) else 0) for path, label in samples)
    assert samples == find_labelled_images(tmp_path)  # deterministic order


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_any_mode_loads_as_8bit_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (10, 12), dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(0, 10**6, (10, 12)).astype(np.int32))
    else:
        image = Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16", "I") else "x.png")
    image.save(path)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (12, 10)
    array = np.asarray(loaded)
    if mode in ("I;16", "I"):
        # Rescaled, not clipped: the 16/32-bit range spreads over the 8-bit range.
        assert array.max() > 200 and array.min() < 50


def test_corrupt_and_truncated_images_name_the_path(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not a png")
    for path in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(ImageLoadError, match=path.name):
            load_rgb(path)


def _image(seed=0, size=40):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_transform_is_a_function_of_the_seed():
    transform = DetectorTransform(DataConfig(crop_size=24, blur_prob=0.5, jpeg_prob=0.5), "train")
    a = transform(_image(), np.random.default_rng((0, 1, 5)))
    b = transform(_image(), np.random.default_rng((0, 1, 5)))
    c = transform(_image(), np.random.default_rng((0, 2, 5)))
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_test_transform_is_a_plain_center_crop():
    config = DataConfig(crop_size=24, blur_prob=1.0, jpeg_prob=1.0)
    image = _image()
    out = DetectorTransform(config, "test")(image, np.random.default_rng(0))
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    pixels = (out * std + mean) * 255
    expected = torch.from_numpy(np.asarray(image)[8:32, 8:32].astype(np.float32)).permute(2, 0, 1)
    assert torch.allclose(pixels, expected, atol=1e-3)


def test_validation_applies_fixed_blur_and_jpeg_at_the_training_probabilities():
    always = DetectorTransform(DataConfig(crop_size=24, blur_prob=1.0, jpeg_prob=1.0), "val")
    never = DetectorTransform(DataConfig(crop_size=24, blur_prob=0.0, jpeg_prob=0.0), "val")
    image = _image()
    degraded = always(image, np.random.default_rng(0))
    assert torch.equal(degraded, always(image, np.random.default_rng(123)))  # fixed sigma and quality
    assert not torch.equal(degraded, never(image, np.random.default_rng(0)))
    assert degraded.std() < never(image, np.random.default_rng(0)).std()  # blur removes noise energy


def test_image_set_seeds_per_sample_and_epoch(tmp_path):
    for i in range(3):
        (tmp_path / "0_real").mkdir(exist_ok=True)
        _image(i).save(tmp_path / "0_real" / f"{i}.png")
    transform = DetectorTransform(DataConfig(crop_size=24), "train")
    dataset = ImageSet(find_labelled_images(tmp_path), transform, seed=7)
    first = dataset[1][0]
    assert torch.equal(first, dataset[1][0])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[1][0])


def _coordinate_image(width: int, height: int) -> Image.Image:
    """Red = column, green = row: a crop's pixel values say where it was cut."""
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([cols, rows, np.zeros_like(cols)], axis=-1).astype(np.uint8))


def _crop_origin(tensor: torch.Tensor) -> tuple[int, int]:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    pixels = ((tensor * std + mean) * 255).round().to(torch.int64)
    return int(pixels[0].min()), int(pixels[1].min())  # flips keep the set of columns


@pytest.mark.parametrize("align", [1, 2, 4, 8])
def test_aligned_offsets_are_multiples_of_the_alignment_and_all_are_drawn(align):
    from qmdd.data.transforms import aligned_offset

    rng = np.random.default_rng(0)
    slack = 30
    drawn = {aligned_offset(slack, align, rng) for _ in range(3000)}
    assert drawn == set(range(0, slack + 1, align))


@pytest.mark.parametrize("align", [1, 2, 8])
def test_training_crops_keep_the_grid_phase(align):
    transform = DetectorTransform(DataConfig(crop_size=24, crop_align=align, blur_prob=0, jpeg_prob=0), "train")
    image = _coordinate_image(57, 50)
    origins = {_crop_origin(transform(image, np.random.default_rng(seed))) for seed in range(400)}
    lefts, tops = {o[0] for o in origins}, {o[1] for o in origins}
    assert lefts == set(range(0, 57 - 24 + 1, align)) and tops == set(range(0, 50 - 24 + 1, align))


def test_centre_crop_is_aligned_and_shiftable():
    from qmdd.data.transforms import centred_offset

    config = DataConfig(crop_size=24, crop_align=8)
    image = _coordinate_image(60, 60)  # exact centre offset 18: aligned down to 16
    assert _crop_origin(DetectorTransform(config, "test")(image, np.random.default_rng(0))) == (16, 16)
    assert _crop_origin(DetectorTransform(config, "test", crop_shift=3)(image, np.random.default_rng(0))) == (19, 19)
    assert _crop_origin(DetectorTransform(DataConfig(crop_size=24, crop_align=1, blur_prob=0, jpeg_prob=0), "val")(image, np.random.default_rng(0))) == (18, 18)
    assert centred_offset(4, 8, shift=10) == 4  # clamped to the image
    with pytest.raises(ValueError, match="crop_shift"):
        DetectorTransform(config, "train", crop_shift=1)
