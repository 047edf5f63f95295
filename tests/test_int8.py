"""The bundled int8 model: selected by model_path, described by its own sidecar like the float model,
close to the float model on camera-like frames of the test photos (none of which it was calibrated
on), and made so that every CPU family computes the same sums. The emulated tier
(tests/emulated/test_cpu_families.py) checks the families this machine is not with the same targets."""

import numpy as np
import onnx
import pytest

from onnx_classifier import Classifier, parse_service_config
from onnx_classifier.paths import BUNDLED_MODEL
from onnx_classifier.pair_safe import PAIR_LIMIT, largest_pair

from .variants import camera_frames

INT8_MODEL = BUNDLED_MODEL.with_name("efficientnet_lite0_int8.onnx")
FRAMES = 210
CLEAR_GAP = 0.05


@pytest.fixture(scope="module")
def float_and_int8():
    return (
        Classifier.from_onnx_file(parse_service_config({}).classifier),
        Classifier.from_onnx_file(parse_service_config({"model_path": "models/efficientnet_lite0_int8.onnx"}).classifier),
    )


def test_the_int8_model_is_selected_by_model_path_and_the_float_model_stays_the_default(float_and_int8):
    reference, int8 = float_and_int8
    assert reference.config.source.path == BUNDLED_MODEL
    assert int8.config.source.path == INT8_MODEL
    assert int8.model.preprocessing == reference.model.preprocessing
    assert int8.labels == reference.labels and int8.model.head == reference.model.head


def test_the_int8_model_runs_its_convolutions_on_int8_weights():
    graph = onnx.load(str(INT8_MODEL)).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    dequantized = {n.output[0]: weights.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"}
    convolutions = [n for n in graph.node if n.op_type == "Conv"]
    int8 = [n for n in convolutions if dequantized.get(n.input[1]) == onnx.TensorProto.INT8]
    # All but the stem and the first three blocks (9 convolutions), which stay float.
    assert len(convolutions) == 49 and len(int8) == 40


def test_no_pair_of_int8_products_can_overflow_int16_on_x86_without_vnni():
    # What makes x86 without VNNI compute what every other CPU computes (onnx_classifier.pair_safe):
    # the model before pair-safe ranges had pairs up to 253.
    assert largest_pair(onnx.load(str(INT8_MODEL))) <= PAIR_LIMIT


def check_fidelity(descriptions: list[str], expected: np.ndarray, scores: np.ndarray) -> None:
    """The targets, on one CPU family: every frame whose float top two are more than CLEAR_GAP apart
    agrees, at least 96% agree, the 95th percentile of each frame's largest confidence difference
    is at most 0.06, and the largest at most 0.1."""
    differences = np.abs(scores - expected).max(axis=1)
    disagree = scores.argmax(axis=1) != expected.argmax(axis=1)
    top_two = np.sort(expected, axis=1)[:, -2:]
    gaps = top_two[:, 1] - top_two[:, 0]
    disagreements = [(descriptions[i], float(gaps[i])) for i in np.flatnonzero(disagree)]
    agreement = 1 - disagree.mean()
    print(
        f"\n{len(expected)} frames: top-1 agreement {agreement:.3f}, largest confidence difference {differences.max():.3f}, "
        f"95th percentile {np.percentile(differences, 95):.4f}, disagreements {disagreements}"
    )
    assert all(gap <= CLEAR_GAP for _, gap in disagreements), disagreements
    assert agreement >= 0.96
    assert np.percentile(differences, 95) <= 0.06
    assert differences.max() <= 0.1


def test_int8_confidences_stay_close_to_the_float_models(float_and_int8):
    # Every x86 CPU gives the same figures (pair-safe ranges); on this and the ARM families they are
    # in README "The int8 model", x86: 203 of 210 agree (96.7%), every disagreement within 0.018 in
    # the float model, p95 0.036, max 0.085.
    reference, int8 = float_and_int8
    descriptions, expected, scores = [], [], []
    for description, data in camera_frames(FRAMES):
        tensor = reference.preprocess(data)
        descriptions.append(description)
        expected.append(reference.scores(tensor))
        scores.append(int8.scores(tensor))
    check_fidelity(descriptions, np.array(expected), np.array(scores))
