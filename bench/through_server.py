"""get_classifications of a 1920x1080 JPEG through a real viam-server, from the Python and the Go
client, against the direct call to the module.

    .venv/bin/python bench/through_server.py [--rounds 60] [--json bench/results/through_server.json]

- direct:           the Python SDK's VisionClient on the module's own unix socket (bench.py's `e2e`
                    row), the module started by tests/harness.py's Python parent robot;
- viam-server (Python): RobotClient over a plain local connection to viam-server, which passes the
                    call to the same module code, started by viam-server as a local module;
- viam-server (Go):  the Go SDK (tests/integration/goclient's `bench`), same viam-server.
viam-server is the integration tier's build (tests/integration/build_viam_server.sh, cached) with the
README's local-module machine, in a network namespace of its own as in the tier (needs root). The three are measured interleaved, round by round, on the same frame
(bench/frames.py), with the module's default attributes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.frames import busy_frame, encoded  # noqa: E402
from tests.harness import StillCamera, running_module  # noqa: E402
from tests.integration.machine import (  # noqa: E402
    ViamServer,
    build_go_client,
    build_viam_server,
    free_port,
    image_from_bytes,
    isolate_network,
    prepare_module_environment,
    readme_local_machine,
)
from viam.services.vision import VisionClient  # noqa: E402

SIZE = (1920, 1080)
COUNT = 5


class GoClient:
    """goclient's `bench` mode: one call per line written to it, its milliseconds read back."""

    def __init__(self, binary: Path, address: str, frame_path: Path):
        self.command = [str(binary), "bench", str(frame_path)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VIAM_API_KEY")} | {"VIAM_ADDRESS": address}

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )

    async def call_ms(self) -> float:
        self.process.stdin.write(b"\n")
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"goclient bench exited with status {await self.process.wait()}")
        return float(line)

    async def stop(self) -> None:
        self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), 30)


async def timed_ms(call) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1e3


async def measure(server: ViamServer, go: GoClient, frame: bytes, rounds: int) -> dict[str, list[float]]:
    image = image_from_bytes(frame)
    samples: dict[str, list[float]] = {"direct": [], "viam-server, Python client": [], "viam-server, Go client": []}
    machine = await server.connect()
    try:
        through = VisionClient.from_robot(machine, "classifier")
        async with running_module([StillCamera("cam", None)]) as module:
            await module.add({})
            direct = module.vision()
            await go.start()
            try:
                for round_index in range(rounds + 3):  # 3 rounds of warm-up
                    measured = {
                        "direct": await timed_ms(lambda: direct.get_classifications(image, COUNT)),
                        "viam-server, Python client": await timed_ms(lambda: through.get_classifications(image, COUNT)),
                        "viam-server, Go client": await go.call_ms(),
                    }
                    if round_index >= 3:
                        for name, ms in measured.items():
                            samples[name].append(ms)
            finally:
                await go.stop()
    finally:
        await machine.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "through_server.json")
    args = parser.parse_args()

    frame = encoded(busy_frame(*SIZE), "JPEG")
    with tempfile.TemporaryDirectory(prefix="oc-bench-", dir="/tmp") as tmp:
        folder = Path(tmp)
        frame_path = folder / "frame.jpg"
        frame_path.write_bytes(frame)
        binary, go_binary = build_viam_server(), build_go_client(folder)
        prepare_module_environment()
        isolate_network()  # as the tier does: viam-server's start-up network checks stay on this machine
        config = readme_local_machine() | {"network": {"bind_address": f"127.0.0.1:{free_port()}"}}
        server = ViamServer(binary, folder, config)
        server.start()
        try:
            asyncio.run(server.wait_ready(["classifier"]))
            samples = asyncio.run(measure(server, GoClient(go_binary, server.address, frame_path), frame, args.rounds))
        finally:
            server.stop()

    direct_median = float(np.median(samples["direct"]))
    rows = {
        name: {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "n": len(ms),
               "x_direct": float(np.median(ms)) / direct_median}
        for name, ms in samples.items()
    }
    print(f"get_classifications, jpeg {SIZE[0]}x{SIZE[1]} ({len(frame)} bytes), {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| path | median ms | p95 ms | x direct |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_ms']:.2f} | {row['p95_ms']:.2f} | {row['x_direct']:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"frame_bytes": len(frame), "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
