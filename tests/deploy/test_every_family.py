"""Every quantizer family deploys: packed file, int8 path and ONNX, with and without CQB.

Round trips compare outputs with the fake-quant model; the integer forms are checked
against computations made here (codes from the weights, step functions from the level
tables, an exhaustive pass over the 256 int8 input codes).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from qmdd.config import QuantConfig, load_config
from qmdd.deploy import (
    Int8LevelInput,
    LevelInput,
    OnnxFormatError,
    export_onnx,
    load_onnx,
    load_packed,
    lowbit_float_model,
    open_deployed,
    read_packed,
    save_packed,
    to_int8,
)
from qmdd.deploy._int8 import _quantized_engine
from qmdd.detector import build_detector
from qmdd.predict import main as predict_main
from qmdd.quant import N2UQActivationQuantizer, N2UQWeightQuantizer, SLRActivationQuantizer, calibrate, quantize, quantized_layers

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

SIZE = 32
FAMILIES = ("lsq", "n2uq", "slr")
CASES = [(family, block) for family in FAMILIES for block in ("plain", "cqb")]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _detector(family: str, block: str, arch: str = "trunc_resnet18", bits: int = 2):
    config = load_config(None, [f"model.arch={arch}", f"quant.bits={bits}", f"data.crop_size={SIZE}", f"quant.quantizer={family}", f"quant.block={block}"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(8, 3, SIZE, SIZE)])
    _spread_thresholds(model)
    return model.eval(), config


def _spread_thresholds(model: nn.Module) -> None:
    """Move the learned grids away from their LSQ-like initialisation, as training does:
    unequal N2UQ widths, a smaller SLR shift (more logarithmic levels)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, N2UQActivationQuantizer):
                module.width_param.add_(torch.randn(module.width_param.shape, generator=generator) * 5)
            elif isinstance(module, SLRActivationQuantizer):
                module.log_shift.sub_(1.0)


def _probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model(x).reshape(-1))


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{b}" for f, b in CASES])
def deployed(request, tmp_path_factory):
    """One detector per family and block form, written as .qmdd and .onnx."""
    family, block = request.param
    model, config = _detector(family, block)
    folder = tmp_path_factory.mktemp(f"{family}-{block}")
    calibration = [torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))]
    save_packed(folder / "m.qmdd", model, config, threshold=0.4)
    export_onnx(folder / "m.onnx", model, config, calibration, threshold=0.4)
    return family, block, model, config, folder, calibration


def test_packed_file_stores_every_low_bit_weight_as_codes_and_round_trips(deployed):
    family, _, model, _, folder, _ = deployed
    _, state, header = read_packed(folder / "m.qmdd")
    entries = {e["name"]: e for e in header["tensors"]}
    layers = [(name, layer) for name, layer in quantized_layers(model) if layer.weight_bits < 32]
    assert layers
    for name, layer in layers:
        entry = entries[f"{name}.weight"]
        assert entry["encoding"] in ("codes", "codes_sparse") and entry["bits"] == 2
        # The decoded weight is the fake-quantized weight: equal for LSQ, within an ulp or
        # two for N2UQ (its zero point is the half-integer 1.5: no zero level).
        expected = layer.quantized_weight().detach()
        assert torch.allclose(state[f"{name}.weight"], expected, rtol=1e-6, atol=1e-7)
        if family == "n2uq":
            assert entry["zero_point"] == 1.5
            assert max(len(row.unique()) for row in expected.reshape(expected.shape[0], -1)) <= 4  # 2^b per channel
    loaded = load_packed(folder / "m.qmdd")
    x = torch.randn(6, 3, SIZE, SIZE)
    reference, result = _probabilities(model, x), _probabilities(loaded.model, x)
    if family == "n2uq":
        assert torch.allclose(result, reference, atol=1e-5)
    else:
        assert torch.equal(result, reference)
    assert loaded.threshold == pytest.approx(0.4)


