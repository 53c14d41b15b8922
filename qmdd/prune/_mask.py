"""Pruning masks: validated data keyed by parameter name, and what they report.

A :class:`Mask` holds one boolean tensor per prunable weight (``True`` = the weight
survives), keyed by the parameter's name in ``model.named_parameters()`` (e.g.
``features.0.0.weight``). It is plain data: the model keeps its ordinary layers and state
dict keys, and a pruned weight is an exact zero in ``weight`` (:meth:`Mask.apply`), so
checkpoints, ``qmdd.eval``, ``qmdd.report``, ``qmdd.export`` and Grad-CAM read pruned
models unchanged. ``torch.nn.utils.prune`` would instead rename ``weight`` to
``weight_orig`` plus a ``weight_mask`` buffer, which every loader would then need to know.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from qmdd.config import PruneConfig
from qmdd.utils import atomic_write

__all__ = ["Mask", "PruneError", "prunable_parameters", "unwrap"]

_MASK_FORMAT = "qmdd-mask"


class PruneError(ValueError):
    """A mask does not fit a model, or a model cannot be pruned as asked."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself, or the model inside a DistributedDataParallel-style wrapper."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def prunable_parameters(model: nn.Module, config: PruneConfig) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` of the conv/linear layers ``config`` lets us prune.

    A layer is prunable when its module name matches a ``prune.prunable`` pattern and no
    ``prune.ignore`` pattern. Quantized layers (``QConv2d``/``QLinear``) and CQB's
    full-precision shortcut convs count, as they are ``nn.Conv2d``/``nn.Linear``.
    """
    model = unwrap(model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    chosen = {
        f"{name}.weight": module.weight
        for name, module in layers
        if any(fnmatch.fnmatchcase(name, p) for p in config.prunable)
        and not any(fnmatch.fnmatchcase(name, p) for p in config.ignore)
    }
    if not chosen:
        raise PruneError(
            f"prune.prunable={list(config.prunable)} with prune.ignore={list(config.ignore)} selects "
            f"no conv/linear layer; the layers are: {', '.join(name for name, _ in layers)}"
        )
    return chosen


class Mask:
    """Which weights survive: ``{parameter name: bool tensor of the weight's shape}``."""

    def __init__(self, keep: Mapping[str, torch.Tensor]) -> None:
        if not keep:
            raise PruneError("a mask needs at least one tensor")
        tensors = {}
        for name, value in keep.items():
            if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
                raise PruneError(f"mask entry {name!r} must be a bool tensor, got {getattr(value, 'dtype', type(value))}")
            tensors[name] = value.detach().to("cpu")
        self._keep = tensors

    # -- construction -------------------------------------------------------------------
    @classmethod
    def dense(cls, model: nn.Module, config: PruneConfig) -> "Mask":
        """Every prunable weight kept (level 0)."""
        return cls({name: torch.ones_like(w, dtype=torch.bool, device="cpu") for name, w in prunable_parameters(model, config).items()})

    @classmethod
    def load(cls, path: str | Path) -> "Mask":
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # missing, truncated or not a torch file
            raise PruneError(f"{path} is not a readable mask file: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != _MASK_FORMAT:
            raise PruneError(f"{path} is not a qmdd mask file (no '{_MASK_FORMAT}' header)")
        return cls(payload["keep"])

    def save(self, path: str | Path) -> None:
        """Write atomically, ``torch.load(weights_only=True)``-safe."""
        payload = {"format": _MASK_FORMAT, "keep": self._keep}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    # -- access ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._keep[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keep)

    def __len__(self) -> int:
        return len(self._keep)

    def items(self):
        return self._keep.items()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or list(self) != list(other):
            return False
        return all(torch.equal(self[name], other[name]) for name in self)

    @property
    def total(self) -> int:
        """Prunable weights."""
        return sum(keep.numel() for keep in self._keep.values())

    @property
    def unpruned(self) -> int:
        """Prunable weights that survive."""
        return sum(int(keep.sum()) for keep in self._keep.values())

    @property
    def sparsity(self) -> float:
        """Pruned share of the prunable weights, in [0, 1]."""
        return 1.0 - self.unpruned / self.total

    def layer_counts(self) -> dict[str, tuple[int, int]]:
        """``{name: (total, unpruned)}``."""
        return {name: (keep.numel(), int(keep.sum())) for name, keep in self._keep.items()}

    # -- use on a model ---------------------------------------------------------------------
    def parameters_of(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The model's Parameters this mask covers, checked by name and shape."""
        params = dict(unwrap(model).named_parameters())
        missing = [name for name in self._keep if name not in params]
        if missing:
            raise PruneError(
                f"mask names {len(missing)} parameter(s) the model lacks, e.g. {missing[0]!r}: "
                "it was made for another architecture"
            )
        for name, keep in self._keep.items():
            if params[name].shape != keep.shape:
                raise PruneError(f"mask {name!r} has shape {list(keep.shape)}, the weight {list(params[name].shape)}")
        return {name: params[name] for name in self._keep}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Set every pruned weight of ``model`` to exactly 0, in place."""
        for name, param in self.parameters_of(model).items():
            param.masked_fill_(~self._keep[name].to(param.device), 0.0)

    def report(self, model: nn.Module | None = None) -> dict[str, Any]:
        """The sparsity report: total and unpruned weights, overall and per layer.

        With ``model``, each entry also counts the weights that are actually non-zero in it
        (at most ``unpruned``; fewer only if a surviving weight is exactly 0).
        """
        params = self.parameters_of(model) if model is not None else {}
        layers = {}
        for name, (total, unpruned) in self.layer_counts().items():
            entry: dict[str, Any] = {"total": total, "unpruned": unpruned, "sparsity": 1.0 - unpruned / total}
            if name in params:
                entry["nonzero"] = int(torch.count_nonzero(params[name].detach()))
            layers[name] = entry
        report: dict[str, Any] = {"total": self.total, "unpruned": self.unpruned, "sparsity": self.sparsity}
        if params:
            report["nonzero"] = sum(entry["nonzero"] for entry in layers.values())
        report["layers"] = layers
        return report
