"""Grad-CAM (Selvaraju et al., ICCV 2017) for single-logit detectors, hook-based.

For the feature maps A^k (k = channels) of a target layer and the detector's score y (the
logit for "fake", or minus it for "real"):

    alpha_k = mean over positions of dy / dA^k          (global-average-pooled gradients)
    L       = ReLU(sum_k alpha_k A^k)                    (h x w), upsampled to the input

and each map is scaled to [0, 1] (minus its minimum, over its range, before upsampling), so
maps of different models compare on one scale.
The attention shift between two models (arXiv 2507.15636) is the Frobenius norm of the
difference of their normalised maps, ||L_a - L_b||_F, at the input resolution, averaged
over images.

Why not the ``grad-cam`` package (1.5.7): it handles qmdd's quantized and pruned layers
(they are ``nn.Conv2d`` subclasses) and these maps agree with its ``GradCAM`` with a raw
score target to 1e-6 (docs/lottery.md), but it imports opencv and matplotlib at import
time, two heavy dependencies for what is a forward hook and one ``torch.autograd.grad``
call here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GradCAM", "default_target_layer", "attention_shift"]

_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


@torch.no_grad()
def default_target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last module (in the order forward passes finish) whose output is a feature map.

    A feature map: a 4-D output with height and width above 1, from a module that is not a
    pooling layer. That is the whole last stage of a backbone (``layer4`` of a ResNet,
    ``features`` of MobileNet, MesoNet and CNN-5), the usual Grad-CAM choice.
    """
    finished: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name or isinstance(module, _POOLING):
            continue

        def record(module, inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1:
                finished.append(name)

        handles.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not finished:
        raise ValueError("the model has no layer with a spatial feature map; name one with layer=...")
    return finished[-1]


class GradCAM:
    """Grad-CAM maps of ``model`` at ``layer`` (a module name; None picks the last feature map).

    ``cam = GradCAM(model)(images)`` gives (N, H, W) maps in [0, 1] at the input size. The
    model runs in eval mode (BatchNorm running statistics, no dropout); its parameters get
    no gradients (only the feature maps are differentiated).
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        self.layer = layer
        if layer is not None:
            model.get_submodule(layer)  # fail early on a wrong name

    def __call__(self, images: torch.Tensor, target: str = "fake") -> torch.Tensor:
        if target not in ("fake", "real"):
            raise ValueError(f"target must be 'fake' or 'real', got {target!r}")
        if self.layer is None:
            self.layer = default_target_layer(self.model, images)
        captured: dict[str, torch.Tensor] = {}

        def keep(module, inputs, output):
            captured["maps"] = output
            # Successors that work in place (ReLU(inplace=True)) get a copy, so the captured
            # maps stay the layer's own output and autograd can differentiate them.
            return output.clone()

        handle = self.model.get_submodule(self.layer).register_forward_hook(keep)
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.enable_grad():
                logits = self.model(images).reshape(-1)
                score = logits if target == "fake" else -logits
                # Each image's score depends on its own maps only (eval mode), so the
                # gradient of the sum is every image's own gradient.
                (grads,) = torch.autograd.grad(score.sum(), captured["maps"])
        finally:
            handle.remove()
            self.model.train(was_training)
        maps = captured["maps"].detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
        # Min-max scaling per image at the feature map's resolution, then bilinear
        # upsampling (the grad-cam package's order): a flat map, which prefers no
        # position, becomes 0 rather than 1 everywhere; the 1e-7 guards 0 / 0.
        low = cam.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        high = cam.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        cam = (cam - low) / (high - low + 1e-7)
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        return cam.clamp(0.0, 1.0)


def attention_shift(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Per-image Frobenius norm ||L_a - L_b||_F of two (N, H, W) map batches.

    Maps of other sizes are resized (bilinear) to ``maps_a``'s size first. The value grows
    with the number of pixels (at most sqrt(H*W) for maps in [0, 1]); divide by sqrt(H*W)
    for a size-free root-mean-square difference.
    """
    if maps_a.dim() != 3 or maps_b.dim() != 3 or maps_a.shape[0] != maps_b.shape[0]:
        raise ValueError(f"need two (N, H, W) batches of the same N, got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}")
    if maps_b.shape[-2:] != maps_a.shape[-2:]:
        maps_b = F.interpolate(maps_b.unsqueeze(1), size=maps_a.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    return torch.linalg.matrix_norm(maps_a - maps_b, ord="fro")
