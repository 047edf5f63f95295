"""Frames of every kind a camera or client may send, good and bad: sniffed, never trusted, never a crash."""

import io
import json
import re
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from onnx_classifier import Classifier, DecodeError, parse_service_config
from onnx_classifier.decode import load, open_image
from onnx_classifier.head import softmax

from . import onnx_models
from .conftest import DATA, encode, photo, solid


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return onnx_models.build(tmp_path_factory.mktemp("m") / "m.onnx", size=(32, 32))


@pytest.fixture(scope="module")
def classifier(model_path):
    return Classifier.from_onnx_file(parse_service_config({"model_path": str(model_path), "resize": "center_crop"}).classifier)


def viam_rgba(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    return b"RGBA" + struct.pack(">II", *rgba.size) + rgba.tobytes()


def png_header_only(width, height) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def depth_frame(width, height) -> bytes:
    """image/vnd.viam.dep as rdk's rimage.WriteViamDepthMapTo writes it: magic, big-endian uint64 size, uint16 depths."""
    return b"DEPTHMAP" + struct.pack(">QQ", width, height) + struct.pack(f">{width * height}H", *range(width * height))


PCD_HEADER = (
    "VERSION .7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F I\nCOUNT 1 1 1 1\n"
    "WIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\n"
)
PCD_ASCII = (PCD_HEADER + "DATA ascii\n0 0 1 255\n0.5 0.25 1.5 65280\n").encode()
PCD_BINARY = ("# .PCD v.7 - Point Cloud Data file format\n" + PCD_HEADER + "DATA binary\n").encode() + struct.pack("<8f", *range(8))


def test_same_picture_in_every_format_gives_the_same_answer(classifier):
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    reference = classifier.classify(encode(image, "PNG"), 5)
    assert classifier.classify(viam_rgba(image), 5) == reference  # lossless: identical
    from_jpeg = classifier.classify(encode(image, "JPEG", quality=95), 5)
    assert [p.label for p in from_jpeg][:2] == [p.label for p in reference][:2]


COLOUR = (200, 40, 90)
GREY = 94  # COLOUR's luma as Pillow computes it: (200 * 299 + 40 * 587 + 90 * 114) / 1000, rounded


def expected_scores(rgb) -> np.ndarray:
    """The small model's confidences for a frame of one colour (no mean or std: pixels / 255)."""
    return softmax(onnx_models.scores_for(np.asarray(rgb, np.float64) / 255.0))


def confidences_by_class(predictions) -> np.ndarray:
    out = np.zeros(onnx_models.NUM_CLASSES)
    for p in predictions:
        out[int(p.label)] = p.confidence
    return out


def frame_in_mode(mode: str) -> tuple[bytes, tuple[int, int, int]]:
    """A one-colour frame stored in `mode`, and the RGB colour the model must see."""
    rgb = Image.new("RGB", (40, 30), COLOUR)
    grey = (GREY, GREY, GREY)
    frames = {
        "L": (lambda: encode(rgb.convert("L")), grey),
        "P": (lambda: encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE)), COLOUR),
        "RGBA": (lambda: encode(rgb.convert("RGBA")), COLOUR),
        "LA": (lambda: encode(rgb.convert("LA")), grey),
        "CMYK": (lambda: encode(rgb.convert("CMYK"), "JPEG", quality=100), COLOUR),
        # A 16-bit sensor's frame spans 0..65535: GREY * 257 is GREY in 8 bits.
        "I;16": (lambda: encode(Image.new("I;16", rgb.size, GREY * 257)), grey),
        "1": (lambda: encode(Image.new("1", rgb.size, 1)), (255, 255, 255)),
    }
    build, seen = frames[mode]
    return build(), seen


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_any_pixel_mode_is_converted(model_path, mode, exact):
    classifier = Classifier.from_onnx_file(
        parse_service_config({"model_path": str(model_path), "resize": "center_crop", "exact_preprocessing": exact}).classifier
    )
    data, seen = frame_in_mode(mode)
    assert Image.open(io.BytesIO(data)).mode == mode
    # JPEG (the CMYK frame) is lossy: a pixel or so off, a few thousandths of confidence.
    tolerance = 5e-3 if mode == "CMYK" else 1e-5
    np.testing.assert_allclose(confidences_by_class(classifier.classify(data, 5)), expected_scores(seen), atol=tolerance)


