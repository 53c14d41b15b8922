"""Native (C++) fake-quantization kernels, compiled on first use.

Fake quantization does a few flops per element, so on the CPU its cost is memory passes:
the LSQ chain of ``_lsq.py`` makes five passes forward and four backward over an
activation, each a separate PyTorch operator. ``native/lsq.cpp`` does the same arithmetic
in one pass each way (the backward recomputes the inside-the-range mask from ``x`` instead
of storing it): 3.3x less time for forward + backward of a 16x96x56x56 activation on one
thread (docs/performance.md). Forward values and input gradients are bit for bit those of
the chain; the step gradient's sum is accumulated in double, so it matches to float
rounding.

The kernel is compiled by :func:`torch.utils.cpp_extension.load` (Ninja and the system
C++ compiler) the first time a process needs it, about a minute, and cached by PyTorch
under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) for later
processes, one build per CPU model. Tracing and compilation (TorchScript, ONNX export of
the fake-quant model, ``torch.compile``) always see the Python chain. Where it cannot be
built (no compiler), qmdd says so once and keeps the Python chain, which gives the same
results. ``QMDD_NATIVE_KERNELS=0`` skips the build.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["NATIVE_ENV", "native_lsq", "native_applies", "lsq_kernel_in_use"]

#: Environment variable: "0" keeps the Python chains and never compiles.
NATIVE_ENV = "QMDD_NATIVE_KERNELS"

_SOURCE = Path(__file__).with_name("native") / "lsq.cpp"
_state: dict[str, ModuleType | None] = {}
_build_lock = threading.Lock()


def native_applies(x: torch.Tensor) -> bool:
    """The kernels take contiguous float32 CPU tensors, outside tracing and compilation
    (TorchScript, ONNX export and ``torch.compile`` see the Python chain, which they can
    trace; an FX proxy is not a tensor); anything else keeps the chain."""
    if not isinstance(x, torch.Tensor) or torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


def native_lsq() -> ModuleType | None:
    """The compiled LSQ kernels, or None (disabled, or the build failed: said once)."""
    if "lsq" not in _state:
        with _build_lock:
            if "lsq" not in _state:
                _state["lsq"] = _build() if os.environ.get(NATIVE_ENV, "1") != "0" else None
    return _state["lsq"]


def lsq_kernel_in_use() -> str | None:
    """"native" or "python" once this process has run LSQ fake quantization, else None
    (recorded with a run: the two kernels' step gradients differ in the last bits, so a
    run resumed under the other one is not bit-identical)."""
    if "lsq" not in _state:
        return None
    return "native" if _state["lsq"] is not None else "python"


def _cpu_fingerprint() -> str:
    """A short hash of this CPU's model and instruction-set flags: the kernel is built with
    -march=native, so a build cache shared between machines (a network home, an image)
    must not hand one CPU's build to another."""
    description = platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        description += "".join(sorted(set(lines)))
    except OSError:
        description += platform.processor()
    return hashlib.sha256(description.encode()).hexdigest()[:10]


def _build() -> ModuleType | None:
    # PyTorch logs a warning about CUDA_HOME when it finds no CUDA (on import of
    # cpp_extension, and on building); a CPU kernel needs none.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    # Loading a kernel built before takes well under a second; say something only when
    # it is being compiled, which takes long enough to look like a hang.
    notice = threading.Timer(2.0, lambda: print(
        f"qmdd: compiling the native LSQ kernel (once per machine, about a minute; {NATIVE_ENV}=0 skips it)",
        file=sys.stderr, flush=True))
    notice.daemon = True
    notice.start()
    try:
        from torch.utils import cpp_extension

        # torch runs `ninja` from PATH: the one the ninja wheel installed may not be on it
        # (a virtual environment used without activating it).
        try:
            import ninja

            if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CUDA_HOME.*")
            return cpp_extension.load(
                name=f"qmdd_native_lsq_{_cpu_fingerprint()}",
                sources=[str(_SOURCE)],
                # Built for the CPU that runs it (its fingerprint is in the name), so
                # its own vector instructions (-march=native) are safe; -O3 vectorises.
                extra_cflags=["-O3", "-march=native"],
                verbose=False,
            )
    except Exception as error:  # a missing compiler or Ninja surfaces as many error types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"qmdd could not build its native LSQ kernel ({first_line}); training continues with the "
            f"Python kernels (same results, slower). Set {NATIVE_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    finally:
        notice.cancel()
        logger.setLevel(level)
