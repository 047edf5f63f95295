"""The ML model service backend in this process: `load_classifier` and `MLModelBackend.forward`
over a real `MLModel` (onnxruntime behind it), first called directly, then through the SDK's own
gRPC server and `MLModelClient` (the packed-bytes path the module uses under viam-server).

test_mlmodel.py runs the same backend in the module's own process, which is the user's view; these
tests reach the backend's code from the test process, so each message, limit and tensor type is
pinned where a change to it shows (mutation testing, README's Development section, relies on them).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel
from onnx import TensorProto
from viam.services.mlmodel.client import MLModelClient

from onnx_classifier import Classifier, ConfigError, parse_service_config
from onnx_classifier.config import Region
from onnx_classifier.classifier import InferenceRefused, InferenceTimeout, InferenceUnavailable, UnexpectedOutput, blank_input
from onnx_classifier.head import softmax
from onnx_classifier.mlmodel_backend import load_classifier
from onnx_classifier.paths import BUNDLED_MODEL

from . import onnx_models
from .conftest import photo, solid
from .harness import parent_robot
from .mlmodel_services import OnnxModelService, tensor_info
from .test_mlmodel import COLOUR, IMAGENET, SMALL_LABELS, channel_means

PHOTOS = ("chelsea.png", "rocket.jpg")


def bundled(name="m"):
    return OnnxModelService(
        name, BUNDLED_MODEL, [tensor_info("input", "float32", [1, 3, 224, 224])], [tensor_info("logits", "float32", [1, 1000])]
    )


def small(tmp_path, output=None):
    """A 16x16 five-class model whose scores onnx_models.scores_for gives exactly."""
    return OnnxModelService(
        "m",
        onnx_models.build(tmp_path / "small.onnx"),
        [tensor_info("image", "float32", [1, 3, 16, 16])],
        [output or tensor_info("probability", "float32", [1, 5])],
    )


def config(**attributes):
    return parse_service_config({"mlmodel_name": "m", **attributes}).classifier


def local_bundled():
    return Classifier.from_onnx_file(parse_service_config({**IMAGENET, "exact_preprocessing": True}).classifier)


async def scores(classifier, data):
    return await classifier.score(data, None, None, {})


async def forward_error(classifier, timeout=None):
    with pytest.raises(Exception) as caught:
        await classifier.backend.forward(blank_input(classifier.model), timeout)
    return caught.value


async def test_a_classifier_over_a_service_answers_as_the_local_backend_and_says_what_it_runs():
    service = bundled()
    classifier = await load_classifier(config(**IMAGENET, exact_preprocessing=True), service)
    local = local_bundled()
    # One blank frame fixed the output's shape; both calls had the service's limit.
    (blank,) = service.received
    assert blank["input"].dtype == np.float32 and blank["input"].shape == (1, 3, 224, 224) and not blank["input"].any()
    assert service.timeouts == [("metadata", 10.0), ("infer", 10.0)]
    assert classifier.output_shape == (1, 1000) and classifier.labels == local.labels
    for name in PHOTOS:
        np.testing.assert_allclose(await scores(classifier, photo(name)), local.image_scores(photo(name)), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(service.received[-1]["input"], local.preprocess(photo(name)))
    info = classifier.info()
    assert {k: info[k] for k in ("backend", "mlmodel_name", "mlmodel_timeout_s", "metadata", "input", "output")} == {
        "backend": "mlmodel",
        "mlmodel_name": "m",
        "mlmodel_timeout_s": 10.0,
        "metadata": {
            "name": "",
            "type": "",
            "description": "",
            "inputs": [{"name": "input", "data_type": "float32", "shape": [1, 3, 224, 224]}],
            "outputs": [{"name": "logits", "data_type": "float32", "shape": [1, 1000]}],
        },
        "input": {"name": "input", "shape": [1, 3, 224, 224], "type": "float32", "type_source": "the metadata's data_type 'float32'", "layout": "NCHW"},
        "output": {"name": "logits", "shape": [1, 1000], "type": "float32"},
    }


@pytest.mark.parametrize(
    "error, message",
    [
        (GRPCError(Status.UNAVAILABLE, "still loading"), "ML model service 'm' did not return its metadata: UNAVAILABLE: still loading"),
        (ConnectionError("refused"), "ML model service 'm' did not return its metadata: ConnectionError: refused"),
    ],
)
async def test_metadata_that_fails_is_unavailable_naming_the_service(error, message):
    service = bundled()
    service.metadata_error = error
    with pytest.raises(InferenceUnavailable) as caught:
        await load_classifier(config(), service)
    assert type(caught.value) is InferenceUnavailable and str(caught.value) == message
    assert service.received == []


async def test_metadata_that_does_not_come_within_mlmodel_timeout_s_is_a_timeout():
    service = bundled()
    service.metadata_hang.clear()
    with pytest.raises(InferenceTimeout) as caught:
        await load_classifier(config(mlmodel_timeout_s=0.05), service)
    assert str(caught.value) == "ML model service 'm' did not return its metadata within 0.05 s ('mlmodel_timeout_s')"
    assert service.timeouts == [("metadata", 0.05)]


@pytest.mark.parametrize(
    "error, kind, message",
    [
        (GRPCError(Status.RESOURCE_EXHAUSTED, "queue full"), InferenceUnavailable, "ML model service 'm' failed: RESOURCE_EXHAUSTED: queue full"),
        (ConnectionResetError("reset by peer"), InferenceUnavailable, "ML model service 'm' cannot be reached: reset by peer"),
        (OSError("network is unreachable"), InferenceUnavailable, "ML model service 'm' cannot be reached: network is unreachable"),
        # the service's own answer to this input (a later input may succeed; a start-up blank frame
        # without a metadata data_type tries the other input type)
        (RuntimeError("CUDA out of memory"), InferenceRefused, "ML model service 'm' failed: RuntimeError: CUDA out of memory"),
        (GRPCError(Status.INVALID_ARGUMENT, "input dtype float32, model takes uint8"), InferenceRefused,
         "ML model service 'm' failed: INVALID_ARGUMENT: input dtype float32, model takes uint8"),
        (UnexpectedOutput("an output tensor holds no data"), UnexpectedOutput, "an output tensor holds no data"),
    ],
)
async def test_infer_errors_are_unavailable_naming_the_service_and_the_next_call_answers(tmp_path, error, kind, message):
    service = small(tmp_path)
    classifier = await load_classifier(config(), service)
    service.infer_error = error
    got = await forward_error(classifier)
    assert type(got) is kind and str(got) == message
    service.infer_error = None
    np.testing.assert_allclose(await scores(classifier, solid(COLOUR)), softmax(onnx_models.scores_for(channel_means(COLOUR))), atol=1e-6)


@pytest.mark.parametrize("timeout, limit", [(None, 0.05), (0.02, 0.02), (30, 0.05)])
async def test_an_infer_past_the_limit_is_a_timeout_and_the_next_call_answers(tmp_path, timeout, limit):
    """The limit is the call's remaining deadline or mlmodel_timeout_s, whichever is shorter."""
    service = small(tmp_path)
    classifier = await load_classifier(config(mlmodel_timeout_s=0.05), service)
    service.hang.clear()
    got = await forward_error(classifier, timeout)
    assert type(got) is InferenceTimeout
    assert str(got) == f"ML model service 'm' did not answer within {limit:g} s (the call's deadline or 'mlmodel_timeout_s' = 0.05 s)"
    assert service.timeouts[-1] == ("infer", limit)  # the service is told the same limit
    service.hang.set()
    assert (await classifier.backend.forward(blank_input(classifier.model), timeout)).shape == (1, 5)


