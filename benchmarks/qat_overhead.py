"""QAT step-time overhead: qmdd's fake quantization against FP32 and reference libraries.

One run measures, for each architecture, the wall time of one training step (forward,
backward and Adam step, batch ``--batch`` at ``--size`` px, BCE on the single logit) of:

- ``fp32``: the float model;
- ``qmdd-w2a2``, ``qmdd-w3a3``: qmdd's quantizers (``--quantizers``, LSQ by default);
- ``torchao-wXaX``: ``torch.ao.quantization``'s learnable fake quantization
  (``_LearnableFakeQuantize``: per-channel learned weight scale, per-tensor learned
  activation scale and zero point, LSQ gradient scaling) on the weights and inputs of the
  *same* layers qmdd quantizes (the body; first conv and classifier stay FP32);
- ``brevitas-wXaX``: Brevitas ``QuantConv2d``/``QuantLinear`` with learned per-channel
  weight scales (full range, not Brevitas' narrow default) and learned per-tensor input
  scales on the same layers, when Brevitas is installed (``pip install -e ".[bench]"``).

The machine is shared and noisy, so the variants are timed in alternation: every round
times ``--steps`` steps of each variant, in an order rotated from round to round, and each
variant's time is divided by the FP32 time *of the same round*. The report gives the median
of those per-round ratios (and the median seconds per step).

    python benchmarks/qat_overhead.py                                   # docs/performance.md
    python benchmarks/qat_overhead.py --archs resnet18 --rounds 5       # quicker
    python benchmarks/qat_overhead.py --profile qmdd-w2a2 --archs resnet18   # op table
    python benchmarks/qat_overhead.py --quantizers lsq,n2uq,slr --refs none
    python benchmarks/qat_overhead.py --archs resnet18 --bits 2 --refs none --amp bf16
    python benchmarks/qat_overhead.py --archs resnet18,trunc_resnet18 --bits 2 \
        --quantizers lsq,n2uq,slr --refs none --threads 1 --cpu-time   # on a busy machine

``--cpu-time`` (with ``--threads 1``) times each step by the CPU time of the benchmark's
thread instead of the wall clock: on a machine shared with other jobs, the time spent
preempted is left out (cache and memory-bandwidth contention still count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from qmdd.config import FULL_PRECISION, QuantConfig
from qmdd.models import create_model
from qmdd.quant import calibrate, plan_precision, quantize
from qmdd.training._loop import autocast


def body_layer_names(model: nn.Module) -> list[str]:
    """The conv/linear layers qmdd's default policy quantizes (not the first conv or fc)."""
    return [p.name for p in plan_precision(model, QuantConfig(bits=2)) if p.weight_bits < FULL_PRECISION]


def swap_layers(model: nn.Module, names: list[str], make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))
    return model


# --------------------------------------------------------------------------- torch.ao


def torchao_model(arch: str, bits: int, images: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import MovingAverageMinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    def weight_fq(channels: int) -> nn.Module:
        return _LearnableFakeQuantize(
            observer=PerChannelMinMaxObserver,
            quant_min=-(2 ** (bits - 1)),
            quant_max=2 ** (bits - 1) - 1,
            channel_len=channels,
            use_grad_scaling=True,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        )

    def input_fq() -> nn.Module:
        # Affine with a learned zero point: covers post-ReLU and signed (MobileNet) inputs.
        return _LearnableFakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=2**bits - 1,
            use_grad_scaling=True,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
        )

    class AOConv2d(nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(self.input_fq(x), self.weight_fq(self.weight), self.bias)

    class AOLinear(nn.Linear):
        def forward(self, x):
            return F.linear(self.input_fq(x), self.weight_fq(self.weight), self.bias)

    def make(layer: nn.Module) -> nn.Module:
        cls = AOConv2d if isinstance(layer, nn.Conv2d) else AOLinear
        layer.__class__ = cls  # same Parameters, new forward
        layer.weight_fq = weight_fq(layer.weight.shape[0])
        layer.input_fq = input_fq()
        return layer

    model = create_model(arch)
    swap_layers(model, body_layer_names(model), make)
    # Static observer pass sets the initial scales; then the scales are learned.
    with torch.no_grad():
        model(images)
    for module in model.modules():
        if isinstance(module, _LearnableFakeQuantize):
            module.enable_param_learning()
    return model


# --------------------------------------------------------------------------- Brevitas


def brevitas_available() -> bool:
    try:
        import brevitas  # noqa: F401
    except ImportError:
        return False
    return True


def brevitas_model(arch: str, bits: int, images: torch.Tensor) -> nn.Module:
    from brevitas.inject.enum import ScalingImplType
    from brevitas.nn import QuantConv2d, QuantLinear
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat

    # Learned per-channel weight scales (LSQ-like) on the full 2^b-level grid, and learned
    # per-tensor input scales; statistics are collected for one step only, so the steps
    # timed are Brevitas' steady state.
    weight_quant = Int8WeightPerChannelFloat.let(
        bit_width=bits, narrow_range=False, scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS
    )
    input_quant = Int8ActPerTensorFloat.let(bit_width=bits, collect_stats_steps=1)

    def make(layer: nn.Module) -> nn.Module:
        if isinstance(layer, nn.Conv2d):
            quantized = QuantConv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                bias=layer.bias is not None, weight_quant=weight_quant, input_quant=input_quant,
            )
        else:
            quantized = QuantLinear(
                layer.in_features, layer.out_features, bias=layer.bias is not None,
                weight_quant=weight_quant, input_quant=input_quant,
            )
        quantized.load_state_dict(layer.state_dict(), strict=False)
        return quantized

    model = create_model(arch)
    swap_layers(model, body_layer_names(model), make)
    model.train()
    with torch.no_grad():
        model(images)  # the statistics step
    return model


