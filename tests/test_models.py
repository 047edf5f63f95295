"""Heads, layouts, dtypes, quantization and preprocessing on small models, checked against numpy."""

import hashlib
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from onnx_classifier import Classifier, ConfigError, parse_service_config
from onnx_classifier.config import Head
from onnx_classifier.cores import available_cores
from onnx_classifier.cpu import describe_cpu
from onnx_classifier.head import sigmoid, softmax

from . import onnx_models
from .conftest import encode, solid

RED_ISH = (200, 40, 90)


def load(model_path, **attributes):
    return Classifier.from_onnx_file(parse_service_config({"model_path": str(model_path), **attributes}).classifier)


def as_array(predictions):
    """Confidences in class order, from predictions labelled by class index."""
    out = np.zeros(onnx_models.NUM_CLASSES)
    for p in predictions:
        out[int(p.label)] = p.confidence
    return out


def normalized(color, mean=(0, 0, 0), std=(1, 1, 1)):
    return (np.asarray(color) / 255.0 - np.asarray(mean)) / np.asarray(std)


def test_raw_logits_get_softmax(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"))
    predictions = classifier.classify(solid(RED_ISH), 5)
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(predictions), expected, rtol=1e-5, atol=1e-6)
    assert [int(p.label) for p in predictions] == list(np.argsort(-expected))


def test_graph_ending_in_softmax_is_not_softmaxed_twice(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx", final="Softmax"))
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_graph_ending_in_sigmoid_is_used_as_it_is(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx", final="Sigmoid"))
    expected = sigmoid(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_probabilities_without_a_final_softmax_node_are_used_as_they_are(model_dir):
    """A graph whose Softmax is followed by another op (here Mul by 1) does not end in Softmax, but
    its output is a probability distribution: `head: auto` uses it as it is, not softmaxed twice."""
    classifier = load(onnx_models.build(model_dir / "m.onnx", final="Softmax", scale_after_final=1.0))
    assert classifier.model.spec.final_activation is None
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)
    head, reason = classifier.head_in_use()
    assert head is Head.NONE and reason.startswith("auto, decided on every frame (this is its choice for a blank image)")


@pytest.mark.parametrize("scale, distribution", [(1.0005, True), (1.002, False), (2.0, False)])
def test_a_distribution_is_told_by_its_sum_within_a_thousandth(model_dir, scale, distribution):
    classifier = load(onnx_models.build(model_dir / "m.onnx", final="Softmax", scale_after_final=scale))
    output = scale * softmax(onnx_models.scores_for(normalized(RED_ISH)))
    expected = output if distribution else softmax(output)
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)
    assert classifier.head_in_use()[0] is (Head.NONE if distribution else Head.SOFTMAX)  # its choice for a blank image


def test_multi_label_logits_with_sigmoid_head(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"), head="sigmoid")
    predictions = classifier.classify(solid(RED_ISH), 5)
    expected = sigmoid(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(predictions), expected, rtol=1e-5, atol=1e-6)
    assert sum(p.confidence for p in predictions) > 1.0  # independent per-class probabilities


def test_head_none_passes_scores_through_clipped_to_unit_interval(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"), head="none")
    scores = onnx_models.scores_for(normalized(RED_ISH))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), np.clip(scores, 0, 1), atol=1e-6)


def test_nhwc_uint8_input_gets_raw_pixels(model_dir):
    path = onnx_models.build(model_dir / "m.onnx", layout="NHWC", input_type=TensorProto.UINT8)
    classifier = load(path, mean=[0.5], std=[0.25])  # ignored: uint8 inputs take raw 0..255 pixels
    tensor = classifier.preprocess(solid(RED_ISH))
    assert tensor.dtype == np.uint8 and tensor.shape == (1, 16, 16, 3)
    assert (tensor[0] == RED_ISH).all()
    expected = softmax(onnx_models.scores_for(RED_ISH))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_float16_input(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx", input_type=TensorProto.FLOAT16))
    assert classifier.preprocess(solid(RED_ISH)).dtype == np.float16
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, atol=2e-3)


def test_quantized_output_is_dequantized_with_the_graphs_scale_and_zero_point(model_dir):
    scale, zero_point = 1 / 250, 3
    path = onnx_models.build(model_dir / "m.onnx", final="Softmax", quantize_output=(scale, zero_point))
    classifier = load(path)
    probabilities = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    quantized = np.clip(np.round(probabilities / scale) + zero_point, 0, 255)
    expected = (quantized - zero_point) * scale
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, atol=1e-6)


