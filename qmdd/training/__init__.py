"""The training loop, its callbacks, checkpoints, and ``run(config)``."""

from qmdd.training._callbacks import BEST_CHECKPOINT, LAST_CHECKPOINT, Checkpointer, EarlyStopping, TensorBoardLogger
from qmdd.training._loop import Callback, EpochShuffleSampler, LossFn, Trainer, TrainState, bce_loss, predict
from qmdd.training._run import CONFIG_FILE, METRICS_FILE, RunError, default_out_dir, resolve_device, run
from qmdd.training.checkpoint import CheckpointError, LoadedDetector, build_detector, checkpoint_threshold, load_checkpoint, load_detector, resolve_model_defaults, save_checkpoint

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "CONFIG_FILE",
    "METRICS_FILE",
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "TensorBoardLogger",
    "EpochShuffleSampler",
    "LossFn",
    "Trainer",
    "TrainState",
    "bce_loss",
    "predict",
    "RunError",
    "default_out_dir",
    "resolve_device",
    "run",
    "CheckpointError",
    "build_detector",
    "load_checkpoint",
    "load_detector",
    "LoadedDetector",
    "checkpoint_threshold",
    "resolve_model_defaults",
    "save_checkpoint",
]