@pytest.mark.parametrize(
    "outputs, named",
    [
        ({"boxes": np.zeros((1, 4), np.float32)}, "'boxes'"),
        ({"boxes": np.zeros((1, 4), np.float32), "scores": np.zeros((1, 5), np.float32)}, "'boxes', 'scores'"),
        ({}, "none"),
    ],
)
async def test_an_answer_without_the_score_output_is_unexpected_output(tmp_path, outputs, named):
    service = small(tmp_path)
    classifier = await load_classifier(config(), service)
    service.outputs_override = outputs
    got = await forward_error(classifier)
    assert type(got) is UnexpectedOutput
    assert str(got) == f"ML model service 'm' returned outputs {named}, without 'probability'"


async def test_scores_of_a_changed_shape_are_unexpected_output_with_both_shapes(tmp_path):
    service = small(tmp_path)
    classifier = await load_classifier(config(), service)
    service.outputs_override = {"probability": np.zeros((1, 7), np.float32)}
    with pytest.raises(UnexpectedOutput) as caught:
        await scores(classifier, solid(COLOUR))
    assert str(caught.value) == (
        "ML model service 'm' returned output 'probability' of shape [1, 7], expected [1, 5] (its shape when the service started)"
    )


async def test_labels_that_do_not_match_a_dynamic_class_count_name_both(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    service = small(tmp_path, output=tensor_info("probability", "float32", [1, -1]))
    with pytest.raises(ConfigError) as caught:
        await load_classifier(config(labels_path=str(labels)), service)
    assert str(caught.value) == (
        f"attribute 'labels_path' ({labels}) has 3 labels but ML model service 'm' outputs 5 classes (output 'probability')"
    )


class Served:
    """`services` served by the SDK's own server on a unix socket in this process, with a gRPC
    channel to it: `client()` is the SDK's MLModelClient, as the module gets from its parent."""

    def __init__(self, *services):
        self.services = services

    async def __aenter__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="oc-", dir="/tmp")
        socket = Path(self._folder.name) / "parent.sock"
        self._robot = parent_robot(socket, self.services)
        await self._robot.__aenter__()
        self.channel = Channel(path=str(socket))
        return self

    def client(self, name="m"):
        return MLModelClient(name, self.channel)

    async def stop_serving(self):
        await self._robot.__aexit__(None, None, None)
        self._robot = None

    async def __aexit__(self, *exc):
        self.channel.close()
        if self._robot is not None:
            await self._robot.__aexit__(*exc)
        self._folder.cleanup()


