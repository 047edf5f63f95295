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
import re
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

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


class CropRounding(str, Enum):
    """How a centre crop's fractional pixels become whole ones (the resized long side and the crop
    offset): rounded, or truncated as Hugging Face image processors do. One pixel, but it moves
    every confidence of a sensitive model by up to a few hundredths."""

    ROUND = "round"
    FLOOR = "floor"


class ChannelOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


@dataclass(frozen=True)
class Preprocessing:
    """What one source (attributes, sidecar, metadata, defaults) says about preprocessing; None means silent."""

    input_size: Optional[tuple[int, int]] = None
    resize: Optional[Resize] = None
    crop_fraction: Optional[float] = None
    crop_rounding: Optional[CropRounding] = None
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
    warnings: tuple[str, ...] = ()  # keys that were ignored, and why


DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_CAMERA_TIMEOUT_S = 5.0
DEFAULT_MLMODEL_TIMEOUT_S = 10.0
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# Every frame in the window keeps a confidence per class (8 KB for 1,000 classes): bounded per camera.
MAX_SMOOTHING_WINDOW = 1000


@dataclass(frozen=True)
class Region:
    """A part of the frame in fractions of its width and height, 0..1 from the top left."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The region's box in whole pixels of a width x height frame, at least one pixel each way."""
        left, top = min(width - 1, round(self.x_min * width)), min(height - 1, round(self.y_min * height))
        right, bottom = max(left + 1, round(self.x_max * width)), max(top + 1, round(self.y_max * height))
        return left, top, right, bottom

    def as_list(self) -> list[float]:
        return [self.x_min, self.y_min, self.x_max, self.y_max]


@dataclass(frozen=True)
class OnnxFile:
    """An ONNX file that onnxruntime runs in this process, and how it runs it."""

    path: Path
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    strict_providers: bool = False
    num_threads: Optional[int] = None  # None: the cores available to the process

    def describe(self) -> str:
        """The model's source in words, for messages."""
        return f"model_path {str(self.path)!r}"


@dataclass(frozen=True)
class MLModelService:
    """A Viam ML model service (`rdk:service:mlmodel`) that runs the model; this module only feeds it
    tensors and reads its scores. A remote part's service is named `remote:name`."""

    name: str
    timeout_s: float = DEFAULT_MLMODEL_TIMEOUT_S

    def describe(self) -> str:
        """The model's source in words, for messages."""
        return f"ML model service {self.name!r}"

    @property
    def dependency(self) -> str:
        # Fully qualified, so that a camera of the same name cannot make it ambiguous.
        return f"rdk:service:mlmodel/{self.name}"


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that decides how a model is loaded and fed; equal configs can share one loaded model."""

    source: Union[OnnxFile, MLModelService]
    labels_path: Optional[Path] = None
    input_name: Optional[str] = None  # the image input, where the model has several (None: the only one)
    output_name: Optional[str] = None  # the class scores, where the model has several outputs
    head: Optional[Head] = None  # None: the model description's, else AUTO
    preprocessing: Preprocessing = Preprocessing()
    exact_preprocessing: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class LabelRules:
    """Which labels may be reported and the confidence each needs; names are checked against the model's labels."""

    confidence_threshold: float = 0.0
    label_confidences: tuple[tuple[str, float], ...] = ()
    allowed_labels: Optional[tuple[str, ...]] = None
    blocked_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceConfig:
    classifier: ClassifierConfig
    labels: LabelRules = LabelRules()
    camera_name: Optional[str] = None
    camera_names: tuple[str, ...] = ()
    camera_timeout_s: float = DEFAULT_CAMERA_TIMEOUT_S
    region: Optional[Region] = None
    regions_by_camera: tuple[tuple[str, Region], ...] = ()
    smoothing_window: int = 1
    label_hold_frames: int = 1
    warnings: tuple[str, ...] = ()  # attributes that were ignored, and why

    @property
    def confidence_threshold(self) -> float:
        return self.labels.confidence_threshold

    @property
    def cameras(self) -> tuple[str, ...]:
        """Every configured camera, the default first, each once."""
        names = ((self.camera_name,) if self.camera_name else ()) + self.camera_names
        return tuple(dict.fromkeys(names))

    @property
    def dependencies(self) -> tuple[str, ...]:
        """What viam-server must build before this service: its cameras and its ML model service."""
        source = self.classifier.source
        return self.cameras + ((source.dependency,) if isinstance(source, MLModelService) else ())

    def region_for(self, camera: Optional[str]) -> Optional[Region]:
        """The camera's own region, else the service's."""
        return dict(self.regions_by_camera).get(camera, self.region) if camera else self.region

    def summary(self) -> dict[str, Any]:
        """The service's settings as JSON values: the "service" part of do_command "info" and of the CLI's
        --info. A setting that is not set is left out rather than None: do_command results travel as a
        protobuf Struct, and the Python SDK turns None into 0 on the way."""
        rules = self.labels
        values = {
            "cameras": list(self.cameras),
            "default_camera": self.camera_name,
            "camera_timeout_s": self.camera_timeout_s,
            "region": None if self.region is None else self.region.as_list(),
            "regions_by_camera": {camera: region.as_list() for camera, region in self.regions_by_camera},
            "smoothing_window": self.smoothing_window,
            "label_hold_frames": self.label_hold_frames,
            "confidence_threshold": rules.confidence_threshold,
            "label_confidences": dict(rules.label_confidences),
            "allowed_labels": None if rules.allowed_labels is None else list(rules.allowed_labels),
            "blocked_labels": list(rules.blocked_labels),
        }
        return {key: value for key, value in values.items() if value is not None}


PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))
# Attributes that configure onnxruntime, which does not run the model when an ML model service does.
ONNX_FILE_KEYS = ("model_path", "providers", "strict_providers", "num_threads")
# Viam's built-in `mlmodel` vision service's names for settings this module has too, so that its
# configs can be moved over as they are: alias -> this module's name.
BUILTIN_ALIASES = {
    "label_path": "labels_path",
    "input_image_mean_value": "mean",
    "input_image_std_dev": "std",
    "input_image_bgr": "channel_order",
    "default_minimum_confidence": "confidence_threshold",
    "remap_input_names": "input_name",
    "remap_output_names": "output_name",
}
# What the built-in service calls the image input and the class scores in its remap attributes.
BUILTIN_INPUT_NAME = "image"
BUILTIN_OUTPUT_NAME = "probability"
SERVICE_KEYS = (
    "model_path",
    "mlmodel_name",
    "mlmodel_timeout_s",
    "labels_path",
    "input_name",
    "output_name",
    "head",
    "confidence_threshold",
    "camera_name",
    "camera_names",
    "exact_preprocessing",
    "num_threads",
    "max_image_pixels",
    "providers",
    "strict_providers",
    "camera_timeout_s",
    "region",
    "regions_by_camera",
    "smoothing_window",
    "label_hold_frames",
    "label_confidences",
    "allowed_labels",
    "blocked_labels",
) + PREPROCESSING_KEYS + tuple(BUILTIN_ALIASES)
DESCRIPTION_KEYS = ("labels_path", "labels", "head") + PREPROCESSING_KEYS
# $NAME or ${NAME}, as os.path.expandvars reads them.
ENVIRONMENT_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)


