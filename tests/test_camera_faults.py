"""Cameras that fail, send the wrong kind of image or hang, and configs that are wrong: each gets a
clear error that names the camera or the attribute, and the service keeps serving."""

import asyncio

from grpclib import GRPCError, Status
from viam.media.video import CameraMimeType, NamedImage, ViamImage

from .conftest import photo
from .harness import StillCamera, camera_dependency, running_module
from .test_module import expect_error

DEPTH = CameraMimeType.from_string("image/vnd.viam.dep")


async def test_failing_empty_and_depth_cameras_are_named_and_recover():
    cam = StillCamera("cam", photo("rocket.jpg"))
    async with running_module([cam]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
        vision = module.vision()

        cam.error = RuntimeError("USB device unplugged")
        message = await expect_error(vision.get_classifications_from_camera("cam", 1), Status.UNAVAILABLE, "camera 'cam'", "USB device unplugged")
        assert message.startswith("camera 'cam' did not return an image: RuntimeError - USB device unplugged"), message
        assert "Status." not in message  # the camera's own words, not the gRPC error's tuple
        cam.error = None
        cam.no_images = True
        await expect_error(vision.get_classifications_from_camera("cam", 1), Status.UNAVAILABLE, "camera 'cam' returned no images")
        cam.no_images = False

        depth_map = NamedImage("depth", b"DEPTHMAP" + bytes(64), DEPTH)
        cam.frame, cam.extra_images = None, [depth_map]
        await expect_error(
            vision.get_classifications_from_camera("cam", 1),
            Status.INVALID_ARGUMENT,
            "camera 'cam' returned only image/vnd.viam.dep",
            "colour",
        )
        # A depth camera that also sends its colour stream: the colour image is classified, wherever it is.
        cam.frame = photo("rocket.jpg")
        cam.extra_images = [depth_map]
        assert (await vision.get_classifications_from_camera("cam", 1))[0].class_name == "missile"
        cam.frame, cam.extra_images = None, [depth_map, NamedImage("color", photo("coffee.png"), CameraMimeType.PNG)]
        assert (await vision.get_classifications_from_camera("cam", 1))[0].class_name == "espresso"


async def test_a_hanging_camera_times_out_by_name_while_other_calls_go_on():
    """Two services on one hung camera: one waits for it (a limit far away) while calls to another
    camera and with direct images are answered, and its call is answered once the camera is back;
    the other's limit ends its call while the camera is still hung."""
    hung, other = StillCamera("hung", photo("rocket.jpg")), StillCamera("other", photo("coffee.png"), "image/png")
    async with running_module([hung, other]) as module:
        dependencies = [camera_dependency("hung"), camera_dependency("other")]
        await module.add({"camera_names": ["hung", "other"], "camera_timeout_s": 600}, dependencies)
        await module.add({"camera_name": "hung", "camera_timeout_s": 1}, [camera_dependency("hung")], name="impatient")
        vision = module.vision()
        hung.hang = True
        waiting = asyncio.ensure_future(vision.get_classifications_from_camera("hung", 1))
        await hung.wait_until_asked(1)
        for _ in range(3):
            assert (await vision.get_classifications_from_camera("other", 1))[0].class_name == "espresso"
            direct = await vision.get_classifications(ViamImage(photo("rocket.jpg"), CameraMimeType.JPEG), 1)
            assert direct[0].class_name == "missile"
        assert not waiting.done()
        # The limit, not the camera, ends this call: the camera is still hung when it fails.
        impatient = module.vision("impatient")
        await expect_error(
            impatient.get_classifications_from_camera("hung", 1), Status.DEADLINE_EXCEEDED, "camera 'hung'", "within 1 s", "camera_timeout_s"
        )
        assert hung.hang and not waiting.done()
        hung.hang = False
        assert (await waiting)[0].class_name == "missile"
        assert (await impatient.get_classifications_from_camera("hung", 1))[0].class_name == "missile"

        # The camera's side may end the request at the deadline it was given before this side's timer
        # does (viam-server answers "context deadline exceeded"): the same timeout, not UNAVAILABLE.
        hung.error = GRPCError(Status.DEADLINE_EXCEEDED, "context deadline exceeded")
        await expect_error(
            impatient.get_classifications_from_camera("hung", 1), Status.DEADLINE_EXCEEDED, "camera 'hung'", "within 1 s", "camera_timeout_s"
        )


async def test_a_bad_edit_is_rejected_at_validation_and_the_running_service_keeps_serving(tmp_path):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("this is a text file")
    cam = StillCamera("cam", photo("rocket.jpg"))
    async with running_module([cam]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
        vision = module.vision()
        bad_edits = [
            ({"model_path": "/no/such/model.onnx"}, "'model_path'"),
            ({"model_path": str(not_onnx)}, "not a readable ONNX model"),
            ({"head": "maximum"}, "'head'"),
            ({"confidence_threshold": 2}, "'confidence_threshold'"),
            ({"camera_names": "cam"}, "'camera_names'"),
            ({"region": [0, 0, 0, 0]}, "'region'"),
        ]
        for attributes, fragment in bad_edits:
            await expect_error(module.validate({"camera_name": "cam", **attributes}), Status.INVALID_ARGUMENT, fragment)
            assert (await vision.get_classifications_from_camera("cam", 1))[0].class_name == "missile"

        # An unknown attribute is a warning in the log, not an error.
        validated = await module.validate({"camera_name": "cam", "confidence_treshold": 0.5})
        assert list(validated.dependencies) == ["cam"]
        await module.parent_log.wait_for("did you mean 'confidence_threshold'")
        assert "'confidence_treshold' is not recognized; did you mean 'confidence_threshold'" in module.log()


async def test_a_callers_deadline_ends_a_hanging_camera_with_an_answer_that_names_it():
    # The answer comes a margin before the caller's deadline, which would end the call with no reason.
    cam = StillCamera("cam", photo("rocket.jpg"))
    async with running_module([cam]) as module:
        await module.add({"camera_name": "cam"}, [camera_dependency("cam")])  # 'camera_timeout_s' far away
        cam.hang = True
        await expect_error(module.vision().get_classifications_from_camera("cam", 1, timeout=3), Status.DEADLINE_EXCEEDED,
                           "camera 'cam' did not return an image within 2.7", "the call's deadline")
        cam.hang = False
        assert (await module.vision().get_classifications_from_camera("cam", 1))[0].class_name == "missile"
