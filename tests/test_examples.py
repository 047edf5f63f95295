"""The examples' client code, run against the real module (the connection to a cloud machine is
the only part left out: it needs an address and an API key)."""

import io
import sys

from .conftest import DATA, photo
from .harness import PROJECT_ROOT, StillCamera, camera_dependency, running_module

sys.path.insert(0, str(PROJECT_ROOT / "examples"))

from classify_folder import classify_folder  # noqa: E402
from sort_parts import decide  # noqa: E402
from watch_scene import scene_changes  # noqa: E402


async def test_examples_against_the_module(tmp_path):
    camera = StillCamera("cam", photo("coffee.png"), "image/png")
    async with running_module([camera]) as module:
        await module.add({"camera_name": "cam", "smoothing_window": 3, "label_hold_frames": 2}, [camera_dependency("cam")])
        vision = module.vision()

        assert await decide(vision, "cam", 0.8, "espresso") == "espresso (0.84): pass the part on"
        assert (await decide(vision, "cam", 0.95, "espresso")).startswith("unsure (espresso at 0.8")

        await vision.do_command({"command": "reset"})
        lines = []
        async for line in scene_changes(vision, "cam", 0.0, frames=6):
            lines.append(line.split(" ", 1)[1])
            camera.frame = photo("chelsea.png")  # the scene changes after the first frame
        assert lines == ["scene: espresso (0.84)", "scene: Egyptian cat (0.38)"]

        folder = tmp_path / "captures"
        folder.mkdir()
        for name in ("rocket.jpg", "chelsea.png"):
            (folder / name).write_bytes((DATA / name).read_bytes())
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
        out = io.StringIO()
        assert await classify_folder(vision, folder, 1, out) == 1
        rows = out.getvalue().splitlines()
        assert rows[0] == "path,rank,label,confidence"
        assert [r.split(",")[2] for r in rows[1:]] == ["Egyptian cat", "missile"]
