"""Camera-like frames made from the real photos in tests/data: crops, flips and rescales to
camera resolutions, with sensor-like noise, JPEG-encoded as cameras send them. Deterministic."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.jpg", "hubble_deep_field.jpg", "camera.png", "coins.png")
RESOLUTIONS = ((640, 480), (1280, 720), (1024, 768), (1920, 1080), (1080, 1920), (2560, 1440), (3840, 2160))


def camera_frames(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`count` (description, JPEG bytes) pairs, cycling through the photos."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(DATA / name).convert("RGB") for name in PHOTOS]
    for index in range(count):
        name, photo = PHOTOS[index % len(PHOTOS)], photos[index % len(PHOTOS)]
        width, height = RESOLUTIONS[rng.integers(len(RESOLUTIONS))]
        # The largest crop of the frame's aspect, shrunk to 55-100% and moved at random.
        aspect = width / height
        crop_w = min(photo.width, photo.height * aspect) * rng.uniform(0.55, 1.0)
        crop_h = crop_w / aspect
        left = rng.uniform(0, photo.width - crop_w)
        top = rng.uniform(0, photo.height - crop_h)
        frame = photo.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        flipped = bool(rng.integers(2))
        if flipped:
            frame = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        noise = float(rng.choice([0.0, 2.0, 4.0]))
        if noise:
            pixels = np.asarray(frame, np.float32) + rng.normal(0.0, noise, (height, width, 3)).astype(np.float32)
            frame = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
        quality = int(rng.choice([75, 90, 95]))
        buffer = io.BytesIO()
        frame.save(buffer, "JPEG", quality=quality)
        yield f"{name} {width}x{height} flip={flipped} noise={noise:g} q={quality}", buffer.getvalue()
