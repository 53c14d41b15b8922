"""qmdd: low-bit quantization-aware training of deepfake image detectors.

The package is organised by concern (docs/architecture.md draws who imports whom):

- :mod:`qmdd.config`      typed, validated run configuration (no torch);
- :mod:`qmdd.models`      backbones by name, artifact-input detectors, input filters;
- :mod:`qmdd.quant`       quantizers, quantized layers, Connected Quantized Blocks, the ``quantize`` verb;
- :mod:`qmdd.detector`    the detector factory: config or checkpoint to model;
- :mod:`qmdd.checkpoint`  the checkpoint file format;
- :mod:`qmdd.run_folder`  the names of every file and folder a run writes;
- :mod:`qmdd.data`        ForenSynths-layout loaders, transforms, the embedded benchmark;
- :mod:`qmdd.metrics`     AP and accuracies as the field reports them;
- :mod:`qmdd.cost`        MACs, BOPs, OPs and storage counters;
- :mod:`qmdd.training`    the closed training loop, its callbacks, ``run(config)``;
- :mod:`qmdd.evaluation`  evaluation suites, the runner and its reports;
- :mod:`qmdd.deploy`      the packed ``.qmdd`` file and the int8 CPU path;
- :mod:`qmdd.prune`       lottery tickets: masks, IMP, one-shot, transfer;
- :mod:`qmdd.gradcam`     Grad-CAM maps and the attention shift.

Entry points (``python -m qmdd.<verb>``): ``train``, ``eval``, ``report``, ``export``,
``predict``, ``lth``, ``explain``, and ``data.embedded``.
"""

__version__ = "0.1.0"
