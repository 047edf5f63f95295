"""Speed and memory of the classify path, against the physical limit of this machine.

    .venv/bin/python bench/bench.py [--rounds 60] [--requests 1000] [--providers CUDAExecutionProvider,CPUExecutionProvider]
                                    [--json bench/results/latest.json]

All timings are taken interleaved, round by round, in one run, and compared only as ratios:
- floor:  onnxruntime `run` alone on a prepared tensor (the service's session and thread settings);
- decode: the JPEG decoded at the reduced scale the model needs (libjpeg DCT scaling), nothing else
          (for PNG, which has no reduced decode, the full decode);
- limit = floor + decode, the least any pipeline can spend on that frame here;
- engine: Classifier.classify in-process, bytes in, top-5 out;
- e2e:    get_classifications through the real module over its unix socket;
- camera: get_classifications_from_camera, the frame served by a parent robot's camera;
- naive:  a plain Pillow pipeline (full decode, resize, crop, float maths) on the same session.
Then resident memory of the module after warm-up and after --requests more requests, the time from
AddResource to the first answer in a fresh module, and the time to re-add an unchanged resource.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.frames import busy_frame, encoded  # noqa: E402
from onnx_classifier import Classifier, parse_service_config  # noqa: E402
from onnx_classifier.head import softmax  # noqa: E402
from tests.harness import StillCamera, camera_dependency, running_module  # noqa: E402
from viam.media.video import CameraMimeType, ViamImage  # noqa: E402

JPEG_SIZES = [(640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
CAMERA_SIZE = (1920, 1080)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
TARGETS = [
    # (description, check on the results)
    ("engine 1920x1080 <= 1.15x limit", lambda r: r["engine jpeg 1920x1080"]["x_limit"] <= 1.15),
    ("e2e 1920x1080 <= 1.4x limit", lambda r: r["e2e jpeg 1920x1080"]["x_limit"] <= 1.4),
    ("e2e 3840x2160 <= 1.4x limit", lambda r: r["e2e jpeg 3840x2160"]["x_limit"] <= 1.4),
    ("camera 1920x1080 <= 1.6x limit", lambda r: r["camera jpeg 1920x1080"]["x_limit"] <= 1.6),
    (
        "e2e 1920x1080 >= 1.5x faster than naive",
        lambda r: r["naive jpeg 1920x1080"]["median_ms"] / r["e2e jpeg 1920x1080"]["median_ms"] >= 1.5,
    ),
]


def naive_classify(session: ort.InferenceSession, labels, data: bytes):
    """What a straightforward module does: full decode, resize, crop, float maths, run, softmax, sort."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    tensor = ((np.asarray(image, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
    scores = softmax(session.run(None, {"input": tensor})[0][0].astype(np.float64))
    return [(labels[i], float(scores[i])) for i in np.argsort(-scores)[:5]]


def least_decode(classifier: Classifier, data: bytes) -> None:
    """Decode at the scale the model's input needs and no finer; nothing else."""
    image = Image.open(io.BytesIO(data))
    image.decodermaxblock = len(data)  # one piece, as the service feeds it
    if image.format == "JPEG":
        scale = classifier._preprocess.placement(*image.size).scale
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    image.load()


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def summarize(samples: dict[str, list[float]]) -> dict[str, dict]:
    rows = {}
    for name, values in samples.items():
        ms = np.array(values) * 1e3
        rows[name] = {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "n": len(values)}
    floor = rows["floor"]["median_ms"]
    for name, row in rows.items():
        kind, *frame = name.split(" ")
        frame_key = " ".join(frame)
        decode = rows.get(f"decode {frame_key}")
        row["x_floor"] = row["median_ms"] / floor
        if decode is not None and kind not in ("floor", "decode"):
            row["limit_ms"] = floor + decode["median_ms"]
            row["x_limit"] = row["median_ms"] / row["limit_ms"]
    return rows


