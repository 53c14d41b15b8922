"""The QMDD packed model file: exact round trips, real size savings, and hostile input."""

from __future__ import annotations

import copy
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from qmdd.config import load_config
from qmdd.cost import cost_summary
from qmdd.deploy import FORMAT_VERSION, MAGIC, PackedFormatError, load_packed, pack_codes, read_packed, save_packed, unpack_codes
from qmdd.export import main as export_main
from qmdd.quant import calibrate
from qmdd.checkpoint import save_checkpoint
from qmdd.detector import build_detector, resolve_model_defaults

SIZE = 32


def _calibrated_detector(arch: str = "resnet18", *overrides: str):
    config = load_config(None, [f"model.arch={arch}", "quant.bits=2", f"data.crop_size={SIZE}", *overrides])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(4, 3, SIZE, SIZE)])
    return model.eval(), config


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, object, Path]:
    """A calibrated W2A2 ResNet-18, checkpointed and exported by ``python -m qmdd.export``."""
    model, config = _calibrated_detector()
    folder = tmp_path_factory.mktemp("packed")
    save_checkpoint(folder / "best.pt", config=config, model=model)
    path = folder / "model.qmdd"
    assert export_main(["--checkpoint", str(folder / "best.pt"), "--out", str(path)]) == 0
    return model, config, path


def _outputs(model, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(3, 3, SIZE, SIZE))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_codes_round_trips_at_exactly_b_bits(bits: int):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = pack_codes(values, bits)
    assert len(packed) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack_codes(packed, bits, 1001), values)


def test_three_bit_codes_use_three_bytes_per_eight_weights():
    assert len(pack_codes(np.arange(8, dtype=np.uint8), 3)) == 3
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        pack_codes(np.array([4], dtype=np.uint8), 2)


def test_round_trip_gives_the_same_outputs(exported):
    model, config, path = exported
    detector = load_packed(path)
    loaded, loaded_config = detector.model, detector.config
    assert loaded_config == resolve_model_defaults(config)  # the backbone's choices made explicit
    assert detector.threshold == 0.5  # what save_packed stores by default
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert not loaded.training


def test_file_is_as_small_as_counted_and_far_below_fp32(exported):
    model, _, path = exported
    config, state, header = read_packed(path)
    counted_bytes = cost_summary(model, SIZE)["storage_bytes"]
    header_bytes = len(json.dumps(header, separators=(",", ":")))
    # Per tensor at most one byte of padding plus 4 bytes for int64 counters stored wide.
    slack = 8 * len(state)
    assert path.stat().st_size <= counted_bytes + header_bytes + len(MAGIC) + 10 + slack
    fp32_bytes = 4 * sum(t.numel() for k, t in state.items() if "quantizer" not in k)
    assert fp32_bytes / path.stat().st_size > 13
    encodings = {entry["encoding"] for entry in header["tensors"]}
    assert encodings & {"codes", "codes_sparse"}


def test_pruned_weights_use_the_sparse_encoding_and_round_trip(exported, tmp_path):
    model, config, _ = exported
    model = copy.deepcopy(model)
    prune.l1_unstructured(model.layer1[0].conv1, "weight", amount=0.8)
    prune.l1_unstructured(model.fc, "weight", amount=0.9)
    path = tmp_path / "pruned.qmdd"
    save_packed(path, model, config)
    _, state, header = read_packed(path)
    by_name = {entry["name"]: entry for entry in header["tensors"]}
    assert by_name["layer1.0.conv1.weight_orig"]["encoding"] == "codes_sparse"
    assert by_name["layer1.0.conv1.weight_mask"]["encoding"] == "bitmask"
    assert by_name["fc.weight_orig"]["encoding"] == "float32_sparse"
    loaded = load_packed(path).model
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_export_cli_reports_size_and_errors(exported, tmp_path, capsys):
    assert exported[2].stat().st_size > 0
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.qmdd")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_uncalibrated_models_are_not_exported(tmp_path):
    config = load_config(None, ["quant.bits=2"])
    with pytest.raises(PackedFormatError, match="uncalibrated"):
        save_packed(tmp_path / "x.qmdd", build_detector(config), config)
    assert not (tmp_path / "x.qmdd").exists()


