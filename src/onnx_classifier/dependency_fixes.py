"""Fixes to the behaviour of dependencies, in one place: the entrypoint applies them once before it
serves, and each only to the dependency version it was measured on."""

from __future__ import annotations

import binascii
import importlib.metadata
from typing import Optional

import hyperframe.frame

# h2 formats every received frame for its trace log eagerly (`repr(frame)`), and hyperframe's repr
# hexlifies the whole 16 KiB payload to show 10 bytes of it: about 1.5 ms of a 4K request, spent on a
# log line nobody reads. Measured on hyperframe 6.1.0.
HYPERFRAME_VERSIONS = ("6.1.0",)


def hex_prefix_repr(data: Optional[bytes]) -> str:
    """hyperframe's `_raw_data_repr` with the same output, hexlifying only the bytes it shows."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    return "<hex:" + (shown[:20] + "..." if len(shown) > 20 else shown) + ">"


def apply() -> list[str]:
    """Apply the fixes that fit the installed versions; returns what was applied."""
    applied = []
    if importlib.metadata.version("hyperframe") in HYPERFRAME_VERSIONS and hasattr(hyperframe.frame, "_raw_data_repr"):
        hyperframe.frame._raw_data_repr = hex_prefix_repr
        applied.append("hyperframe frame repr: hexlifies only the bytes it shows")
    return applied