def test_progressive_and_grayscale_jpegs(classifier):
    image = Image.open(DATA / "rocket.jpg")
    baseline = classifier.classify(encode(image, "JPEG", quality=90), 5)
    assert classifier.classify(encode(image, "JPEG", quality=90, progressive=True), 5) == baseline
    grey = Image.new("L", (40, 30), GREY)
    np.testing.assert_allclose(
        confidences_by_class(classifier.classify(encode(grey, "JPEG", quality=100), 5)), expected_scores((GREY,) * 3), atol=5e-3
    )


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1), (3, 2)])
def test_tiny_and_extreme_aspect_frames(classifier, size):
    colour = (10, 200, 30)
    expected = expected_scores(colour)
    (png,) = classifier.classify(solid(colour, size=size), 1)
    assert png.label == str(int(expected.argmax())) and png.confidence == pytest.approx(expected.max(), abs=1e-5)
    (jpeg,) = classifier.classify(solid(colour, size=size, image_format="JPEG"), 1)
    assert jpeg.label == png.label and jpeg.confidence == pytest.approx(expected.max(), abs=0.02)


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
        (depth_frame(4, 3), "a depth map of 4x3 (image/vnd.viam.dep), not a colour image"),
        (b"DEPTHMAP", "depth map (image/vnd.viam.dep)"),
        (PCD_ASCII, "a point cloud (pointcloud/pcd)"),
        (PCD_BINARY, "a point cloud (pointcloud/pcd)"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n", "a point cloud (PLY)"),
        (b"RGBA" + struct.pack(">II", 640, 480) + b"\x00" * (640 * 480 * 3), "header says 640x480"),
        (b"RGBA" + struct.pack(">II", 2**32 - 1, 2**32 - 1) + b"\x00" * 64, "header says 4294967295x4294967295"),
        (b'{"error": "camera offline"}', "text (JSON, XML or HTML)"),
        (encode(Image.new("RGB", (8, 8)), "WEBP"), "a WebP image"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), "a TIFF image"),
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
        "png-header-only",
        "depth-map",
        "depth-map-magic-only",
        "pcd-ascii",
        "pcd-binary",
        "ply",
        "rgba-wrong-length",
        "rgba-absurd-header",
        "json",
        "webp",
        "tiff",
    ],
)
def test_bad_frames_raise_decode_error(classifier, data, fragment):
    with pytest.raises(DecodeError, match=re.escape(fragment)):
        classifier.classify(data, 3)
    # and the classifier keeps working
    assert len(classifier.classify(solid((50, 60, 70)), 1)) == 1


def test_open_image_does_not_decode_pixels():
    image = open_image(photo("rocket.jpg"), 50_000_000)
    assert image.format == "JPEG" and image.size == (640, 427)
    assert image.tile  # still pending: the decoder has not run, so it can be drafted


# Decompression bombs: small files that would take far more memory to decode than they take to send.


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int, *, bit_depth: int = 1, color_type: int = 0, rows: int | None = None) -> bytes:
    """A valid PNG of zero pixels: a 20000x20000 one-bit image is about 48 KB. With `rows`, the data
    stops after that many rows (a file of a few KB whose header still claims the full size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = bytes(1 + (width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_overinflated(width: int = 64, height: int = 64, extra_mib: int = 64) -> bytes:
    """A small RGB PNG whose pixel data inflates to `extra_mib` MiB more than its header announces."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(bytes((1 + width * 3) * height))]
    parts += [compressor.compress(bytes(1 << 20)) for _ in range(extra_mib)]
    idat = b"".join(parts) + compressor.flush()
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_with_metadata_bomb(chunks: int = 60) -> bytes:
    """A valid 8x8 PNG carrying `chunks` zTXt chunks and an iCCP profile that each inflate to 1 MiB
    (Pillow's per-chunk limit): a file of about 70 KB that Pillow would hold as about 60 MiB of text."""
    valid = encode(Image.new("RGB", (8, 8), (200, 30, 30)), "PNG")
    inflating = zlib.compress(bytes((1 << 20) - 64), 9)
    extra = png_chunk(b"iCCP", b"profile\x00\x00" + inflating)
    extra += b"".join(png_chunk(b"zTXt", f"k{i}".encode() + b"\x00\x00" + inflating) for i in range(chunks))
    ihdr_end = len(PNG_MAGIC) + 25
    return valid[:ihdr_end] + extra + valid[ihdr_end:]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is edited to claim another size."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BOMBS = {
    "png-20000x20000-valid": lambda: png_bomb(20000, 20000),
    "png-20000x20000-rgb-few-kb": lambda: png_bomb(20000, 20000, bit_depth=8, color_type=2, rows=50),
    "png-overinflated-idat": png_overinflated,
    "png-metadata-bomb": png_with_metadata_bomb,
    "jpeg-60000x60000": lambda: jpeg_claiming(60000, 60000),
    "rgba-8000x8000": lambda: b"RGBA" + struct.pack(">II", 8000, 8000) + b"\x00" * 64,
}
# What each bomb must end in: a DecodeError with this fragment, or the colour of what is a small,
# valid image after all (the top label is the small model's for that colour).
BOMB_OUTCOMES = {
    "png-20000x20000-valid": "20000x20000 = 400000000 pixels, more than max_image_pixels (50000000)",
    "png-20000x20000-rgb-few-kb": "20000x20000 = 400000000 pixels, more than max_image_pixels",
    "png-overinflated-idat": (0, 0, 0),
    "png-metadata-bomb": (200, 30, 30),
    "jpeg-60000x60000": "60000x60000 = 3600000000 pixels, more than max_image_pixels",
    "rgba-8000x8000": "header says 8000x8000",
}

