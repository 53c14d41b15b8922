"""Detector backbones, by registry name.

>>> from qmdd.models import create_model, list_models
>>> list_models("resnet*")
['resnet18', 'resnet34', 'resnet50']
"""

from qmdd.models._registry import create_model, list_models, register_model
from qmdd.models import _torchvision  # noqa: F401  (registers the torchvision backbones)
from qmdd.models._small import CNN5, MesoNet  # registers mesonet and cnn5 (docs/lottery.md)
from qmdd.models._torchvision import single_logit_head
from qmdd.models._cqb import ShortcutConv2d, connect_blocks, is_connected

__all__ = ["create_model", "list_models", "register_model", "single_logit_head", "connect_blocks", "is_connected", "ShortcutConv2d", "MesoNet", "CNN5"]
