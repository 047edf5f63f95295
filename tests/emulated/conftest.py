"""The emulated tier: the module's answers on CPUs this machine is not, under QEMU user-mode emulation.

    bash tests/emulated/arm64_root.sh     # once: the arm64 Debian root (cached outside the checkout)
    .venv/bin/python -m pytest -q -m emulated tests/emulated

x86 without VNNI runs this checkout's Python under qemu-x86_64 -cpu Haswell; the Raspberry Pis run
in the arm64 root with QEMU_CPU=cortex-a72 (Pi 4, no dot product) and cortex-a76 (Pi 5). The session
first installs the offline bundle for linux/arm64 Python 3.11 into the root, as a robot with no
network would; if any step fails, every test here fails with the reason. Emulated timings mean
nothing: the tests assert answers only. Needs root (chroot, namespaces) and Debian's
qemu-user-static, debootstrap and binfmt-support.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ..harness import PROJECT_ROOT
from .arm64 import MODULE_DIR, build_root, run_in_root

# pip settings the offline install must not follow: Raspberry Pi OS's /etc/pip.conf adds piwheels
# as an extra index, and this runner's own settings (PIP_FIND_LINKS here) name folders the root lacks.
PI_PIP_CONF = "[global]\nextra-index-url=https://www.piwheels.org/simple\nfind-links=/var/cache/no-such-wheels\n"
HOSTILE_PIP_ENV = {"PIP_FIND_LINKS": "/opt/no-such-wheels", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


@pytest.fixture(scope="session")
def arm64_root() -> Path:
    return build_root()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    done = subprocess.run(
        ["./build.sh", "--wheels", "--platform", "linux/arm64", "--python", "3.11", "--out", str(out)],
        cwd=PROJECT_ROOT, env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return out / "module-linux-arm64-py3.11.tar.gz"


@pytest.fixture(scope="session")
def installed(arm64_root, bundle):
    """The offline bundle unpacked at MODULE_DIR in the root and installed by its run.sh's first
    start, with no network and with pip settings that point elsewhere; the install's output."""
    module = arm64_root / MODULE_DIR.lstrip("/")
    shutil.rmtree(module, ignore_errors=True)
    module.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(module, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (arm64_root / "etc" / "pip.conf").write_text(PI_PIP_CONF)
    done = run_in_root(arm64_root, [f"{MODULE_DIR}/run.sh", "--help"], env=HOSTILE_PIP_ENV, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    return done
