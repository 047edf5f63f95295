"""The bundled EfficientNet-Lite0 on the shared photos, with zero configuration."""

import subprocess
import sys

import pytest

from onnx_classifier import Classifier, parse_service_config
from onnx_classifier.paths import BUNDLED_MODEL, MODULE_ROOT

from .conftest import DATA, photo

CATS = {"Egyptian cat", "tabby", "tiger cat"}


@pytest.fixture(scope="module")
def bundled():
    classifier = Classifier.from_onnx_file(parse_service_config({}).classifier)
    yield classifier
    classifier.close()


def test_default_config_is_the_bundled_model_with_its_recipe(bundled):
    assert bundled.config.source.path == BUNDLED_MODEL
    assert bundled.num_classes == 1000
    pre = bundled.model.preprocessing
    assert pre.input_size == (224, 224) and pre.resize.value == "center_crop" and pre.crop_fraction == 0.875
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert bundled.info()["labels"] == {
        "count": 1000,
        "first": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"],
        "source": f"model sidecar {str(BUNDLED_MODEL.with_suffix('.json'))!r} key 'labels_path'",
    }


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_chelsea_is_a_cat_and_coffee_is_espresso(exact):
    classifier = Classifier.from_onnx_file(parse_service_config({"exact_preprocessing": exact}).classifier)
    cat = classifier.classify(photo("chelsea.png"), 3)
    assert cat[0].label in CATS
    assert {p.label for p in cat} == CATS
    coffee = classifier.classify(photo("coffee.png"), 1)
    assert coffee[0].label == "espresso" and coffee[0].confidence > 0.7
    rocket = classifier.classify(photo("rocket.jpg"), 2)
    assert {p.label for p in rocket} == {"missile", "projectile"}


def test_exact_path_matches_the_published_reference_numbers():
    # shared/data/README.md: chelsea's top-1 Egyptian cat at about 0.38, coffee's espresso at about 0.84.
    classifier = Classifier.from_onnx_file(parse_service_config({"exact_preprocessing": True}).classifier)
    assert classifier.classify(photo("chelsea.png"), 1)[0].confidence == pytest.approx(0.38, abs=0.01)
    assert classifier.classify(photo("coffee.png"), 1)[0].confidence == pytest.approx(0.84, abs=0.01)


def test_results_are_sorted_probabilities(bundled):
    predictions = bundled.classify(photo("rocket.jpg"), 1000)
    confidences = [p.confidence for p in predictions]
    assert len(predictions) == 1000
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-4)


def test_command_line_prints_label_lines():
    result = subprocess.run(
        [sys.executable, "-m", "onnx_classifier", "classify", "-n", "2", str(DATA / "coffee.png")],
        capture_output=True,
        text=True,
        cwd=MODULE_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    label, confidence = lines[0].rsplit(": ", 1)
    assert label == "espresso" and 0.7 < float(confidence) <= 1.0


def test_command_line_reports_bad_files_and_bad_attributes(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    result = subprocess.run(
        [sys.executable, "-m", "onnx_classifier", "classify", str(junk)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "unsupported image format" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "onnx_classifier", "classify", "--attributes", '{"head": "max"}', str(junk)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "attribute 'head'" in result.stderr