_PEAK_SCRIPT = """
import json, resource, sys
from pathlib import Path
from onnx_classifier import Classifier, DecodeError, parse_service_config

model, folder = sys.argv[1], Path(sys.argv[2])
classifier = Classifier.from_onnx_file(parse_service_config({"model_path": model, "resize": "center_crop"}).classifier)
warmup = [(folder / name).read_bytes() for name in ("warm.jpg", "warm.png")]
bombs = {path.stem: path.read_bytes() for path in sorted(folder.glob("*.bomb"))}
for _ in range(3):
    for data in warmup:
        classifier.classify(data, 1)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (ru_maxrss is KiB on Linux)
results = {}
for name, data in bombs.items():
    before = peak()
    try:
        outcome = [p.label for p in classifier.classify(data, 1)]
    except DecodeError as e:
        outcome = str(e)
    results[name] = {"outcome": outcome, "peak_growth_mib": peak() - before}
print(json.dumps(results))
"""


def test_open_image_refuses_bombs_from_the_header():
    for name, build in BOMBS.items():
        fragment = BOMB_OUTCOMES[name]
        if not isinstance(fragment, str):
            continue
        with pytest.raises(DecodeError, match=re.escape(fragment)):
            open_image(build(), 50_000_000)


def test_bombs_take_no_memory(tmp_path, classifier):
    """Each bomb, decoded by the classifier in a fresh process, raises that process's peak resident
    memory by less than 24 MiB: what a header-first refusal costs, a fraction of what decoding would."""
    model = classifier.config.source.path
    (tmp_path / "warm.jpg").write_bytes(photo("astronaut.jpg"))
    (tmp_path / "warm.png").write_bytes(photo("chelsea.png"))
    for name, build in BOMBS.items():
        (tmp_path / f"{name}.bomb").write_bytes(build())
    finished = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(model), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    results = json.loads(finished.stdout.strip().splitlines()[-1])
    assert set(results) == set(BOMBS)
    for name, result in results.items():
        outcome = BOMB_OUTCOMES[name]
        if isinstance(outcome, str):
            assert outcome in result["outcome"], (name, result)
        else:
            assert result["outcome"] == [str(int(expected_scores(outcome).argmax()))], (name, result)
        assert result["peak_growth_mib"] < 24, (name, result)


