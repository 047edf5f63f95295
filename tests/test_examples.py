"""The examples' client code, run against the real module (the connection to a cloud machine is
the only part left out: it needs an address and an API key), and the README's client code, which
must be the code that the examples and the integration tier's Go client run."""

import ast
import io
import re
import sys

from PIL import Image
from viam.media.video import CameraMimeType, ViamImage

from .conftest import DATA, photo
from .harness import PROJECT_ROOT, StillCamera, camera_dependency, running_module

README = PROJECT_ROOT / "README.md"
GO_CLIENT = PROJECT_ROOT / "tests" / "integration" / "goclient" / "main.go"

sys.path.insert(0, str(PROJECT_ROOT / "examples"))

from _connect import image_of  # noqa: E402
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


def test_image_of_reads_the_sizes_the_sdk_cannot(tmp_path):
    """The Python SDK 0.85 reads JPEG segment lengths by their first byte only: it gets rocket.jpg's
    size wrong and finds none in a JPEG with more than 255 bytes of EXIF, and then refuses to send it."""
    rocket = DATA / "rocket.jpg"
    assert ViamImage(rocket.read_bytes(), CameraMimeType.JPEG).width == 34008
    image = image_of(str(rocket))
    assert (image.width, image.height, image.mime_type, image.data) == (640, 427, CameraMimeType.JPEG, rocket.read_bytes())

    exif = Image.Exif()
    exif[0x010E] = "an image description longer than 255 bytes " * 8
    with_exif = tmp_path / "with-exif.jpg"
    Image.new("RGB", (64, 48)).save(with_exif, exif=exif)
    assert ViamImage(with_exif.read_bytes(), CameraMimeType.JPEG).width is None
    assert (image_of(str(with_exif)).width, image_of(str(with_exif)).height) == (64, 48)

    png = image_of(str(DATA / "chelsea.png"))
    assert (png.width, png.height, png.mime_type) == (*Image.open(DATA / "chelsea.png").size, CameraMimeType.PNG)


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)


def test_the_readme_go_code_is_the_go_client_that_the_tier_runs():
    """README's Go blocks, in order, are the regions of goclient/main.go between its README markers."""
    regions = re.findall(r"^// README: [\w-]+\n(.*?)^// README: end$", GO_CLIENT.read_text(), re.MULTILINE | re.DOTALL)
    assert len(regions) == 2
    assert [b.rstrip("\n") for b in readme_blocks("go")] == [r.rstrip("\n") for r in regions]


def test_the_readme_python_snippet_connects_and_reads_images_as_the_examples_do():
    """The snippet is self-contained (it runs when pasted; the tier runs it), so its connect() and
    image_of() are copies: they must stay the examples' own."""
    (snippet,) = [b for b in readme_blocks("python") if "asyncio.run(main())" in b]

    def functions(source: str) -> dict[str, str]:
        return {f.name: ast.dump(f) for f in ast.parse(source).body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}

    shared = functions((PROJECT_ROOT / "examples" / "_connect.py").read_text())
    assert {name: functions(snippet)[name] for name in shared} == shared
