"""Camera-scene features in the core: smoothing with hysteresis, label rules, regions."""

import io

import numpy as np
import pytest
from PIL import Image

from onnx_classifier import Classifier, ConfigError, parse_service_config
from onnx_classifier.config import LabelRules, Region
from onnx_classifier.head import LabelFilter, top_k
from onnx_classifier.smoothing import CameraSmoother

from .conftest import encode, photo

LABELS = ("cat", "dog", "bird")


def run(smoother, frames, label_filter=None):
    label_filter = label_filter or LabelFilter(LabelRules(), LABELS)
    return [smoother.update(np.array(f, np.float64), label_filter.best) for f in frames]


def test_confidences_are_averaged_over_the_window():
    smoother = CameraSmoother(window=3, hold=1)
    steps = run(smoother, [[0.9, 0.1, 0.0], [0.3, 0.6, 0.1], [0.6, 0.0, 0.4], [0.0, 0.9, 0.1]])
    averages = [averaged for averaged, _ in steps]
    np.testing.assert_allclose(averages[0], [0.9, 0.1, 0.0])
    np.testing.assert_allclose(averages[1], [0.6, 0.35, 0.05])
    np.testing.assert_allclose(averages[2], [0.6, 0.7 / 3, 0.5 / 3])
    np.testing.assert_allclose(averages[3], [0.3, 0.5, 0.2])  # the first frame has left the window
    assert [held for _, held in steps] == [0, 0, 0, 1]  # hold 1: the averaged leader, at once


def test_the_top_label_changes_only_after_it_led_for_hold_frames():
    cat, dog = [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]
    smoother = CameraSmoother(window=1, hold=3)
    held = [h for _, h in run(smoother, [cat, dog, dog, cat, dog, dog, dog, cat])]
    # dog leads twice, cat interrupts (the count restarts), then dog leads three times in a row.
    assert held == [0, 0, 0, 0, 0, 0, 1, 1]


def test_held_label_leads_the_results_with_its_own_averaged_confidence():
    scores = np.array([0.2, 0.7, 0.1])
    results = top_k(scores, LABELS, 2, 0.0, first=0)
    assert results == [("cat", 0.2), ("dog", 0.7)]
    assert top_k(scores, LABELS, 1, 0.0, first=0) == [("cat", 0.2)]
    # A held label below its minimum is not shown; the others follow in order.
    assert top_k(scores, LABELS, 2, 0.5, first=0) == [("dog", 0.7)]


def test_the_leader_is_chosen_among_labels_that_may_be_reported():
    blocked_cat = LabelFilter(LabelRules(blocked_labels=("cat",)), LABELS)
    held = [h for _, h in run(CameraSmoother(1, 1), [[0.8, 0.1, 0.1]], blocked_cat)]
    assert held == [1]
    nothing = LabelFilter(LabelRules(allowed_labels=("cat",), blocked_labels=("cat",)), LABELS)
    assert nothing.best(np.array([0.5, 0.3, 0.2])) is None
    assert nothing.select(np.array([0.5, 0.3, 0.2]), 3) == []


def test_label_confidences_allowed_and_blocked_labels():
    scores = np.array([0.5, 0.3, 0.15, 0.05])
    labels = ("cat", "dog", "bird", "cat")  # a label may appear twice (ImageNet has two "crane"s)
    rules = LabelRules(confidence_threshold=0.1, label_confidences=(("cat", 0.6), ("bird", 0.01)))
    assert LabelFilter(rules, labels).select(scores, 5) == [("dog", 0.3), ("bird", 0.15)]
    listed_low = LabelRules(confidence_threshold=0.4, label_confidences=(("bird", 0.1),))
    # Unlisted labels keep the general threshold (Viam's mlmodel service would drop them).
    assert LabelFilter(listed_low, labels).select(scores, 5) == [("cat", 0.5), ("bird", 0.15)]
    allowed = LabelRules(allowed_labels=("dog", "bird"))
    assert LabelFilter(allowed, labels).select(scores, 5) == [("dog", 0.3), ("bird", 0.15)]
    blocked = LabelRules(blocked_labels=("cat",))
    assert LabelFilter(blocked, labels).select(scores, 1) == [("dog", 0.3)]


