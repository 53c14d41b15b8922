"""The QMDD packed model format (``.qmdd``): low-bit weights as packed integers.

A ``.qmdd`` file holds a whole detector: its resolved run config (so
:func:`qmdd.training.build_detector` rebuilds the architecture) and every tensor of its state
dict, with the quantized conv/linear weights stored as b-bit integer codes (2 bits -> 4 codes
per byte, 3 bits -> exactly 3 bits per code in a bitstream) next to their per-channel steps.
Everything else (first/last layers, BatchNorm, biases, steps) is raw little-endian float32.
Sparse tensors (e.g. after pruning) use a bitmap plus the non-zero values when that is
smaller. The byte layout is documented in ``docs/deployment.md``.

It is safe to read from an untrusted source: no pickle, a magic number and a format version,
a length-prefixed JSON header with a CRC32 whose size, nesting depth and integer lengths are
bounded before it is parsed, and every header entry is checked against the file (sizes,
offsets, encodings, element counts) and against the model the header's config builds
(names, shapes, bit widths, number of entries) before the data section is read, so what
decoding allocates is bounded by the architecture, even when the checksums are forged.
Corrupt, truncated or forged files raise :class:`PackedFormatError` naming the problem.
"""

from __future__ import annotations

import gc
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

import qmdd
from qmdd.config import FULL_PRECISION, ConfigError, RunConfig, config_from_dict, config_to_dict
from qmdd.detector import LoadedDetector, build_detector, resolve_model_defaults, validate_config
from qmdd.metrics import DEFAULT_THRESHOLD
from qmdd.quant import LSQ_MIN_STEP, WeightCodes, quantized_layers
from qmdd.utils import atomic_write


__all__ = [
    "FORMAT_NAME",
    "FILE_SUFFIX",
    "MAGIC",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "PackedFormatError",
    "PackedStats",
    "save_packed",
    "load_packed",
    "read_packed",
    "pack_codes",
    "unpack_codes",
]

FORMAT_NAME = "QMDD packed model"
FILE_SUFFIX = ".qmdd"
#: PNG-style magic: a non-ASCII first byte, then CR LF, ^Z, LF, so text-mode transfers and
#: ``type``/``cat`` mishaps are detected.
MAGIC = b"\x89QMDD\r\n\x1a\n"
FORMAT_VERSION = 2
#: Versions this reader decodes: 1 stored LSQ weights as codes that refer to the state
#: dict's step tensor (``lsq_codes``); 2 stores any family's codes with their own scales.
READABLE_VERSIONS = (1, 2)
_HEADER_FORMAT = "qmdd-packed-model"
# Fixed prefix after the magic: format version (uint16), header length (uint32),
# header CRC32 (uint32), all little-endian.
_PREFIX = struct.Struct("<HII")
PREFIX_BYTES = len(MAGIC) + _PREFIX.size

# Limits that bound what a hostile header can make the reader do, before the model its
# config builds bounds the rest (entry count, names, shapes, bit widths; see _Architecture).
# The largest header a registered backbone writes (MobileNetV3-Large with N2UQ, every
# weight pruned) is ~100 kB; any 1 MiB of JSON parses in a fraction of a second into
# at most ~30 MB of Python objects.
_MAX_HEADER_BYTES = 2**20
# A valid header nests 4 deep (header > config > section > list); json recurses per level.
_MAX_HEADER_DEPTH = 16
# Digits in a row in a number: a valid header's integers (sizes, offsets, CRC32s) fit in
# int64 (19 digits) and a float's repr has at most 20 (3 zeros after the point, then 17).
_MAX_NUMBER_DIGITS = 24
_MAX_DIMS = 8
_MAX_ELEMENTS = 2**31
_MAX_NAME_CHARS = 256  # the longest state-dict key of a registered backbone has 67
_MAX_SHOWN_CHARS = 80  # header values quoted in error messages

