"""ONNX export of the int8 model: a QDQ graph that ONNX Runtime runs on integer kernels.

The int8 model of :func:`qmdd.deploy.to_int8` (low-bit codes as int8 weights, the
quantizers' grids as activation scales) is written in the operator set's QDQ form
(ONNX, "Quantization in ONNX Runtime", QDQ format): every quantized tensor is a
``QuantizeLinear -> DequantizeLinear`` pair around the float operator that consumes it,
and every low-bit weight is an int8 initializer behind a per-channel ``DequantizeLinear``.
ONNX Runtime's graph optimizer fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into
an integer convolution (``QLinearConv``; :func:`_quantize_before_relu` rewrites the
ReLUs that would keep a conv in float); the input filter and the full-precision first
conv and classifier stay float operators, as in the int8 model. Non-uniform input grids
(:class:`~qmdd.deploy.LevelInput`) become one comparison and one ``Where`` per
threshold.

Weights are stored as INT8 by default: the integer type of ``DequantizeLinear`` that ONNX
Runtime's CPU provider fuses into integer convolutions. ``weights="int4"`` stores the 2-
and 3-bit codes as INT4 (opset 21), half the bytes, which ONNX Runtime runs by
dequantizing them to float convolutions (slower; measured in docs/deployment.md). The file
carries the run config and the decision threshold as metadata (``qmdd.config``,
``qmdd.threshold``), so one file is a whole detector.

``activations="float"`` writes the other form: the fake-quant model itself in float
operators (the input quantizers as a comparison and a ``Where`` per threshold selecting
their exact levels, LSQ's as ``Round``), only the low-bit weights integer (int8 codes
behind a per-channel ``DequantizeLinear``, which ONNX Runtime folds into float weights
when it opens the file).
Its outputs are the fake-quant model's up to float rounding, for every family, at the
speed of a float model: the form for SLR, whose log-spaced levels the integer graph can
only approximate (docs/deployment.md).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

import qmdd
from qmdd.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from qmdd.deploy._int8 import _ENGINE, _quantized_engine, lowbit_float_model, to_int8
from qmdd.detector import LoadedDetector, resolve_model_defaults, validate_config
from qmdd.metrics import DEFAULT_THRESHOLD
from qmdd.utils import atomic_write

__all__ = ["ONNX_OPSET", "ONNX_INT4_OPSET", "WEIGHT_TYPES", "ACTIVATION_TYPES", "OnnxFormatError", "OnnxModel", "OnnxStats", "export_onnx", "load_onnx"]

#: The operator set written: 13 is the first with per-channel ``DequantizeLinear`` (axis);
#: 21 the first with INT4 tensors (``weights="int4"``).
ONNX_OPSET = 13
ONNX_INT4_OPSET = 21
#: Weight types of :func:`export_onnx`.
WEIGHT_TYPES = ("int8", "int4")
#: Activation types of :func:`export_onnx`: the int8 QDQ graph, or float activations.
ACTIVATION_TYPES = ("int8", "float")
_FORMAT_KEY = "qmdd.format"
_FORMAT_VALUE = "qmdd-onnx-detector"
_CONFIG_KEY = "qmdd.config"
_THRESHOLD_KEY = "qmdd.threshold"
_ACTIVATIONS_KEY = "qmdd.activations"
#: ONNX Runtime's session option that turns its QDQ fusions off, so that constant folding
#: turns a float-activation file's weight ``DequantizeLinear`` nodes into float weights
#: once, at load (left in, they run at every call and keep the convs off ONNX Runtime's
#: prepacked float kernels: 15 % slower on the default detector, measured).
_FOLD_QDQ_OPTION = "session.disable_quant_qdq"
_VERSION_KEY = "qmdd.version"
#: Largest ONNX file the reader opens: protobuf's own limit is 2 GiB; a registered backbone's
#: int8 file is about 32 MB (ResNet-50 with CQB).
_MAX_FILE_BYTES = 2**30
_INPUT, _OUTPUT = "image", "logit"
_INSTALL_HINT = "ONNX support needs the onnx extra: pip install 'qmdd[onnx]'"


class OnnxFormatError(ValueError):
    """An ONNX file that qmdd cannot read or run (corrupt, truncated, not a qmdd detector)."""


@dataclass(frozen=True)
class OnnxStats:
    """What an ONNX export wrote: its size, the operators by type, and the opset."""

    path: Path
    file_bytes: int
    opset: int
    operators: dict[str, int]


def _onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxFormatError(_INSTALL_HINT) from None
    return onnx


def _quantized_batch_norm(g, x, weight, bias, mean, var, eps, scale, zero_point):
    """ONNX form of ``quantized::batch_norm2d`` (a BatchNorm after a full-precision conv,
    e.g. a CQB block's downsample), which the exporter lacks: dequantize, the float
    ``BatchNormalization``, quantize at the op's output qparams."""
    from torch.onnx import symbolic_helper

    x, _, _, _ = symbolic_helper.dequantize_helper(g, x)
    out = g.op("BatchNormalization", x, weight, bias, mean, var, epsilon_f=symbolic_helper._maybe_get_const(eps, "f"))
    return symbolic_helper.quantize_helper(g, out, scale, zero_point)


def _unflatten(g, x, dim, sizes):
    """``aten::unflatten`` (CQB's channel mean in ResNet bottlenecks) as a ``Reshape`` whose
    target shape is built from the input's own shape, so the input rank need not be known
    (after a dequantize the exporter has lost it)."""
    from torch.onnx import symbolic_helper

    axis = symbolic_helper._get_const(dim, "i", "dim")
    shape = g.op("Shape", x)
    head = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([axis])))
    tail = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([axis + 1])), g.op("Constant", value_t=torch.tensor([2**62])))
    middle = g.op("Constant", value_t=torch.tensor(symbolic_helper._get_const(sizes, "is", "sizes"), dtype=torch.int64))
    return g.op("Reshape", x, g.op("Concat", head, middle, tail, axis_i=0))