def test_the_configured_limit_is_the_only_limit():
    """Pillow's own bomb limit (Image.MAX_IMAGE_PIXELS, about 179 megapixels for an error) neither
    refuses nor warns about an image that max_image_pixels allows; the header is still all that is read."""
    bomb = png_bomb(20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = open_image(bomb, 1_000_000_000)
    assert image.size == (20000, 20000) and image.tile  # not decoded
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # and the process-wide global is Pillow's default


def test_truncated_images_stay_errors():
    """A truncated frame is refused, not decoded half grey: Pillow's LOAD_TRUNCATED_IMAGES stays off."""
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for data in (photo("rocket.jpg")[:-2000], encode(Image.open(DATA / "coffee.png"), "PNG")[:-5000]):
        with pytest.raises(DecodeError, match="cannot decode"):
            load(open_image(data, 50_000_000))


def test_metadata_chunks_are_dropped_and_the_pixels_kept():
    image = Image.open(DATA / "coffee.png").convert("RGB")
    plain = encode(image, "PNG")
    ihdr_end = len(PNG_MAGIC) + 25
    with_metadata = (
        plain[:ihdr_end]
        + png_chunk(b"tEXt", b"Comment\x00hello")
        + png_chunk(b"zTXt", b"Long\x00\x00" + zlib.compress(b"x" * 100_000))
        + plain[ihdr_end:-12]
        + png_chunk(b"iTXt", b"After\x00\x00\x00\x00\x00pixels")
        + plain[-12:]
    )
    opened = open_image(with_metadata, 50_000_000)
    load(opened)
    assert not opened.text and opened.tobytes() == image.tobytes()


ACCEPTED = "this service classifies JPEG, PNG or image/vnd.viam.rgba frames"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"DEPTHMAP" + struct.pack(">QQ", 4, 3), "the data is a depth map of 4x3 (image/vnd.viam.dep), not a colour image (24 bytes)"),
        (b"VERSIONX\n1\n", "the data is a depth map (rdk raw depth, VERSIONX), not a colour image (11 bytes)"),
        (b"\n  # .PCD v.7\n", "the data is a point cloud (pointcloud/pcd), not an image (14 bytes)"),
        (b"VERSION\t.7\n", "the data is a point cloud (pointcloud/pcd), not an image (11 bytes)"),
        (b"FIELDS x y z\n", "the data is a point cloud (pointcloud/pcd), not an image (13 bytes)"),
        (b"ply\r\nformat", "the data is a point cloud (PLY), not an image (11 bytes)"),
        (b"ply\nformat", "the data is a point cloud (PLY), not an image (10 bytes)"),
        (bytes(range(12)), "unsupported image format (first bytes 00 01 02 03 04 05 06 07)"),
        (b"GIF89a" + bytes(4), "unsupported image format: a GIF image (first bytes 47 49 46 38 39 61 00 00)"),
    ],
    ids=["depth-header-only", "versionx", "pcd-after-blank-lines", "pcd-version-tab", "pcd-fields", "ply-crlf", "ply", "unknown", "gif"],
)
def test_what_is_not_an_image_is_named_exactly(data, message):
    with pytest.raises(DecodeError) as caught:
        open_image(data, 50_000_000)
    assert str(caught.value) == f"{message}; {ACCEPTED}"


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError("image file is truncated (3 bytes not processed)"), "the data ends early (truncated): image file is truncated (3 bytes not processed)"),
        (OSError("Truncated File Read"), "the data ends inside the header (truncated)"),
        (OSError("broken data stream when reading image file"), "corrupt data (a broken compressed stream)"),
        (SyntaxError("unrecognized data stream contents when reading image file"), "corrupt data (unrecognised compressed stream)"),
        (ValueError("  not a PNG file  "), "not a PNG file"),
        (struct.error(""), "error"),
    ],
)
def test_pillows_terse_reasons_are_said_plainly(error, reason):
    from onnx_classifier.decode import _reason

    assert _reason(error) == reason


def test_a_one_row_rgba_frame_is_read_top_row_first():
    rows = Image.new("RGBA", (3, 2), (255, 0, 0, 255))
    rows.paste((0, 0, 255, 255), (0, 1, 3, 2))
    for image in (rows, rows.crop((0, 0, 3, 1))):
        data = b"RGBA" + struct.pack(">II", *image.size) + image.tobytes()
        opened = open_image(data, 6)
        assert opened.size == image.size and opened.tobytes() == image.tobytes()


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_a_palette_frame_is_resized_as_its_colours_not_its_indices(model_path, exact):
    """Two colours side by side: the palette frame is converted before the (bilinear) resize, so it
    gives exactly the RGB frame's scores; resizing palette indices would blend nothing at the edge."""
    classifier = Classifier.from_onnx_file(
        parse_service_config({"model_path": str(model_path), "resize": "stretch", "exact_preprocessing": exact}).classifier
    )
    rgb = Image.new("RGB", (45, 30), COLOUR)
    rgb.paste((20, 220, 60), (0, 0, 22, 30))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    assert palette.convert("RGB").tobytes() == rgb.tobytes()
    assert classifier.image_scores(encode(palette)).tolist() == classifier.image_scores(encode(rgb)).tolist()


def test_a_frame_that_fails_to_decode_says_which_format_and_why():
    with pytest.raises(DecodeError) as caught:
        load(open_image(photo("rocket.jpg")[:-2000], 50_000_000))
    assert str(caught.value).startswith("cannot decode the JPEG data: the data ends early (truncated): image file is truncated")


def test_a_header_pillow_cannot_read_is_named_with_its_size_and_reason():
    with pytest.raises(DecodeError) as caught:
        open_image(b"\x89PNG\r\n\x1a\n" + bytes(50), 50_000_000)
    assert str(caught.value).startswith("cannot read the PNG image (58 bytes): ") and "None" not in str(caught.value)
