"""qmdd: low-bit quantization-aware training of deepfake image detectors.

The package is organised by concern:

- :mod:`qmdd.quant`    fake-quantized layers, quantizers and the ``quantize`` verb;
- :mod:`qmdd.models`   the backbone registry (torchvision ResNet and MobileNet, one logit);
- :mod:`qmdd.data`     ForenSynths-layout loaders, CNNDetection transforms, the embedded benchmark;
- :mod:`qmdd.metrics`  AP and accuracies as the field reports them;
- :mod:`qmdd.training` the closed training loop, its callbacks and checkpoints;
- :mod:`qmdd.config`   typed, validated run configuration.

Entry point: ``python -m qmdd.train --bits 2``.
"""

__version__ = "0.1.0"
