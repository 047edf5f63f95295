"""A Hugging Face export folder (`optimum-cli export onnx`) read as the model's description.

`config.json` gives the labels (`id2label`) and the head (`problem_type`);
`preprocessor_config.json` gives the image processor's recipe, which is mapped onto this
module's preprocessing only where the module reproduces transformers' PIL image processors
exactly. Anything else is rejected with the file and the field, never approximated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from .config import ConfigError, CropRounding, Head, Interpolation, ModelDescription, Preprocessing, Resize

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"

# PIL's resampling codes, as transformers stores them in `resample`.
_RESAMPLE = {0: Interpolation.NEAREST, 2: Interpolation.BILINEAR, 3: Interpolation.BICUBIC}
_UNSUPPORTED_RESAMPLE = {1: "lanczos", 4: "box", 5: "hamming"}
# Pixels become 0..1 by this factor in the module's own normalization.
_UNIT_RESCALE = 1 / 255
# Image processors whose transformers (5.x) PIL implementation is the plain resize, centre crop,
# rescale, normalize that this mapping assumes; others (EfficientNet's offset, LeViT's and
# PoolFormer's own resize sizes, ...) do something else with the same fields.
_STANDARD_PROCESSORS = {
    "BitImageProcessor",
    "BlipImageProcessor",
    "ChineseCLIPImageProcessor",
    "CLIPImageProcessor",
    "DeiTImageProcessor",
    "MobileNetV1ImageProcessor",
    "PvtImageProcessor",
    "SiglipImageProcessor",
    "ViTImageProcessor",
}
CONVNEXT_PROCESSOR = "ConvNextImageProcessor"
# ConvNextImageProcessor crops by crop_pct only below this shortest edge; at or above it, it warps.
_CONVNEXT_CROP_BELOW = 384
_CONVNEXT_DEFAULT_CROP_PCT = 224 / 256


def export_files(model_path: Path) -> Optional[tuple[Path, Path]]:
    """config.json and preprocessor_config.json beside the model, when both are there."""
    config, preprocessor = model_path.parent / CONFIG_FILE, model_path.parent / PREPROCESSOR_FILE
    return (config, preprocessor) if config.is_file() and preprocessor.is_file() else None


def read_export(config_path: Path, preprocessor_path: Path) -> ModelDescription:
    config = _Fields(config_path)
    labels = config.labels()
    return ModelDescription(
        preprocessing=_Fields(preprocessor_path).preprocessing(),
        head=config.head(len(labels) if labels is not None else None),
        labels=labels,
        labels_source=f"{config.where} 'id2label'",
    )


class _Fields:
    """One HF json file, with errors that name the file and the field."""

    def __init__(self, path: Path):
        self.path = path
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{self.where} is not valid JSON: {e}") from e
        if not isinstance(values, Mapping):
            raise ConfigError(f"{self.where} must be a JSON object, got {type(values).__name__}")
        self.values: Mapping[str, Any] = values

    @property
    def where(self) -> str:
        return f"Hugging Face {self.path.name} {str(self.path)!r}"

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.where} {key!r} {why}, got {self.values.get(key)!r}")

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def flag(self, key: str, *, absent: Optional[bool] = None) -> bool:
        value = self.values.get(key)
        value = absent if value is None else value  # transformers writes null for a step a class lacks
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def positive(self, key: str) -> float:
        value = self.values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise self.fail(key, "must be a positive number")
        return float(value)

    def channels(self, key: str, *, positive: bool) -> tuple[float, ...]:
        value = self.values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # transformers takes one number for every channel
        if (
            not isinstance(value, list)
            or len(value) not in (1, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or (positive and not all(v > 0 for v in value))
        ):
            raise self.fail(key, f"must be 1 or 3 {'positive ' if positive else ''}numbers")
        return tuple(float(v) for v in value)

    def size(self, key: str) -> dict[str, int]:
        """A size dict; a bare number (older files) is a square for crop_size only, as transformers reads it."""
        value = self.values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and key == "crop_size":
            value = {"height": value, "width": value}
        if not isinstance(value, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()
        ):
            raise self.fail(key, 'must be {"height": H, "width": W} or {"shortest_edge": S} in whole pixels')
        return dict(value)

    def labels(self) -> Optional[tuple[str, ...]]:
        id2label = self.values.get("id2label")
        if id2label is None:
            return None
        if not isinstance(id2label, Mapping) or not all(isinstance(v, str) and v.strip() for v in id2label.values()):
            raise self.fail("id2label", "must map class ids to non-empty labels")
        try:
            by_id = {int(k): v.strip() for k, v in id2label.items()}
        except ValueError:
            raise self.fail("id2label", "must have integer class ids") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise self.fail("id2label", f"must have the class ids 0..{len(by_id) - 1}, each once")
        return tuple(by_id[i] for i in range(len(by_id)))

    def head(self, num_labels: Optional[int]) -> Optional[Head]:
        """As transformers' image-classification pipeline chooses its function_to_apply."""
        problem = self.values.get("problem_type")
        if problem == "multi_label_classification" or (problem is None and num_labels == 1):
            return Head.SIGMOID
        if problem == "single_label_classification" or (problem is None and num_labels is not None):
            return Head.SOFTMAX
        if problem == "regression":
            return Head.NONE
        if problem is None:
            return None
        raise self.fail(
            "problem_type", "must be 'single_label_classification', 'multi_label_classification' or 'regression'"
        )

    def processor_type(self) -> str:
        """The image processor's class, as transformers names it whichever backend wrote the file."""
        name = self.get("image_processor_type")
        key = "image_processor_type"
        if name is None and isinstance(self.get("feature_extractor_type"), str):
            key, name = "feature_extractor_type", self.get("feature_extractor_type").replace("FeatureExtractor", "ImageProcessor")
        if not isinstance(name, str):
            raise self.fail("image_processor_type", "must name the image processor class")
        for suffix in ("Fast", "Pil"):
            name = name.removesuffix(suffix)
        if name not in _STANDARD_PROCESSORS and name != CONVNEXT_PROCESSOR:
            supported = ", ".join(sorted(_STANDARD_PROCESSORS | {CONVNEXT_PROCESSOR}))
            raise self.fail(key, f"must be one whose preprocessing the module reproduces ({supported})")
        return name

    def preprocessing(self) -> Preprocessing:
        resize, input_size, crop_fraction = self._geometry(self.processor_type())
        mean, std = self._normalization()
        return Preprocessing(
            input_size=input_size,
            resize=resize,
            crop_fraction=crop_fraction,
            crop_rounding=CropRounding.FLOOR if resize is Resize.CENTER_CROP else None,
            mean=mean,
            std=std,
            interpolation=self._interpolation(),
        )

    def _geometry(self, processor: str) -> tuple[Resize, tuple[int, int], Optional[float]]:
        if not self.flag("do_resize"):
            raise self.fail("do_resize", "must be true: the module always resizes frames to the model's input")
        if self.flag("do_pad", absent=False):
            raise self.fail("do_pad", "must be false: padding after the resize is not supported")
        size = self.size("size")
        crop = self.size("crop_size") if self.flag("do_center_crop", absent=False) else None
        if crop is not None and set(crop) != {"height", "width"}:
            raise self.fail("crop_size", 'must be {"height": H, "width": W}')

        shortest_edge_only = set(size) == {"shortest_edge"}
        if processor == CONVNEXT_PROCESSOR:
            # Its own resize: below 384 the shorter side goes to int(S / crop_pct) and the
            # centre S x S is cut; from 384 up the frame is warped to S x S.
            if not shortest_edge_only:
                raise self.fail("size", f'must be {{"shortest_edge": S}} for {CONVNEXT_PROCESSOR}')
            if crop is not None:
                raise self.fail("do_center_crop", f"must be false for {CONVNEXT_PROCESSOR}, which crops by 'crop_pct'")
            shortest = size["shortest_edge"]
            if shortest >= _CONVNEXT_CROP_BELOW:
                return Resize.STRETCH, (shortest, shortest), None
            pct = self.positive("crop_pct") if self.get("crop_pct") is not None else _CONVNEXT_DEFAULT_CROP_PCT
            if pct > 1:
                raise self.fail("crop_pct", "must be in (0, 1]")
            return Resize.CENTER_CROP, (shortest, shortest), pct

        if set(size) == {"height", "width"}:
            stretched = (size["height"], size["width"])
            if crop is not None and (crop["height"], crop["width"]) != stretched:
                raise self.fail(
                    "crop_size", f"must equal 'size' {size}: a crop after a stretch cannot be reproduced exactly"
                )
            return Resize.STRETCH, stretched, None
        if not shortest_edge_only:
            raise self.fail("size", 'must be {"height": H, "width": W} or {"shortest_edge": S}')
        shortest = size["shortest_edge"]
        if crop is None:
            raise self.fail(
                "do_center_crop",
                "must be true with a 'size' of {\"shortest_edge\"}: the model needs a fixed size",
            )
        if crop["height"] != crop["width"]:
            raise self.fail("crop_size", "must be square with a 'size' of {\"shortest_edge\"}")
        side = crop["height"]
        if side > shortest:
            raise self.fail("crop_size", f"must not exceed 'size' shortest_edge {shortest}: transformers pads such a crop")
        return Resize.CENTER_CROP, (side, side), _fraction(side, shortest)

    def _interpolation(self) -> Interpolation:
        code = self.get("resample")
        if isinstance(code, int) and not isinstance(code, bool) and code in _RESAMPLE:
            return _RESAMPLE[code]
        if code in _UNSUPPORTED_RESAMPLE:
            raise self.fail("resample", f"({_UNSUPPORTED_RESAMPLE[code]}) is not supported; use 0 (nearest), 2 (bilinear) or 3 (bicubic)")
        raise self.fail("resample", "must be 0 (nearest), 2 (bilinear) or 3 (bicubic)")

    def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """mean and std for the module's (pixel/255 - mean) / std that give transformers'
        (pixel * rescale_factor - image_mean) / image_std, with each step switched on or off."""
        rescale = self.positive("rescale_factor") if self.flag("do_rescale") else 1.0
        if self.flag("do_normalize"):
            mean, std = self.channels("image_mean", positive=False), self.channels("image_std", positive=True)
        else:
            mean, std = (0.0,), (1.0,)
        if rescale == _UNIT_RESCALE:
            return mean, std
        to_unit = 255 * rescale
        return tuple(m / to_unit for m in mean), tuple(s / to_unit for s in std)


def _fraction(crop: int, shortest: int) -> float:
    """crop / shortest, nudged down where floating point would make the preprocessor's
    floor(crop / fraction) fall one pixel short of the shortest edge."""
    fraction = crop / shortest
    while math.floor(crop / fraction) < shortest:
        fraction = math.nextafter(fraction, 0.0)
    return fraction
