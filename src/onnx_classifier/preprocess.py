"""Image bytes to the model's input tensor.

Two paths give the same geometry:

- fast (default): a JPEG is decoded at a reduced scale by libjpeg's DCT scaling
  (Pillow's `draft`), never below `DRAFT_OVERSAMPLE` times the pixels the model
  needs, and only the region the model sees is resized, in one antialiased pass
  (`resize(box=...)`, split over two cores), so no full-resolution frame is ever built;
- exact (`exact_preprocessing`): the textbook recipe at full resolution (decode
  everything, resize, then crop), the reference the fast path is tested against.

Both end in one fused multiply-add per channel that applies 1/255, mean and std.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from .config import DEFAULT_MAX_IMAGE_PIXELS, ChannelOrder, CropRounding, Interpolation, Region, Resize
from .cores import available_cores
from .decode import load, open_image
from .model import Layout, ResolvedModel

# Drafting straight to the model's size loses detail that the antialiased resize
# keeps; decoding at no less than twice the size keeps results within the
# tolerances that tests/test_fast_path.py checks against the exact path.
DRAFT_OVERSAMPLE = 2.0

# A region with fewer source pixels than this many times the output's is resized in one piece:
# splitting it would cost more in hand-over than it saves.
_SPLIT_MIN_RATIO = 4
_HALF_RESIZER = ThreadPoolExecutor(1, thread_name_prefix="resize") if available_cores() > 1 else None

_RESAMPLE = {
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.NEAREST: Image.Resampling.NEAREST,
}
# Modes Pillow resizes directly; anything else (palette, CMYK, 16-bit) is converted first.
_RESIZABLE_MODES = {"RGB", "RGBA", "RGBX", "L", "LA"}
# 16-bit greyscale (a 16-bit PNG) spans 0..65535, and Pillow's conversion to 8 bits clips it to 255
# instead of scaling it: a mid-grey frame would reach the model white.
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8), "L")
    return image.convert(mode) if image.mode != mode else image


@dataclass(frozen=True)
class Placement:
    """Where the model's input comes from in the source image, and where it goes in the input."""

    box: tuple[float, float, float, float]  # source region (left, top, right, bottom)
    size: tuple[int, int]  # (width, height) the region is resized to
    offset: tuple[int, int]  # (x, y) of the resized region in the input (letterbox padding)
    scale: float  # resized pixels per source pixel
    resized: Optional[tuple[int, int]] = None  # center_crop: the whole frame's size before the crop...
    crop_at: tuple[int, int] = (0, 0)  # ...and where the crop starts in it


