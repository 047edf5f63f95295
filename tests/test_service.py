"""The Viam adapter in-process: what viam-server's close-then-new reconfigure costs, and what close releases."""

import asyncio
import gc
import logging
import os
import struct
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from grpclib import Status
from PIL import Image
from viam.errors import ViamGRPCError
from viam.media.video import CameraMimeType, ViamImage
from viam.proto.app.robot import ComponentConfig
from viam.utils import dict_to_struct

from onnx_classifier import classifier as classifier_module
from onnx_classifier.classifier import SharedClassifiers
from onnx_classifier.config import Head, parse_service_config
from onnx_classifier.service import SHARED_CLASSIFIERS, OnnxClassifier

from . import onnx_models
from .conftest import encode, solid
from .harness import MODEL, parent_robot


def config(attributes):
    return ComponentConfig(name="classifier", api="rdk:service:vision", model=MODEL, attributes=dict_to_struct(attributes))


async def test_reconfigure_with_the_same_model_does_not_reload_it():
    first = OnnxClassifier.new(config({}), {})
    classifier, _ = first.loaded
    await first.close()
    assert first.loaded is None
    # A change that does not touch the model (the threshold) reuses the loaded session.
    second = OnnxClassifier.new(config({"confidence_threshold": 0.2}), {})
    assert second.loaded[0] is classifier
    await second.close()


async def test_a_different_model_replaces_the_idle_one_and_closes_it(tmp_path):
    first = OnnxClassifier.new(config({}), {})
    bundled = weakref.ref(first.loaded[0])
    await first.close()
    gc.collect()
    assert bundled() is not None  # idle, kept for an unchanged reconfigure
    other = OnnxClassifier.new(config({"model_path": str(onnx_models.build(tmp_path / "m.onnx"))}), {})
    assert bundled() is None  # the idle bundled model is freed when another loads, without a collection
    loaded, _ = other.loaded
    await other.close()
    assert SHARED_CLASSIFIERS.loaded() == [loaded]


def test_shared_classifiers_count_users_and_notice_a_changed_file(tmp_path):
    shared = SharedClassifiers()
    path = onnx_models.build(tmp_path / "m.onnx")
    cfg = parse_service_config({"model_path": str(path)}).classifier
    a, b = shared.acquire(cfg), shared.acquire(cfg)
    assert a is b
    shared.release(a)
    assert a.backend._session is not None and shared.loaded() == [a]
    shared.release(b)
    assert shared.loaded() == [a]  # idle, kept for the next identical config
    assert shared.acquire(cfg) is a
    shared.release(a)
    held_by_a_call = a  # a call still running on it when the file changes
    replaced = weakref.ref(a)
    del a, b
    onnx_models.build(path, final="Softmax")  # the file changes on disk: a fresh load
    c = shared.acquire(cfg)
    assert c is not held_by_a_call and c.model.spec.final_activation is Head.SOFTMAX
    assert held_by_a_call.classify(solid((10, 20, 30)), 1)  # the call finishes on the replaced model
    del held_by_a_call
    assert replaced() is None  # and then it is freed
    shared.release(c)
    path.with_suffix(".json").write_text('{"labels": ["a", "b", "c", "d", "e"]}')  # so does a new sidecar
    d = shared.acquire(cfg)
    assert d is not c and d.labels == ("a", "b", "c", "d", "e")


def frame(kind: str, width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (200, 40, 90))
    if kind == "rgba":
        return b"RGBA" + struct.pack(">II", width, height) + image.convert("RGBA").tobytes()
    return encode(image, kind.upper())


@pytest.mark.parametrize("kind", ["jpeg", "png", "rgba"])
async def test_a_configured_max_image_pixels_is_the_limit(tmp_path, kind):
    """A frame of exactly max_image_pixels is classified; one pixel row more is refused from its
    header, with the numbers, in every format."""
    width, height = 64, 48
    limit = width * height
    model = onnx_models.build(tmp_path / "m.onnx")
    service = OnnxClassifier.new(config({"model_path": str(model), "max_image_pixels": limit}), {})
    expected = str(int(np.argmax(onnx_models.scores_for(np.array([200, 40, 90]) / 255.0))))
    try:
        at_limit = await service.get_classifications(ViamImage(frame(kind, width, height), CameraMimeType.JPEG), 1)
        assert [c.class_name for c in at_limit] == [expected]
        with pytest.raises(ViamGRPCError) as caught:
            await service.get_classifications(ViamImage(frame(kind, width, height + 1), CameraMimeType.JPEG), 1)
        assert caught.value.grpc_code is Status.INVALID_ARGUMENT
        name = "image/vnd.viam.rgba" if kind == "rgba" else kind.upper()
        assert caught.value.message == (
            f"image: the {name} image is {width}x{height + 1} = {limit + width} pixels, more than max_image_pixels ({limit})"
        )
    finally:
        await service.close()


def test_missing_camera_dependency_is_a_clear_error():
    with pytest.raises(ValueError, match="camera 'cam' is not among this service's dependencies"):
        OnnxClassifier.new(config({"camera_name": "cam"}), {})


def test_hyperframe_repr_patch_gives_the_same_text():
    import binascii
    import os

    import hyperframe.frame

    def original(data):  # hyperframe 6.1's _raw_data_repr
        if not data:
            return "None"
        r = binascii.hexlify(data).decode("ascii")
        if len(r) > 20:
            r = r[:20] + "..."
        return "<hex:" + r + ">"

    from onnx_classifier import dependency_fixes

    assert dependency_fixes.apply() == [
        "hyperframe frame repr: hexlifies only the bytes it shows",
        "module logs: sent to the parent on the event loop that owns its connection",
    ]
    assert hyperframe.frame._raw_data_repr is dependency_fixes.hex_prefix_repr
    for size in (0, 1, 9, 10, 11, 12, 16384):
        data = os.urandom(size)
        assert hyperframe.frame._raw_data_repr(data) == original(data)
    frame = hyperframe.frame.DataFrame(1, data=os.urandom(16384))
    assert repr(frame).endswith("...>")


