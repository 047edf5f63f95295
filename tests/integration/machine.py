"""A real viam-server (built from rdk by build_viam_server.sh) running this checkout as a local
module, with the machine config a user writes: the README's local-module JSON, plus what the tier
checks beside it (a transform camera, the data manager, a camera without a file, and an ML model
service under rdk's built-in `mlmodel` vision service)."""

from __future__ import annotations

import asyncio
import copy
import ctypes
import fcntl
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from google.protobuf.internal.decoder import _DecodeVarint32
from PIL import Image
from viam.gen.app.datasync.v1.data_sync_pb2 import DataCaptureMetadata, SensorData
from viam.media.video import CameraMimeType, ViamImage
from viam.proto.robot import ResourceStatus
from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions

from ..harness import PROJECT_ROOT

HERE = Path(__file__).resolve().parent
README = PROJECT_ROOT / "README.md"
# The README's machine JSON names the checkout by this placeholder.
CHECKOUT_PLACEHOLDER = "/path/to/onnx-classifier"
BUNDLED_MODEL = PROJECT_ROOT / "models" / "efficientnet_lite0.onnx"
BUNDLED_LABELS = PROJECT_ROOT / "models" / "efficientnet_lite0.labels.txt"
CAPTURE_HZ = 0.5
# The first start of a local module may install the Python environment (run.sh); later ones take seconds.
READY_TIMEOUT_S = 300