class _Reader:
    """Typed access to one mapping of raw values, with errors that name the key and where it came from."""

    def __init__(self, values: Mapping[str, Any], source: str, known: tuple[str, ...], aliases: Optional[Mapping[str, str]] = None):
        self.values = values
        self.source = source
        self.aliases = {name: alias for alias, name in (aliases or {}).items()}
        self.unknown = [
            f"{source} {key!r} is not recognized{did_you_mean(key, known, 'keys')} (ignored)" for key in values if key not in known
        ]

    def key(self, name: str) -> str:
        """The key the values use for setting `name`: its own, or its alias (never both)."""
        alias = self.aliases.get(name)
        if alias is None or not self.present(alias):
            return name
        if self.present(name):
            raise ConfigError(
                f"{self.source}s {name!r} and {alias!r} (the built-in mlmodel vision service's name) are the same "
                "setting: set one of them"
            )
        return alias

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

    def integer(self, key: str, low: int, high: Optional[int] = None) -> Optional[int]:
        if not self.present(key):
            return None
        value = self.values[key]
        # protobuf Structs carry every number as a double, so 4.0 is an integer here.
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value != int(value)
            or value < low
            or (high is not None and value > high)
        ):
            raise self.fail(key, f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")
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
        """A file, after `~` and environment variables (`$VIAM_MODULE_DATA/m.onnx`) are expanded, relative
        to `base` unless absolute; with `in_folder`, a folder may be named instead and stands for that file in it."""
        text = self.string(key)
        if text is None:
            return None
        # os.path.expandvars would leave an unset variable in the path, to fail later as a missing file.
        names = [reference.strip("{}") for reference in ENVIRONMENT_VARIABLE.findall(text)]
        unset = [name for name in names if name not in os.environ]
        if unset:
            raise ConfigError(
                f"{self.source} {key!r}: environment variable ${unset[0]} is not set (in {text!r})"
            )
        path = Path(os.path.expandvars(os.path.expanduser(text)))
        path = path if path.is_absolute() else base / path
        if in_folder is not None and path.is_dir():
            if not (path / in_folder).is_file():
                raise ConfigError(f"{self.source} {key!r}: folder {str(path)!r} has no {in_folder}")
            path = path / in_folder
        if not path.is_file():
            raise ConfigError(f"{self.source} {key!r}: no such file: {str(path)!r}")
        return path

    def mapping(self, key: str) -> Optional[Mapping[str, Any]]:
        if not self.present(key):
            return None
        value = self.values[key]
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and k.strip() for k in value):
            raise self.fail(key, "an object keyed by name")
        return value

    def region(self, key: str) -> Optional[Region]:
        return parse_region(self.values[key], f"{self.source} {key!r}") if self.present(key) else None

    def preprocessing(self) -> Preprocessing:
        size = self.numbers("input_size", (2,), positive=True)
        if size is not None and any(v != int(v) for v in size):
            raise self.fail("input_size", "[height, width] in whole pixels")
        return Preprocessing(
            input_size=None if size is None else (int(size[0]), int(size[1])),
            resize=self.choice("resize", Resize),
            crop_fraction=self.number("crop_fraction", 0.0, 1.0, low_open=True),
            crop_rounding=self.choice("crop_rounding", CropRounding),
            mean=self.numbers(self.key("mean"), (1, 3)),
            std=self.numbers(self.key("std"), (1, 3), positive=True),
            channel_order=self.channel_order(),
            interpolation=self.choice("interpolation", Interpolation),
        )

    def channel_order(self) -> Optional[ChannelOrder]:
        key = self.key("channel_order")
        if key == "channel_order":
            return self.choice(key, ChannelOrder)
        bgr = self.boolean(key)  # the built-in's input_image_bgr
        return None if bgr is None else ChannelOrder.BGR if bgr else ChannelOrder.RGB

    def remapped(self, name: str, builtin_name: str) -> Optional[str]:
        """A tensor name from `name`, or from the built-in's remap attribute: {model's name: builtin_name}."""
        key = self.key(name)
        if key == name:
            return self.string(key)
        remap = self.mapping(key) or {}
        for model_name, builtin in remap.items():
            if not isinstance(builtin, str):
                raise self.fail(key, "an object of tensor names: {\"model's name\": \"the vision service's name\"}")
        named = [model_name.strip() for model_name, builtin in remap.items() if builtin == builtin_name]
        if len(named) > 1:
            raise ConfigError(f"{self.source} {key!r} maps {len(named)} tensors to {builtin_name!r}: {', '.join(named)}")
        return named[0] if named else None


def did_you_mean(name: str, known: Sequence[str], what: str) -> str:
    """A hint for a name that is not one of `known`: the closest ones, else all of them if few."""
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f"; known {what} are: {', '.join(known)}" if len(known) <= 30 else ""


