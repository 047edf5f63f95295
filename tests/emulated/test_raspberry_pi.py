"""The Raspberry Pi tier: the offline bundle for linux/arm64 Python 3.11 in an arm64 Debian bookworm
root, installed with no network, then `run.sh classify` and the module protocol on an emulated Pi."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from viam.media.video import CameraMimeType, ViamImage

from ..conftest import DATA, photo
from ..harness import PROJECT_ROOT, StillCamera, camera_dependency, running_module
from .arm64 import MODULE_DIR, command_in_root, run_in_root

pytestmark = pytest.mark.emulated

PHOTOS = ("coffee.png", "rocket.jpg", "chelsea.png", "astronaut.jpg", "coins.png")


def test_the_offline_bundle_installs_with_no_network_whatever_pips_settings_say(installed):
    output = installed.stdout + installed.stderr
    assert "installing from the bundled wheels (no network needed)" in output
    assert "environment ready" in output
    # pip followed neither /etc/pip.conf's find-links and extra index nor PIP_FIND_LINKS.
    assert "WARNING" not in output and "find-links" not in output and "piwheels" not in output, output


def classify_json(command: list[str], photos: list[Path]) -> dict[str, list[tuple[str, float]]]:
    done = subprocess.run(command + ["classify", "--format", "json", "-n", "5", *map(str, photos)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {Path(line["path"]).name: [(c["label"], c["confidence"]) for c in line["classifications"]] for line in lines}


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_classify_on_a_pi_gives_the_top_five_of_x86(arm64_root, installed, cpu):
    inside = arm64_root / "tmp" / "photos"
    inside.mkdir(exist_ok=True)
    for name in PHOTOS:
        shutil.copy(DATA / name, inside)
    on_pi = classify_json(command_in_root(arm64_root, [f"{MODULE_DIR}/run.sh"], cpu), [Path("/tmp/photos") / n for n in PHOTOS])
    here = classify_json([str(PROJECT_ROOT / "run.sh")], [DATA / n for n in PHOTOS])
    assert on_pi.keys() == here.keys() == set(PHOTOS)
    for name in PHOTOS:
        assert [label for label, _ in on_pi[name]] == [label for label, _ in here[name]], name
        assert all(abs(a - b) <= 1e-4 for (_, a), (_, b) in zip(on_pi[name], here[name])), (name, on_pi[name], here[name])


def test_the_module_serves_its_protocol_on_a_pi(arm64_root, installed):
    async def serve():
        # The module's socket and its parent's live in one folder, bound into the root at the same path.
        with tempfile.TemporaryDirectory(prefix="oc-pi-", dir="/tmp") as tmp:
            sockets = Path(tmp)
            command = command_in_root(arm64_root, [f"{MODULE_DIR}/run.sh"], "cortex-a72", binds=[sockets])
            camera = StillCamera("cam", photo("rocket.jpg"))
            async with running_module([camera], command, startup_timeout_s=300, folder=sockets) as module:
                await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
                vision = module.vision()
                from_camera = await vision.get_classifications_from_camera("cam", 3, timeout=120)
                assert from_camera[0].class_name == "missile"
                cat = await vision.get_classifications(ViamImage(photo("chelsea.png"), CameraMimeType.PNG), 3, timeout=120)
                assert cat[0].class_name in {"Egyptian cat", "tabby", "tiger cat"}
                assert all(0 <= c.confidence <= 1 for c in from_camera + cat)
                assert [c.confidence for c in cat] == sorted((c.confidence for c in cat), reverse=True)
                info = await vision.do_command({"command": "info"}, timeout=60)
                assert info["backend"] == "onnxruntime"
                assert info["cpu"]["architecture"] == "aarch64"
                assert info["cpu"]["int8_kernels"].startswith("ARM64 without dot product")

    asyncio.run(serve())
