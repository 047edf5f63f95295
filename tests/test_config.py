"""Every validation error: rejected before the service starts, naming the attribute and the value."""

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_classifier import ConfigError
from onnx_classifier.config import CropRounding, Head, Region
from onnx_classifier.classifier import validate_service_config
from onnx_classifier.model import resolve_model
from onnx_classifier.config import DESCRIPTION_KEYS

from . import onnx_models


def validate(attributes):
    """What the service's validate_config does, without Viam: the parsed config."""
    config, _ = validate_service_config(attributes)
    return config


def rejects(attributes, *fragments):
    with pytest.raises(ConfigError) as caught:
        validate(attributes)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write_graph(path, inputs, outputs, nodes, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def image_input(name="image", shape=("N", 3, 8, 8), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def scores_output(name="scores", shape=("N", 4), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def pooled_scores(x="image", out="scores"):
    """Nodes that turn an NCHW image into [N, 4] scores, for graphs whose inputs or outputs are under test."""
    return [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], [out]),
    ], [numpy_helper.from_array(np.ones((3, 4), np.float32), "w")]


def test_defaults_are_valid_and_declare_no_cameras():
    config = validate({})
    assert config.cameras == () and config.dependencies == () and config.confidence_threshold == 0.0
    assert len(resolve_model(config.classifier).labels) == 1000


def test_cameras_are_declared_default_first_without_duplicates():
    config = validate({"camera_name": "front", "camera_names": ["back", "front", "side"]})
    assert config.cameras == ("front", "back", "side")


@pytest.mark.parametrize(
    "attributes, fragments",
    [
        ({"camera_name": 3.0}, ["'camera_name'", "non-empty string", "3.0"]),
        ({"camera_name": ""}, ["'camera_name'", "non-empty string"]),
        ({"camera_names": "cam"}, ["'camera_names'", "list of non-empty strings", "'cam'"]),
        ({"camera_names": ["a", 2.0]}, ["'camera_names'", "list of non-empty strings"]),
        ({"head": "max"}, ["'head'", "'auto', 'softmax', 'sigmoid', 'none'", "'max'"]),
        ({"confidence_threshold": 1.5}, ["'confidence_threshold'", "[0, 1]", "1.5"]),
        ({"confidence_threshold": -0.1}, ["'confidence_threshold'", "-0.1"]),
        ({"confidence_threshold": "high"}, ["'confidence_threshold'", "a number", "'high'"]),
        ({"input_size": [224]}, ["'input_size'", "[224]"]),
        ({"input_size": [224.5, 224]}, ["'input_size'", "whole pixels"]),
        ({"input_size": [0, 224]}, ["'input_size'", "positive"]),
        ({"resize": "crop"}, ["'resize'", "'stretch', 'center_crop', 'letterbox'", "'crop'"]),
        ({"crop_fraction": 0}, ["'crop_fraction'", "(0, 1]", "0"]),
        ({"crop_fraction": 1.2}, ["'crop_fraction'", "1.2"]),
        ({"mean": [0.5, 0.5]}, ["'mean'", "1 or 3", "[0.5, 0.5]"]),
        ({"std": [0.2, 0.0, 0.2]}, ["'std'", "positive", "[0.2, 0.0, 0.2]"]),
        ({"channel_order": "RBG"}, ["'channel_order'", "'RGB', 'BGR'", "'RBG'"]),
        ({"interpolation": "lanczos"}, ["'interpolation'", "'bilinear', 'bicubic', 'nearest'", "'lanczos'"]),
        ({"num_threads": 0}, ["'num_threads'", ">= 1", "0"]),
        ({"num_threads": 1.5}, ["'num_threads'", "integer", "1.5"]),
        ({"exact_preprocessing": "yes"}, ["'exact_preprocessing'", "true or false", "'yes'"]),
        ({"model_path": "/nonexistent/model.onnx"}, ["'model_path'", "no such file", "/nonexistent/model.onnx"]),
        ({"labels_path": "/nonexistent/labels.txt"}, ["'labels_path'", "no such file", "/nonexistent/labels.txt"]),
        ({"output_name": "probs"}, ["'output_name'", "'probs'", "outputs are: logits"]),
        ({"input_size": [256, 256]}, ["'input_size'", "[256, 256]", "fixed input size [224, 224]"]),
        ({"max_image_pixels": 0}, ["'max_image_pixels'", ">= 1", "0"]),
        ({"camera_timeout_s": 0}, ["'camera_timeout_s'", "(0, 86400]", "0"]),
        ({"camera_timeout_s": "5s"}, ["'camera_timeout_s'", "a number", "'5s'"]),
        ({"region": [0.5, 0.0, 0.5, 1.0]}, ["'region'", "x_min < x_max", "[0.5, 0.0, 0.5, 1.0]"]),
        ({"region": [0.0, 0.8, 1.0, 0.2]}, ["'region'", "y_min < y_max"]),
        ({"region": [-0.1, 0.0, 1.0, 1.0]}, ["'region'", "0 <= x_min"]),
        ({"region": [0.0, 0.0, 1.0]}, ["'region'", "[x_min, y_min, x_max, y_max]"]),
        ({"region": "center"}, ["'region'", "'center'"]),
        ({"camera_name": "cam", "regions_by_camera": {"cam": [0, 0, 2, 1]}}, ["'regions_by_camera' entry 'cam'", "x_max <= 1"]),
        ({"camera_name": "cam", "regions_by_camera": {"door": [0, 0, 1, 1]}}, ["'regions_by_camera'", "'door'", "configured: 'cam'"]),
        ({"regions_by_camera": [[0, 0, 1, 1]]}, ["'regions_by_camera'", "object keyed by name"]),
        ({"smoothing_window": 0}, ["'smoothing_window'", "[1, 1000]"]),
        ({"smoothing_window": 1e9}, ["'smoothing_window'", "[1, 1000]"]),
        ({"label_hold_frames": 2.5}, ["'label_hold_frames'", "integer", "2.5"]),
        ({"label_confidences": {"espresso": 1.5}}, ["'label_confidences' entry 'espresso'", "[0, 1]", "1.5"]),
        ({"label_confidences": {"espresso": -0.1}}, ["'label_confidences' entry 'espresso'", "[0, 1]", "-0.1"]),
        ({"label_confidences": {"espresso": "high"}}, ["'label_confidences' entry 'espresso'", "'high'"]),
        ({"label_confidences": {"espresso": True}}, ["'label_confidences' entry 'espresso'", "True"]),
        ({"label_confidences": ["espresso"]}, ["'label_confidences'", "object keyed by name"]),
        ({"label_confidences": {"expresso": 0.5}}, ["'label_confidences'", "'expresso' is not a label", "did you mean 'espresso'"]),
        ({"allowed_labels": ["tabby", "egyptian cat"]}, ["'allowed_labels'", "'egyptian cat'", "'Egyptian cat'"]),
        ({"allowed_labels": []}, ["'allowed_labels'", "non-empty list"]),
        ({"blocked_labels": "cup"}, ["'blocked_labels'", "list of non-empty strings"]),
        ({"providers": []}, ["'providers'", "non-empty list"]),
        ({"providers": ["CUDAExecutionProvidr"]}, ["'providers'", "'CUDAExecutionProvidr'", "did you mean 'CUDAExecutionProvider'"]),
        ({"providers": ["CUDAExecutionProvider"], "strict_providers": True}, ["'providers'", "'CUDAExecutionProvider'", "not available", "available: ", "CPUExecutionProvider"]),
        ({"strict_providers": "yes"}, ["'strict_providers'", "true or false"]),
    ],
)
def test_bad_attribute_values(attributes, fragments):
    rejects(attributes, *fragments)


def test_unknown_attributes_are_warnings_that_suggest_the_known_name():
    config = validate({"camera": "cam", "labels": "x.txt", "confidence_treshold": 0.5, "zzz": 1})
    assert config.cameras == () and config.confidence_threshold == 0.0
    camera, labels, threshold, other = config.warnings
    assert "'camera' is not recognized; did you mean 'camera_name'" in camera
    assert "'labels' is not recognized; did you mean 'labels_path'" in labels
    assert "did you mean 'confidence_threshold'" in threshold
    assert "'zzz' is not recognized" in other


def test_unavailable_provider_falls_back_to_the_cpu_unless_strict():
    from onnx_classifier.onnx_runtime import resolve_providers

    config = validate({"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    assert config.classifier.source.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert resolve_providers(config.classifier.source) == ("CPUExecutionProvider",)
    config = validate({"providers": ["TensorrtExecutionProvider"]})
    assert resolve_providers(config.classifier.source) == ("CPUExecutionProvider",)


def test_label_names_of_a_model_without_labels_are_class_indices(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    validate({"model_path": str(path), "allowed_labels": ["0", "2"], "label_confidences": {"1": 0.9}})
    rejects({"model_path": str(path), "blocked_labels": ["7"]}, "'blocked_labels'", "'7' is not a label")


def test_model_that_is_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf at all" * 10)
    rejects({"model_path": str(path)}, "model_path", str(path), "not a readable ONNX model")


def test_labels_count_must_match_the_classes(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    rejects({"labels_path": str(labels)}, "'labels_path'", str(labels), "2 labels", "1000 classes")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    rejects({"labels_path": str(empty)}, str(empty), "empty")


def test_dynamic_spatial_dims_need_input_size(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx", size=None)
    rejects({"model_path": str(path)}, "'input_size' is required", "dynamic")
    validate({"model_path": str(path), "input_size": [32, 32]})


def test_mean_length_must_match_channels(tmp_path):
    nodes, weights = pooled_scores()
    path = write_graph(tmp_path / "gray.onnx", [image_input(shape=(1, 1, 8, 8))], [scores_output()], nodes, weights)
    rejects({"model_path": path, "mean": [0.1, 0.2, 0.3]}, "'mean'", "3 values", "1 channel")


def test_graph_shapes_that_are_not_an_image_classifier(tmp_path):
    nodes, weights = pooled_scores()
    two_inputs = write_graph(
        tmp_path / "two.onnx", [image_input(), image_input("mask")], [scores_output()], nodes, weights
    )
    rejects({"model_path": two_inputs}, "model_path", "2 inputs", "'image', 'mask'")
    flat_input = write_graph(tmp_path / "flat.onnx", [image_input(shape=("N", 3))], [scores_output()], [helper.make_node("MatMul", ["image", "w"], ["scores"])], weights)
    rejects({"model_path": flat_input}, "input 'image'", "[None, 3]")
    batch_four = write_graph(tmp_path / "b4.onnx", [image_input(shape=(4, 3, 8, 8))], [scores_output()], nodes, weights)
    rejects({"model_path": batch_four}, "fixed batch size of 4")
    five_channels = write_graph(tmp_path / "c5.onnx", [image_input(shape=(1, 5, 8, 8))], [scores_output()], nodes, weights)
    rejects({"model_path": five_channels}, "1 or 3 channels")
    int_input = write_graph(tmp_path / "int.onnx", [image_input(dtype=TensorProto.INT32)], [scores_output()], nodes, weights)
    rejects({"model_path": int_input}, "input 'image'", "int32", "float32, float16 and uint8")


def test_outputs_that_are_not_class_scores(tmp_path):
    nodes, weights = pooled_scores()
    two_outputs = onnx_models.build(tmp_path / "two.onnx", features_output=True)
    rejects({"model_path": str(two_outputs)}, "2 outputs", "means, class_scores", "'output_name'")
    rejects({"model_path": str(two_outputs), "output_name": "logits"}, "'output_name'", "'logits'", "means, class_scores")
    spatial = write_graph(
        tmp_path / "map.onnx", [image_input()], [scores_output("image", ("N", 3, 8, 8))], [], []
    )
    rejects({"model_path": spatial}, "output 'image'", "[N, C] or [C]")
    int_scores = write_graph(
        tmp_path / "int.onnx",
        [image_input()],
        [scores_output(dtype=TensorProto.INT64)],
        nodes[:-1] + [helper.make_node("MatMul", ["flat", "w"], ["f"]), helper.make_node("Cast", ["f"], ["scores"], to=TensorProto.INT64)],
        weights,
    )
    rejects({"model_path": int_scores}, "output 'scores'", "int64")
    uint8_scores = write_graph(
        tmp_path / "u8.onnx",
        [image_input()],
        [scores_output(dtype=TensorProto.UINT8)],
        nodes[:-1] + [helper.make_node("MatMul", ["flat", "w"], ["f"]), helper.make_node("Cast", ["f"], ["scores"], to=TensorProto.UINT8)],
        weights,
    )
    rejects({"model_path": uint8_scores}, "output 'scores'", "uint8", "no QuantizeLinear")


def test_sidecar_errors_name_the_sidecar(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    path.with_suffix(".json").write_text("{not json")
    rejects({"model_path": str(path)}, "sidecar", "m.json", "not valid JSON")
    path.with_suffix(".json").write_text('{"labels": ["a", "b"]}')
    rejects({"model_path": str(path)}, "2 labels", "5 classes")


def test_unknown_sidecar_keys_are_warnings_as_unknown_attributes_are(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    sidecar = path.with_suffix(".json")
    sidecar.write_text('{"mean": [0.5], "labelz": ["a"], "zzz": 1}')
    config, warnings = validate_service_config({"model_path": str(path)})
    assert resolve_model(config.classifier).preprocessing.mean == (0.5,)  # the keys it knows still apply
    assert warnings == (
        f"model sidecar {str(sidecar)!r} key 'labelz' is not recognized; did you mean 'labels'? (ignored)",
        f"model sidecar {str(sidecar)!r} key 'zzz' is not recognized; known keys are: {', '.join(DESCRIPTION_KEYS)} (ignored)",
    )
    assert config.warnings == ()


def test_relative_paths_resolve_against_the_module_folder():
    config = validate({"model_path": "models/efficientnet_lite0.onnx", "labels_path": "models/efficientnet_lite0.labels.txt"})
    assert config.classifier.source.path.is_absolute() and config.classifier.source.path.is_file()


def test_paths_expand_environment_variables_and_the_home_folder(tmp_path, monkeypatch):
    """viam-server gives modules $VIAM_MODULE_DATA; the module's own folder lies under ~/.viam/packages."""
    data, home = tmp_path / "data", tmp_path / "home"
    data.mkdir()
    home.mkdir()
    model = onnx_models.build(data / "model.onnx")
    labels = home / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(onnx_models.NUM_CLASSES)))
    monkeypatch.setenv("VIAM_MODULE_DATA", str(data))
    monkeypatch.setenv("HOME", str(home))
    for model_path in ("$VIAM_MODULE_DATA/model.onnx", "${VIAM_MODULE_DATA}/model.onnx", "$VIAM_MODULE_DATA"):
        for labels_path in ("~/labels.txt", "$HOME/labels.txt"):
            config = validate({"model_path": model_path, "labels_path": labels_path})
            assert (config.classifier.source.path, config.classifier.labels_path) == (model, labels)


def test_an_unset_environment_variable_in_a_path_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("VIAM_MODULE_DATA", raising=False)
    rejects(
        {"model_path": "$VIAM_MODULE_DATA/m.onnx"},
        "attribute 'model_path': environment variable $VIAM_MODULE_DATA is not set (in '$VIAM_MODULE_DATA/m.onnx')",
    )
    monkeypatch.setenv("MODELS", str(tmp_path))
    rejects({"labels_path": "${MODELS}/${LABELS_FILE}"}, "attribute 'labels_path': environment variable $LABELS_FILE is not set")


def test_integral_doubles_from_protobuf_structs_are_integers():
    config = validate({"num_threads": 2.0, "input_size": [224.0, 224.0]})
    assert config.classifier.source.num_threads == 2 and isinstance(config.classifier.source.num_threads, int)


def test_validation_reads_the_graph_but_not_the_weights(tmp_path):
    from onnx_classifier.onnx_structure import SMALL_TENSOR_BYTES, load_structure

    big = np.arange(3 * 40000, dtype=np.float32).reshape(3, 40000)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "big"], ["wide"]),
        helper.make_node("ReduceMax", ["wide"], ["peak"], keepdims=1, axes=[1]),
        helper.make_node("Mul", ["peak", "scale"], ["scaled"]),
        helper.make_node("Expand", ["scaled", "shape"], ["scores"]),
    ]
    weights = [
        numpy_helper.from_array(big, "big"),
        numpy_helper.from_array(np.array([0.5], np.float32), "scale"),
        numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
    ]
    path = write_graph(tmp_path / "m.onnx", [image_input()], [scores_output()], nodes, weights)
    assert big.nbytes > SMALL_TENSOR_BYTES
    structure = load_structure(path)
    full = onnx.load(path)
    assert [n.op_type for n in structure.graph.node] == [n.op_type for n in full.graph.node]
    described = {t.name: t for t in structure.graph.initializer}
    assert list(described["big"].dims) == [3, 40000] and described["big"].raw_data == b""
    assert numpy_helper.to_array(described["scale"]).tolist() == [0.5]
    assert len(structure.SerializeToString()) < 1000 < len(full.SerializeToString())
    validate({"model_path": path})


def test_did_you_mean_offers_the_three_closest_names_or_lists_a_few_known_ones():
    from onnx_classifier.config import did_you_mean

    known = ["camera_a", "camera_b", "camera_c", "camera_d", "zebra"]
    assert did_you_mean("camera_x", known, "cameras") == "; did you mean 'camera_d' or 'camera_c' or 'camera_b'?"  # ties: difflib's order
    assert did_you_mean("camera_x", ["camera_a"], "cameras") == "; did you mean 'camera_a'?"
    thirty = [f"label {i}" for i in range(30)]
    assert did_you_mean("zzz", thirty, "labels") == "; known labels are: " + ", ".join(thirty)
    assert did_you_mean("zzz", thirty + ["label 30"], "labels") == ""


@pytest.mark.parametrize(
    "value",
    [["a", 0, 1, 1], [False, 0.0, True, 1.0], [0, 0, float("inf"), 1], [0.0, 0.5, 1.0, 0.5], [0.0, 0.0, 1.0, 1.5], (0, 0, 1)],
    ids=["string", "bools", "infinite", "empty-height", "past-the-bottom", "three-numbers"],
)
def test_a_bad_region_is_rejected_with_its_value(value):
    from onnx_classifier.config import parse_region

    with pytest.raises(ConfigError) as caught:
        parse_region(value, "extra 'region'")
    expected = "extra 'region' must be [x_min, y_min, x_max, y_max] with 0 <= x_min < x_max <= 1 and 0 <= y_min < y_max <= 1"
    assert str(caught.value) in (f"{expected}, got {value!r}", f"{expected}, got {list(value)!r}")


def test_regions_at_the_edges_are_accepted():
    from onnx_classifier.config import Region, parse_region

    assert parse_region([0, 0, 1, 1], "r") == Region(0.0, 0.0, 1.0, 1.0)
    assert parse_region((0.25, 0.5, 0.75, 1), "r") == Region(0.25, 0.5, 0.75, 1.0)


def test_a_label_that_is_nothing_like_any_lists_the_models_few_labels():
    from onnx_classifier.config import LabelRules, check_label_names

    with pytest.raises(ConfigError) as caught:
        check_label_names(LabelRules(blocked_labels=("zzz",)), ("cat", "dog", "bird"))
    assert str(caught.value) == "attribute 'blocked_labels': 'zzz' is not a label of this model; known labels are: cat, dog, bird"


def test_a_sidecar_that_is_not_an_object_is_named(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    path.with_suffix(".json").write_text("[1, 2]")
    message = rejects({"model_path": str(path)})
    assert message == f"model sidecar {str(path.with_suffix('.json'))!r} must be a JSON object, got list"


@pytest.mark.parametrize(
    "attributes, message",
    [
        ({"allowed_labels": []}, "attribute 'allowed_labels' must be a non-empty list of labels (leave it out to allow every label), got []"),
        ({"providers": []}, "attribute 'providers' must be a non-empty list of onnxruntime execution provider names, got []"),
        ({"strict_providers": "yes"}, "attribute 'strict_providers' must be true or false, got 'yes'"),
        ({"label_confidences": ["x"]}, "attribute 'label_confidences' must be an object keyed by name, got ['x']"),
        ({"label_confidences": {" ": 0.5}}, "attribute 'label_confidences' must be an object keyed by name, got {' ': 0.5}"),
        ({"confidence_threshold": "high"}, "attribute 'confidence_threshold' must be a number, got 'high'"),
        ({"mean": [0.5, 0.5]}, "attribute 'mean' must be a list of 1 or 3 numbers, got [0.5, 0.5]"),
        ({"mean": ["a"]}, "attribute 'mean' must be a list of 1 or 3 numbers, got ['a']"),
        ({"mean": [True]}, "attribute 'mean' must be a list of 1 or 3 numbers, got [True]"),
        ({"std": [0.5, 0, 0.5]}, "attribute 'std' must be a list of 1 or 3 positive numbers, got [0.5, 0, 0.5]"),
        ({"input_size": [224.5, 224]}, "attribute 'input_size' must be [height, width] in whole pixels, got [224.5, 224]"),
        ({"num_threads": "2"}, "attribute 'num_threads' must be an integer >= 1, got '2'"),
        ({"num_threads": True}, "attribute 'num_threads' must be an integer >= 1, got True"),
        ({"smoothing_window": 1001}, "attribute 'smoothing_window' must be an integer in [1, 1000], got 1001"),
        ({"camera_name": 3.0}, "attribute 'camera_name' must be a non-empty string, got 3.0"),
        ({"camera_names": "cam"}, "attribute 'camera_names' must be a list of non-empty strings, got 'cam'"),
        (
            {"regions_by_camera": {"door": [0, 0, 1, 1]}},
            "attribute 'regions_by_camera' names camera 'door', which is not in 'camera_name' or 'camera_names' (configured: none)",
        ),
        (
            {"camera_names": ["a", "b"], "regions_by_camera": {"door": [0, 0, 1, 1]}},
            "attribute 'regions_by_camera' names camera 'door', which is not in 'camera_name' or 'camera_names' (configured: 'a', 'b')",
        ),
    ],
)
def test_messages_name_the_attribute_what_it_must_be_and_the_value(attributes, message):
    assert rejects(attributes) == message


def test_values_at_the_bounds_are_accepted():
    config = validate(
        {
            "num_threads": 1,
            "smoothing_window": 1000,
            "label_hold_frames": 1,
            "label_confidences": {"espresso": 0, "cup": 1},
            "mean": [-0.5],
            "crop_fraction": 1,
            "confidence_threshold": 1,
            "crop_rounding": "FLOOR",
        }
    )
    assert config.classifier.source.num_threads == 1 and config.smoothing_window == 1000 and config.label_hold_frames == 1
    assert config.labels.label_confidences == (("espresso", 0.0), ("cup", 1.0))
    pre = config.classifier.preprocessing
    assert pre.mean == (-0.5,) and pre.crop_fraction == 1.0 and pre.crop_rounding is CropRounding.FLOOR
    assert config.confidence_threshold == 1.0


def test_provider_messages_and_a_single_warning_for_a_missing_one(caplog):
    from onnx_classifier import onnx_runtime

    unknown = rejects({"providers": ["Nope"]})
    assert unknown == (
        "attribute 'providers': 'Nope' is not an onnxruntime execution provider; known providers are: "
        + ", ".join(ort.get_all_providers())
    )
    missing = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p not in ort.get_available_providers()]
    if len(missing) < 2:
        pytest.skip("this onnxruntime has a GPU provider")
    assert rejects({"providers": missing, "strict_providers": True}) == (
        f"attribute 'providers': {', '.join(map(repr, missing))} not available in the installed onnxruntime "
        f"{ort.__version__} (available: {', '.join(ort.get_available_providers())}); install the onnxruntime package "
        "built with it, or set 'strict_providers' to false to fall back"
    )
    onnx_runtime._warned_unavailable.discard(missing[0])
    caplog.set_level(logging.WARNING, logger="onnx_classifier.onnx_runtime")
    for _ in range(2):
        config = validate({"providers": [missing[0], "CPUExecutionProvider"]})
        assert onnx_runtime.resolve_providers(config.classifier.source) == ("CPUExecutionProvider",)
    warnings = [r.getMessage() for r in caplog.records if r.name == "onnx_classifier.onnx_runtime"]
    assert warnings == [
        f"execution provider {missing[0]} is not available in onnxruntime {ort.__version__} "
        f"(available: {', '.join(ort.get_available_providers())}); falling back"
    ]


def test_camera_settings_and_their_defaults():
    defaults = validate({})
    assert (defaults.camera_timeout_s, defaults.smoothing_window, defaults.label_hold_frames) == (5.0, 1, 1)
    config = validate({"camera_timeout_s": 2, "smoothing_window": 4, "label_hold_frames": 3})
    assert (config.camera_timeout_s, config.smoothing_window, config.label_hold_frames) == (2.0, 4, 3)


def test_an_unknown_sidecar_key_with_no_close_name_lists_the_known_ones(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    path.with_suffix(".json").write_text('{"zzz": 1, "mean": [0.5]}')
    assert validate_service_config({"model_path": str(path)})[1] == (
        f"model sidecar {str(path.with_suffix('.json'))!r} key 'zzz' is not recognized; known keys are: labels_path, labels, "
        "head, input_size, resize, crop_fraction, crop_rounding, mean, std, channel_order, interpolation (ignored)",
    )


def test_regions_by_camera_over_the_services_region():
    config = validate({"camera_names": ["a", "b"], "region": [0, 0, 0.5, 1], "regions_by_camera": {"b": [0.5, 0, 1, 1]}})
    assert config.region_for("a") == Region(0.0, 0.0, 0.5, 1.0) and config.region_for(None) == Region(0.0, 0.0, 0.5, 1.0)
    assert config.region_for("b") == Region(0.5, 0.0, 1.0, 1.0)
    assert validate({"camera_names": ["a"]}).region_for("a") is None


def test_the_service_summary_gives_every_setting_and_leaves_out_those_not_set():
    """`info`'s "service" section (and the CLI's --info): unset values are left out, since the Python
    SDK turns a None in a do_command result into 0."""
    assert validate({}).summary() == {
        "cameras": [],
        "camera_timeout_s": 5.0,
        "regions_by_camera": {},
        "smoothing_window": 1,
        "label_hold_frames": 1,
        "confidence_threshold": 0.0,
        "label_confidences": {},
        "blocked_labels": [],
    }
    config = validate({
        "camera_name": "front",
        "camera_names": ["back"],
        "camera_timeout_s": 2,
        "region": [0, 0.25, 1, 0.75],
        "regions_by_camera": {"back": [0.5, 0, 1, 1]},
        "smoothing_window": 4,
        "label_hold_frames": 3,
        "confidence_threshold": 0.2,
        "label_confidences": {"tabby": 0.6},
        "allowed_labels": ["tabby", "tiger cat"],
        "blocked_labels": ["tiger cat"],
    })
    assert config.summary() == {
        "cameras": ["front", "back"],
        "default_camera": "front",
        "camera_timeout_s": 2.0,
        "region": [0.0, 0.25, 1.0, 0.75],
        "regions_by_camera": {"back": [0.5, 0.0, 1.0, 1.0]},
        "smoothing_window": 4,
        "label_hold_frames": 3,
        "confidence_threshold": 0.2,
        "label_confidences": {"tabby": 0.6},
        "allowed_labels": ["tabby", "tiger cat"],
        "blocked_labels": ["tiger cat"],
    }


# How the graph is read: each rule on the smallest graph that needs it.


def spec_of(path, **attributes):
    return resolve_model(validate({"model_path": str(path), **attributes}).classifier).spec


def quantized_scores_graph(path, scale_zero_inputs, extra_nodes=(), extra_initializers=(), output_dtype=TensorProto.UINT8, cast_to=None):
    """An image to [N, 4] float scores, then QuantizeLinear with the given scale/zero-point inputs (and Cast)."""
    nodes, weights = pooled_scores(out="float_scores")
    nodes = nodes + list(extra_nodes) + [helper.make_node("QuantizeLinear", ["float_scores", *scale_zero_inputs], ["quantized"])]
    if cast_to is not None:
        nodes.append(helper.make_node("Cast", ["quantized"], ["scores"], to=cast_to))
    else:
        nodes.append(helper.make_node("Identity", ["quantized"], ["scores"]))
    return write_graph(path, [image_input()], [scores_output(dtype=output_dtype)], nodes, list(weights) + list(extra_initializers))


def test_quantization_parameters_from_initializers_constants_or_a_default_zero_point(tmp_path):
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(3, np.uint8), "z")
    assert spec_of(quantized_scores_graph(tmp_path / "init.onnx", ["s", "z"], extra_initializers=[scale, zero])).output_quantization == (
        pytest.approx(0.05), 3
    )
    # No zero point: ONNX's default is 0.
    assert spec_of(quantized_scores_graph(tmp_path / "nozero.onnx", ["s"], extra_initializers=[scale])).output_quantization == (
        pytest.approx(0.05), 0
    )
    # Scale and zero point written by Constant nodes instead of initializers.
    constants = [
        helper.make_node("Constant", [], ["cs"], value=numpy_helper.from_array(np.array(0.25, np.float32), "cs_value")),
        helper.make_node("Constant", [], ["cz"], value=numpy_helper.from_array(np.array(7, np.uint8), "cz_value")),
    ]
    assert spec_of(quantized_scores_graph(tmp_path / "const.onnx", ["cs", "cz"], extra_nodes=constants)).output_quantization == (0.25, 7)


def test_quantized_outputs_whose_scale_is_not_a_plain_constant_are_refused(tmp_path):
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "z")
    computed = quantized_scores_graph(
        tmp_path / "computed.onnx", ["s", "z"], extra_nodes=[helper.make_node("Mul", ["two", "half"], ["s"])], extra_initializers=[two, half, zero]
    )
    rejects({"model_path": computed}, "output 'scores' is uint8 but no QuantizeLinear or QLinear op in the graph gives its scale and zero point")
    # int8 values cast to uint8 are not the quantized values any more: a Cast is not looked through.
    int8_zero = numpy_helper.from_array(np.array(0, np.int8), "z8")
    cast = quantized_scores_graph(
        tmp_path / "cast.onnx", ["half", "z8"], extra_initializers=[half, int8_zero], cast_to=TensorProto.UINT8
    )
    rejects({"model_path": cast}, "output 'scores' is uint8 but no QuantizeLinear")


def test_an_activation_is_found_behind_quantize_and_dequantize(tmp_path):
    nodes, weights = pooled_scores(out="logits")
    q = [numpy_helper.from_array(np.array(1 / 255, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("QuantizeLinear", ["probabilities", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["scores"]),
    ]
    path = write_graph(tmp_path / "qdq.onnx", [image_input()], [scores_output()], nodes, list(weights) + q)
    assert spec_of(path).final_activation is Head.SOFTMAX


def test_scores_that_no_op_writes_have_no_final_activation(tmp_path):
    # A graph that ignores its image and outputs constant scores (a baseline): nothing writes the output.
    scores = numpy_helper.from_array(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), "scores")
    path = write_graph(tmp_path / "const.onnx", [image_input()], [scores_output(shape=(1, 4))], [], [scores])
    assert spec_of(path).final_activation is None


def test_onnx_metadata_keys_other_than_the_description_are_ignored_and_labels_path_is_not_read(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    path = onnx_models.build(tmp_path / "m.onnx", metadata={"author": "someone", "labels_path": str(labels), "resize": "letterbox"})
    config, warnings = validate_service_config({"model_path": str(path)})
    spec = resolve_model(config.classifier).spec
    assert warnings == () and spec.description.labels is None and spec.description.labels_path is None
    assert resolve_model(config.classifier).labels is None


def test_a_bad_onnx_metadata_value_names_the_model(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx", metadata={"head": "softmax2"})
    message = rejects({"model_path": str(path)})
    assert message.startswith(f"ONNX metadata of {str(path)!r} key 'head' must be one of")


def test_labels_in_onnx_metadata_stay_when_a_sidecar_gives_only_preprocessing(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx", metadata={"labels": list("vwxyz")}, sidecar={"resize": "letterbox"})
    model = resolve_model(validate({"model_path": str(path)}).classifier)
    assert model.labels == tuple("vwxyz") and model.preprocessing.resize.value == "letterbox"
    assert model.labels_source == f"ONNX metadata of {str(path)!r} key 'labels'"


@pytest.mark.parametrize("layout, size, channels", [("NCHW", (8, 12), 3), ("NHWC", (12, 8), 3), ("NHWC", (8, 12), 1)])
def test_image_inputs_of_every_layout_size_and_channel_count(tmp_path, layout, size, channels):
    spec = spec_of(onnx_models.build(tmp_path / "m.onnx", layout=layout, size=size, channels=channels))
    assert (spec.layout.value, spec.input_size, spec.channels) == (layout, size, channels)


def test_a_spatial_dimension_of_zero_is_dynamic(tmp_path):
    nodes, weights = pooled_scores()
    path = write_graph(tmp_path / "zero.onnx", [image_input(shape=(1, 3, 0, 0))], [scores_output()], nodes, weights)
    rejects({"model_path": path}, "input_size")
    assert spec_of(path, input_size=[8, 8]).input_size is None


def test_graph_messages_in_full(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    assert rejects({"model_path": str(path), "input_name": "pixels"}) == (
        f"the image input 'pixels' is not an input of model_path {str(path)!r}; its input is 'image'"
    )
    spatial = write_graph(tmp_path / "map.onnx", [image_input()], [scores_output("image", ("N", 3, 8, 8))], [], [])
    assert rejects({"model_path": spatial}) == (
        f"model_path {spatial!r}: output 'image' has shape [None, 3, 8, 8]; expected class scores [N, C] or [C]"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert rejects({"model_path": str(path), "labels_path": str(empty)}) == (
        f"attribute 'labels_path' ({empty}): labels file {str(empty)!r} is empty"
    )
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9\n")
    assert rejects({"model_path": str(path), "labels_path": str(latin1)}).startswith(
        f"attribute 'labels_path' ({latin1}): labels file {str(latin1)!r} cannot be read: "
    )


def test_mlmodel_timeout_s_bounds_and_where_it_applies():
    assert rejects({"mlmodel_timeout_s": 5}) == "attribute 'mlmodel_timeout_s' applies only with 'mlmodel_name'"
    assert validate({"mlmodel_name": "m", "mlmodel_timeout_s": 86400}).classifier.source.timeout_s == 86400.0
    for value in (0, 86400.5):
        assert rejects({"mlmodel_name": "m", "mlmodel_timeout_s": value}).startswith("attribute 'mlmodel_timeout_s' must be ")


def test_remapped_names_that_name_no_score_output_or_are_not_names():
    config = validate({"mlmodel_name": "m", "remap_output_names": {"boxes": "location"}, "remap_input_names": {"pixels": "image"}})
    assert (config.classifier.input_name, config.classifier.output_name) == ("pixels", None)
    assert rejects({"mlmodel_name": "m", "remap_output_names": {"probs": 5}}) == (
        "attribute 'remap_output_names' must be an object of tensor names: {\"model's name\": \"the vision service's name\"}, "
        "got {'probs': 5}"
    )


def test_variable_names_in_paths_keep_their_own_letters(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODELSX", str(tmp_path))
    path = onnx_models.build(tmp_path / "m.onnx")
    assert validate({"model_path": "${XMODELSX}/m.onnx"}).classifier.source.path == path


def test_the_source_of_labels_in_a_sidecar_is_named(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx", sidecar={"labels": list("abcde")})
    sidecar = str(path.with_suffix(".json"))
    assert resolve_model(validate({"model_path": str(path)}).classifier).labels_source == f"model sidecar {sidecar!r} key 'labels'"
    (tmp_path / "l.txt").write_text("\n".join("vwxyz") + "\n")
    path.with_suffix(".json").write_text('{"labels_path": "l.txt"}')
    model = resolve_model(validate({"model_path": str(path)}).classifier)
    assert model.labels == tuple("vwxyz") and model.labels_source == f"model sidecar {sidecar!r} key 'labels_path'"


def test_a_one_element_scale_vector_is_a_plain_scale_and_a_per_channel_one_is_refused(tmp_path):
    vector = numpy_helper.from_array(np.array([0.125], np.float32), "s1")
    assert spec_of(quantized_scores_graph(tmp_path / "s1.onnx", ["s1"], extra_initializers=[vector])).output_quantization == (0.125, 0)
    per_channel = numpy_helper.from_array(np.array([0.1, 0.2, 0.3, 0.4], np.float32), "s4")
    path = quantized_scores_graph(tmp_path / "s4.onnx", ["s4"], extra_initializers=[per_channel])
    rejects({"model_path": path}, "output 'scores' is uint8 but no QuantizeLinear or QLinear op in the graph gives its scale and zero point")


def test_an_input_size_that_does_not_fit_the_graph_names_who_set_it(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    assert rejects({"model_path": str(path), "input_size": [8, 8]}) == (
        "attribute 'input_size' [8, 8] does not match the model's fixed input size [16, 16]"
    )
    path.with_suffix(".json").write_text('{"input_size": [8, 12]}')
    assert rejects({"model_path": str(path)}) == "model description 'input_size' [8, 12] does not match the model's fixed input size [16, 16]"


def test_validation_says_what_is_assumed_for_a_float_model_that_nothing_describes(tmp_path):
    path = onnx_models.build(tmp_path / "bare.onnx")
    (notice,) = validate_service_config({"model_path": str(path)})[1]
    assert notice.startswith(f"model {str(path)!r} has no preprocessing description (no sidecar 'bare.json', no ONNX metadata)")
    assert "assuming resize 'stretch', mean [0.0] and std [1.0]" in notice and "set the attributes 'resize', 'mean' and 'std'" in notice
    assert validate_service_config({"model_path": str(path), "mean": [0.5]})[1] == ()
    assert validate_service_config({})[1] == ()  # the bundled model has its sidecar
