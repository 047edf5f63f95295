"""Smoothing, regions, label rules and do_command through the real module protocol."""

import hashlib
import io

import numpy as np
import pytest
from grpclib import Status
from PIL import Image
from viam.media.video import CameraMimeType, ViamImage

from onnx_classifier.paths import BUNDLED_MODEL

from .conftest import encode, photo
from .harness import StillCamera, camera_dependency, running_module
from .test_module import expect_error


def as_dict(classifications):
    return {c.class_name: c.confidence for c in classifications}


async def test_smoothing_averages_frames_and_holds_the_top_label():
    cat, coffee = photo("chelsea.png"), photo("coffee.png")
    camera = StillCamera("cam", cat, "image/png")
    attributes = {"camera_name": "cam", "smoothing_window": 3, "label_hold_frames": 3}
    async with running_module([camera]) as module:
        await module.add(attributes, [camera_dependency("cam")])
        vision = module.vision()

        async def frame(data, **extra):
            camera.frame = data
            return await vision.get_classifications_from_camera("cam", 1000, extra=extra or None)

        # Each photo's own confidences, from raw calls that leave the smoothing state alone.
        raw_cat = as_dict(await frame(cat, smoothing=False))
        raw_coffee = as_dict(await frame(coffee, smoothing=False))
        assert max(raw_cat, key=raw_cat.get) == "Egyptian cat" and max(raw_coffee, key=raw_coffee.get) == "espresso"

        # Three cat frames, two of coffee (a flicker), then cat again.
        sequence = [cat, cat, cat, coffee, coffee, cat, cat, cat]
        windows = [[raw_cat], [raw_cat] * 2, [raw_cat] * 3, [raw_cat, raw_cat, raw_coffee],
                   [raw_cat, raw_coffee, raw_coffee], [raw_coffee, raw_coffee, raw_cat],
                   [raw_coffee, raw_cat, raw_cat], [raw_cat] * 3]
        # The averaged leader is espresso from the first coffee frame (2/3 of 0.38 < 1/3 of 0.84)
        # to the second cat frame after it, three frames in a row at the third: only then is it held.
        held = ["Egyptian cat"] * 5 + ["espresso"] * 3
        for data, window, label in zip(sequence, windows, held):
            results = await frame(data)
            expected = {name: np.mean([w[name] for w in window]) for name in raw_cat}
            assert results[0].class_name == label
            assert results[0].confidence == pytest.approx(expected[label], abs=1e-6)
            rest = results[1:]
            assert [c.confidence for c in rest] == sorted((c.confidence for c in rest), reverse=True)
            for c in results[:10]:
                assert c.confidence == pytest.approx(expected[c.class_name], abs=1e-6)

        # The raw calls in between did not count: and a reset starts the window again.
        assert await vision.do_command({"command": "reset"}) == {"reset": ["stats", "smoothing"]}
        results = await frame(coffee)
        assert results[0].class_name == "espresso"
        assert results[0].confidence == pytest.approx(raw_coffee["espresso"], abs=1e-6)
        await expect_error(frame(coffee, smoothing="no"), Status.INVALID_ARGUMENT, "extra 'smoothing'", "'no'")

        # State belongs to the resource: a reconfigured (closed and new) service starts afresh.
        await frame(cat)
        await module.remove()
        await module.add(attributes, [camera_dependency("cam")])
        vision = module.vision()
        results = await frame(coffee)
        assert results[0].confidence == pytest.approx(raw_coffee["espresso"], abs=1e-6)


async def test_regions_from_attributes_per_camera_and_per_call():
    cat = Image.open(io.BytesIO(photo("chelsea.png"))).convert("RGB")
    coffee = Image.open(io.BytesIO(photo("coffee.png"))).convert("RGB").resize(cat.size)
    both = Image.new("RGB", (cat.width * 2, cat.height))
    both.paste(coffee, (0, 0))
    both.paste(cat, (cat.width, 0))
    frame = encode(both)
    left, right = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]
    cameras = [StillCamera("a", frame, "image/png"), StillCamera("b", frame, "image/png")]
    attributes = {"camera_names": ["a", "b"], "region": left, "regions_by_camera": {"b": right}}
    async with running_module(cameras) as module:
        await module.add(attributes, [camera_dependency("a"), camera_dependency("b")])
        vision = module.vision()
        assert (await vision.get_classifications_from_camera("a", 1))[0].class_name == "espresso"
        assert (await vision.get_classifications_from_camera("b", 1))[0].class_name == "Egyptian cat"
        per_call = await vision.get_classifications_from_camera("a", 1, extra={"region": right})
        assert per_call[0].class_name == "Egyptian cat"
        image = ViamImage(frame, CameraMimeType.PNG)
        assert (await vision.get_classifications(image, 1))[0].class_name == "espresso"  # the service's region
        assert (await vision.get_classifications(image, 1, extra={"region": right}))[0].class_name == "Egyptian cat"
        for bad, fragment in [([0.5, 0, 0.5, 1], "x_min < x_max"), ([0, 0, 1.5, 1], "x_max <= 1"), ("left", "'left'")]:
            await expect_error(
                vision.get_classifications(image, 1, extra={"region": bad}), Status.INVALID_ARGUMENT, "extra 'region'", fragment
            )