async def test_module_logs_are_sent_on_the_loop_that_owns_the_parent_connection(tmp_path, capsys):
    from viam.robot.client import RobotClient
    from viam.rpc.dial import DialOptions

    from onnx_classifier.dependency_fixes import ParentLogHandler

    async def sent(handler: ParentLogHandler) -> None:
        await asyncio.sleep(0)  # emit starts the send on the loop's next turn
        while handler.sending:
            await asyncio.gather(*handler.sending)

    logger = logging.getLogger("onnx_classifier.test_parent_log")
    options = RobotClient.Options(
        dial_options=DialOptions(disable_webrtc=True, insecure=True), check_connection_interval=0, attempt_reconnect_interval=0
    )
    async with parent_robot(tmp_path / "parent.sock", []) as parent:
        client = await RobotClient.at_address(str(tmp_path / "parent.sock"), options)
        handler = ParentLogHandler(client)  # made in this loop, as setParent makes it
        logger.addHandler(handler)
        try:
            await asyncio.to_thread(logger.warning, "from an inference thread: %d", 42)
            await parent.module_log.wait_for("from an inference thread: 42")
            await sent(handler)
            (line,) = parent.module_log.lines
            assert line.startswith("WARNING\tonnx_classifier/test_parent_log\t") and line.endswith("\tfrom an inference thread: 42")
        except BaseException:
            logger.removeHandler(handler)
            raise
    try:
        # the parent has gone (its connection closed, nothing listening): the line goes to stderr, with the reason
        await client.close()
        logger.warning("after the parent went away")
        await sent(handler)
        assert "after the parent went away (sending it to the parent failed: ConnectionRefusedError" in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)


def test_shared_classifiers_keep_one_in_use_until_its_last_user_releases_it(tmp_path):
    shared = SharedClassifiers()
    first = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "a.onnx"))}).classifier
    second = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "b.onnx", final="Softmax"))}).classifier
    a = shared.acquire(first)
    assert shared.acquire(first) is a
    shared.release(a)  # one user left
    b = shared.acquire(second)
    assert shared.loaded() == [a, b]  # a was in use, not idle, so loading b did not drop it
    shared.release(a)
    shared.release(b)
    assert shared.loaded() == [b]  # the most recently released one stays idle; a is dropped
    assert shared.acquire(second) is b  # from idle...
    c = shared.acquire(first)  # ...and then another, with nothing idle
    assert c is not a and shared.loaded() == [b, c]
    shared.release(object())  # not one of its own: nothing changes
    assert shared.loaded() == [b, c]


def test_an_edited_labels_file_is_a_different_model(tmp_path):
    shared = SharedClassifiers()
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    cfg = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "m.onnx")), "labels_path": str(labels)}).classifier
    first = shared.acquire(cfg)
    shared.release(first)
    labels.write_text("v\nw\nx\ny\nz\n")
    stat = labels.stat()  # a same-second rewrite still counts: move the stamp on
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = shared.acquire(cfg)
    assert second is not first and second.labels == ("v", "w", "x", "y", "z")


def test_a_load_is_logged_with_its_path_and_duration(tmp_path, caplog):
    path = onnx_models.build(tmp_path / "m.onnx")
    cfg = parse_service_config({"model_path": str(path)}).classifier
    caplog.set_level(logging.INFO, logger="onnx_classifier.classifier")
    started = time.perf_counter()
    SharedClassifiers().acquire(cfg)
    elapsed = time.perf_counter() - started
    (record,) = [r for r in caplog.records if r.name == "onnx_classifier.classifier"]
    words = record.getMessage().split()
    assert words[:4] == ["loaded", "model_path", repr(str(path)), "in"] and words[-1] == "s"
    assert 0.0 <= float(words[4]) <= elapsed + 0.01  # the load's own duration, rounded to 0.01 s


def test_two_threads_loading_one_model_at_once_share_one_and_count_both_users(tmp_path, monkeypatch):
    """Both threads load the model (neither is done when the other starts); the second to finish
    uses the first's, and both count as its users."""
    both_loading = threading.Barrier(2)

    class LoadedTogether(classifier_module.Classifier):
        def __init__(self, *args):
            super().__init__(*args)
            both_loading.wait(timeout=60)

    monkeypatch.setattr(classifier_module, "Classifier", LoadedTogether)
    shared = SharedClassifiers()
    cfg = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "a.onnx"))}).classifier
    other = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "b.onnx", final="Softmax"))}).classifier
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: shared.acquire(cfg), range(2))
    assert a is b
    monkeypatch.undo()
    shared.release(a)
    o = shared.acquire(other)
    assert shared.loaded() == [a, o]  # one user left: still in use
    shared.release(b)
    assert shared.loaded() == [o, a]  # idle now
    shared.release(o)
    assert shared.loaded() == [o]


def test_three_users_release_one_at_a_time(tmp_path):
    shared = SharedClassifiers()
    cfg = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "a.onnx"))}).classifier
    other = parse_service_config({"model_path": str(onnx_models.build(tmp_path / "b.onnx", final="Softmax"))}).classifier
    a = shared.acquire(cfg)
    assert shared.acquire(cfg) is a and shared.acquire(cfg) is a
    shared.release(a)
    shared.release(a)
    o = shared.acquire(other)
    assert shared.loaded() == [a, o]  # the third user still holds it