def test_n2uq_codes_are_the_weights_rounded_on_their_channel_grid():
    """Independent of the quantizer: scale_c = (3/2) mean|W_c| at 2 bits, codes round((clip(W/scale_c) + 1) * 3/2)."""
    torch.manual_seed(3)
    weight = torch.randn(8, 4, 3, 3)
    codes = N2UQWeightQuantizer(2).weight_codes(weight)
    scale = 1.5 * weight.abs().reshape(8, -1).mean(1).view(-1, 1, 1, 1)
    expected = torch.round((torch.clamp(weight / scale, -1, 1) + 1) * 1.5)
    assert torch.equal(codes.codes, expected.to(torch.int64))
    assert torch.allclose(codes.values(), (expected * (2 / 3) - 1) * scale, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("signed", [False, True])
def test_level_tables_are_the_quantizers(family, signed):
    model, _ = _detector(family, "plain", arch="cnn5", bits=3)
    x = torch.randn(20000) * 3
    if not signed:
        x = x.relu()
    for _, layer in quantized_layers(model):
        if layer.act_bits >= 32:
            continue
        quantizer = layer.input_quantizer
        table = quantizer.level_table()
        assert table.levels.numel() == 2**3 and torch.all(table.thresholds.diff() > 0)
        with torch.no_grad():
            assert torch.allclose(table.lookup(x), quantizer(x), rtol=1e-6, atol=1e-6)


def test_int8_level_tables_map_every_input_code_as_the_float_op():
    """Exhaustive over the 256 input codes of a few scales and zero points."""
    model, _ = _detector("slr", "plain", arch="cnn5")
    level = next(m for m in lowbit_float_model(model)[0].modules() if isinstance(m, LevelInput))
    table = Int8LevelInput(level)
    for scale, zero_point in ((0.01, 0), (0.003, 0), (0.02, 128)):
        codes = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
        x = torch._make_per_tensor_quantized_tensor(codes, scale, zero_point)
        expected = level(x.dequantize())
        assert torch.allclose(table(x).dequantize(), expected, atol=1e-6)
    # SLR's levels are rounded to the 8-bit grid that spans them: at most half a step off.
    assert not level.exact and level.max_level_error <= level.step / 2 + 1e-9


@pytest.mark.parametrize("family", ["lsq", "slr"])
def test_int8_model_runs_channels_last_with_the_values_of_channels_first(family):
    """Int8Model feeds its graph NHWC images (faster on the x86 backend): the logits are
    those of the same graph fed NCHW, bit for bit, and a level table hands on NHWC."""
    model, _ = _detector(family, "cqb")
    calibration = [torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))]
    int8 = to_int8(model, calibration)
    x = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    layouts = []
    hooks = [m.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last))) for m in int8.modules() if isinstance(m, Int8LevelInput)]
    with torch.inference_mode():
        nhwc = int8(x)
        assert (len(layouts) > 0) == (family == "slr") and all(layouts)
        for hook in hooks:
            hook.remove()
        with _quantized_engine("x86"):
            nchw = int8.graph(x.contiguous())
    assert torch.equal(nhwc, nchw)


@pytest.mark.parametrize("family", ["n2uq", "slr"])
@pytest.mark.parametrize("block", ["plain", "cqb"])
def test_level_tables_and_float_level_inputs_compute_the_same_model(family, block):
    """The ONNX export's graph (``level_lookup=False``: level inputs as float ops between a
    dequantize and a quantize) is the int8 model's (256-entry tables) op for op, narrowed
    producers included; a producer whose dequantized values also feed something else (the
    float downsample conv of trunc_resnet18's layer2) keeps its full range in both."""
    model, _ = _detector(family, block)
    calibration = [torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))]
    x = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        tables = to_int8(model, calibration)(x)
        float_ops = to_int8(model, calibration, level_lookup=False)(x)
    assert torch.allclose(tables, float_ops, atol=1e-5), (tables - float_ops).abs().max()


