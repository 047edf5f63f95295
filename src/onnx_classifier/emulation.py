"""A model's outputs on CPUs this machine is not: QEMU user-mode emulation of each int8 kernel family.

onnxruntime picks its int8 kernels by the CPU's features (cpu.py), and QEMU's CPU models carry
those features: `-cpu Haswell` has AVX2 without VNNI or AVX-512, `cortex-a72` (Raspberry Pi 4) has
no dot-product instructions and `cortex-a76` (Raspberry Pi 5) has them; an instruction the model
lacks stops the process. QEMU's TCG has no VNNI or AVX-512 at all, so the VNNI family can only be
measured on a CPU that has it. Emulated timings mean nothing; only the answers count.

x86 families run this Python under qemu-x86_64 on an x86-64 machine. ARM families run this Python
under qemu-aarch64 on an ARM64 machine; elsewhere they need an arm64 root (ARM64_ROOT) holding this
module as its offline bundle installs it, run by chroot with the kernel's binfmt handler for
aarch64 (Debian's qemu-user-static and binfmt-support register it; tests/emulated/arm64_root.sh
makes such a root).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

WORKER = Path(__file__).resolve().with_name("emulated_outputs.py")
# Where an arm64 root holds the module's environment: its offline bundle unpacked there and
# installed by its run.sh.
ROOT_PYTHON = "/opt/onnx-classifier/.venv/bin/python"


class EmulationError(Exception):
    """An emulated family that cannot run here, or a run that failed."""


@dataclass(frozen=True)
class Family:
    name: str  # as QEMU names the CPU model
    architecture: str  # as platform.machine() names it
    int8_kernels: str


FAMILIES = {
    family.name: family
    for family in (
        Family("Haswell", "x86_64", "x86-64 AVX2 without VNNI: VPMADDUBSW, adjacent pairs summed in saturating int16"),
        Family("cortex-a72", "aarch64", "ARM64 without dot product (Raspberry Pi 4): exact int32 sums"),
        Family("cortex-a76", "aarch64", "ARM64 with dot product (Raspberry Pi 5): exact int32 sums"),
    )
}


def _qemu(architecture: str) -> str:
    for name in (f"qemu-{architecture}-static", f"qemu-{architecture}"):
        found = shutil.which(name)
        if found:
            return found
    raise EmulationError(f"emulating {architecture} needs QEMU's user-mode emulator (qemu-{architecture}-static, Debian's qemu-user-static)")


def emulated_outputs(
    family: Family,
    model: Path,
    input_name: str,
    output_name: str,
    tensors: np.ndarray,
    arm64_root: Optional[Path] = None,
    timeout_s: float = 3600,
) -> np.ndarray:
    """The model's raw outputs for each of `tensors` ([count, *input shape]) under `family`'s CPU."""
    here = platform.machine().lower()
    if here == "arm64":
        here = "aarch64"
    if family.architecture == here:
        with tempfile.TemporaryDirectory(prefix="onnx-classifier-emulation.") as folder:
            return _run([_qemu(here), "-cpu", family.name, sys.executable], Path(folder), Path(folder), model, input_name, output_name, tensors, {}, timeout_s)
    if family.architecture != "aarch64" or arm64_root is None:
        raise EmulationError(
            f"{family.name} ({family.architecture}) cannot be emulated on this {here} machine"
            + (" without an arm64 root (--arm64-root)" if family.architecture == "aarch64" else "")
        )
    if not (arm64_root / ROOT_PYTHON.lstrip("/")).exists():
        raise EmulationError(
            f"--arm64-root {arm64_root}: no {ROOT_PYTHON} in it; install the module's offline bundle there "
            "(tests/emulated/arm64_root.sh does)"
        )
    # The root sees only its own files: the inputs go into its /tmp, and the command runs by chroot
    # (in a user namespace when this is not root) with QEMU_CPU choosing the emulated model.
    (arm64_root / "tmp").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-classifier-emulation.", dir=arm64_root / "tmp") as folder:
        inside = Path("/tmp") / Path(folder).name
        chroot = ["chroot"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "chroot"]
        command = chroot + [str(arm64_root), ROOT_PYTHON]
        return _run(command, Path(folder), inside, model, input_name, output_name, tensors, {"QEMU_CPU": family.name}, timeout_s)


def _run(prefix, folder: Path, inside: Path, model: Path, input_name, output_name, tensors, env, timeout_s) -> np.ndarray:
    shutil.copyfile(WORKER, folder / WORKER.name)
    shutil.copyfile(model, folder / "model.onnx")
    np.save(folder / "inputs.npy", tensors)
    command = prefix + [str(inside / WORKER.name), str(inside / "model.onnx"), input_name, output_name, str(inside / "inputs.npy"), str(inside / "outputs.npy")]
    try:
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise EmulationError(f"the emulated run did not finish within {timeout_s:g} s") from e
    except OSError as e:
        raise EmulationError(f"cannot start {command[0]}: {e.strerror or e}") from e
    if done.returncode != 0:
        # QEMU warns of every host CPU feature its CPU model lacks; the worker's own error is the rest.
        errors = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("qemu-"))
        raise EmulationError(f"the emulated run failed (exit status {done.returncode}): {errors.strip()[-2000:]}")
    return np.load(folder / "outputs.npy")