# ----------------------------------------------------------------------- hostile input


def _split(blob: bytes) -> tuple[dict, bytes]:
    header_length = struct.unpack_from("<I", blob, len(MAGIC) + 2)[0]
    start = len(MAGIC) + 10
    return json.loads(blob[start : start + header_length]), blob[start + header_length :]


def _forge_raw(path: Path, raw: bytes, data: bytes = b"", version: int = FORMAT_VERSION) -> Path:
    """A prefix with a valid header checksum around any header bytes, even ones json.dumps cannot write."""
    path.write_bytes(MAGIC + struct.pack("<HII", version, len(raw), zlib.crc32(raw)) + raw + data)
    return path


def _forge(path: Path, header: dict, data: bytes, *, fix_data_crc: bool = True, version: int = FORMAT_VERSION) -> Path:
    """What an attacker can write: any header, with checksums that match."""
    if fix_data_crc:
        header = {**header, "data_crc32": zlib.crc32(data)}
    return _forge_raw(path, json.dumps(header).encode(), data, version)


@pytest.mark.parametrize("keep", [0, 5, len(MAGIC) + 3, 200, -1])
def test_truncated_files_are_rejected(exported, tmp_path, keep):
    blob = exported[2].read_bytes()
    cut = tmp_path / "cut.qmdd"
    cut.write_bytes(blob[:keep] if keep >= 0 else blob[:-1])
    with pytest.raises(PackedFormatError, match="truncated|wrong magic"):
        read_packed(cut)


def test_wrong_magic_and_newer_version_are_rejected(exported, tmp_path):
    blob = exported[2].read_bytes()
    (tmp_path / "a").write_bytes(b"PK\x03\x04" + blob[4:])
    with pytest.raises(PackedFormatError, match="wrong magic"):
        read_packed(tmp_path / "a")
    (tmp_path / "b").write_bytes(MAGIC + struct.pack("<H", 99) + blob[len(MAGIC) + 2 :])
    with pytest.raises(PackedFormatError, match="version 99 .*newer"):
        read_packed(tmp_path / "b")


@pytest.mark.parametrize("position", [len(MAGIC) + 12, len(MAGIC) + 200, -100])
def test_flipped_bytes_are_detected(exported, tmp_path, position):
    blob = bytearray(exported[2].read_bytes())
    blob[position] ^= 0x5A
    (tmp_path / "flip").write_bytes(bytes(blob))
    with pytest.raises(PackedFormatError, match="checksum|JSON"):
        read_packed(tmp_path / "flip")


def test_oversized_header_length_is_rejected(exported, tmp_path):
    blob = bytearray(exported[2].read_bytes())
    struct.pack_into("<I", blob, len(MAGIC) + 2, 2**32 - 1)
    (tmp_path / "big").write_bytes(bytes(blob))
    with pytest.raises(PackedFormatError, match="header length .* exceeds"):
        read_packed(tmp_path / "big")
    # Within the header limit (1 MiB) but past the end of the file.
    struct.pack_into("<I", blob, len(MAGIC) + 2, 2**20)
    (tmp_path / "big").write_bytes(bytes(blob[: 2**19]))
    with pytest.raises(PackedFormatError, match="truncated"):
        read_packed(tmp_path / "big")


