"""The training loop, its callbacks, and ``run(config)``.

The detector factory (``build_detector``, ``load_detector``) is :mod:`qmdd.detector`, the
checkpoint format :mod:`qmdd.checkpoint` and the run-folder layout :mod:`qmdd.run_folder`:
all of them sit below this package, which only uses them.
"""

from qmdd.training._callbacks import Checkpointer, PlateauLRSchedule, TensorBoardLogger
from qmdd.training._loop import Callback, EpochShuffleSampler, LossFn, Trainer, TrainState, bce_loss, predict
from qmdd.training._run import RunError, RunSession, evaluate, fit, prepare, resolve_device, run, write_results

__all__ = [
    "Callback",
    "Checkpointer",
    "PlateauLRSchedule",
    "TensorBoardLogger",
    "EpochShuffleSampler",
    "LossFn",
    "Trainer",
    "TrainState",
    "bce_loss",
    "predict",
    "RunError",
    "RunSession",
    "prepare",
    "fit",
    "evaluate",
    "write_results",
    "resolve_device",
    "run",
]
