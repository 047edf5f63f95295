"""A flickering camera, before and after service-side smoothing.

    .venv/bin/python bench/flicker.py [--frames 18] [--window 5] [--hold 3]

A parent robot's camera serves a sequence of real frames: the rocket photo, which the bundled model
finds nearly tied between "missile" and "projectile", with camera shake (a different crop each
frame) and sensor noise, and twice a frame of something else passing in front of the camera (the
coffee photo). Every frame is classified twice through the real module: raw
(`extra={"smoothing": false}`, which leaves the state alone) and smoothed by the service's
`smoothing_window` and `label_hold_frames`. Prints the top label and confidence of each.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import StillCamera, camera_dependency, running_module  # noqa: E402


def shaky_frames(count: int, seed: int = 2) -> list[bytes]:
    """The rocket photo as a shaking, zooming camera sees it: the crop wanders, with sensor noise."""
    rng = np.random.default_rng(seed)
    photo = Image.open(ROOT / "tests" / "data" / "rocket.jpg").convert("RGB")
    frames = []
    for _ in range(count):
        scale = rng.uniform(0.8, 1.0)
        dx, dy = rng.uniform(0, 1 - scale, 2) * photo.size
        box = (dx, dy, photo.width * scale + dx, photo.height * scale + dy)
        frame = photo.resize((480, 720), Image.Resampling.BILINEAR, box=box)
        pixels = np.asarray(frame, np.float32) + rng.normal(0, 3.0, (720, 480, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        frames.append(buffer.getvalue())
    return frames


async def main(frames: int, window: int, hold: int) -> None:
    sequence = shaky_frames(frames)
    passer_by = (ROOT / "tests" / "data" / "coffee.png").read_bytes()
    for index in (frames // 3, 2 * frames // 3):
        sequence[index] = passer_by
    camera = StillCamera("cam", sequence[0], "image/png")
    async with running_module([camera]) as module:
        attributes = {"camera_name": "cam", "smoothing_window": window, "label_hold_frames": hold}
        await module.add(attributes, [camera_dependency("cam")])
        vision = module.vision()
        print(f"smoothing_window {window}, label_hold_frames {hold}\n")
        print("| frame | raw top label | raw | smoothed top label | smoothed |")
        print("|---:|---|---:|---|---:|")
        raw_changes = smoothed_changes = 0
        previous_raw = previous_smoothed = None
        for index, frame in enumerate(sequence, 1):
            camera.frame = frame
            (raw,) = await vision.get_classifications_from_camera("cam", 1, extra={"smoothing": False})
            (smoothed,) = await vision.get_classifications_from_camera("cam", 1)
            raw_changes += previous_raw is not None and raw.class_name != previous_raw
            smoothed_changes += previous_smoothed is not None and smoothed.class_name != previous_smoothed
            previous_raw, previous_smoothed = raw.class_name, smoothed.class_name
            print(f"| {index} | {raw.class_name} | {raw.confidence:.3f} | {smoothed.class_name} | {smoothed.confidence:.3f} |")
        print(f"\ntop label changes: raw {raw_changes}, smoothed {smoothed_changes}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=18)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--hold", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.frames, args.window, args.hold))
