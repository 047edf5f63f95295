"""Top-k selection and heads on raw score vectors: ties, minimums and the leading class."""

import numpy as np
import pytest

from onnx_classifier.config import Head
from onnx_classifier.head import confidences, is_distribution, sigmoid, top_k

LABELS = tuple(f"class {i}" for i in range(1000))


def indices(predictions):
    return [int(p.label.split()[1]) for p in predictions]


@pytest.mark.parametrize("count", [1, 3, 10, 999, 1000, 1200])
def test_all_equal_scores_come_back_by_class_index(count):
    scores = np.full(1000, 0.001)
    assert indices(top_k(scores, LABELS, count)) == list(range(min(count, 1000)))


def test_a_tie_straddling_the_cut_off_keeps_the_lowest_indices():
    scores = np.zeros(1000)
    scores[[900, 7]] = 0.5  # above the tie
    scores[[999, 500, 40, 3, 998]] = 0.2  # five tied for the last three places
    assert indices(top_k(scores, LABELS, 5)) == [7, 900, 3, 40, 500]


def test_ties_above_the_cut_off_are_ordered_by_index():
    scores = np.zeros(1000)
    scores[[999, 10, 500]] = 0.3
    scores[[2, 1]] = 0.1
    assert indices(top_k(scores, LABELS, 4)) == [10, 500, 999, 1]


def test_quantized_scores_with_many_ties_are_deterministic_and_sorted():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 8, 1000) / 7.0  # eight levels, as a uint8 head's coarse outputs
    got = top_k(scores, LABELS, 50)
    expected = sorted(range(1000), key=lambda i: (-scores[i], i))[:50]
    assert indices(got) == expected


def test_a_leading_class_and_minimums_keep_index_order_among_ties():
    scores = np.full(1000, 0.25)
    minimums = np.zeros(1000)
    minimums[:5] = np.inf  # classes 0-4 may not be reported
    assert indices(top_k(scores, LABELS, 3, minimums, first=700)) == [700, 5, 6]


def test_auto_head_follows_the_graph_where_it_was_read_and_the_values_where_nothing_says():
    from onnx_classifier.config import Head
    from onnx_classifier.head import auto_head

    distribution = np.array([0.7, 0.2, 0.1])
    independent = np.array([0.9, 0.8, 0.1])  # sigmoid outputs: each in [0, 1], not summing to 1
    logits = np.array([2.5, -1.0, 0.3])
    assert auto_head(logits, Head.SIGMOID, True) is Head.NONE  # the graph ends in an activation
    assert auto_head(distribution, None, True) is Head.NONE
    assert auto_head(independent, None, True) is Head.SOFTMAX  # a read graph without an activation: logits
    assert auto_head(independent, None, False) is Head.NONE  # nothing says: never softmax a sigmoid output
    assert auto_head(logits, None, False) is Head.SOFTMAX
    assert auto_head(np.array([3.2]), None, True) is Head.SIGMOID  # one class's logit: sigmoid, not a constant 1
    assert auto_head(np.array([-1.5]), None, False) is Head.SIGMOID
    assert auto_head(np.array([0.3]), None, False) is Head.NONE


def test_non_finite_scores_become_the_extremes_and_confidences_stay_in_the_unit_interval():
    raw = np.array([np.nan, np.inf, -np.inf, 2.5, -0.5, 0.25], np.float32)
    np.testing.assert_array_equal(confidences(raw, Head.NONE, None, None, True), [0.0, 1.0, 0.0, 1.0, 0.0, 0.25])
    with np.errstate(over="ignore"):  # the largest float less the most negative one
        np.testing.assert_array_equal(confidences(raw, Head.SOFTMAX, None, None, True), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(confidences(raw, Head.SIGMOID, None, None, True), [0.5, 1.0, 0.0, sigmoid(np.array([2.5]))[0], sigmoid(np.array([-0.5]))[0], sigmoid(np.array([0.25]))[0]])


def test_a_score_at_its_minimum_passes_and_a_count_of_zero_returns_nothing():
    scores = np.array([0.5, 0.2, 0.3])
    labels = ("a", "b", "c")
    assert top_k(scores, labels, 3, 0.3) == [("a", 0.5), ("c", 0.3)]
    assert top_k(scores, labels, 0, first=1) == [] and top_k(scores, labels, -2, first=1) == []
    assert top_k(scores, labels, 1, first=1) == [("b", 0.2)]


def test_is_distribution():
    assert is_distribution(np.array([0.25, 0.75])) and is_distribution(np.array([1.0, 0.0]))
    assert is_distribution(np.array([0.5, 0.5009])) and not is_distribution(np.array([0.5, 0.5011]))
    assert not is_distribution(np.array([-0.25, 1.25])) and not is_distribution(np.array([1.5, -0.5]))
    assert not is_distribution(np.zeros(3))
    assert not is_distribution(np.array([1.0005, 0.0]))  # within the sum's tolerance, but above 1
