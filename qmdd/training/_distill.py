"""Distillation from a frozen full-precision teacher, and QAT initialised from FP32 weights.

The usual low-bit recipe (N2UQ, Liu et al. CVPR 2022; ReActNet, Liu et al. ECCV 2020): train a full-precision model,
then fine-tune the low-bit one from its weights (``train.init``) against its outputs
(``train.teacher``).

Loss for a single-logit detector, with student logit z_s, teacher logit z_t, label y,
temperature T and weight alpha::

    soft = T^2 * BCE(sigmoid(z_s / T), sigmoid(z_t / T))
    hard = BCE(sigmoid(z_s), y)
    loss = alpha * soft + (1 - alpha) * hard

The soft term is Hinton et al.'s (2015) tempered cross-entropy for a two-class softmax,
which for one logit is the Bernoulli BCE against the teacher's tempered probability; it
differs from the KL divergence only by the teacher's entropy, a constant, so the gradients
are the KL ones. The T^2 factor keeps the soft gradients' size independent of T (Hinton et
al.: the gradient of the tempered term scales as 1/T^2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from qmdd.checkpoint import load_checkpoint, stored_config
from qmdd.detector import load_detector
from qmdd.quant import QUANTIZER_ATTRIBUTES

__all__ = ["DistillationLoss", "distillation_loss", "load_teacher", "init_state_dict"]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * T^2 * BCE(sigmoid(z_s/T), sigmoid(z_t/T)) + (1 - alpha) * BCE(z_s, y)."""
    soft_targets = torch.sigmoid(teacher_logits.detach() / temperature)
    soft = F.binary_cross_entropy_with_logits(student_logits / temperature, soft_targets) * temperature**2
    hard = F.binary_cross_entropy_with_logits(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


class DistillationLoss:
    """A ``LossFn`` (``loss_fn(model, images, labels)``) that distils from ``teacher``.

    The teacher is frozen: eval mode (BatchNorm uses its running statistics), no
    gradients, never handed to the optimizer, and not saved in the student's checkpoints
    (a resumed run reloads it from ``train.teacher``).
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.alpha = alpha
        self.temperature = temperature

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The loop may switch modules to train mode; the teacher stays in eval mode.
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(images).squeeze(1)
        student_logits = model(images).squeeze(1)
        return distillation_loss(student_logits, teacher_logits, labels, self.alpha, self.temperature)


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The frozen detector of a qmdd checkpoint (usually the FP32 run's ``best.pt``)."""
    teacher = load_detector(path, map_location=device).model
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def _is_quantizer_key(key: str) -> bool:
    return any(f"{name}." in key for name in QUANTIZER_ATTRIBUTES)


def init_state_dict(path: str | Path, arch: str, float_keys: dict[str, torch.Size]) -> dict[str, Any]:
    """The float weights of checkpoint ``path``, checked against a float model's keys.

    ``float_keys`` maps each parameter/buffer name of the (CQB-transformed, not yet
    quantized) model to its shape. Quantizer entries of a quantized checkpoint are dropped
    (the new run calibrates its own); everything else must match exactly, else a
    ``ValueError`` names the differences.
    """
    payload = load_checkpoint(path)
    source_arch = stored_config(payload, path).model.arch
    if source_arch != arch:
        raise ValueError(f"train.init={str(path)!r} holds a {source_arch} model, but this run trains {arch}")
    state = {k: v for k, v in payload["model"].items() if not _is_quantizer_key(k)}
    missing = sorted(set(float_keys) - set(state))
    unexpected = sorted(set(state) - set(float_keys))
    mismatched = sorted(k for k in set(state) & set(float_keys) if tuple(state[k].shape) != tuple(float_keys[k]))
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(f"train.init={str(path)!r} does not fit this model ({'; '.join(parts)})")
    return state