# encoding -> bytes per element for the raw encodings.
_RAW = {"float32": 4, "int64": 8, "bool": 1}
# encoding -> (stored little-endian numpy dtype, native numpy dtype)
_RAW_DTYPES = {"float32": ("<f4", np.float32), "int64": ("<i8", np.int64), "bool": ("u1", np.uint8)}
_CODE_ENCODINGS = ("codes", "codes_sparse")  # version 2: any family's WeightCodes
_LEGACY_CODE_ENCODINGS = ("lsq_codes", "lsq_codes_sparse")  # version 1 (read only)
_ANY_CODE_ENCODINGS = (*_CODE_ENCODINGS, *_LEGACY_CODE_ENCODINGS)
_ENCODINGS = {*_RAW, "float32_sparse", "bitmask", *_ANY_CODE_ENCODINGS}
# Each version stores codes its own way: a file of one version with the other's is forged.
_VERSION_CODE_ENCODINGS = {1: _LEGACY_CODE_ENCODINGS, 2: _CODE_ENCODINGS}
# Non-float state-dict tensors and the only encoding the writer gives them.
_DTYPE_ENCODINGS = {torch.int64: "int64", torch.bool: "bool"}


class PackedFormatError(ValueError):
    """A file is not a valid QMDD packed model (wrong magic, corrupt, truncated...)."""


@dataclass(frozen=True)
class PackedStats:
    """What an export wrote: total bytes and bytes per encoding."""

    path: Path
    file_bytes: int
    header_bytes: int
    bytes_by_encoding: dict[str, int]


# ------------------------------------------------------------------------- bit packing


