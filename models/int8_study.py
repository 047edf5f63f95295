"""The quantization variants tried for the bundled int8 model: fidelity on each CPU family, and speed.

    .venv/bin/python models/int8_study.py [--only NAME ...] [--families native,Haswell,cortex-a72,cortex-a76]
        [--arm64-root DIR] [--out FILE]

Every variant goes through onnx_classifier.quantize on the frames that
models/quantize_efficientnet_lite0.py calibrates on, and is measured as tests/test_int8.py measures
the shipped model: 210 camera-like frames of the test photos, top-1 agreement with the float model,
frames where they disagree although the float model's top two are more than 0.05 apart ("clear"),
and the largest confidence difference per frame (95th percentile and max). Each family runs the
same preprocessed frames: "native" on this machine (cpu.py names its int8 kernels), the others
under QEMU (onnx_classifier.emulation; ARM families need --arm64-root on an x86 machine). Emulated
runs are slow: about 17 minutes per variant for Haswell on 2 cores, 2 for each ARM CPU. Speed is
onnxruntime alone on one input on this machine, float and int8 interleaved.

Rows go to stdout as they finish, and with --out to FILE (a Markdown table).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "models")]

from onnx_classifier.cpu import describe_cpu  # noqa: E402
from onnx_classifier.emulation import FAMILIES, emulated_outputs  # noqa: E402
from onnx_classifier.quantize import Recipe, load_classifier, quantize_model, sidecar, sidecar_text  # noqa: E402
from quantize_efficientnet_lite0 import CALIBRATION_FRAMES, FLOAT_MODEL, RECIPE, SEED, calibration_frames  # noqa: E402
from tests.variants import camera_frames  # noqa: E402

POOLED_CLASSIFIER = ("head/Pool", "head/Flatten", "classifier/Gemm")
BLOCKS = {  # the stem and blocks 0..n
    0: ("stem/Conv", "block0.depthwise/Conv", "block0.project/Conv"),
    1: ("stem/Conv", "block0.depthwise/Conv", "block0.project/Conv", "block1.expand/Conv", "block1.depthwise/Conv", "block1.project/Conv"),
}
BLOCKS[2] = BLOCKS[1] + ("block2.expand/Conv", "block2.depthwise/Conv", "block2.project/Conv", "block2/Add")
BLOCKS[3] = BLOCKS[2] + ("block3.expand/Conv", "block3.depthwise/Conv", "block3.project/Conv")
MINMAX, ENTROPY, PERCENTILE = CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile
EARLY_FLOAT = BLOCKS[2] + POOLED_CLASSIFIER
OLD = dict(pair_safe_weights=False, bias_correction=False)  # the recipe before either fix
# name: recipe; keep_float=() quantizes every layer, None is run.sh quantize's default (the first
# layer and the pooled classifier)
VARIANTS = {
    "before: percentile, blocks 0-2 float (shipped until now)": Recipe(PERCENTILE, keep_float=EARLY_FLOAT, **OLD),
    "before + reduce_range (7-bit weights)": Recipe(PERCENTILE, keep_float=EARLY_FLOAT, reduce_range=True, **OLD),
    "before + uint8 weights (U8U8)": Recipe(PERCENTILE, keep_float=EARLY_FLOAT, weight_type=QuantType.QUInt8, **OLD),
    "before + per-tensor weights": Recipe(PERCENTILE, per_channel=False, keep_float=EARLY_FLOAT, **OLD),
    "before + blocks 0-3 float": Recipe(PERCENTILE, keep_float=BLOCKS[3] + POOLED_CLASSIFIER, **OLD),
    "pair-safe ranges": Recipe(PERCENTILE, keep_float=EARLY_FLOAT, bias_correction=False),
    "bias correction alone": Recipe(PERCENTILE, keep_float=EARLY_FLOAT, pair_safe_weights=False),
    "pair-safe ranges + bias correction (shipped)": RECIPE,
    "pair-safe + bias correction, minmax": Recipe(MINMAX, keep_float=EARLY_FLOAT),
    "pair-safe + bias correction, entropy": Recipe(ENTROPY, keep_float=EARLY_FLOAT),
    "pair-safe + bias correction, blocks 0-3 float": Recipe(PERCENTILE, keep_float=BLOCKS[3] + POOLED_CLASSIFIER),
    "pair-safe + bias correction, first layer + classifier float, minmax (run.sh quantize)": Recipe(MINMAX),
    "same, percentile": Recipe(PERCENTILE),
    "before, first layer + classifier float (run.sh quantize until now)": Recipe(MINMAX, **OLD),
}
EVALUATION_FRAMES = 210
SPEED_ROUNDS = 60


def fidelity(expected: np.ndarray, scores: np.ndarray, gaps: np.ndarray) -> str:
    differences = np.abs(scores - expected).max(axis=1)
    disagree = scores.argmax(axis=1) != expected.argmax(axis=1)
    clear = int((disagree & (gaps > 0.05)).sum())
    return f"{1 - disagree.mean():.3f} / {clear} / {np.percentile(differences, 95):.3f} / {differences.max():.3f}"


def speedup(reference, int8, tensor) -> float:
    times: dict[str, list[float]] = {"float": [], "int8": []}
    for _ in range(SPEED_ROUNDS):
        for key, classifier in (("float", reference), ("int8", int8)):
            started = time.perf_counter()
            classifier.scores(tensor)
            times[key].append(time.perf_counter() - started)
    return float(np.median(times["float"]) / np.median(times["int8"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--families", default="native,cortex-a72,cortex-a76", help="comma-separated: native and/or " + ", ".join(FAMILIES))
    parser.add_argument("--arm64-root", type=Path, help="an arm64 root with the module installed (tests/emulated/arm64_root.sh)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    families = args.families.split(",")
    reference = load_classifier({"model_path": str(FLOAT_MODEL)})
    frames = list(calibration_frames(CALIBRATION_FRAMES, SEED))
    evaluation = np.stack([reference.preprocess(data) for _, data in camera_frames(EVALUATION_FRAMES)])
    expected = np.stack([reference.scores(t) for t in evaluation])
    top_two = np.sort(expected, axis=1)[:, -2:]
    gaps = top_two[:, 1] - top_two[:, 0]
    cpu = describe_cpu()
    names = [f"native ({cpu['int8_kernels'].split(':')[0]})" if f == "native" else f"{f} (emulated)" for f in families]
    lines = [
        f"native: {cpu['model']}; each cell: agreement / clear disagreements / p95 / max confidence difference",
        "",
        "| variant | " + " | ".join(names) + " | model alone, native |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "int8.onnx"
        for name in args.only or VARIANTS:
            quantize_model(reference, frames, reference.preprocess, out, VARIANTS[name])
            out.with_suffix(".json").write_text(sidecar_text(sidecar(reference, out)))
            int8 = load_classifier({"model_path": str(out)})
            cells = []
            for family in families:
                if family == "native":
                    scores = np.stack([int8.scores(t) for t in evaluation])
                else:
                    spec = int8.model.spec
                    raw = emulated_outputs(FAMILIES[family], out, spec.input_name, spec.output_name, evaluation, args.arm64_root)
                    scores = np.stack([int8.postprocess(r) for r in raw])
                cells.append(fidelity(expected, scores, gaps))
            row = f"| {name} | " + " | ".join(cells) + f" | {speedup(reference, int8, evaluation[0]):.2f}x |"
            lines.append(row)
            print(row, flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
