"""Frames of every kind a camera or client may send, good and bad: sniffed, never trusted, never a crash."""

import struct
import zlib

import pytest
from PIL import Image

from onnx_classifier import Classifier, DecodeError, parse_service_config
from onnx_classifier.decode import open_image

from . import onnx_models
from .conftest import DATA, encode, photo, solid


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = onnx_models.build(tmp_path_factory.mktemp("m") / "m.onnx", size=(32, 32))
    return Classifier(parse_service_config({"model_path": str(path), "resize": "center_crop"}).classifier)


def viam_rgba(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    return b"RGBA" + struct.pack(">II", *rgba.size) + rgba.tobytes()


def png_header_only(width, height) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_same_picture_in_every_format_gives_the_same_answer(classifier):
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    reference = classifier.classify(encode(image, "PNG"), 5)
    assert classifier.classify(viam_rgba(image), 5) == reference  # lossless: identical
    from_jpeg = classifier.classify(encode(image, "JPEG", quality=95), 5)
    assert [p.label for p in from_jpeg][:2] == [p.label for p in reference][:2]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_any_pixel_mode_is_converted(classifier, mode):
    image = Image.open(DATA / "coffee.png").convert("RGB")
    converted = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    data = encode(converted, "JPEG" if mode == "CMYK" else "PNG")
    predictions = classifier.classify(data, 3)
    assert len(predictions) == 3 and all(0 <= p.confidence <= 1 for p in predictions)


def test_progressive_and_grayscale_jpegs(classifier):
    image = Image.open(DATA / "rocket.jpg")
    for data in (encode(image, "JPEG", progressive=True), encode(image.convert("L"), "JPEG")):
        assert len(classifier.classify(data, 2)) == 2


def test_tiny_and_extreme_aspect_frames(classifier):
    for size in [(1, 1), (1, 500), (500, 1), (3, 2)]:
        assert len(classifier.classify(solid((10, 200, 30), size=size), 1)) == 1
        assert len(classifier.classify(solid((10, 200, 30), size=size, image_format="JPEG"), 1)) == 1


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 100, "unsupported image format"),
        (b"hello world, not an image", "unsupported image format"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), "unsupported image format"),
        (b"\xff\xd8\xff" + b"\x00" * 50, "cannot"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "cannot"),
        (photo("rocket.jpg")[:4000], "cannot decode"),
        (solid((1, 2, 3), size=(300, 300))[:200], "cannot"),
        (b"RGBA\x00\x00", "shorter than its 12-byte header"),
        (b"RGBA" + struct.pack(">II", 4, 4) + b"\x00" * 10, "header says 4x4"),
        (b"RGBA" + struct.pack(">II", 0, 4), "header says 0x4"),
        (png_header_only(60000, 60000), "cannot read the PNG"),
    ],
    ids=[
        "empty",
        "gif",
        "text",
        "bmp",
        "jpeg-garbage",
        "png-garbage",
        "jpeg-truncated",
        "png-truncated",
        "rgba-short-header",
        "rgba-short-pixels",
        "rgba-zero-width",
        "png-decompression-bomb",
    ],
)
def test_bad_frames_raise_decode_error(classifier, data, fragment):
    with pytest.raises(DecodeError, match=fragment):
        classifier.classify(data, 3)
    # and the classifier keeps working
    assert len(classifier.classify(solid((50, 60, 70)), 1)) == 1


def test_open_image_does_not_decode_pixels():
    image = open_image(photo("rocket.jpg"), 50_000_000)
    assert image.format == "JPEG" and image.size == (640, 427)
    assert image.tile  # still pending: the decoder has not run, so it can be drafted
