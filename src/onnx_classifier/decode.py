"""Image bytes to a Pillow image, by what the bytes are rather than what they are labelled.

Viam clients label every image `image/jpeg`, so the format is sniffed from the
first bytes. Only the formats cameras send are accepted: JPEG, PNG and Viam's
raw RGBA (`image/vnd.viam.rgba`). What a depth camera or lidar sends instead
(`image/vnd.viam.dep`, point clouds) and other image formats are named in the
error, so that a misconfigured camera is recognisable from the message alone.

Memory is bounded by the size of the bytes received until the image's size is
known and checked against `max_pixels`; only then can pixels be decoded:

- Pillow's own decompression-bomb check (`Image.MAX_IMAGE_PIXELS`, a process-wide
  global) is not used and not changed: the decoder classes are instantiated
  directly, so the configured `max_image_pixels` is the one limit, whatever its
  value, and nothing else in the process is affected.
- PNG metadata chunks (tEXt, zTXt, iTXt, iCCP, eXIf) are dropped before Pillow
  sees them: Pillow inflates compressed ones as it meets them, up to 64 MiB from
  a file of a few KB, and nothing here uses them (Pillow applies no ICC profile).
- Pixel data that inflates past what the header announces is never produced:
  Pillow's PNG decoder stops when the image is full.
- Truncated data is an error: `ImageFile.LOAD_TRUNCATED_IMAGES` stays False (the
  default), because a frame half grey classified as if whole would be a silent
  wrong answer.
"""

from __future__ import annotations

import io
import struct
from typing import Optional

from PIL import Image, JpegImagePlugin, PngImagePlugin

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# image/vnd.viam.rgba: "RGBA", width and height as big-endian uint32, then width*height*4 bytes.
VIAM_RGBA_MAGIC = b"RGBA"
VIAM_RGBA_HEADER = struct.Struct(">4sII")
# image/vnd.viam.dep (rdk rimage.WriteViamDepthMapTo): "DEPTHMAP", width and height as
# big-endian uint64, then width*height big-endian uint16 depths in millimetres.
VIAM_DEPTH_MAGIC = b"DEPTHMAP"
VIAM_DEPTH_HEADER = struct.Struct(">8sQQ")
# rdk's older raw depth format (rimage "VERSIONX"): a text header, then 16-bit depths.
RDK_DEPTH_VERSIONX_MAGIC = b"VERSIONX"

ACCEPTED = "this service classifies JPEG, PNG or image/vnd.viam.rgba frames"

# PNG chunks Pillow reads into memory (inflating the compressed ones) that no pixel depends on.
PNG_METADATA_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf"})
PNG_CHUNK_HEADER = struct.Struct(">I4s")

