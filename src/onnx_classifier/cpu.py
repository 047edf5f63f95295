"""Which CPU this is, and which family of int8 kernels onnxruntime picks on it.

The family decides how int8 products are summed (pair_safe.py): exactly with VNNI or AMX on x86 and
on every ARM64 CPU, in saturating int16 pairs on x86 without VNNI. A fidelity figure is a figure
for one family, so reports name it.
"""

from __future__ import annotations

import platform
import struct
from pathlib import Path

# Linux's auxiliary vector: AT_HWCAP and AT_HWCAP2, and their aarch64 bits for the int8 dot products.
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_ASIMDDP, _HWCAP2_I8MM = 1 << 20, 1 << 13


def _cpuinfo() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo, where there is one (keys in lower case)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _arm64_features() -> set[str]:
    """The int8 features of this process's aarch64 CPU, from the kernel's HWCAP bits (what
    onnxruntime reads when cpuinfo cannot start; under QEMU they follow QEMU_CPU, where
    /proc/cpuinfo would be the host's)."""
    try:
        data = Path("/proc/self/auxv").read_bytes()
    except OSError:
        return set()
    words = struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8])
    vector = dict(zip(words[::2], words[1::2]))
    features = set()
    if vector.get(_AT_HWCAP, 0) & _HWCAP_ASIMDDP:
        features.add("asimddp")
    if vector.get(_AT_HWCAP2, 0) & _HWCAP2_I8MM:
        features.add("i8mm")
    return features


def int8_kernels(machine: str, flags: set[str]) -> str:
    """The int8 kernel family onnxruntime's CPU provider uses on a CPU with these flags."""
    if machine in ("x86_64", "amd64"):
        if "amx_int8" in flags:
            return "x86-64 with AMX and VNNI: exact int32 sums"
        if "avx512_vnni" in flags or "avx_vnni" in flags:
            return "x86-64 with VNNI: exact int32 sums"
        if "avx2" in flags:
            return "x86-64 AVX2 without VNNI: VPMADDUBSW, adjacent pairs summed in saturating int16"
        return "x86-64 without AVX2"
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "ARM64 with i8mm (UMMLA/SMMLA): exact int32 sums"
        if "asimddp" in flags:
            return "ARM64 with dot product (SDOT/UDOT): exact int32 sums"
        return "ARM64 without dot product (widening multiplies): exact int32 sums"
    return f"{machine}: unknown"


def describe_cpu() -> dict[str, str]:
    """This machine's CPU: model, architecture and int8 kernel family."""
    fields = _cpuinfo()
    machine = platform.machine().lower()
    if machine == "aarch64":
        # ARM kernels name no model; a Raspberry Pi's adds "Model". (Under QEMU, /proc/cpuinfo is
        # the host's, whose "model" is a number.)
        model = fields.get("model", "") if not fields.get("model", "").isdigit() else fields.get("hardware", "")
        flags = _arm64_features()
    elif machine == "arm64":  # macOS: every Apple silicon CPU has the dot product
        model, flags = platform.processor(), {"asimddp"}
    else:
        model, flags = fields.get("model name", ""), set(fields.get("flags", "").split())
    return {
        "model": model or platform.processor() or "unknown",
        "architecture": machine,
        "int8_kernels": int8_kernels(machine, flags),
    }
