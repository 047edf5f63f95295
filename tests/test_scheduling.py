"""How frames share the cores: a frame alone runs the model on every thread; frames classified at the
same time each run it on one thread, which costs less CPU in all."""

import asyncio

import numpy as np

from onnx_classifier import Classifier, parse_service_config

from . import onnx_models
from .conftest import solid

COLOURS = [(200, 40, 90), (10, 220, 30), (90, 90, 250), (128, 128, 128)]


async def test_frames_classified_together_run_on_one_thread_each_with_the_same_answers(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx", size=(64, 64))
    classifier = Classifier.from_onnx_file(parse_service_config({"model_path": str(path), "num_threads": 2}).classifier)
    runtime = classifier.backend
    alone = [await classifier.score(solid(c), None, None, {}) for c in COLOURS]
    assert runtime.single_thread_runs == 0 and classifier.in_flight == 0

    together = await asyncio.gather(*(classifier.score(solid(c), None, None, {}) for c in COLOURS))
    # The first of them reaches the model while the others are still in flight.
    assert runtime.single_thread_runs >= 1 and classifier.in_flight == 0
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert classifier.info()["threads"]["single_thread_runs"] == runtime.single_thread_runs


async def test_a_model_on_one_thread_needs_no_second_session(tmp_path):
    path = onnx_models.build(tmp_path / "m.onnx")
    classifier = Classifier.from_onnx_file(parse_service_config({"model_path": str(path), "num_threads": 1}).classifier)
    await asyncio.gather(*(classifier.score(solid(c), None, None, {}) for c in COLOURS))
    assert classifier.backend.single_thread_runs == 0 and classifier.backend._single_thread is None