async def test_label_rules_through_the_service():
    camera = StillCamera("cam", photo("coffee.png"), "image/png")
    async with running_module([camera]) as module:
        await module.add(
            {"camera_name": "cam", "confidence_threshold": 0.02, "label_confidences": {"espresso": 0.9}, "blocked_labels": ["cup"]},
            [camera_dependency("cam")],
        )
        results = as_dict(await module.vision().get_classifications_from_camera("cam", 5))
        # espresso (0.84) misses its own 0.9, cup is blocked, coffee mug (0.03) passes the general 0.02.
        assert "espresso" not in results and "cup" not in results and "coffee mug" in results
        await module.remove()
        await module.add({"camera_name": "cam", "allowed_labels": ["cup", "coffee mug"]}, [camera_dependency("cam")])
        assert list(as_dict(await module.vision().get_classifications_from_camera("cam", 5))) == ["cup", "coffee mug"]
        validation = module.validate({"allowed_labels": ["expresso"]})
        await expect_error(validation, Status.INVALID_ARGUMENT, "'allowed_labels'", "'expresso'", "did you mean 'espresso'")


async def test_do_command_info_stats_reset_and_unknown():
    camera = StillCamera("cam", photo("rocket.jpg"))
    async with running_module([camera]) as module:
        await module.add({"camera_name": "cam", "confidence_threshold": 0.1}, [camera_dependency("cam")])
        vision = module.vision()

        info = await vision.do_command({"command": "info"})
        assert info["model_path"] == str(BUNDLED_MODEL)
        assert info["model_sha256"] == hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()
        assert info["input"]["shape"][1:] == [3, 224, 224] and info["input"]["type"] == "tensor(float)"
        assert info["input"]["layout"] == "NCHW" and info["output"]["name"] == "logits"
        assert info["backend"] == "onnxruntime" and info["labels"] == {
            "count": 1000,
            "first": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"],
            "source": f"model sidecar {str(BUNDLED_MODEL.with_suffix('.json'))!r} key 'labels_path'",
        }
        assert info["head"]["in_use"] == "softmax" and info["head"]["reason"].startswith("auto")
        assert info["preprocessing"]["resize"] == "center_crop" and info["preprocessing"]["input_size"] == [224, 224]
        assert info["providers"] == {"requested": ["CPUExecutionProvider"], "in_use": ["CPUExecutionProvider"]}
        assert info["threads"]["intra_op"] >= 1 and info["threads"]["spinning"] is False
        assert info["service"]["cameras"] == ["cam"] and info["service"]["confidence_threshold"] == 0.1

        for _ in range(3):
            await vision.get_classifications_from_camera("cam", 1)
        await vision.get_classifications(ViamImage(photo("coffee.png"), CameraMimeType.PNG), 1)
        junk = ViamImage(b"not an image", CameraMimeType.PNG)
        junk._width, junk._height = 4, 4  # the client insists on dimensions; the bytes are what is tested
        await expect_error(vision.get_classifications(junk, 1), Status.INVALID_ARGUMENT)
        await expect_error(vision.get_classifications_from_camera("nope", 1), Status.NOT_FOUND)

        stats = await vision.do_command({"command": "stats"})
        assert stats["calls"] == {"get_classifications_from_camera": 4, "get_classifications": 2}
        assert stats["errors"] == {"INVALID_ARGUMENT": 1, "NOT_FOUND": 1}
        latency = stats["latency"]
        assert latency["fetch"]["samples"] == 3 and latency["inference"]["samples"] == 4 and latency["total"]["samples"] == 4
        for stage in ("fetch", "decode", "preprocess", "inference", "postprocess", "total"):
            assert 0 < latency[stage]["p50_ms"] <= latency[stage]["p99_ms"] <= latency[stage]["max_ms"]

        await vision.do_command({"command": "reset"})
        assert (await vision.do_command({"command": "stats"}))["calls"] == {}
        for command in ({"command": "explode"}, {}):
            await expect_error(vision.do_command(command), Status.INVALID_ARGUMENT, "'info', 'stats', 'reset'")
