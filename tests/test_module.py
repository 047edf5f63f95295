"""The module protocol end to end: the module as a subprocess on a unix socket, a parent robot
served by the SDK's Server with real cameras, driven as viam-server drives a module."""

import asyncio
import struct

import pytest
from grpclib import GRPCError, Status
from PIL import Image
from viam.media.video import CameraMimeType, ViamImage
from viam.proto.module import ReconfigureResourceRequest

from .conftest import DATA, encode, photo
from .harness import MODEL, StillCamera, camera_dependency, running_module, service_config

CATS = {"Egyptian cat", "tabby", "tiger cat"}
CAMERAS = {"camera_name": "front", "camera_names": ["back"]}
DEPENDENCIES = [camera_dependency("front"), camera_dependency("back")]


def rocket_and_coffee_cameras():
    return StillCamera("front", photo("rocket.jpg")), StillCamera("back", photo("coffee.png"), "image/png")


async def expect_error(call, status, *fragments):
    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status == status, caught.value
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


async def test_ready_validate_add_classify_remove_add_again():
    front, back = rocket_and_coffee_cameras()
    async with running_module([front, back]) as module:
        ready = await module.ready(module.socket_path.parent / "parent.sock")
        models = [m for h in ready.handlermap.handlers for m in h.models]
        assert ready.ready and models == [MODEL]

        validated = await module.validate(CAMERAS)
        assert list(validated.dependencies) == ["front", "back"]
        await module.add(CAMERAS, DEPENDENCIES)
        vision = module.vision()

        from_front = await vision.get_classifications_from_camera("front", 2)
        assert [c.class_name for c in from_front] == ["missile", "projectile"]
        from_default = await vision.get_classifications_from_camera("", 2)
        assert [c.class_name for c in from_default] == ["missile", "projectile"]
        from_back = await vision.get_classifications_from_camera("back", 1)
        assert from_back[0].class_name == "espresso"

        # The Python client labels every image image/jpeg; a PNG must still be read as PNG.
        cat = await vision.get_classifications(ViamImage(photo("chelsea.png"), CameraMimeType.PNG), 3)
        assert {c.class_name for c in cat} == CATS
        confidences = [c.confidence for c in cat]
        assert confidences == sorted(confidences, reverse=True) and all(0 <= c <= 1 for c in confidences)

        await module.remove()
        await expect_error(vision.get_classifications_from_camera("front", 1), Status.NOT_FOUND)
        await module.add(CAMERAS, DEPENDENCIES)
        assert (await vision.get_classifications_from_camera("front", 1))[0].class_name == "missile"


async def test_cameras_by_name_errors_and_properties():
    front, back = rocket_and_coffee_cameras()
    async with running_module([front, back]) as module:
        await module.add(CAMERAS, DEPENDENCIES)
        vision = module.vision()
        await expect_error(
            vision.get_classifications_from_camera("side", 1),
            Status.NOT_FOUND,
            "camera 'side' is not configured",
            "'front', 'back'",
        )
        properties = await vision.get_properties()
        assert properties.classifications_supported and not properties.detections_supported
        assert not properties.object_point_clouds_supported and properties.default_camera == "front"

        front.error = RuntimeError("lens cap on")
        await expect_error(vision.get_classifications_from_camera("front", 1), Status.UNAVAILABLE, "'front'", "lens cap on")
        front.error = None
        front.no_images = True
        await expect_error(vision.get_classifications_from_camera("front", 1), Status.UNAVAILABLE, "'front'", "no images")
        front.no_images = False
        front.frame = b"\xff\xd8\xff garbage"
        await expect_error(vision.get_classifications_from_camera("front", 1), Status.INVALID_ARGUMENT, "camera 'front'", "JPEG")
        front.frame = photo("rocket.jpg")
        assert (await vision.get_classifications_from_camera("front", 1))[0].class_name == "missile"


async def test_no_default_camera():
    async with running_module([StillCamera("front", photo("rocket.jpg"))]) as module:
        await module.add({"camera_names": ["front"]}, [camera_dependency("front")])
        vision = module.vision()
        await expect_error(vision.get_classifications_from_camera("", 1), Status.INVALID_ARGUMENT, "'camera_name'")
        assert (await vision.get_classifications_from_camera("front", 1))[0].class_name == "missile"
        assert (await vision.get_properties()).default_camera == ""


