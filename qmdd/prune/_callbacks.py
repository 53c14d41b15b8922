"""Training callbacks that keep a mask and record rewind points, and the zero checks.

Order of pruning and quantization (docs/lottery.md): the mask acts on the stored float
weight, the weight quantizer then sees exact zeros, so a layer computes ``Q(W * M)``. That
equals ``Q(W) * M`` (pruned weights are exact zeros after quantization) only when the
quantizer maps 0 to 0: LSQ's signed grid ``[-2^(b-1), 2^(b-1) - 1] * s`` contains 0 (code
0), and SLR uses LSQ for weights, so both do. N2UQ's weight grid ``{-1 + 2k/(2^b - 1)} *
scale`` has no 0 at any bit width (at 2 bits: -1, -1/3, 1/3, 1), so a pruned weight would
come back as +-scale/3: :func:`check_quantizers_keep_zeros` refuses such layers before any
training, with the fix in the message.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from qmdd.config import FULL_PRECISION
from qmdd.prune._mask import Mask, PruneError, unwrap
from qmdd.training import Callback, Trainer
from qmdd.utils import atomic_write

__all__ = ["KeepPruned", "SaveStateAtStep", "check_quantizers_keep_zeros", "check_pruned_are_zero", "load_state_file"]

_STATE_FORMAT = "qmdd-rewind-state"


def _owner_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """``{weight parameter name: its layer}`` for the named ``<layer>.weight`` parameters."""
    return {name: model.get_submodule(name.rpartition(".")[0]) for name in names}


def _low_bit_quantizer(layer: nn.Module):
    quantizer = getattr(layer, "weight_quantizer", None)
    if quantizer is None or getattr(quantizer, "bits", FULL_PRECISION) >= FULL_PRECISION:
        return None
    return quantizer


@torch.no_grad()
def check_quantizers_keep_zeros(model: nn.Module, names: list[str]) -> None:
    """Raise :class:`PruneError` unless every named weight's quantizer maps 0 to exactly 0.

    Probes a copy of each low-bit weight quantizer with the layer's own weight, half of it
    zeroed (calibrating the copy first if needed), so it works before training and for any
    quantizer family without a table of known ones.
    """
    model = unwrap(model)
    refused = []
    for name, layer in _owner_layers(model, names).items():
        quantizer = _low_bit_quantizer(layer)
        if quantizer is None:
            continue
        probe = copy.deepcopy(quantizer)
        weight = layer.weight.detach().clone()
        pruned = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
        pruned[::2] = True
        pruned = pruned.reshape(weight.shape)
        weight[pruned] = 0.0
        if not probe.calibrated:
            probe.start_calibration()
            probe(weight)
            probe.finish_calibration()
        if bool((probe(weight)[pruned] != 0).any()):
            refused.append(f"{name} ({type(quantizer).__name__}, {quantizer.bits} bit)")
    if refused:
        raise PruneError(
            "these weight quantizers turn a pruned (zero) weight into a non-zero value, so a mask "
            f"cannot hold: {', '.join(refused)}. N2UQ's weight grid has no zero level; use "
            "--quantizer lsq or slr (LSQ weights, 0 is a level), or keep these layers dense with "
            "prune.ignore"
        )


@torch.no_grad()
def check_pruned_are_zero(model: nn.Module, mask: Mask) -> None:
    """Raise :class:`PruneError` if a pruned weight is non-zero, stored or after quantization."""
    model = unwrap(model)
    params = mask.parameters_of(model)
    for name, layer in _owner_layers(model, list(mask)).items():
        pruned = ~mask[name].to(params[name].device)
        if bool((params[name][pruned] != 0).any()):
            raise PruneError(f"{name}: a pruned weight is non-zero; the mask was not applied")
        quantizer = _low_bit_quantizer(layer)
        if quantizer is not None and quantizer.calibrated and bool((quantizer(params[name])[pruned] != 0).any()):
            raise PruneError(f"{name}: a pruned weight quantizes to a non-zero value ({type(quantizer).__name__})")


def save_state_file(path: Path, model: nn.Module, step: int) -> None:
    payload = {"format": _STATE_FORMAT, "step": step, "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state_file(path: Path) -> dict[str, Any]:
    """``{"step": K, "model": state_dict}`` written by :class:`SaveStateAtStep`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PruneError(f"{path} is not a readable rewind state: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != _STATE_FORMAT:
        raise PruneError(f"{path} is not a qmdd rewind state")
    return payload


class KeepPruned(Callback):
    """Train a pruned network: pruned weights are exact zeros at every forward pass.

    At the start of training (after ``run()`` calibrated the quantizers) it loads
    ``start_state`` into the model if given and the run is fresh (step 0: a resumed run
    continues from its own checkpoint instead), zeroes the pruned weights and checks that
    they quantize to 0. During training:

    * a gradient hook multiplies each masked weight's gradient by the mask, so Adam's
      moment estimates of pruned weights stay exactly 0 and its update for them is
      ``0 / (sqrt(0) + eps) = 0`` (also with L2 weight decay, whose term is ``wd * 0``);
    * after every optimizer step the mask is applied again, the guarantee that holds for
      any optimizer (momentum restored from elsewhere, decoupled decay, a custom loop).
    """

    def __init__(self, mask: Mask, start_state: Mapping[str, torch.Tensor] | None = None) -> None:
        self.mask = mask
        self.start_state = start_state
        self._handles: list[Any] = []
        self._params: dict[str, nn.Parameter] = {}
        self._keep: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        model = unwrap(trainer.model)
        if self.start_state is not None and trainer.state.step == 0:
            # In place (copy_), so the optimizer built by run() keeps the same Parameters.
            model.load_state_dict(self.start_state)
        self._params = self.mask.parameters_of(model)
        self._keep = {name: self.mask[name].to(p.device) for name, p in self._params.items()}
        self.mask.apply(model)
        check_pruned_are_zero(model, self.mask)
        self._remove_hooks()
        for name, param in self._params.items():
            keep = self._keep[name].to(param.dtype)
            self._handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        for name, param in self._params.items():
            param.masked_fill_(~self._keep[name], 0.0)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class SaveStateAtStep(Callback):
    """Save the model's state after ``step`` optimizer steps (0: before the first step).

    The rewind point of the lottery ticket: step 0 is the initialisation (after calibration,
    so quantizer steps are included), K > 0 is late rewinding (Frankle et al., ICML 2020).
    A resumed run does not overwrite a file that already exists.
    """

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, Path(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.step == 0 and trainer.state.step == 0 and not self.path.is_file():
            save_state_file(self.path, trainer.model, 0)

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.step > 0 and trainer.state.step == self.step:
            save_state_file(self.path, trainer.model, self.step)
