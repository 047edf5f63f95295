"""The Python SDK through viam-server: the same answers as the module gives its Python parent robot
(tests/harness.py) for the same bytes, and errors that keep their status."""

from __future__ import annotations

import pytest
from grpclib import GRPCError, Status
from PIL import Image
from viam.components.camera import Camera
from viam.media.video import CameraMimeType, ViamImage
from viam.services.vision import Vision, VisionClient

from ..conftest import encode, photo
from ..harness import StillCamera, camera_dependency, running_module
from .machine import image_from_bytes, readme_local_machine, service

pytestmark = pytest.mark.integration


def pairs(classifications) -> list[tuple[str, float]]:
    return [(c.class_name, round(c.confidence, 6)) for c in classifications]


async def camera_frame(machine, name: str) -> bytes:
    """The frame a camera serves through viam-server (image_file re-encodes its photo as JPEG)."""
    images, _ = await Camera.from_robot(machine, name).get_images()
    return images[0].data


async def direct_answers(frame: bytes, count: int) -> dict:
    """The module under the Python parent robot with the tier's attributes, a camera serving `frame`."""
    attributes = service(readme_local_machine(), "classifier")["attributes"] | {"camera_names": ["no-file-cam"]}
    cameras = [StillCamera("cam", frame, "image/jpeg"), StillCamera("no-file-cam", None)]
    async with running_module(cameras) as module:
        await module.add(attributes, [camera_dependency(c.name) for c in cameras])
        vision = module.vision()
        return {
            "camera": pairs(await vision.get_classifications_from_camera("cam", count)),
            "image": pairs(await vision.get_classifications(image_from_bytes(frame), count)),
            "properties": await vision.get_properties(),
            "info": await vision.do_command({"command": "info"}),
        }


async def test_answers_through_viam_server_equal_the_direct_ones(machine):
    frame = await camera_frame(machine, "cam")
    direct = await direct_answers(frame, 5)
    classifier = VisionClient.from_robot(machine, "classifier")

    from_camera = pairs(await classifier.get_classifications_from_camera("cam", 5))
    assert from_camera == direct["camera"]
    assert from_camera[0][0] == "espresso"  # the README's camera serves tests/data/coffee.png
    assert pairs(await classifier.get_classifications(image_from_bytes(frame), 5)) == direct["image"]
    assert await classifier.get_properties() == direct["properties"]
    assert await classifier.get_properties() == Vision.Properties(
        classifications_supported=True, detections_supported=False, object_point_clouds_supported=False, default_camera="cam"
    )
    assert await classifier.do_command({"command": "info"}) == direct["info"]


async def test_a_photo_file_through_viam_server(machine):
    classifier = VisionClient.from_robot(machine, "classifier")
    png = photo("chelsea.png")
    camera = StillCamera("cam", png, "image/png")
    async with running_module([camera]) as module:
        await module.add({"confidence_threshold": 0.1}, [])
        direct = pairs(await module.vision().get_classifications(image_from_bytes(png), 3))
    assert pairs(await classifier.get_classifications(image_from_bytes(png), 3)) == direct
    assert direct[0][0] == "Egyptian cat"


async def test_stats_count_the_calls_made_through_viam_server(machine):
    classifier = VisionClient.from_robot(machine, "classifier")
    await classifier.do_command({"command": "reset"})
    await classifier.get_classifications_from_camera("cam", 1)
    await classifier.get_classifications(image_from_bytes(photo("coffee.png")), 1)
    with pytest.raises(GRPCError):
        await classifier.get_classifications_from_camera("not-a-camera", 1)
    stats = await classifier.do_command({"command": "stats"})
    # The data manager's captures (CaptureAllFromCamera) may land in between; they are counted apart.
    assert stats["calls"]["get_classifications_from_camera"] == 2
    assert stats["calls"]["get_classifications"] == 1
    assert stats["errors"] == {"NOT_FOUND": 1}


@pytest.mark.parametrize(
    "call, status, message",
    [
        ("truncated_jpeg", Status.INVALID_ARGUMENT, "image: cannot decode the JPEG data: the data ends early (truncated)"),
        ("bad_region", Status.INVALID_ARGUMENT, "extra 'region' must be [x_min, y_min, x_max, y_max]"),
        ("unknown_command", Status.INVALID_ARGUMENT, "unknown command 'x'"),
        ("unknown_camera", Status.NOT_FOUND, "camera 'not-a-camera' is not configured for this service"),
        ("camera_without_file", Status.UNAVAILABLE, "camera 'no-file-cam' did not return an image"),
        ("detections", Status.UNIMPLEMENTED, ""),
    ],
)
async def test_errors_keep_their_status_across_viam_server(machine, call, status, message):
    classifier = VisionClient.from_robot(machine, "classifier")
    calls = {
        "truncated_jpeg": lambda: classifier.get_classifications(image_from_bytes(photo("rocket.jpg")[:6000]), 1),
        "bad_region": lambda: classifier.get_classifications_from_camera("cam", 1, extra={"region": [0.5, 0, 0.2, 1]}),
        "unknown_command": lambda: classifier.do_command({"command": "x"}),
        "unknown_camera": lambda: classifier.get_classifications_from_camera("not-a-camera", 1),
        "camera_without_file": lambda: classifier.get_classifications_from_camera("no-file-cam", 1),
        "detections": lambda: classifier.get_detections_from_camera("cam"),
    }
    with pytest.raises(GRPCError) as raised:
        await calls[call]()
    assert raised.value.status == status
    assert message in raised.value.message


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "must provide image bytes to construct a named image from bytes"),
        (b"neither JPEG nor PNG", "could not decode image config: image: unknown format"),
    ],
)
async def test_viam_server_refuses_bytes_it_cannot_read_before_the_module_sees_them(machine, data, message):
    """viam-server reads an image's header (Go's image.DecodeConfig) before passing it on: empty bytes
    and formats Go has no decoder for fail there, UNKNOWN, not INVALID_ARGUMENT from the module as
    under the Python parent. Formats Go reads (GIF) still reach the module and its message."""
    image = ViamImage(data, CameraMimeType.JPEG)
    image._width, image._height = 1, 1
    with pytest.raises(GRPCError) as raised:
        await VisionClient.from_robot(machine, "classifier").get_classifications(image, 1)
    assert (raised.value.status, raised.value.message) == (Status.UNKNOWN, message)

    gif = image_from_bytes(encode(Image.new("RGB", (8, 8)), "GIF"))
    with pytest.raises(GRPCError) as raised:
        await VisionClient.from_robot(machine, "classifier").get_classifications(gif, 1)
    assert raised.value.status == Status.INVALID_ARGUMENT
    assert raised.value.message.startswith("image: unsupported image format: a GIF image")


async def test_a_camera_error_through_viam_server_reads_plainly(machine):
    with pytest.raises(GRPCError) as raised:
        await VisionClient.from_robot(machine, "classifier").get_classifications_from_camera("no-file-cam", 1)
    assert raised.value.message.startswith("camera 'no-file-cam' did not return an image: camera server GetImages")
    assert "no such file or directory" in raised.value.message
    assert "Status." not in raised.value.message