async def test_packed_float32_requests_reach_a_served_model_as_the_sdk_would_send_them():
    service = bundled()
    local = local_bundled()
    async with Served(service) as parent:
        classifier = await load_classifier(config(**IMAGENET, exact_preprocessing=True), parent.client())
        # The limit travels as the call's gRPC deadline: the server sees what is left of it.
        assert service.timeouts[1][0] == "infer" and 9.0 < service.timeouts[1][1] <= 10.0
        for name in PHOTOS:
            np.testing.assert_allclose(await scores(classifier, photo(name)), local.image_scores(photo(name)), atol=1e-5, rtol=0)
            np.testing.assert_array_equal(service.received[-1]["input"], local.preprocess(photo(name)))


async def test_packed_uint8_requests_carry_raw_pixels(tmp_path):
    service = OnnxModelService(
        "m",
        onnx_models.build(tmp_path / "u8.onnx", layout="NHWC", input_type=TensorProto.UINT8),
        [tensor_info("serving_default_input:0", "uint8", [1, 16, 16, 3])],
        [tensor_info("probability", "float32", [1, 5])],
    )
    dark = (3, 1, 2)
    async with Served(service) as parent:
        classifier = await load_classifier(config(), parent.client())
        np.testing.assert_allclose(await scores(classifier, solid(dark)), softmax(onnx_models.scores_for(dark)), atol=1e-6)
    sent = service.received[-1]["serving_default_input:0"]
    assert sent.dtype == np.uint8 and sent.shape == (1, 16, 16, 3) and (sent == np.array(dark, np.uint8)).all()


@pytest.mark.parametrize(
    "data_type, raw, expected",
    [
        ("uint8", np.array([[0, 51, 255, 102, 0]], np.uint8), [0, 0.2, 1, 0.4, 0]),
        ("float32", np.array([[0.5, 0.25, 0.125, 0.0625, 0.0625]], np.float32), [0.5, 0.25, 0.125, 0.0625, 0.0625]),
        ("float64", np.array([[0.1, 0.2, 0.3, 0.15, 0.25]], np.float64), [0.1, 0.2, 0.3, 0.15, 0.25]),
        ("float64", np.array([[1.0, 2.0, 3.0, 0.0, -1.0]], np.float64), softmax(np.array([1.0, 2.0, 3.0, 0.0, -1.0]))),
        ("int32", np.array([[1, 2, 3, 0, -1]], np.int32), softmax(np.array([1.0, 2.0, 3.0, 0.0, -1.0]))),
        ("int64", np.array([[0, 1, 0, 0, 0]], np.int64), [0, 1, 0, 0, 0]),
        ("int8", np.array([[0, 1, 0, 0, 0]], np.int8), [0, 1, 0, 0, 0]),
    ],
)
async def test_score_tensors_of_each_type_are_read_from_the_wire(tmp_path, data_type, raw, expected):
    service = small(tmp_path, output=tensor_info("probability", data_type, [1, 5]))
    service.outputs_override = {"probability": raw}
    async with Served(service) as parent:
        classifier = await load_classifier(config(), parent.client())
        np.testing.assert_allclose(await scores(classifier, solid(COLOUR)), expected, atol=1e-7, rtol=0)