#: Largest |int8 weight| after :func:`_refine_weight_scales`: with uint8 inputs up to 255,
#: a pair of products stays within int16 (2 * 255 * 64 < 32767), where x86 u8s8 kernels
#: that add products pairwise (AVX2 ``vpmaddubsw``) would otherwise saturate.
_MAX_REFINED_WEIGHT = 64


def _refine_weight_scales(int8_model: nn.Module, limit: int = _MAX_REFINED_WEIGHT) -> int:
    """Multiply the int8 weights of each quantized conv by the largest integer m that keeps
    them within ±``limit``, and divide their scales by m: the same weights, but ONNX's integer
    conv stores its bias as int32 in units of input scale x weight scale, and at 2 or 3
    bits those units are coarse (a 2-bit input step times a 2-bit weight step): rounding
    the BatchNorm-folded bias to them moved 4 % of a trained W2A2 detector's conv outputs
    to the neighbouring code. m (16-32 for 2- and 3-bit codes) makes the units m times
    finer (INT4 weights allow only ±7, so less). Returns how many convs were refined."""
    from torch.ao.nn import quantized as nnq

    refined = 0
    for module in int8_model.modules():
        if not isinstance(module, nnq.Conv2d):
            continue
        weight = module.weight()
        if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
            continue
        codes = weight.int_repr().to(torch.int32)
        multiple = limit // max(1, int(codes.abs().max()))
        if multiple <= 1:
            continue
        scales = weight.q_per_channel_scales().to(torch.float64) / multiple
        finer = torch._make_per_channel_quantized_tensor((codes * multiple).to(torch.int8), scales, weight.q_per_channel_zero_points(), weight.q_per_channel_axis())
        module.set_weight_bias(finer, module.bias())
        refined += 1
    return refined


