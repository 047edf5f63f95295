"""Load and lifecycle: many callers at once, a responsive event loop, removal under load, SIGTERM.

The module runs as a subprocess on its unix socket (tests/harness.py), each client on its own
connection, loopback only. The full 60 s load test is `bench/load.py`; this is its short version.
Nothing here is timed: each check waits for an event (a camera that has been asked, a call that has
finished, a process that has exited), and a call that never ends fails at HANG_S, the test itself at
the per-test timeout (pyproject.toml). Latencies and exit times are bench/load.py's to measure.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError
from PIL import Image
from viam.media.video import CameraMimeType, ViamImage
from viam.services.vision import VisionClient

from bench.frames import busy_frame, encoded
from bench.load import CAMERA, MAX_GROWTH_MIB, camera_frame, client_images, run

from onnx_classifier.cores import available_cores

from .conftest import encode, photo
from .harness import StillCamera, camera_dependency, running_module
from .test_module import expect_error

SERVICE = {"camera_name": CAMERA}
DEPENDENCIES = [camera_dependency(CAMERA)]
HANG_S = 60  # far beyond any single call here: reaching it means the call hung


@pytest.fixture(scope="module")
def uhd_jpeg() -> bytes:
    """A 3840x2160 camera frame: the slowest to decode, so calls stay in flight."""
    return encoded(busy_frame(3840, 2160), "JPEG")


@pytest.fixture(scope="module")
def slow_frame() -> bytes:
    """A 6000x4000 PNG of about 100 KB: quick to send, a few hundred milliseconds to decode and resize."""
    image = Image.new("RGB", (6000, 4000), (90, 120, 200))
    image.paste((200, 60, 30), (1000, 800, 4000, 3000))
    return encode(image, "PNG")


async def test_short_load_has_no_errors_and_bounded_memory():
    result = await run(seconds=10, clients=8)
    summary = result.summary()
    print("load:", summary)
    assert not result.errors, summary
    assert result.latencies["image"] and result.latencies["camera"], summary
    assert result.growth_mib <= MAX_GROWTH_MIB, summary


async def test_get_properties_is_answered_while_classifications_are_in_flight(slow_frame):
    """Decoding and inference run off the event loop: once the first of many slow classifications
    (half from the camera) is answered, the rest are running or queued in the inference pool, and
    get_properties, asked after all of them, is still answered before they have all finished."""
    async with running_module([StillCamera(CAMERA, slow_frame, "image/png")]) as module:
        await module.add(SERVICE, DEPENDENCIES)
        vision = module.vision()
        image = ViamImage(slow_frame, CameraMimeType.PNG)
        (expected,) = await vision.get_classifications(image, 1)
        calls = [
            asyncio.ensure_future(
                vision.get_classifications(image, 1) if i % 2 else vision.get_classifications_from_camera(CAMERA, 1)
            )
            for i in range(8 * available_cores())
        ]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        for _ in range(3):
            properties = await asyncio.wait_for(vision.get_properties(), HANG_S)
            assert properties.classifications_supported and properties.default_camera == CAMERA
            assert not all(call.done() for call in calls), "get_properties waited for the classifications"
        results = await asyncio.wait_for(asyncio.gather(*calls), HANG_S)
    for (answer,) in results:
        assert answer.class_name == expected.class_name
        assert answer.confidence == pytest.approx(expected.confidence, abs=1e-6)


async def _callers(module, stop: asyncio.Event, clients: int = 8) -> tuple[Counter, dict[str, str]]:
    """`clients` callers, each on its own connection, until `stop` is set: even ones send images,
    odd ones ask for the camera's frame. Returns the outcomes (OK or a status) and a message of each."""
    images = client_images()
    outcomes: Counter = Counter()
    messages: dict[str, str] = {}

    async def caller(index: int) -> None:
        channel = Channel(path=str(module.socket_path))
        vision = VisionClient("classifier", channel)
        try:
            turn = index
            while not stop.is_set():
                if index % 2 == 0:
                    call = vision.get_classifications(images[turn % len(images)], 5)
                else:
                    call = vision.get_classifications_from_camera(CAMERA, 5)
                try:
                    answer = await asyncio.wait_for(call, HANG_S)
                    outcomes["OK" if len(answer) == 5 else f"{len(answer)} results"] += 1
                except GRPCError as e:
                    outcomes[e.status.name] += 1
                    messages.setdefault(e.status.name, e.message)
                turn += 1
        finally:
            channel.close()

    await asyncio.gather(*(caller(i) for i in range(clients)))
    return outcomes, messages


