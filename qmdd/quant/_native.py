"""Native (C++) fake-quantization kernels, compiled on first use.

Fake quantization does a few flops per element, so on the CPU its cost is memory passes:
the LSQ chain of ``_lsq.py`` makes five passes forward and four backward over an
activation, each a separate PyTorch operator. ``native/lsq.cpp`` does the same arithmetic
in one pass each way (the backward recomputes the inside-the-range mask from ``x`` instead
of storing it): 3.4x less time for forward + backward of a 16x96x56x56 activation on one
thread (docs/performance.md). Forward values and input gradients are bit for bit those of
the chain; the step gradient's sum is accumulated in double, so it matches to float
rounding.

The kernel is compiled by :func:`torch.utils.cpp_extension.load` (Ninja and the system
C++ compiler) the first time a process needs it, about a minute, and cached by PyTorch
under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) for later
processes. Where it cannot be built (no compiler), qmdd says so once and keeps the Python
chain, which gives the same results. ``QMDD_NATIVE_KERNELS=0`` skips the build.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["NATIVE_ENV", "native_lsq", "native_applies"]

#: Environment variable: "0" keeps the Python chains and never compiles.
NATIVE_ENV = "QMDD_NATIVE_KERNELS"

_SOURCE = Path(__file__).with_name("native") / "lsq.cpp"
_state: dict[str, ModuleType | None] = {}


def native_applies(x: torch.Tensor) -> bool:
    """The kernels take contiguous float32 CPU tensors; anything else keeps the chain."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


def native_lsq() -> ModuleType | None:
    """The compiled LSQ kernels, or None (disabled, or the build failed: said once)."""
    if "lsq" not in _state:
        _state["lsq"] = _build() if os.environ.get(NATIVE_ENV, "1") != "0" else None
    return _state["lsq"]


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

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(
                name="qmdd_native_lsq",
                sources=[str(_SOURCE)],
                # Built on the machine that runs it, so its own vector instructions
                # (-march=native) are safe; -O3 vectorises the loops.
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
