"""The entrypoint behind run.sh: an address to serve on (what viam-server passes) starts the module,
a command runs the command, and anything else is answered with a usage, never a server."""

import asyncio
import socket
import subprocess
import sys
import time

import pytest
from grpclib.client import Channel
from viam.proto.module import ModuleServiceStub, ValidateConfigRequest

from onnx_classifier.__main__ import COMMANDS, is_serve_address

from .harness import service_config

ENTRYPOINT = [sys.executable, "-m", "onnx_classifier"]


def entrypoint(*argv, cwd):
    """Exit status, stdout and stderr; a server started by mistake would not exit and fails the test here."""
    done = subprocess.run(ENTRYPOINT + list(argv), cwd=cwd, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def assert_usage(text):
    assert "usage: run.sh COMMAND" in text and "run.sh SOCKET_PATH [--log-level=LEVEL]" in text
    for name in COMMANDS:
        assert f"\n  {name}  " in text
    assert "viam-server starts the module as" in text


def test_a_mistyped_command_gets_a_hint_and_the_usage_not_a_server(tmp_path):
    status, out, err = entrypoint("classfy", "img.png", cwd=tmp_path)
    assert status == 2 and out == ""
    assert err.startswith("run.sh: unknown command 'classfy'; did you mean 'classify'?\n")
    assert_usage(err)
    assert list(tmp_path.iterdir()) == []  # no socket file named after the typo


def test_an_unknown_command_with_nothing_close_lists_the_commands(tmp_path):
    status, _, err = entrypoint("resize", cwd=tmp_path)
    assert status == 2
    assert err.startswith(f"run.sh: unknown command 'resize'; known commands are: {', '.join(COMMANDS)}\n")


def test_an_option_in_the_commands_place_is_a_usage_error(tmp_path):
    status, _, err = entrypoint("--log-level=debug", cwd=tmp_path)
    assert status == 2
    assert err.startswith("run.sh: a COMMAND or a SOCKET_PATH comes first, got '--log-level=debug'\n")
    assert_usage(err)


def test_no_arguments_prints_the_usage_and_help_prints_it_to_stdout(tmp_path):
    status, out, err = entrypoint(cwd=tmp_path)
    assert status == 2 and out == ""
    assert_usage(err)
    for flag in ("--help", "-h"):
        status, out, err = entrypoint(flag, cwd=tmp_path)
        assert status == 0 and err == ""
        assert_usage(out)


def test_a_command_gets_the_rest_of_the_arguments(tmp_path):
    status, out, _ = entrypoint("classify", "--help", cwd=tmp_path)
    assert status == 0 and out.startswith("usage: run.sh classify")


@pytest.mark.parametrize(
    "argument",
    [
        "/root/.viam/module-sockets/acme_onnx-classifier-XyZab.sock",  # rdk: <parent's folder>/<name>-<5 letters>.sock
        "/tmp/viam-module-1234/onnx-classifier-abcde.sock",
        "/tmp/viam/m-7QWERTYUIOPASDFGH.sock",  # rdk shortens a long name to a hash
        "module.sock",
        "./serve-here",
        "127.0.0.1:39123",  # TCP mode
        "localhost:8080",
    ],
)
def test_addresses_viam_server_passes_are_served(argument):
    assert is_serve_address(argument)


@pytest.mark.parametrize("argument", ["classify", "classfy", "img.png", "quantize", "help"])
def test_command_names_are_not_addresses(argument):
    assert not is_serve_address(argument)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_tcp_mode_serves_the_module_on_host_and_port(tmp_path):
    """viam-server's TCP mode passes `HOST:PORT --tcp-mode` instead of a socket path."""
    port = free_port()
    module = subprocess.Popen(
        ENTRYPOINT + [f"127.0.0.1:{port}", "--log-level=info", "--tcp-mode"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    channel = Channel("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert module.poll() is None, module.communicate()[0].decode(errors="replace")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the module did not listen on its TCP port"
                await asyncio.sleep(0.05)
        request = ValidateConfigRequest(config=service_config("classifier", {"confidence_threshold": 0.2}))
        response = await ModuleServiceStub(channel).ValidateConfig(request, timeout=30)
        assert list(response.dependencies) == []
    finally:
        channel.close()
        module.terminate()
        module.wait(10)
