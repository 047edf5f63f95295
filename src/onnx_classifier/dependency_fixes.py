"""Fixes to the behaviour of dependencies, in one place: the entrypoint applies them once before it
serves, and each only to the dependency version it was measured on."""

from __future__ import annotations

import asyncio
import binascii
import importlib.metadata
import logging
import sys
from datetime import datetime
from typing import Optional

import hyperframe.frame
import viam.logging

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


# viam-sdk sends a module's logs to its parent from a thread of its own, with an event loop of its own,
# over the parent connection that the module's event loop owns. grpclib is not thread-safe: a log line
# sent while a call uses that connection can corrupt its HTTP/2 stream, and the connection drops with
# every request on it ("Connection lost", a camera or ML model service call failing), and the log line
# is lost. Measured on viam-sdk 0.85.1: 10 of 400 calls lost, each logging a warning, 4 at a time.
VIAM_SDK_VERSIONS = ("0.85.",)


class ParentLogHandler(logging.Handler):
    """viam-sdk's module log handler, sending each record on the event loop that owns the parent connection.

    The SDK makes the first in setParent, which the module's event loop calls once it has connected to
    the parent; that loop is remembered for any made later outside it (a logger first used in a thread).
    """

    loop: asyncio.AbstractEventLoop

    def __init__(self, parent) -> None:
        super().__init__()
        self.parent = parent
        try:
            ParentLogHandler.loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        self.sending: set[asyncio.Task] = set()  # referenced until sent, as asyncio requires

    def emit(self, record: logging.LogRecord) -> None:
        # The fields as the SDK's handler writes them, taken now, in the thread that logs.
        fields = (
            record.name.replace(".", "/"),
            record.levelname,
            datetime.fromtimestamp(record.created),
            f"{record.filename}:{record.lineno}\t{record.getMessage()}",
            f"exc_info: {record.exc_info}, exc_text: {record.exc_text}, stack_info: {record.stack_info}",
        )
        try:
            self.loop.call_soon_threadsafe(self._start_sending, record, fields)
        except RuntimeError:  # the loop has closed: the module is stopping
            self._write_to_stderr(record, "the module's event loop has stopped")

    def _start_sending(self, record: logging.LogRecord, fields: tuple) -> None:
        task = asyncio.get_running_loop().create_task(self._send(record, fields))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, record: logging.LogRecord, fields: tuple) -> None:
        try:
            await self.parent.log(*fields)
        except Exception as e:  # viam-server reads the module's stderr too
            self._write_to_stderr(record, f"sending it to the parent failed: {e!r}")

    def _write_to_stderr(self, record: logging.LogRecord, reason: str) -> None:
        sys.stderr.write(f"{self.format(record)} ({reason})\n")


def apply() -> list[str]:
    """Apply the fixes that fit the installed versions; returns what was applied."""
    applied = []
    if importlib.metadata.version("hyperframe") in HYPERFRAME_VERSIONS and hasattr(hyperframe.frame, "_raw_data_repr"):
        hyperframe.frame._raw_data_repr = hex_prefix_repr
        applied.append("hyperframe frame repr: hexlifies only the bytes it shows")
    if importlib.metadata.version("viam-sdk").startswith(VIAM_SDK_VERSIONS) and hasattr(viam.logging, "_ModuleHandler"):
        viam.logging._ModuleHandler = ParentLogHandler
        applied.append("module logs: sent to the parent on the event loop that owns its connection")
    return applied
