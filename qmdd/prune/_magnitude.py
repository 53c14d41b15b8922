"""Magnitude pruning as pure functions: ``(weights, mask, ...) -> Mask``.

The rule (Frankle & Carbin, ICLR 2019; open_lth; arXiv 2507.15636):

* one IMP level removes ``ceil(fraction * remaining)`` of the remaining prunable weights,
  those of smallest magnitude |w| among the survivors, either with one threshold over all
  prunable weights (``global``) or separately in every layer (``layer``);
* after ``k`` levels a set of ``n`` weights therefore keeps ``planned_unpruned(n, f, k)``
  (``n`` minus the ceil-rounded removals, level after level), about ``(1 - f)^k * n``;
* one-shot pruning keeps the same count in one step from the dense weights, so IMP level
  ``k`` and one-shot level ``k`` have exactly the same sparsity.

Ties at the threshold are broken by position (the earlier weight in the flattened order
of the mask goes first), so masks hold exactly the planned counts, and are reproducible.
Magnitudes are those of the float weights a layer stores (for a quantized layer, the
latent weights its quantizer rounds), not of their quantized values, which tie in only
2^b levels.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from qmdd.prune._mask import Mask, PruneError

__all__ = ["planned_unpruned", "planned_counts", "prune_level", "prune_to_level", "random_mask_like"]


def planned_unpruned(count: int, fraction: float, level: int) -> int:
    """Weights left of ``count`` after ``level`` levels removing ``ceil(fraction * remaining)``."""
    if not 0.0 < fraction < 1.0 or level < 0 or count < 0:
        raise ValueError(f"need 0 < fraction < 1, level >= 0 and count >= 0; got {fraction}, {level}, {count}")
    for _ in range(level):
        count -= math.ceil(fraction * count)
    return count


def planned_counts(dense: Mask, fraction: float, level: int, scope: str) -> dict[str, int] | int:
    """The plan of level ``level``: one global count, or ``{layer: count}`` for ``layer`` scope."""
    if scope == "global":
        return planned_unpruned(dense.total, fraction, level)
    return {name: planned_unpruned(total, fraction, level) for name, (total, _) in dense.layer_counts().items()}


def _check(weights: Mapping[str, torch.Tensor], mask: Mask) -> None:
    for name in mask:
        if name not in weights:
            raise PruneError(f"no weights given for masked parameter {name!r}")
        if weights[name].shape != mask[name].shape:
            raise PruneError(f"weights {name!r} have shape {list(weights[name].shape)}, the mask {list(mask[name].shape)}")


def _keep_largest(weights: Mapping[str, torch.Tensor], mask: Mask, names: list[str], keep: int) -> dict[str, torch.Tensor]:
    """New masks of ``names``: the ``keep`` largest |w| among their current survivors."""
    flat_keep = torch.cat([mask[name].reshape(-1) for name in names])
    scores = torch.cat([weights[name].detach().to("cpu", torch.float32).abs().reshape(-1) for name in names])
    survivors = flat_keep.nonzero().squeeze(1)
    if not 0 <= keep <= survivors.numel():
        raise PruneError(f"cannot keep {keep} weights of {survivors.numel()} survivors")
    # Stable ascending sort: among equal magnitudes the earlier position is removed first.
    order = torch.sort(scores[survivors], stable=True).indices
    removed = survivors[order[: survivors.numel() - keep]]
    flat_keep = flat_keep.clone()
    flat_keep[removed] = False
    result, start = {}, 0
    for name in names:
        size = mask[name].numel()
        result[name] = flat_keep[start : start + size].reshape(mask[name].shape)
        start += size
    return result


def prune_level(weights: Mapping[str, torch.Tensor], mask: Mask, fraction: float, scope: str) -> Mask:
    """One IMP level: drop ``ceil(fraction * remaining)`` smallest surviving weights.

    ``weights``: the trained weights of the previous level, by parameter name (a state dict
    works); ``mask``: the previous level's mask. Pure: neither argument is modified.
    """
    _check(weights, mask)
    names = list(mask)
    if scope == "global":
        remaining = mask.unpruned
        return Mask(_keep_largest(weights, mask, names, remaining - math.ceil(fraction * remaining)))
    if scope == "layer":
        keep = {}
        for name in names:
            remaining = int(mask[name].sum())
            keep.update(_keep_largest(weights, mask, [name], remaining - math.ceil(fraction * remaining)))
        return Mask(keep)
    raise PruneError(f"unknown pruning scope {scope!r}; choose global or layer")


def prune_to_level(weights: Mapping[str, torch.Tensor], dense: Mask, fraction: float, level: int, scope: str) -> Mask:
    """One-shot: from ``dense`` straight to the sparsity IMP reaches after ``level`` levels."""
    _check(weights, dense)
    plan = planned_counts(dense, fraction, level, scope)
    if isinstance(plan, int):
        return Mask(_keep_largest(weights, dense, list(dense), plan))
    keep = {}
    for name, count in plan.items():
        keep.update(_keep_largest(weights, dense, [name], count))
    return Mask(keep)


def random_mask_like(mask: Mask, seed: int) -> Mask:
    """A random mask with the same number of survivors as ``mask`` in every layer.

    The control of the lottery-ticket experiments: same per-layer sparsity, positions drawn
    uniformly (seeded, so reproducible), independent of any weight.
    """
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for name, tensor in mask.items():
        count = int(tensor.sum())
        flat = torch.zeros(tensor.numel(), dtype=torch.bool)
        flat[torch.randperm(tensor.numel(), generator=generator)[:count]] = True
        keep[name] = flat.reshape(tensor.shape)
    return Mask(keep)
