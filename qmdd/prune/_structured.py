"""Structured (channel) pruning over dependency groups, to a parameter budget.

A channel of a conv cannot go alone: the BatchNorm after it, the next conv's input, every
conv whose output is added to it in a residual sum, a depthwise conv's matching input and
group, and the classifier's input must lose the same channel. Torch-Pruning's
``DependencyGraph`` (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023)
traces the model once and hands out those *groups*; this module ranks the groups' channels,
chooses which go so that the network ends at a requested parameter count, and removes them.
The fixed input filter in front of the artifact-input backbones has no parameters and is
traced through; the classifier's single output is never pruned.

Importance (``slim.importance``; Molchanov et al., "Importance Estimation for Neural
Network Pruning", CVPR 2019, for the Taylor criterion):

* ``taylor``: ``sum |w * dL/dw|`` over all weights of the group that belong to the channel,
  with the BCE gradients of a few training batches (first-order Taylor estimate of the loss
  change when the channel is removed);
* ``magnitude``: the L2 norm of those weights.

Both are Torch-Pruning's group importances, normalised by their mean within each group so
that one ranking over all groups is meaningful (``slim.scope: global``); ``layer`` removes
the same share from every group instead.

The parameter count of a choice is computed in closed form (:func:`planned_parameters`)
from the widths each layer will have, so the budget is met without trying cuts; the
pruned model's own count is checked against that plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from qmdd.prune._mask import PruneError

__all__ = ["ChannelGroup", "channel_groups", "group_importance", "plan_removal", "planned_parameters", "remove_channels", "accumulate_taylor_gradients"]

try:  # optional extra "slim": only needed to prune, never to load a pruned model
    import torch_pruning as tp
except ImportError:  # pragma: no cover - exercised by the subprocess test
    tp = None

#: Layer types whose widths change; any other parameterised module stops the plan.
_RESIZED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


@dataclass
class ChannelGroup:
    """One dependency group: ``size`` channels that go together, and the layer widths they span.

    ``members`` are ``(module, "out" | "in")`` pairs: the dimension of each layer that loses
    the group's channels.
    """

    root: nn.Module
    handler: object
    size: int
    members: list[tuple[nn.Module, str]]
    name: str


def _require_library() -> None:
    if tp is None:
        raise PruneError("structured pruning needs Torch-Pruning: pip install 'qmdd[slim]' (or pip install torch-pruning)")


def _classifier(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PruneError("the model has no Linear classifier to keep whole")
    return linears[-1]


def _check_float(model: nn.Module) -> None:
    for name, module in model.named_modules():
        # Exact types: a quantized layer subclasses nn.Conv2d, and its quantizers hold steps.
        if any(True for _ in module.parameters(recurse=False)) and type(module) not in _RESIZED:
            raise PruneError(f"layer {name!r} ({type(module).__name__}) is not a float conv, linear or batch norm: prune the float model first, then quantize")


def channel_groups(model: nn.Module, example: torch.Tensor) -> tuple[object, list[ChannelGroup]]:
    """The dependency graph of ``model`` (traced on ``example``) and its prunable groups."""
    _require_library()
    _check_float(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {module: name for name, module in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=[_classifier(model)], root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep
        size = len(group[0].idxs)
        members = []
        for item in group:
            module = item.dep.target.module
            if isinstance(module, _RESIZED):
                if len(item.idxs) != size:
                    raise PruneError(f"layer {names.get(module)!r} maps the group's channels unevenly (a concat or flatten); not supported")
                dim = "in" if "in_channels" in item.dep.handler.__name__ else "out"
                members.append((module, dim))
        groups.append(ChannelGroup(root.target.module, root.handler, size, members, names.get(root.target.module, "?")))
    return graph, groups


def group_importance(graph: object, groups: list[ChannelGroup], kind: str) -> list[torch.Tensor]:
    """Per-channel importance of every group (mean 1 within a group, so groups compare)."""
    _require_library()
    criterion = tp.importance.GroupTaylorImportance() if kind == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    scores = []
    for group in groups:
        if kind == "taylor" and any(module.weight.grad is None for module, _ in group.members if not isinstance(module, nn.BatchNorm2d)):
            raise PruneError(f"no importance for group {group.name!r}: Taylor importance needs gradients (accumulate_taylor_gradients)")
        score = criterion(graph.get_pruning_group(group.root, group.handler, list(range(group.size))))
        scores.append(score.detach().float().cpu())
    return scores


def accumulate_taylor_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Gradients of the BCE loss summed over ``batches``, in eval mode (running statistics
    untouched), left in each parameter's ``.grad`` for :func:`group_importance`."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for images, labels in batches:
        logits = model(images).reshape(images.shape[0], -1)[:, 0]
        F.binary_cross_entropy_with_logits(logits, labels.float()).backward()


def _layer_parameters(module: nn.Module, removed: dict[tuple[int, str], int]) -> int:
    """Parameters of one conv / linear / batch norm once ``removed`` channels are gone."""
    out_cut, in_cut = removed.get((id(module), "out"), 0), removed.get((id(module), "in"), 0)
    if isinstance(module, nn.BatchNorm2d):
        return 2 * (module.num_features - out_cut) if module.affine else 0
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        out_features = module.out_features - out_cut
        return out_features * (module.in_features - in_cut) + bias * out_features
    out_channels = module.out_channels - out_cut
    kernel = math.prod(module.kernel_size)
    if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
        return out_channels * kernel + bias * out_channels  # depthwise: stays one filter per channel
    return out_channels * ((module.in_channels - in_cut) // module.groups) * kernel + bias * out_channels


def planned_parameters(model: nn.Module, groups: list[ChannelGroup], cuts: list[int]) -> int:
    """The parameter count of ``model`` after group ``i`` loses ``cuts[i]`` channels, in
    closed form from the widths every layer will have."""
    removed: dict[tuple[int, str], int] = {}
    for group, cut in zip(groups, cuts):
        for module, dim in {(id(m), d): (m, d) for m, d in group.members}.values():
            removed[(id(module), dim)] = removed.get((id(module), dim), 0) + cut
    total = 0
    for module in model.modules():
        if isinstance(module, _RESIZED):
            total += _layer_parameters(module, removed)
        else:
            total += sum(p.numel() for p in module.parameters(recurse=False))
    return total


def _smallest_passing(count, low: int, high: int, target: int) -> int:
    """The smallest k in [low, high] with count(k) <= target (count falls as k grows)."""
    while low < high:
        middle = (low + high) // 2
        if count(middle) <= target:
            high = middle
        else:
            low = middle + 1
    return low


def plan_removal(model: nn.Module, groups: list[ChannelGroup], scores: list[torch.Tensor], target: int, scope: str) -> tuple[list[list[int]], int]:
    """Which channels of each group go so that ``model`` has at most ``target`` parameters,
    removing as few as that allows; returns the indices per group and the planned count.

    ``global``: the channels with the lowest (group-normalised) importance over all groups;
    ``layer``: every group loses the same share of its channels. A group keeps at least one.
    """
    orders = [torch.argsort(score, stable=True) for score in scores]
    if scope == "global":
        keys = [(float(score[index]), g, rank) for g, (score, order) in enumerate(zip(scores, orders)) for rank, index in enumerate(order[:-1].tolist())]
        owner = torch.tensor([g for _, g, _ in sorted(keys)], dtype=torch.long)

        def cuts_for(k: int) -> list[int]:
            return torch.bincount(owner[:k], minlength=len(groups)).tolist()

        steps = len(owner)
    else:
        steps = 1000  # the shared share in steps of 0.1 %

        def cuts_for(k: int) -> list[int]:
            return [min(int(k / steps * group.size), group.size - 1) for group in groups]

    k = _smallest_passing(lambda k: planned_parameters(model, groups, cuts_for(k)), 0, steps, target)
    planned = planned_parameters(model, groups, cuts_for(k))
    if planned > target:
        raise PruneError(f"cannot bring the model to {target:,} parameters: even keeping one channel per group leaves {planned:,}")
    return [order[:cut].tolist() for order, cut in zip(orders, cuts_for(k))], planned


def remove_channels(graph: object, groups: list[ChannelGroup], removal: list[list[int]]) -> None:
    """Remove the chosen channels of every group from all the layers that share them."""
    for group, indices in zip(groups, removal):
        if indices:
            pruning_group = graph.get_pruning_group(group.root, group.handler, sorted(indices))
            pruning_group.prune()
