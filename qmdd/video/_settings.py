"""The typed, validated settings of the video pipeline: one frozen dataclass, YAML-loadable."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from qmdd.config import ConfigError, suggest

__all__ = ["VideoSettings", "VideoSettingsError", "FACE_FINDERS", "SAMPLING", "RULES", "load_settings", "settings_to_dict", "describe_settings"]

#: Face finders: OpenCV's frontal-face Haar cascades shipped inside opencv-python(-headless)
#: (``cv2.data.haarcascades``); docs/video.md compares them.
FACE_FINDERS = ("haar_default", "haar_alt", "haar_alt2", "haar_alt_tree")
#: ``every``: frames 0, N, 2N, ...; ``random``: K distinct frames drawn with a seed.
SAMPLING = ("every", "random")
#: ``share``: fake when the share of face frames above the threshold reaches ``fake_share``;
#: ``mean``: fake when the mean face-frame score is above the threshold.
RULES = ("share", "mean")


class VideoSettingsError(ConfigError):
    """A video setting is unknown or its value is invalid."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class VideoSettings:
    sampling: str = _help("every (one frame every `every_n`) or random (`num_frames` frames drawn with `seed`)", default="every")
    every_n: int = _help("with sampling=every: keep frames 0, N, 2N, ... (FF++ practice for real videos: 30)", default=30)
    num_frames: int = _help("with sampling=random: how many distinct frames (FF++ practice for fake videos: 10)", default=10)
    seed: int = _help("seed of the random frame draw", default=0)
    max_frames: int | None = _help("score at most this many sampled frames (the first ones); null = all", default=None)
    face_finder: str = _help("OpenCV frontal-face cascade: " + ", ".join(FACE_FINDERS) + " (alt2: fewest misses and false faces in benchmarks/face_finders.py)", default="haar_alt2")
    scale_factor: float = _help("cascade image-pyramid step, > 1 (smaller finds more faces, slower)", default=1.1)
    min_neighbors: int = _help("cascade: overlapping hits a face needs (higher: fewer false faces)", default=5)
    min_face: int = _help("smallest face side searched, in pixels", default=40)
    margin: float = _help("grow the face box by this fraction of its side on every side, then clip to the frame (0.15: the 1.3x crop of FaceForensics++)", default=0.15)
    rule: str = _help("video verdict: share (share of face frames above the threshold) or mean (mean score)", default="share")
    fake_share: float = _help("with rule=share: fake when at least this share of face frames is above the threshold", default=0.5)
    threshold: float | None = _help("frame threshold on the fake probability; null = the detector's stored threshold", default=None)
    batch_size: int = _help("face crops per forward pass", default=32)

    def __post_init__(self) -> None:
        _check_choice("sampling", self.sampling, SAMPLING)
        _check_choice("face_finder", self.face_finder, FACE_FINDERS)
        _check_choice("rule", self.rule, RULES)
        for key in ("every_n", "num_frames", "min_neighbors", "min_face", "batch_size"):
            if getattr(self, key) < 1:
                raise VideoSettingsError(f"{key}={getattr(self, key)} must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise VideoSettingsError(f"max_frames={self.max_frames} must be >= 1 (or null for all)")
        if not self.scale_factor > 1.0:
            raise VideoSettingsError(f"scale_factor={self.scale_factor} must be > 1 (the pyramid must shrink)")
        if not 0.0 <= self.margin <= 2.0:
            raise VideoSettingsError(f"margin={self.margin} must be in [0, 2] (a fraction of the face side)")
        for key in ("fake_share", "threshold"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise VideoSettingsError(f"{key}={value} must be a probability in [0, 1]")


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise VideoSettingsError(f"{key}={value!r} is unknown{suggest(value, choices)}; choose one of {', '.join(choices)}")


def _convert(key: str, value: Any, annotation: Any) -> Any:
    """A YAML or command-line value as the field's type, or a VideoSettingsError naming the key."""
    args = typing.get_args(annotation)
    if args:  # ``X | None``
        return None if value is None or value == "null" else _convert(key, value, next(a for a in args if a is not type(None)))
    if value is None:
        raise VideoSettingsError(f"{key} may not be null")
    if isinstance(value, bool) or (annotation is str and not isinstance(value, str)):
        raise VideoSettingsError(f"{key} must be a {annotation.__name__}, got {value!r}")
    try:
        number = annotation(value)
    except (TypeError, ValueError):
        raise VideoSettingsError(f"{key} must be a {annotation.__name__}, got {value!r}") from None
    if annotation is int and isinstance(value, float) and value != number:
        raise VideoSettingsError(f"{key} must be an integer, got {value!r}")
    if annotation is float and not math.isfinite(number):
        raise VideoSettingsError(f"{key} must be a finite number, got {value!r}")
    return number


def _from_mapping(values: Mapping[str, Any], where: str) -> VideoSettings:
    hints = typing.get_type_hints(VideoSettings)
    names = [f.name for f in dataclasses.fields(VideoSettings)]
    for key in values:
        if key not in names:
            raise VideoSettingsError(f"unknown video setting {key!r} in {where}{suggest(str(key), names)}; valid keys: {', '.join(names)}")
    return VideoSettings(**{key: _convert(key, value, hints[key]) for key, value in values.items()})


def load_settings(path: str | Path | None = None, overrides: Sequence[str] = ()) -> VideoSettings:
    """Settings from a flat YAML file (or the defaults), then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise VideoSettingsError(f"cannot read video settings file {path}: {getattr(error, 'strerror', None) or error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise VideoSettingsError(f"video settings file {path} must be a mapping of key: value, got {type(loaded).__name__}")
        values.update(loaded or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise VideoSettingsError(f"override {item!r} must look like key=value, e.g. every_n=15")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            values[key.strip()] = raw
    return _from_mapping(values, str(path) if path is not None else "the overrides")


def settings_to_dict(settings: VideoSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def describe_settings() -> str:
    """One line per setting with its default and meaning (for ``--help``)."""
    return "\n".join(f"  {f.name} (default {f.default!r}): {f.metadata['help']}" for f in dataclasses.fields(VideoSettings))
