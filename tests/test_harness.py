"""The test harness itself: what it takes for "the module is serving"."""

import asyncio
import socket

from tests.harness import _wait_for_socket


async def test_a_bound_socket_that_does_not_listen_yet_is_not_ready(tmp_path):
    """A unix socket's file appears at bind(), before listen(): connecting then is refused,
    as the first start of a module showed (ConnectionRefusedError in the harness)."""
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    try:
        waiting = asyncio.create_task(_wait_for_socket(path, 10))
        await asyncio.sleep(0.3)
        assert path.exists() and not waiting.done()
        server.listen()
        await asyncio.wait_for(waiting, 5)
    finally:
        server.close()
