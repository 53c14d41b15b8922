"""Grad-CAM for detectors (dense, pruned or quantized alike), overlays, attention shift.

>>> from qmdd.gradcam import GradCAM, attention_shift
>>> maps = GradCAM(model)(images)                 # (N, H, W) in [0, 1], evidence for "fake"
>>> attention_shift(maps, GradCAM(pruned)(images)).mean()   # ||L_a - L_b||_F over images

``python -m qmdd.explain`` writes the overlays; docs/lottery.md shows them.
"""

from qmdd.gradcam._gradcam import GradCAM, attention_shift, default_target_layer
from qmdd.gradcam._overlay import heat_colours, overlay, to_uint8_image

__all__ = ["GradCAM", "attention_shift", "default_target_layer", "heat_colours", "overlay", "to_uint8_image"]