@pytest.mark.parametrize("family", ["n2uq", "slr"])
def test_int8_chain_reads_the_fake_quant_codes(family):
    """On a conv chain without residuals, the int8 model's inputs to every low-bit conv are
    the fake-quant model's levels for almost every element (their producers are 8-bit)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1)]
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    model = quantize(nn.Sequential(*layers), QuantConfig(bits=2, quantizer=family))
    calibrate(model, batches[:1])
    model.eval()
    _spread_thresholds(model)
    int8 = to_int8(model, batches)
    seen_fake, seen_int8 = {}, {}
    hooks = [layer.input_quantizer.register_forward_hook(lambda m, i, o, n=name: seen_fake.__setitem__(n, o)) for name, layer in quantized_layers(model) if layer.act_bits < 32]
    hooks += [m.register_forward_hook(lambda m, i, o, n=name: seen_int8.__setitem__(n.removeprefix("graph.").removesuffix("_0_int8"), o.dequantize())) for name, m in int8.named_modules() if isinstance(m, Int8LevelInput)]
    with torch.no_grad():
        model(batches[1])
        int8(batches[1])
    for hook in hooks:
        hook.remove()
    assert len(seen_int8) == len(seen_fake) == 3
    for name, fake in seen_fake.items():
        level = next(m for n, m in int8.named_modules() if isinstance(m, Int8LevelInput) and n.startswith(f"graph.{name}"))
        fast = seen_int8[name]
        same = (fast - fake).abs() <= level.step / 2 + 1e-6  # equal level (SLR: on its 8-bit grid)
        # N2UQ: flips only within half an 8-bit producer step of a threshold. SLR: its
        # log-spaced thresholds crowd near 0, finer than that step (docs/deployment.md).
        assert same.float().mean() > (0.99 if family == "n2uq" else 0.97), (name, same.float().mean().item())


def test_int8_runs_every_family_close_to_fake_quant(deployed):
    family, _, model, _, _, calibration = deployed
    float_model, codes, _ = lowbit_float_model(model)
    assert len(codes) == sum(1 for _, layer in quantized_layers(model) if layer.weight_bits < 32)
    x = torch.randn(8, 3, SIZE, SIZE)
    reference = _probabilities(model, x)
    if family != "slr":  # LSQ and N2UQ levels are exact in int8; SLR's are rounded to 8 bits
        assert torch.allclose(_probabilities(float_model, x), reference, atol=1e-5)
    assert (_probabilities(to_int8(model, calibration), x) - reference).abs().max() < 0.15


def test_onnx_model_is_qdq_with_int8_weights_and_runs_the_int8_model(deployed):
    _, _, model, _, folder, calibration = deployed
    proto = onnx.load(str(folder / "m.onnx"))
    onnx.checker.check_model(proto)
    ops = [node.op_type for node in proto.graph.node]
    low_bit = sum(1 for _, layer in quantized_layers(model) if layer.weight_bits < 32)
    int8_weights = [
        node for node in proto.graph.node
        if node.op_type == "Constant" and node.attribute[0].t.data_type == onnx.TensorProto.INT8 and len(node.attribute[0].t.dims) == 4
    ]
    assert len(int8_weights) == low_bit and ops.count("QuantizeLinear") >= low_bit
    x = torch.randn(8, 3, SIZE, SIZE)
    int8 = _probabilities(to_int8(model, calibration, level_lookup=False), x)
    # Without ONNX Runtime's fusions the graph is the int8 model, float op for float op;
    # the fused integer kernels round their requantizations their own way.
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = onnxruntime.InferenceSession(str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"])
    unfused = torch.sigmoid(torch.from_numpy(plain.run(None, {"image": x.numpy()})[0]).reshape(-1))
    assert torch.allclose(unfused, int8, atol=2e-3)
    loaded = load_onnx(folder / "m.onnx")
    assert loaded.threshold == pytest.approx(0.4) and loaded.config.quant.quantizer == deployed[0]
    fused = _probabilities(loaded.model, x)
    assert (fused - int8).abs().max() < 0.05
    assert (fused - _probabilities(model, x)).abs().max() < 0.15


def test_onnx_runtime_runs_every_low_bit_conv_on_integer_kernels(deployed, tmp_path):
    """After ONNX Runtime's graph optimizer, each low-bit conv is a ``QLinearConv``, none a
    float ``FusedConv`` (a conv whose ReLU floors the codes at a nonzero zero point was one
    until the export quantized before that ReLU)."""
    _, _, model, _, folder, _ = deployed
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    low_bit = sum(1 for _, layer in quantized_layers(model) if layer.weight_bits < 32)
    assert ops.count("QLinearConv") >= low_bit and "FusedConv" not in ops


def test_quantizing_before_a_relu_keeps_the_codes():
    """``Conv -> Relu -> QuantizeLinear`` (zero point 252) and its rewrite give the same codes
    for values below, at and above every rounding tie and the clip limits."""
    from qmdd.deploy._onnx import _quantize_before_relu

    scale, zero_point = 0.25, 252
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    nodes = [
        conv,
        onnx.helper.make_node("Relu", ["c"], ["r"], name="relu"),
        onnx.helper.make_node("Constant", [], ["s"], value=onnx.numpy_helper.from_array(np.array(scale, dtype=np.float32))),
        onnx.helper.make_node("Constant", [], ["z"], value=onnx.numpy_helper.from_array(np.array(zero_point, dtype=np.uint8))),
        onnx.helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 1, -1])],
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, [1, 1, 1, -1])],
        [onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), dtype=np.float32), "w")],
    )
    original = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert _quantize_before_relu(onnx, rewritten.graph) == 1
    onnx.checker.check_model(rewritten)
    assert [n.op_type for n in rewritten.graph.node if n.op_type != "Constant"] == ["Conv", "QuantizeLinear", "DequantizeLinear", "LeakyRelu", "QuantizeLinear"]
    ties = (np.arange(-6, 8) + 0.5) * scale
    x = np.concatenate([ties, np.nextafter(ties, -np.inf), np.nextafter(ties, np.inf), [-100.0, -0.0, 0.0, 0.74, 0.76, 100.0]])
    x = x.astype(np.float32).reshape(1, 1, 1, -1)

    def codes(model):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    assert np.array_equal(codes(rewritten), codes(original))
    assert codes(original).min() == zero_point and codes(original).max() == 255  # both ends reached


def _integer_weight_initializers(proto, data_type: int) -> list:
    """The 4-D (conv) weight initializers of ``data_type`` that a ``DequantizeLinear`` reads."""
    read = {node.input[0] for node in proto.graph.node if node.op_type == "DequantizeLinear"}
    return [init for init in proto.graph.initializer if init.name in read and init.data_type == data_type and len(init.dims) == 4]


def test_float_activation_onnx_is_the_fake_quant_model_with_integer_weights(deployed):
    """activations="float": no activation is quantized to 8 bits, so every family (SLR's
    log-spaced levels included) gives the fake-quant model's outputs up to float rounding."""
    family, _, model, config, folder, calibration = deployed
    stats = export_onnx(folder / "float.onnx", model, config, calibration, threshold=0.4, activations="float")
    proto = onnx.load(str(folder / "float.onnx"))
    onnx.checker.check_model(proto)
    low_bit = [layer for _, layer in quantized_layers(model) if layer.weight_bits < 32]
    codes = _integer_weight_initializers(proto, onnx.TensorProto.INT8)
    assert stats.operators.get("QuantizeLinear", 0) == 0 and len(codes) == len(low_bit)
    for init in codes:  # 2-bit codes (N2UQ's half-integers doubled to odd integers)
        values = onnx.numpy_helper.to_array(init)
        assert max(len(np.unique(row)) for row in values.reshape(values.shape[0], -1)) <= 4
        assert np.abs(values).max() <= (3 if family == "n2uq" else 2)
    x = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    loaded = load_onnx(folder / "float.onnx")
    assert loaded.threshold == pytest.approx(0.4)
    gap = (_probabilities(loaded.model, x) - _probabilities(model, x)).abs()
    # The exporter folds BatchNorm into the conv weights, which rounds differently: an
    # activation within a rounding of a level boundary may take the neighbouring level
    # (seen for one image in 16 on one CPU, 1e-3 in probability). A wrong level table would
    # move every image.
    assert (gap <= 1e-5).sum() >= len(gap) - 2 and gap.max() < 1e-2


