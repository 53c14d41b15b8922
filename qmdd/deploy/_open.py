"""Open any deployable file as a scoring model: ``open_deployed(path, engine)``.

One place decides what a file is and how to run it, for ``python -m qmdd.predict`` and any
other consumer (a video pipeline, a server): a QMDD packed model (``.qmdd``, recognised by
its magic bytes) or a training checkpoint (``.pt``) runs as the fake-quant model or as its
int8 model; an ONNX file (``.onnx``) runs in ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

from qmdd.deploy._format import MAGIC, load_packed
from qmdd.deploy._int8 import calibration_images, to_int8
from qmdd.deploy._onnx import OnnxFormatError, load_onnx
from qmdd.detector import LoadedDetector, load_detector

__all__ = ["ENGINES", "DEFAULT_ENGINE", "open_deployed", "file_kind"]

#: How a model runs: ``int8`` (PyTorch's x86 int8 backend), ``fake-quant`` (the exact float
#: model), ``onnxruntime`` (an ONNX file in ONNX Runtime).
ENGINES = ("int8", "fake-quant", "onnxruntime")
DEFAULT_ENGINE = "int8"
_ONNX_SUFFIX = ".onnx"


def file_kind(path: str | Path) -> str:
    """``"packed"``, ``"onnx"`` or ``"checkpoint"``: by the magic bytes of a packed file,
    else by the suffix (``.onnx``; anything else is read as a checkpoint)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) == MAGIC:
                return "packed"
    except OSError:
        pass  # a missing file: its reader names the problem
    return "onnx" if path.suffix.lower() == _ONNX_SUFFIX else "checkpoint"


def open_deployed(path: str | Path, engine: str | None = None, threads: int | None = None) -> LoadedDetector:
    """A detector ready to score images: ``(model, config, threshold)``, ``model`` mapping
    a batch of transformed images (``config.data``'s test transform) to logits.

    ``engine``: one of :data:`ENGINES`, or None for the file's natural one (ONNX Runtime
    for ``.onnx``, int8 otherwise). An ONNX file runs only in ONNX Runtime; the int8
    engine calibrates its 8-bit ranges on crops of the photos shipped with qmdd, so its
    results depend on nothing but the file. Errors: ``PackedFormatError``,
    ``OnnxFormatError``, ``Int8ConversionError``, ``CheckpointError`` (or ``ValueError``
    for an unknown engine), each one sentence naming the file.
    """
    kind = file_kind(path)
    if engine is None:
        engine = "onnxruntime" if kind == "onnx" else DEFAULT_ENGINE
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if kind == "onnx" or engine == "onnxruntime":
        if kind != "onnx":
            raise OnnxFormatError(f"{path}: engine onnxruntime runs .onnx files (python -m qmdd.export --format onnx writes one)")
        if engine != "onnxruntime":
            raise OnnxFormatError(f"{path}: an ONNX file runs in ONNX Runtime only, not with engine {engine}")
        return load_onnx(path, threads)
    loaded = load_packed(path) if kind == "packed" else load_detector(path)
    if engine == "int8":
        model = to_int8(loaded.model, calibration_images(loaded.config.data))
        return LoadedDetector(model, loaded.config, loaded.threshold)
    return loaded