def pack_codes(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2**bits into a little-endian bitstream, ``bits`` per value.

    Value i occupies bits [i*bits, (i+1)*bits) of the stream, least significant bit first;
    the last byte is zero-padded. 2-bit codes are 4 per byte, 3-bit codes 8 per 3 bytes.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    if flat.size and int(flat.max()) >= 2**bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` unsigned values as ``uint8``."""
    if len(data) != _packed_bytes(count, bits):
        raise ValueError(f"{count} codes of {bits} bits need {_packed_bytes(count, bits)} bytes, got {len(data)}")
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (planes.reshape(count, bits).astype(np.uint16) @ weights).astype(np.uint8)


def _packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# ----------------------------------------------------------------------------- export


def _coded_weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """state-dict weight key -> layer, for the low-bit layers whose family exports codes
    (``Quantizer.weight_codes``); other weights are stored as float32, which is exact."""
    result = {}
    for name, layer in quantized_layers(model):
        if layer.weight_bits >= FULL_PRECISION:
            continue
        with torch.no_grad():
            if layer.weight_quantizer.weight_codes(layer.weight.detach()) is None:
                continue
        prefix = f"{name}." if name else ""
        result[prefix + ("weight_orig" if hasattr(layer, "weight_orig") else "weight")] = layer
    return result


def _encode_codes(layer: nn.Module) -> tuple[dict[str, Any], bytes]:
    """``codes``: the b-bit codes, then one float32 scale per output channel; ``codes_sparse``
    when a bitmap of the codes that are not the zero point plus those codes is smaller."""
    # layer.weight is the masked weight under torch.nn.utils.prune: pruned codes are the zero point.
    coded: WeightCodes = layer.weight_quantizer.weight_codes(layer.weight.detach())
    codes = coded.codes.cpu().numpy().astype(np.uint8).ravel()
    scales = coded.scale.detach().cpu().numpy().astype("<f4").tobytes()
    entry: dict[str, Any] = {"bits": coded.bits, "zero_point": coded.zero_point, "channels": int(coded.scale.numel())}
    dense = pack_codes(codes, coded.bits)
    nonzero = codes != coded.zero_point
    count = int(nonzero.sum())
    if _packed_bytes(codes.size, 1) + _packed_bytes(count, coded.bits) < len(dense):
        entry.update(encoding="codes_sparse", nonzero=count)
        return entry, np.packbits(nonzero, bitorder="little").tobytes() + pack_codes(codes[nonzero], coded.bits) + scales
    entry["encoding"] = "codes"
    return entry, dense + scales


def _encode_tensor(key: str, tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    tensor = tensor.detach().cpu()
    if key.endswith("_mask") and tensor.is_floating_point() and bool(((tensor == 0) | (tensor == 1)).all()):
        # A pruning mask: one bit per element.
        return {"encoding": "bitmask"}, np.packbits(tensor.numpy().ravel() != 0, bitorder="little").tobytes()
    if tensor.is_floating_point():
        values = tensor.to(torch.float32).numpy().ravel()
        nonzero = values != 0
        count = int(nonzero.sum())
        if _packed_bytes(values.size, 1) + 4 * count < 4 * values.size:
            payload = np.packbits(nonzero, bitorder="little").tobytes() + values[nonzero].astype("<f4").tobytes()
            return {"encoding": "float32_sparse", "nonzero": count}, payload
        return {"encoding": "float32"}, values.astype("<f4").tobytes()
    if tensor.dtype == torch.int64:
        return {"encoding": "int64"}, tensor.numpy().astype("<i8").tobytes()
    if tensor.dtype == torch.bool:
        return {"encoding": "bool"}, tensor.numpy().astype(np.uint8).tobytes()
    raise PackedFormatError(f"cannot export tensor {key!r} of dtype {tensor.dtype}: supported are float, int64, bool")


def save_packed(path: str | Path, model: nn.Module, config: RunConfig, threshold: float = DEFAULT_THRESHOLD) -> PackedStats:
    """Write ``model`` (built from ``config`` and calibrated) as a QMDD packed model, atomically.

    The quantized weights are stored as their integer codes with per-channel scales
    (whatever the family's ``weight_codes`` gives); loading gives weights equal to
    ``(code - zero_point) * scale``, the values the fake quantizer produced, so the loaded
    model's outputs equal the fake-quant model's.
    ``threshold``: the decision threshold on ``sigmoid(logit)`` (the checkpoint's,
    fitted on validation), stored in the header for ``qmdd.predict``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise PackedFormatError(f"threshold {threshold} is not a probability in [0, 1]")
    from qmdd.quant import Quantizer

    uncalibrated = [name for name, m in model.named_modules() if isinstance(m, Quantizer) and not m.calibrated]
    if uncalibrated:
        raise PackedFormatError(
            f"cannot export an uncalibrated model ({uncalibrated[0]} and {len(uncalibrated) - 1} more): "
            "calibrate or train it first"
        )
    entries, chunks = _encode_state(model)
    data = b"".join(chunks)
    header = {
        "format": _HEADER_FORMAT,
        "qmdd_version": qmdd.__version__,
        "config": config_to_dict(config),
        "threshold": float(threshold),
        "data_bytes": len(data),
        "data_crc32": zlib.crc32(data),
        "tensors": entries,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    prefix = MAGIC + _PREFIX.pack(FORMAT_VERSION, len(header_bytes), zlib.crc32(header_bytes))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(prefix)
            handle.write(header_bytes)
            handle.write(data)

    atomic_write(path, write)
    by_encoding: dict[str, int] = {}
    for entry in entries:
        by_encoding[entry["encoding"]] = by_encoding.get(entry["encoding"], 0) + entry["length"]
    return PackedStats(Path(path), len(prefix) + len(header_bytes) + len(data), len(header_bytes), by_encoding)


def _encode_state(model: nn.Module) -> tuple[list[dict[str, Any]], list[bytes]]:
    """One header entry and one payload per state-dict tensor, in state-dict order."""
    coded = _coded_weight_layers(model)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    state = model.state_dict()
    for key, tensor in state.items():
        mask = state.get(key[: -len("weight_orig")] + "weight_mask") if key.endswith("weight_orig") else None
        if mask is not None:
            # Pruned values never reach the output: store them as zeros, which the sparse
            # encodings then skip.
            tensor = tensor * mask
        entry, payload = _encode_codes(coded[key]) if key in coded else _encode_tensor(key, tensor)
        entry.update(name=key, shape=list(tensor.shape), offset=offset, length=len(payload))
        entries.append(entry)
        chunks.append(payload)
        offset += len(payload)
    return entries, chunks


# ------------------------------------------------------------------------------- load


def _fail(path: Path, message: str) -> PackedFormatError:
    return PackedFormatError(f"{path}: {message}")


def _show(value: Any) -> str:
    """``repr(value)`` cut short: header values are attacker-controlled and can be huge."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 3] + "..."


def _expect_int(path: Path, where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, f"{where} must be an integer in [{low}, {high}], got {_show(value)}")
    return value


# --------------------------------------------------------------------- prefix and header


def _read_header_bytes(path: Path, handle: BinaryIO) -> tuple[int, bytes]:
    """Check the fixed prefix and read the header bytes: ``(format version, header)``."""
    prefix = handle.read(PREFIX_BYTES)
    if len(prefix) < PREFIX_BYTES:
        raise _fail(path, f"truncated: {len(prefix)} bytes, shorter than the {PREFIX_BYTES}-byte prefix of a {FORMAT_NAME}")
    if prefix[: len(MAGIC)] != MAGIC:
        raise _fail(path, f"not a {FORMAT_NAME} (wrong magic bytes {prefix[:len(MAGIC)]!r})")
    version, header_length, header_crc = _PREFIX.unpack_from(prefix, len(MAGIC))
    if version not in READABLE_VERSIONS:
        newer = " (newer than this qmdd reads: upgrade qmdd)" if version > FORMAT_VERSION else ""
        raise _fail(path, f"format version {version} is not supported{newer}; this qmdd reads versions {list(READABLE_VERSIONS)}")
    if header_length > _MAX_HEADER_BYTES:
        raise _fail(path, f"header length {header_length} exceeds the {_MAX_HEADER_BYTES}-byte limit")
    header_raw = handle.read(header_length)
    if len(header_raw) < header_length:
        raise _fail(path, f"truncated: header needs {header_length} bytes, only {len(header_raw)} present")
    if zlib.crc32(header_raw) != header_crc:
        raise _fail(path, "header checksum mismatch: the file is corrupt")
    return version, header_raw


def _last_unset(flags: np.ndarray, index: np.ndarray) -> np.ndarray:
    """For each position, the last position at or before it where ``flags`` is False (-1: none)."""
    return np.maximum.accumulate(np.where(flags, np.int32(-1), index))


def _scan_header(raw: bytes) -> tuple[int, int]:
    """``(nesting depth, longest run of digits)`` of a JSON text, by a linear scan.

    ``json`` recurses once per nesting level, and Python's ``int`` is quadratic in the
    digits, so both are bounded before parsing. Brackets and digits inside strings do not
    count; a quote is escaped when an odd run of backslashes precedes it. Exact for valid
    JSON; invalid JSON is rejected by ``json.loads`` anyway.
    """
    text = np.frombuffer(raw, dtype=np.uint8)
    index = np.arange(text.size, dtype=np.int32)
    backslash_run = index - _last_unset(text == ord("\\"), index)  # backslashes ending at each byte
    escaped = np.zeros(text.size, dtype=bool)
    escaped[1:] = backslash_run[:-1] % 2 == 1
    outside = np.cumsum((text == ord('"')) & ~escaped, dtype=np.int32) % 2 == 0
    opens = ((text == ord("[")) | (text == ord("{"))) & outside
    closes = ((text == ord("]")) | (text == ord("}"))) & outside
    depth = int(np.cumsum(opens.astype(np.int32) - closes, dtype=np.int32).max(initial=0))
    digits = (text >= ord("0")) & (text <= ord("9")) & outside
    return depth, int((index - _last_unset(digits, index)).max(initial=0))


def _load_json(path: Path, raw: bytes) -> Any:
    # A 1 MiB header can hold ~350,000 lists, and the garbage collector's passes over them
    # would take 10x the parse itself; parsing JSON creates no reference cycles to collect.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:  # a backstop: the scan already refuses deeply nested valid JSON
        raise _fail(path, "header nests too deeply to parse") from None
    except ValueError as error:  # includes UnicodeDecodeError and json.JSONDecodeError
        raise _fail(path, f"header is not valid JSON: {error}") from None
    finally:
        if collecting:
            gc.enable()


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    depth, digits = _scan_header(raw)
    if depth > _MAX_HEADER_DEPTH:
        raise _fail(path, f"header nests {depth} levels deep, more than the limit of {_MAX_HEADER_DEPTH}")
    if digits > _MAX_NUMBER_DIGITS:
        raise _fail(path, f"header holds a number with {digits} digits in a row, more than the limit of {_MAX_NUMBER_DIGITS}")
    header = _load_json(path, raw)
    if not isinstance(header, dict) or header.get("format") != _HEADER_FORMAT:
        raise _fail(path, f"header does not describe a {FORMAT_NAME}")
    return header


def _check_data_size(path: Path, header: dict[str, Any], available: int) -> int:
    """``data_bytes`` from the header, which must be exactly what follows the header."""
    data_bytes = _expect_int(path, "header data_bytes", header.get("data_bytes"), 0, 2**63)
    if data_bytes != available:
        state = "truncated" if data_bytes > available else "has trailing bytes"
        raise _fail(path, f"{state}: the header announces {data_bytes} data bytes, the file holds {available}")
    return data_bytes


def _header_config(path: Path, header: dict[str, Any]) -> RunConfig:
    try:
        return validate_config(config_from_dict(header.get("config")))
    except ConfigError as error:
        raise _fail(path, f"invalid config in header: {error}") from None


# ----------------------------------------------------------------- the expected tensors


@dataclass(frozen=True)
class _Slot:
    """One tensor the architecture holds: its shape, the encodings that may store it, and
    the bit width its codes must have (None where codes are not allowed)."""

    shape: list[int]
    encodings: frozenset[str]
    bits: int | None = None


@dataclass(frozen=True)
class _Architecture:
    """The tensors a file for one config may hold, taken from the model that config builds.

    ``slots``: every name a file may use, including ``<weight>_orig`` and ``<weight>_mask``
    of a weight pruned by ``torch.nn.utils.prune``. ``keys``: the unpruned state-dict keys,
    each of which must be stored once; ``prunable``: the keys that may be stored pruned.
    """

    name: str
    slots: dict[str, _Slot]
    keys: tuple[str, ...]
    prunable: frozenset[str]

    @property
    def max_entries(self) -> int:
        return len(self.keys) + len(self.prunable)  # a pruned weight takes two entries


def _slot(key: str, tensor: torch.Tensor, bits: int | None, version: int) -> _Slot:
    """What may store ``tensor``: mirrors the writer's choice (``_encode_tensor``/``_encode_codes``)."""
    shape = list(tensor.shape)
    if not tensor.dtype.is_floating_point:
        return _Slot(shape, frozenset({_DTYPE_ENCODINGS[tensor.dtype]} if tensor.dtype in _DTYPE_ENCODINGS else ()))
    encodings = {"float32", "float32_sparse"}
    if key.endswith("_mask"):
        encodings.add("bitmask")
    if bits is not None:
        encodings.update(_VERSION_CODE_ENCODINGS[version])
    return _Slot(shape, frozenset(encodings), bits)


def _shape_model(config: RunConfig) -> nn.Module:
    """The model :func:`load_packed` builds from ``config``, for its tensors' names, shapes
    and dtypes: on the meta device, so no memory is spent on the weights."""
    config = resolve_model_defaults(config)
    try:
        with torch.device("meta"):
            return build_detector(config, pretrained=False)
    except (RuntimeError, NotImplementedError):
        # A quantizer family that reads weight values while it is built cannot run on
        # meta tensors: build on the CPU, as load_packed does anyway.
        return build_detector(config, pretrained=False)


def _architecture(path: Path, config: RunConfig, version: int) -> _Architecture:
    """The tensors a file for ``config`` may hold, and how each may be stored."""
    try:
        model = _shape_model(config)
    except (ValueError, RuntimeError, TypeError) as error:
        raise _fail(path, f"the header config does not build a {config.model.arch} model: {error}") from None
    code_bits = {
        (f"{name}." if name else "") + "weight": layer.weight_bits
        for name, layer in quantized_layers(model)
        if layer.weight_bits < FULL_PRECISION
    }
    prunable = frozenset(name for name, _ in model.named_parameters() if name.rpartition(".")[2] == "weight")
    state = model.state_dict()
    slots = {}
    for key, tensor in state.items():
        slots[key] = _slot(key, tensor, code_bits.get(key), version)
        if key in prunable:
            slots[f"{key}_orig"] = _slot(f"{key}_orig", tensor, code_bits.get(key), version)
            slots[f"{key}_mask"] = _slot(f"{key}_mask", tensor, None, version)
    return _Architecture(config.model.arch, slots, tuple(state), prunable)


# --------------------------------------------------------------------- header entries


def _expected_length(path: Path, entry: dict[str, Any], elements: int) -> int:
    encoding = entry["encoding"]
    name = entry["name"]
    if encoding in _RAW:
        return elements * _RAW[encoding]
    if encoding == "bitmask":
        return _packed_bytes(elements, 1)
    if encoding in _ANY_CODE_ENCODINGS:
        bits = _expect_int(path, f"tensor {name!r} bits", entry.get("bits"), 1, 8)
        scales = 0
        if encoding in _CODE_ENCODINGS:
            channels = entry["shape"][0] if entry["shape"] else 0
            _expect_int(path, f"tensor {name!r} channels", entry.get("channels"), channels, channels)
            zero_point = entry.get("zero_point")
            if isinstance(zero_point, bool) or not isinstance(zero_point, (int, float)) or not 0 <= zero_point <= 2**bits - 1:
                raise _fail(path, f"tensor {name!r} zero_point must be a number in [0, {2**bits - 1}], got {_show(zero_point)}")
            scales = 4 * channels
        if encoding in ("codes", "lsq_codes"):
            return _packed_bytes(elements, bits) + scales
        nonzero = _expect_int(path, f"tensor {name!r} nonzero", entry.get("nonzero"), 0, elements)
        return _packed_bytes(elements, 1) + _packed_bytes(nonzero, bits) + scales
    nonzero = _expect_int(path, f"tensor {name!r} nonzero", entry.get("nonzero"), 0, elements)
    return _packed_bytes(elements, 1) + 4 * nonzero  # float32_sparse


def _check_entry_fields(path: Path, index: int, entry: Any, data_bytes: int) -> str:
    """One entry on its own: name, encoding, shape, and a byte span inside the data section
    whose length is what shape and encoding need. Returns the name."""
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor entry {index} is not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
        raise _fail(path, f"tensor entry {index} has no valid name")
    encoding = entry.get("encoding")
    if not isinstance(encoding, str) or encoding not in _ENCODINGS:
        raise _fail(path, f"tensor {name!r} has unknown encoding {_show(encoding)}; known: {sorted(_ENCODINGS)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise _fail(path, f"tensor {name!r} shape must be a list of at most {_MAX_DIMS} sizes")
    for axis, size in enumerate(shape):
        _expect_int(path, f"tensor {name!r} shape[{axis}]", size, 0, _MAX_ELEMENTS)
    elements = math.prod(shape)
    if elements > _MAX_ELEMENTS:
        raise _fail(path, f"tensor {name!r} has {elements} elements, more than {_MAX_ELEMENTS}")
    offset = _expect_int(path, f"tensor {name!r} offset", entry.get("offset"), 0, data_bytes)
    length = _expect_int(path, f"tensor {name!r} length", entry.get("length"), 0, data_bytes - offset)
    expected = _expected_length(path, entry, elements)
    if length != expected:
        raise _fail(path, f"tensor {name!r}: shape {shape} with encoding {encoding} needs {expected} bytes, header says {length}")
    return name


def _check_spans(path: Path, entries: list[dict[str, Any]], data_bytes: int) -> None:
    """The payloads tile the data section: no byte read as two tensors, and none left over
    (the data can then be no larger than the architecture's tensors need)."""
    end = 0
    for offset, length, name in sorted((e["offset"], e["length"], e["name"]) for e in entries):
        if offset < end:
            raise _fail(path, f"tensor {name!r} overlaps the previous tensor's bytes")
        if offset > end:
            raise _fail(path, f"data bytes {end} to {offset} before tensor {name!r} belong to no tensor")
        end = offset + length
    if end != data_bytes:
        raise _fail(path, f"data bytes {end} to {data_bytes} belong to no tensor")


def _check_slot(path: Path, entry: dict[str, Any], arch: _Architecture) -> None:
    """An entry against the architecture: a tensor it has, its shape, an encoding that can
    store it, and for codes the bit width the config gives the layer."""
    name, encoding = entry["name"], entry["encoding"]
    mismatch = f"tensors do not match the {arch.name} architecture"
    slot = arch.slots.get(name)
    if slot is None:
        raise _fail(path, f"{mismatch}: it has no tensor {_show(name)}")
    if entry["shape"] != slot.shape:
        raise _fail(path, f"{mismatch}: tensor {name!r} has shape {entry['shape']}, the architecture's has {slot.shape}")
    if encoding not in slot.encodings:
        raise _fail(path, f"{mismatch}: tensor {name!r} cannot be stored as {encoding} (allowed: {', '.join(sorted(slot.encodings))})")
    if encoding in _ANY_CODE_ENCODINGS and entry["bits"] != slot.bits:  # only slots with bits allow codes
        raise _fail(path, f"tensor {name!r} holds {entry['bits']}-bit codes, but the header config quantizes its layer to {slot.bits} bits")


def _check_complete(path: Path, names: dict[str, Any], arch: _Architecture) -> None:
    """Every architecture tensor stored once: as itself, or pruned as ``_orig`` plus ``_mask``."""
    for key in arch.keys:
        forms = (key in names, f"{key}_orig" in names, f"{key}_mask" in names)
        if forms in ((True, False, False), (False, True, True)):
            continue
        if not any(forms):
            raise _fail(path, f"tensors do not match the {arch.name} architecture: {key!r} is missing")
        raise _fail(path, f"tensor {key!r} must be stored either as itself or as {key}_orig plus {key}_mask")


def _check_steps(path: Path, by_name: dict[str, dict[str, Any]]) -> None:
    """Version-1 codes name the float32 step tensor that scales them, one step per output channel."""
    for entry in by_name.values():
        if entry["encoding"] not in _LEGACY_CODE_ENCODINGS:
            continue
        step_name = entry.get("step")
        step = by_name.get(step_name) if isinstance(step_name, str) else None  # a dict: linear in the entries
        channels = entry["shape"][0] if entry["shape"] else None
        if step is None or step["encoding"] != "float32" or channels is None or step["shape"] != [channels]:
            raise _fail(path, f"tensor {entry['name']!r} needs a float32 step tensor of shape [{channels if channels is not None else '?'}], got {_show(step_name)}")


def _check_entries(path: Path, tensors: Any, data_bytes: int, arch: _Architecture) -> list[dict[str, Any]]:
    """Every header entry checked, and the entries against the architecture, before any
    payload is read: what decoding allocates is then bounded by the architecture."""
    if not isinstance(tensors, list):
        raise _fail(path, "header 'tensors' must be a list of tensor entries")
    if len(tensors) > arch.max_entries:
        raise _fail(path, f"header lists {len(tensors)} tensors, more than the {arch.max_entries} a {arch.name} model can have")
    by_name: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(tensors):
        name = _check_entry_fields(path, index, entry, data_bytes)
        if name in by_name:
            raise _fail(path, f"tensor {name!r} appears twice")
        by_name[name] = entry
    _check_spans(path, tensors, data_bytes)
    for entry in tensors:
        _check_slot(path, entry, arch)
    _check_complete(path, by_name, arch)
    _check_steps(path, by_name)
    return tensors


# ----------------------------------------------------------------------------- decode


def _bitmap(path: Path, name: str, payload: bytes, elements: int, expected_ones: int | None) -> np.ndarray:
    flags = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=elements, bitorder="little").astype(bool)
    if expected_ones is not None and int(flags.sum()) != expected_ones:
        raise _fail(path, f"tensor {name!r}: bitmap has {int(flags.sum())} set bits, header says {expected_ones}")
    return flags


def _decode(path: Path, entry: dict[str, Any], data: memoryview, decoded: dict[str, torch.Tensor]) -> torch.Tensor | WeightCodes:
    name, encoding, shape = entry["name"], entry["encoding"], entry["shape"]
    payload = bytes(data[entry["offset"] : entry["offset"] + entry["length"]])
    elements = math.prod(shape)
    if encoding in _RAW:
        stored_dtype, native_dtype = _RAW_DTYPES[encoding]
        tensor = torch.from_numpy(np.frombuffer(payload, dtype=stored_dtype).astype(native_dtype))
        return (tensor != 0 if encoding == "bool" else tensor).reshape(shape)
    if encoding == "bitmask":
        return torch.from_numpy(_bitmap(path, name, payload, elements, None).astype(np.float32)).reshape(shape)
    if encoding == "float32_sparse":
        nonzero = entry["nonzero"]
        flags = _bitmap(path, name, payload[: _packed_bytes(elements, 1)], elements, nonzero)
        values = np.zeros(elements, dtype=np.float32)
        values[flags] = np.frombuffer(payload[_packed_bytes(elements, 1) :], dtype="<f4")
        return torch.from_numpy(values).reshape(shape)
    bits = entry["bits"]
    if encoding in _CODE_ENCODINGS:
        zero_point = float(entry["zero_point"])
        scale_bytes = 4 * entry["channels"]
        scale = torch.from_numpy(np.frombuffer(payload[len(payload) - scale_bytes :], dtype="<f4").astype(np.float32))
        payload = payload[: len(payload) - scale_bytes]
    else:  # version 1: signed LSQ codes stored + 2^(b-1), scale = the state dict's step
        zero_point = float(2 ** (bits - 1))
        scale = decoded[entry["step"]].clamp_min(LSQ_MIN_STEP)  # the floor LSQ's forward applies
    unsigned = _unpack_entry_codes(path, entry, payload, elements, int(zero_point) if zero_point.is_integer() else 0)
    codes = torch.from_numpy(unsigned.astype(np.int64)).reshape(shape)
    # Decoded as (code - zero_point) * scale by the caller: the product the fake quantizer
    # computes, so re-quantizing the decoded weight gives the same codes.
    return WeightCodes(codes=codes, zero_point=zero_point, scale=scale, bits=bits)


def _unpack_entry_codes(path: Path, entry: dict[str, Any], payload: bytes, elements: int, fill: int) -> np.ndarray:
    """The unsigned codes of a dense or sparse code entry (sparse: absent codes are ``fill``)."""
    bits = entry["bits"]
    if entry["encoding"] in ("codes", "lsq_codes"):
        return unpack_codes(payload, bits, elements)
    nonzero = entry["nonzero"]
    flags = _bitmap(path, entry["name"], payload[: _packed_bytes(elements, 1)], elements, nonzero)
    unsigned = np.full(elements, fill, dtype=np.uint8)
    unsigned[flags] = unpack_codes(payload[_packed_bytes(elements, 1) :], bits, nonzero)
    return unsigned


def _decode_all(path: Path, entries: list[dict[str, Any]], data: memoryview) -> tuple[dict[str, torch.Tensor], dict[str, WeightCodes]]:
    """The state dict, and the weight codes of the coded tensors (by state-dict key)."""
    decoded: dict[str, torch.Tensor] = {}
    codes: dict[str, WeightCodes] = {}
    # Steps first: version-1 code tensors refer to them.
    for entry in sorted(entries, key=lambda e: e["encoding"] in _LEGACY_CODE_ENCODINGS):
        value = _decode(path, entry, data, decoded)
        if isinstance(value, WeightCodes):
            codes[entry["name"]] = value
            value = value.values()
        decoded[entry["name"]] = value
    return {entry["name"]: decoded[entry["name"]] for entry in entries}, codes


def read_packed(path: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Validate and decode a ``.qmdd`` file: ``(config, state_dict, header)``.

    Quantized weights come back as ``(code - zero_point) * scale`` floats. The header is
    checked in full, entries against the model its config builds, before the data section
    is even read.
    """
    config, state, header, _ = _read_packed(path)
    return config, state, header


def _read_packed(path: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor], dict[str, Any], dict[str, WeightCodes]]:
    path = Path(path)
    if not path.is_file():
        raise PackedFormatError(f"{path} does not exist")
    with open(path, "rb") as handle:
        version, header_raw = _read_header_bytes(path, handle)
        header = _parse_header(path, header_raw)
        available = os.fstat(handle.fileno()).st_size - PREFIX_BYTES - len(header_raw)
        data_bytes = _check_data_size(path, header, available)
        config = _header_config(path, header)
        entries = _check_entries(path, header.get("tensors"), data_bytes, _architecture(path, config, version))
        data = handle.read(data_bytes)
    if len(data) != data_bytes:  # the file shrank while it was read
        raise _fail(path, f"truncated: the header announces {data_bytes} data bytes, the file holds {len(data)}")
    if zlib.crc32(data) != header.get("data_crc32"):
        raise _fail(path, "data checksum mismatch: the file is corrupt")
    state, codes = _decode_all(path, entries, memoryview(data))
    return config, state, header, codes


def _header_threshold(path: Path, header: dict[str, Any]) -> float:
    value = header.get("threshold", DEFAULT_THRESHOLD)  # files written before it existed: 0.5
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise _fail(path, f"header threshold must be a probability in [0, 1], got {value!r}")
    return float(value)


def load_packed(path: str | Path) -> LoadedDetector:
    """Rebuild the detector stored in a ``.qmdd`` file, in eval mode, with its config and
    decision threshold."""
    from torch.nn.utils import prune

    path = Path(path)
    config, state, header, codes = _read_packed(path)
    config = resolve_model_defaults(config)
    threshold = _header_threshold(path, header)
    model = build_detector(config, pretrained=False)
    # Pruned layers (torch.nn.utils.prune) store weight_orig + weight_mask: re-attach the masks.
    for key, mask in state.items():
        if key.endswith(".weight_mask") and key[: -len("weight_mask")] + "weight_orig" in state:
            module_name = key[: -len(".weight_mask")]
            try:
                prune.custom_from_mask(model.get_submodule(module_name), "weight", mask)
            except (AttributeError, RuntimeError) as error:
                raise _fail(path, f"mask {key!r} does not fit the architecture: {error}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise _fail(path, f"tensors do not match the {config.model.arch} architecture: {error}") from None
    _adopt_codes(model, codes)
    model.eval()
    return LoadedDetector(model, config, threshold)


def _adopt_codes(model: nn.Module, codes: dict[str, WeightCodes]) -> None:
    """Hand each coded weight's codes to its quantizer (``Quantizer.adopt_codes``): a family
    whose scale is a statistic of the float weight (N2UQ) cannot recompute it from the
    decoded values."""
    layers = dict(quantized_layers(model))
    for key, weight_codes in codes.items():
        name = key.rpartition(".")[0]
        layer = layers.get(name)
        if layer is not None:
            layer.weight_quantizer.adopt_codes(weight_codes)

