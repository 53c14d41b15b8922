"""Data: ForenSynths-layout loaders, CNNDetection transforms and the embedded benchmark.

The image size limits are ``qmdd.data.folder.MAX_IMAGE_PIXELS`` and
``qmdd.data.folder.MAX_ASPECT_RATIO`` (set them there: they are read at every check).
"""

from qmdd.data._training_sets import TrainingData, build_training_data, resolve_data_root
from qmdd.data.folder import (
    FAKE_DIR,
    IMAGE_EXTENSIONS,
    REAL_DIR,
    BenchmarkInfo,
    DataLayoutError,
    ImageLoadError,
    ImageSet,
    ImageSizeError,
    LoadFailure,
    TolerantImageSet,
    check_image_size,
    collate_skipping_failures,
    find_labelled_images,
    is_image_entry,
    load_rgb,
    load_transformed,
)
from qmdd.data.transforms import DetectorTransform, gaussian_blur, jpeg_compress

__all__ = [
    "TrainingData",
    "build_training_data",
    "resolve_data_root",
    "FAKE_DIR",
    "REAL_DIR",
    "IMAGE_EXTENSIONS",
    "BenchmarkInfo",
    "DataLayoutError",
    "ImageLoadError",
    "ImageSizeError",
    "ImageSet",
    "LoadFailure",
    "TolerantImageSet",
    "check_image_size",
    "collate_skipping_failures",
    "find_labelled_images",
    "is_image_entry",
    "load_rgb",
    "load_transformed",
    "DetectorTransform",
    "gaussian_blur",
    "jpeg_compress",
]
