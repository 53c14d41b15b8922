"""Deployment: the QMDD packed model file (``.qmdd``) and fast int8 CPU inference.

>>> from qmdd.deploy import save_packed, load_packed
>>> save_packed("model.qmdd", model, config)      # low-bit weights as packed integers
>>> detector = load_packed("model.qmdd")          # the same fake-quant detector back (.model, .config, .threshold)
>>> fast = to_int8(detector.model, calibration_images(detector.config.data))   # int8 x86 CPU model
>>> export_onnx("model.onnx", detector.model, detector.config, calibration_images(detector.config.data))
>>> scorer = open_deployed("model.onnx")            # any .qmdd / .onnx / .pt: (.model, .config, .threshold)
"""

from qmdd.deploy._format import (
    FILE_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAGIC,
    READABLE_VERSIONS,
    PackedFormatError,
    PackedStats,
    load_packed,
    pack_codes,
    read_packed,
    save_packed,
    unpack_codes,
)
from qmdd.deploy._onnx import ACTIVATION_TYPES, ONNX_INT4_OPSET, ONNX_OPSET, WEIGHT_TYPES, OnnxFormatError, OnnxModel, OnnxStats, export_onnx, load_onnx
from qmdd.deploy._open import DEFAULT_ENGINE, ENGINES, file_kind, open_deployed
from qmdd.deploy._int8 import Int8ConversionError, Int8LevelInput, Int8LSQInput, Int8Model, LevelInput, LSQInput, calibration_images, int8_weight_codes, lowbit_float_model, to_int8

__all__ = [
    "FILE_SUFFIX",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "MAGIC",
    "PackedFormatError",
    "PackedStats",
    "load_packed",
    "pack_codes",
    "read_packed",
    "save_packed",
    "unpack_codes",
    "Int8ConversionError",
    "Int8LSQInput",
    "Int8LevelInput",
    "Int8Model",
    "LSQInput",
    "LevelInput",
    "int8_weight_codes",
    "calibration_images",
    "lowbit_float_model",
    "to_int8",
    "ONNX_OPSET",
    "ONNX_INT4_OPSET",
    "WEIGHT_TYPES",
    "ACTIVATION_TYPES",
    "OnnxFormatError",
    "OnnxModel",
    "OnnxStats",
    "export_onnx",
    "load_onnx",
    "DEFAULT_ENGINE",
    "ENGINES",
    "file_kind",
    "open_deployed",
]
