"""The fast path (reduced-scale JPEG decode, crop before resize, split resize, fused normalization)
against the exact full-resolution recipe, on camera-like frames made from real photos."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from onnx_classifier import Classifier, parse_service_config
from onnx_classifier.decode import open_image
from onnx_classifier import preprocess
from onnx_classifier.preprocess import DRAFT_OVERSAMPLE

from .conftest import encode
from .variants import camera_frames

FRAMES = 210


@pytest.fixture(scope="module")
def fast_and_exact():
    return (
        Classifier.from_onnx_file(parse_service_config({}).classifier),
        Classifier.from_onnx_file(parse_service_config({"exact_preprocessing": True}).classifier),
    )


def test_fast_path_changes_confidences_by_at_most_a_few_hundredths(fast_and_exact):
    fast, exact = fast_and_exact
    differences, disagreements, drafted = [], [], 0
    for description, data in camera_frames(FRAMES):
        reference = exact.scores(exact.preprocess(data))
        scores = fast.scores(fast.preprocess(data))
        differences.append(np.abs(scores - reference).max())
        image = open_image(data, 50_000_000)
        drafted += fast._preprocess.placement(*image.size).scale * DRAFT_OVERSAMPLE < 0.5
        if scores.argmax() != reference.argmax():
            # A different top-1 is only acceptable between classes the reference itself nearly ties.
            gap = reference.max() - reference[scores.argmax()]
            disagreements.append((description, gap))
    differences = np.array(differences)
    agreement = 1 - len(disagreements) / FRAMES
    print(
        f"\n{FRAMES} frames ({drafted} decoded at 1/2 scale or less): top-1 agreement {agreement:.3f}, "
        f"largest confidence difference {differences.max():.3f}, 95th percentile {np.percentile(differences, 95):.4f}"
    )
    assert drafted >= FRAMES // 2
    assert differences.max() <= 0.05
    assert np.percentile(differences, 95) <= 0.025
    # 204 of 210 here; a little room, since a near-tie can fall either way on another CPU's arithmetic.
    assert agreement >= 0.95, disagreements
    assert all(gap <= 0.05 for _, gap in disagreements), disagreements


class CountingPool(ThreadPoolExecutor):
    """One worker, as preprocess's own on a machine with more than one core, that counts its jobs."""

    def __init__(self):
        super().__init__(1, thread_name_prefix="test-resize")
        self.jobs = 0

    def submit(self, *args, **kwargs):
        self.jobs += 1
        return super().submit(*args, **kwargs)


def test_split_resize_gives_the_pixels_of_one_resize(fast_and_exact, monkeypatch):
    """A large region is resized as two halves (whatever the machine's cores: the second half's pool
    is given here), a small one in one piece. The halves are one resize's pixels, exactly for most
    frames; where Pillow places the two halves' filters a rounding apart (1080x1920 frames here),
    within one level of 255."""
    pool = CountingPool()
    monkeypatch.setattr(preprocess, "_HALF_RESIZER", pool)
    resizer = fast_and_exact[0]._preprocess
    split = exact = 0
    frames = list(camera_frames(8, seed=1))
    for _, data in frames:
        image = open_image(data, 50_000_000)
        image.load()
        place = resizer.placement(*image.size)
        left, top, right, bottom = place.box
        split += (right - left) * (bottom - top) >= preprocess._SPLIT_MIN_RATIO * place.size[0] * place.size[1]
        whole = np.asarray(image.resize(place.size, resizer.resample, box=place.box), np.int16)
        halves = np.asarray(resizer._resize(image, place.size, place.box), np.int16)
        assert pool.jobs == split
        assert np.abs(halves - whole).max() <= 1
        exact += np.array_equal(halves, whole)
    pool.shutdown()
    assert 0 < split < len(frames)  # both kinds of region were seen
    assert exact >= len(frames) - 2


def test_exact_path_is_the_textbook_recipe(fast_and_exact):
    """Resize the shorter side to 256 (the other side rounded), crop the centre 224, normalize."""
    exact = fast_and_exact[1]
    for _, data in camera_frames(4, seed=2):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = image.size
        size = (256, round(height * 256 / width)) if width <= height else (round(width * 256 / height), 256)
        resized = image.resize(size, Image.Resampling.BILINEAR)
        left, top = round((resized.width - 224) / 2), round((resized.height - 224) / 2)
        pixels = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / 255
        expected = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None]
        np.testing.assert_allclose(exact.preprocess(data), expected, atol=1e-5)


@pytest.mark.parametrize(
    "size, box, decoded",
    [
        ((3840, 2160), None, (960, 540)),
        ((1920, 1080), None, (960, 540)),
        ((1280, 720), None, (1280, 720)),  # half would be 640x360, less than twice the 911x512 the crop needs
        ((640, 480), None, (640, 480)),
        ((3840, 2160), (1920, 1080, 3840, 2160), (1920, 1080)),  # a region needs the scale of its own size
    ],
)
def test_a_jpeg_is_decoded_at_the_smallest_scale_that_keeps_twice_the_models_pixels(fast_and_exact, size, box, decoded):
    preprocessor = fast_and_exact[0]._preprocess
    frame = Image.new("RGB", size, (90, 120, 200))
    jpeg = open_image(encode(frame, "JPEG"), 50_000_000)
    preprocessor.fast_pixels(jpeg, box)
    assert jpeg.size == decoded
    png = open_image(encode(frame.resize((size[0] // 4, size[1] // 4)), "PNG"), 50_000_000)
    preprocessor.fast_pixels(png, None)
    assert png.size == (size[0] // 4, size[1] // 4)  # only a JPEG can be decoded at reduced scale


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_timings_are_given_for_decoding_and_fitting(fast_and_exact, exact):
    timings = {}
    fast_and_exact[exact].preprocess(encode(Image.new("RGB", (640, 480), (90, 120, 200)), "JPEG"), timings=timings)
    assert set(timings) == {"decode", "preprocess"} and all(seconds >= 0.0 for seconds in timings.values())


def test_a_reduced_scale_decode_crops_where_the_exact_path_does(fast_and_exact):
    """Bands of colour across a 4K frame, decoded at a quarter of its size: the fast path's input is
    the exact path's but for resampling (a few hundredths), not a shifted crop (whole bands off)."""
    fast, exact = fast_and_exact
    frame = Image.new("RGB", (3840, 2160))
    for index, colour in enumerate([(250, 30, 30), (30, 250, 30), (30, 30, 250), (250, 250, 30), (30, 250, 250), (250, 30, 250)]):
        frame.paste(colour, (0, index * 360, 3840, (index + 1) * 360))
        frame.paste(tuple(255 - c for c in colour), (index * 640, 0, index * 640 + 40, 2160))
    data = encode(frame, "JPEG", quality=95)
    assert open_image(data, 50_000_000).size == (3840, 2160)
    difference = np.abs(fast.preprocess(data) - exact.preprocess(data))
    assert np.percentile(difference, 99) < 0.5 and difference.mean() < 0.05, (difference.mean(), np.percentile(difference, 99))


def test_a_one_row_output_is_resized_in_one_piece(fast_and_exact, monkeypatch):
    """A letterboxed 5000x5 strip fills one row of the input: there is no half to hand over."""
    pool = CountingPool()
    monkeypatch.setattr(preprocess, "_HALF_RESIZER", pool)
    frame = Image.new("RGB", (5000, 5), (90, 120, 200))
    resizer = fast_and_exact[0]._preprocess
    strip = resizer._resize(frame, (224, 1), (0.0, 0.0, 5000.0, 5.0))
    pool.shutdown()
    assert strip.size == (224, 1) and pool.jobs == 0
