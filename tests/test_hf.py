"""Hugging Face export folders, checked against what transformers itself answers for them.

tests/data/hf/ holds two tiny exports made by tests/fixtures/make_hf_models.py, with the
image-classification pipeline's top-5 for the shared photos in expected.json.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnx_classifier import Classifier, ConfigError, parse_service_config
from onnx_classifier.classifier import SharedClassifiers
from onnx_classifier.config import Head, Interpolation, Resize

from .conftest import DATA, photo, solid

HF = DATA / "hf"
EXPECTED = json.loads((HF / "expected.json").read_text())
# transformers' scores are float32; the module's preprocessing is the same to a few 1e-7.
TOLERANCE = 1e-3


def load(model_path, **attributes) -> Classifier:
    return Classifier.from_onnx_file(parse_service_config({"model_path": str(model_path), **attributes}).classifier)


def copy_export(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(HF / name, folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    values = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    path.write_text(json.dumps(values))


CASES = [
    pytest.param(name, photo_name, id=f"{name}-{photo_name}")
    for name, photos in EXPECTED.items()
    for photo_name in photos
]


@pytest.mark.parametrize("name, photo_name", CASES)
def test_answers_match_the_transformers_pipeline(name, photo_name):
    classifier = load(HF / name, exact_preprocessing=True)
    predictions = classifier.classify(photo(photo_name), 5)
    expected = EXPECTED[name][photo_name]
    assert [p.label for p in predictions] == [label for label, _ in expected]
    np.testing.assert_allclose([p.confidence for p in predictions], [s for _, s in expected], atol=TOLERANCE, rtol=0)


# README: the default (fast) path, which decodes a JPEG at reduced scale, differs from the pipeline by
# at most 0.0025 on rocket.jpg (in the same order) and 3e-5 on the PNGs.
FAST_PATH_TOLERANCE = {".jpg": 0.003, ".png": 5e-5}


@pytest.mark.parametrize("name, photo_name", CASES)
def test_the_default_fast_path_stays_within_the_bounds_readme_states(name, photo_name):
    classifier = load(HF / name)
    assert not classifier.model.exact_preprocessing
    predictions = classifier.classify(photo(photo_name), 5)
    expected = EXPECTED[name][photo_name]
    assert [p.label for p in predictions] == [label for label, _ in expected]
    tolerance = FAST_PATH_TOLERANCE[Path(photo_name).suffix]
    np.testing.assert_allclose([p.confidence for p in predictions], [s for _, s in expected], atol=tolerance, rtol=0)


def test_folder_is_read_as_the_export():
    loaded = load(HF / "vit_single_label")
    assert loaded.config.source.path == HF / "vit_single_label" / "model.onnx"
    vit = loaded.model
    assert vit.labels == ("tabby cat", "espresso", "rocket", "coffee mug", "space shuttle", "tiger cat", "teapot", "missile")
    assert vit.head is Head.SOFTMAX
    pre = vit.preprocessing
    assert (pre.input_size, pre.resize, pre.interpolation) == ((32, 32), Resize.STRETCH, Interpolation.BILINEAR)
    assert (pre.mean, pre.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    convnext = load(HF / "convnext_multi_label").model.preprocessing
    assert (convnext.input_size, convnext.resize, convnext.crop_fraction) == ((48, 48), Resize.CENTER_CROP, 0.875)
    assert convnext.interpolation is Interpolation.BICUBIC


def test_multi_label_problem_type_gives_sigmoid():
    classifier = load(HF / "convnext_multi_label")
    assert classifier.model.head is Head.SIGMOID
    everything = classifier.classify(photo("coffee.png"), classifier.num_classes)
    assert sum(p.confidence for p in everything) > 1.5  # independent per-label probabilities


def test_model_file_given_directly_picks_up_the_files_beside_it(tmp_path):
    assert load(HF / "vit_single_label" / "model.onnx").labels[0] == "tabby cat"
    folder = copy_export("vit_single_label", tmp_path)
    (folder / "preprocessor_config.json").unlink()
    # Only with both files: a lone config.json beside a model may belong to something else.
    classifier = load(folder / "model.onnx", input_size=[32, 32])
    assert classifier.labels[0] == "0"
    assert classifier.model.head is Head.AUTO


def test_attributes_override_the_export(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(8)))
    classifier = load(
        HF / "convnext_multi_label",
        head="softmax",
        labels_path=str(labels),
        input_size=[40, 40],
        resize="letterbox",
        interpolation="nearest",
        mean=[0.5],
        std=[0.25],
    )
    model = classifier.model
    assert model.head is Head.SOFTMAX
    assert model.labels[0] == "class 0"
    pre = model.preprocessing
    assert (pre.input_size, pre.resize, pre.interpolation) == ((40, 40), Resize.LETTERBOX, Interpolation.NEAREST)
    assert (pre.mean, pre.std) == ((0.5,), (0.25,))
    assert classifier.preprocess(photo("coffee.png")).shape == (1, 3, 40, 40)


def test_sidecar_overrides_the_export(tmp_path):
    folder = copy_export("vit_single_label", tmp_path)
    (folder / "model.json").write_text(json.dumps({"labels": [f"s{i}" for i in range(8)], "mean": [0.25]}))
    model = load(folder).model
    assert model.labels[0] == "s0"
    assert model.preprocessing.mean == (0.25,)
    assert model.preprocessing.std == (0.5, 0.5, 0.5)  # still the export's


def test_folder_without_model_onnx(tmp_path):
    folder = copy_export("vit_single_label", tmp_path)
    (folder / "model.onnx").rename(folder / "other.onnx")
    with pytest.raises(ConfigError) as caught:
        parse_service_config({"model_path": str(folder)})
    assert str(caught.value) == f"attribute 'model_path': folder {str(folder)!r} has no model.onnx"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"resample": 1}, "resample"),  # lanczos
        ({"resample": 7}, "resample"),
        ({"size": {"height": 40, "width": 40}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}}, "crop_size"),
        ({"size": {"shortest_edge": 40}}, "do_center_crop"),
        ({"size": {"shortest_edge": 32, "longest_edge": 64}}, "size"),
        ({"do_resize": False}, "do_resize"),
        ({"rescale_factor": -1}, "rescale_factor"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
        ({"image_processor_type": "EfficientNetImageProcessor"}, "image_processor_type"),
    ],
)
def test_preprocessing_that_cannot_be_reproduced_is_rejected(tmp_path, changes, field):
    folder = copy_export("vit_single_label", tmp_path)
    edit_json(folder / "preprocessor_config.json", **changes)
    with pytest.raises(ConfigError, match=rf"preprocessor_config.json '.*{folder.name}.*' '{field}'"):
        load(folder)


def test_convnext_crop_size_after_crop_pct_is_rejected(tmp_path):
    folder = copy_export("convnext_multi_label", tmp_path)
    edit_json(folder / "preprocessor_config.json", do_center_crop=True, crop_size={"height": 40, "width": 40})
    with pytest.raises(ConfigError, match=r"preprocessor_config.json .* 'do_center_crop'"):
        load(folder)


def test_shortest_edge_with_crop_size_is_a_center_crop(tmp_path):
    folder = copy_export("vit_single_label", tmp_path)
    edit_json(
        folder / "preprocessor_config.json",
        size={"shortest_edge": 37},
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
    )
    pre = load(folder).model.preprocessing
    assert (pre.input_size, pre.resize) == ((32, 32), Resize.CENTER_CROP)
    assert int(32 / pre.crop_fraction) == 37  # the preprocessor resizes the shorter side back to exactly 37


@pytest.mark.parametrize(
    "changes, expected",
    [
        # transformers' x = (pixel * rescale_factor - image_mean) / image_std, each step on or off
        ({"do_normalize": False}, lambda p: p / 255),
        ({"do_rescale": False, "image_mean": [100.0], "image_std": [50.0]}, lambda p: (p - 100) / 50),
        ({"rescale_factor": 1 / 127.5, "image_mean": [1.0], "image_std": [1.0]}, lambda p: p / 127.5 - 1),
        ({"do_rescale": False, "do_normalize": False}, lambda p: p),
    ],
)
def test_rescale_and_normalize_switches(tmp_path, changes, expected):
    folder = copy_export("vit_single_label", tmp_path)
    edit_json(folder / "preprocessor_config.json", **changes)
    color = (200, 40, 90)
    tensor = load(folder).preprocess(solid(color))
    np.testing.assert_allclose(tensor[0, :, 0, 0], expected(np.asarray(color, np.float64)), rtol=1e-6, atol=1e-5)


def test_id2label_count_must_match_the_model(tmp_path):
    folder = copy_export("convnext_multi_label", tmp_path)
    edit_json(folder / "config.json", id2label={"0": "cat", "1": "dog", "2": "cup"})
    with pytest.raises(ConfigError, match=r"config.json .* 'id2label' has 3 labels but output 'logits' has 8 classes"):
        load(folder)


@pytest.mark.parametrize(
    "id2label", [{"0": "cat", "2": "dog"}, {"zero": "cat"}, {"0": ""}, ["cat", "dog"]], ids=["gap", "name", "empty", "list"]
)
def test_malformed_id2label_is_rejected(tmp_path, id2label):
    folder = copy_export("convnext_multi_label", tmp_path)
    edit_json(folder / "config.json", id2label=id2label)
    with pytest.raises(ConfigError, match=r"config.json .* 'id2label'"):
        load(folder)


def test_edited_export_files_are_noticed(tmp_path):
    folder = copy_export("vit_single_label", tmp_path)
    config = parse_service_config({"model_path": str(folder)}).classifier
    shared = SharedClassifiers()
    first = shared.acquire(config)
    shared.release(first)
    config_json = folder / "config.json"
    edit_json(config_json, id2label={str(i): f"renamed {i}" for i in range(8)})
    stat = config_json.stat()  # a same-second rewrite still counts: move the stamp on
    os.utime(config_json, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = shared.acquire(config)
    assert second is not first
    assert second.labels[0] == "renamed 0"
    shared.release(second)
