"""Commands in the tier's arm64 root: chroot through QEMU user-mode emulation (arm64_root.sh), in a
mount namespace of their own so that nothing they mount outlives them.

The root gets /proc (run.sh's process substitution reads /dev/fd) and the host's /dev, but not its
/sys: onnxruntime's cpuinfo then says it cannot start and falls back to the HWCAP bits, which follow
QEMU_CPU, whereas with the host's /sys bound in an emulated classify crashed (SIGSEGV). Folders
bound at the same path inside and out (the unix sockets of the module protocol) are the way in and
out; without `network` the command has only a loopback interface of its own.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

HERE = Path(__file__).resolve().parent
# Where the tier installs the module in the root: where onnx_classifier.emulation looks for it.
MODULE_DIR = "/opt/onnx-classifier"


def build_root() -> Path:
    done = subprocess.run(["bash", str(HERE / "arm64_root.sh")], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"arm64_root.sh failed:\n{done.stderr}")
    return Path(done.stdout.strip())


def command_in_root(root: Path, command: Sequence[str], cpu: str = "cortex-a72", binds: Sequence[Path] = (), network: bool = False) -> list[str]:
    """argv that runs `command` in `root` with QEMU_CPU=`cpu`."""
    mounts = [f"mount -t proc proc {shlex.quote(str(root / 'proc'))}", f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}"]
    for folder in binds:
        inside = root / str(folder).lstrip("/")
        mounts += [f"mkdir -p {shlex.quote(str(inside))}", f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(inside))}"]
    script = " && ".join(mounts) + ' && exec chroot "$0" "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private"] + ([] if network else ["--net"])
    return ["env", f"QEMU_CPU={cpu}", *unshare, "sh", "-c", script, str(root), *command]


def run_in_root(root: Path, command: Sequence[str], cpu: str = "cortex-a72", env: Mapping[str, str] | None = None, timeout: float = 600, **kwargs):
    """subprocess.run of `command` in the root; `env` is added to this process's environment."""
    return subprocess.run(
        command_in_root(root, command, cpu, **kwargs),
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )
