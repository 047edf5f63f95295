"""Side measurements behind the service's settings (in-process, bundled model).

    .venv/bin/python bench/study.py

- onnxruntime intra-op threads (1, 2) and spinning (off, on): floor, and floor while another
  thread decodes JPEGs (what the service's decoder does on the other core);
- graph optimization level: session creation and run time, and loading a saved optimized model;
- copies between Pillow, numpy and onnxruntime;
- protobuf for camera-sized requests (what the SDK does per call on each side).
"""

from __future__ import annotations

import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.frames import busy_frame, encoded  # noqa: E402
from onnx_classifier.paths import BUNDLED_MODEL  # noqa: E402
from viam.proto.service.vision import GetClassificationsRequest  # noqa: E402


def median_ms(call, repeats: int = 40) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def session(threads: int, spinning: bool, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, path=BUNDLED_MODEL, save_to=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    tensor = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    jpeg = encoded(busy_frame(1920, 1080), "JPEG")

    print("threads/spinning: floor ms alone | floor ms with a decoder busy on the other core")
    for threads in (1, 2):
        for spinning in (False, True):
            s = session(threads, spinning)
            alone = median_ms(lambda: s.run(None, {"input": tensor}))
            stop = threading.Event()

            def decode_loop():
                while not stop.is_set():
                    image = Image.open(io.BytesIO(jpeg))
                    image.draft("RGB", (960, 540))
                    image.load()

            worker = threading.Thread(target=decode_loop)
            worker.start()
            busy = median_ms(lambda: s.run(None, {"input": tensor}))
            stop.set()
            worker.join()
            print(f"  threads={threads} spinning={'on ' if spinning else 'off'}: {alone:6.2f} | {busy:6.2f}")

    print("graph optimization: session creation ms | run ms")
    for name, level in [
        ("disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ]:
        created = median_ms(lambda: session(2, False, level), repeats=5)
        s = session(2, False, level)
        print(f"  {name:9s}: {created:7.1f} | {median_ms(lambda: s.run(None, {'input': tensor})):6.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session(2, False, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, save_to=optimized)
        created = median_ms(lambda: session(2, False, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, path=optimized), repeats=5)
        print(f"  saved optimized model, loaded with optimization off: {created:7.1f} ms to create")

    print("copies (1920x1080 JPEG drafted to 960x540, region resized to 224x224):")
    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (960, 540))
    image.load()
    small = image.resize((224, 224))
    pixels = np.asarray(small)
    print(f"  np.asarray(224x224 image): {median_ms(lambda: np.asarray(small)) * 1e3:7.1f} us")
    print(f"  float maths + NCHW transpose for 224x224: {median_ms(lambda: ((pixels * 0.0171) - 2.1).transpose(2, 0, 1)) * 1e3:7.1f} us")
    print(f"  np.asarray(960x540 image): {median_ms(lambda: np.asarray(image)) * 1e3:7.1f} us (avoided: only 224x224 is converted)")

    print("protobuf, GetClassificationsRequest (each side of a call):")
    for size in ((1920, 1080), (3840, 2160)):
        data = encoded(busy_frame(*size), "JPEG")
        wire = GetClassificationsRequest(name="classifier", image=data, n=5).SerializeToString()
        build = median_ms(lambda: GetClassificationsRequest(name="classifier", image=data, n=5).SerializeToString())
        parse = median_ms(lambda: GetClassificationsRequest.FromString(wire).image)
        print(f"  {size[0]}x{size[1]} ({len(data) / 1e6:.2f} MB): build+serialize {build:5.2f} ms, parse {parse:5.2f} ms")


if __name__ == "__main__":
    main()
