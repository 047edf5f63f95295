"""The Go SDK through viam-server: the README's Go code (goclient/main.go) gives the answers the
Python client and the Python examples give for the same calls."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from viam.services.vision import VisionClient

from ..conftest import DATA
from ..harness import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "examples"))

from classify_folder import classify_folder  # noqa: E402
from sort_parts import decide  # noqa: E402
from watch_scene import scene_changes  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def goclient(viam_server) -> Path:
    return viam_server.goclient  # built before the session left the network


def run_go(goclient: Path, address: str, *args: str, expect_status: int = 0) -> str:
    # No key in the environment: connect() takes the local route.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIAM_API_KEY")} | {"VIAM_ADDRESS": address}
    ran = subprocess.run([str(goclient), *args], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == expect_status, f"goclient {' '.join(args)}: exit {ran.returncode}\n{ran.stderr}"
    return ran.stdout


async def test_top_classes(goclient, viam_server, machine):
    expected = await VisionClient.from_robot(machine, "classifier").get_classifications_from_camera("cam", 3)
    assert run_go(goclient, viam_server.address, "top").splitlines() == [f"{c.class_name}: {c.confidence:.4f}" for c in expected]


@pytest.mark.parametrize("min_confidence", ["0.8", "0.95"])
async def test_sort_part(goclient, viam_server, machine, min_confidence):
    classifier = VisionClient.from_robot(machine, "classifier")
    expected = await decide(classifier, "cam", float(min_confidence), "espresso")
    answer = run_go(goclient, viam_server.address, "-min-confidence", min_confidence, "-good", "espresso", "sort")
    assert answer.strip() == expected


async def test_watch_scene(goclient, viam_server, machine):
    classifier = VisionClient.from_robot(machine, "classifier")
    expected = [line.split(" ", 1)[1] async for line in scene_changes(classifier, "cam", 0.01, frames=3)]
    lines = run_go(goclient, viam_server.address, "-frames", "3", "-interval", "10ms", "watch").splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == expected
    assert len(expected) == 1 and expected[0].startswith("scene: espresso (")  # a still camera: one scene


async def test_classify_files(goclient, viam_server, machine, tmp_path):
    for name in ("rocket.jpg", "chelsea.png", "coffee.png"):
        shutil.copy(DATA / name, tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    paths = sorted(str(p) for p in tmp_path.iterdir())
    python_csv = io.StringIO()
    assert await classify_folder(VisionClient.from_robot(machine, "classifier"), tmp_path, 2, python_csv) == 1

    go_csv = run_go(goclient, viam_server.address, "-count", "2", "files", *paths, expect_status=1)
    assert go_csv.splitlines() == python_csv.getvalue().splitlines()
    tops = [row.split(",")[2] for row in go_csv.splitlines()[1:] if row.split(",")[1] == "1"]
    assert tops == ["Egyptian cat", "espresso", "missile"]


async def test_call_options(goclient, viam_server, machine):
    classifier = VisionClient.from_robot(machine, "classifier")
    (whole,) = await classifier.get_classifications_from_camera("cam", 1, extra={"smoothing": False})
    (left,) = await classifier.get_classifications_from_camera("cam", 1, extra={"region": [0, 0, 0.5, 1]})
    lines = run_go(goclient, viam_server.address, "options").splitlines()
    assert lines[:2] == [f"this frame: {whole.class_name} ({whole.confidence:.4f})", f"left half: {left.class_name} ({left.confidence:.4f})"]
    assert re.fullmatch(r"calls: map\[.*get_classifications_from_camera:\d+.*\]", lines[2])
