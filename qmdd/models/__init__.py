"""Detector backbones, by registry name, and the input filters in front of them.

Plain float models only: quantization (Connected Quantized Blocks included) is
:mod:`qmdd.quant`'s, which models never import.

>>> from qmdd.models import create_model, list_models
>>> list_models("resnet*")
['resnet18', 'resnet34', 'resnet50']
>>> model = create_model("trunc_resnet18")          # high-pass input filter by default
"""

from qmdd.models._filters import FILTERS, DWTHighHighFilter, FilteredBackbone, HighPassFilter, InputFilter, NPRFilter, filter_grid, list_input_filters, make_input_filter
from qmdd.models._registry import create_model, crop_alignment, default_input_filter, list_models, register_model, resolved_input_filter
from qmdd.models import _torchvision  # noqa: F401  (registers the torchvision backbones)
from qmdd.models._small import CNN5, MesoNet  # registers mesonet and cnn5 (docs/lottery.md)
from qmdd.models._artifact import ArtifactResNet  # registers npr_resnet50 and trunc_resnet18
from qmdd.models import _efficientnet  # noqa: F401  (registers efficientnet_b0 and efficientnet_lite0)
from qmdd.models._shapes import ShapeError, apply_layer_shapes, layer_shapes
from qmdd.models._torchvision import single_logit_head

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "default_input_filter",
    "resolved_input_filter",
    "crop_alignment",
    "filter_grid",
    "single_logit_head",
    "layer_shapes",
    "apply_layer_shapes",
    "ShapeError",
    "MesoNet",
    "CNN5",
    "ArtifactResNet",
    "InputFilter",
    "NPRFilter",
    "DWTHighHighFilter",
    "HighPassFilter",
    "FilteredBackbone",
    "FILTERS",
    "list_input_filters",
    "make_input_filter",
]
