"""Fast CPU inference: a fake-quant detector as a real int8 model (PyTorch x86 backend).

Any quantizer family whose weights export as integer codes (``Quantizer.weight_codes``
with an integer or half-integer zero point) converts: LSQ, N2UQ and SLR. Inputs on a
uniform grid (``Quantizer.uniform_grid``, LSQ) take the exact treatment below; other
inputs run their step function (``Quantizer.level_table``) as :class:`LevelInput`, in the
int8 graph a 256-entry table on the int8 codes (:class:`Int8LevelInput`). 2- and 3-bit
values fit int8 exactly, so the conversion chooses the int8 parameters that reproduce the
low-bit grids instead of fitting new ones (the description below says "LSQ" for a
uniform-grid family):

* **weights**: the int8 weight *is* the LSQ code (in [-2^(b-1), 2^(b-1)-1]); its
  per-channel int8 scale is the LSQ step times the folded BatchNorm factor gamma/sigma
  (BatchNorm is folded into the conv by FX, and the scale is read back from the folded
  weight and the known codes, so the int8 weight equals the code exactly);
* **layer inputs**: each low-bit layer's LSQ input quantizer becomes an explicit module
  (:class:`LSQInput`: clip, round to the step) whose int8 output observer is fixed to the
  LSQ step and zero point (0 for unsigned grids, 128 for signed ones), so the conv reads
  exactly the LSQ codes;
* **everything else** (tensors between a layer's output and a residual addition, the
  additions, pooling) is ordinary 8-bit, its ranges calibrated on sample images with
  min/max observers (no clipping of the residual stream); full-precision layers (by
  default the first conv and the classifier) stay in float32.

The one approximation is that 8-bit residual stream, which the fake-quant model keeps in
float: a value within half an 8-bit step of an LSQ rounding boundary may land on the
neighbouring code. Elsewhere the int8 model carries exactly the LSQ codes (see
:class:`Int8LSQInput` for how the producers' scales are chosen).
``benchmarks/cpu_inference.py`` measures the resulting agreement with the fake-quant model.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.backend_config import BackendPatternConfig, DTypeConfig, ObservationType, get_native_backend_config
from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
from torch.ao.quantization.observer import FixedQParamsObserver, MinMaxObserver, ObserverBase
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from qmdd.config import FULL_PRECISION
from qmdd.models import FILTERS, InputFilter
from qmdd.quant import LevelTable, QConv2d, QLinear, Quantizer, UniformGrid, WeightCodes, quantized_layers, unfuse_activation_clamps

__all__ = ["LSQInput", "LevelInput", "Int8LSQInput", "Int8LevelInput", "Int8Model", "Int8ConversionError", "lowbit_float_model", "to_int8", "calibration_images", "int8_weight_codes"]

#: The x86 backend's activation dtype is unsigned 8-bit; signed LSQ grids sit around 128.
_SIGNED_ZERO_POINT = 128


class Int8ConversionError(ValueError):
    """A model cannot be converted to int8 (e.g. an unsupported quantizer family)."""


class LSQInput(nn.Module):
    """An LSQ input quantizer made explicit: ``round(clip(x / step, qmin, qmax)) * step``.

    In float this is exactly the fake quantizer. In the int8 graph its output observer is
    fixed to ``(step, zero_point)``, so the quantize op FX emits after it produces the LSQ
    codes themselves.
    """

    def __init__(self, step: float, qmin: int, qmax: int) -> None:
        super().__init__()
        self.step, self.qmin, self.qmax = step, qmin, qmax
        self.zero_point = _SIGNED_ZERO_POINT if qmin < 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / self.step), self.qmin, self.qmax) * self.step

    def extra_repr(self) -> str:
        return f"step={self.step:.6g}, range=[{self.qmin}, {self.qmax}]"


class LevelInput(nn.Module):
    """An input quantizer whose grid is not uniform, as its :class:`~qmdd.quant.LevelTable`:
    ``levels[#{k : x >= thresholds[k]}]``, with levels on an 8-bit grid ``(step, zero_point)``.

    Where the family's levels lie on a uniform grid (N2UQ: learned thresholds, uniform
    outputs) that grid is used and the module is exactly the fake quantizer (up to float
    rounding of the thresholds). Otherwise (SLR's log-spaced levels) the levels are rounded
    to the 8-bit grid that spans them, ``max|level| / 255`` (unsigned) or ``/ 127``
    (signed): the one approximation of this module, whose size ``max_level_error`` gives.
    (The coarser grid ``max|level| / n`` that rounds the few levels least was tried: +0.3
    and -1.2 points of agreement on two trained detectors, docs/deployment.md.)
    In the int8 graph it runs in float between a dequantize and a quantize whose qparams
    are fixed to that grid, so the next conv reads the level codes. ``exact_levels=True``
    keeps the levels as they are, for a graph that stays in float (the float-activation
    ONNX export), where the module is the fake quantizer up to float rounding.
    """

    def __init__(self, table: LevelTable, exact_levels: bool = False) -> None:
        super().__init__()
        levels = table.levels.to(torch.float64)
        signed = bool(levels[0] < 0)
        self.zero_point = _SIGNED_ZERO_POINT if signed else 0
        self.exact = table.grid is not None or exact_levels
        if table.grid is not None:
            self.step = float(table.grid.step)
        else:  # the 8-bit grid that spans the levels (exact_levels: nominal, nothing reads it)
            self.step = float(levels.abs().max().clamp_min(1e-12)) / (127 if signed else 255)
        on_grid = levels if exact_levels else torch.round(levels / self.step) * self.step
        self.max_level_error = float((on_grid - levels).abs().max())
        self.register_buffer("thresholds", table.thresholds.to(torch.float32))
        self.register_buffer("levels", (levels if self.exact else on_grid).to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # ONNX has no bucketize: from the lowest threshold up, x >= thresholds[k] selects
            # levels[k + 1] (a comparison and a Where per threshold, 3 at 2 bits, 7 at 3
            # bits). Counting the thresholds into an int64 index for a Gather reads and
            # writes 8-byte tensors instead: on the trained SLR W2A2 default detector ONNX
            # Runtime took 117 ms for a batch of 32 that way, 77-81 ms this way.
            out = torch.where(x >= self.thresholds[0], self.levels[1], self.levels[0])
            for k in range(1, self.thresholds.numel()):
                out = torch.where(x >= self.thresholds[k], self.levels[k + 1], out)
            return out
        return self.levels[torch.bucketize(x, self.thresholds, right=True)]

    def extra_repr(self) -> str:
        return f"levels={self.levels.numel()}, step={self.step:.6g}, exact={self.exact}"


def int8_weight_codes(codes: WeightCodes) -> tuple[torch.Tensor, float] | None:
    """Signed integer weights ``m * (codes - zero_point)`` and the factor m (1, or 2 for a
    half-integer zero point such as N2UQ's), so that the weight is ``int * scale / m``;
    None when they do not fit int8."""
    zero_point = float(codes.zero_point)
    multiple = 1 if zero_point.is_integer() else 2 if (2 * zero_point).is_integer() else 0
    if multiple == 0:
        return None
    signed = codes.codes.to(torch.int64) * multiple - int(zero_point * multiple)
    if signed.numel() and (int(signed.min()) < -128 or int(signed.max()) > 127):
        return None
    return signed.to(torch.int8), float(multiple)


class _CodeWeightObserver(ObserverBase):
    """Per-channel int8 weight qparams that map a known integer code tensor exactly.

    FX hands this observer the conv weight after BatchNorm folding, ``codes * s_f`` per
    output channel; the least-squares ratio recovers ``s_f`` to float precision, so the int8
    weight becomes the code (negated where gamma < 0, since scales must be positive).
    """

    def __init__(self, codes: torch.Tensor | None = None, dtype: torch.dtype = torch.qint8, **kwargs) -> None:
        super().__init__(dtype=dtype, **kwargs)
        self.qscheme = torch.per_channel_symmetric
        self.ch_axis = 0
        self.quant_min, self.quant_max = -128, 127
        self.register_buffer("codes", codes if codes is not None else torch.zeros(0))
        self.register_buffer("scales", torch.ones(codes.shape[0] if codes is not None else 0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
        codes = self.codes.reshape(weight.shape[0], -1).to(torch.float64)
        norm = (codes * codes).sum(dim=1)
        scale = ((flat * codes).sum(dim=1) / norm.clamp_min(1)).abs()
        self.scales = torch.where(norm > 0, scale, torch.ones_like(scale)).clamp_min(1e-12).to(torch.float32)
        return weight

    def calculate_qparams(self):  # type: ignore[override]
        return self.scales, torch.zeros_like(self.scales, dtype=torch.int64)


def _backend_config():
    """The native (x86/fbgemm) backend, plus :class:`LSQInput` as an op with its own output
    observer (it runs in float between a dequantize and a quantize at the LSQ step)."""
    config = get_native_backend_config()
    for op in (LSQInput, LevelInput):
        config.set_backend_pattern_config(
            BackendPatternConfig(op)
            .set_observation_type(ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT)
            .add_dtype_config(DTypeConfig(input_dtype=torch.quint8, output_dtype=torch.quint8))
        )
    return config


def _integer_form(layer: QConv2d | QLinear, exact_levels: bool = False) -> tuple[torch.Tensor, nn.Module] | None:
    """The layer's int8 weight codes and its input op (:class:`LSQInput` for a uniform
    grid, :class:`LevelInput` otherwise), or None when the family has no integer form."""
    if layer.weight_bits >= FULL_PRECISION or layer.act_bits >= FULL_PRECISION:
        return None
    with torch.no_grad():
        codes = layer.weight_quantizer.weight_codes(layer.weight.detach())
    signed = int8_weight_codes(codes) if codes is not None else None
    if signed is None:
        return None
    grid = layer.input_quantizer.uniform_grid()
    if grid is not None:
        return signed[0], LSQInput(grid.step, grid.qmin, grid.qmax)
    table = layer.input_quantizer.level_table()
    return (signed[0], LevelInput(table, exact_levels)) if table is not None else None


def _float_layer(layer: QConv2d | QLinear) -> nn.Module:
    float_layer = copy.deepcopy(layer.to_float())
    with torch.no_grad():
        float_layer.weight = nn.Parameter(layer.quantized_weight().detach().clone())
    return float_layer


def lowbit_float_model(model: nn.Module, exact_levels: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
    """A float copy of ``model`` in which every low-bit layer is ``input op -> conv`` with
    weight ``code * step`` (:class:`LSQInput` on a uniform grid, else :class:`LevelInput`,
    whose levels are on an 8-bit grid unless ``exact_levels``): numerically the fake-quant
    model (SLR: up to that grid), but traceable by FX and by the ONNX exporter.

    Returns the copy, the integer codes of each low-bit layer (by the new conv's name) and
    the names of full-precision conv/linear layers (kept in float in the int8 model).
    """
    model = copy.deepcopy(model).eval()
    unfuse_activation_clamps(model)  # the ReLU6 fused into quantizers for training
    codes: dict[str, torch.Tensor] = {}
    float_layers: list[str] = []
    for name, layer in quantized_layers(model):
        integer = _integer_form(layer, exact_levels)
        if integer is not None:
            codes[f"{name}.1"], input_op = integer
            replacement: nn.Module = nn.Sequential(input_op, _float_layer(layer))
        elif layer.act_bits == FULL_PRECISION:
            replacement = _float_layer(layer)  # FP input: the (fake-quantized) weight in float
            float_layers.append(name)
        else:
            raise Int8ConversionError(
                f"layer {name!r} uses {type(layer.input_quantizer).__name__}/{type(layer.weight_quantizer).__name__}: "
                "the int8 path needs integer weight codes of at most 8 bits (Quantizer.weight_codes) "
                "and an input level table (Quantizer.level_table)"
            )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise Int8ConversionError("the model holds quantizers outside conv/linear layers; cannot convert")
    for name, module in model.named_modules():
        # The input filter runs in float in front of the (full-precision) first layer: its
        # residual is not on any low-bit grid, and a filter built from F.conv2d would
        # otherwise look like a conv to quantize.
        if (isinstance(module, (nn.Conv2d, nn.Linear)) and name not in codes) or isinstance(module, InputFilter):
            float_layers.append(name)
    return model, codes, sorted(set(float_layers))


def calibration_images(data_config, count: int = 16, batch_size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic calibration batches: crops of the real photos shipped with qmdd.

    The 8-bit ranges of the int8 model then depend on neither the images being classified
    nor any dataset on disk. Crops go through the test transform (``data_config``), so they
    have the deployment size and normalisation; the crop positions vary per photo.
    """
    import numpy as np

    from qmdd.data import DetectorTransform, load_rgb
    from qmdd.data import folder as _folder

    photos = sorted((Path(_folder.__file__).parent / "assets" / "photos").glob("*.jpg"))
    if not photos:
        raise FileNotFoundError("qmdd's shipped photos (qmdd/data/assets/photos) are missing")
    transform = DetectorTransform(data_config, "test")
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        image = load_rgb(photos[(index + seed) % len(photos)])
        side = data_config.crop_size
        if min(image.size) > 2 * side:  # a random window around the centre crop's size
            width, height = image.size
            left = int(rng.integers(0, width - 2 * side + 1))
            top = int(rng.integers(0, height - 2 * side + 1))
            image = image.crop((left, top, left + 2 * side, top + 2 * side))
        images.append(transform(image, rng))
    return [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]


#: The quantized backend the int8 model is built for and runs on.
_ENGINE = "x86"


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    """Use quantized backend ``name`` inside the block, restoring the caller's afterwards."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Model(nn.Module):
    """The converted int8 graph (``graph``), run under the x86 backend it was built for,
    without changing the process-wide ``torch.backends.quantized.engine``.

    Images enter in channels-last memory order (NHWC), which every op of the graph keeps:
    the backend's int8 convolutions work in NHWC and would otherwise reorder each input
    and output, and its int8 max pooling and additions vectorise over channels only in
    NHWC (docs/deployment.md: the default detector's batch of 32 took 65 ms in NCHW, 52
    ms in NHWC; the values are the same)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _quantized_engine(_ENGINE):
            return self.graph(x)


def to_int8(model: nn.Module, calibration_batches: Iterable[torch.Tensor], level_lookup: bool = True) -> Int8Model:
    """Convert a calibrated fake-quant ``model`` to an int8 model for the x86 CPU backend.

    ``calibration_batches``: a few image batches (input size of deployment) from which the
    8-bit ranges of the tensors between layers are measured. Returns an :class:`Int8Model`
    in eval mode that maps images to logits like ``model``. ``level_lookup``: run
    non-uniform input quantizers as 256-entry tables on the int8 codes
    (:class:`Int8LevelInput`, fast); False keeps them as float ops between a dequantize
    and a quantize (what the ONNX export writes).
    """
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("to_int8 needs at least one calibration batch")
    with _quantized_engine(_ENGINE):
        return Int8Model(_convert(model, batches, level_lookup)).eval()


def _convert(model: nn.Module, batches: list[torch.Tensor], level_lookup: bool = True) -> nn.Module:
    float_model, codes, float_layers = lowbit_float_model(model)
    activation = MinMaxObserver.with_args(reduce_range=False)
    default = QConfig(activation=activation, weight=torch.ao.quantization.default_per_channel_weight_observer)
    mapping = QConfigMapping().set_global(default)
    for name in float_layers:
        mapping.set_module_name(name, None)
    for name, module in float_model.named_modules():
        if isinstance(module, (LSQInput, LevelInput)):
            fixed = FixedQParamsObserver.with_args(scale=module.step, zero_point=module.zero_point)
            mapping.set_module_name(name, QConfig(activation=fixed, weight=default.weight))
    for name, layer_codes in codes.items():
        mapping.set_module_name(name, QConfig(activation=activation, weight=_CodeWeightObserver.with_args(codes=layer_codes)))
    backend = _backend_config()
    # LSQInput must stay one call_module node (a leaf), not be traced into its arithmetic;
    # the input filters too, so that they stay float modules.
    custom = PrepareCustomConfig().set_non_traceable_module_classes([LSQInput, LevelInput, *FILTERS.values()])
    prepared = prepare_fx(float_model, mapping, example_inputs=(batches[0],), prepare_custom_config=custom, backend_config=backend)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    converted = convert_fx(prepared, backend_config=backend)
    _lower_lsq_inputs(converted)
    _lower_level_inputs(converted, lookup=level_lookup)
    return converted


class Int8LevelInput(nn.Module):
    """:class:`LevelInput` on an int8 tensor: a 256-entry table from the input's codes to
    the level codes, so the step function never leaves the integer domain.

    The table depends on the input's scale and zero point, which the graph fixes; it is
    built on first use for each pair and kept. Every int8 input value is mapped exactly
    as :class:`LevelInput` maps its dequantized value.
    """

    def __init__(self, level: LevelInput) -> None:
        super().__init__()
        self.step, self.zero_point = level.step, level.zero_point
        self.register_buffer("thresholds", level.thresholds.clone())
        self.register_buffer("levels", level.levels.clone())
        self._tables: dict[tuple[float, int], torch.Tensor] = {}

    def _table(self, scale: float, zero_point: int) -> torch.Tensor:
        key = (scale, zero_point)
        if key not in self._tables:
            inputs = (torch.arange(256, dtype=torch.float32) - zero_point) * scale  # what dequantize gives
            levels = self.levels[torch.bucketize(inputs, self.thresholds, right=True)]
            codes = torch.round(levels / self.step) + self.zero_point
            self._tables[key] = codes.clamp(0, 255).to(torch.uint8)
        return self._tables[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self._table(float(x.q_scale()), int(x.q_zero_point()))
        codes = x.int_repr()
        # Look up in memory order and keep it: NHWC in stays NHWC out (Int8Model).
        nhwc = codes.dim() == 4 and codes.is_contiguous(memory_format=torch.channels_last)
        flat = codes.permute(0, 2, 3, 1) if nhwc else codes.contiguous()
        looked_up = torch.index_select(table, 0, flat.reshape(-1).to(torch.int32)).view(flat.shape)
        if nhwc:
            looked_up = looked_up.permute(0, 3, 1, 2)
        return torch._make_per_tensor_quantized_tensor(looked_up, self.step, self.zero_point)


def _float_islands(graph_module, module_type: type) -> list:
    """The ``module_type`` nodes that run in float between a ``dequantize`` and a
    ``quantize_per_tensor`` (convert_fx's island around a float op), which an int8 module
    can replace; the others stay float ops: still correct, only slower."""
    islands = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not isinstance(graph_module.get_submodule(node.target), module_type):
            continue
        dequant, users = node.args[0], list(node.users)
        if getattr(dequant, "op", None) == "call_method" and dequant.target == "dequantize" and len(users) == 1 and users[0].target is torch.quantize_per_tensor:
            islands.append(node)
    return islands


def _replace_float_island(graph_module, node, int8_module: nn.Module):
    """Replace ``dequantize -> node -> quantize`` (a :func:`_float_islands` node) by
    ``int8_module`` on the int8 producer; returns the new node."""
    graph = graph_module.graph
    dequant, quantize_node = node.args[0], next(iter(node.users))
    name = f"{node.target.replace('.', '_')}_int8"
    graph_module.add_submodule(name, int8_module)
    with graph.inserting_before(quantize_node):
        replacement = graph.call_module(name, (dequant.args[0],))
    quantize_node.replace_all_uses_with(replacement)
    graph.erase_node(quantize_node)
    graph.erase_node(node)
    if not dequant.users:
        graph.erase_node(dequant)
    return replacement


def _feeds_only(source, readers: set, passes_on) -> bool:
    """Whether every user of ``source`` is one of ``readers``, or an op that only passes
    its value on (``passes_on(user)``) to readers: then the producer's 8-bit range may be
    chosen for those readers alone."""
    return all(user in readers or (passes_on(user) and all(u in readers for u in user.users)) for user in source.users)


def _finish_lowering(graph_module) -> None:
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()


def _lower_level_inputs(graph_module, lookup: bool = True) -> None:
    """With ``lookup``, replace ``dequantize -> LevelInput -> quantize`` by
    :class:`Int8LevelInput`; with or without it, give a producer that feeds only level
    inputs of an unsigned grid the 8-bit range ``[0, last threshold]`` when that is finer
    than its calibrated one: inputs above it all take the top level, so the 256 input
    codes then resolve the thresholds as finely as 8 bits can.

    Producers that also feed something else (a residual addition, CQB's shortcuts) keep
    their calibrated range. Moving their scale so that the thresholds sit between two
    codes (as :class:`Int8LSQInput` does for uniform grids) was tried and lowered the
    agreement of a trained SLR detector (docs/deployment.md)."""
    by_source: dict = {}
    for node in _float_islands(graph_module, LevelInput):
        level, producer = graph_module.get_submodule(node.target), node.args[0].args[0]
        consumer = _replace_float_island(graph_module, node, Int8LevelInput(level)) if lookup else node
        by_source.setdefault(_qparams_source(graph_module, producer), []).append((consumer, level))
    for source, consumers in by_source.items():
        current = _current_qparams(graph_module, source)
        thresholds = torch.cat([level.thresholds for _, level in consumers])
        # Without the lookup a dequantize sits between: it must feed level inputs only too
        # (a shared one also feeds, e.g., a float downsample conv on the shortcut).
        only_tables = _feeds_only(source, {node for node, _ in consumers}, lambda user: user.op == "call_method" and user.target == "dequantize")
        if current is None or float(thresholds.min()) <= 0 or not only_tables:
            continue
        narrow = float(thresholds.max()) / 254.5  # the last threshold half a code below the top
        if narrow < current[0]:
            _set_output_qparams(graph_module, source, narrow, 0)
    _finish_lowering(graph_module)


class Int8LSQInput(nn.Module):
    """:class:`LSQInput` on an int8 tensor, without leaving the integer domain.

    The producer's 8-bit scale is set (by :func:`_lower_lsq_inputs`) to the LSQ step, or to
    step / k with k odd: an odd k puts the LSQ rounding boundaries (half-integers in step
    units) between 8-bit levels, so requantizing to the step is exact.

    Clipping costs nothing for unsigned grids [0, Qp] on non-negative tensors: with zero
    point ``255 - Qp`` at scale ``step``, the uint8 saturation at 255 *is* the clip at Qp
    (and ReLU/non-negativity gives the one at 0). Producers with a fused ReLU are given
    these qparams directly (no op at all here); other non-negative inputs take one
    requantize (``quantized::leaky_relu`` with slope 1: an identity with new output
    qparams); signed grids take a requantize and an integer clamp.
    """

    def __init__(self, lsq: LSQInput) -> None:
        super().__init__()
        self.step, self.qmin, self.qmax = lsq.step, lsq.qmin, lsq.qmax
        self.unsigned = lsq.qmin == 0
        self.zero_point = 255 - lsq.qmax if self.unsigned else lsq.zero_point
        self.low, self.high = lsq.qmin * lsq.step, lsq.qmax * lsq.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.q_scale() == self.step and x.q_zero_point() == self.zero_point and self.unsigned:
            return x  # a ReLU producer already wrote clipped LSQ codes
        if self.unsigned and x.q_zero_point() == 0:  # non-negative: saturation clips
            return torch.ops.quantized.leaky_relu(x, 1.0, False, self.step, self.zero_point)
        if x.q_scale() != self.step or x.q_zero_point() != self.zero_point:
            x = torch.ops.quantized.leaky_relu(x, 1.0, False, self.step, self.zero_point)
        return torch.clamp(x, self.low, self.high)


# Ops whose int8 output keeps its input's scale and zero point.
_SHARED_QPARAMS_MODULES = (nn.MaxPool2d, nn.ReLU, nn.Identity)


def _qparams_source(graph_module: nn.Module, node):
    """The node that defines ``node``'s output qparams (walking back through max-pool/ReLU)."""
    while node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), _SHARED_QPARAMS_MODULES):
        node = node.args[0]
    return node


def _set_output_qparams(graph_module: nn.Module, node, scale: float, zero_point: int) -> bool:
    """Set the output scale/zero point of a quantized conv, add or quantize node."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if hasattr(module, "scale") and hasattr(module, "zero_point") and not isinstance(module, Int8LSQInput):
            if isinstance(module.scale, torch.Tensor):  # a buffer (quantized BatchNorm, ...)
                module.scale.fill_(float(scale))
                module.zero_point.fill_(int(zero_point))
            else:
                module.scale, module.zero_point = float(scale), int(zero_point)
            return True
        return False
    if node.op == "call_function" and node.target in (torch.quantize_per_tensor, torch.ops.quantized.add, torch.ops.quantized.add_relu):
        index = 1 if node.target is torch.quantize_per_tensor else 2
        scale_node, zero_node = node.args[index], node.args[index + 1]
        if getattr(scale_node, "op", None) == "get_attr" and getattr(zero_node, "op", None) == "get_attr":
            setattr(graph_module, scale_node.target, torch.tensor(float(scale)))
            setattr(graph_module, zero_node.target, torch.tensor(int(zero_point)))
            return True
    return False


def _current_qparams(graph_module: nn.Module, node) -> tuple[float, int] | None:
    """The output scale and zero point of a quantized conv, add or quantize node."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if hasattr(module, "scale") and hasattr(module, "zero_point"):
            return float(module.scale), int(module.zero_point)
        return None
    if node.op == "call_function" and node.target in (torch.quantize_per_tensor, torch.ops.quantized.add, torch.ops.quantized.add_relu):
        index = 1 if node.target is torch.quantize_per_tensor else 2
        scale_node, zero_node = node.args[index], node.args[index + 1]
        if getattr(scale_node, "op", None) == "get_attr" and getattr(zero_node, "op", None) == "get_attr":
            return float(getattr(graph_module, scale_node.target)), int(getattr(graph_module, zero_node.target))
    return None


def _has_fused_relu(graph_module: nn.Module, node) -> bool:
    """True for quantized conv/linear modules with a fused ReLU (outputs >= 0 for sure)."""
    if node.op != "call_module":
        return False
    return type(graph_module.get_submodule(node.target)).__name__ in ("ConvReLU2d", "LinearReLU")


def _lower_lsq_inputs(graph_module) -> None:
    """Replace ``dequantize -> LSQInput -> quantize`` by :class:`Int8LSQInput`, and move the
    producers' 8-bit scales onto the LSQ grids (see :class:`Int8LSQInput`)."""
    lowered = [
        _replace_float_island(graph_module, node, Int8LSQInput(graph_module.get_submodule(node.target)))
        for node in _float_islands(graph_module, LSQInput)
    ]
    # Producers: put their output on the first LSQ consumer's grid (exactly when all their
    # consumers are LSQ inputs of one step; at step / odd k otherwise, fine enough for the
    # other consumers such as residual additions).
    by_source: dict = {}
    for node in lowered:
        by_source.setdefault(_qparams_source(graph_module, node.args[0]), []).append(node)
    for source, consumers in by_source.items():
        first = graph_module.get_submodule(consumers[0].target)
        steps = {graph_module.get_submodule(c.target).step for c in consumers}
        only_lsq = _feeds_only(
            source, set(consumers), lambda user: user.op == "call_module" and isinstance(graph_module.get_submodule(user.target), _SHARED_QPARAMS_MODULES)
        )
        current = _current_qparams(graph_module, source)
        if current is None:
            continue
        current = current[0]
        zero_point = 0 if first.unsigned else first.zero_point
        if only_lsq and len(steps) == 1:
            scale = first.step
            if first.unsigned and _has_fused_relu(graph_module, source):
                zero_point = first.zero_point  # saturation clips at Qp (see Int8LSQInput)
        else:
            k = max(1, int(first.step / current))
            k -= 1 - k % 2  # odd (k >= 1 keeps it so), and step / k >= the calibrated scale: no new clipping
            scale = first.step / k
        _set_output_qparams(graph_module, source, scale, zero_point)
    _finish_lowering(graph_module)