# --------------------------------------------------------------------------- qmdd


def qmdd_model(arch: str, bits: int, quantizer: str, images: torch.Tensor) -> nn.Module:
    config = QuantConfig(bits=bits, quantizer=quantizer)
    model = quantize(create_model(arch), config)
    calibrate(model, [images])
    return model


# --------------------------------------------------------------------------- timing


class Variant:
    def __init__(self, name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, compile_model: bool = False, amp: str = "none") -> None:
        self.name, self.images, self.labels = name, images, labels
        self.amp = amp
        self.model = model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4, fused=True)  # as qmdd.training.run
        self.forward = torch.compile(self.model) if compile_model else self.model

    def step(self) -> None:
        with autocast(torch.device("cpu"), self.amp):  # as the training loop under train.amp
            logits = self.forward(self.images).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def build_variants(args: argparse.Namespace, arch: str, images: torch.Tensor, labels: torch.Tensor) -> list[Variant]:
    torch.manual_seed(0)
    variants = [Variant("fp32", create_model(arch), images, labels, args.compile)]
    if args.amp != "none":
        variants.append(Variant(f"fp32 {args.amp}", create_model(arch), images, labels, args.compile, args.amp))
    for bits in args.bits:
        for quantizer in args.quantizers:
            name = f"qmdd-w{bits}a{bits}" + ("" if quantizer == "lsq" else f"-{quantizer}")
            variants.append(Variant(name, qmdd_model(arch, bits, quantizer, images), images, labels, args.compile))
            if args.amp != "none":
                variants.append(Variant(f"{name} {args.amp}", qmdd_model(arch, bits, quantizer, images), images, labels, args.compile, args.amp))
        if "torchao" in args.refs:
            variants.append(Variant(f"torchao-w{bits}a{bits}", torchao_model(arch, bits, images), images, labels))
        if "brevitas" in args.refs and brevitas_available():
            variants.append(Variant(f"brevitas-w{bits}a{bits}", brevitas_model(arch, bits, images), images, labels))
    return variants


def interleaved_step_times(
    variants: list[Variant], rounds: int, steps: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, dict[str, float]]:
    """Median seconds per step and median per-round ratio to ``variants[0]`` (FP32)."""
    for variant in variants:
        for _ in range(warmup):
            variant.step()
    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_index in range(rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:  # rotate: no fixed position
            start = clock()
            for _ in range(steps):
                variant.step()
            seconds[variant.name].append((clock() - start) / steps)
    reference = seconds[variants[0].name]
    return {
        name: {
            "step_s": statistics.median(values),
            "ratio": statistics.median(v / r for v, r in zip(values, reference)),
            "ratio_q1_q3": [round(q, 3) for q in _quartiles([v / r for v, r in zip(values, reference)])],
        }
        for name, values in seconds.items()
    }


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def profile_step(variant: Variant, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        variant.step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(3):
            variant.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="resnet18,mobilenet_v2")
    parser.add_argument("--bits", default="2,3", help="comma-separated WbAb widths to time")
    parser.add_argument("--quantizers", default="lsq", help="qmdd quantizer families to time (lsq,n2uq,slr)")
    parser.add_argument("--refs", default="torchao,brevitas", help="reference libraries: torchao, brevitas, none")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help="time steps by this thread's CPU time (needs --threads 1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the FP32 and qmdd models")
    parser.add_argument("--amp", default="none", help="also time FP32 and qmdd variants under this autocast (bf16), as train.amp")
    parser.add_argument("--profile", metavar="VARIANT", help="print a torch.profiler op table of this variant's step and exit")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    args.bits = [int(b) for b in args.bits.split(",")]
    args.quantizers = [q for q in args.quantizers.split(",") if q]
    args.refs = [r for r in args.refs.split(",") if r and r != "none"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and torch.get_num_threads() != 1:
        parser.error("--cpu-time counts the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.cpu_time else time.perf_counter

    results: dict[str, dict] = {}
    for arch in args.archs.split(","):
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
        labels = torch.randint(0, 2, (args.batch,), generator=generator).float()
        variants = build_variants(args, arch, images, labels)
        if args.profile:
            named = {v.name: v for v in variants}
            if args.profile not in named:
                parser.error(f"--profile {args.profile}: no such variant here; choose from {', '.join(named)}")
            profile_step(named[args.profile], rows=30)
            continue
        results[arch] = interleaved_step_times(variants, args.rounds, args.steps, args.warmup, clock)
        timing = "CPU time" if args.cpu_time else "wall clock"
        print(f"\n{arch}, batch {args.batch}, {args.size} px, {torch.get_num_threads()} threads, {timing}")
        print(f"{'variant':<24}{'s/step':>9}{'x FP32':>9}   (quartiles)")
        for name, row in results[arch].items():
            print(f"{name:<24}{row['step_s']:>9.4f}{row['ratio']:>9.3f}   {row['ratio_q1_q3']}")
    if args.json and results:
        payload = {
            "command": "python benchmarks/qat_overhead.py " + " ".join(os.sys.argv[1:]),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "clock": "thread CPU time" if args.cpu_time else "wall",
            "batch": args.batch,
            "size": args.size,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "results": results,
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
