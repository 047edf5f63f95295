"""Speed and memory of the classify path, against the physical limit of this machine.

    .venv/bin/python bench/bench.py [--rounds 60] [--requests 1000] [--providers CUDAExecutionProvider,CPUExecutionProvider]
                                    [--json bench/results/latest.json]

All timings are taken interleaved, round by round, in one run, and compared only as ratios:
- floor:  onnxruntime `run` alone on a prepared tensor (the service's session and thread settings);
- decode: the JPEG decoded at the reduced scale the model needs (libjpeg DCT scaling), nothing else
          (for PNG, which has no reduced decode, the full decode);
- limit = floor + decode, the least any pipeline can spend on that frame here;
- engine: Classifier.classify in-process, bytes in, top-5 out;
- e2e:    get_classifications through the real module over its unix socket, from a grpcio client
          (HTTP/2 framed in C, as viam-server's grpc-go frames it);
- e2e-sdk: the same from the Python SDK's VisionClient (HTTP/2 framed in Python);
- camera: get_classifications_from_camera (grpcio), the frame served by a parent robot's camera;
- naive:  a plain Pillow pipeline (full decode, resize, crop, float maths) on the same session;
- floor-int8, engine-int8, e2e-int8: the same for the bundled int8 model (its own service in the
          same module), in the same rounds, to compare with the float model's rows;
- mlmodel-f32 / mlmodel-u8: get_classifications as `e2e`, with the model run by an ML model service on
          the parent robot (`mlmodel_name`): the bundled model as it is (float32 input), and with a uint8
          NHWC input (the normalization moved into the graph), as TF-Lite models take.
Then several cameras at once: 1, 2 and 4 streams each calling get_classifications_from_camera back to
back for --stream-seconds, in calls per second; resident memory of the module after warm-up and after
--requests more requests; the time from AddResource to the first answer in a fresh module, and the
time to re-add an unchanged resource.
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

import dataclasses
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.frames import busy_frame, encoded  # noqa: E402
from bench.native import NativeVisionClient  # noqa: E402
from onnx_classifier import Classifier, parse_service_config  # noqa: E402
from onnx_classifier.head import softmax  # noqa: E402
from onnx_classifier.paths import BUNDLED_MODEL  # noqa: E402
from tests.harness import StillCamera, camera_dependency, mlmodel_dependency, running_module  # noqa: E402
from tests.mlmodel_services import OnnxModelService, PackedTensorsRPCService, tensor_info  # noqa: E402
from viam.media.video import CameraMimeType, ViamImage  # noqa: E402
from viam.resource.registry import Registry  # noqa: E402
from viam.services.mlmodel import MLModel  # noqa: E402

JPEG_SIZES = [(640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
INT8_MODEL = ROOT / "models" / "efficientnet_lite0_int8.onnx"
INT8_SERVICE = "classifier-int8"
INT8_FRAMES = ["jpeg 640x480", "jpeg 1920x1080"]
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
    ("4 streams >= 1.8x the calls per second of 1 stream", lambda r: r["streams"]["4"]["calls_per_s"] >= 1.8 * r["streams"]["1"]["calls_per_s"]),
    ("int8 floor >= 1.7x faster than float", lambda r: r["floor"]["median_ms"] / r["floor-int8"]["median_ms"] >= 1.7),
    (
        "int8 e2e 1920x1080 <= 0.85x float",
        lambda r: r["e2e-int8 jpeg 1920x1080"]["median_ms"] / r["e2e jpeg 1920x1080"]["median_ms"] <= 0.85,
    ),
    (
        "mlmodel-u8 1920x1080 <= 1.25x e2e",
        lambda r: r["mlmodel-u8 jpeg 1920x1080"]["median_ms"] / r["e2e jpeg 1920x1080"]["median_ms"] <= 1.25,
    ),
    (
        "mlmodel-f32 1920x1080 <= 1.4x e2e",
        lambda r: r["mlmodel-f32 jpeg 1920x1080"]["median_ms"] / r["e2e jpeg 1920x1080"]["median_ms"] <= 1.4,
    ),
]
# The bundled model's recipe, as attributes: a model behind an ML model service has no sidecar.
IMAGENET_RECIPE = {"resize": "center_crop", "crop_fraction": 0.875, "input_size": [224, 224],
                   "labels_path": str(BUNDLED_MODEL.with_suffix(".labels.txt"))}


def with_uint8_input(source: Path, target: Path) -> Path:
    """The model with a uint8 [1, 224, 224, 3] input: cast, NHWC to NCHW and the ImageNet
    normalization become the graph's first nodes, as in models converted from TF-Lite."""
    model = onnx.load(source)
    graph = model.graph
    (original,) = graph.input
    name = original.name
    nodes = [
        helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels_f"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["pixels_nchw", "pixel_mean"], ["centred"]),
        helper.make_node("Div", ["centred", "pixel_std"], [name]),
    ]
    graph.initializer.extend([
        numpy_helper.from_array((MEAN * 255).reshape(1, 3, 1, 1), "pixel_mean"),
        numpy_helper.from_array((STD * 255).reshape(1, 3, 1, 1), "pixel_std"),
    ])
    graph.input.remove(original)
    graph.input.append(helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 224, 224, 3]))
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.save(model, target)
    return target