def _trace_to_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` (the int8 model's graph, or a float model) through the TorchScript
    exporter, which writes PyTorch's quantized ops (``quantized::conv2d``,
    ``quantized::add_relu``, ...) as QDQ patterns and folds a float model's BatchNorms
    into the convolutions before them."""
    buffer = io.BytesIO()
    torch.onnx.register_custom_op_symbolic("quantized::batch_norm2d", _quantized_batch_norm, ONNX_OPSET)
    torch.onnx.register_custom_op_symbolic("aten::unflatten", _unflatten, ONNX_OPSET)
    with warnings.catch_warnings(), _quantized_engine(_ENGINE), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's and torch.ao's deprecation notes
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[_INPUT],
            output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
        )
    return buffer.getvalue()


def _integer_weights(proto, codes: dict[str, torch.Tensor]) -> int:
    """Store the low-bit weights of a float graph as their int8 codes behind a per-channel
    ``DequantizeLinear`` (axis 0). ``codes``: the codes of each low-bit layer
    (:func:`~qmdd.deploy.lowbit_float_model`), in the model's layer order. The exporter has
    folded BatchNorm into the weights and named them anew, so each conv (or ``Gemm``)
    weight is matched to the next unmatched codes of its shape whose per-channel
    least-squares scale reproduces it within float rounding (the scale times the code is
    the weight to 1e-5 of the channel's largest entry; gamma < 0 flips a channel's codes).
    Returns how many weights it stored; :class:`OnnxFormatError` if a layer's codes match
    no weight."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    pending = [code.numpy().astype(np.float64) for code in codes.values()]
    stored = []
    for node in proto.graph.node:
        transposed = node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if node.op_type not in ("Conv", "Gemm") or transposed or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        rows = weight.reshape(weight.shape[0], -1)
        for index, code in enumerate(pending):
            if code.shape != weight.shape:
                continue
            flat = code.reshape(code.shape[0], -1)
            norm = (flat * flat).sum(axis=1)
            scale = np.where(norm > 0, (rows * flat).sum(axis=1) / np.maximum(norm, 1), 1.0)
            integers = np.where(scale[:, None] < 0, -flat, flat)
            scale = np.abs(scale)
            error = np.abs(integers * scale[:, None] - rows).max(initial=0.0)
            if error > 1e-5 * max(float(np.abs(rows).max(initial=0.0)), 1e-30):
                continue
            name = node.input[1]
            proto.graph.initializer.remove(initializers[name])
            proto.graph.initializer.extend([
                numpy_helper.from_array(integers.reshape(weight.shape).astype(np.int8), f"{name}_codes"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros(weight.shape[0], dtype=np.int8), f"{name}_zero_point"),
            ])
            stored.append((node, helper.make_node("DequantizeLinear", [f"{name}_codes", f"{name}_scale", f"{name}_zero_point"], [name], axis=0)))
            del pending[index]
            break
    if pending:
        raise OnnxFormatError(f"{len(pending)} of {len(codes)} low-bit layers' codes match no weight of the exported graph; cannot store them as integers")
    nodes = list(proto.graph.node)
    for consumer, dequantize in stored:
        nodes.insert(nodes.index(consumer), dequantize)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return len(stored)


def _constant_dtypes(graph) -> dict[str, int]:
    """Element type of every initializer and ``Constant`` output, by name."""
    types = {init.name: init.data_type for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def _drop_redundant_casts(graph) -> int:
    """Remove ``Cast`` nodes that convert a ``QuantizeLinear`` output to the type it already
    has (the exporter writes one after every quantize): they would hide the QDQ pairs
    from ONNX Runtime's fusion. Returns how many were removed."""
    types = _constant_dtypes(graph)
    quantized = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3 and node.input[2] in types:
            quantized[node.output[0]] = types[node.input[2]]
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        target = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and quantized.get(node.input[0]) == target and node.output[0] not in {o.name for o in graph.output}:
            renamed[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(renamed)


def _quantize_before_relu(onnx, graph) -> int:
    """Rewrite ``Conv -> Relu -> QuantizeLinear`` as ``Conv -> QuantizeLinear ->
    DequantizeLinear -> LeakyRelu(0) -> QuantizeLinear``, where the quantize's zero point is
    above 0. Returns how many were rewritten.

    The int8 model writes a conv whose ReLU feeds one LSQ input at zero point 255 - Qp
    (section "Fast CPU inference" of docs/deployment.md): uint8 saturation is the clip at
    Qp, and the ReLU is the code floor at the zero point. ONNX Runtime fuses a ``Relu``
    into an integer convolution only when the zero point makes it redundant (0), so these
    convolutions ran in float (4 of 9 on the default detector). Quantized first, the conv
    fuses into ``QLinearConv`` and the ReLU into ``QLinearLeakyRelu``, which computes
    max(code, zero point): the same codes, since rounding and the floor commute."""
    nodes = list(graph.node)
    producers = {output: node for node in nodes for output in node.output}
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    types = _constant_dtypes(graph)
    tensors = {init.name: init for init in graph.initializer}
    tensors.update({node.output[0]: node.attribute[0].t for node in nodes if node.op_type == "Constant" and node.attribute})

    def positive_uint8_scalar(name: str) -> bool:
        tensor = tensors.get(name)
        if tensor is None or types.get(name) != onnx.TensorProto.UINT8:
            return False
        value = onnx.numpy_helper.to_array(tensor)
        return value.size == 1 and int(value) > 0

    # The Relu nodes to rewrite, by the index of the quantize that reads them: the new
    # nodes go just before it, after the constants of its scale and zero point.
    relus: dict[int, int] = {}
    for index, node in enumerate(nodes):
        source = producers.get(node.input[0]) if node.op_type == "Relu" else None
        after = readers.get(node.output[0], []) if source is not None else []
        if source is None or source.op_type != "Conv" or len(after) != 1:
            continue
        quantize = nodes[after[0]]
        if quantize.op_type == "QuantizeLinear" and len(quantize.input) == 3 and positive_uint8_scalar(quantize.input[2]):
            relus[after[0]] = index
    dropped = set(relus.values())
    rewritten = []
    for index, node in enumerate(nodes):
        if index in dropped:
            continue
        if index in relus:
            relu = nodes[relus[index]]
            scale, zero_point = node.input[1], node.input[2]
            codes, values = f"{relu.output[0]}_codes", f"{relu.output[0]}_values"
            rewritten.append(onnx.helper.make_node("QuantizeLinear", [relu.input[0], scale, zero_point], [codes], name=f"{relu.name}_quantize"))
            rewritten.append(onnx.helper.make_node("DequantizeLinear", [codes, scale, zero_point], [values], name=f"{relu.name}_dequantize"))
            rewritten.append(onnx.helper.make_node("LeakyRelu", [values], list(relu.output), name=relu.name, alpha=0.0))
        rewritten.append(node)
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(relus)


def _int4_weights(onnx, proto):
    """The model at opset 21 with every int8 conv/linear weight whose codes fit in 4 bits
    (2- and 3-bit layers) stored as INT4, two per byte, zero points too. Returns the new
    model and how many weights it converted."""
    import ml_dtypes
    from onnx import numpy_helper, version_converter

    try:
        proto = version_converter.convert_version(proto, ONNX_INT4_OPSET)
    except Exception as error:  # noqa: BLE001 - the converter raises bare RuntimeErrors and others
        raise OnnxFormatError(f"cannot convert the model to opset {ONNX_INT4_OPSET} for INT4 weights: {_first_line(error)}") from None
    # Weights are Constant nodes in the int8 graph and initializers in the float one.
    constants = {node.output[0]: node.attribute[0].t for node in proto.graph.node if node.op_type == "Constant"}
    constants.update((init.name, init) for init in proto.graph.initializer)
    converted = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3:
            continue
        weight, zero = constants.get(node.input[0]), constants.get(node.input[2])
        if weight is None or zero is None:
            continue
        values = numpy_helper.to_array(weight)
        if values.dtype != "int8" or values.ndim < 2 or values.min() < -8 or values.max() > 7:
            continue
        zeros = numpy_helper.to_array(zero)
        # ml_dtypes' int4 (an onnx dependency) makes raw data packed two per byte; the
        # tensors keep their names (an initializer is found by it).
        weight.CopyFrom(numpy_helper.from_array(values.astype(ml_dtypes.int4), weight.name))
        zero.CopyFrom(numpy_helper.from_array(zeros.astype(ml_dtypes.int4), zero.name))
        converted += 1
    return proto, converted


def export_onnx(
    path: str | Path,
    model: nn.Module,
    config: RunConfig,
    calibration_batches: Iterable[torch.Tensor],
    threshold: float = DEFAULT_THRESHOLD,
    weights: str = "int8",
    activations: str = "int8",
) -> OnnxStats:
    """Write a calibrated fake-quant ``model`` as a QDQ ONNX detector, atomically.

    ``calibration_batches`` set the 8-bit ranges of the int8 model (as for
    :func:`qmdd.deploy.to_int8`); the first batch is the traced example, whose height and
    width the file then expects (the batch size is free). ``weights``: ``int8`` (opset 13;
    ONNX Runtime fuses them into integer convolutions) or ``int4`` (opset 21, half the
    weight bytes; ONNX Runtime dequantizes them to float convolutions, so it is slower).
    ``activations``: ``int8`` (the int8 model's QDQ graph) or ``float`` (the fake-quant
    model in float operators with integer weights, module docstring; it needs no
    calibration, but the first batch still fixes the traced input size).
    The written model is checked with ``onnx.checker`` and must load in ONNX Runtime
    before the file is replaced.
    """
    onnx = _onnx()
    if not 0.0 <= threshold <= 1.0:
        raise OnnxFormatError(f"threshold {threshold} is not a probability in [0, 1]")
    if weights not in WEIGHT_TYPES:
        raise OnnxFormatError(f"unknown ONNX weight type {weights!r}; known: {', '.join(WEIGHT_TYPES)}")
    if activations not in ACTIVATION_TYPES:
        raise OnnxFormatError(f"unknown ONNX activation type {activations!r}; known: {', '.join(ACTIVATION_TYPES)}")
    batches = list(calibration_batches)
    if activations == "float":
        float_model, codes, _ = lowbit_float_model(model, exact_levels=True)
        proto = onnx.load_from_string(_trace_to_onnx(float_model, batches[0][:1]))
        _integer_weights(proto, codes)
    else:
        int8_model = to_int8(model, batches, level_lookup=False)
        with _quantized_engine(_ENGINE):
            _refine_weight_scales(int8_model, 7 if weights == "int4" else _MAX_REFINED_WEIGHT)
        proto = onnx.load_from_string(_trace_to_onnx(int8_model.graph, batches[0][:1]))
        _drop_redundant_casts(proto.graph)
        _quantize_before_relu(onnx, proto.graph)
    if weights == "int4":
        proto, _ = _int4_weights(onnx, proto)
    metadata = {
        _FORMAT_KEY: _FORMAT_VALUE,
        _VERSION_KEY: qmdd.__version__,
        _CONFIG_KEY: json.dumps(config_to_dict(config)),
        _THRESHOLD_KEY: repr(float(threshold)),
        _ACTIVATIONS_KEY: activations,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "qmdd"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    _session(data, Path(path), fold_weights=activations == "float")  # ONNX Runtime must accept it before the file is replaced

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)
    operators: dict[str, int] = {}
    for node in proto.graph.node:
        operators[node.op_type] = operators.get(node.op_type, 0) + 1
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    return OnnxStats(Path(path), len(data), opset, operators)


def _session(data: bytes, path: Path, threads: int | None = None, fold_weights: bool = False):
    """An ONNX Runtime CPU session for the serialized model ``data``; ``fold_weights``
    (float-activation files) folds the weights' ``DequantizeLinear`` into float weights."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxFormatError(_INSTALL_HINT) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; a failure is reported below in one sentence
    if fold_weights:
        options.add_session_config_entry(_FOLD_QDQ_OPTION, "1")
    try:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own pybind11 types
        raise OnnxFormatError(f"{path}: ONNX Runtime cannot run it: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class OnnxModel(nn.Module):
    """An ONNX Runtime session as a module: images (N, 3, H, W) in, logits (N, 1) out."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        shape = session.get_inputs()[0].shape
        self.input_size = tuple(shape[2:]) if len(shape) == 4 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([_OUTPUT], {_INPUT: x.detach().to(torch.float32).contiguous().cpu().numpy()})
        return torch.from_numpy(logits)


def _read_model(path: Path):
    """The parsed and checked ONNX model, or :class:`OnnxFormatError` naming the file."""
    onnx = _onnx()
    if not path.is_file():
        raise OnnxFormatError(f"{path} does not exist")
    size = path.stat().st_size
    if size > _MAX_FILE_BYTES:
        raise OnnxFormatError(f"{path}: {size} bytes is more than the {_MAX_FILE_BYTES}-byte limit for an ONNX detector")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and its relatives
        raise OnnxFormatError(f"{path}: not a readable ONNX model (corrupt or truncated): {_first_line(error)}") from None
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise OnnxFormatError(f"{path}: not a valid ONNX model: {_first_line(error)}") from None
    return proto, data


def _metadata(path: Path, proto) -> tuple[RunConfig, float, str]:
    """The file's run config, decision threshold and activation type (``int8`` for files
    written before there was a choice)."""
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    if meta.get(_FORMAT_KEY) != _FORMAT_VALUE or _CONFIG_KEY not in meta:
        raise OnnxFormatError(f"{path}: an ONNX model, but not a qmdd detector (no {_CONFIG_KEY!r} metadata; export it with python -m qmdd.export --format onnx)")
    try:
        config = validate_config(config_from_dict(json.loads(meta[_CONFIG_KEY])))
    except (ValueError, ConfigError) as error:
        raise OnnxFormatError(f"{path}: invalid {_CONFIG_KEY!r} metadata: {error}") from None
    try:
        threshold = float(meta.get(_THRESHOLD_KEY, DEFAULT_THRESHOLD))
    except ValueError:
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise OnnxFormatError(f"{path}: {_THRESHOLD_KEY!r} metadata must be a probability in [0, 1], got {meta.get(_THRESHOLD_KEY)!r}")
    activations = meta.get(_ACTIVATIONS_KEY, "int8")
    if activations not in ACTIVATION_TYPES:
        raise OnnxFormatError(f"{path}: {_ACTIVATIONS_KEY!r} metadata must be one of {', '.join(ACTIVATION_TYPES)}, got {activations!r}")
    return resolve_model_defaults(config), threshold, activations


def _check_signature(path: Path, session, config: RunConfig) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = ([i.name for i in inputs], [o.name for o in outputs])
    if names != ([_INPUT], [_OUTPUT]):
        raise OnnxFormatError(f"{path}: expected one input {_INPUT!r} and one output {_OUTPUT!r}, got {names[0]} and {names[1]}")
    shape = inputs[0].shape
    crop = config.data.crop_size
    if len(shape) != 4 or list(shape[1:]) != [3, crop, crop]:
        raise OnnxFormatError(f"{path}: input shape {shape} does not match the config's 3 x {crop} x {crop} images")


def load_onnx(path: str | Path, threads: int | None = None) -> LoadedDetector:
    """Open a qmdd ONNX detector in ONNX Runtime (CPU): ``(model, config, threshold)``,
    ``model`` an :class:`OnnxModel` mapping images to logits like the exported detector.

    Every failure (missing, corrupt or truncated file, a model the checker or ONNX Runtime
    rejects, missing or invalid qmdd metadata, an input that does not match the config)
    is an :class:`OnnxFormatError` naming the file.
    """
    path = Path(path)
    proto, data = _read_model(path)
    config, threshold, activations = _metadata(path, proto)
    session = _session(data, path, threads, fold_weights=activations == "float")
    _check_signature(path, session, config)
    return LoadedDetector(OnnxModel(session).eval(), config, threshold)
