"""The registry package: build.sh's tarball, unpacked into an empty folder, started through run.sh."""

import asyncio
import os
import platform
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
# The package tests install into fresh environments (minutes on a small machine): their own timeout.
INSTALLS_TIMEOUT_S = 1800


def checkout_outputs() -> dict[str, int]:
    """What build.sh would write into the checkout, with each file's modification time."""
    paths = [*PROJECT_ROOT.glob("module*.tar.gz"), *(PROJECT_ROOT / "build").rglob("*")]
    return {str(p): p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    built = tmp_path_factory.mktemp("built")
    in_checkout = checkout_outputs()
    subprocess.run(["./build.sh", "--out", str(built)], cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=120)
    assert checkout_outputs() == in_checkout
    with tempfile.TemporaryDirectory(prefix="oc-pkg-") as tmp:
        folder = Path(tmp)
        with tarfile.open(built / "module.tar.gz") as tar:
            names = set(tar.getnames())
            # The "data" filter exists from Python 3.10.12 and 3.11.4 on.
            tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        assert REQUIRED <= names and "models/efficientnet_lite0_int8.onnx" in names
        assert not any("__pycache__" in n or n.startswith(".venv") or n.startswith("models/calibration") for n in names)
        yield folder


@pytest.mark.timeout(INSTALLS_TIMEOUT_S)
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


# What a robot with no network sees: pip may use no index (an unreachable one, to be sure that
# PIP_NO_INDEX is not what keeps it offline), no find-links and no config file (this machine's pip
# config points at local wheel folders).
OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_RETRIES": "0",
}


def hostile_pip_settings(folder: Path) -> dict[str, str]:
    """pip settings a robot may have that an offline install must not follow: an extra index (as
    Raspberry Pi OS's /etc/pip.conf adds) and find-links folders that do not exist, in a config file
    and in variables, and indexes that cannot be reached."""
    config = folder / "pip.conf"
    config.write_text("[global]\nextra-index-url = http://127.0.0.1:9/simple\nfind-links = /nonexistent/config-find-links\n")
    return {
        "PIP_CONFIG_FILE": str(config),
        "PIP_FIND_LINKS": "/nonexistent/env-find-links",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
    }


def this_target() -> tuple[str, str]:
    """This machine's platform as Viam names it and its Python version, as build.sh's default target."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
    return f"{platform.system().lower()}/{arch}", f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.mark.timeout(INSTALLS_TIMEOUT_S)
def test_an_offline_bundle_installs_and_serves_with_no_index(tmp_path):
    # The wheels come from the package index (pip's cache makes a rebuild quick).
    built, unpacked = tmp_path / "built", tmp_path / "module"
    in_checkout = checkout_outputs()
    build = subprocess.run(
        ["./build.sh", "--wheels", "--out", str(built)], cwd=PROJECT_ROOT, env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    target_platform, target_python = this_target()
    bundle = built / f"module-{target_platform.replace('/', '-')}-py{target_python}.tar.gz"
    assert f"built {bundle}" in build.stdout
    assert (built / "build" / bundle.name.removesuffix(".tar.gz") / "wheels" / "manifest.txt").is_file()
    assert checkout_outputs() == in_checkout
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        tar.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert REQUIRED | {"wheels/manifest.txt"} <= names
    assert any(n.startswith("wheels/onnxruntime-") and n.endswith(".whl") for n in names)
    manifest = (unpacked / "wheels" / "manifest.txt").read_text().splitlines()
    assert manifest[:2] == [f"platform={target_platform}", f"python={target_python}"]

    # The first start installs from the wheelhouse while viam-server waits for the socket, and
    # follows none of the pip settings it finds.
    hostile = hostile_pip_settings(tmp_path)

    async def serve():
        command = [str(unpacked / "run.sh")]
        async with running_module([StillCamera("cam", photo("rocket.jpg"))], command, hostile, 600) as module:
            await module.add({"camera_name": "cam"}, [camera_dependency("cam")])
            assert (await module.vision().get_classifications_from_camera("cam", 1))[0].class_name == "missile"
            assert "installing from the bundled wheels" in module.log()
            assert "WARNING" not in module.log() and "find-links" not in module.log(), module.log()

    asyncio.run(serve())
    again = subprocess.run(
        [str(unpacked / "run.sh"), "classify", "-n", "1", str(DATA / "coffee.png")],
        env={**os.environ, **hostile}, capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0 and again.stdout.startswith("espresso: "), again.stderr
    assert "setting up" not in again.stderr


def test_run_sh_refuses_a_wheelhouse_for_another_target(tmp_path):
    module = tmp_path / "module"
    module.mkdir()
    for name in ("run.sh", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / name, module)
    target_platform, target_python = this_target()
    other = "linux/arm64" if target_platform == "linux/amd64" else "linux/amd64"
    (module / "wheels").mkdir()
    (module / "wheels" / "manifest.txt").write_text(f"platform={other}\npython={target_python}\n")
    result = subprocess.run(
        [str(module / "run.sh"), "classify", str(DATA / "coffee.png")],
        env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300,
    )
    # It falls back to the package index, which this test has made unreachable.
    assert result.returncode == 1
    assert (
        f"onnx-classifier: the bundled wheels are for {other} Python {target_python}, "
        f"but this machine is {target_platform} Python {target_python}; installing from the package index instead"
    ) in result.stderr, result.stderr
    assert f"./build.sh --wheels --platform {target_platform} --python {target_python}" in result.stderr
    assert "onnx-classifier: installing from the package index failed" in result.stderr
    assert not (module / ".venv.lock").exists()


def test_build_sh_rejects_an_unknown_target(tmp_path):
    for args in (["--platform", "windows/amd64"], ["--python", "3.9"]):
        result = subprocess.run(
            ["./build.sh", "--wheels", "--out", str(tmp_path), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2 and "unsupported" in result.stderr
    assert list(tmp_path.iterdir()) == []


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
