import io
from pathlib import Path

import pytest
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"


def photo(name: str) -> bytes:
    return (DATA / name).read_bytes()


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def solid(color, size=(40, 30), image_format="PNG") -> bytes:
    """A single-colour frame: every resize of it keeps the colour exactly."""
    return encode(Image.new("RGB", size, color), image_format)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return tmp_path
