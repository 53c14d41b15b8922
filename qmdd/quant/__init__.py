"""Fake quantization: quantizers, quantized layers, and the ``quantize`` verb.

Typical use::

    from qmdd.config import QuantConfig
    from qmdd.quant import quantize, calibrate

    model = quantize(model, QuantConfig(bits=2))      # swap conv/linear layers
    calibrate(model, [first_batch])                   # initialise steps from data
    optimizer = torch.optim.Adam(model.parameters())  # steps are Parameters too
"""

from qmdd.quant._base import ActivationQuantizer, FullPrecision, NotCalibratedError, Quantizer, signed_range, unsigned_range
from qmdd.quant._layers import QUANTIZED_LAYERS, QConv2d, QLinear
from qmdd.quant._lsq import LSQActivationQuantizer, LSQWeightQuantizer, lsq_fake_quant
from qmdd.quant._n2uq import N2UQActivationQuantizer, N2UQWeightQuantizer, n2uq_fake_quant, n2uq_thresholds
from qmdd.quant._registry import QuantizerFamily, configure_quantizers, get_quantizer, list_quantizers, register_quantizer
from qmdd.quant._slr import SLRActivationQuantizer, slr_fake_quant, slr_levels
from qmdd.quant._transform import LayerPrecision, calibrate, is_quantized, plan_precision, quantize, quantized_layers

__all__ = [
    "Quantizer",
    "ActivationQuantizer",
    "FullPrecision",
    "NotCalibratedError",
    "QConv2d",
    "QLinear",
    "QUANTIZED_LAYERS",
    "LSQWeightQuantizer",
    "LSQActivationQuantizer",
    "lsq_fake_quant",
    "signed_range",
    "unsigned_range",
    "N2UQActivationQuantizer",
    "N2UQWeightQuantizer",
    "n2uq_fake_quant",
    "n2uq_thresholds",
    "SLRActivationQuantizer",
    "slr_fake_quant",
    "slr_levels",
    "QuantizerFamily",
    "configure_quantizers",
    "register_quantizer",
    "get_quantizer",
    "list_quantizers",
    "LayerPrecision",
    "plan_precision",
    "quantize",
    "calibrate",
    "quantized_layers",
    "is_quantized",
]