def parse_region(value: Any, source: str) -> Region:
    """[x_min, y_min, x_max, y_max] in 0..1 of the frame, not empty and not inverted."""
    expected = f"{source} must be [x_min, y_min, x_max, y_max] with 0 <= x_min < x_max <= 1 and 0 <= y_min < y_max <= 1"
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ConfigError(f"{expected}, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise ConfigError(f"{expected}, got {value!r}")
    x_min, y_min, x_max, y_max = (float(v) for v in value)
    if not (0.0 <= x_min < x_max <= 1.0 and 0.0 <= y_min < y_max <= 1.0):
        raise ConfigError(f"{expected}, got {list(value)!r}")
    return Region(x_min, y_min, x_max, y_max)


def parse_service_config(attributes: Mapping[str, Any]) -> ServiceConfig:
    """Parse a service's attributes (already converted from the protobuf Struct).

    An unrecognized attribute is not an error (a config written for a newer version
    still loads) but is reported in `warnings`, with the closest known names.
    """
    r = _Reader(attributes, "attribute", SERVICE_KEYS, BUILTIN_ALIASES)
    camera_name = r.string("camera_name")
    camera_names = r.strings("camera_names") or ()
    classifier = ClassifierConfig(
        source=_model_source(r),
        labels_path=r.path(r.key("labels_path"), MODULE_ROOT),
        input_name=r.remapped("input_name", BUILTIN_INPUT_NAME),
        output_name=r.remapped("output_name", BUILTIN_OUTPUT_NAME),
        head=r.choice("head", Head),
        preprocessing=r.preprocessing(),
        exact_preprocessing=bool(r.boolean("exact_preprocessing")),
        max_image_pixels=r.integer("max_image_pixels", 1) or DEFAULT_MAX_IMAGE_PIXELS,
    )
    config = ServiceConfig(
        classifier=classifier,
        labels=_label_rules(r),
        camera_name=camera_name,
        camera_names=camera_names,
        camera_timeout_s=r.number("camera_timeout_s", 0.0, 86400.0, low_open=True) or DEFAULT_CAMERA_TIMEOUT_S,
        region=r.region("region"),
        regions_by_camera=tuple(
            (camera, parse_region(value, f"attribute 'regions_by_camera' entry {camera!r}"))
            for camera, value in (r.mapping("regions_by_camera") or {}).items()
        ),
        smoothing_window=r.integer("smoothing_window", 1, MAX_SMOOTHING_WINDOW) or 1,
        label_hold_frames=r.integer("label_hold_frames", 1) or 1,
        warnings=tuple(r.unknown),
    )
    for camera, _ in config.regions_by_camera:
        if camera not in config.cameras:
            configured = ", ".join(repr(c) for c in config.cameras) or "none"
            raise ConfigError(
                f"attribute 'regions_by_camera' names camera {camera!r}, which is not in 'camera_name' or "
                f"'camera_names' (configured: {configured})"
            )
    return config


def _model_source(r: _Reader) -> Union[OnnxFile, MLModelService]:
    """An ML model service when `mlmodel_name` is set; else an ONNX file, the bundled one by default."""
    mlmodel_name = r.string("mlmodel_name")
    if mlmodel_name is None:
        if r.present("mlmodel_timeout_s"):
            raise ConfigError("attribute 'mlmodel_timeout_s' applies only with 'mlmodel_name'")
        return OnnxFile(
            # A folder is a Hugging Face export (optimum-cli export onnx), whose model is model.onnx.
            path=r.path("model_path", MODULE_ROOT, in_folder="model.onnx") or BUNDLED_MODEL,
            providers=_providers(r),
            strict_providers=bool(r.boolean("strict_providers")),
            num_threads=r.integer("num_threads", 1),
        )
    for key in ONNX_FILE_KEYS:
        if r.present(key):
            raise ConfigError(
                f"attribute {key!r} configures the ONNX file this module runs itself; with 'mlmodel_name' "
                f"the ML model service {mlmodel_name!r} runs the model: remove {key!r}"
            )
    timeout = r.number("mlmodel_timeout_s", 0.0, 86400.0, low_open=True)
    return MLModelService(mlmodel_name, timeout or DEFAULT_MLMODEL_TIMEOUT_S)


def _providers(r: _Reader) -> tuple[str, ...]:
    providers = r.strings("providers")
    if providers is None:
        return DEFAULT_PROVIDERS
    if not providers:
        raise r.fail("providers", "a non-empty list of onnxruntime execution provider names")
    return tuple(dict.fromkeys(providers))


def _label_rules(r: _Reader) -> LabelRules:
    minimums = r.mapping("label_confidences") or {}
    for label, minimum in minimums.items():
        if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or not 0.0 <= minimum <= 1.0:
            raise ConfigError(f"attribute 'label_confidences' entry {label!r} must be a number in [0, 1], got {minimum!r}")
    allowed, blocked = r.strings("allowed_labels"), r.strings("blocked_labels") or ()
    if allowed is not None and not allowed:
        raise r.fail("allowed_labels", "a non-empty list of labels (leave it out to allow every label)")
    return LabelRules(
        confidence_threshold=r.number(r.key("confidence_threshold"), 0.0, 1.0) or 0.0,
        label_confidences=tuple((label.strip(), float(minimum)) for label, minimum in minimums.items()),
        allowed_labels=allowed,
        blocked_labels=blocked,
    )


def check_label_names(rules: LabelRules, labels: Sequence[str]) -> None:
    """Every label the rules name must be one of the model's, else the closest real ones are suggested."""
    known = set(labels)
    named = [("label_confidences", label) for label, _ in rules.label_confidences]
    named += [("allowed_labels", label) for label in rules.allowed_labels or ()]
    named += [("blocked_labels", label) for label in rules.blocked_labels]
    for key, label in named:
        if label not in known:
            raise ConfigError(f"attribute {key!r}: {label!r} is not a label of this model{did_you_mean(label, labels, 'labels')}")


def parse_model_description(values: Mapping[str, Any], source: str, base: Path) -> ModelDescription:
    """Parse a model's own description: its sidecar JSON (paths relative to it) or its ONNX metadata.

    An unrecognized key is reported in `warnings`, as an unrecognized attribute is: people write
    sidecars too, and one written for a newer version of the module still loads.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must be a JSON object, got {type(values).__name__}")
    r = _Reader(values, f"{source} key", DESCRIPTION_KEYS)
    labels, labels_path = r.strings("labels"), r.path("labels_path", base)
    labels_key = "labels_path" if labels_path is not None else "labels" if labels is not None else None
    return ModelDescription(
        preprocessing=r.preprocessing(),
        head=r.choice("head", Head),
        labels=labels,
        labels_path=labels_path,
        labels_source=None if labels_key is None else f"{source} key {labels_key!r}",
        warnings=tuple(r.unknown),
    )
