"""The entrypoint behind run.sh: `python -m onnx_classifier SOCKET_PATH [--log-level=...]` serves the
module (what viam-server starts), `python -m onnx_classifier COMMAND ...` runs a command instead.

viam-server passes the address to serve on first: a unix socket path (`<folder>/<module>-<id>.sock`)
or, in TCP mode, `HOST:PORT`. Anything else in that place is taken as a command name, so that a
mistyped command is answered with a hint instead of starting a server on a socket named after it.
"""

import asyncio
import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Sequence

from .config import did_you_mean


@dataclass(frozen=True)
class Command:
    module: str  # imported only when the command runs; it has main(argv) -> exit status
    summary: str


# Adding a command is one entry here.
COMMANDS = {
    "classify": Command("onnx_classifier.cli", "classify image files, folders or globs and print labels and confidences"),
    "quantize": Command("onnx_classifier.quantize", "make an int8 copy of an ONNX classifier, calibrated on your images, and compare the two"),
}

# viam-server's TCP mode passes HOST:PORT (rdk's utils.TCPRegex).
TCP_ADDRESS = re.compile(r":\d+$")


def is_serve_address(argument: str) -> bool:
    """Whether viam-server could have passed `argument` as the address to serve on."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in argument for s in separators) or argument.endswith(".sock") or bool(TCP_ADDRESS.search(argument))


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    commands = "\n".join(f"  {name.ljust(width)}  {command.summary}" for name, command in COMMANDS.items())
    return (
        "usage: run.sh COMMAND [OPTIONS...]\n"
        "       run.sh SOCKET_PATH [--log-level=LEVEL]\n\n"
        f"commands:\n{commands}\n\n"
        "`run.sh COMMAND --help` lists a command's options. viam-server starts the module as\n"
        "`run.sh SOCKET_PATH [--log-level=LEVEL]`, and it serves the vision service on that unix socket\n"
        "(a path such as /tmp/viam/onnx-classifier-abcde.sock; HOST:PORT in TCP mode).\n"
    )


def main(argv: Sequence[str]) -> int:
    if not argv:
        sys.stderr.write(usage())
        return 2
    first, rest = argv[0], list(argv[1:])
    if first in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if is_serve_address(first):
        from . import dependency_fixes
        from .service import ClassifierModule, OnnxClassifier  # the Viam SDK only when serving

        dependency_fixes.apply()
        asyncio.run(ClassifierModule.run_with_models(OnnxClassifier))  # the SDK reads sys.argv itself
        return 0
    command = COMMANDS.get(first)
    if command is None:
        if first.startswith("-"):
            problem = f"a COMMAND or a SOCKET_PATH comes first, got {first!r}"
        else:
            problem = f"unknown command {first!r}{did_you_mean(first, list(COMMANDS), 'commands')}"
        sys.stderr.write(f"run.sh: {problem}\n\n{usage()}")
        return 2
    return importlib.import_module(command.module).main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