async def test_faults_over_grpc_are_unavailable_or_a_timeout_naming_the_service(tmp_path):
    service = small(tmp_path)
    async with Served(service) as parent:
        classifier = await load_classifier(config(mlmodel_timeout_s=1), parent.client())
        service.infer_error = RuntimeError("CUDA out of memory")
        got = await forward_error(classifier)
        # The SDK's server turns the service's exception into UNKNOWN with its type and text: the
        # service's answer, as opposed to a service that cannot be reached (below).
        assert type(got) is InferenceRefused
        assert str(got).startswith("ML model service 'm' failed: UNKNOWN: RuntimeError - CUDA out of memory")
        service.infer_error = None
        service.hang.clear()
        got = await forward_error(classifier)
        assert type(got) is InferenceTimeout
        assert str(got) == "ML model service 'm' did not answer within 1 s (the call's deadline or 'mlmodel_timeout_s' = 1 s)"
        service.hang.set()
        await parent.stop_serving()
        parent.channel.close()  # the open connection outlives the server; the next call connects anew
        got = await forward_error(classifier)
        assert type(got) is InferenceUnavailable
        assert str(got).startswith("ML model service 'm' cannot be reached: ") and "Connection refused" in str(got)


async def test_a_deadline_the_service_ends_itself_is_the_same_timeout(tmp_path):
    # The request carries its deadline to the service, which may end it before this side's timer does
    # and answer DEADLINE_EXCEEDED, as viam-server's Go side does ("context deadline exceeded").
    service = small(tmp_path)
    async with Served(service) as parent:
        service.metadata_error = GRPCError(Status.DEADLINE_EXCEEDED, "context deadline exceeded")
        with pytest.raises(InferenceTimeout) as caught:
            await load_classifier(config(mlmodel_timeout_s=2), parent.client())
        assert str(caught.value) == "ML model service 'm' did not return its metadata within 2 s ('mlmodel_timeout_s')"
        service.metadata_error = None
        classifier = await load_classifier(config(mlmodel_timeout_s=2), parent.client())
        service.infer_error = GRPCError(Status.DEADLINE_EXCEEDED, "context deadline exceeded")
        got = await forward_error(classifier, 0.5)
        assert type(got) is InferenceTimeout
        assert str(got) == "ML model service 'm' did not answer within 0.5 s (the call's deadline or 'mlmodel_timeout_s' = 2 s)"


async def test_float32_tensors_never_take_the_sdks_element_by_element_conversion(monkeypatch):
    """The SDK's ndarrays_to_flat_tensors takes about 70 ms for a 1x3x224x224 float32 tensor here;
    the backend writes the packed bytes itself."""
    import viam.services.mlmodel.client as sdk_client

    def refuse(_):
        raise AssertionError("the SDK's per-element tensor conversion was used")

    monkeypatch.setattr(sdk_client, "ndarrays_to_flat_tensors", refuse)
    service = bundled()
    async with Served(service) as parent:
        classifier = await load_classifier(config(**IMAGENET), parent.client())
        assert len(await scores(classifier, photo("chelsea.png"))) == 1000


async def test_score_applies_the_region_and_records_each_stage_on_both_backends():
    service = bundled()
    remote = await load_classifier(config(**IMAGENET, exact_preprocessing=True), service)
    local = local_bundled()
    region = Region(0.25, 0.1, 0.75, 0.9)
    data = photo("chelsea.png")
    expected = local.image_scores(data, region)
    for classifier in (local, remote):
        timings: dict[str, float] = {}
        started = time.perf_counter()
        got = await classifier.score(data, region, 3.0, timings)
        elapsed = time.perf_counter() - started
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert set(timings) == {"decode", "preprocess", "inference", "postprocess"}
        assert all(0 <= value <= elapsed for value in timings.values()), timings
    assert service.timeouts[-1] == ("infer", 3.0)  # the call's time left reached the service


async def test_frames_are_prepared_on_the_modules_worker_threads(monkeypatch):
    """Decoding and in-process inference run on the bounded pool of worker threads (as many as the
    cores), never on the event loop or Python's default executor."""
    service = bundled()
    remote = await load_classifier(config(**IMAGENET), service)
    for classifier in (local_bundled(), remote):
        threads = []
        preprocess = classifier.preprocess

        def recording(*args, _preprocess=preprocess):
            threads.append(threading.current_thread().name)
            return _preprocess(*args)

        monkeypatch.setattr(classifier, "preprocess", recording)
        await classifier.score(photo("rocket.jpg"), None, None, {})
        assert len(threads) == 1 and threads[0].startswith("onnx-classifier"), threads


