"""The registry package: build.sh's tarball, unpacked into an empty folder, started through run.sh."""

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from viam.media.video import CameraMimeType, ViamImage

from .conftest import DATA, photo
from .harness import PROJECT_ROOT, StillCamera, camera_dependency, running_module

REQUIRED = {"run.sh", "meta.json", "pyproject.toml", "src/onnx_classifier/service.py", "models/efficientnet_lite0.onnx"}


@pytest.fixture(scope="module")
def unpacked():
    subprocess.run(["./build.sh"], cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=120)
    with tempfile.TemporaryDirectory(prefix="oc-pkg-") as tmp:
        folder = Path(tmp)
        with tarfile.open(PROJECT_ROOT / "module.tar.gz") as tar:
            names = set(tar.getnames())
            # The "data" filter exists from Python 3.10.12 and 3.11.4 on.
            tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        assert REQUIRED <= names
        assert not any("__pycache__" in n or n.startswith(".venv") for n in names)
        yield folder


def test_two_first_starts_race_safely_then_the_module_serves(unpacked):
    # Both starts find no environment; one builds it while the other waits for the lock.
    starts = [
        subprocess.Popen(
            [str(unpacked / "run.sh"), "classify", "-n", "1", str(DATA / "coffee.png")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in starts]
    for process, (out, err) in zip(starts, outputs):
        assert process.returncode == 0, err
        assert out.strip().startswith("espresso: ")
    assert sum("setting up the Python environment" in err for _, err in outputs) == 1
    assert not (unpacked / ".venv.lock").exists()

    # An environment without the stamp (an interrupted install, a developer's .venv) is completed
    # in place, not wiped.
    (unpacked / ".venv" / ".installed-from").unlink()
    marker = unpacked / ".venv" / "kept"
    marker.write_text("")
    again = subprocess.run(
        [str(unpacked / "run.sh"), "classify", "-n", "1", str(DATA / "rocket.jpg")], capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0 and again.stdout.startswith("missile: "), again.stderr
    assert "setting up the Python environment" in again.stderr and marker.exists()

    async def serve():
        async with running_module([StillCamera("cam", photo("rocket.jpg"))], command=[str(unpacked / "run.sh")]) as module:
            await module.validate({"camera_name": "cam"})
            await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
            vision = module.vision()
            assert (await vision.get_classifications_from_camera("cam", 1))[0].class_name == "missile"
            cat = await vision.get_classifications(ViamImage(photo("chelsea.png"), CameraMimeType.PNG), 1)
            assert cat[0].class_name in {"Egyptian cat", "tabby", "tiger cat"}

    asyncio.run(serve())


def run_sh_with_fake_python(folder: Path, python_script: str) -> subprocess.CompletedProcess:
    """run.sh in a fresh module folder, on a PATH with the tools it uses and a fake python3, nothing else."""
    module = folder / "module"
    module.mkdir()
    shutil.copy(PROJECT_ROOT / "run.sh", module)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", module)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "cksum", "cat", "mkdir", "rm", "sleep"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    fake = bin_dir / "python3"
    fake.write_text(f"#!{shutil.which('bash')}\n{python_script}\n")
    fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(folder)}
    command = [shutil.which("bash"), str(module / "run.sh"), "/tmp/x.sock"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def test_run_sh_explains_an_old_python(tmp_path):
    result = run_sh_with_fake_python(tmp_path, 'echo "Python 3.8.10"; exit 1')
    assert result.returncode == 1
    assert "Python 3.10 or newer is required" in result.stderr and "Python 3.8.10" in result.stderr


def test_run_sh_explains_a_missing_venv_module(tmp_path):
    result = run_sh_with_fake_python(tmp_path, 'case "$*" in *ensurepip*) exit 1;; *) exit 0;; esac')
    assert result.returncode == 1
    assert "venv module" in result.stderr and "python3-venv" in result.stderr
    assert not (tmp_path / "module" / ".venv").exists()


def test_meta_json_is_consistent_with_the_code():
    import json

    from onnx_classifier.service import OnnxClassifier

    meta = json.loads((PROJECT_ROOT / "meta.json").read_text())
    namespace = meta["module_id"].split(":")[0]
    (model,) = meta["models"]
    assert model["api"] == "rdk:service:vision" and model["model"] == f"{namespace}:vision:onnx-classifier"
    assert str(OnnxClassifier.MODEL) == model["model"]
    assert meta["entrypoint"] == "run.sh" and meta["build"]["path"] == "module.tar.gz"
    assert sys.version_info >= (3, 10)