async def test_remove_and_add_again_under_load():
    """While 8 clients keep calling, the service is removed and added again, three times. Each time a
    call waiting for a camera's frame when the service goes ends UNAVAILABLE (its service is closed), a
    call while it is gone is NOT_FOUND, and the service added again serves; every call of the load ends
    in a result, NOT_FOUND or UNAVAILABLE, none in UNKNOWN and none hangs."""
    camera, gate = StillCamera(CAMERA, camera_frame()), StillCamera("gate", photo("rocket.jpg"))
    attributes = {**SERVICE, "camera_names": ["gate"]}
    dependencies = DEPENDENCIES + [camera_dependency("gate")]
    async with running_module([camera, gate]) as module:
        await module.add(attributes, dependencies)
        vision = module.vision()
        stop = asyncio.Event()
        load = asyncio.ensure_future(_callers(module, stop))
        try:
            for _ in range(3):
                await camera.wait_until_asked(camera.asked + 4)  # the load is running
                gate.hang = True
                asked = gate.asked
                in_flight = asyncio.ensure_future(vision.get_classifications_from_camera("gate", 1))
                await gate.wait_until_asked(asked + 1)
                await module.remove()
                await expect_error(
                    vision.get_classifications(ViamImage(photo("rocket.jpg"), CameraMimeType.JPEG), 1), Status.NOT_FOUND, "classifier"
                )
                await module.add(attributes, dependencies)
                gate.hang = False
                await expect_error(asyncio.wait_for(in_flight, HANG_S), Status.UNAVAILABLE, "'classifier' is closed")
                assert (await vision.get_classifications_from_camera("gate", 1))[0].class_name == "missile"
            await camera.wait_until_asked(camera.asked + 4)  # and the load is served again
        finally:
            stop.set()
            outcomes, messages = await load
        assert module.process.poll() is None
    assert outcomes["OK"] > 0 and set(outcomes) <= {"OK", "NOT_FOUND", "UNAVAILABLE"}, (outcomes, messages)


async def test_remove_and_add_another_model_with_calls_in_flight(slow_frame):
    """Calls queued for the inference pool (frames quick to send, slow to decode) when the service is
    removed and at once added again with another classifier config (num_threads), three times: the
    new config is in use at once, and the calls in flight at the removal are answered, by the model
    they started on (a call not yet started may instead find the service gone or closed: NOT_FOUND or
    UNAVAILABLE, never UNKNOWN)."""
    configs = [{**SERVICE, "num_threads": 1}, SERVICE, {**SERVICE, "num_threads": 1}]
    async with running_module([StillCamera(CAMERA, camera_frame())]) as module:
        await module.add(SERVICE, DEPENDENCIES)
        vision = module.vision()
        image = ViamImage(slow_frame, CameraMimeType.PNG)
        (expected,) = await vision.get_classifications(image, 1)
        for config in configs:
            calls = [asyncio.ensure_future(vision.get_classifications(image, 1)) for _ in range(8 * available_cores())]
            # Once one is answered, the others are in the pool: running or queued behind it.
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            in_flight = [call for call in calls if not call.done()]
            assert in_flight, "every call finished before the service was removed"
            await module.remove()
            await module.add(config, DEPENDENCIES)
            info = await vision.do_command({"command": "info"})
            assert info["threads"]["intra_op"] == config.get("num_threads", available_cores())
            answered = 0
            for call in calls:
                try:
                    (answer,) = await asyncio.wait_for(call, HANG_S)
                except GRPCError as e:
                    assert e.status in (Status.NOT_FOUND, Status.UNAVAILABLE), (e.status, e.message)
                else:
                    assert answer.class_name == expected.class_name
                    assert answer.confidence == pytest.approx(expected.confidence, abs=1e-6)
                    answered += call in in_flight
            assert answered > 0, "no call in flight at the removal was answered"
        assert (await vision.get_classifications(image, 1))[0].class_name == expected.class_name


async def test_sigterm_with_calls_in_flight_exits_cleanly(uhd_jpeg):
    """SIGTERM while 8 calls wait for a hung camera whose limit is far away, and 4K frames from clients
    are being classified: the module exits with status 0 at once, without waiting for the camera,
    without a traceback, and every call ends (answered, or failed with a status or a closed
    connection); none hangs."""
    camera = StillCamera(CAMERA, uhd_jpeg)
    async with running_module([camera]) as module:
        await module.add({**SERVICE, "camera_timeout_s": 3600}, DEPENDENCIES)
        vision = module.vision()
        image = ViamImage(uhd_jpeg, CameraMimeType.JPEG)
        await vision.get_classifications(image, 1)
        camera.hang = True
        asked = camera.asked
        calls = [
            asyncio.ensure_future(
                vision.get_classifications(image, 1) if i % 2 else vision.get_classifications_from_camera(CAMERA, 1)
            )
            for i in range(16)
        ]
        await camera.wait_until_asked(asked + 8)
        module.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(asyncio.to_thread(module.process.wait), HANG_S)
        outcomes = await asyncio.gather(*(asyncio.wait_for(call, HANG_S) for call in calls), return_exceptions=True)
        camera.hang = False
        log = module.log()
    assert returncode == 0, (returncode, log)
    assert "Traceback" not in log, log
    for result in outcomes:
        assert not isinstance(result, asyncio.TimeoutError), "a call hung after SIGTERM"
        if isinstance(result, BaseException):
            assert isinstance(result, (GRPCError, StreamTerminatedError, ConnectionError)), repr(result)
            if isinstance(result, GRPCError):
                assert result.status is not Status.UNKNOWN, result


async def test_sigterm_while_idle_exits_cleanly():
    async with running_module([StillCamera(CAMERA, camera_frame())]) as module:
        await module.add(SERVICE, DEPENDENCIES)
        assert await module.vision().get_classifications(client_images()[0], 1)
        module.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(asyncio.to_thread(module.process.wait), HANG_S)
        log = module.log()
    assert returncode == 0, (returncode, log)
    assert "Traceback" not in log, log