async def test_a_model_behind_a_service_is_only_run_through_score():
    classifier = await load_classifier(config(**IMAGENET), bundled())
    with pytest.raises(TypeError) as caught:
        classifier.image_scores(photo("rocket.jpg"))
    assert str(caught.value) == "ML model service 'm' runs outside this process: use `score`"


async def test_labels_named_in_the_services_metadata_are_read(tmp_path):
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(SMALL_LABELS) + "\n")
    service = small(tmp_path, output=tensor_info("probability", "float32", [1, 5], {"labels": str(labels)}))
    classifier = await load_classifier(config(), service)
    assert classifier.labels == tuple(SMALL_LABELS)
    assert classifier.info()["labels"]["source"] == f"the labels file {str(labels)!r} that ML model service 'm' names for output 'probability'"
    head, reason = classifier.head_in_use()
    assert head.value == "softmax" and reason == (
        "auto, decided on every frame (this is its choice for a blank image): scores all in [0, 1] are used as they are "
        "(softmax or sigmoid outputs; nothing describes the model's head); anything else is taken as logits (softmax, "
        "or sigmoid for a single class)"
    )


async def test_input_name_and_output_name_pick_the_tensors_of_a_service_with_several(tmp_path):
    service = OnnxModelService(
        "m",
        onnx_models.build(tmp_path / "small.onnx"),
        [tensor_info("pixels", "float32", [1, 3, 16, 16]), tensor_info("camera_id", "float32", [1])],
        [tensor_info("scores", "float32", [1, 5]), tensor_info("embedding", "float32", [1, 8])],
    )
    for attributes, message in [
        ({"output_name": "scores"}, "ML model service 'm' has 2 inputs ('pixels', 'camera_id') and none named 'image'"),
        ({"input_name": "pixels"}, "ML model service 'm' has 2 outputs ('scores', 'embedding') and none named 'probability'"),
    ]:
        with pytest.raises(ConfigError) as caught:
            await load_classifier(config(**attributes), service)
        assert str(caught.value).startswith(message)
    classifier = await load_classifier(config(input_name="pixels", output_name="scores"), service)
    got = await scores(classifier, solid(COLOUR))
    np.testing.assert_allclose(got, softmax(onnx_models.scores_for(channel_means(COLOUR))), atol=1e-6)
    assert set(service.received[-1]) == {"pixels"}


async def test_an_output_of_unknown_shape_must_give_class_scores_for_an_image(tmp_path):
    service = small(tmp_path, output=tensor_info("probability", "float32", []))
    service.outputs_override = {"probability": np.zeros((1, 25, 4), np.float32)}
    with pytest.raises(ConfigError) as caught:
        await load_classifier(config(), service)
    assert str(caught.value) == (
        "ML model service 'm': output 'probability' gave shape [1, 25, 4] for an image; expected class scores [N, C] or [C]"
    )


async def test_a_uint8_output_is_dequantized_before_auto_decides(tmp_path):
    service = small(tmp_path, output=tensor_info("probability", "uint8", [1, 5]))
    service.outputs_override = {"probability": np.array([[0, 51, 255, 102, 0]], np.uint8)}
    classifier = await load_classifier(config(), service)
    assert classifier.head_in_use()[0].value == "none"  # 0..1 after dequantizing, not logits 0..255
    np.testing.assert_allclose(await scores(classifier, solid(COLOUR)), [0, 0.2, 1, 0.4, 0], atol=1e-7)


async def test_a_labels_file_the_service_names_but_this_machine_lacks_says_what_to_do(tmp_path):
    missing = tmp_path / "elsewhere" / "labels.txt"
    service = small(tmp_path, output=tensor_info("probability", "float32", [1, 5], {"labels": str(missing)}))
    with pytest.raises(ConfigError) as caught:
        await load_classifier(config(), service)
    message = str(caught.value)
    assert message.startswith(
        f"the labels file {str(missing)!r} that ML model service 'm' names for output 'probability': labels file {str(missing)!r} cannot be read: "
    )
    assert message.endswith("; or set attribute 'labels_path' to a labels file on this machine")


async def test_auto_reports_softmax_for_a_service_that_outputs_logits(tmp_path):
    """The blank frame's scores decide the head `info` reports: logits from a service are not in [0, 1]."""
    classifier = await load_classifier(config(), small(tmp_path))
    assert classifier.head_in_use()[0].value == "softmax"
    np.testing.assert_allclose(await scores(classifier, solid(COLOUR)), softmax(onnx_models.scores_for(channel_means(COLOUR))), atol=1e-6)
