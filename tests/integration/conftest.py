"""The integration tier: the module under a real viam-server, reached by real Python and Go clients.

    .venv/bin/python -m pytest -q -m integration tests/integration

One viam-server serves the whole session. What needs the network comes first: building viam-server
(minutes the first time; build_viam_server.sh caches it) and the Go client, and run.sh's first-start
install into .venv. Then the session moves into a network namespace of its own with only loopback
(machine.isolate_network: viam-server's start-up network checks must not leave the machine) and
starts viam-server. If any step fails, every test here fails with the reason.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from .machine import (
    ViamServer,
    build_go_client,
    build_viam_server,
    free_port,
    isolate_network,
    prepare_module_environment,
    tier_config,
)

# Everything the tier's config declares, which must be ready before the first test.
RESOURCES = ["cam", "cam-labelled", "no-file-cam", "classifier", "data_manager", "onnx-model", "builtin-classifier", "dropin-classifier"]


@pytest.fixture(scope="session")
def viam_server():
    binary = build_viam_server()
    # Short: viam-server and the modules put unix sockets under it.
    with tempfile.TemporaryDirectory(prefix="oc-int-", dir="/tmp") as tmp:
        folder = Path(tmp)
        goclient = build_go_client(folder)
        prepare_module_environment()
        isolate_network()
        server = ViamServer(binary, folder, tier_config(free_port(), folder / "capture"))
        server.goclient = goclient
        server.start()
        try:
            asyncio.run(server.wait_ready(RESOURCES))
            yield server
        finally:
            server.stop()


@pytest.fixture
async def machine(viam_server):
    """A Python client of the machine, as a user's program connects to a local viam-server."""
    client = await viam_server.connect()
    try:
        yield client
    finally:
        await client.close()
