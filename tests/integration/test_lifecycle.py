"""viam-server managing the module: a config edit applied while running, a killed module restarted, its log lines."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import time
from pathlib import Path

import pytest
from grpclib import GRPCError
from viam.services.vision import VisionClient

from .machine import service

pytestmark = pytest.mark.integration

# How long viam-server may take to notice a change and act on it (it watches the config file and
# the module's process); the tests wait for the event itself, this only bounds the wait.
REACT_TIMEOUT_S = 120


async def until(condition, what: str, viam_server) -> None:
    deadline = time.monotonic() + REACT_TIMEOUT_S
    while not await condition():
        viam_server.check_running()
        assert time.monotonic() < deadline, f"{what} not within {REACT_TIMEOUT_S} s:\n{viam_server.log()}"
        await asyncio.sleep(0.2)


async def threshold_in_use(classifier: VisionClient) -> float:
    return (await classifier.do_command({"command": "info"}))["service"]["confidence_threshold"]


async def test_a_threshold_edited_in_the_config_file_is_applied(viam_server, machine):
    classifier = VisionClient.from_robot(machine, "classifier")
    original = copy.deepcopy(viam_server.config)
    assert await threshold_in_use(classifier) == 0.1
    assert [c.class_name for c in await classifier.get_classifications_from_camera("cam", 5)] == ["espresso"]

    edited = copy.deepcopy(original)
    service(edited, "classifier")["attributes"]["confidence_threshold"] = 0.02
    viam_server.write_config(edited)
    try:
        async def applied() -> bool:
            return await threshold_in_use(classifier) == 0.02

        await until(applied, "the edited threshold", viam_server)
        labels = [c.class_name for c in await classifier.get_classifications_from_camera("cam", 5)]
        assert labels[:3] == ["espresso", "cup", "coffee mug"]  # README: cup 0.08, coffee mug 0.03
    finally:
        viam_server.write_config(original)

        async def restored() -> bool:
            return await threshold_in_use(classifier) == 0.1

        await until(restored, "the original threshold", viam_server)


def module_pid(viam_server) -> int:
    """The module's Python process: run.sh execs it, as viam-server's child."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == viam_server.process.pid and b"onnx_classifier" in command:
            return int(entry.name)
    raise AssertionError(f"no onnx_classifier process under viam-server {viam_server.process.pid}")


async def test_a_killed_module_is_restarted(viam_server, machine):
    classifier = VisionClient.from_robot(machine, "classifier")
    before = await classifier.get_classifications_from_camera("cam", 3)
    killed = module_pid(viam_server)
    os.kill(killed, signal.SIGKILL)

    async def answers_again() -> bool:
        try:
            return await classifier.get_classifications_from_camera("cam", 3) == before
        except GRPCError:  # the module is down or restarting
            return False

    await until(answers_again, "an answer from the restarted module", viam_server)
    assert module_pid(viam_server) != killed


def test_module_log_lines_reach_viam_server_once(viam_server):
    # viam-server writes each line the module sends it (its Log API) as "time level logger file:line message".
    sent = [line for line in viam_server.log(last_chars=10**8).splitlines() if "\tonnx_classifier/" in line]
    assert any("\tonnx_classifier/service\t" in line and "described its model" in line for line in sent), viam_server.log()
    assert [line for line in sent if sent.count(line) > 1] == []
