"""Watch a camera and print a line only when the scene changes.

    VIAM_ADDRESS=... VIAM_API_KEY_ID=... VIAM_API_KEY=... \
        .venv/bin/python examples/watch_scene.py --service classifier --camera cam --interval 0.5

The flicker is removed on the service side: configure it with, for example,
`"smoothing_window": 5, "label_hold_frames": 3`, and the top label it reports changes only after
a new label has led the averaged confidences for three frames in a row. The client only compares
labels; it needs no smoothing of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
from typing import AsyncIterator, Optional

from grpclib import GRPCError
from viam.services.vision import VisionClient

from _connect import connect


async def scene_changes(
    classifier: VisionClient, camera: str, interval: float, frames: Optional[int] = None
) -> AsyncIterator[str]:
    """A line each time the top label changes (and for each camera error), over `frames` frames or forever."""
    current = None
    seen = 0
    while frames is None or seen < frames:
        seen += 1
        try:
            results = await classifier.get_classifications_from_camera(camera, 1)
        except GRPCError as e:  # a camera that is unplugged or hangs: say so and keep watching
            yield f"{datetime.datetime.now():%H:%M:%S} {e.status.name}: {e.message}"
            await asyncio.sleep(interval)
            continue
        label = results[0].class_name if results else None
        if label != current:
            confidence = f" ({results[0].confidence:.2f})" if results else ""
            yield f"{datetime.datetime.now():%H:%M:%S} scene: {label or 'nothing above the threshold'}{confidence}"
            current = label
        await asyncio.sleep(interval)


async def main(service: str, camera: str, interval: float) -> None:
    machine = await connect()
    try:
        async for line in scene_changes(VisionClient.from_robot(machine, service), camera, interval):
            print(line, flush=True)
    finally:
        await machine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", default="classifier")
    parser.add_argument("--camera", default="cam")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between frames")
    args = parser.parse_args()
    asyncio.run(main(args.service, args.camera, args.interval))
