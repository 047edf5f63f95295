"""Large frames through viam-server, whose gRPC messages may be at most 32 MiB (go.viam.com/utils
rpc.MaxMessageSize): a 4K PNG and a 12 MP JPEG pass with the direct answers; a bigger message is
refused by viam-server itself with RESOURCE_EXHAUSTED, before the module sees it."""

from __future__ import annotations

import numpy as np
import pytest
from grpclib import GRPCError, Status
from PIL import Image
from viam.services.vision import VisionClient

from bench.frames import busy_frame, encoded

from ..harness import StillCamera, running_module
from .machine import image_from_bytes

pytestmark = pytest.mark.integration

VIAM_SERVER_MAX_MESSAGE = 1 << 25


def pairs(classifications) -> list[tuple[str, float]]:
    return [(c.class_name, round(c.confidence, 6)) for c in classifications]


@pytest.mark.parametrize("size, image_format", [((3840, 2160), "PNG"), ((4000, 3000), "JPEG")])
async def test_large_frames_pass_through_viam_server(machine, size, image_format):
    data = encoded(busy_frame(*size), image_format)
    if image_format == "PNG":
        assert len(data) > 4 << 20  # above gRPC's default limit of 4 MiB, which viam-server raises
    async with running_module([StillCamera("cam", None)]) as module:
        await module.add({"confidence_threshold": 0.1}, [])
        direct = pairs(await module.vision().get_classifications(image_from_bytes(data), 3))
    through = await VisionClient.from_robot(machine, "classifier").get_classifications(image_from_bytes(data), 3)
    assert pairs(through) == direct


async def test_a_frame_over_the_message_limit_is_refused_by_viam_server(machine):
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "PNG")
    assert len(data) > VIAM_SERVER_MAX_MESSAGE
    with pytest.raises(GRPCError) as raised:
        await VisionClient.from_robot(machine, "classifier").get_classifications(image_from_bytes(data), 3)
    assert raised.value.status == Status.RESOURCE_EXHAUSTED
    assert str(VIAM_SERVER_MAX_MESSAGE) in raised.value.message
