"""The examples in examples/, run unchanged as a user runs them (`.venv/bin/python examples/...`,
VIAM_ADDRESS set, no API key: a local machine) against viam-server."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys

import pytest
from viam.services.vision import VisionClient

from ..conftest import DATA
from ..harness import PROJECT_ROOT
from .machine import readme_blocks

pytestmark = pytest.mark.integration

EXAMPLES = PROJECT_ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from _connect import image_of  # noqa: E402


def local_env(address: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VIAM_API_KEY")} | {"VIAM_ADDRESS": address}


async def run_example(address: str, script: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / script), *args,
        env=local_env(address), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


async def top(machine, image_path=None):
    classifier = VisionClient.from_robot(machine, "classifier")
    if image_path is None:
        (result,) = await classifier.get_classifications_from_camera("cam", 1)
    else:
        (result,) = await classifier.get_classifications(image_of(str(image_path)), 1)
    return result


async def test_sort_parts(viam_server, machine):
    status, out, err = await run_example(viam_server.address, "sort_parts.py", "--good", "espresso", "--min-confidence", "0.8")
    expected = await top(machine)
    assert (status, out) == (0, f"espresso ({expected.confidence:.2f}): pass the part on\n"), err
    assert expected.class_name == "espresso"


async def test_classify_folder(viam_server, machine, tmp_path):
    for name in ("rocket.jpg", "coffee.png"):
        shutil.copy(DATA / name, tmp_path / name)
    status, out, err = await run_example(viam_server.address, "classify_folder.py", "--count", "1", str(tmp_path))
    assert status == 0, err
    rows = ["path,rank,label,confidence"]
    for path in (tmp_path / "coffee.png", tmp_path / "rocket.jpg"):
        expected = await top(machine, path)
        rows.append(f"{path},1,{expected.class_name},{expected.confidence:.4f}")
    assert out.splitlines() == rows
    assert err.strip() == "2 images, 0 failed"


async def test_watch_scene(viam_server, machine):
    """It watches until stopped: its first line, then it is stopped as a user would (Ctrl-C)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "watch_scene.py"), "--interval", "0.1",
        env=local_env(viam_server.address), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
    finally:
        process.send_signal(2)  # SIGINT
        await asyncio.wait_for(process.wait(), 30)
    expected = await top(machine)
    assert first.split(" ", 1)[1] == f"scene: {expected.class_name} ({expected.confidence:.2f})\n", (await process.stderr.read()).decode()


async def test_the_readme_python_snippet_runs_when_pasted(viam_server, machine, tmp_path):
    (snippet,) = [b for b in readme_blocks("python") if "asyncio.run(main())" in b]
    (tmp_path / "snippet.py").write_text(snippet)
    shutil.copy(DATA / "rocket.jpg", tmp_path / "part.jpg")  # a JPEG whose size the SDK misreads
    process = await asyncio.create_subprocess_exec(
        sys.executable, "snippet.py", cwd=tmp_path,
        env=local_env(viam_server.address), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()

    classifier = VisionClient.from_robot(machine, "classifier")
    expected = [f"{c.class_name}: {c.confidence:.2f}" for c in await classifier.get_classifications_from_camera("cam", 3)]
    expected += [
        f"part.jpg: {c.class_name}: {c.confidence:.2f}"
        for c in await classifier.get_classifications(image_of(str(tmp_path / "part.jpg")), 3)
    ]
    assert out.decode().splitlines() == expected