def test_float_activation_onnx_takes_int4_weights(tmp_path):
    model, config = _detector("slr", "plain", arch="cnn5")
    calibration = [torch.randn(2, 3, SIZE, SIZE)]
    eight = export_onnx(tmp_path / "w8.onnx", model, config, calibration, activations="float")
    four = export_onnx(tmp_path / "w4.onnx", model, config, calibration, weights="int4", activations="float")
    assert four.opset == 21 and four.file_bytes < eight.file_bytes
    low_bit = sum(1 for _, layer in quantized_layers(model) if layer.weight_bits < 32)
    assert len(_integer_weight_initializers(onnx.load(str(tmp_path / "w4.onnx")), onnx.TensorProto.INT4)) == low_bit
    x = torch.randn(4, 3, SIZE, SIZE)
    assert torch.allclose(_probabilities(load_onnx(tmp_path / "w4.onnx").model, x), _probabilities(model, x), atol=1e-5)


def test_integer_weights_refuse_codes_that_match_no_weight():
    from qmdd.deploy._onnx import _integer_weights

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [onnx.numpy_helper.from_array(np.array([1.5, -0.5, 0.25, 2.0], dtype=np.float32).reshape(2, 2, 1, 1), "w")],
    )
    proto = onnx.helper.make_model(graph)
    with pytest.raises(OnnxFormatError, match="1 of 1 low-bit layers"):
        _integer_weights(proto, {"conv": torch.tensor([[1, 1], [1, 0]], dtype=torch.int8).reshape(2, 2, 1, 1)})
    assert _integer_weights(proto, {"conv": torch.tensor([[3, -1], [1, 8]], dtype=torch.int8).reshape(2, 2, 1, 1)}) == 1
    dequantize = next(node for node in proto.graph.node if node.op_type == "DequantizeLinear")
    assert dequantize.output[0] == "w" and [node.op_type for node in proto.graph.node] == ["DequantizeLinear", "Conv"]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    model, config = _detector("slr", "cqb")
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(path, model, config, [torch.randn(4, 3, SIZE, SIZE)], threshold=0.3)
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign", "activations"])
def test_corrupt_onnx_files_give_one_sentence_naming_the_file(onnx_file, tmp_path, damage):
    data = onnx_file.read_bytes()
    path = tmp_path / "bad.onnx"
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:40] + bytes(b ^ 0xFF for b in data[40:80]) + data[80:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "activations":  # a qmdd detector whose metadata names no known form
        proto = onnx.load(str(onnx_file))
        next(entry for entry in proto.metadata_props if entry.key == "qmdd.activations").value = "int2"
        onnx.save(proto, str(path))
    else:  # a valid ONNX model that is not a qmdd detector
        graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(OnnxFormatError, match="bad.onnx"):
        load_onnx(path)


def test_predict_runs_onnx_files_and_reports_bad_ones(onnx_file, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for index in range(3):
        images.append(tmp_path / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images[-1])
    assert predict_main(["--model", str(onnx_file), *map(str, images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.split("\t")[2] == str(path) for line, path in zip(lines, images))
    probabilities = [float(line.split("\t")[0]) for line in lines]
    assert all(("fake" if p > 0.3 else "real") == line.split("\t")[1] for p, line in zip(probabilities, lines))  # the file's threshold
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[:1000])
    assert predict_main(["--model", str(truncated), str(images[0])]) == 1
    err = capsys.readouterr().err
    assert "cut.onnx" in err and "Traceback" not in err
    assert predict_main(["--model", str(onnx_file), "--engine", "int8", str(images[0])]) == 1
    assert "ONNX Runtime only" in capsys.readouterr().err


def test_open_deployed_picks_the_engine_by_file(deployed):
    _, _, model, _, folder, _ = deployed
    x = torch.randn(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = open_deployed(folder / "m.qmdd", "fake-quant")
    assert torch.allclose(_probabilities(exact.model, x), _probabilities(model, x), atol=1e-5)
    with pytest.raises(OnnxFormatError, match="runs .onnx files"):
        open_deployed(folder / "m.qmdd", "onnxruntime")


def test_int4_onnx_weights_give_the_int8_model_in_a_smaller_file(tmp_path):
    """INT4 weights (opset 21) hold the same codes: close outputs, fewer bytes. ResNet
    bottlenecks with CQB exercise the channel mean (``unflatten``) of the exporter too."""
    model, config = _detector("n2uq", "cqb", arch="npr_resnet50")
    calibration = [torch.randn(4, 3, SIZE, SIZE)]
    eight = export_onnx(tmp_path / "w8.onnx", model, config, calibration)
    four = export_onnx(tmp_path / "w4.onnx", model, config, calibration, weights="int4")
    assert (eight.opset, four.opset) == (13, 21) and four.file_bytes < 0.75 * eight.file_bytes
    proto = onnx.load(str(tmp_path / "w4.onnx"))
    int4 = [n for n in proto.graph.node if n.op_type == "Constant" and n.attribute[0].t.data_type == onnx.TensorProto.INT4 and len(n.attribute[0].t.dims) == 4]
    assert len(int4) == sum(1 for _, layer in quantized_layers(model) if layer.weight_bits < 32)
    x = torch.randn(3, 3, SIZE, SIZE)
    # The same codes; only the int32 bias grid differs (INT4 leaves less room to refine it).
    four_p, eight_p = (torch.sigmoid(load_onnx(tmp_path / name).model(x)) for name in ("w4.onnx", "w8.onnx"))
    assert (four_p - eight_p).abs().max() < 0.05


def test_export_cli_writes_onnx_and_reports_bad_checkpoints(tmp_path, capsys):
    from qmdd.checkpoint import save_checkpoint
    from qmdd.export import main as export_main

    model, config = _detector("n2uq", "plain", arch="cnn5")
    save_checkpoint(tmp_path / "best.pt", config=config, model=model)
    assert export_main(["--checkpoint", str(tmp_path / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
    assert "ONNX, opset 13" in capsys.readouterr().out
    loaded = load_onnx(tmp_path / "m.onnx")
    assert loaded.config.quant.quantizer == "n2uq" and loaded.config.model.arch == "cnn5"
    assert export_main(["--checkpoint", str(tmp_path / "best.pt"), "--out", str(tmp_path / "f.onnx"), "--format", "onnx", "--onnx-activations", "float"]) == 0
    assert "0 QuantizeLinear" in capsys.readouterr().out
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(_probabilities(load_onnx(tmp_path / "f.onnx").model, x), _probabilities(model, x), atol=1e-5)
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx"), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "missing.pt" in err and "Traceback" not in err and not (tmp_path / "x.onnx").exists()
