"""The ML model service backend (`mlmodel_name`): real ML model services served by the parent robot,
written the way each kind users have describes itself (TF-Lite, Triton, ONNX modules), the faults
they have, and the built-in `mlmodel` vision service's attribute names."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from grpclib import Status
from onnx import TensorProto
from viam.media.video import CameraMimeType, ViamImage
from viam.proto.service.mlmodel import (
    FlatTensor,
    FlatTensorDataDouble,
    FlatTensorDataFloat,
    FlatTensorDataInt8,
    FlatTensorDataInt32,
    InferRequest,
)
from viam.services.mlmodel.utils import flat_tensors_to_ndarrays, ndarrays_to_flat_tensors

from onnx_classifier import Classifier, ConfigError, parse_service_config
from onnx_classifier.classifier import UnexpectedOutput, validate_service_config
from onnx_classifier.config import ChannelOrder, MLModelService
from onnx_classifier.head import sigmoid, softmax
from onnx_classifier.mlmodel_backend import decode_tensor, encode_infer_request
from onnx_classifier.model import Layout, TensorInfo, describe_service_model
from onnx_classifier.paths import BUNDLED_MODEL

from . import onnx_models
from .conftest import photo, solid
from .harness import StillCamera, camera_dependency, mlmodel_dependency, running_module
from .mlmodel_services import OnnxModelService, tensor_info
from .test_module import expect_error

BUNDLED_LABELS = BUNDLED_MODEL.with_suffix(".labels.txt")
IMAGENET = {
    "resize": "center_crop",
    "crop_fraction": 0.875,
    "input_size": [224, 224],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "labels_path": str(BUNDLED_LABELS),
}
SMALL_LABELS = ["red", "green", "blue", "grey", "other"]
COLOUR = (200, 40, 90)


def bundled_service(name: str = "m", **metadata) -> OnnxModelService:
    return OnnxModelService(
        name, BUNDLED_MODEL, [tensor_info("input", "float32", [1, 3, 224, 224])], [tensor_info("logits", "float32", [1, 1000])], **metadata
    )


def png(name: str) -> ViamImage:
    return ViamImage(photo(name), CameraMimeType.PNG)


def as_pairs(classifications):
    return [(c.class_name, c.confidence) for c in classifications]


def channel_means(colour, mean=0.5, std=0.5):
    return [(c / 255.0 - mean) / std for c in colour]


# What the backend reads from metadata (no Viam, no service).

SERVICE = MLModelService("m")


def describe(inputs, outputs, input_name=None, output_name=None):
    return describe_service_model(SERVICE, inputs, outputs, input_name, output_name)


def test_metadata_of_each_kind_of_service_is_read_as_a_graph_is():
    tflite = describe([TensorInfo("serving_default_input:0", "uint8", (1, 224, 224, 3))], [TensorInfo("StatefulPartitionedCall:0", "uint8", (1, 12), {"labels": "/l.txt"})])
    assert (tflite.input_name, tflite.layout, tflite.input_dtype, tflite.input_size) == ("serving_default_input:0", Layout.NHWC, np.uint8, (224, 224))
    assert tflite.output_quantization == (1 / 255, 0) and tflite.num_classes == 12 and not tflite.graph_read
    assert str(tflite.description.labels_path) == "/l.txt"

    triton = describe([TensorInfo("INPUT__0", "float32", (-1, 3, 384, 384))], [TensorInfo("OUTPUT__0", "float32", (-1, 1000))])
    assert (triton.layout, triton.input_size, triton.num_classes, triton.description.labels_path) == (Layout.NCHW, (384, 384), 1000, None)

    onnx_style = describe(
        [TensorInfo("input", "", (1, 3, 16, 16))],
        [TensorInfo("output_0", "float32", (1, 3), {"labels": ""}), TensorInfo("probability", "float32", (1, 5), {"label": "/p.txt"})],
    )
    assert onnx_style.input_dtype == np.float32  # an empty data_type is float32
    assert onnx_style.output_name == "probability" and str(onnx_style.description.labels_path) == "/p.txt"

    flat_dynamic = describe([TensorInfo("image", "float32", (1, -1, -1, 3))], [TensorInfo("scores", "float32", (-1,))])
    assert flat_dynamic.input_size is None and flat_dynamic.num_classes is None and flat_dynamic.layout is Layout.NHWC


@pytest.mark.parametrize(
    "inputs, outputs, input_name, output_name, fragments",
    [
        ([TensorInfo("a", "float32", (1, 3, 8, 8)), TensorInfo("b", "float32", (1, 3, 8, 8))], [TensorInfo("p", "float32", (1, 2))],
         None, None, ["2 inputs ('a', 'b')", "none named 'image'", "'input_name'"]),
        ([TensorInfo("a", "float32", (1, 3, 8, 8))], [TensorInfo("p", "float32", (1, 2))], "x", None, ["'input_name' 'x'", "its inputs are: 'a'"]),
        ([TensorInfo("a", "float32", ())], [TensorInfo("p", "float32", (1, 2))], None, None, ["no shape for input 'a'"]),
        ([TensorInfo("a", "float32", (1, 8, 8))], [TensorInfo("p", "float32", (1, 2))], None, None, ["shape [1, 8, 8]"]),
        ([TensorInfo("a", "int32", (1, 8, 8, 3))], [TensorInfo("p", "float32", (1, 2))], None, None, ["data_type 'int32'", "uint8 and float32"]),
        (
            [TensorInfo("image", "uint8", (1, 320, 320, 3))],
            [TensorInfo(n, "float32", (1, 25, 4) if n == "location" else (1, 25)) for n in ("location", "category", "score", "n")],
            None, None, ["4 outputs ('location', 'category', 'score', 'n')", "none named 'probability'", "a detector's outputs are not"],
        ),
        ([TensorInfo("image", "uint8", (1, 8, 8, 3))], [TensorInfo("location", "float32", (1, 25, 4))], None, None, ["shape [1, 25, 4]", "class scores"]),
        ([TensorInfo("image", "uint8", (1, 8, 8, 3))], [TensorInfo("p", "float32", (1, 2))], None, "q", ["'output_name' 'q'", "its outputs are: 'p'"]),
    ],
)
def test_metadata_that_cannot_be_a_classifier_is_a_clear_error(inputs, outputs, input_name, output_name, fragments):
    with pytest.raises(ConfigError) as caught:
        describe(inputs, outputs, input_name, output_name)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert "ML model service 'm'" in str(caught.value) or "'m'" in str(caught.value)


@pytest.mark.parametrize("array", [np.arange(1 * 3 * 5 * 4, dtype=np.float32).reshape(1, 3, 5, 4) / 7, np.arange(60, dtype=np.uint8).reshape(1, 5, 4, 3)])
def test_tensors_are_packed_as_the_sdk_would_and_read_back(array):
    request = InferRequest.FromString(encode_infer_request("remote:m", {"serving_default_input:0": array}))
    reference = InferRequest(name="remote:m", input_tensors=ndarrays_to_flat_tensors({"serving_default_input:0": array}))
    assert request == reference
    (tensor,) = request.input_tensors.tensors.values()
    decoded = decode_tensor(tensor)
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)
    assert np.array_equal(decoded, flat_tensors_to_ndarrays(reference.input_tensors)["serving_default_input:0"])


def test_several_tensors_are_packed_as_the_sdk_would():
    tensors = {"image": np.zeros((1, 4, 4, 3), np.uint8) + 7, "scale": np.array([[0.5, 2.0]], np.float32)}
    request = InferRequest.FromString(encode_infer_request("m", tensors))
    assert request == InferRequest(name="m", input_tensors=ndarrays_to_flat_tensors(tensors))


@pytest.mark.parametrize(
    "tensor, expected",
    [
        (FlatTensor(shape=[1, 3], int8_tensor=FlatTensorDataInt8(data=np.array([-3, 0, 5], np.int8).tobytes())), np.array([[-3, 0, 5]], np.int8)),
        (FlatTensor(shape=[1, 0], float_tensor=FlatTensorDataFloat(data=[])), np.zeros((1, 0), np.float32)),
        (FlatTensor(shape=[1, 0], double_tensor=FlatTensorDataDouble(data=[])), np.zeros((1, 0), np.float64)),
        (FlatTensor(shape=[1, 2], int32_tensor=FlatTensorDataInt32(data=[4, -4])), np.array([[4, -4]], np.int32)),
    ],
)
def test_output_tensors_keep_their_type_and_shape(tensor, expected):
    decoded = decode_tensor(tensor)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape and np.array_equal(decoded, expected)


def test_an_output_tensor_without_data_is_unexpected_output():
    with pytest.raises(UnexpectedOutput) as caught:
        decode_tensor(FlatTensor(shape=[1, 5]))
    assert str(caught.value) == "an output tensor holds no data"


def test_dimensions_of_zero_or_less_are_unknown_and_an_output_may_give_no_shape():
    spec = describe([TensorInfo("image", "float32", (1, 3, 0, 0))], [TensorInfo("probability", "float32", (0, 0))])
    assert spec.input_size is None and spec.num_classes is None
    no_shape = describe([TensorInfo("image", "float32", (1, 3, 8, 8))], [TensorInfo("probability", "float32", ())])
    assert no_shape.num_classes is None


def test_a_labels_file_in_metadata_is_named_as_the_labels_source():
    spec = describe([TensorInfo("image", "uint8", (1, 8, 8, 3))], [TensorInfo("probability", "uint8", (1, 5), {"labels": "/data/l.txt"})])
    assert spec.description.labels_source == "the labels file '/data/l.txt' that ML model service 'm' names for output 'probability'"


@pytest.mark.parametrize(
    "inputs, outputs, input_name, message",
    [
        ([], [TensorInfo("p", "float32", (1, 2))], None, "ML model service 'm' reports no inputs in its metadata"),
        ([], [TensorInfo("p", "float32", (1, 2))], "x", "attribute 'input_name' 'x' is not an input of ML model service 'm'; its inputs are: none"),
        (
            [TensorInfo("a", "float32", (1, 3, 8, 8)), TensorInfo("b", "float32", (1, 3, 8, 8))], [TensorInfo("p", "float32", (1, 2))], None,
            "ML model service 'm' has 2 inputs ('a', 'b') and none named 'image': set attribute 'input_name' to the image",
        ),
        (
            [TensorInfo("a", "float32", (1, 3, 8, 8))], [TensorInfo("p", "float32", (1, 2)), TensorInfo("q", "float32", (1, 2))], None,
            "ML model service 'm' has 2 outputs ('p', 'q') and none named 'probability': set attribute 'output_name' to the class "
            "scores (a detector's outputs are not: this service classifies)",
        ),
        (
            [TensorInfo("a", "float32", (1, 5, 8, 8))], [TensorInfo("p", "float32", (1, 2))], None,
            "ML model service 'm': input 'a' has shape [1, 5, 8, 8]; expected 1 or 3 channels in position 1 (NCHW) or 3 (NHWC)",
        ),
    ],
)
def test_metadata_errors_in_full(inputs, outputs, input_name, message):
    with pytest.raises(ConfigError) as caught:
        describe(inputs, outputs, input_name)
    assert str(caught.value) == message


def test_validation_with_a_service_checks_the_labels_file_and_leaves_label_names_for_later(tmp_path):
    # The service's labels are not known before it answers: label rules cannot be checked yet.
    config, _ = validate_service_config({"mlmodel_name": "m", "allowed_labels": ["cat"], "label_confidences": {"dog": 0.5}})
    assert config.labels.allowed_labels == ("cat",)
    unreadable = tmp_path / "latin1.txt"
    unreadable.write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        validate_service_config({"mlmodel_name": "m", "labels_path": str(unreadable)})
    assert str(caught.value).startswith(f"attribute 'labels_path' ({unreadable}): labels file {str(unreadable)!r} cannot be read: ")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    with pytest.raises(ConfigError) as caught:
        validate_service_config({"mlmodel_name": "m", "labels_path": str(labels), "allowed_labels": ["cta"]})
    assert "'cta'" in str(caught.value) and "'cat'" in str(caught.value)


# Configuration: the source of the model and the built-in service's attribute names.


def test_mlmodel_name_is_a_dependency_and_excludes_the_onnx_file_attributes():
    config, _ = validate_service_config({"mlmodel_name": "gpu-part:triton", "camera_name": "cam"})
    assert config.classifier.source == MLModelService("gpu-part:triton")
    assert config.dependencies == ("cam", "rdk:service:mlmodel/gpu-part:triton")
    for key, value in (("model_path", "models/efficientnet_lite0.onnx"), ("providers", ["CPUExecutionProvider"]),
                       ("strict_providers", True), ("num_threads", 1)):
        with pytest.raises(ConfigError, match=f"attribute '{key}' configures the ONNX file.*ML model service 'm' runs the model"):
            parse_service_config({"mlmodel_name": "m", key: value})
    with pytest.raises(ConfigError, match="'mlmodel_timeout_s' applies only with 'mlmodel_name'"):
        parse_service_config({"mlmodel_timeout_s": 3})
    assert parse_service_config({"mlmodel_name": "m", "mlmodel_timeout_s": 2.5}).classifier.source.timeout_s == 2.5


def test_a_built_in_mlmodel_config_is_read_with_the_same_meanings(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(SMALL_LABELS) + "\n")
    builtin = {
        "mlmodel_name": "tflite",
        "camera_name": "cam",
        "label_path": str(labels),
        "input_image_mean_value": [0.1, 0.2, 0.3],
        "input_image_std_dev": [0.5, 0.6, 0.7],
        "input_image_bgr": True,
        "default_minimum_confidence": 0.25,
        "remap_input_names": {"serving_default_input:0": "image"},
        "remap_output_names": {"StatefulPartitionedCall:0": "probability", "other": "location"},
        "label_confidences": {"red": 0.5},
    }
    config, warnings = validate_service_config(builtin)
    assert warnings == ()
    classifier = config.classifier
    assert classifier.labels_path == labels and config.confidence_threshold == 0.25
    assert classifier.preprocessing.mean == (0.1, 0.2, 0.3) and classifier.preprocessing.std == (0.5, 0.6, 0.7)
    assert classifier.preprocessing.channel_order is ChannelOrder.BGR
    assert (classifier.input_name, classifier.output_name) == ("serving_default_input:0", "StatefulPartitionedCall:0")
    assert config.labels.label_confidences == (("red", 0.5),)
    assert parse_service_config({**builtin, "input_image_bgr": False}).classifier.preprocessing.channel_order is ChannelOrder.RGB

    for alias, name, value in (("label_path", "labels_path", str(labels)), ("input_image_mean_value", "mean", [0.5]),
                               ("default_minimum_confidence", "confidence_threshold", 0.1), ("input_image_bgr", "channel_order", "RGB"),
                               ("remap_output_names", "output_name", "x")):
        with pytest.raises(ConfigError, match=f"'{name}' and '{alias}' .* are the same setting"):
            parse_service_config({"mlmodel_name": "m", alias: builtin.get(alias, value), name: value})
    with pytest.raises(ConfigError, match="maps 2 tensors to 'probability': a, b"):
        parse_service_config({"mlmodel_name": "m", "remap_output_names": {"a": "probability", "b": "probability"}})
    # Label names are checked against a labels file named by the attributes, as for an ONNX file.
    with pytest.raises(ConfigError, match="'allowed_labels': 'rde' is not a label of this model; did you mean 'red'"):
        validate_service_config({**builtin, "allowed_labels": ["rde"]})


# Through the module protocol, with real ML model services on the parent robot.


@pytest.mark.parametrize("exact", [True, False])
async def test_the_bundled_model_behind_a_service_answers_as_the_local_backend(exact):
    attributes = {**IMAGENET, "exact_preprocessing": exact}
    local = Classifier.from_onnx_file(parse_service_config(attributes).classifier)
    camera = StillCamera("cam", photo("rocket.jpg"))
    service = bundled_service()
    async with running_module([camera, service]) as module:
        await module.add({**attributes, "mlmodel_name": "m", "camera_name": "cam"}, [camera_dependency("cam"), mlmodel_dependency("m")])
        vision = module.vision()
        for name in ("chelsea.png", "coffee.png"):
            expected = local.classify(photo(name), 5)
            got = as_pairs(await vision.get_classifications(png(name), 5))
            assert [label for label, _ in got] == [p.label for p in expected]
            np.testing.assert_allclose([c for _, c in got], [p.confidence for p in expected], atol=1e-5, rtol=0)
        from_camera = as_pairs(await vision.get_classifications_from_camera("cam", 5))
        expected = local.classify(photo("rocket.jpg"), 5)
        assert [label for label, _ in from_camera] == [p.label for p in expected] and from_camera[0][0] == "missile"
        np.testing.assert_allclose([c for _, c in from_camera], [p.confidence for p in expected], atol=1e-5, rtol=0)
        # float32 tensors reach the service as float32, in the model's own layout
        assert service.received[-1]["input"].dtype == np.float32 and service.received[-1]["input"].shape == (1, 3, 224, 224)


async def test_services_of_every_kind_users_have(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(SMALL_LABELS) + "\n")
    tflite = OnnxModelService(  # a Viam-trained model under tflite_cpu: uint8 NHWC, labels file in extra
        "tflite",
        onnx_models.build(tmp_path / "tflite.onnx", layout="NHWC", input_type=TensorProto.UINT8, final="Softmax"),
        [tensor_info("serving_default_input:0", "uint8", [1, 16, 16, 3])],
        [tensor_info("StatefulPartitionedCall:0", "float32", [1, 5], {"labels": str(labels)})],
    )
    triton = OnnxModelService(  # Triton: a leading -1 batch dimension, no labels, logits
        "triton", onnx_models.build(tmp_path / "triton.onnx"),
        [tensor_info("INPUT__0", "float32", [-1, 3, 16, 16])], [tensor_info("OUTPUT__0", "float32", [-1, 5])],
    )
    onnx_module = OnnxModelService(  # an ONNX registry module: empty data_type, outputs output_0/1, labels ""
        "onnx", onnx_models.build(tmp_path / "two.onnx", features_output=True),
        [tensor_info("image", "", [1, 3, 16, 16])],
        [tensor_info("output_0", "float32", [1, 3], {"labels": ""}), tensor_info("output_1", "float32", [1, 5], {"labels": ""})],
    )
    flat = OnnxModelService(
        "flat", onnx_models.build(tmp_path / "flat.onnx", output_rank=1),
        [tensor_info("image", "float32", [1, 3, 16, 16])], [tensor_info("probability", "float32", [5])],
    )
    multi_label = OnnxModelService(
        "sigmoid", onnx_models.build(tmp_path / "sigmoid.onnx", final="Sigmoid"),
        [tensor_info("image", "float32", [1, 3, 16, 16])], [tensor_info("probability", "float32", [1, 5])],
    )
    quantized = OnnxModelService(
        "quantized", onnx_models.build(tmp_path / "q.onnx", final="Softmax", quantize_output=(1 / 255, 0)),
        [tensor_info("image", "float32", [1, 3, 16, 16])], [tensor_info("probability", "uint8", [1, 5])],
    )
    services = [tflite, triton, onnx_module, flat, multi_label, quantized]
    frame = solid(COLOUR)
    async with running_module(services) as module:
        async def classify(name, frame=frame, **attributes):
            await module.add({"mlmodel_name": name, **attributes}, [mlmodel_dependency(name)], name=name)
            return as_pairs(await module.vision(name).get_classifications(ViamImage(frame, CameraMimeType.PNG), 5))

        # uint8 input: raw pixels, no normalization (a dark frame, so that softmax does not saturate);
        # probabilities are used as they are
        dark = (3, 1, 2)
        got = await classify("tflite", solid(dark))
        expected = softmax(onnx_models.scores_for(dark))
        assert got == [(SMALL_LABELS[i], pytest.approx(expected[i], abs=1e-6)) for i in np.argsort(-expected)]
        assert tflite.received[-1]["serving_default_input:0"].dtype == np.uint8
        assert tflite.received[-1]["serving_default_input:0"].shape == (1, 16, 16, 3)

        # float32 input: (pixel/255 - 0.5) / 0.5, as the built-in feeds it; logits get softmax; indices as labels
        expected = softmax(onnx_models.scores_for(channel_means(COLOUR)))
        assert await classify("triton") == [(str(i), pytest.approx(expected[i], abs=1e-5)) for i in np.argsort(-expected)]

        await expect_error(classify("onnx"), Status.FAILED_PRECONDITION, "2 outputs ('output_0', 'output_1')", "'output_name'")
        await module.remove("onnx")
        got = await classify("onnx", output_name="output_1", mean=[0], std=[1])
        expected = softmax(onnx_models.scores_for([c / 255 for c in COLOUR]))
        assert got == [(str(i), pytest.approx(expected[i], abs=1e-5)) for i in np.argsort(-expected)]

        expected = softmax(onnx_models.scores_for(channel_means(COLOUR)))
        assert [c for _, c in await classify("flat")] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)

        # independent sigmoid outputs are never softmaxed, though they do not sum to 1
        got = await classify("sigmoid")
        expected = sigmoid(onnx_models.scores_for(channel_means(COLOUR)))
        assert expected.sum() > 1.5 and [c for _, c in got] == pytest.approx(sorted(expected, reverse=True), abs=1e-6)

        # a uint8 output is read as 0..255 for 0..1
        got = await classify("quantized")
        expected = np.round(softmax(onnx_models.scores_for(channel_means(COLOUR))) * 255) / 255
        assert [c for _, c in got] == pytest.approx(sorted(expected, reverse=True), abs=1e-9)

        info = await module.vision("tflite").do_command({"command": "info"})
        assert info["backend"] == "mlmodel" and info["mlmodel_name"] == "tflite"
        assert info["input"]["name"] == "serving_default_input:0" and info["input"]["layout"] == "NHWC"
        assert info["labels"]["source"] == f"the labels file {str(labels)!r} that ML model service 'tflite' names for output 'StatefulPartitionedCall:0'"
        assert info["metadata"]["outputs"][0]["name"] == "StatefulPartitionedCall:0"
        assert info["head"]["in_use"] == "none" and "scores all in [0, 1] are used as they are" in info["head"]["reason"]
        assert "mean" not in info["preprocessing"] and "crop_fraction" not in info["preprocessing"]


async def test_faults_of_the_service_are_clear_and_the_module_keeps_serving(tmp_path):
    service = bundled_service()
    service.metadata_error = ConnectionError("the model is still loading")
    camera = StillCamera("cam", photo("coffee.png"), "image/png")
    attributes = {**IMAGENET, "mlmodel_name": "m", "camera_name": "cam"}
    # A small model for the hang: loading it takes milliseconds, well inside its 1 s limit.
    small = OnnxModelService(
        "small", onnx_models.build(tmp_path / "small.onnx"),
        [tensor_info("image", "float32", [1, 3, 16, 16])], [tensor_info("probability", "float32", [1, 5])],
    )
    async with running_module([camera, service, small]) as module:
        await module.add(attributes, [camera_dependency("cam"), mlmodel_dependency("m")])
        vision = module.vision()
        # not up yet: UNAVAILABLE, and the next call tries again
        await expect_error(vision.get_classifications_from_camera("cam", 1), Status.UNAVAILABLE,
                           "ML model service 'm' did not return its metadata", "still loading", "retries on the next call")
        service.metadata_error = None
        assert (await vision.get_classifications_from_camera("cam", 1))[0].class_name == "espresso"

        service.infer_error = RuntimeError("CUDA out of memory")
        await expect_error(vision.get_classifications_from_camera("cam", 1), Status.UNAVAILABLE,
                           "image from camera 'cam': ML model service 'm' failed", "CUDA out of memory")
        service.infer_error = None

        await module.add({"mlmodel_name": "small", "mlmodel_timeout_s": 1}, [mlmodel_dependency("small")], name="small")
        assert await module.vision("small").get_classifications(png("coffee.png"), 1)
        await module.add({"mlmodel_name": "small"}, [mlmodel_dependency("small")], name="patient")  # 'mlmodel_timeout_s' 30 s
        assert await module.vision("patient").get_classifications(png("coffee.png"), 1)
        small.hang.clear()
        await expect_error(module.vision("small").get_classifications(png("coffee.png"), 1, timeout=30), Status.DEADLINE_EXCEEDED,
                           "ML model service 'small' did not answer within 1 s", "'mlmodel_timeout_s' = 1 s")
        assert (await vision.get_classifications(png("coffee.png"), 1))[0].class_name == "espresso"  # others go on
        # A caller's deadline shorter than the service's limit: the answer that names the service
        # comes a margin before the caller's own deadline would end the call with no reason.
        await expect_error(module.vision("patient").get_classifications(png("coffee.png"), 1, timeout=3), Status.DEADLINE_EXCEEDED,
                           "ML model service 'small' did not answer within 2.7", "the call's deadline")
        small.hang.set()
        assert await module.vision("small").get_classifications(png("coffee.png"), 1)

        service.outputs_override = {"logits": np.zeros((1, 10), np.float32)}
        await expect_error(vision.get_classifications(png("coffee.png"), 1), Status.INTERNAL, "shape [1, 10]", "expected [1, 1000]")
        service.outputs_override = {"boxes": np.zeros((1, 4), np.float32)}
        await expect_error(vision.get_classifications(png("coffee.png"), 1), Status.INTERNAL, "returned outputs 'boxes', without 'logits'")
        service.outputs_override = None

        assert (await vision.get_classifications(png("coffee.png"), 1))[0].class_name == "espresso"
        stats = await vision.do_command({"command": "stats"})
        assert stats["errors"] == {"UNAVAILABLE": 2, "INTERNAL": 2}
        assert (await module.vision("small").do_command({"command": "stats"}))["errors"] == {"DEADLINE_EXCEEDED": 1}
        assert (await module.vision("patient").do_command({"command": "stats"}))["errors"] == {"DEADLINE_EXCEEDED": 1}


async def test_warnings_logged_during_calls_reach_the_parent_once_and_never_drop_its_connection():
    # viam-sdk 0.85 sends a module's logs from a thread of its own over the parent connection that the
    # module's event loop uses at the same time (see dependency_fixes.ParentLogHandler). Here each call
    # logs a warning while the others ask the parent for frames.
    service = bundled_service()
    service.metadata_error = ConnectionError("the model is still loading")
    camera = StillCamera("cam", photo("coffee.png"), "image/png")
    async with running_module([camera, service]) as module:
        await module.add({**IMAGENET, "mlmodel_name": "m", "camera_name": "cam"}, [camera_dependency("cam"), mlmodel_dependency("m")])
        vision = module.vision()

        async def caller() -> None:
            for _ in range(250):
                # the service's own reason: a dropped connection would give "Connection lost" instead
                await expect_error(vision.get_classifications_from_camera("cam", 1), Status.UNAVAILABLE, "still loading")

        await asyncio.gather(*(caller() for _ in range(4)))

        # one call at a time, each failing with its own reason: every warning arrives, once
        for attempt in range(20):
            service.metadata_error = ConnectionError(f"not loaded (attempt {attempt})")
            await expect_error(vision.get_classifications(png("coffee.png"), 1), Status.UNAVAILABLE, f"(attempt {attempt})")
        await module.parent_log.wait_for("(attempt 19)")
        assert [sum(f"(attempt {attempt})" in line for line in module.parent_log.lines) for attempt in range(20)] == [1] * 20
        assert "sending it to the parent failed" not in module.log()


async def test_a_service_that_cannot_be_this_classifier_is_a_failed_precondition(tmp_path):
    short_labels = tmp_path / "short.txt"
    short_labels.write_text("a\nb\nc\n")
    mismatched = OnnxModelService(
        "mismatched", onnx_models.build(tmp_path / "m.onnx"),
        [tensor_info("image", "float32", [1, 3, 16, 16])], [tensor_info("probability", "float32", [1, -1], {"labels": str(short_labels)})],
    )
    detector = OnnxModelService(
        "detector", onnx_models.build(tmp_path / "d.onnx", features_output=True),
        [tensor_info("image", "float32", [1, 3, 16, 16])],
        [tensor_info("location", "float32", [1, 3]), tensor_info("score", "float32", [1, 5])],
    )
    remote_labels = OnnxModelService(  # a remote part's service names a file that is on the remote machine only
        "remote:m", onnx_models.build(tmp_path / "r.onnx"),
        [tensor_info("image", "float32", [1, 3, 16, 16])], [tensor_info("probability", "float32", [1, 5], {"labels": "/on/the/remote/labels.txt"})],
    )
    async with running_module([mismatched, detector, remote_labels]) as module:
        image = ViamImage(solid(COLOUR), CameraMimeType.PNG)
        for name, fragments in (
            ("mismatched", [f"{str(short_labels)!r}", "has 3 labels", "ML model service 'mismatched' outputs 5 classes"]),
            ("detector", ["2 outputs ('location', 'score')", "none named 'probability'", "this service classifies"]),
            ("remote:m", ["'/on/the/remote/labels.txt' cannot be read", "set attribute 'labels_path'"]),
        ):
            await module.add({"mlmodel_name": name}, [mlmodel_dependency(name)], name=name.replace(":", "-"))
            vision = module.vision(name.replace(":", "-"))
            await expect_error(vision.get_classifications(image, 1), Status.FAILED_PRECONDITION, f"ML model service {name!r}", *fragments)
            await expect_error(vision.do_command({"command": "info"}), Status.FAILED_PRECONDITION, *fragments)
        # the labels file on this machine makes the remote service usable
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(SMALL_LABELS) + "\n")
        await module.add({"mlmodel_name": "remote:m", "labels_path": str(labels)}, [mlmodel_dependency("remote:m")], name="remote-ok")
        assert (await module.vision("remote-ok").get_classifications(image, 1))[0].class_name in SMALL_LABELS

        # a dependency the parent does not have is refused by the SDK before the service exists; the module serves on
        await expect_error(module.add({"mlmodel_name": "absent"}, [mlmodel_dependency("absent")], name="absent"), Status.NOT_FOUND, "absent")
        assert (await module.vision("remote-ok").get_classifications(image, 1))[0].class_name in SMALL_LABELS


async def test_calls_wait_for_the_description_that_new_started():
    service = bundled_service()
    service.hang.clear()  # the blank frame run at load does not answer yet
    async with running_module([service]) as module:
        await module.add({**IMAGENET, "mlmodel_name": "m"}, [mlmodel_dependency("m")])
        await service.infer_started.wait()  # the load started by new() is under way
        waiting = asyncio.ensure_future(module.vision().get_classifications(png("coffee.png"), 1))
        service.hang.set()
        assert (await waiting)[0].class_name == "espresso"
        assert service.metadata_calls == 1 and len(service.received) == 2  # one load: its blank frame, then the call's


async def test_an_input_without_a_data_type_is_sent_as_the_type_the_service_accepts(tmp_path):
    # A TF-Lite-like model that takes uint8, behind a service whose metadata leaves data_type empty:
    # the start-up blank frame in float32 is refused, uint8 is accepted and kept.
    uint8_model = OnnxModelService(
        "uint8", onnx_models.build(tmp_path / "u8.onnx", layout="NHWC", input_type=TensorProto.UINT8, final="Softmax"),
        [tensor_info("image", "", [1, 16, 16, 3])], [tensor_info("probability", "float32", [1, 5])],
    )
    float_model = OnnxModelService(
        "float", onnx_models.build(tmp_path / "f.onnx"), [tensor_info("image", "", [1, 3, 16, 16])], [tensor_info("probability", "float32", [1, 5])],
    )
    neither = OnnxModelService(  # takes float16, which no ML model service input type carries
        "float16", onnx_models.build(tmp_path / "f16.onnx", input_type=TensorProto.FLOAT16),
        [tensor_info("image", "", [1, 3, 16, 16])], [tensor_info("probability", "float32", [1, 5])],
    )
    dark = (3, 1, 2)
    image = ViamImage(solid(dark), CameraMimeType.PNG)
    async with running_module([uint8_model, float_model, neither]) as module:
        for name in ("uint8", "float", "float16"):
            await module.add({"mlmodel_name": name}, [mlmodel_dependency(name)], name=name)

        got = as_pairs(await module.vision("uint8").get_classifications(image, 5))
        expected = softmax(onnx_models.scores_for(dark))
        assert got == [(str(i), pytest.approx(expected[i], abs=1e-6)) for i in np.argsort(-expected)]
        assert uint8_model.received[-1]["image"].dtype == np.uint8
        info = await module.vision("uint8").do_command({"command": "info"})
        assert info["input"]["type"] == "uint8"
        assert info["input"]["type_source"].startswith("the metadata gives no data_type; float32 was refused (")
        assert info["input"]["type_source"].endswith("and uint8 was accepted")

        await module.vision("float").get_classifications(image, 1)
        assert [received["image"].dtype for received in float_model.received] == [np.float32, np.float32]
        info = await module.vision("float").do_command({"command": "info"})
        assert info["input"]["type_source"] == "the metadata gives no data_type, and float32 was accepted"

        await expect_error(
            module.vision("float16").get_classifications(image, 1), Status.FAILED_PRECONDITION,
            "ML model service 'float16' gives no data_type for input 'image' and refused both input types",
            "float32 was refused (", "uint8 was refused (",
        )
        # each load tries both (the one that new() started, and the call's retry)
        assert [received["image"].dtype for received in neither.received] == [np.float32, np.uint8] * 2