async def test_bad_images_are_invalid_argument_and_the_service_keeps_serving():
    async with running_module([]) as module:
        await module.add({})
        vision = module.vision()
        rgba = Image.open(DATA / "coffee.png").convert("RGBA")
        raw = b"RGBA" + struct.pack(">II", *rgba.size) + rgba.tobytes()
        assert (await vision.get_classifications(ViamImage(raw, CameraMimeType.VIAM_RGBA), 1))[0].class_name == "espresso"
        truncated = photo("rocket.jpg")[:3000]
        junk = encode(Image.new("RGB", (4, 4)), "GIF")
        for data, fragment in [(truncated, "cannot decode"), (junk, "unsupported image format")]:
            image = ViamImage(data, CameraMimeType.PNG)
            image._width, image._height = 4, 4  # the client insists on dimensions; the bytes are what is tested
            await expect_error(vision.get_classifications(image, 1), Status.INVALID_ARGUMENT, fragment)
        good = await vision.get_classifications(ViamImage(photo("rocket.jpg"), CameraMimeType.JPEG), 1)
        assert good[0].class_name == "missile"


async def test_count_bounds_and_threshold():
    async with running_module([]) as module:
        await module.add({"confidence_threshold": 0.1})
        vision = module.vision()
        image = ViamImage(photo("chelsea.png"), CameraMimeType.PNG)
        assert await vision.get_classifications(image, 0) == []
        assert await vision.get_classifications(image, -1) == []
        above = await vision.get_classifications(image, 5000)
        assert 1 <= len(above) < 1000 and all(c.confidence >= 0.1 for c in above)
        await module.remove()
        await module.add({})
        assert len(await vision.get_classifications(image, 5000)) == 1000


async def test_capture_all_from_camera_returns_what_a_classifier_can():
    async with running_module([StillCamera("cam", photo("rocket.jpg"))]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
        result = await module.vision().capture_all_from_camera(
            "cam",
            return_image=True,
            return_classifications=True,
            return_detections=True,
            return_object_point_clouds=True,
            return_detections_3d=True,
        )
        assert result.image is not None and result.image.data == photo("rocket.jpg")
        assert result.classifications[0].class_name == "missile" and len(result.classifications) == 5
        assert not result.detections and not result.objects and not result.detections_3d


@pytest.mark.parametrize(
    "method, args",
    [
        ("get_detections_from_camera", ("cam",)),
        ("get_object_point_clouds", ("cam",)),
        ("get_detections_3d", ("cam",)),
    ],
)
async def test_other_vision_methods_are_unimplemented(method, args):
    async with running_module([StillCamera("cam", photo("rocket.jpg"))]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
        await expect_error(getattr(module.vision(), method)(*args), Status.UNIMPLEMENTED, method)
        image = ViamImage(photo("rocket.jpg"), CameraMimeType.JPEG)
        await expect_error(module.vision().get_detections(image), Status.UNIMPLEMENTED, "get_detections")


async def test_validate_config_rejects_bad_attributes_with_invalid_argument():
    async with running_module([]) as module:
        message = await expect_error(module.validate({"head": "max"}), Status.INVALID_ARGUMENT, "attribute 'head'", "'max'")
        assert message.startswith("attribute 'head'")
        await expect_error(module.validate({"model_path": "/no/such.onnx"}), Status.INVALID_ARGUMENT, "'/no/such.onnx'")
        await expect_error(module.validate({"camera_names": "cam"}), Status.INVALID_ARGUMENT, "'camera_names'")


async def test_reconfigure_and_concurrent_requests():
    async with running_module([StillCamera("cam", photo("rocket.jpg"))]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
        vision = module.vision()
        image = ViamImage(photo("chelsea.png"), CameraMimeType.PNG)
        results = await asyncio.gather(*(vision.get_classifications(image, 1) for _ in range(8)))
        assert [[c.class_name for c in r] for r in results] == [["Egyptian cat"]] * 8
        assert len({r[0].confidence for r in results}) == 1
        await module.stub.ReconfigureResource(
            ReconfigureResourceRequest(
                config=service_config("classifier", {"camera_name": "cam", "confidence_threshold": 0.5}),
                dependencies=[camera_dependency("cam")],
            )
        )
        assert await vision.get_classifications(image, 3) == []  # no cat reaches 0.5
