"""README's JSON: every block is valid JSON, and every config of this module's service in it is one
the module accepts, with no attribute it would ignore."""

import json
import re

import pytest

from onnx_classifier.config import parse_service_config

from .harness import MODEL, PROJECT_ROOT

JSON_BLOCKS = re.findall(r"```json\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), re.S)


def services_of_this_module(value):
    """Every object in `value` whose model is this module's vision service."""
    if isinstance(value, dict):
        if value.get("model") == MODEL:
            yield value
        for child in value.values():
            yield from services_of_this_module(child)
    elif isinstance(value, list):
        for child in value:
            yield from services_of_this_module(child)


def test_readme_has_machine_configs_for_the_ml_model_service_backend():
    configs = [json.loads(block) for block in JSON_BLOCKS]
    sources = [service["attributes"].get("mlmodel_name") for config in configs for service in services_of_this_module(config)]
    assert "parts-model" in sources and "gpu-host:triton" in sources


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[f"block{i}" for i in range(len(JSON_BLOCKS))])
def test_every_json_block_parses_and_its_service_configs_are_accepted(block):
    config = json.loads(block)
    for service in services_of_this_module(config):
        parsed = parse_service_config(service.get("attributes", {}))
        assert parsed.warnings == (), parsed.warnings
