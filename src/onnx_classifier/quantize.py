"""Static int8 quantization of a classifier with onnxruntime's own tools, and `run.sh quantize`.

Calibration images go through the model's own resolved preprocessing (attributes over its sidecar,
Hugging Face export files and ONNX metadata, exactly as the service resolves them), onnxruntime's
`quantize_static` writes a QDQ model (int8 weights per output channel, uint8 activations), and a
sidecar beside it carries the same preprocessing, head and labels, so that the int8 model loads by
its `model_path` alone. Images held out from calibration then compare the two models as the service
runs them: top-1 agreement, confidence differences and the speed of each on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from .bias_correction import correct_biases, input_means
from .classifier import Classifier
from .cpu import describe_cpu
from .emulation import FAMILIES, EmulationError, Family, emulated_outputs
from .cli import IMAGE_SUFFIXES, Progress, UsageError, read_json_object, search_folder
from .config import DESCRIPTION_KEYS, ConfigError, Head, OnnxFile, parse_service_config
from .decode import DecodeError
from .model import sidecar_path
from .onnx_structure import load_structure
from .pair_safe import pair_safe_overrides

PROG = "run.sh quantize"
# Every HELD_OUT_EVERY-th image (in sorted order) is kept out of calibration for the report.
HELD_OUT_EVERY = 5
MIN_CALIBRATION_IMAGES = 16
MIN_HELD_OUT_IMAGES = 4
MIN_IMAGES = MIN_CALIBRATION_IMAGES + MIN_HELD_OUT_IMAGES
# onnxruntime calibrates on windows of at most this many inputs and merges them, so memory does
# not grow with the number of calibration images.
CALIBRATION_WINDOW = 16
SPEED_ROUNDS = 40
# onnxruntime's default for Percentile calibration, set explicitly so that the report can name it.
PERCENTILE = 99.999
# Layers whose weights feed a matrix product: the ones quantization makes faster, and the ones
# that bound "the first layer" and "the classifier".
_WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# Activations that onnxruntime folds into the quantized output of the layer before them.
_ACTIVATION_OPS = {"Relu", "Clip"}
# Ops that read only a tensor's shape: the walk from the input does not follow them.
_SHAPE_OPS = {"Shape", "Size"}
_QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QGemm", "MatMulNBits",
}


T = TypeVar("T")


class QuantizeError(Exception):
    """A model that cannot be quantized, or calibration images that cannot be used."""


@dataclass(frozen=True)
class Recipe:
    """How a model is quantized. `keep_float` names the nodes left in float32; None leaves the first
    weighted layer and the classifier in float (see float_ends), where int8 costs most fidelity.

    The defaults hold on every CPU family onnxruntime has int8 kernels for: `pair_safe_weights`
    gives each channel the range that keeps x86 without VNNI from saturating (pair_safe.py), so that
    all of them compute the same sums, and `bias_correction` takes back the mean error the int8
    weights make (bias_correction.py). `reduce_range` (7-bit weights) and uint8 weights
    (`weight_type`, "U8U8") are onnxruntime's own answers to saturation, kept for the study that
    compares them (models/int8_study.py): both cost more fidelity or speed."""

    method: CalibrationMethod = CalibrationMethod.MinMax
    per_channel: bool = True
    keep_float: Optional[tuple[str, ...]] = None
    pair_safe_weights: bool = True
    bias_correction: bool = True
    reduce_range: bool = False
    weight_type: QuantType = QuantType.QInt8

    def describe(self) -> dict[str, Any]:
        signed = self.weight_type is QuantType.QInt8
        weights = ("int8" if signed else "uint8") + (", per channel" if self.per_channel else ", per tensor")
        if self.reduce_range:
            weights += ", 7-bit range"
        if signed and self.pair_safe_weights and not self.reduce_range:
            weights += ", ranges cover adjacent same-sign pairs (no int16 saturation on x86 without VNNI)"
        return {
            "format": "QDQ",
            "weights": weights,
            "activations": "uint8, per tensor",
            "calibration": self.method.name + (f" ({PERCENTILE}%)" if self.method is CalibrationMethod.Percentile else ""),
            "bias_correction": self.bias_correction,
        }


def load_classifier(attributes: dict[str, Any]) -> Classifier:
    """A model as the service loads it from these attributes: the one way in to the core."""
    return Classifier.from_onnx_file(parse_service_config(attributes).classifier)


def check_quantizable(classifier: Classifier) -> None:
    """Models that onnxruntime's static quantization cannot or need not make int8."""
    spec, path = classifier.model.spec, classifier.config.source.path
    if spec.input_dtype == np.uint8:
        raise QuantizeError(
            f"model {str(path)!r} takes uint8 pixels ({spec.layout.value}): it is already built for 8-bit input "
            "and needs no quantization; use it as it is"
        )
    if spec.input_dtype != np.float32:
        raise QuantizeError(
            f"model {str(path)!r} takes {spec.input_dtype} input; onnxruntime's static quantization needs a float32 "
            "model: quantize a float32 export of it"
        )
    quantized = sorted({node.op_type for node in load_structure(path).graph.node if node.op_type in _QUANTIZED_OPS})
    if quantized:
        raise QuantizeError(f"model {str(path)!r} is already quantized (it has {', '.join(quantized)} nodes)")