class Preprocessor:
    def __init__(self, model: ResolvedModel, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.max_image_pixels = max_image_pixels
        pre = model.preprocessing
        spec = model.spec
        self.input_size = model.input_size  # (height, width)
        self.resize = pre.resize
        self.crop_fraction = pre.crop_fraction
        self.crop_rounding = pre.crop_rounding
        self.resample = _RESAMPLE[pre.interpolation]
        self.mode = "L" if spec.channels == 1 else "RGB"
        self.bgr = pre.channel_order is ChannelOrder.BGR and spec.channels == 3
        self.nchw = spec.layout is Layout.NCHW
        self.dtype = spec.input_dtype
        self.exact = model.exact_preprocessing
        # x = (pixel / 255 - mean) / std as one multiply-add; uint8 inputs take raw pixels.
        mean = np.broadcast_to(np.asarray(pre.mean, np.float32), (spec.channels,))
        std = np.broadcast_to(np.asarray(pre.std, np.float32), (spec.channels,))
        channel_shape = (spec.channels, 1, 1) if self.nchw else (spec.channels,)
        self.multiplier = (1.0 / (255.0 * std)).reshape(channel_shape)
        self.addend = (-mean / std).reshape(channel_shape)

    def __call__(self, data: bytes, region: Optional[Region] = None, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """The input tensor for one encoded image, or for `region` of it; `timings` gets the
        seconds spent decoding ("decode") and fitting the pixels to the model ("preprocess")."""
        started = time.perf_counter()
        image = open_image(data, self.max_image_pixels)
        box = region.pixels(*image.size) if region is not None else None
        pixels, decoded = self.exact_pixels(image, box) if self.exact else self.fast_pixels(image, box)
        tensor = self.to_tensor(pixels)
        if timings is not None:
            timings["decode"] = decoded - started
            timings["preprocess"] = time.perf_counter() - decoded
        return tensor

    def placement(self, width: int, height: int) -> Placement:
        out_h, out_w = self.input_size
        if self.resize is Resize.STRETCH:
            return Placement((0.0, 0.0, float(width), float(height)), (out_w, out_h), (0, 0), max(out_w / width, out_h / height))
        if self.resize is Resize.LETTERBOX:
            scale = min(out_w / width, out_h / height)
            size = (max(1, min(out_w, round(width * scale))), max(1, min(out_h, round(height * scale))))
            offset = ((out_w - size[0]) // 2, (out_h - size[1]) // 2)
            return Placement((0.0, 0.0, float(width), float(height)), size, offset, scale)
        # center_crop: resize to cover size / crop_fraction keeping the aspect ratio, then take the
        # centre; the long side and the offset are rounded (crop_rounding "round") or truncated as
        # Hugging Face's image processors do ("floor"). The source box is exactly that crop, so
        # resizing the box alone gives the same pixels.
        whole = round if self.crop_rounding is CropRounding.ROUND else math.floor
        cover_w, cover_h = math.floor(out_w / self.crop_fraction), math.floor(out_h / self.crop_fraction)
        if cover_w / width >= cover_h / height:
            resized_w, resized_h = cover_w, max(cover_h, whole(height * cover_w / width))
        else:
            resized_w, resized_h = max(cover_w, whole(width * cover_h / height)), cover_h
        left, top = int(whole((resized_w - out_w) / 2)), int(whole((resized_h - out_h) / 2))
        fx, fy = width / resized_w, height / resized_h
        box = (left * fx, top * fy, (left + out_w) * fx, (top + out_h) * fy)
        return Placement(box, (out_w, out_h), (0, 0), resized_w / width, (resized_w, resized_h), (left, top))

    def fast_pixels(self, image: Image.Image, box: Optional[tuple[int, int, int, int]] = None) -> tuple[Image.Image, float]:
        """The model's pixels and the time decoding ended; `box` limits the source to that part of the frame."""
        width, height = image.size
        x0, y0, x1, y1 = box or (0, 0, width, height)
        place = self.placement(x1 - x0, y1 - y0)
        if image.format == "JPEG" and place.scale * DRAFT_OVERSAMPLE < 1:
            wanted = (math.ceil(width * place.scale * DRAFT_OVERSAMPLE), math.ceil(height * place.scale * DRAFT_OVERSAMPLE))
            image.draft(self.mode, wanted)
        load(image)
        decoded = time.perf_counter()
        if image.mode not in _RESIZABLE_MODES:
            image = _convert(image, self.mode)
        fx, fy = image.width / width, image.height / height
        left, top, right, bottom = place.box
        source = ((x0 + left) * fx, (y0 + top) * fy, (x0 + right) * fx, (y0 + bottom) * fy)
        region = self._resize(image, place.size, source)
        return self._place(region.convert(self.mode) if region.mode != self.mode else region, place), decoded

    def _resize(self, image: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
        """Pillow resizes on one core. The top and bottom halves of the output, resized from the top
        and bottom halves of the box, are the same pixels (the filter still reads past the half-box
        edge), or within one level of 255 where Pillow's filter positions for a half round apart
        from the whole's (1080x1920 frames), so a large region is resized as two halves on two cores."""
        width, height = size
        left, top, right, bottom = box
        if _HALF_RESIZER is None or height < 2 or (right - left) * (bottom - top) < _SPLIT_MIN_RATIO * width * height:
            return image.resize(size, self.resample, box=box)
        upper_rows = height // 2
        middle = top + (bottom - top) * upper_rows / height
        lower = _HALF_RESIZER.submit(image.resize, (width, height - upper_rows), self.resample, (left, middle, right, bottom))
        upper = image.resize((width, upper_rows), self.resample, box=(left, top, right, middle))
        whole = Image.new(upper.mode, size)
        whole.paste(upper, (0, 0))
        whole.paste(lower.result(), (0, upper_rows))
        return whole

    def exact_pixels(self, image: Image.Image, box: Optional[tuple[int, int, int, int]] = None) -> tuple[Image.Image, float]:
        load(image)
        decoded = time.perf_counter()
        image = _convert(image, self.mode)
        if box is not None:
            image = image.crop(box)
        place = self.placement(*image.size)
        if place.resized is None:
            return self._place(image.resize(place.size, self.resample), place), decoded
        (left, top), (out_w, out_h) = place.crop_at, place.size
        return image.resize(place.resized, self.resample).crop((left, top, left + out_w, top + out_h)), decoded

    def _place(self, region: Image.Image, place: Placement) -> Image.Image:
        if region.size == (self.input_size[1], self.input_size[0]):
            return region
        canvas = Image.new(self.mode, (self.input_size[1], self.input_size[0]))
        canvas.paste(region, place.offset)
        return canvas

    def to_tensor(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.bgr:
            pixels = pixels[:, :, ::-1]
        if self.nchw:
            pixels = pixels.transpose(2, 0, 1)
        if self.dtype == np.uint8:
            return np.ascontiguousarray(pixels)[None]
        tensor = np.empty((1,) + pixels.shape, np.float32)
        np.multiply(pixels, self.multiplier, out=tensor[0])
        tensor[0] += self.addend
        return tensor if self.dtype == np.float32 else tensor.astype(self.dtype)
