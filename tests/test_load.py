"""Load and lifecycle: many callers at once, a responsive event loop, removal under load, SIGTERM.

The module runs as a subprocess on its unix socket (tests/harness.py), each client on its own
connection, loopback only. The full 60 s load test is `bench/load.py`; this is its short version.
The only time bounds are the liveness ones the service promises: a call never hangs (each is
wrapped in a generous wait_for), get_properties is answered in under a second while
classifications are in flight, and SIGTERM ends the process within 2 s.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError
from PIL import Image
from viam.media.video import CameraMimeType, ViamImage

from bench.frames import busy_frame, encoded
from bench.load import CAMERA, MAX_GROWTH_MIB, camera_frame, client_images, drive, run

from onnx_classifier.cores import available_cores

from .conftest import encode
from .harness import StillCamera, camera_dependency, running_module

SERVICE = {"camera_name": CAMERA}
DEPENDENCIES = [camera_dependency(CAMERA)]
HANG_S = 30  # far beyond any single call here: reaching it means the call hung


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


async def test_get_properties_is_answered_while_classifications_are_in_flight(uhd_jpeg):
    """Decoding and inference run off the event loop: with 8 classifications of 4K frames in flight
    (half from the camera), get_properties still answers at once."""
    async with running_module([StillCamera(CAMERA, uhd_jpeg)]) as module:
        await module.add(SERVICE, DEPENDENCIES)
        vision = module.vision()
        image = ViamImage(uhd_jpeg, CameraMimeType.JPEG)
        await vision.get_classifications(image, 1)  # warm-up
        calls = [
            asyncio.ensure_future(
                vision.get_classifications(image, 1) if i % 2 else vision.get_classifications_from_camera(CAMERA, 1)
            )
            for i in range(8)
        ]
        await asyncio.sleep(0.05)
        answered = 0
        while not all(call.done() for call in calls) and answered < 50:
            in_flight = sum(not call.done() for call in calls)
            started = time.monotonic()
            properties = await asyncio.wait_for(vision.get_properties(), HANG_S)
            elapsed = time.monotonic() - started
            if in_flight >= 4:  # the check means something only while the pool is busy
                assert elapsed < 1.0, f"get_properties took {elapsed:.2f} s with {in_flight} classifications in flight"
                answered += 1
            assert properties.classifications_supported
            await asyncio.sleep(0.02)
        assert answered >= 1, "the classifications finished before get_properties could be asked"
        results = await asyncio.wait_for(asyncio.gather(*calls), HANG_S)
        assert all(len(r) == 1 for r in results)


async def _churn(module, configs, pause_s: float = 0.6, rounds: int = 3) -> None:
    """Remove the service and add it again, `rounds` times, while the load runs."""
    for index in range(rounds):
        await asyncio.sleep(pause_s)
        await module.remove()
        await asyncio.sleep(0.2)
        await module.add(configs[index % len(configs)], DEPENDENCIES)


async def _load_with_churn(configs) -> dict:
    async with running_module([StillCamera(CAMERA, camera_frame())]) as module:
        await module.add(configs[-1], DEPENDENCIES)
        vision = module.vision()
        await vision.get_classifications_from_camera(CAMERA, 1)
        load = asyncio.ensure_future(drive(module.socket_path, module.process.pid, 4.0, 8, call_timeout_s=HANG_S))
        await _churn(module, configs)
        result = await load
        # the last add serves as before, and nothing hung or crashed
        assert len(await vision.get_classifications_from_camera(CAMERA, 5)) == 5
        assert module.process.poll() is None
        log = module.log()
    return {"errors": dict(result.errors), "messages": result.messages, "calls": result.calls, "log": log}


async def test_remove_and_add_again_under_load():
    """Calls in flight when the service is removed finish; calls that arrive while it is gone get
    NOT_FOUND; none hangs, none is UNKNOWN, and the re-added service serves again."""
    outcome = await _load_with_churn([SERVICE])
    errors, messages = outcome["errors"], outcome["messages"]
    assert outcome["calls"] > 0
    assert set(errors) <= {"NOT_FOUND", "UNAVAILABLE"}, messages
    if "NOT_FOUND" in messages:
        assert "classifier" in messages["NOT_FOUND"], messages


async def test_remove_and_add_another_model_with_calls_in_flight(slow_frame):
    """Calls queued for the inference pool (frames quick to send, slow to decode) when the service is
    removed and at once added again with another classifier config (num_threads), three times:
    each call is answered or fails with a clear status, never UNKNOWN."""
    configs = [{**SERVICE, "num_threads": 1}, SERVICE, {**SERVICE, "num_threads": 1}]
    statuses: dict[str, str] = {}
    async with running_module([StillCamera(CAMERA, camera_frame())]) as module:
        await module.add(SERVICE, DEPENDENCIES)
        vision = module.vision()
        image = ViamImage(slow_frame, CameraMimeType.PNG)
        await vision.get_classifications(image, 1)
        for config in configs:
            calls = [asyncio.ensure_future(vision.get_classifications(image, 1)) for _ in range(8 * available_cores())]
            # Once one is answered, the others are in the pool: running or queued behind it.
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            await module.remove()
            await module.add(config, DEPENDENCIES)
            for result in await asyncio.gather(*(asyncio.wait_for(c, HANG_S) for c in calls), return_exceptions=True):
                assert not isinstance(result, asyncio.TimeoutError), "a call hung"
                if isinstance(result, GRPCError):
                    statuses.setdefault(result.status.name, result.message)
                elif isinstance(result, BaseException):
                    raise result
        assert len(await vision.get_classifications(image, 1)) == 1
    assert set(statuses) <= {"NOT_FOUND", "UNAVAILABLE"}, statuses


async def test_sigterm_under_load_exits_cleanly_within_2_s(uhd_jpeg):
    """SIGTERM with 16 classifications in flight (4K frames from clients and from the camera): the module
    exits with status 0 within 2 s, without a traceback, and every call ends (answered, or failed
    with a status or a closed connection); none hangs."""
    async with running_module([StillCamera(CAMERA, uhd_jpeg)]) as module:
        await module.add(SERVICE, DEPENDENCIES)
        vision = module.vision()
        image = ViamImage(uhd_jpeg, CameraMimeType.JPEG)
        await vision.get_classifications(image, 1)
        calls = [
            asyncio.ensure_future(
                vision.get_classifications(image, 1) if i % 2 else vision.get_classifications_from_camera(CAMERA, 1)
            )
            for i in range(16)
        ]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        assert sum(not call.done() for call in calls) >= 4
        started = time.monotonic()
        module.process.send_signal(signal.SIGTERM)
        while module.process.poll() is None and time.monotonic() - started < 10:
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        outcomes = await asyncio.gather(*(asyncio.wait_for(call, HANG_S) for call in calls), return_exceptions=True)
        log = module.log()
    assert elapsed < 2.0, f"the module took {elapsed:.2f} s to exit after SIGTERM"
    assert module.process.returncode == 0, (module.process.returncode, log)
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
        started = time.monotonic()
        module.process.send_signal(signal.SIGTERM)
        while module.process.poll() is None and time.monotonic() - started < 10:
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        log = module.log()
    assert elapsed < 2.0 and module.process.returncode == 0, (elapsed, module.process.returncode, log)
    assert "Traceback" not in log, log