# Formats a camera or a client might send by mistake: (test on the first bytes, what to call them).
_OTHER_FORMATS = (
    (lambda d: d.startswith((b"GIF87a", b"GIF89a")), "a GIF image"),
    (lambda d: d.startswith(b"BM"), "a BMP image"),
    (lambda d: d.startswith(b"RIFF") and d[8:12] == b"WEBP", "a WebP image"),
    (lambda d: d.startswith((b"II*\x00", b"MM\x00*")), "a TIFF image"),
    (lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"), "a HEIF/AVIF image"),
    (lambda d: d.startswith(b"qoif"), "a QOI image (image/qoi)"),
    (lambda d: d.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")), "a JPEG 2000 image"),
    (lambda d: d.startswith(b"\x1a\x45\xdf\xa3"), "a Matroska/WebM video"),
    (lambda d: d[4:8] == b"ftyp", "an MP4/QuickTime video"),
    (lambda d: d[:64].lstrip()[:1] in (b"{", b"[", b"<"), "text (JSON, XML or HTML), not image data"),
)


class DecodeError(ValueError):
    """The bytes are not an image this service can read; the message says why."""


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only: a JPEG's pixels are decoded later, at the scale the model needs.
    An image of more than `max_pixels` pixels is refused from its header, before any decoding."""
    if not data:
        raise DecodeError(f"the image is empty (0 bytes); {ACCEPTED}")
    if data.startswith(VIAM_RGBA_MAGIC):
        return _viam_rgba(data, max_pixels)
    if data.startswith(JPEG_MAGIC):
        image_format, factory, source = "JPEG", JpegImagePlugin.JpegImageFile, data
    elif data.startswith(PNG_MAGIC):
        image_format, factory, source = "PNG", PngImagePlugin.PngImageFile, _png_without_metadata(data)
    else:
        raise DecodeError(_not_an_image(data))
    try:
        # Image.open would add Pillow's global bomb check; the size is checked below instead.
        image = factory(io.BytesIO(source))
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad bytes
        raise DecodeError(f"cannot read the {image_format} image ({len(data)} bytes): {_reason(e)}") from e
    if image.width <= 0 or image.height <= 0:
        raise DecodeError(f"the {image_format} image has no pixels ({image.width}x{image.height})")
    _check_size(image_format, image.width, image.height, max_pixels)
    # The whole file is in memory: hand it to the decoder in one piece, not in 64 KiB reads.
    image.decodermaxblock = max(image.decodermaxblock, len(source))
    return image


def load(image: Image.Image) -> None:
    """Decode the pixels, turning any decoder failure (truncated or corrupt data) into a DecodeError."""
    try:
        image.load()
    except Exception as e:
        raise DecodeError(f"cannot decode the {image.format or 'image'} data: {_reason(e)}") from e


def describe(data: bytes) -> Optional[str]:
    """What the bytes are when they are not JPEG, PNG or RGBA and can be recognised (else None)."""
    if data.startswith(VIAM_DEPTH_MAGIC):
        size = ""
        if len(data) >= VIAM_DEPTH_HEADER.size:
            _, width, height = VIAM_DEPTH_HEADER.unpack_from(data)
            size = f" of {width}x{height}"
        return f"a depth map{size} (image/vnd.viam.dep), not a colour image"
    if data.startswith(RDK_DEPTH_VERSIONX_MAGIC):
        return "a depth map (rdk raw depth, VERSIONX), not a colour image"
    head = data[:64].lstrip()
    if head.startswith(b"# .PCD") or head.startswith((b"VERSION ", b"VERSION\t")) or head.startswith(b"FIELDS "):
        return "a point cloud (pointcloud/pcd), not an image"
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "a point cloud (PLY), not an image"
    for matches, name in _OTHER_FORMATS:
        if matches(data):
            return name
    return None


def _not_an_image(data: bytes) -> str:
    what = describe(data)
    first = f"first bytes {data[:8].hex(' ')}"
    if what is not None and what.startswith(("a depth map", "a point cloud")):
        return f"the data is {what} ({len(data)} bytes); {ACCEPTED}"
    if what is not None:
        return f"unsupported image format: {what} ({first}); {ACCEPTED}"
    return f"unsupported image format ({first}); {ACCEPTED}"


# Pillow's terse messages, said plainly.
_PLAIN_REASONS = {
    "Truncated File Read": "the data ends inside the header (truncated)",
    "broken data stream when reading image file": "corrupt data (a broken compressed stream)",
    "unrecognized data stream contents when reading image file": "corrupt data (unrecognised compressed stream)",
}


def _reason(error: Exception) -> str:
    """The exception's message, said plainly where Pillow's is terse, or its type when it has none."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    if text.startswith("image file is truncated"):
        return f"the data ends early (truncated): {text}"
    return _PLAIN_REASONS.get(text, text)


def _png_without_metadata(data: bytes) -> bytes:
    """The PNG with its metadata chunks dropped; the bytes as they are when it has none (no copy).
    Malformed chunk structure is left for Pillow to report."""
    kept: list[memoryview] = []
    view = memoryview(data)
    position, start = len(PNG_MAGIC), 0
    dropped = False
    while position + PNG_CHUNK_HEADER.size <= len(data):
        length, kind = PNG_CHUNK_HEADER.unpack_from(data, position)
        end = position + PNG_CHUNK_HEADER.size + length + 4  # header, data, CRC
        if end > len(data):
            break
        if kind in PNG_METADATA_CHUNKS:
            kept.append(view[start:position])
            start = end
            dropped = True
        position = end
        if kind == b"IEND":
            break
    if not dropped:
        return data
    kept.append(view[start:])
    return b"".join(kept)


def _check_size(image_format: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DecodeError(
            f"the {image_format} image is {width}x{height} = {width * height} pixels, more than max_image_pixels ({max_pixels})"
        )


def _viam_rgba(data: bytes, max_pixels: int) -> Image.Image:
    if len(data) < VIAM_RGBA_HEADER.size:
        raise DecodeError(f"image/vnd.viam.rgba data is {len(data)} bytes, shorter than its 12-byte header")
    _, width, height = VIAM_RGBA_HEADER.unpack_from(data)
    expected = VIAM_RGBA_HEADER.size + width * height * 4
    if width == 0 or height == 0 or len(data) != expected:
        raise DecodeError(
            f"image/vnd.viam.rgba header says {width}x{height} ({expected} bytes in all) but the data is {len(data)} bytes"
        )
    _check_size("image/vnd.viam.rgba", width, height, max_pixels)
    pixels = memoryview(data)[VIAM_RGBA_HEADER.size :]
    return Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)
