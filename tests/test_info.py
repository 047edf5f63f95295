"""Through the real module protocol: do_command "info" as a Python client receives it (the
configuration as set, with no None turned into 0 on the way, and what the CLI's --info prints),
and a model sidecar's unknown key as a warning in the log, as an unknown attribute is."""

import asyncio
import json

from onnx_classifier import cli
from onnx_classifier.config import parse_service_config

from . import onnx_models
from .harness import StillCamera, camera_dependency, running_module
from .test_cli import SMALL_LABELS

MODEL_IN_DATA = "$VIAM_MODULE_DATA/small.onnx"
# Nothing optional set: no default camera, no region, no allowed labels.
BARE = {"model_path": MODEL_IN_DATA}
FULL = {
    "model_path": MODEL_IN_DATA,
    "camera_name": "front",
    "camera_names": ["back"],
    "region": [0.25, 0, 1, 0.5],
    "regions_by_camera": {"back": [0, 0, 0.5, 0.5]},
    "smoothing_window": 3,
    "label_confidences": {"green": 0.5},
    "allowed_labels": ["green", "plain"],
    "blocked_labels": ["plain"],
}


def nones(value, where="info"):
    """Every place in a JSON value that holds None."""
    if value is None:
        return [where]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in nones(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in nones(item, f"{where}[{i}]")]
    return []


def cli_info(capsys, attributes):
    status = cli.main(["--info", "--attributes", json.dumps(attributes)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


async def test_info_arrives_without_none_stand_ins_and_matches_the_cli(tmp_path, monkeypatch, capsys):
    onnx_models.build(tmp_path / "small.onnx", sidecar={"labels": SMALL_LABELS})
    monkeypatch.setenv("VIAM_MODULE_DATA", str(tmp_path))  # for parse_service_config and the CLI here
    bare_summary = parse_service_config(BARE).summary()
    assert nones(bare_summary) == []
    assert not {"default_camera", "region", "allowed_labels"} & set(bare_summary)

    cameras = [StillCamera("front", None), StillCamera("back", None)]
    async with running_module(cameras, env={"VIAM_MODULE_DATA": str(tmp_path)}) as module:
        await module.add(BARE, name="bare")
        await module.add(FULL, [camera_dependency("front"), camera_dependency("back")], name="full")
        for name, attributes in (("bare", BARE), ("full", FULL)):
            received = await module.vision(name).do_command({"command": "info"})
            assert received["model_path"] == str(tmp_path / "small.onnx")
            # Struct numbers are doubles (1 arrives as 1.0), which compare equal; a None would arrive as 0.
            assert received["service"] == parse_service_config(attributes).summary()
            assert received == cli_info(capsys, attributes)

    full = received["service"]
    assert full["default_camera"] == "front" and full["region"] == [0.25, 0, 1, 0.5]
    assert full["allowed_labels"] == ["green", "plain"] and full["regions_by_camera"] == {"back": [0, 0, 0.5, 0.5]}


async def test_an_unknown_sidecar_key_is_a_warning_in_the_log_not_a_validation_error(tmp_path):
    model = onnx_models.build(tmp_path / "small.onnx", sidecar={"labels": SMALL_LABELS, "hed": "sigmoid"})
    expected = f"model sidecar {str(model.with_suffix('.json'))!r} key 'hed' is not recognized; did you mean 'head'? (ignored)"
    async with running_module([]) as module:
        validated = await module.validate({"model_path": str(model)})
        assert list(validated.dependencies) == []
        for _ in range(100):  # the log line travels to the parent on its own
            if expected in module.log():
                break
            await asyncio.sleep(0.05)
        assert f"vision service 'classifier': {expected}" in module.log()
