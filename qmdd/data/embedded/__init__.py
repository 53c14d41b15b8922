"""The embedded benchmark: shipped real photos + procedural generator families, on disk in
the ForenSynths layout, so the same loaders, training and evaluation run without downloads.

Public API::

    from qmdd.data.embedded import build_embedded_benchmark, generate_fake, FAMILIES, SEEN_FAMILY
    root = build_embedded_benchmark()           # cached under ${QMDD_CACHE:-~/.cache/qmdd}/embedded/
    other = build_embedded_variant("transposed_conv")   # the same benchmark, trained on another family
    fake = generate_fake("transposed_conv", image_uint8_hwc, np.random.default_rng(0))

Command line::

    python -m qmdd.data.embedded --out /tmp/embedded             # build into a folder
    python -m qmdd.data.embedded --out /tmp/embedded --baselines # + histogram AP, spectral-probe AUC

Families, split, sizes, baselines and photo licences: docs/benchmark.md.
"""

from qmdd.data.embedded._baselines import histogram_baseline_ap, spectral_probe, spectral_probe_auc
from qmdd.data.embedded._builder import (
    EMBEDDED_VERSION,
    FAMILIES,
    SEEN_FAMILY,
    build_embedded_benchmark,
    build_embedded_variant,
    cache_key,
    default_cache_dir,
)
from qmdd.data.embedded._families import CONTROL_REGISTRY, FAMILY_REGISTRY, apply_control, generate_fake
from qmdd.data.embedded._photos import PHOTO_SPLITS

__all__ = [
    "EMBEDDED_VERSION",
    "SEEN_FAMILY",
    "FAMILIES",
    "FAMILY_REGISTRY",
    "CONTROL_REGISTRY",
    "PHOTO_SPLITS",
    "build_embedded_benchmark",
    "build_embedded_variant",
    "generate_fake",
    "apply_control",
    "cache_key",
    "default_cache_dir",
    "histogram_baseline_ap",
    "spectral_probe",
    "spectral_probe_auc",
]