def float_ends(graph: onnx.GraphProto) -> tuple[str, ...]:
    """The nodes to leave in float so that the first weighted layer and the classifier really run in
    float. When it loads a model, onnxruntime quantizes (per tensor) the weights of any float layer
    whose input comes from a DequantizeLinear, so a layer stays float only if its input does: here,
    everything from the input up to the first weighted layer, and the classifier with the ops that
    feed it from the last activation (pooling, flattening)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node
    kept: list[str] = []
    frontier = [graph.input[0].name]
    while frontier:  # forward from the input, up to and including the first weighted layer on each path
        for node in consumers.get(frontier.pop(), []):
            if node.name not in kept and node.op_type not in _SHAPE_OPS:
                kept.append(node.name)
                if node.op_type not in _WEIGHTED_OPS:
                    frontier += list(node.output)
    frontier, reached_classifier = [output.name for output in graph.output], False
    while frontier:  # back from the outputs to the classifier, then on to the activation that feeds it
        node = producers.get(frontier.pop())
        if node is None or node.name in kept:
            continue
        if reached_classifier and (node.op_type in _WEIGHTED_OPS or node.op_type in _ACTIVATION_OPS):
            continue
        kept.append(node.name)
        reached_classifier = reached_classifier or node.op_type in _WEIGHTED_OPS
        frontier += [name for name in node.input if name in producers]
    return tuple(kept)


def quantize_model(
    classifier: Classifier,
    inputs: Sequence[T],
    to_tensor: Callable[[T], np.ndarray],
    out: Path,
    recipe: Recipe = Recipe(),
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[str, ...]:
    """Write the int8 model for `classifier`'s model to `out` (replacing it), calibrated on
    `to_tensor` of each input; returns the nodes left in float. `progress` gets each input's index."""
    with tempfile.TemporaryDirectory(prefix="onnx-classifier-quantize.") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            # onnxruntime's recommended pre-processing: graph optimization and shape inference
            # (the symbolic pass is for dynamic shapes, which static calibration does not need).
            quant_pre_process(str(classifier.config.source.path), str(prepared), skip_symbolic_shape=True)
        except Exception as e:  # onnxruntime and onnx raise their own types
            raise QuantizeError(f"onnxruntime cannot prepare {str(classifier.config.source.path)!r} for quantization: {e}") from e
        model = onnx.load(str(prepared))
        for index, node in enumerate(model.graph.node):  # nodes are excluded by name
            node.name = node.name or f"{node.op_type}_{index}"
        onnx.save(model, str(prepared))
        keep_float = recipe.keep_float if recipe.keep_float is not None else float_ends(model.graph)
        weighted = [n.name for n in model.graph.node if n.op_type in _WEIGHTED_OPS]
        if not set(weighted) - set(keep_float):
            raise QuantizeError(
                f"model {str(classifier.config.source.path)!r} has nothing to quantize: every weighted layer "
                f"({', '.join(weighted) or 'none'}) is left in float (the first layer and the classifier always are)"
            )
        reader = _Reader(classifier.model.spec.input_name, inputs, to_tensor, progress)
        written = Path(folder) / "int8.onnx"
        extra_options: dict[str, Any] = {"CalibStridedMinMax": _window(len(inputs)), "CalibPercentile": PERCENTILE}
        if recipe.pair_safe_weights and recipe.weight_type is QuantType.QInt8 and not recipe.reduce_range:
            quantized_nodes = [n.name for n in model.graph.node if n.name not in keep_float]
            extra_options["TensorQuantOverrides"] = pair_safe_overrides(model, quantized_nodes, recipe.per_channel)
        try:
            # The histogram calibrators print their progress; stdout is for the report.
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(
                    str(prepared),
                    str(written),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=recipe.per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=recipe.weight_type,
                    calibrate_method=recipe.method,
                    nodes_to_exclude=list(keep_float),
                    reduce_range=recipe.reduce_range,
                    extra_options=extra_options,
                )
        except QuantizeError:
            raise
        except Exception as e:
            raise QuantizeError(f"onnxruntime cannot quantize {str(classifier.config.source.path)!r}: {e}") from e
        if recipe.bias_correction:
            quantized = onnx.load(str(written))
            correct_biases(quantized, model, input_means(model, quantized, inputs, to_tensor, classifier.model.spec.input_name))
            onnx.save(quantized, str(written))
        shutil.copyfile(written, out)
    return keep_float


