"""Native (C++) fake-quantization kernels, compiled on first use.

Fake quantization does a few flops per element, so on the CPU its cost is memory passes
and operator calls: the LSQ chain of ``_lsq.py`` makes five passes forward and four
backward over an activation, each a separate PyTorch operator, and the fused Python forms
of SLR and N2UQ still run some twenty operators per block. ``native/`` does the same
arithmetic in one pass each way per family (``lsq.h``, ``n2uq.h``, ``slr.h``; SLR's log
a short series, with torch's own ``log1p`` redoing any block where the two could round
differently, and its exp a lookup: it is only ever taken at the 2^b codes). Forward
values and input gradients are bit for bit those of the Python forms; parameter-gradient
sums are accumulated in double over fixed chunks (the same on any thread count), so they
match to float rounding. Measured in docs/performance.md.

The kernels are compiled by :func:`torch.utils.cpp_extension.load` (Ninja and the system
C++ compiler) the first time a process needs them, about a minute, and cached by PyTorch
under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) for later
processes, one build per CPU model and source version. Tracing and compilation
(TorchScript, ONNX export of the fake-quant model, ``torch.compile``) always see the
Python forms. Where the kernels cannot be built (no compiler), qmdd says so once and keeps
the Python forms, which give the same results. ``QMDD_NATIVE_KERNELS=0`` skips the build.
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

__all__ = ["NATIVE_ENV", "native_kernels", "native_applies", "kernels_in_use"]

#: Environment variable: "0" keeps the Python chains and never compiles.
NATIVE_ENV = "QMDD_NATIVE_KERNELS"

_SOURCE_DIR = Path(__file__).with_name("native")
_SOURCE = _SOURCE_DIR / "kernels.cpp"  # includes the family headers: one translation unit
_state: dict[str, ModuleType | None] = {}
_build_lock = threading.Lock()


def native_applies(x: torch.Tensor) -> bool:
    """The kernels take contiguous float32 CPU tensors, outside tracing and compilation
    (TorchScript, ONNX export and ``torch.compile`` see the Python chain, which they can
    trace; an FX proxy is not a tensor); anything else keeps the chain."""
    if not isinstance(x, torch.Tensor) or torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


def native_kernels() -> ModuleType | None:
    """The compiled kernels, or None (disabled, or the build failed: said once)."""
    if "kernels" not in _state:
        with _build_lock:
            if "kernels" not in _state:
                _state["kernels"] = _build() if os.environ.get(NATIVE_ENV, "1") != "0" else None
    return _state["kernels"]


def kernels_in_use() -> str | None:
    """"native" or "python" once this process has run fake quantization on the CPU, else
    None (recorded with a run: the two forms' parameter gradients differ in the last bits,
    so a run resumed under the other one is not bit-identical)."""
    if "kernels" not in _state:
        return None
    return "native" if _state["kernels"] is not None else "python"


def _build_fingerprint() -> str:
    """A short hash of this CPU's model and instruction-set flags and of the kernel
    sources: the kernels are built with -march=native, so a build cache shared between
    machines (a network home, an image) must not hand one CPU's build to another, and a
    build of older sources (PyTorch's cache tracks ``kernels.cpp``, not the headers it
    includes) must not be loaded for newer ones."""
    description = platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        description += "".join(sorted(set(lines)))
    except OSError:
        description += platform.processor()
    digest = hashlib.sha256(description.encode())
    for source in sorted(_SOURCE_DIR.iterdir()):
        if source.suffix in (".cpp", ".h"):
            digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:10]


def _build() -> ModuleType | None:
    # PyTorch logs a warning about CUDA_HOME when it finds no CUDA (on import of
    # cpp_extension, and on building); a CPU kernel needs none.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    # Loading a kernel built before takes well under a second; say something only when
    # it is being compiled, which takes long enough to look like a hang.
    notice = threading.Timer(2.0, lambda: print(
        f"qmdd: compiling the native fake-quantization kernels (once per machine, about a minute; {NATIVE_ENV}=0 skips it)",
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
                name=f"qmdd_native_{_build_fingerprint()}",
                sources=[str(_SOURCE)],
                # Built for the CPU that runs it (its fingerprint is in the name), so
                # its own vector instructions (-march=native) are safe; -O3 vectorises,
                # and may turn branches into selects when told floating-point operations
                # do not trap (which changes no value); no fused multiply-adds that the
                # Python forms do not make (bit-exact values).
                extra_cflags=["-O3", "-march=native", "-fno-trapping-math", "-ffp-contract=off"],
                verbose=False,
            )
    except Exception as error:  # a missing compiler or Ninja surfaces as many error types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"qmdd could not build its native fake-quantization kernels ({first_line}); training continues "
            f"with the Python forms (same results, slower). Set {NATIVE_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    finally:
        notice.cancel()
        logger.setLevel(level)
