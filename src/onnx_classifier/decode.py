"""Image bytes to a Pillow image, by what the bytes are rather than what they are labelled.

Viam clients label every image `image/jpeg`, so the format is sniffed from the
first bytes. Only the formats cameras send are accepted: JPEG, PNG and Viam's
raw RGBA (`image/vnd.viam.rgba`).
"""

from __future__ import annotations

import io
import struct

from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# image/vnd.viam.rgba: "RGBA", width and height as big-endian uint32, then width*height*4 bytes.
VIAM_RGBA_MAGIC = b"RGBA"
VIAM_RGBA_HEADER = struct.Struct(">4sII")


class DecodeError(ValueError):
    """The bytes are not an image this service can read; the message says why."""


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only: a JPEG's pixels are decoded later, at the scale the model needs.
    An image of more than `max_pixels` pixels is refused from its header, before any decoding."""
    if not data:
        raise DecodeError("the image is empty (0 bytes)")
    if data.startswith(VIAM_RGBA_MAGIC):
        return _viam_rgba(data, max_pixels)
    if data.startswith(JPEG_MAGIC):
        image_format = "JPEG"
    elif data.startswith(PNG_MAGIC):
        image_format = "PNG"
    else:
        raise DecodeError(
            f"unsupported image format (first bytes {data[:8].hex(' ')}); send JPEG, PNG or image/vnd.viam.rgba"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError...) for bad bytes
        raise DecodeError(f"cannot read the {image_format} image ({len(data)} bytes): {e}") from e
    if image.width == 0 or image.height == 0:
        raise DecodeError(f"the {image_format} image has no pixels ({image.width}x{image.height})")
    _check_size(image_format, image.width, image.height, max_pixels)
    # The whole file is in memory: hand it to the decoder in one piece, not in 64 KiB reads.
    image.decodermaxblock = max(image.decodermaxblock, len(data))
    return image


def load(image: Image.Image) -> None:
    """Decode the pixels, turning any decoder failure (truncated or corrupt data) into a DecodeError."""
    try:
        image.load()
    except Exception as e:
        raise DecodeError(f"cannot decode the {image.format or 'image'} data: {e}") from e


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
