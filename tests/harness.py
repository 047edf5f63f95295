"""A stand-in for viam-server, built from the SDK's own parts.

The parent robot is `viam.rpc.server.Server` serving real `Camera` subclasses on
a unix socket; the module runs as a subprocess on its own unix socket and is
driven through the module protocol (Ready, ValidateConfig, AddResource,
RemoveResource) exactly as viam-server drives it. Used by the tests and by bench/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from grpclib.client import Channel
from viam.components.camera import Camera
from viam.errors import NotSupportedError
from viam.media.video import CameraMimeType, NamedImage
from viam.proto.app.robot import ComponentConfig, LogConfiguration
from viam.proto.common import ResponseMetadata
from viam.proto.module import (
    AddResourceRequest,
    ModuleServiceStub,
    ReadyRequest,
    RemoveResourceRequest,
    ValidateConfigRequest,
)
from viam.proto.robot import LogResponse
from viam.resource.base import ResourceBase
from viam.robot.service import RobotService
from viam.rpc.server import Server
from viam.services.vision import VisionClient
from viam.utils import dict_to_struct

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = json.loads((PROJECT_ROOT / "meta.json").read_text())["models"][0]["model"]
VISION_API = "rdk:service:vision"


class ModuleLog:
    """What one module logged through its parent (RobotService.Log, as viam-server receives module
    logs). Each parent robot has its own, so one test's lines never meet another's."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def append(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    async def wait_for(self, fragment: str) -> None:
        """Until a line containing `fragment` has arrived (the test's timeout bounds the wait)."""
        while True:
            self._changed.clear()
            if fragment in self.text():
                return
            await self._changed.wait()


class ParentRobot(Server):
    """The SDK's server with a log of what the module sends to its parent."""

    def __init__(self, resources: Sequence[ResourceBase]):
        super().__init__(list(resources))
        self.module_log = ModuleLog()


async def _receive_module_logs(self, stream) -> None:
    request = await stream.recv_message()
    for entry in request.logs:
        self.manager.module_log.append(f"{entry.level}\t{entry.logger_name}\t{entry.message}")
    await stream.send_message(LogResponse())


# The SDK's own RobotService leaves Log unimplemented; viam-server implements it.
RobotService.Log = _receive_module_logs


class StillCamera(Camera):
    """A real Camera that serves one fixed frame (None: no colour image); `frame`, `error`,
    `no_images`, `hang` and `extra_images` can be changed between calls. `asked` counts the
    requests it has received; `await wait_until_asked(n)` returns once there have been n."""

    def __init__(self, name: str, frame: Optional[bytes], mime_type: str = "image/jpeg"):
        super().__init__(name)
        self.frame = frame
        self.mime_type = mime_type
        self.error: Optional[Exception] = None
        self.no_images = False
        self.extra_images: list[NamedImage] = []  # served after the frame, as a depth camera serves its depth map
        self.asked = 0
        self._asked_changed = asyncio.Event()
        self._answering = asyncio.Event()  # cleared while the camera hangs
        self._answering.set()

    @property
    def hang(self) -> bool:
        """While set, get_images does not answer (an unplugged USB camera can do this); requests
        received meanwhile are answered once it is cleared."""
        return not self._answering.is_set()

    @hang.setter
    def hang(self, value: bool) -> None:
        if value:
            self._answering.clear()
        else:
            self._answering.set()

    async def wait_until_asked(self, times: int) -> None:
        while self.asked < times:
            self._asked_changed.clear()
            await self._asked_changed.wait()

    async def get_images(self, *, filter_source_names=None, extra=None, timeout=None, **kwargs):
        self.asked += 1
        self._asked_changed.set()
        await self._answering.wait()
        if self.error is not None:
            raise self.error
        if self.no_images:
            return [], ResponseMetadata()
        images = [] if self.frame is None else [NamedImage(self.name, self.frame, CameraMimeType.from_string(self.mime_type))]
        return images + self.extra_images, ResponseMetadata()

    async def get_point_cloud(self, *, extra=None, timeout=None, **kwargs):
        raise NotSupportedError("StillCamera has no point cloud")

    async def get_properties(self, *, timeout=None, **kwargs):
        return Camera.Properties(supports_pcd=False)