def _first(header: dict, encoding: str) -> dict:
    return next(e for e in header["tensors"] if e["encoding"].startswith(encoding))


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda h: h.update(data_bytes=h["data_bytes"] + 10), "truncated"),
        (lambda h: _first(h, "float32").update(length=_first(h, "float32")["length"] + 4), "needs .* bytes"),
        (lambda h: _first(h, "float32").update(shape=[10**12]), "shape\\[0\\]"),
        (lambda h: _first(h, "codes").update(shape=[1, 1, 1, 1]), "needs .* bytes|channels|nonzero"),
        (lambda h: _first(h, "codes").update(zero_point=99), "zero_point"),
        (lambda h: _first(h, "codes").update(channels=3), "channels"),
        (lambda h: _first(h, "float32").update(encoding="pickle"), "unknown encoding"),
        (lambda h: _first(h, "float32").update(offset=-1), "offset"),
        (lambda h: _first(h, "codes").update(bits=40), "bits"),
        (lambda h: h["tensors"].append(dict(h["tensors"][0])), "appears twice"),
        (lambda h: h["tensors"][1].update(offset=h["tensors"][0]["offset"], length=h["tensors"][0]["length"], shape=h["tensors"][0]["shape"], encoding=h["tensors"][0]["encoding"]), "overlaps|needs"),
        (lambda h: h["config"]["quant"].update(bits=5), "invalid config"),
        (lambda h: h.update(tensors="all"), "must be a list"),
    ],
)
def test_forged_headers_are_rejected(exported, tmp_path, tamper, message):
    header, data = _split(exported[2].read_bytes())
    tamper(header)
    with pytest.raises(PackedFormatError, match=message):
        read_packed(_forge(tmp_path / "forged.qmdd", header, data))


def test_data_checksum_and_architecture_mismatch(exported, tmp_path):
    header, data = _split(exported[2].read_bytes())
    with pytest.raises(PackedFormatError, match="data checksum"):
        read_packed(_forge(tmp_path / "crc.qmdd", {**header, "data_crc32": 0}, data, fix_data_crc=False))
    header["config"]["model"]["arch"] = "resnet34"
    with pytest.raises(PackedFormatError, match="do not match the resnet34"):
        load_packed(_forge(tmp_path / "arch.qmdd", header, data))


# ------------------------------------------------------------------ other versions, families

DATA = Path(__file__).parent / "data"


def test_version_1_files_still_load_exactly():
    """A file written by qmdd's format version 1 (LSQ codes referring to the step tensor),
    kept in tests/deploy/data with the outputs its model gave when it was written."""
    detector = load_packed(DATA / "mesonet_w2_format_v1.qmdd")
    _, _, header = read_packed(DATA / "mesonet_w2_format_v1.qmdd")
    assert {e["encoding"] for e in header["tensors"]} >= {"lsq_codes", "lsq_codes_sparse"}
    expected = torch.load(DATA / "mesonet_w2_format_v1_io.pt", weights_only=True)
    with torch.no_grad():
        # Same weights, so the same outputs up to the last bits, where conv kernels differ
        # between CPUs (AVX2 here, AVX-512 there); a wrong code would move them far more.
        assert torch.allclose(detector.model(expected["input"]), expected["output"], rtol=1e-5, atol=0)
    assert detector.threshold == pytest.approx(0.3)


