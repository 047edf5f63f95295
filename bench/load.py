"""Load test: concurrent clients mixing direct images and camera frames against the real module.

    .venv/bin/python bench/load.py [--seconds 60] [--clients 8] [--json bench/results/load.json]

The module runs as viam-server runs it (a subprocess on a unix socket, driven through the module
protocol, its camera served by a parent robot: tests/harness.py). Each client has its own
connection to the module's socket; even-numbered clients send images (JPEG, PNG and Viam RGBA
frames at camera sizes), odd-numbered ones ask for the camera's frame (a 1280x720 JPEG), back to
back, top-5 each, for --seconds. Loopback only. Reports the calls, the errors by gRPC status,
latency p50/p99 (overall and per kind), and the module's resident memory at one third of the run
and at its end. Passes (exit 0) with zero errors and at most 20 MiB of growth between the two.
Then, with calls in flight again, the seconds from SIGTERM to the module's exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpclib import GRPCError  # noqa: E402
from grpclib.client import Channel  # noqa: E402
from PIL import Image  # noqa: E402
from viam.media.video import CameraMimeType, ViamImage  # noqa: E402
from viam.services.vision import VisionClient  # noqa: E402

from bench.frames import busy_frame, encoded  # noqa: E402
from tests.harness import StillCamera, camera_dependency, running_module  # noqa: E402

CAMERA = "cam"
COUNT = 5
MAX_GROWTH_MIB = 20.0


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def viam_rgba(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    return b"RGBA" + struct.pack(">II", *rgba.size) + rgba.tobytes()


def camera_frame() -> bytes:
    return encoded(busy_frame(1280, 720, seed=1), "JPEG")


def client_images() -> list[ViamImage]:
    """What the image-sending clients cycle through: camera-sized JPEGs, a PNG and a raw RGBA frame."""
    images = []
    for (width, height), seed in (((640, 480), 2), ((1920, 1080), 3)):
        images.append(ViamImage(encoded(busy_frame(width, height, seed=seed), "JPEG"), CameraMimeType.JPEG))
    images.append(ViamImage(encoded(busy_frame(800, 600, seed=4), "PNG"), CameraMimeType.PNG))
    image = ViamImage(viam_rgba(busy_frame(640, 480, seed=5)), CameraMimeType.VIAM_RGBA)
    image._width, image._height = 640, 480  # the client parses only JPEG and PNG for these
    images.append(image)
    return images


@dataclass
class LoadResult:
    seconds: float
    clients: int
    calls: int = 0
    errors: Counter = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)  # the first message of each kind of error
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"image": [], "camera": []})
    rss_mib: dict[str, float] = field(default_factory=dict)
    sigterm_exit_s: Optional[float] = None

    def percentiles(self, kind: Optional[str] = None) -> dict[str, float]:
        values = self.latencies[kind] if kind else self.latencies["image"] + self.latencies["camera"]
        if not values:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "calls": 0}
        ms = np.array(values) * 1e3
        return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "calls": len(values)}

    @property
    def growth_mib(self) -> float:
        return self.rss_mib["end"] - self.rss_mib["first_third"]

    def summary(self) -> dict:
        return {
            "seconds": self.seconds,
            "clients": self.clients,
            "calls": self.calls,
            "calls_per_s": self.calls / self.seconds,
            "errors": dict(self.errors),
            "error_messages": dict(self.messages),
            "latency": {"all": self.percentiles(), "image": self.percentiles("image"), "camera": self.percentiles("camera")},
            "rss_mib": dict(self.rss_mib),
            "rss_growth_mib": self.growth_mib,
            "sigterm_exit_s": self.sigterm_exit_s,
        }


async def drive(socket_path: Path, pid: int, seconds: float, clients: int = 8, images: Optional[list[ViamImage]] = None,
                name: str = "classifier", call_timeout_s: float = 30.0) -> LoadResult:
    """`clients` concurrent callers for `seconds`, each on its own connection; RSS of `pid` sampled
    at one third and at the end. A call that takes more than `call_timeout_s` counts as a TIMEOUT error."""
    images = images or client_images()
    result = LoadResult(seconds, clients)
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        channel = Channel(path=str(socket_path))
        vision = VisionClient(name, channel)
        kind = "image" if index % 2 == 0 else "camera"
        turn = index
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    if kind == "image":
                        call = vision.get_classifications(images[turn % len(images)], COUNT)
                    else:
                        call = vision.get_classifications_from_camera(CAMERA, COUNT)
                    answer = await asyncio.wait_for(call, call_timeout_s)
                    if len(answer) != COUNT:
                        result.errors[f"{len(answer)} results"] += 1
                except GRPCError as e:
                    result.errors[e.status.name] += 1
                    result.messages.setdefault(e.status.name, str(e.message))
                except asyncio.TimeoutError:
                    result.errors["TIMEOUT"] += 1
                    result.messages.setdefault("TIMEOUT", f"no answer within {call_timeout_s} s")
                else:
                    result.latencies[kind].append(time.perf_counter() - started)
                result.calls += 1
                turn += 1
        finally:
            channel.close()

    async def sample() -> None:
        await asyncio.sleep(seconds / 3)
        result.rss_mib["first_third"] = resident_mib(pid)

    await asyncio.gather(sample(), *(client(i) for i in range(clients)))
    result.rss_mib["end"] = resident_mib(pid)
    return result


async def run(seconds: float, clients: int) -> LoadResult:
    camera = StillCamera(CAMERA, camera_frame())
    images = client_images()
    async with running_module([camera]) as module:
        await module.add({"camera_name": CAMERA}, [camera_dependency(CAMERA)])
        vision = module.vision()
        for image in images:  # warm-up: one of each, and the camera
            await vision.get_classifications(image, COUNT)
        await vision.get_classifications_from_camera(CAMERA, COUNT)
        result = await drive(module.socket_path, module.process.pid, seconds, clients, images)
        result.sigterm_exit_s = await sigterm_exit_s(module.socket_path, module.process, clients, images)
    return result


async def sigterm_exit_s(socket_path: Path, process, clients: int, images: list[ViamImage]) -> float:
    """Seconds from SIGTERM to the module's exit, sent while `clients` callers have calls in flight."""
    load = asyncio.create_task(drive(socket_path, process.pid, 60, clients, images))
    await asyncio.sleep(1.0)
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    while process.poll() is None:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    load.cancel()
    with contextlib.suppress(BaseException):  # its calls fail as the module goes; only the exit is measured here
        await load
    return elapsed


def report(summary: dict) -> str:
    latency = summary["latency"]
    rss = summary["rss_mib"]
    lines = [
        f"{summary['clients']} clients for {summary['seconds']:.0f} s: {summary['calls']} calls "
        f"({summary['calls_per_s']:.1f}/s), errors: {summary['errors'] or 'none'}",
    ]
    for kind in ("all", "image", "camera"):
        row = latency[kind]
        lines.append(f"  {kind:<7} p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  ({row['calls']} calls)")
    lines.append(
        f"  module RSS {rss['first_third']:.1f} MiB at one third, {rss['end']:.1f} MiB at the end: "
        f"growth {summary['rss_growth_mib']:+.1f} MiB (limit {MAX_GROWTH_MIB:.0f})"
    )
    lines.append(f"  SIGTERM with {summary['clients']} clients' calls in flight: the module exited in {summary['sigterm_exit_s']:.2f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    result = asyncio.run(run(args.seconds, args.clients))
    summary = result.summary()
    summary["passed"] = not result.errors and result.growth_mib <= MAX_GROWTH_MIB
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(report(summary))
    print(("PASS" if summary["passed"] else "FAIL") + f"  (wrote {args.json})")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