def test_quantized_logits_get_softmax_after_dequantizing(model_dir):
    scale, zero_point = 0.05, 128
    classifier = load(onnx_models.build(model_dir / "m.onnx", quantize_output=(scale, zero_point)))
    logits = onnx_models.scores_for(normalized(RED_ISH))
    dequantized = (np.clip(np.round(logits / scale) + zero_point, 0, 255) - zero_point) * scale
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), softmax(dequantized), atol=1e-6)


def test_mean_std_and_bgr_channel_order(model_dir):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    classifier = load(onnx_models.build(model_dir / "m.onnx"), mean=list(mean), std=list(std), channel_order="BGR")
    bgr = RED_ISH[::-1]
    expected = softmax(onnx_models.scores_for(normalized(bgr, mean, std)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_dynamic_spatial_dims_use_input_size(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx", size=None), input_size=[20, 12])
    assert classifier.preprocess(solid(RED_ISH, size=(64, 48))).shape == (1, 3, 20, 12)
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_two_outputs_with_output_name(model_dir):
    path = onnx_models.build(model_dir / "m.onnx", features_output=True)
    classifier = load(path, output_name="class_scores")
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_output_of_shape_c(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx", output_rank=1))
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_labels_file_sidecar_and_metadata_precedence(model_dir):
    names = ["ant", "bee", "cat", "dog", "eel"]
    path = onnx_models.build(
        model_dir / "m.onnx",
        metadata={"labels": [n.upper() for n in names], "resize": "letterbox"},
        sidecar={"labels": names},
    )
    classifier = load(path)
    assert classifier.labels == tuple(names)  # sidecar over metadata
    assert classifier.model.preprocessing.resize.value == "letterbox"  # metadata over default
    (model_dir / "labels.txt").write_text("\n".join(n * 2 for n in names) + "\n\n")
    assert load(path, labels_path=str(model_dir / "labels.txt")).labels == tuple(n * 2 for n in names)
    assert load(path, resize="stretch").model.preprocessing.resize.value == "stretch"  # attribute over model


def test_metadata_labels_and_index_labels(model_dir):
    with_metadata = load(onnx_models.build(model_dir / "a.onnx", metadata={"labels": list("vwxyz")}))
    assert with_metadata.labels == tuple("vwxyz")
    assert load(onnx_models.build(model_dir / "b.onnx")).labels == ("0", "1", "2", "3", "4")


def test_count_and_confidence_threshold(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"))
    frame = solid(RED_ISH)
    assert classifier.classify(frame, 0) == [] and classifier.classify(frame, -3) == []
    everything = classifier.classify(frame, 50)
    assert len(everything) == onnx_models.NUM_CLASSES
    assert classifier.classify(frame, 2) == everything[:2]
    threshold = (everything[1].confidence + everything[2].confidence) / 2
    assert classifier.classify(frame, 5, threshold) == everything[:2]


def test_letterbox_pads_and_stretch_fills(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"), resize="letterbox")
    tensor = classifier.preprocess(solid((255, 255, 255), size=(64, 16)))
    assert tensor.shape == (1, 3, 16, 16)
    rows = tensor[0, 0].max(axis=1)
    assert rows[0] == 0.0 and rows[8] == 1.0 and rows[-1] == 0.0  # black bars above and below a 16x4 strip
    stretched = load(onnx_models.build(model_dir / "s.onnx")).preprocess(solid((255, 255, 255), size=(64, 16)))
    assert (stretched == 1.0).all()


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_center_crop_takes_the_middle(model_dir, exact):
    from PIL import Image

    # Left third red, middle third green, right third blue: a centre crop of a wide frame sees green.
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    classifier = load(onnx_models.build(model_dir / "m.onnx"), resize="center_crop", crop_fraction=1.0, exact_preprocessing=exact)
    tensor = classifier.preprocess(encode(image, "JPEG", quality=95))
    assert tensor[0, 1].mean() > 0.95 and tensor[0, 0].mean() < 0.05 and tensor[0, 2].mean() < 0.05


def test_info_describes_what_is_loaded_and_how_it_runs(model_dir):
    path = onnx_models.build(model_dir / "m.onnx", features_output=True, sidecar={"labels": ["ant", "bee", "cat", "dog", "eel"]})
    classifier = load(
        path,
        output_name="class_scores",
        head="sigmoid",
        input_size=[16, 16],
        resize="letterbox",
        crop_fraction=0.5,
        crop_rounding="floor",
        mean=[0.1, 0.2, 0.3],
        std=[0.4, 0.5, 0.6],
        channel_order="BGR",
        interpolation="bicubic",
        exact_preprocessing=True,
        max_image_pixels=1234,
        num_threads=1,
    )
    assert classifier.info() == {
        "backend": "onnxruntime",
        "model_path": str(path),
        "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "input": {"name": "image", "shape": ["N", 3, 16, 16], "type": "tensor(float)", "layout": "NCHW"},
        "output": {"name": "class_scores", "shape": ["N", 5], "type": "tensor(float)"},
        "labels": {
            "count": 5,
            "first": ["ant", "bee", "cat", "dog", "eel"],
            "source": f"model sidecar {str(path.with_suffix('.json'))!r} key 'labels'",
        },
        "head": {"in_use": "sigmoid", "reason": "set by attribute 'head'"},
        "preprocessing": {  # crop_fraction and crop_rounding apply only to center_crop
            "input_size": [16, 16],
            "resize": "letterbox",
            "mean": [0.1, 0.2, 0.3],
            "std": [0.4, 0.5, 0.6],
            "channel_order": "BGR",
            "interpolation": "bicubic",
            "exact_preprocessing": True,
            "max_image_pixels": 1234,
        },
        "providers": {"requested": ["CPUExecutionProvider"], "in_use": ["CPUExecutionProvider"]},
        "threads": {"intra_op": 1, "inter_op": 1, "spinning": False},
        "onnxruntime_version": ort.__version__,
        "cpu": describe_cpu(),
    }
    classifier.close()
    with pytest.raises(RuntimeError, match="^the classifier is closed$"):
        classifier.info()
    with pytest.raises(RuntimeError, match="^the classifier is closed$"):
        classifier.classify(solid(RED_ISH), 1)


def test_info_defaults_and_the_threads_available(model_dir):
    info = load(onnx_models.build(model_dir / "m.onnx", layout="NHWC", input_type=TensorProto.UINT8)).info()
    assert info["input"] == {"name": "image", "shape": ["N", 16, 16, 3], "type": "tensor(uint8)", "layout": "NHWC"}
    assert info["labels"] == {"count": 5, "first": ["0", "1", "2", "3", "4"], "source": "none: class indices"}
    assert info["preprocessing"] == {  # no mean or std: a uint8 input takes raw pixels
        "input_size": [16, 16],
        "resize": "stretch",
        "channel_order": "RGB",
        "interpolation": "bilinear",
        "exact_preprocessing": False,
        "max_image_pixels": 50_000_000,
    }
    assert info["threads"] == {"intra_op": available_cores(), "inter_op": 1, "spinning": False}


@pytest.mark.parametrize(
    "build, attributes, head, reason",
    [
        ({}, {"head": "none"}, Head.NONE, "set by attribute 'head'"),
        ({"sidecar": {"head": "sigmoid"}}, {}, Head.SIGMOID, "set by the model description's 'head'"),
        ({"final": "Softmax"}, {}, Head.NONE, "auto: the graph already ends in Softmax, so its output is used as it is"),
        ({"final": "Sigmoid"}, {}, Head.NONE, "auto: the graph already ends in Sigmoid, so its output is used as it is"),
        (
            {},
            {},
            Head.SOFTMAX,
            "auto, decided on every frame (this is its choice for a blank image): scores that already form a probability "
            "distribution are used as they are; anything else is taken as logits (softmax, or sigmoid for a single class)",
        ),
        (
            # Scores in [0, 1] that are not a distribution, from a graph that was read: logits, unlike a service's.
            {"final": "Sigmoid", "scale_after_final": 0.5},
            {},
            Head.SOFTMAX,
            "auto, decided on every frame (this is its choice for a blank image): scores that already form a probability "
            "distribution are used as they are; anything else is taken as logits (softmax, or sigmoid for a single class)",
        ),
    ],
    ids=["attribute", "description", "softmax-graph", "sigmoid-graph", "logits", "scaled-sigmoid"],
)
def test_the_head_in_use_and_why(model_dir, build, attributes, head, reason):
    classifier = load(onnx_models.build(model_dir / "m.onnx", **build), **attributes)
    assert classifier.head_in_use() == (head, reason)


def test_every_stage_is_timed(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"))
    timings = {}
    started = time.perf_counter()
    classifier.image_scores(solid(RED_ISH), timings=timings)
    elapsed = time.perf_counter() - started
    assert set(timings) == {"decode", "preprocess", "inference", "postprocess"}
    assert all(seconds >= 0.0 for seconds in timings.values()) and sum(timings.values()) <= elapsed


def test_letterbox_into_a_tall_input(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx", size=None), input_size=[24, 12], resize="letterbox")
    tensor = classifier.preprocess(solid((255, 255, 255), size=(40, 40)))
    assert tensor.shape == (1, 3, 24, 12)
    rows = tensor[0, 0].max(axis=1)
    assert rows[:6].max() == 0.0 and (rows[6:18] == 1.0).all() and rows[18:].max() == 0.0  # a 12x12 square, centred


@pytest.mark.parametrize(
    "attributes, frame, resized, crop_at",
    [
        ({}, (641, 480), (342, 256), (59, 16)),  # 341.87 rounds up; (342 - 224) / 2 = 59
        ({"crop_rounding": "floor"}, (641, 480), (341, 256), (58, 16)),  # truncated; 58.5 floored
        ({}, (480, 641), (256, 342), (16, 59)),
        ({}, (640, 480), (341, 256), (58, 16)),  # 58.5 rounds half to even
        ({"crop_fraction": 1.0}, (300, 100), (672, 224), (224, 0)),
    ],
)
def test_center_crop_placement(model_dir, attributes, frame, resized, crop_at):
    classifier = load(onnx_models.build(model_dir / "m.onnx", size=None), input_size=[224, 224], resize="center_crop", **attributes)
    place = classifier._preprocess.placement(*frame)
    (left, top), (width, height) = crop_at, frame
    fx, fy = width / resized[0], height / resized[1]
    assert place.resized == resized and place.crop_at == crop_at
    assert place.size == (224, 224) and place.offset == (0, 0) and place.scale == resized[0] / width
    assert place.box == pytest.approx((left * fx, top * fy, (left + 224) * fx, (top + 224) * fy), rel=1e-12)


def test_center_crop_into_a_wide_input(model_dir):
    """input_size [32, 48] with crop_fraction 0.5: cover 96x64, so a 200x100 frame is resized to
    128x64 and its centre 48x32 taken, from (40, 16)."""
    classifier = load(onnx_models.build(model_dir / "m.onnx", size=None), input_size=[32, 48], resize="center_crop", crop_fraction=0.5)
    place = classifier._preprocess.placement(200, 100)
    assert (place.resized, place.crop_at, place.size) == ((128, 64), (40, 16), (48, 32))
    assert place.box == pytest.approx((62.5, 25.0, 137.5, 75.0))
    assert classifier.preprocess(solid(RED_ISH, size=(200, 100))).shape == (1, 3, 32, 48)


@pytest.mark.parametrize(
    "resize, frame, box, size, offset, scale",
    [
        ("stretch", (640, 480), (0.0, 0.0, 640.0, 480.0), (224, 224), (0, 0), 224 / 480),
        ("letterbox", (640, 480), (0.0, 0.0, 640.0, 480.0), (224, 168), (0, 28), 224 / 640),
        ("letterbox", (480, 640), (0.0, 0.0, 480.0, 640.0), (168, 224), (28, 0), 224 / 640),
        ("letterbox", (1000, 1), (0.0, 0.0, 1000.0, 1.0), (224, 1), (0, 111), 224 / 1000),
        ("letterbox", (1, 1000), (0.0, 0.0, 1.0, 1000.0), (1, 224), (111, 0), 224 / 1000),
        ("letterbox", (100, 100), (0.0, 0.0, 100.0, 100.0), (224, 224), (0, 0), 2.24),
    ],
)
def test_stretch_and_letterbox_placement(model_dir, resize, frame, box, size, offset, scale):
    classifier = load(onnx_models.build(model_dir / "m.onnx", size=None), input_size=[224, 224], resize=resize)
    place = classifier._preprocess.placement(*frame)
    assert (place.box, place.size, place.offset, place.resized, place.crop_at) == (box, size, offset, None, (0, 0))
    assert place.scale == pytest.approx(scale, rel=1e-12)


def test_nhwc_float_input_is_normalized_per_channel(model_dir):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    classifier = load(onnx_models.build(model_dir / "m.onnx", layout="NHWC"), mean=list(mean), std=list(std), channel_order="BGR")
    tensor = classifier.preprocess(solid(RED_ISH))
    assert tensor.dtype == np.float32 and tensor.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(tensor[0], np.broadcast_to(normalized(RED_ISH[::-1], mean, std), (16, 16, 3)), rtol=1e-6)
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH[::-1], mean, std)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_a_greyscale_model_sees_the_frames_luma(model_dir, image_format):
    classifier = load(onnx_models.build(model_dir / "m.onnx", channels=1, size=(32, 32)))
    tensor = classifier.preprocess(solid(RED_ISH, size=(256, 256), image_format=image_format))
    assert tensor.shape == (1, 1, 32, 32)
    grey = 94  # RED_ISH's luma, (200 * 299 + 40 * 587 + 90 * 114) / 1000 rounded
    np.testing.assert_allclose(tensor, grey / 255, atol=1.5 / 255 if image_format == "JPEG" else 1e-6)
    expected = softmax(onnx_models.scores_for([grey / 255]))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_model_with_a_fixed_batch_of_one(model_dir, layout):
    classifier = load(onnx_models.build(model_dir / "m.onnx", layout=layout, batch=1))
    expected = softmax(onnx_models.scores_for(normalized(RED_ISH)))
    np.testing.assert_allclose(as_array(classifier.classify(solid(RED_ISH), 5)), expected, rtol=1e-5, atol=1e-6)


def test_labels_that_do_not_match_a_dynamic_class_count_are_found_at_load(model_dir):
    path = onnx_models.build(model_dir / "m.onnx", dynamic_classes=True, sidecar={"labels": ["a", "b", "c"]})
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == (
        f"model sidecar {str(path.with_suffix('.json'))!r} key 'labels' has 3 labels but model_path {str(path)!r} "
        "outputs 5 classes (output 'class_scores')"
    )


def test_a_model_onnxruntime_cannot_load_is_named(model_dir):
    from onnx import helper

    path = model_dir / "custom.onnx"
    model = onnx.load(onnx_models.build(path))
    model.graph.node.append(helper.make_node("Frobnicate", ["class_scores"], ["unused"], domain="com.acme"))
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    onnx.save(model, path)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"model_path {str(path)!r} cannot be loaded by onnxruntime: ")


def test_sessions_do_not_spin(model_dir):
    classifier = load(onnx_models.build(model_dir / "m.onnx"))
    assert classifier.backend.options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert classifier.backend.options.inter_op_num_threads == 1