def test_unknown_label_names_are_rejected_with_the_closest_real_ones():
    with pytest.raises(ConfigError) as caught:
        LabelFilter(LabelRules(allowed_labels=("brid",)), LABELS)
    assert "'allowed_labels': 'brid' is not a label of this model; did you mean 'bird'?" in str(caught.value)


def test_region_pixels_are_whole_and_never_empty():
    assert Region(0.25, 0.5, 0.75, 1.0).pixels(400, 300) == (100, 150, 300, 300)
    assert Region(0.999, 0.999, 1.0, 1.0).pixels(10, 10) == (9, 9, 10, 10)


@pytest.fixture(scope="module")
def exact_classifier():
    classifier = Classifier.from_onnx_file(parse_service_config({"exact_preprocessing": True}).classifier)
    yield classifier
    classifier.close()


def test_a_region_classifies_only_that_part_of_the_frame(exact_classifier):
    # coffee.png with chelsea.png pasted at its right: the whole frame is not a cat, the region is.
    cat = Image.open(io.BytesIO(photo("chelsea.png"))).convert("RGB")
    coffee = Image.open(io.BytesIO(photo("coffee.png"))).convert("RGB")
    frame = Image.new("RGB", (coffee.width + cat.width, coffee.height))
    frame.paste(coffee, (0, 0))
    frame.paste(cat, (coffee.width, 0))
    data = encode(frame)
    region = Region(coffee.width / frame.width, 0.0, 1.0, cat.height / frame.height)
    left, top, right, bottom = region.pixels(*frame.size)
    cropped = encode(frame.crop((left, top, right, bottom)))

    in_region = exact_classifier.classify(data, 3, region=region)
    assert in_region == exact_classifier.classify(cropped, 3)
    assert in_region[0].label == "Egyptian cat"
    assert exact_classifier.classify(data, 1)[0].label != "Egyptian cat"
    whole = Region(0.0, 0.0, 1.0, 1.0)
    assert exact_classifier.classify(data, 3, region=whole) == exact_classifier.classify(data, 3)


def test_the_fast_path_crops_a_jpeg_region_before_resizing():
    fast = Classifier.from_onnx_file(parse_service_config({}).classifier)
    cat = Image.open(io.BytesIO(photo("chelsea.png"))).convert("RGB")
    frame = Image.new("RGB", (cat.width * 4, cat.height * 4), (90, 90, 90))
    frame.paste(cat, (cat.width * 3, cat.height * 3))
    data = encode(frame, "JPEG", quality=95)
    in_region = fast.classify(data, 3, region=Region(0.75, 0.75, 1.0, 1.0))
    reference = fast.classify(encode(cat, "JPEG", quality=95), 3)
    assert [p.label for p in in_region] == [p.label for p in reference]
    np.testing.assert_allclose([p.confidence for p in in_region], [p.confidence for p in reference], atol=0.03)
    fast.close()


@pytest.mark.parametrize(
    "window, firsts, bound",
    [
        (3, [1.0, 0.9, 0.3, 0.3, 0.1, 0.1, 0.0, 0.0, 0.0], 0.0),  # unclipped, the last average is about -1e-17
        (3, [0.3, 1.0, 0.9, 0.9, 0.3, 1.0, 1.0, 1.0], 1.0),  # unclipped, 1.0000000000000002
    ],
    ids=["below-0", "above-1"],
)
def test_averages_stay_in_the_unit_interval_despite_the_running_sums_rounding(window, firsts, bound):
    steps = run(CameraSmoother(window, 1), [[f, 1.0 - f, 0.0] for f in firsts])
    assert all(0.0 <= averaged.min() and averaged.max() <= 1.0 for averaged, _ in steps)
    assert steps[-1][0][0] == bound


def test_the_label_filter_puts_the_held_label_first():
    label_filter = LabelFilter(LabelRules(), LABELS)
    scores = np.array([0.2, 0.7, 0.1])
    assert label_filter.select(scores, 2, first=0) == [("cat", 0.2), ("dog", 0.7)]
    assert label_filter.select(scores, 2) == [("dog", 0.7), ("cat", 0.2)]


def test_a_region_thinner_than_a_pixel_still_has_one():
    assert Region(0.5, 0.5, 0.501, 0.501).pixels(10, 10) == (5, 5, 6, 6)
    assert Region(0.0, 0.0, 0.04, 0.04).pixels(10, 20) == (0, 0, 1, 1)