def test_a_registered_toy_family_exports_its_own_codes(tmp_path):
    """Export asks the quantizer, not a family name: a family whose weights sit on the
    half-integer grid (k + 1/2) * s, with no zero level, round-trips through the file."""
    import dataclasses

    from qmdd.quant import Quantizer, QuantizerFamily, WeightCodes, quantize, register_quantizer
    from qmdd.quant import _registry

    class HalfGridWeights(Quantizer):
        def __init__(self, bits, weight):
            super().__init__(bits)
            self.scale = torch.nn.Parameter(weight.detach().abs().reshape(weight.shape[0], -1).mean(1) + 1e-3)
            self.calibrated = True

        def observe(self, x):
            pass

        def finish_calibration(self):
            self._end_observing()

        def _codes(self, weight):
            levels = 2**self.bits
            scale = self.scale.view(-1, *([1] * (weight.dim() - 1)))
            return (weight / scale - 0.5).round().clamp(-(levels // 2), levels // 2 - 1) + levels // 2, scale

        def quantize(self, weight):
            codes, scale = self._codes(weight)
            return weight + ((codes - 2 ** (self.bits - 1) + 0.5) * scale - weight).detach()

        def weight_codes(self, weight):
            codes, _ = self._codes(weight.detach())
            return WeightCodes(codes=codes.to(torch.int64), zero_point=2 ** (self.bits - 1) - 0.5, scale=self.scale.detach().clone(), bits=self.bits)

    family = QuantizerFamily(
        name="toyhalf",
        weight_factory=lambda bits, weight, options: HalfGridWeights(bits, weight),
        activation_factory=lambda bits, options: _registry.get_quantizer("lsq").activation(bits),
        source="a test",
    )
    register_quantizer(family)
    try:
        config = load_config(None, ["model.arch=mesonet", "quant.bits=2", "quant.quantizer=toyhalf", f"data.crop_size={SIZE}"])
        torch.manual_seed(0)
        model = build_detector(config)
        calibrate(model, [torch.randn(4, 3, SIZE, SIZE)])
        model.eval()
        save_packed(tmp_path / "toy.qmdd", model, config)
        _, state, header = read_packed(tmp_path / "toy.qmdd")
        coded = [e for e in header["tensors"] if e["encoding"] in ("codes", "codes_sparse")]
        assert coded and all(e["zero_point"] == 1.5 and e["bits"] == 2 for e in coded)
        loaded = load_packed(tmp_path / "toy.qmdd").model
        assert torch.allclose(_outputs(loaded), _outputs(model), atol=1e-5)
    finally:
        _registry._FAMILIES.pop("toyhalf")


# ------------------------------------------- forged files with valid checksums (bounded work)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    """A calibrated W2A2 MesoNet (4 low-bit layers), written by save_packed: a small base to forge from."""
    model, config = _calibrated_detector("mesonet")
    path = tmp_path_factory.mktemp("small") / "mesonet.qmdd"
    save_packed(path, model, config)
    return path


def _forge_with_zeros(path: Path, header: dict, data: bytes, zeros: int, version: int) -> Path:
    """Like _forge, with ``zeros`` zero bytes after ``data``, written in 1 MiB pieces so the
    test itself stays small in memory."""
    chunk = bytes(2**20)
    crc = zlib.crc32(data)
    for start in range(0, zeros, len(chunk)):
        crc = zlib.crc32(chunk[: min(len(chunk), zeros - start)], crc)
    raw = json.dumps({**header, "data_bytes": len(data) + zeros, "data_crc32": crc}).encode()
    with open(path, "wb") as handle:
        handle.write(MAGIC + struct.pack("<HII", version, len(raw), zlib.crc32(raw)) + raw + data)
        for start in range(0, zeros, len(chunk)):
            handle.write(chunk[: min(len(chunk), zeros - start)])
    return path


def _drop_tensor(header: dict, data: bytes, name: str) -> bytes:
    """Remove tensor ``name``'s entry and payload from a parsed file (later offsets shift down),
    so a forged replacement can go at the end without leaving unaccounted bytes."""
    entry = next(e for e in header["tensors"] if e["name"] == name)
    header["tensors"].remove(entry)
    for other in header["tensors"]:
        if other["offset"] > entry["offset"]:
            other["offset"] -= entry["length"]
    return data[: entry["offset"]] + data[entry["offset"] + entry["length"] :]


def _zero_size_code_entry(index: int, version: int) -> dict:
    if version == 1:
        return {"name": f"w{index}", "encoding": "lsq_codes", "bits": 2, "step": "features.1.0.weight_quantizer.step", "shape": [0], "offset": 0, "length": 0}
    return {"name": f"w{index}", "encoding": "codes", "bits": 2, "zero_point": 2, "channels": 0, "shape": [0], "offset": 0, "length": 0}


@pytest.mark.parametrize("version", [1, 2])
def test_many_zero_size_code_entries_are_rejected_quickly(small_file, tmp_path, version):
    """99,900 zero-size code entries once took over 100 s (a linear step search per entry)."""
    base = DATA / "mesonet_w2_format_v1.qmdd" if version == 1 else small_file
    header, data = _split(base.read_bytes())
    # 99,900 entries: a 10 MB header, over the 1 MiB limit; 5,000: within it, over the entry bound.
    for count, message in [(99_900, "header length .* exceeds"), (5_000, "lists 50\\d\\d tensors, more than the \\d+ a mesonet model")]:
        forged = {**header, "tensors": header["tensors"] + [_zero_size_code_entry(i, version) for i in range(count)]}
        path = _forge(tmp_path / f"many{count}.qmdd", forged, data, version=version)
        assert (path.stat().st_size - len(data) < 2**20) == (count == 5_000)
        started = time.perf_counter()
        with pytest.raises(PackedFormatError, match=message):
            read_packed(path)
        assert time.perf_counter() - started < 5


def test_deeply_nested_header_is_rejected(small_file, tmp_path):
    start = b'{"format": "qmdd-packed-model", "config": '
    for depth in (100_000, 17):
        raw = start + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(PackedFormatError, match=f"nests {depth + 1} levels deep, more than the limit of 16"):
            read_packed(_forge_raw(tmp_path / "deep.qmdd", raw))
    # Brackets and escaped quotes inside strings are not nesting: a real file with them loads.
    header, data = _split(small_file.read_bytes())
    header["qmdd_version"] = '\\"[' * 1_000
    _, state, read_header = read_packed(_forge(tmp_path / "strings.qmdd", header, data))
    assert read_header["qmdd_version"] == header["qmdd_version"] and state


@pytest.mark.parametrize(
    "key, digits, message",
    [
        ("data_bytes", "9" * 5_000, "number with 5000 digits in a row, more than the limit of 24"),
        ("threshold", "-" + "1" * 25, "number with 25 digits in a row"),
        ("data_bytes", "9" * 20, "data_bytes must be an integer in \\[0, 9223372036854775808\\]"),
    ],
)
def test_huge_integers_in_the_header_are_rejected(small_file, tmp_path, key, digits, message):
    header, data = _split(small_file.read_bytes())
    raw = json.dumps({**header, key: "HUGE", "data_crc32": zlib.crc32(data)}).encode().replace(b'"HUGE"', digits.encode())
    with pytest.raises(PackedFormatError, match=message):
        read_packed(_forge_raw(tmp_path / "huge.qmdd", raw, data))


def test_huge_integer_shapes_are_bounded(small_file, tmp_path):
    header, data = _split(small_file.read_bytes())
    _first(header, "codes")["shape"][0] = 10**19
    with pytest.raises(PackedFormatError, match="shape\\[0\\] must be an integer in \\[0, 2147483648\\]"):
        read_packed(_forge(tmp_path / "shape.qmdd", header, data))


@pytest.mark.parametrize(
    "version, name, forged",
    [
        (2, "features.1.0.weight_mask", {"encoding": "bitmask"}),
        (2, "not.in.the.model", {"encoding": "bitmask"}),
        (2, "features.1.0.weight", {"encoding": "codes_sparse", "bits": 2, "zero_point": 2, "channels": 1, "nonzero": 0}),
        (1, "features.1.0.weight", {"encoding": "lsq_codes_sparse", "bits": 2, "nonzero": 0, "step": "features.1.0.weight_quantizer.step"}),
    ],
)
def test_huge_tensors_are_rejected_before_decoding(small_file, tmp_path, version, name, forged):
    """One entry claiming 2^28 elements in a 32 MB file once made the reader allocate 2-3.4 GB."""
    base = DATA / "mesonet_w2_format_v1.qmdd" if version == 1 else small_file
    header, data = _split(base.read_bytes())
    if any(e["name"] == name for e in header["tensors"]):
        data = _drop_tensor(header, data, name)
    shape = [2**28] if forged["encoding"] == "bitmask" else [1, 2**28]
    length = 2**25 + 4 * forged.get("channels", 0)  # a bitmap of 2^28 bits, plus scales
    header["tensors"].append({**forged, "name": name, "shape": shape, "offset": len(data), "length": length})
    path = _forge_with_zeros(tmp_path / "huge.qmdd", header, data, length, version)
    tracemalloc.start()
    try:
        with pytest.raises(PackedFormatError, match="tensors do not match the mesonet architecture"):
            read_packed(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        path.unlink()
    assert peak < 16 * 2**20  # the 32 MB data section is never even read


def test_code_bits_must_match_the_config(small_file, tmp_path):
    # An 8-bit model's codes under a header config that says 2 bits.
    model, config = _calibrated_detector("mesonet", "quant.bits=8")
    save_packed(tmp_path / "w8.qmdd", model, config)
    header, data = _split((tmp_path / "w8.qmdd").read_bytes())
    header["config"]["quant"]["bits"] = 2
    with pytest.raises(PackedFormatError, match="holds 8-bit codes, but the header config quantizes its layer to 2 bits"):
        read_packed(_forge(tmp_path / "w8as2.qmdd", header, data))
    # A 2-bit model with one layer's codes forged as 3-bit values up to 7.
    header, data = _split(small_file.read_bytes())
    data = _drop_tensor(header, data, "classifier.2.weight")
    payload = pack_codes(np.full(16 * 256, 7, dtype=np.uint8), 3) + np.ones(16, dtype="<f4").tobytes()
    entry = {"name": "classifier.2.weight", "encoding": "codes", "bits": 3, "zero_point": 2, "channels": 16, "shape": [16, 256]}
    header["tensors"].append({**entry, "offset": len(data), "length": len(payload)})
    with pytest.raises(PackedFormatError, match="holds 3-bit codes, but the header config quantizes its layer to 2 bits"):
        read_packed(_forge(tmp_path / "w3.qmdd", {**header, "data_bytes": len(data) + len(payload)}, data + payload))
    # A version-1 file whose config claims 3 bits for its 2-bit codes.
    header, data = _split((DATA / "mesonet_w2_format_v1.qmdd").read_bytes())
    header["config"]["quant"]["bits"] = 3
    with pytest.raises(PackedFormatError, match="holds 2-bit codes, but the header config quantizes its layer to 3 bits"):
        read_packed(_forge(tmp_path / "v1as3.qmdd", header, data, version=1))


def test_each_version_has_its_own_code_encodings(small_file, tmp_path):
    header, data = _split((DATA / "mesonet_w2_format_v1.qmdd").read_bytes())
    with pytest.raises(PackedFormatError, match="cannot be stored as lsq_codes"):
        read_packed(_forge(tmp_path / "v1as2.qmdd", header, data, version=2))
    header, data = _split(small_file.read_bytes())
    with pytest.raises(PackedFormatError, match="cannot be stored as codes"):
        read_packed(_forge(tmp_path / "v2as1.qmdd", header, data, version=1))


def test_bytes_outside_every_tensor_are_rejected(small_file, tmp_path):
    header, data = _split(small_file.read_bytes())
    with pytest.raises(PackedFormatError, match="data bytes \\d+ to \\d+ belong to no tensor"):
        read_packed(_forge(tmp_path / "tail.qmdd", {**header, "data_bytes": len(data) + 8}, data + bytes(8)))
    header["tensors"][0]["offset"] += 4
    with pytest.raises(PackedFormatError, match="data bytes 0 to 4 before tensor .* belong to no tensor"):
        read_packed(_forge(tmp_path / "gap.qmdd", {**header, "data_bytes": len(data) + 4}, bytes(4) + data))


def test_missing_and_half_pruned_tensors_are_rejected(small_file, tmp_path):
    header, data = _split(small_file.read_bytes())
    data = _drop_tensor(header, data, "features.1.0.bias")
    with pytest.raises(PackedFormatError, match="mesonet architecture: 'features.1.0.bias' is missing"):
        read_packed(_forge(tmp_path / "missing.qmdd", {**header, "data_bytes": len(data)}, data))
    header, data = _split(small_file.read_bytes())
    mask = np.packbits(np.ones(16 * 256, dtype=bool), bitorder="little").tobytes()
    header["tensors"].append({"name": "classifier.2.weight_mask", "encoding": "bitmask", "shape": [16, 256], "offset": len(data), "length": len(mask)})
    with pytest.raises(PackedFormatError, match="must be stored either as itself or as classifier.2.weight_orig plus"):
        read_packed(_forge(tmp_path / "half.qmdd", {**header, "data_bytes": len(data) + len(mask)}, data + mask))
