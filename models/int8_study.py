"""The quantization variants tried for the bundled int8 model, each with its fidelity and speed.

    .venv/bin/python models/int8_study.py [--only NAME ...]    # about 25 minutes on 2 busy cores

Every variant goes through onnx_classifier.quantize on the frames that
models/quantize_efficientnet_lite0.py calibrates on, and is
measured as tests/test_int8.py measures the shipped model: 210 camera-like frames of the test
photos, top-1 agreement with the float model, frames where they disagree although the float
model's top two are more than 0.05 apart ("clear"), and the largest confidence difference per
frame (95th percentile and max); then onnxruntime alone on one input, float and int8 interleaved.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "models")]

from onnx_classifier.quantize import Recipe, load_classifier, quantize_model, sidecar, sidecar_text  # noqa: E402
from quantize_efficientnet_lite0 import CALIBRATION_FRAMES, FLOAT_MODEL, RECIPE, SEED, calibration_frames  # noqa: E402
from tests.variants import camera_frames  # noqa: E402

STEM_AND_CLASSIFIER = ("stem/Conv", "classifier/Gemm")
POOLED_CLASSIFIER = ("head/Pool", "head/Flatten", "classifier/Gemm")
BLOCKS = {  # the stem and blocks 0..n
    0: ("stem/Conv", "block0.depthwise/Conv", "block0.project/Conv"),
    1: ("stem/Conv", "block0.depthwise/Conv", "block0.project/Conv", "block1.expand/Conv", "block1.depthwise/Conv", "block1.project/Conv"),
}
BLOCKS[2] = BLOCKS[1] + ("block2.expand/Conv", "block2.depthwise/Conv", "block2.project/Conv", "block2/Add")
BLOCKS[3] = BLOCKS[2] + ("block3.expand/Conv", "block3.depthwise/Conv", "block3.project/Conv")
MINMAX, ENTROPY, PERCENTILE = CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile
# name: (recipe, calibration frames); keep_float=() quantizes every layer, None is run.sh quantize's default
VARIANTS = {
    "minmax, per-tensor weights, all layers": (Recipe(MINMAX, per_channel=False, keep_float=()), CALIBRATION_FRAMES),
    "minmax, all layers": (Recipe(MINMAX, keep_float=()), CALIBRATION_FRAMES),
    "entropy, all layers": (Recipe(ENTROPY, keep_float=()), CALIBRATION_FRAMES),
    "percentile, all layers": (Recipe(PERCENTILE, keep_float=()), CALIBRATION_FRAMES),
    "minmax, stem + classifier excluded by name": (Recipe(MINMAX, keep_float=STEM_AND_CLASSIFIER), CALIBRATION_FRAMES),
    "percentile, stem + classifier excluded by name": (Recipe(PERCENTILE, keep_float=STEM_AND_CLASSIFIER), CALIBRATION_FRAMES),
    "minmax, stem + pooled classifier (run.sh quantize)": (Recipe(MINMAX), CALIBRATION_FRAMES),
    "minmax, stem, block 0 + pooled classifier": (Recipe(MINMAX, keep_float=BLOCKS[0] + POOLED_CLASSIFIER), CALIBRATION_FRAMES),
    "minmax, stem, blocks 0-1 + pooled classifier": (Recipe(MINMAX, keep_float=BLOCKS[1] + POOLED_CLASSIFIER), CALIBRATION_FRAMES),
    "minmax, same, 360 frames": (Recipe(MINMAX, keep_float=BLOCKS[1] + POOLED_CLASSIFIER), 3 * CALIBRATION_FRAMES),
    "minmax, same, per-tensor weights": (Recipe(MINMAX, per_channel=False, keep_float=BLOCKS[1] + POOLED_CLASSIFIER), CALIBRATION_FRAMES),
    "percentile, stem, blocks 0-1 + pooled classifier": (Recipe(PERCENTILE, keep_float=BLOCKS[1] + POOLED_CLASSIFIER), CALIBRATION_FRAMES),
    "minmax, stem, blocks 0-2 + pooled classifier": (Recipe(MINMAX, keep_float=BLOCKS[2] + POOLED_CLASSIFIER), CALIBRATION_FRAMES),
    "percentile, stem, blocks 0-2 + pooled classifier (shipped)": (RECIPE, CALIBRATION_FRAMES),
    "percentile, stem, blocks 0-2, classifier quantized": (Recipe(PERCENTILE, keep_float=BLOCKS[2]), CALIBRATION_FRAMES),
    "minmax, stem, blocks 0-3 + pooled classifier": (Recipe(MINMAX, keep_float=BLOCKS[3] + POOLED_CLASSIFIER), CALIBRATION_FRAMES),
}
EVALUATION_FRAMES = 210
SPEED_ROUNDS = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run only these variants")
    args = parser.parse_args()
    reference = load_classifier({"model_path": str(FLOAT_MODEL)})
    frames = {count: list(calibration_frames(count, SEED)) for count in {count for _, count in VARIANTS.values()}}
    evaluation = [reference.preprocess(data) for _, data in camera_frames(EVALUATION_FRAMES)]
    expected = np.stack([reference.scores(t) for t in evaluation])
    top_two = np.sort(expected, axis=1)[:, -2:]
    gaps = top_two[:, 1] - top_two[:, 0]
    print("| variant | agreement | clear | p95 | max | model alone |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "int8.onnx"
        for name in args.only or VARIANTS:
            recipe, count = VARIANTS[name]
            quantize_model(reference, frames[count], reference.preprocess, out, recipe)
            out.with_suffix(".json").write_text(sidecar_text(sidecar(reference, out)))
            int8 = load_classifier({"model_path": str(out)})
            scores = np.stack([int8.scores(t) for t in evaluation])
            differences = np.abs(scores - expected).max(axis=1)
            disagree = scores.argmax(axis=1) != expected.argmax(axis=1)
            times: dict[str, list[float]] = {"float": [], "int8": []}
            for _ in range(SPEED_ROUNDS):
                for key, classifier in (("float", reference), ("int8", int8)):
                    started = time.perf_counter()
                    classifier.scores(evaluation[0])
                    times[key].append(time.perf_counter() - started)
            speedup = np.median(times["float"]) / np.median(times["int8"])
            print(
                f"| {name} | {1 - disagree.mean():.3f} | {int((disagree & (gaps > 0.05)).sum())} | "
                f"{np.percentile(differences, 95):.3f} | {differences.max():.3f} | {speedup:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
