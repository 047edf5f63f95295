"""Service attributes, parsed once into immutable, typed objects.

Every check names the attribute and the offending value, so that a bad machine
config is rejected at validation with a message a user can act on. The same
parser reads a model's own description (its sidecar JSON or ONNX metadata),
which uses the same keys, so that precedence is simply attribute > model > default.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional

from .paths import BUNDLED_MODEL, MODULE_ROOT


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the attribute."""


class Head(str, Enum):
    """How raw model outputs become confidences.

    AUTO: use the outputs as they are when the graph already ends in Softmax or
    Sigmoid or when they already form a probability distribution; otherwise softmax.
    """

    AUTO = "auto"
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


class Resize(str, Enum):
    STRETCH = "stretch"
    CENTER_CROP = "center_crop"
    LETTERBOX = "letterbox"


class Interpolation(str, Enum):
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"


class ChannelOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


@dataclass(frozen=True)
class Preprocessing:
    """What one source (attributes, sidecar, metadata, defaults) says about preprocessing; None means silent."""

    input_size: Optional[tuple[int, int]] = None
    resize: Optional[Resize] = None
    crop_fraction: Optional[float] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    channel_order: Optional[ChannelOrder] = None
    interpolation: Optional[Interpolation] = None

    def over(self, fallback: Preprocessing) -> Preprocessing:
        """This source's values where it has them, the fallback's elsewhere."""
        return Preprocessing(
            **{f.name: v if (v := getattr(self, f.name)) is not None else getattr(fallback, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class ModelDescription:
    """What a model file's sidecar JSON or ONNX metadata says about it."""

    preprocessing: Preprocessing = Preprocessing()
    head: Optional[Head] = None
    labels: Optional[tuple[str, ...]] = None
    labels_path: Optional[Path] = None
    labels_source: Optional[str] = None  # where `labels` came from, for messages; None: the description's keys


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that decides how a model is loaded and fed; equal configs can share one loaded model."""

    model_path: Path
    labels_path: Optional[Path] = None
    output_name: Optional[str] = None
    head: Optional[Head] = None  # None: the model description's, else AUTO
    preprocessing: Preprocessing = Preprocessing()
    exact_preprocessing: bool = False
    num_threads: Optional[int] = None


@dataclass(frozen=True)
class ServiceConfig:
    classifier: ClassifierConfig
    confidence_threshold: float = 0.0
    camera_name: Optional[str] = None
    camera_names: tuple[str, ...] = ()

    @property
    def cameras(self) -> tuple[str, ...]:
        """Every configured camera, the default first, each once."""
        names = ((self.camera_name,) if self.camera_name else ()) + self.camera_names
        return tuple(dict.fromkeys(names))


PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))
SERVICE_KEYS = (
    "model_path",
    "labels_path",
    "output_name",
    "head",
    "confidence_threshold",
    "camera_name",
    "camera_names",
    "exact_preprocessing",
    "num_threads",
) + PREPROCESSING_KEYS
DESCRIPTION_KEYS = ("labels_path", "labels", "head") + PREPROCESSING_KEYS


class _Reader:
    """Typed access to one mapping of raw values, with errors that name the key and where it came from."""

    def __init__(self, values: Mapping[str, Any], source: str, known: tuple[str, ...]):
        self.values = values
        self.source = source
        unknown = [k for k in values if k not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys are: {', '.join(known)}"
            raise ConfigError(f"{source} {key!r} is not recognized{hint}")

    def fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.source} {key!r} must be {expected}, got {self.values[key]!r}")

    def present(self, key: str) -> bool:
        return self.values.get(key) is not None

    def string(self, key: str) -> Optional[str]:
        if not self.present(key):
            return None
        value = self.values[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string")
        return value.strip()

    def boolean(self, key: str) -> Optional[bool]:
        if not self.present(key):
            return None
        value = self.values[key]
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def number(self, key: str, low: float, high: float, *, low_open: bool = False) -> Optional[float]:
        if not self.present(key):
            return None
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a number")
        if value > high or value < low or (low_open and value == low):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise self.fail(key, f"in {interval}")
        return float(value)

    def integer(self, key: str, low: int) -> Optional[int]:
        if not self.present(key):
            return None
        value = self.values[key]
        # protobuf Structs carry every number as a double, so 4.0 is an integer here.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
            raise self.fail(key, f"an integer >= {low}")
        return int(value)

    def choice(self, key: str, enum: type[Enum]) -> Optional[Any]:
        if not self.present(key):
            return None
        value = self.values[key]
        for member in enum:
            if isinstance(value, str) and value.lower() == member.value.lower():
                return member
        raise self.fail(key, "one of " + ", ".join(repr(m.value) for m in enum))

    def numbers(self, key: str, lengths: tuple[int, ...], *, positive: bool = False) -> Optional[tuple[float, ...]]:
        if not self.present(key):
            return None
        value = self.values[key]
        expected = f"a list of {' or '.join(map(str, lengths))} {'positive ' if positive else ''}numbers"
        if not isinstance(value, (list, tuple)) or len(value) not in lengths:
            raise self.fail(key, expected)
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
                raise self.fail(key, expected)
        return tuple(float(v) for v in value)

    def strings(self, key: str) -> Optional[tuple[str, ...]]:
        if not self.present(key):
            return None
        value = self.values[key]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, "a list of non-empty strings")
        return tuple(v.strip() for v in value)

    def path(self, key: str, base: Path, *, in_folder: Optional[str] = None) -> Optional[Path]:
        """A file; with `in_folder`, a folder may be named instead and stands for that file in it."""
        text = self.string(key)
        if text is None:
            return None
        path = Path(os.path.expanduser(text))
        path = path if path.is_absolute() else base / path
        if in_folder is not None and path.is_dir():
            if not (path / in_folder).is_file():
                raise ConfigError(f"{self.source} {key!r}: folder {str(path)!r} has no {in_folder}")
            path = path / in_folder
        if not path.is_file():
            raise ConfigError(f"{self.source} {key!r}: no such file: {str(path)!r}")
        return path

    def preprocessing(self) -> Preprocessing:
        size = self.numbers("input_size", (2,), positive=True)
        if size is not None and any(v != int(v) for v in size):
            raise self.fail("input_size", "[height, width] in whole pixels")
        return Preprocessing(
            input_size=None if size is None else (int(size[0]), int(size[1])),
            resize=self.choice("resize", Resize),
            crop_fraction=self.number("crop_fraction", 0.0, 1.0, low_open=True),
            mean=self.numbers("mean", (1, 3)),
            std=self.numbers("std", (1, 3), positive=True),
            channel_order=self.choice("channel_order", ChannelOrder),
            interpolation=self.choice("interpolation", Interpolation),
        )


def parse_service_config(attributes: Mapping[str, Any]) -> ServiceConfig:
    """Parse a service's attributes (already converted from the protobuf Struct)."""
    r = _Reader(attributes, "attribute", SERVICE_KEYS)
    camera_name = r.string("camera_name")
    camera_names = r.strings("camera_names") or ()
    classifier = ClassifierConfig(
        # A folder is a Hugging Face export (optimum-cli export onnx), whose model is model.onnx.
        model_path=r.path("model_path", MODULE_ROOT, in_folder="model.onnx") or BUNDLED_MODEL,
        labels_path=r.path("labels_path", MODULE_ROOT),
        output_name=r.string("output_name"),
        head=r.choice("head", Head),
        preprocessing=r.preprocessing(),
        exact_preprocessing=bool(r.boolean("exact_preprocessing")),
        num_threads=r.integer("num_threads", 1),
    )
    threshold = r.number("confidence_threshold", 0.0, 1.0)
    return ServiceConfig(
        classifier=classifier,
        confidence_threshold=threshold or 0.0,
        camera_name=camera_name,
        camera_names=camera_names,
    )


def parse_model_description(values: Mapping[str, Any], source: str, base: Path) -> ModelDescription:
    """Parse a model's own description: its sidecar JSON (paths relative to it) or its ONNX metadata."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must be a JSON object, got {type(values).__name__}")
    r = _Reader(values, f"{source} key", DESCRIPTION_KEYS)
    return ModelDescription(
        preprocessing=r.preprocessing(),
        head=r.choice("head", Head),
        labels=r.strings("labels"),
        labels_path=r.path("labels_path", base),
    )
