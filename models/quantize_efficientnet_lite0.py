"""Make models/efficientnet_lite0_int8.onnx and its sidecar from the float model, reproducibly.

    .venv/bin/python models/quantize_efficientnet_lite0.py [--out PATH]

Made with onnxruntime 1.32.0 (onnx 1.23.2, numpy 2.4.6, Pillow 13.0.0, Python 3.11): with these
versions a second run writes the same bytes (the script prints the SHA-256). Another onnxruntime may
choose other ranges or lay the graph out differently; the fidelity test (tests/test_int8.py) says
whether its result is still good.

Method (docs: README "The int8 model" has each variant tried, with its figures on each CPU family):
- calibration: CALIBRATION_FRAMES camera-like frames made from the photos in models/calibration/
  (none of them is a test photo): random crops of 50-100% at camera aspect ratios and resolutions,
  mirrored at random, JPEG-encoded, then fed through the service's own preprocessing;
- onnxruntime's `quantize_static` in QDQ format, activation ranges from the 99.999th percentile
  (Percentile calibration), int8 weights per output channel, uint8 activations per tensor
  (onnx_classifier.quantize, as `run.sh quantize` uses it);
- each weight channel's range covers the sum of any two adjacent same-sign weights
  (onnx_classifier.pair_safe), so that x86 CPUs without VNNI, whose int8 kernels add pairs of
  products in saturating int16, compute the same sums as every other CPU;
- bias correction (onnx_classifier.bias_correction): each layer's bias takes back the mean error
  its int8 weights make on the calibration frames;
- left in float: the stem and the first three blocks, where onnxruntime's debugging tools
  (qdq_loss_debug) show the signal-to-noise ratio falling fastest (high resolution, depthwise
  kernels of few weights each), and the classifier with the pooling before it. A layer stays float
  only if its input is float: onnxruntime quantizes, per tensor, the weights of a float layer fed by
  a DequantizeLinear when it loads the model.
"""

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from onnx_classifier.quantize import Recipe, load_classifier, quantize_model, sidecar, sidecar_text  # noqa: E402

FLOAT_MODEL = HERE / "efficientnet_lite0.onnx"
INT8_MODEL = HERE / "efficientnet_lite0_int8.onnx"
PHOTOS = HERE / "calibration"
CALIBRATION_FRAMES = 120
SEED = 0
RESOLUTIONS = ((640, 480), (1280, 720), (1024, 768), (1920, 1080), (1080, 1920))
RECIPE = Recipe(
    method=CalibrationMethod.Percentile,
    keep_float=(
        "stem/Conv",
        "block0.depthwise/Conv", "block0.project/Conv",
        "block1.expand/Conv", "block1.depthwise/Conv", "block1.project/Conv",
        "block2.expand/Conv", "block2.depthwise/Conv", "block2.project/Conv", "block2/Add",
        "head/Pool", "head/Flatten", "classifier/Gemm",
    ),
)


def calibration_frames(count: int, seed: int):
    """JPEG frames cut from the calibration photos, cycling through them; deterministic."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(path).convert("RGB") for path in sorted(PHOTOS.glob("*.jpg"))]
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = RESOLUTIONS[rng.integers(len(RESOLUTIONS))]
        aspect = width / height
        crop_w = min(photo.width, photo.height * aspect) * rng.uniform(0.5, 1.0)
        crop_h = crop_w / aspect
        left, top = rng.uniform(0, photo.width - crop_w), rng.uniform(0, photo.height - crop_h)
        frame = photo.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        if rng.integers(2):
            frame = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        frame.save(buffer, "JPEG", quality=int(rng.choice([75, 90, 95])))
        yield buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=INT8_MODEL, help="where to write the model (replaced); its sidecar goes beside it")
    args = parser.parse_args()
    classifier = load_classifier({"model_path": str(FLOAT_MODEL)})
    frames = list(calibration_frames(CALIBRATION_FRAMES, SEED))
    quantize_model(classifier, frames, classifier.preprocess, args.out, RECIPE)
    args.out.with_suffix(".json").write_text(sidecar_text(sidecar(classifier, args.out)))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest}) and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