def _window(count: int) -> int:
    """The largest number of inputs, at most CALIBRATION_WINDOW, that divides `count` (as onnxruntime requires)."""
    return next(size for size in range(min(count, CALIBRATION_WINDOW), 0, -1) if count % size == 0)


class _Reader(CalibrationDataReader):
    """The calibration inputs, made into tensors as they are read. onnxruntime reads them in windows
    (set_range) and merges each window's ranges or histograms, so memory does not grow with their number."""

    def __init__(self, input_name: str, inputs: Sequence[T], to_tensor: Callable[[T], np.ndarray], progress):
        self.input_name = input_name
        self.inputs = inputs
        self.to_tensor = to_tensor
        self.progress = progress
        self.position, self.end = 0, len(inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, end_index

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.position >= self.end:
            return None
        if self.progress is not None:
            self.progress(self.position)
        tensor = self.to_tensor(self.inputs[self.position])
        self.position += 1
        return {self.input_name: tensor}


def sidecar(classifier: Classifier, model_out: Path) -> dict[str, Any]:
    """The float model's resolved description, for a sidecar beside `model_out`: the int8 model
    then loads with the same preprocessing, head and labels by its model_path alone."""
    model = classifier.model
    values: dict[str, Any] = {}
    labels_file = classifier.config.labels_path or model.spec.description.labels_path
    if labels_file is not None:
        values["labels_path"] = os.path.relpath(labels_file, model_out.parent)
    elif model.labels is not None:
        values["labels"] = list(model.labels)
    pre = model.preprocessing
    values.update(
        input_size=list(model.input_size),
        resize=pre.resize.value,
        crop_fraction=pre.crop_fraction,
        crop_rounding=pre.crop_rounding.value,
        interpolation=pre.interpolation.value,
        mean=list(pre.mean),
        std=list(pre.std),
        channel_order=pre.channel_order.value,
    )
    if model.head is not Head.AUTO:
        values["head"] = model.head.value
    return values


def sidecar_text(values: dict[str, Any]) -> str:
    """One key per line, as the bundled model's sidecar is written."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()) + "\n}\n"


def runtime_attributes(attributes: dict[str, Any], model_path: Path) -> dict[str, Any]:
    """The attributes for loading the int8 model: how to run it, but nothing its sidecar says."""
    kept = {k: v for k, v in attributes.items() if k not in DESCRIPTION_KEYS and k != "model_path"}
    return {**kept, "model_path": str(model_path)}


def fidelity(expected: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement and confidence differences (the largest per image: max and 95th percentile)
    of `scores` against `expected`, one row per image."""
    differences = np.abs(scores - expected).max(axis=1)
    agreeing = int((scores.argmax(axis=1) == expected.argmax(axis=1)).sum())
    return {
        "top1_agreeing": agreeing,
        "top1_agreement": agreeing / len(expected),
        "confidence_difference": {"max": float(differences.max()), "p95": float(np.percentile(differences, 95))},
    }


def compare(reference: Classifier, int8: Classifier, tensors: Sequence[np.ndarray]) -> dict[str, Any]:
    """The int8 model's fidelity to the float model on this machine, and the median time of each
    model alone on one input, measured interleaved."""
    expected = np.stack([reference.scores(tensor) for tensor in tensors])
    scores = np.stack([int8.scores(tensor) for tensor in tensors])
    times: dict[str, list[float]] = {"float": [], "int8": []}
    for _ in range(2):  # warm-up
        reference.scores(tensors[0]), int8.scores(tensors[0])
    for _ in range(SPEED_ROUNDS):
        for name, classifier in (("float", reference), ("int8", int8)):
            started = time.perf_counter()
            classifier.scores(tensors[0])
            times[name].append(time.perf_counter() - started)
    float_ms, int8_ms = (1e3 * float(np.median(times[name])) for name in ("float", "int8"))
    return {
        "held_out_images": len(tensors),
        **fidelity(expected, scores),
        "model_ms": {"float": float_ms, "int8": int8_ms},
        "speedup": float_ms / int8_ms,
        "cpu": describe_cpu(),
    }


def compare_emulated(
    reference: Classifier, int8: Classifier, tensors: Sequence[np.ndarray], families: Sequence[Family], arm64_root: Optional[Path]
) -> dict[str, Any]:
    """The int8 model's fidelity to the float model under each emulated CPU (emulation.py)."""
    expected = np.stack([reference.scores(tensor) for tensor in tensors])
    spec, path = int8.model.spec, int8.config.source.path
    assert isinstance(int8.config.source, OnnxFile)
    report = {}
    for family in families:
        raw = emulated_outputs(family, path, spec.input_name, spec.output_name, np.stack(tensors), arm64_root)
        scores = np.stack([int8.postprocess(r) for r in raw])
        report[family.name] = {"int8_kernels": family.int8_kernels, **fidelity(expected, scores)}
    return report


# ---- the command line ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Quantize an ONNX classifier to int8 with onnxruntime's static quantization, calibrated on your images "
            "through the model's own preprocessing. Writes MODEL_int8.onnx and its sidecar .json beside the model "
            "(never replacing a file), then compares the two models on the images held out from calibration "
            f"(every {HELD_OUT_EVERY}th)."
        ),
        epilog="Exit status: 0 done, 1 quantization or an image failed, 2 usage, model or folder error.",
    )
    parser.add_argument("model", metavar="MODEL", help="the float32 ONNX classifier, or a Hugging Face export folder")
    parser.add_argument(
        "--calibration", metavar="FOLDER", type=Path, required=True,
        help=f"images like the ones the model will see (at least {MIN_IMAGES}; searched recursively)",
    )
    parser.add_argument("--out", metavar="PATH", type=Path, help="where to write the int8 model (its sidecar goes beside it)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="the report's format (default table)")
    parser.add_argument(
        "--attributes", metavar="JSON",
        help="service attributes that describe the model, as JSON (labels_path, input_size, mean, std, ...)",
    )
    parser.add_argument(
        "--emulate", metavar="CPU,...", type=emulated_families, default=(),
        help=f"also check the int8 model's fidelity on these CPUs, emulated by QEMU ({', '.join(FAMILIES)}); slow, "
        "answers only",
    )
    parser.add_argument(
        "--arm64-root", metavar="DIR", type=Path,
        help="for ARM CPUs on an x86 machine: an arm64 root with this module installed at /opt/onnx-classifier",
    )
    return parser


def emulated_families(text: str) -> tuple[Family, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown CPU {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    return tuple(FAMILIES[name] for name in names)


def output_paths(model_path: Path, out: Optional[Path]) -> Path:
    """Where the int8 model goes. Neither it nor its sidecar may exist: an explicit --out that is
    taken is an error, the default name gets a suffix."""
    if out is not None:
        if out.suffix != ".onnx":
            raise QuantizeError(f"--out {out}: the name must end in .onnx (its sidecar is the same name with .json)")
        for path in (out, sidecar_path(out)):
            if path.exists():
                raise QuantizeError(f"{path} already exists; choose another --out or move it away")
        if not out.parent.is_dir():
            raise QuantizeError(f"--out {out}: no such folder: {out.parent}")
        return out
    attempt = 0
    while True:
        name = f"{model_path.stem}_int8" + (f"-{attempt}" if attempt else "") + ".onnx"
        candidate = model_path.with_name(name)
        if not candidate.exists() and not sidecar_path(candidate).exists():
            return candidate
        attempt += 1


def calibration_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folder's images, split into calibration and held out (every HELD_OUT_EVERY-th)."""
    if not folder.is_dir():
        raise QuantizeError(f"--calibration {folder}: no such folder")
    images = search_folder(folder, set())
    held_out = images[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY]
    calibration = [image for image in images if image not in held_out]
    if len(calibration) < MIN_CALIBRATION_IMAGES or len(held_out) < MIN_HELD_OUT_IMAGES:
        raise QuantizeError(
            f"--calibration {folder}: {len(images)} image{'s' if len(images) != 1 else ''} "
            f"({'/'.join(sorted(IMAGE_SUFFIXES))}) found; at least {MIN_IMAGES} are needed ({MIN_CALIBRATION_IMAGES} "
            f"to calibrate, {MIN_HELD_OUT_IMAGES} held out to check the result), and a few hundred like the "
            "camera's frames calibrate best"
        )
    return calibration, held_out


def read_tensor(classifier: Classifier, path: Path) -> np.ndarray:
    try:
        return classifier.preprocess(path.read_bytes())
    except OSError as e:
        raise QuantizeError(f"calibration image {path}: {e.strerror or e}") from e
    except DecodeError as e:
        raise QuantizeError(f"calibration image {path}: {e}") from e


def format_table(report: dict[str, Any]) -> str:
    difference, ms, speedup = report["confidence_difference"], report["model_ms"], report["speedup"]
    speed = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    rows = [
        ("", "float32", "int8"),
        ("model alone, median ms", f"{ms['float']:.2f}", f"{ms['int8']:.2f} ({speed})"),
        ("top-1 agreement", "", f"{report['top1_agreeing']}/{report['held_out_images']} ({100 * report['top1_agreement']:.1f}%)"),
        ("confidence difference", "", f"max {difference['max']:.3f}, 95th percentile {difference['p95']:.3f}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [
        f"wrote {report['int8_model']} and {report['sidecar']}",
        f"calibrated on {report['calibration_images']} images; compared on the {report['held_out_images']} held out "
        f"(float layers: {', '.join(report['kept_float']) or 'none'})",
        "",
    ]
    lines += [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}".rstrip() for row in rows]
    cpu = report["cpu"]
    lines += ["", f"measured on {cpu['model']} ({cpu['architecture']}; int8 kernels: {cpu['int8_kernels']})"]
    for name, emulated in report.get("emulated", {}).items():
        difference = emulated["confidence_difference"]
        lines.append(
            f"emulated {name} ({emulated['int8_kernels']}): top-1 agreement {emulated['top1_agreeing']}/"
            f"{report['held_out_images']} ({100 * emulated['top1_agreement']:.1f}%), confidence difference max "
            f"{difference['max']:.3f}, 95th percentile {difference['p95']:.3f}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    # onnxruntime's quantization tools log advice to the root logger; the report says what matters.
    logging.getLogger().setLevel(logging.ERROR)
    try:
        attributes = read_json_object(args.attributes, "--attributes") if args.attributes is not None else {}
        attributes["model_path"] = os.path.abspath(os.path.expanduser(args.model))
        reference = load_classifier(attributes)
        check_quantizable(reference)
        calibration, held_out = calibration_images(args.calibration)
        model_out = output_paths(reference.config.source.path, args.out)
    except (UsageError, ConfigError, QuantizeError) as e:
        print(f"{PROG}: error: {e}", file=err)
        return 2

    bar = Progress(err, len(calibration), enabled=err.isatty())
    written: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(prefix="onnx-classifier-quantize.") as folder:
            staged = Path(folder) / model_out.name
            kept_float = quantize_model(
                reference,
                calibration,
                lambda path: read_tensor(reference, path),
                staged,
                progress=lambda done: bar.show(done, f"calibrating {calibration[done].name}"),
            )
            bar.clear()
            description = sidecar(reference, model_out)
            # Exclusive creation: nothing that appeared meanwhile is replaced.
            with open(model_out, "xb") as file:
                written.append(model_out)
                file.write(staged.read_bytes())
            with open(sidecar_path(model_out), "x", encoding="utf-8") as file:
                written.append(sidecar_path(model_out))
                file.write(sidecar_text(description))
        int8 = load_classifier(runtime_attributes(attributes, model_out))
        tensors = [read_tensor(reference, path) for path in held_out]
        report = compare(reference, int8, tensors)
        if args.emulate:
            report["emulated"] = compare_emulated(reference, int8, tensors, args.emulate, args.arm64_root)
    except EmulationError as e:
        # The model is made and good here; only the check on other CPUs could not run.
        print(f"{PROG}: error: the emulated check failed: {e}", file=err)
        return 1
    except (QuantizeError, ConfigError, OSError) as e:
        bar.clear()
        for path in written:  # a half-made pair is not left behind
            path.unlink(missing_ok=True)
        print(f"{PROG}: error: {getattr(e, 'strerror', None) or e}", file=err)
        return 1
    except KeyboardInterrupt:
        bar.clear()
        for path in written:
            path.unlink(missing_ok=True)
        print("interrupted", file=err)
        return 130
    report = {
        "model": str(reference.config.source.path),
        "int8_model": str(model_out),
        "sidecar": str(sidecar_path(model_out)),
        "calibration_images": len(calibration),
        **report,
        "kept_float": list(kept_float),
        "recipe": Recipe().describe(),
    }
    out.write((json.dumps(report, indent=2) if args.format == "json" else format_table(report)) + "\n")
    return 0
