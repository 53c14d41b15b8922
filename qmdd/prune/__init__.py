"""Lottery tickets: masks, magnitude pruning, IMP and one-shot drivers, ticket transfer;
and structured (channel) pruning over dependency groups (``python -m qmdd.slim``).

Typical use (``python -m qmdd.lth`` does all of it; docs/lottery.md)::

    from qmdd.prune import Mask, prune_level, KeepPruned

    mask = Mask.dense(model, config.prune)                      # level 0: keep everything
    mask = prune_level(trained_state, mask, 0.2, "global")      # drop 20% of the survivors
    run(config, callbacks=(KeepPruned(mask, start_state),))     # retrain, zeros stay zeros

Masks are data keyed by parameter name; the model keeps its own layers, and a pruned
weight is an exact zero in its ``weight`` (so checkpoints, evaluation, cost counters and
the ``.qmdd`` export read pruned models unchanged). Folder and file names of an
experiment are :mod:`qmdd.run_folder`'s.
"""

from qmdd.prune._callbacks import KeepPruned, SaveStateAtStep, check_pruned_are_zero, check_quantizers_keep_zeros, load_state_file
from qmdd.prune._lottery import collect_rows, format_rows, level_config, run_lottery, summarise, train_level
from qmdd.prune._magnitude import planned_counts, planned_unpruned, prune_level, prune_to_level, random_mask_like
from qmdd.prune._mask import Mask, PruneError, prunable_parameters
from qmdd.prune._slim import PRUNED_CHECKPOINT, PRUNED_CONFIG, SLIM_FILE, format_slim, prune_channels, pruned_config, run_slim
from qmdd.prune._structured import ChannelGroup, accumulate_taylor_gradients, channel_groups, group_importance, plan_removal, planned_parameters, remove_channels
from qmdd.prune._transfer import family_training_root, format_transfer, run_transfer

__all__ = [
    "Mask",
    "PruneError",
    "prunable_parameters",
    "planned_unpruned",
    "planned_counts",
    "prune_level",
    "prune_to_level",
    "random_mask_like",
    "KeepPruned",
    "SaveStateAtStep",
    "check_pruned_are_zero",
    "check_quantizers_keep_zeros",
    "load_state_file",
    "run_lottery",
    "run_transfer",
    "family_training_root",
    "summarise",
    "collect_rows",
    "format_rows",
    "format_transfer",
    "level_config",
    "train_level",
    "prune_channels",
    "pruned_config",
    "run_slim",
    "format_slim",
    "SLIM_FILE",
    "PRUNED_CHECKPOINT",
    "PRUNED_CONFIG",
    "ChannelGroup",
    "channel_groups",
    "group_importance",
    "plan_removal",
    "planned_parameters",
    "remove_channels",
    "accumulate_taylor_gradients",
]
