"""Data: ForenSynths-layout loaders, CNNDetection transforms and the embedded benchmark."""

from qmdd.data._training_sets import TrainingData, build_training_data, resolve_data_root
from qmdd.data.folder import (
    FAKE_DIR,
    IMAGE_EXTENSIONS,
    REAL_DIR,
    BenchmarkInfo,
    DataLayoutError,
    ImageLoadError,
    ImageSet,
    LoadFailure,
    TolerantImageSet,
    collate_skipping_failures,
    find_labelled_images,
    load_rgb,
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
    "ImageSet",
    "LoadFailure",
    "TolerantImageSet",
    "collate_skipping_failures",
    "find_labelled_images",
    "load_rgb",
    "DetectorTransform",
    "gaussian_blur",
    "jpeg_compress",
]