def mlmodel_services(folder: Path) -> list[OnnxModelService]:
    """The bundled model behind ML model services on the parent robot: as it is, and with a uint8 input."""
    # The SDK's server hands float32 tensors to protobuf element by element (about 20 ms for
    # 1x3x224x224); viam-server's Go reads them as they are. The stand-in parent does as Go does,
    # so that the rows measure this module.
    Registry._APIS[MLModel.API] = dataclasses.replace(Registry.lookup_api(MLModel.API), rpc_service=PackedTensorsRPCService)
    return [
        OnnxModelService("f32", BUNDLED_MODEL, [tensor_info("input", "float32", [1, 3, 224, 224])], [tensor_info("logits", "float32", [1, 1000])]),
        OnnxModelService(
            "u8", with_uint8_input(BUNDLED_MODEL, folder / "uint8.onnx"),
            [tensor_info("serving_default_input:0", "uint8", [1, 224, 224, 3])], [tensor_info("logits", "float32", [1, 1000])],
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


async def streams(vision: NativeVisionClient, count: int, seconds: float) -> dict:
    """`count` cameras' worth of callers, each asking for a classification as soon as it has the last."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def stream() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await vision.get_classifications_from_camera("cam", 5)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(count)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"calls": len(latencies), "calls_per_s": len(latencies) / elapsed, "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}


async def measure(rounds: int, requests: int, providers: list[str], stream_seconds: float) -> dict:
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
    int8_attributes = {**attributes, "model_path": str(INT8_MODEL)}
    int8 = Classifier.from_onnx_file(parse_service_config(int8_attributes).classifier)

    services_folder = tempfile.TemporaryDirectory(prefix="bench-")
    services = mlmodel_services(Path(services_folder.name))
    async with running_module([StillCamera("cam", camera_frame), *services]) as module:
        await module.add(attributes, [camera_dependency("cam")])
        await module.add(int8_attributes, [camera_dependency("cam")], name=INT8_SERVICE)
        vision = module.vision()
        native, int8_native = NativeVisionClient(module.socket_path, "classifier"), NativeVisionClient(module.socket_path, INT8_SERVICE)
        images = {k: ViamImage(v, CameraMimeType.JPEG if k.startswith("jpeg") else CameraMimeType.PNG) for k, v in frames.items()}
        for service in services:
            recipe = {**IMAGENET_RECIPE, **({"mean": MEAN.tolist(), "std": STD.tolist()} if service.name == "f32" else {})}
            await module.add({**recipe, "mlmodel_name": service.name}, [mlmodel_dependency(service.name)], name=f"via-{service.name}")

        measurements = [("floor", lambda: runtime.run(tensor))]
        for key, data in frames.items():
            measurements += [
                (f"decode {key}", lambda d=data: least_decode(classifier, d)),
                (f"engine {key}", lambda d=data: classifier.classify(d, 5)),
                (f"e2e {key}", lambda d=data: native.get_classifications(d, "image/jpeg", 5)),
                (f"e2e-sdk {key}", lambda k=key: vision.get_classifications(images[k], 5)),
            ]
            if key.startswith("jpeg"):
                measurements.append((f"naive {key}", lambda d=data: naive_classify(session, classifier.labels, d)))
        camera_key = f"jpeg {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}"
        measurements.append((f"camera {camera_key}", lambda: native.get_classifications_from_camera("cam", 5)))
        measurements.append(("floor-int8", lambda: int8.backend.run(tensor)))
        for key in INT8_FRAMES:
            measurements += [
                (f"engine-int8 {key}", lambda d=frames[key]: int8.classify(d, 5)),
                (f"e2e-int8 {key}", lambda d=frames[key]: int8_native.get_classifications(d, "image/jpeg", 5)),
            ]
        for service in services:
            via = NativeVisionClient(module.socket_path, f"via-{service.name}")
            data = frames[camera_key]
            measurements.append((f"mlmodel-{service.name} {camera_key}", lambda v=via, d=data: v.get_classifications(d, "image/jpeg", 5)))

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
        results["streams"] = {str(count): await streams(native, count, stream_seconds) for count in (1, 2, 4)}

        pid = module.process.pid
        results["memory"] = {"after_warmup_mib": resident_mib(pid)}
        for _ in range(requests):
            await vision.get_classifications(images[f"jpeg {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}"], 5)
        results["memory"][f"after_{requests}_more_mib"] = resident_mib(pid)
        results["memory"]["requests"] = requests
    services_folder.cleanup()

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
    order = ["floor", "decode", "engine", "e2e", "e2e-sdk", "camera", "naive", "floor-int8", "engine-int8", "e2e-int8", "mlmodel-u8", "mlmodel-f32"]

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
    lines += ["", "| streams (camera jpeg 1920x1080) | calls/s | x 1 stream | p50 ms | p95 ms |", "|---:|---:|---:|---:|---:|"]
    one = results["streams"]["1"]["calls_per_s"]
    for count, row in results["streams"].items():
        lines.append(f"| {count} | {row['calls_per_s']:.1f} | {row['calls_per_s'] / one:.2f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} |")
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
    parser.add_argument("--stream-seconds", type=float, default=10.0, help="how long each of the 1, 2 and 4 stream runs lasts")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    results = asyncio.run(measure(args.rounds, args.requests, args.providers.split(","), args.stream_seconds))
    results["machine"] = machine()
    memory, startup = results["memory"], results["startup"]
    checks = {name: bool(check({**results["timings"], "streams": results["streams"]})) for name, check in TARGETS}
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