def build_viam_server() -> Path:
    """The cached viam-server binary, built first if needed (minutes, once); an error says why not."""
    result = subprocess.run(["bash", str(HERE / "build_viam_server.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"build_viam_server.sh failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def prepare_module_environment() -> None:
    """Let run.sh finish the module's environment (its first start installs the package into .venv
    from the package index), as a user's first `./run.sh classify` would, while the network is there."""
    subprocess.run([str(PROJECT_ROOT / "run.sh"), "classify", "--help"], check=True, stdout=subprocess.DEVNULL)


CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def isolate_network() -> None:
    """Move this process, and every process it starts from now on, into a network namespace of its
    own that holds only loopback. viam-server checks the network when it starts, with no option to
    turn that off (rdk's web/networkcheck: DNS queries to 1.1.1.1, STUN servers, pings to 1.1.1.1
    and 192.0.2.1); in here those fail at once instead of leaving the machine, while everything the
    tier does goes over 127.0.0.1 and unix sockets. Needs root (CAP_SYS_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot make a network namespace for viam-server (unshare: {os.strerror(error)}); the tier needs root")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new namespace's loopback starts down
        (flags,) = struct.unpack_from("16xh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16s16x", b"lo")))
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def build_go_client(folder: Path) -> Path:
    """goclient/main.go, compiled as rdk's Go clients build without cgo (-tags no_cgo), into `folder`."""
    binary = folder / "goclient"
    built = subprocess.run(
        ["go", "build", "-tags", "no_cgo", "-o", str(binary), "./goclient"],
        cwd=HERE, capture_output=True, text=True, env=os.environ | {"CGO_ENABLED": "0"},
    )
    if built.returncode != 0:
        raise RuntimeError(f"go build -tags no_cgo ./goclient failed:\n{built.stderr}")
    return binary


def readme_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)


def readme_local_machine() -> dict[str, Any]:
    """The README's machine JSON for a local module, naming this checkout."""
    (block,) = [b for b in readme_blocks("json") if '"type": "local"' in b]
    return json.loads(block.replace(CHECKOUT_PLACEHOLDER, str(PROJECT_ROOT)))


def image_from_bytes(data: bytes) -> ViamImage:
    """A ViamImage of encoded bytes with the size Pillow reads from them, as examples/classify_folder.py's
    image_of makes one from a file (the SDK 0.85 misreads some JPEG sizes and refuses JPEGs with EXIF)."""
    with Image.open(io.BytesIO(data)) as opened:
        size, image_format = opened.size, opened.format
    image = ViamImage(data, CameraMimeType.PNG if image_format == "PNG" else CameraMimeType.JPEG)
    image._width, image._height = size
    return image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tier_config(port: int, capture_dir: Path) -> dict[str, Any]:
    config = readme_local_machine()
    config["network"] = {"bind_address": f"127.0.0.1:{port}"}
    config["modules"].append(
        {"type": "local", "name": "test-mlmodel", "executable_path": str(HERE / "onnx_mlmodel.sh")}
    )
    classifier = service(config, "classifier")
    classifier["attributes"]["camera_names"] = ["no-file-cam"]
    classifier["service_configs"] = [
        {
            "type": "data_manager",
            "attributes": {
                "capture_methods": [
                    {"method": "CaptureAllFromCamera", "capture_frequency_hz": CAPTURE_HZ, "additional_params": {"camera_name": "cam"}}
                ]
            },
        }
    ]
    config["components"] += [
        {
            "name": "cam-labelled",
            "api": "rdk:component:camera",
            "model": "transform",
            "attributes": {
                "source": "cam",
                "pipeline": [
                    {"type": "classifications", "attributes": {"classifier_name": "classifier", "confidence_threshold": 0.1, "max_classifications": 3}}
                ],
            },
        },
        # A camera whose file is missing: every frame fails, as an unplugged camera's would.
        {
            "name": "no-file-cam",
            "api": "rdk:component:camera",
            "model": "image_file",
            "attributes": {"color_image_file_path": str(capture_dir.parent / "no-such-photo.jpg")},
        },
    ]
    config["services"] += [
        {
            "name": "data_manager",
            "api": "rdk:service:data_manager",
            "model": "rdk:builtin:builtin",
            "attributes": {"capture_dir": str(capture_dir), "sync_disabled": True, "tags": []},
        },
        {
            "name": "onnx-model",
            "api": "rdk:service:mlmodel",
            "model": "test:mlmodel:onnxruntime",
            "attributes": {"model_path": str(BUNDLED_MODEL), "label_path": str(BUNDLED_LABELS)},
        },
        # rdk's own vision service over the ML model service (services/vision/mlvision).
        {
            "name": "builtin-classifier",
            "api": "rdk:service:vision",
            "model": "rdk:builtin:mlmodel",
            "attributes": {
                "mlmodel_name": "onnx-model",
                "remap_input_names": {"input": "image"},
                "input_image_mean_value": [0.485, 0.456, 0.406],
                "input_image_std_dev": [0.229, 0.224, 0.225],
                "camera_name": "cam",
            },
        },
    ]
    # The built-in's config with only its model line changed: this module as a drop-in for it.
    dropin = copy.deepcopy(service(config, "builtin-classifier"))
    dropin.update(name="dropin-classifier", model=service(config, "classifier")["model"])
    config["services"].append(dropin)
    return config


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [s for s in config["services"] if s["name"] == name]
    return entry


def local_options() -> RobotClient.Options:
    """A plain connection to a local viam-server started with -no-tls: no TLS, no auth, no WebRTC."""
    return RobotClient.Options(dial_options=DialOptions(insecure=True, disable_webrtc=True))


class ViamServer:
    """viam-server as a user runs it: `viam-server -config machine.json -no-tls -disable-mdns`."""

    def __init__(self, binary: Path, folder: Path, config: dict[str, Any]):
        self.binary = binary
        self.folder = folder
        self.config = config
        self.config_path = folder / "machine.json"
        self.log_path = folder / "viam-server.log"
        self.address = config["network"]["bind_address"]
        self.process: Optional[subprocess.Popen] = None
        self.goclient: Optional[Path] = None  # goclient/main.go, built for this server's clients

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file in one step, as an editor saving it would; viam-server watches it."""
        self.config = copy.deepcopy(config)
        partial = self.config_path.with_suffix(".partial")
        partial.write_text(json.dumps(config, indent=2))
        partial.replace(self.config_path)

    def start(self) -> None:
        self.write_config(self.config)
        env = {**os.environ, "VIAM_HOME": str(self.folder / "viam-home")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "-config", str(self.config_path), "-no-tls", "-disable-mdns"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group, with the modules it starts
            )

    def log(self, last_chars: int = 20000) -> str:
        return self.log_path.read_text(errors="replace")[-last_chars:] if self.log_path.exists() else ""

    def check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"viam-server exited with status {self.process.returncode}; its log:\n{self.log()}")

    async def connect(self) -> RobotClient:
        return await RobotClient.at_address(self.address, local_options())

    async def wait_ready(self, names: list[str], timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every resource in `names` is ready (the machine status says so)."""
        deadline = time.monotonic() + timeout_s
        last = "no connection yet"
        while True:
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"viam-server: {last} after {timeout_s} s; its log:\n{self.log()}")
            try:
                machine = await asyncio.wait_for(self.connect(), 10)
            except Exception as e:  # not listening yet
                last = f"cannot connect: {e}"
                await asyncio.sleep(0.5)
                continue
            try:
                status = await machine.get_machine_status()
                states = {r.name.name: r for r in status.resources}
                waiting = [n for n in names if n not in states or states[n].state != ResourceStatus.STATE_READY]
                if not waiting:
                    return
                last = "not ready: " + ", ".join(
                    f"{n} ({ResourceStatus.State.Name(states[n].state)} {states[n].error})" if n in states else f"{n} (absent)"
                    for n in waiting
                )
            finally:
                await machine.close()
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def read_capture_file(path: Path) -> tuple[DataCaptureMetadata, list[SensorData]]:
    """A data manager capture file: a length-delimited DataCaptureMetadata, then SensorData messages
    (rdk's data/capture_file.go)."""
    data = path.read_bytes()
    messages = []
    offset = 0
    while offset < len(data):
        length, offset = _DecodeVarint32(data, offset)
        messages.append(data[offset : offset + length])
        offset += length
    metadata = DataCaptureMetadata.FromString(messages[0])
    return metadata, [SensorData.FromString(m) for m in messages[1:]]
