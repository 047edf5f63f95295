"""Camera-sized benchmark frames: busy photo content (mosaics of the test photos with sensor-like
noise), JPEG quality 90, sized like real camera frames (about 0.5 MB at 1080p, 1.4 MB at 4K)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.jpg", "hubble_deep_field.jpg")
# Noise (standard deviation, 8-bit levels) per size: higher resolutions are smoother per pixel,
# as from a real sensor, which keeps file sizes like real cameras'.
NOISE = {(640, 480): 4.0, (1280, 720): 4.0, (1920, 1080): 4.0, (3840, 2160): 1.5}


def busy_frame(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    photos = [Image.open(DATA / name).convert("RGB") for name in PHOTOS]
    canvas = Image.new("RGB", (width, height))
    tile = max(width, height) // 6
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            photo = photos[rng.integers(len(photos))]
            scale = rng.uniform(0.8, 2.5) * tile / min(photo.size)
            scaled = photo.resize((max(tile, int(photo.width * scale)), max(tile, int(photo.height * scale))))
            left, top = rng.integers(0, scaled.width - tile + 1), rng.integers(0, scaled.height - tile + 1)
            canvas.paste(scaled.crop((left, top, left + tile, top + tile)), (x, y))
    noise = rng.normal(0.0, NOISE.get((width, height), 4.0), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(canvas) + noise + 0.5, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()
