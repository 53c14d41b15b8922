"""Evaluation suites as data: which sets, where their images live, and the protocol.

A :class:`Suite` is a frozen registry entry. Adding a benchmark means adding one entry
(or writing a small YAML file, see :func:`load_suite_file`), never new loader code.

Layouts and protocols follow the published ones (Wang et al., CNNDetection, CVPR 2020;
Ojha et al., UniversalFakeDetect, CVPR 2023; Tan et al., NPR, CVPR 2024); docs/data.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "SuiteError",
    "SetSpec",
    "Protocol",
    "Suite",
    "register_suite",
    "get_suite",
    "list_suites",
    "load_suite_file",
    "resolve_suite_name",
    "EMBEDDED_ROOT",
]

#: ``Suite.default_root`` value meaning "the embedded benchmark in the qmdd cache".
EMBEDDED_ROOT = "embedded"


class SuiteError(ValueError):
    """A suite name, suite file or suite field is invalid."""


@dataclass(frozen=True)
class SetSpec:
    """One test set of a suite.

    Attributes:
        name: the row label in the table.
        path: folder of the set, relative to the suite's data folder (default: ``name``;
            matched case-insensitively, since repacked copies differ in case). Reals are
            every image under a ``0_real`` folder below it and fakes every image under a
            ``1_fake`` folder, at any depth, so per-class sub-folders
            (``progan/car/0_real``) need nothing special.
        shared_real: folder, relative to the data folder, whose ``0_real`` images are the
            reals of this set when the set has no ``0_real`` of its own
            (UniversalFakeDetect: ``laion``, or ``imagenet`` for guided). A set with its
            own ``0_real`` (the repacked layout) uses that instead.
    """

    name: str
    path: str | None = None
    shared_real: str | None = None

    @property
    def folder(self) -> str:
        return self.path or self.name


@dataclass(frozen=True)
class Protocol:
    """How images are prepared and sampled.

    Attributes:
        crop: centre crop in pixels (CNNDetection: 224, no resize). Images smaller than
            the crop are first resized up (shorter side) so every image yields a crop.
        resize: resize every image to ``resize x resize`` pixels before the crop (NPR
            style: 256, with ``crop: null``). None keeps native pixels, which keeps
            generator traces intact.
        from_checkpoint: take the crop (and the shorter-side ``load_size``) from the
            checkpoint's own ``config.data`` instead (the embedded benchmark, whose
            detectors train on small crops).
        max_per_class: keep at most this many real and this many fake images per set,
            after a seeded shuffle (UniversalFakeDetect: 1000). None keeps all.
        seed: seed of that shuffle. The same seed draws the same reals from a shared pool
            for every set, as the published protocol does.
    """

    crop: int | None = 224
    resize: int | None = None
    from_checkpoint: bool = False
    max_per_class: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.from_checkpoint and self.crop is None and self.resize is None:
            raise SuiteError("protocol needs crop or resize (or from_checkpoint): images of different sizes cannot be batched")
        for key in ("crop", "resize", "max_per_class"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SuiteError(f"protocol.{key}={value} must be >= 1 (or null)")
        if self.crop is not None and self.resize is not None and self.crop > self.resize:
            raise SuiteError(f"protocol.crop={self.crop} is larger than protocol.resize={self.resize}")

    def describe(self) -> str:
        if self.from_checkpoint:
            prep = "the checkpoint's own load_size/crop_size"
        elif self.resize is not None:
            prep = f"resize to {self.resize}x{self.resize}" + (f", centre crop {self.crop}" if self.crop else "")
        else:
            prep = f"centre crop {self.crop}, no resize"
        cap = f"; at most {self.max_per_class} real + {self.max_per_class} fake per set (seeded shuffle, seed {self.seed})" if self.max_per_class else ""
        return prep + cap


@dataclass(frozen=True)
class Suite:
    """A named list of test sets with one protocol.

    Attributes:
        name: registry key; also the report file stem and the TensorBoard tag prefix.
        description: one line for ``--list-suites`` and the report.
        sets: the sets, in table order. Empty with ``discover=True``: every sub-folder of
            the data folder (hidden ones aside) is a set, one without images reported
            ``empty`` (the embedded benchmark).
        protocol: see :class:`Protocol`.
        search: sub-folders of ``--data-root`` that may hold the sets, tried in order; the
            first that contains any expected set wins ("" is the root itself). Lets one
            suite accept the dataset root (``ROOT/test/progan``) or the unpacked archive
            (``CNN_synth_testset/progan``).
        discover: sets are the sub-folders found, not a fixed list.
        default_root: data root when ``--data-root`` is not given (``"embedded"``: the
            embedded benchmark cache).
    """

    name: str
    description: str
    sets: tuple[SetSpec, ...]
    protocol: Protocol = field(default_factory=Protocol)
    search: tuple[str, ...] = ("",)
    discover: bool = False
    default_root: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SuiteError("a suite needs a name")
        if not self.sets and not self.discover:
            raise SuiteError(f"suite {self.name!r} lists no sets (and does not discover them)")
        names = [s.name for s in self.sets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SuiteError(f"suite {self.name!r} lists set(s) {duplicates} twice")

    def with_protocol(self, **changes: Any) -> "Suite":
        return replace(self, protocol=replace(self.protocol, **changes))


_REGISTRY: dict[str, Suite] = {}


def register_suite(suite: Suite, *, overwrite: bool = False) -> Suite:
    if suite.name in _REGISTRY and not overwrite:
        raise SuiteError(f"suite {suite.name!r} is already registered")
    _REGISTRY[suite.name] = suite
    return suite


def list_suites() -> list[str]:
    return sorted(_REGISTRY)


def get_suite(name: str) -> Suite:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SuiteError(f"unknown suite {name!r}{hint}; available: {', '.join(list_suites())}, or a suite .yaml file")
    return _REGISTRY[name]


def _from_mapping(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise SuiteError(f"{where} must be a mapping, got {type(values).__name__}")
    names = [f.name for f in fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SuiteError(f"unknown key {where}.{key}{hint}; valid keys: {', '.join(names)}")
    return values


def load_suite_file(path: str | Path) -> Suite:
    """A custom suite from YAML, for example::

        name: my-gans
        description: two GANs, CNNDetection protocol
        protocol: {crop: 224, max_per_class: 500, seed: 0}
        search: [test, ""]
        sets:
          - progan                     # a plain name: the folder of the same name
          - {name: guided, path: guided, shared_real: imagenet}
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SuiteError(f"cannot read suite file {path}: not UTF-8 text (a binary file?)") from None
    except (OSError, yaml.YAMLError) as error:
        raise SuiteError(f"cannot read suite file {path}: {error}") from None
    raw = dict(_from_mapping(Suite, raw or {}, path.name))
    raw.setdefault("name", path.stem)
    raw.setdefault("description", f"custom suite from {path}")
    sets = []
    listed_sets = raw.get("sets") or []
    if not isinstance(listed_sets, list):
        raise SuiteError(f"{path.name}: sets must be a list of set names or mappings, got {listed_sets!r}")
    for index, item in enumerate(listed_sets):
        if isinstance(item, str):
            sets.append(SetSpec(name=item))
        elif not isinstance(item, dict):
            raise SuiteError(f"{path.name}: sets[{index}] must be a set name or a mapping, got {item!r}")
        else:
            values = _from_mapping(SetSpec, item, f"{path.name}: sets[{index}]")
            if "name" not in values:
                raise SuiteError(f"{path.name}: sets[{index}] needs a name")
            sets.append(SetSpec(**{k: (None if v is None else str(v)) for k, v in values.items()}))
    raw["sets"] = tuple(sets)
    protocol_values = dict(_from_mapping(Protocol, raw.get("protocol") or {}, f"{path.name}: protocol"))
    try:
        raw["protocol"] = Protocol(**protocol_values)
    except TypeError as error:
        raise SuiteError(f"{path.name}: protocol: {error}") from None
    search = raw.get("search", ("",))
    if not isinstance(search, (str, list, tuple)) or not all(isinstance(s, str) for s in ([search] if isinstance(search, str) else search)):
        raise SuiteError(f"{path.name}: search must be a folder name or a list of them, got {search!r}")
    raw["search"] = tuple([search] if isinstance(search, str) else search)
    return Suite(**raw)


