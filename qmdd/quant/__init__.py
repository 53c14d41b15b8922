"""Fake quantization: quantizers, quantized layers, and the ``quantize`` verb.

Typical use::

    from qmdd.config import QuantConfig
    from qmdd.quant import quantize, calibrate

    model = quantize(model, QuantConfig(bits=2, quantizer="slr", block="cqb", slr_shift_init=0.5))
    calibrate(model, [first_batch])                   # initialise steps from data
    optimizer = torch.optim.Adam(model.parameters())  # steps are Parameters too

``quantize`` applies the whole config: the block form, the bit widths of every layer, the
quantizer family and that family's options. Each family also says how its quantizers map
to integers (``Quantizer.weight_codes``, ``Quantizer.uniform_grid``, ``Quantizer.level_table``), which the packed
file, the int8 path and the cost counters ask for instead of naming a family.
"""

from qmdd.quant._base import SUPPORTED_BITS, ActivationQuantizer, FullPrecision, NotCalibratedError, Quantizer, LevelTable, UniformGrid, WeightCodes, signed_range, unsigned_range
from qmdd.quant._cqb import BLOCKS, ShortcutConv2d, connect_blocks, has_connectable_blocks, is_connected
from qmdd.quant._fuse import DeferredClamp, fuse_activation_clamps, unfuse_activation_clamps
from qmdd.quant._layers import QUANTIZED_LAYERS, QUANTIZER_ATTRIBUTES, QConv2d, QLinear
from qmdd.quant._lsq import LSQ_MIN_STEP, LSQActivationQuantizer, LSQWeightQuantizer, lsq_fake_quant
from qmdd.quant._n2uq import N2UQActivationQuantizer, N2UQWeightQuantizer, n2uq_fake_quant, n2uq_thresholds
from qmdd.quant._registry import N2UQOptions, QuantizerFamily, SLROptions, get_quantizer, list_quantizers, register_quantizer
from qmdd.quant._slr import SLRActivationQuantizer, slr_fake_quant, slr_levels
from qmdd.quant._transform import LayerPrecision, calibrate, is_quantized, plan_precision, quantize, quantized_layers

__all__ = [
    "SUPPORTED_BITS",
    "BLOCKS",
    "connect_blocks",
    "has_connectable_blocks",
    "is_connected",
    "ShortcutConv2d",
    "DeferredClamp",
    "fuse_activation_clamps",
    "unfuse_activation_clamps",
    "WeightCodes",
    "UniformGrid",
    "LevelTable",
    "QUANTIZER_ATTRIBUTES",
    "LSQ_MIN_STEP",
    "N2UQOptions",
    "SLROptions",
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