async def _accepts_connections(path: Path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _wait_for_socket(path: Path, deadline_s: float, process: Optional[subprocess.Popen] = None) -> None:
    """Until a server accepts connections on `path`: the socket file appears before the server listens."""
    end = time.monotonic() + deadline_s
    while not await _accepts_connections(path):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the module exited with status {process.returncode} before serving {path}")
        if time.monotonic() > end:
            raise TimeoutError(f"nothing served {path} within {deadline_s} s")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def parent_robot(socket_path: Path, resources: Sequence[ResourceBase]):
    """The machine the module's dependencies live on, served as viam-server serves a module's parent."""
    server = ParentRobot(resources)
    task = asyncio.create_task(server.serve(path=str(socket_path), log_level=None))
    try:
        await _wait_for_socket(socket_path, 10)
        yield server
    finally:
        server._server.close()
        await asyncio.wait_for(task, 10)


def service_config(name: str, attributes: Mapping[str, Any]) -> ComponentConfig:
    return ComponentConfig(
        name=name,
        api=VISION_API,
        model=MODEL,
        attributes=dict_to_struct(dict(attributes)),
        log_configuration=LogConfiguration(level="info"),
    )


class ModuleProcess:
    """The module as viam-server runs it: a subprocess given a socket path, then driven over that socket."""

    def __init__(
        self,
        command: Sequence[str],
        socket_path: Path,
        log_path: Path,
        env: Optional[Mapping[str, str]] = None,
        parent_log: Optional[ModuleLog] = None,
    ):
        self.command = list(command)
        self.socket_path = socket_path
        self.log_path = log_path
        self.parent_log = parent_log or ModuleLog()
        self.env = {**os.environ, **(env or {})}
        self.process: Optional[subprocess.Popen] = None
        self.channel: Optional[Channel] = None

    async def start(self, startup_timeout_s: float = 60) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command + [str(self.socket_path), "--log-level=info"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        await _wait_for_socket(self.socket_path, startup_timeout_s, self.process)
        self.channel = Channel(path=str(self.socket_path))
        self.stub = ModuleServiceStub(self.channel)

    def log(self) -> str:
        """What the module wrote to its output and what it logged through the parent."""
        output = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return output + self.parent_log.text()

    async def ready(self, parent_address: Path):
        return await self.stub.Ready(ReadyRequest(parent_address=str(parent_address)), timeout=30)

    async def validate(self, attributes: Mapping[str, Any], name: str = "classifier"):
        # viam-server gives validation about 5 s.
        return await self.stub.ValidateConfig(ValidateConfigRequest(config=service_config(name, attributes)), timeout=5)

    async def add(self, attributes: Mapping[str, Any], dependencies: Sequence[str] = (), name: str = "classifier"):
        request = AddResourceRequest(config=service_config(name, attributes), dependencies=list(dependencies))
        return await self.stub.AddResource(request, timeout=60)

    async def remove(self, name: str = "classifier"):
        return await self.stub.RemoveResource(RemoveResourceRequest(name=f"{VISION_API}/{name}"), timeout=10)

    def vision(self, name: str = "classifier") -> VisionClient:
        assert self.channel is not None
        return VisionClient(name, self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def camera_dependency(name: str) -> str:
    return f"rdk:component:camera/{name}"


@asynccontextmanager
async def running_module(
    resources: Sequence[ResourceBase], command: Optional[Sequence[str]] = None, env=None, startup_timeout_s=60, folder: Optional[Path] = None
):
    """A parent robot serving `resources` (cameras, ML model services) and a started, Ready module; yields the ModuleProcess.

    Unix socket paths must stay short (about 100 bytes), so they live in a fresh /tmp folder, or in
    `folder` (a module in a chroot sees it bound at the same path).
    """
    with contextlib.ExitStack() as stack:
        folder = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oc-", dir="/tmp")))
        async with parent_robot(folder / "parent.sock", resources) as parent:
            module = ModuleProcess(
                command or [sys.executable, "-m", "onnx_classifier"],
                folder / "module.sock",
                folder / "module.log",
                env,
                parent.module_log,
            )
            try:
                await module.start(startup_timeout_s)
                await module.ready(folder / "parent.sock")
                yield module
            except BaseException:
                sys.stderr.write(f"--- module log ---\n{module.log()}\n")
                raise
            finally:
                await module.stop()


def mlmodel_dependency(name: str) -> str:
    return f"rdk:service:mlmodel/{name}"