async def measure(rounds: int, requests: int, providers: list[str]) -> dict:
    frames = {}
    for width, height in JPEG_SIZES:
        frames[f"jpeg {width}x{height}"] = encoded(busy_frame(width, height), "JPEG")
    frames["png 1920x1080"] = encoded(busy_frame(1920, 1080), "PNG")
    camera_frame = frames[f"jpeg {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}"]

    attributes = {"camera_name": "cam", "providers": providers}
    classifier = Classifier.from_onnx_file(parse_service_config(attributes).classifier)
    runtime = classifier.backend
    session = runtime._session
    tensor = classifier.preprocess(camera_frame)
    results: dict = {"frames": {k: len(v) for k, v in frames.items()}, "providers_in_use": list(runtime.providers)}

    async with running_module([StillCamera("cam", camera_frame)]) as module:
        await module.add(attributes, [camera_dependency("cam")])
        vision = module.vision()
        images = {k: ViamImage(v, CameraMimeType.JPEG if k.startswith("jpeg") else CameraMimeType.PNG) for k, v in frames.items()}

        measurements = [("floor", lambda: runtime.run(tensor))]
        for key, data in frames.items():
            measurements += [
                (f"decode {key}", lambda d=data: least_decode(classifier, d)),
                (f"engine {key}", lambda d=data: classifier.classify(d, 5)),
                (f"e2e {key}", lambda k=key: vision.get_classifications(images[k], 5)),
            ]
            if key.startswith("jpeg"):
                measurements.append((f"naive {key}", lambda d=data: naive_classify(session, classifier.labels, d)))
        measurements.append(
            (f"camera jpeg {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}", lambda: vision.get_classifications_from_camera("cam", 5))
        )

        async def timed(call) -> float:
            started = time.perf_counter()
            result = call()
            if asyncio.iscoroutine(result):
                await result
            return time.perf_counter() - started

        for _, call in measurements:  # warm-up
            await timed(call)
        samples: dict[str, list[float]] = defaultdict(list)
        for index in range(rounds):
            shift = index % len(measurements)
            for name, call in measurements[shift:] + measurements[:shift]:
                samples[name].append(await timed(call))
        results["timings"] = summarize(samples)

        pid = module.process.pid
        results["memory"] = {"after_warmup_mib": resident_mib(pid)}
        for _ in range(requests):
            await vision.get_classifications(images[f"jpeg {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}"], 5)
        results["memory"][f"after_{requests}_more_mib"] = resident_mib(pid)
        results["memory"]["requests"] = requests

    # A fresh module process: AddResource to the first answer (a cold load), then remove and re-add.
    async with running_module([StillCamera("cam", camera_frame)]) as module:
        vision = module.vision()
        started = time.perf_counter()
        await module.add(attributes, [camera_dependency("cam")])
        await vision.get_classifications(images["jpeg 1920x1080"], 5)
        first_answer = time.perf_counter() - started
        await module.remove()
        started = time.perf_counter()
        await module.add(attributes, [camera_dependency("cam")])
        await vision.get_classifications(images["jpeg 1920x1080"], 5)
        readd = time.perf_counter() - started
    results["startup"] = {"add_to_first_answer_s": first_answer, "readd_to_first_answer_s": readd}
    return results


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    if gpu is not None and gpu.returncode == 0:
        cpu += f" with {gpu.stdout.strip()}"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, onnxruntime {ort.__version__}, Pillow {Image.__version__}"


def report(results: dict) -> str:
    timings = results["timings"]
    lines = [
        f"machine: {results['machine']}",
        f"execution providers in use: {', '.join(results['providers_in_use'])}",
        "",
        "| measurement | frame | bytes | median ms | p95 ms | x limit | x floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = ["floor", "decode", "engine", "e2e", "camera", "naive"]

    def position(name: str):
        kind, _, frame = name.partition(" ")
        image_format, _, size = frame.partition(" ")
        width, _, height = size.partition("x")
        return order.index(kind), image_format != "jpeg", int(width or 0) * int(height or 0)

    for name in sorted(timings, key=position):
        row = timings[name]
        kind, _, frame = name.partition(" ")
        size = results["frames"].get(frame, "")
        x_limit = f"{row['x_limit']:.2f}" if "x_limit" in row else ""
        lines.append(
            f"| {kind} | {frame} | {size} | {row['median_ms']:.2f} | {row['p95_ms']:.2f} | {x_limit} | {row['x_floor']:.2f} |"
        )
    memory, startup = results["memory"], results["startup"]
    requests = memory["requests"]
    lines += [
        "",
        f"resident memory: {memory['after_warmup_mib']:.0f} MiB after warm-up, "
        f"{memory[f'after_{requests}_more_mib']:.0f} MiB after {requests} more requests",
        f"AddResource to first answer: {startup['add_to_first_answer_s']:.2f} s; "
        f"re-add of an unchanged resource to first answer: {startup['readd_to_first_answer_s']:.3f} s",
        "",
    ]
    checks = results["targets"]
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--providers", default="CPUExecutionProvider", help="comma-separated, as the 'providers' attribute")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    results = asyncio.run(measure(args.rounds, args.requests, args.providers.split(",")))
    results["machine"] = machine()
    memory, startup = results["memory"], results["startup"]
    checks = {name: bool(check(results["timings"])) for name, check in TARGETS}
    checks["resident memory <= 250 MiB"] = memory[f"after_{args.requests}_more_mib"] <= 250
    checks[f"memory growth <= 10 MiB over {args.requests} requests"] = (
        memory[f"after_{args.requests}_more_mib"] - memory["after_warmup_mib"] <= 10
    )
    checks["first answer within 1.5 s of AddResource"] = startup["add_to_first_answer_s"] <= 1.5
    checks["re-add within 0.3 s"] = startup["readd_to_first_answer_s"] <= 0.3
    results["targets"] = checks
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(report(results))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