def resolve_suite_name(name_or_path: str) -> Suite:
    """A registered suite by name, or a suite YAML file by path."""
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        return load_suite_file(name_or_path)
    return get_suite(name_or_path)


# --------------------------------------------------------------------------- built-ins

#: CNNDetection's test protocol: centre crop 224, no resize (Wang et al., CVPR 2020; docs/data.md).
CNNDETECTION_PROTOCOL = Protocol(crop=224)

_FORENSYNTHS_8 = ("progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "deepfake")
_FORENSYNTHS_13 = (*_FORENSYNTHS_8[:7], "crn", "imle", "seeingdark", "san", "whichfaceisreal", "deepfake")
_FORENSYNTHS_SEARCH = ("test", "CNN_synth_testset", "")

register_suite(Suite(
    name="forensynths",
    description="ForenSynths (CNNDetection) 8-GAN table: train on ProGAN, test on 8 GANs",
    sets=tuple(SetSpec(n) for n in _FORENSYNTHS_8),
    protocol=CNNDETECTION_PROTOCOL,
    search=_FORENSYNTHS_SEARCH,
))
register_suite(Suite(
    name="forensynths-all",
    description="ForenSynths (CNNDetection) all 13 test sets",
    sets=tuple(SetSpec(n) for n in _FORENSYNTHS_13),
    protocol=CNNDETECTION_PROTOCOL,
    search=_FORENSYNTHS_SEARCH,
))

# UniversalFakeDetect: fakes in <gen>/1_fake; reals shared: guided pairs with ImageNet,
# the LDM/Glide/DALL-E sets with LAION. 1k + 1k images per set after a seeded shuffle.
_UFD_SETS = (
    SetSpec("guided", shared_real="imagenet"),
    *(SetSpec(n, shared_real="laion") for n in ("ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27", "glide_50_27", "glide_100_10", "dalle")),
)
register_suite(Suite(
    name="universalfakedetect",
    description="UniversalFakeDetect diffusion sets (guided, LDM, Glide, DALL-E); shared real pools",
    sets=_UFD_SETS,
    protocol=Protocol(crop=224, max_per_class=1000, seed=0),
    search=("diffusion_datasets", "UniversalFakeDetect", ""),
))
register_suite(Suite(
    name="gangen",
    description="GANGen-Detection: 10 GANs, <gen>/{0_real,1_fake}",
    sets=tuple(SetSpec(n) for n in ("AttGAN", "BEGAN", "CramerGAN", "InfoMaxGAN", "MMDGAN", "RelGAN", "S3GAN", "SNGAN", "STGAN", "GANimation")),
    protocol=CNNDETECTION_PROTOCOL,
    search=("GANGen-Detection", ""),
))
register_suite(Suite(
    name="diffusionforensics",
    description="DiffusionForensics: 8 diffusion models, <gen>/{0_real,1_fake}",
    sets=tuple(SetSpec(n) for n in ("adm", "ddpm", "iddpm", "ldm", "pndm", "sdv1_new", "sdv2", "vqdiffusion")),
    protocol=CNNDETECTION_PROTOCOL,
    search=("DiffusionForensics", ""),
))
register_suite(Suite(
    name="embedded",
    description="the embedded benchmark's test families (every folder of test/), at the checkpoint's own crop",
    sets=(),
    protocol=Protocol(crop=None, from_checkpoint=True),
    search=("test",),
    discover=True,
    default_root=EMBEDDED_ROOT,
))

# FaceForensics++ face crops (Rossler et al., ICCV 2019), as data_scripts/faceforensics.py
# extracts them: <split>/<method>/1_fake and one real pool <split>/original/0_real, so each
# manipulation's AP and accuracy are against the same real videos. Scored at the
# checkpoint's own crop, as python -m qmdd.video scores faces; crop names keep their video
# (qmdd.video.crop_name), so the script also pools the scores into a video-level AUC.
FACEFORENSICS_METHODS = ("Deepfakes", "Face2Face", "FaceShifter", "FaceSwap", "NeuralTextures")
register_suite(Suite(
    name="faceforensics",
    description="FaceForensics++ face crops: per-manipulation accuracy and AP against the original videos' faces",
    sets=tuple(SetSpec(n, shared_real="original") for n in FACEFORENSICS_METHODS),
    protocol=Protocol(crop=None, from_checkpoint=True),
    search=("test", ""),
))
