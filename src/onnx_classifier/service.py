"""The Viam vision service: a thin adapter from the vision API to the classifier core."""

from __future__ import annotations

import asyncio
import binascii
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, List, Mapping, Optional, Sequence, Tuple

import hyperframe.frame
from grpclib import GRPCError, Status
from viam import logging as viam_logging
from viam.components.camera import Camera
from viam.errors import MethodNotImplementedError, ViamGRPCError
from viam.media.video import ViamImage
from viam.module.module import Module
from viam.proto.app.robot import ComponentConfig
from viam.proto.common import PointCloudObject, ResourceName
from viam.proto.module import ValidateConfigRequest, ValidateConfigResponse
from viam.proto.service.vision import Classification, Detection, Detection3D
from viam.resource.base import ResourceBase
from viam.resource.easy_resource import EasyResource
from viam.resource.types import Model
from viam.services.vision import CaptureAllResult, Vision
from viam.utils import ValueTypes, struct_to_dict

from .classifier import Classifier, SharedClassifiers
from .config import ConfigError, ServiceConfig, parse_service_config
from .cores import available_cores
from .decode import DecodeError
from .model import resolve_model
from .paths import META_JSON


def _model_from_meta() -> str:
    """The model triplet lives in meta.json only, so an organization changes its namespace in one place."""
    (entry,) = json.loads(META_JSON.read_text())["models"]
    return entry["model"]


# Route the core's logs (loggers under "onnx_classifier") to viam-server like the SDK's own.
viam_logging.getLogger("onnx_classifier")


def _hex_prefix_repr(data: Optional[bytes]) -> str:
    """hyperframe's `_raw_data_repr` with the same output, hexlifying only the bytes it shows."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    return "<hex:" + (shown[:20] + "..." if len(shown) > 20 else shown) + ">"


# h2 formats every received frame for its trace log eagerly (`repr(frame)`), and hyperframe's
# repr hexlifies the whole 16 KiB payload to show 10 bytes of it: about 1.5 ms of a 4K
# request, spent on a log line nobody reads. Same text, a fraction of the work.
if hasattr(hyperframe.frame, "_raw_data_repr"):
    hyperframe.frame._raw_data_repr = _hex_prefix_repr

SHARED_CLASSIFIERS = SharedClassifiers()
# Requests run off the event loop; as many at once as onnxruntime has threads, so a
# burst queues here instead of oversubscribing the cores.
INFERENCE_POOL = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="onnx-classifier")
# capture_all_from_camera has no count of its own: it returns the conventional top-5.
CAPTURE_COUNT = 5


class OnnxClassifier(Vision, EasyResource):
    MODEL: ClassVar[Model] = _model_from_meta()

    config: ServiceConfig
    classifier: Optional[Classifier]
    cameras: Mapping[str, Camera]

    @classmethod
    def validate_config(cls, config: ComponentConfig) -> Tuple[Sequence[str], Sequence[str]]:
        """Parse and check every attribute and the model file; the cameras are required dependencies."""
        parsed = parse_service_config(struct_to_dict(config.attributes))
        resolve_model(parsed.classifier)
        return list(parsed.cameras), []

    @classmethod
    def new(cls, config: ComponentConfig, dependencies: Mapping[ResourceName, ResourceBase]) -> "OnnxClassifier":
        parsed = parse_service_config(struct_to_dict(config.attributes))
        cameras = {}
        for name in parsed.cameras:
            camera = dependencies.get(Camera.get_resource_name(name))
            if not isinstance(camera, Camera):
                raise ConfigError(f"camera {name!r} is not among this service's dependencies")
            cameras[name] = camera
        service = cls(config.name)
        service.config = parsed
        service.cameras = cameras
        service.classifier = SHARED_CLASSIFIERS.acquire(parsed.classifier)
        return service

    async def close(self) -> None:
        classifier, self.classifier = self.classifier, None
        if classifier is not None:
            SHARED_CLASSIFIERS.release(classifier)

    async def _classify(self, data: bytes, count: int, source: str) -> List[Classification]:
        classifier = self.classifier
        if classifier is None:
            raise ViamGRPCError(f"vision service {self.name!r} is closed", Status.UNAVAILABLE)
        loop = asyncio.get_running_loop()
        try:
            predictions = await loop.run_in_executor(
                INFERENCE_POOL, classifier.classify, data, count, self.config.confidence_threshold
            )
        except DecodeError as e:
            raise ViamGRPCError(f"{source}: {e}", Status.INVALID_ARGUMENT) from e
        return [Classification(class_name=p.label, confidence=p.confidence) for p in predictions]

    async def _frame(self, camera_name: str, timeout: Optional[float]) -> Tuple[str, ViamImage]:
        """The camera's name and its first image; an empty name means the default camera."""
        name = camera_name or self.config.camera_name
        if not name:
            raise ViamGRPCError(
                "no camera named in the request and no 'camera_name' configured for this service", Status.INVALID_ARGUMENT
            )
        camera = self.cameras.get(name)
        if camera is None:
            configured = ", ".join(repr(c) for c in self.cameras) or "none"
            raise ViamGRPCError(f"camera {name!r} is not configured for this service; configured cameras: {configured}", Status.NOT_FOUND)
        try:
            images, _ = await camera.get_images(timeout=timeout)
        except Exception as e:
            raise ViamGRPCError(f"camera {name!r} did not return an image: {e}", Status.UNAVAILABLE) from e
        if not images:
            raise ViamGRPCError(f"camera {name!r} returned no images", Status.UNAVAILABLE)
        return name, images[0]

    async def get_classifications(
        self,
        image: ViamImage,
        count: int,
        *,
        extra: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs,
    ) -> List[Classification]:
        return await self._classify(image.data, count, "image")

    async def get_classifications_from_camera(
        self,
        camera_name: str,
        count: int,
        *,
        extra: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs,
    ) -> List[Classification]:
        name, frame = await self._frame(camera_name, timeout)
        return await self._classify(frame.data, count, f"image from camera {name!r}")

    async def capture_all_from_camera(
        self,
        camera_name: str,
        return_image: bool = False,
        return_classifications: bool = False,
        return_detections: bool = False,
        return_object_point_clouds: bool = False,
        return_detections_3d: bool = False,
        *,
        extra: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs,
    ) -> CaptureAllResult:
        # Data capture asks for everything; what a classifier cannot give stays None.
        name, frame = await self._frame(camera_name, timeout)
        result = CaptureAllResult()
        if return_image:
            result.image = frame
        if return_classifications:
            result.classifications = await self._classify(frame.data, CAPTURE_COUNT, f"image from camera {name!r}")
        return result

    async def get_properties(
        self,
        *,
        extra: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs,
    ) -> Vision.Properties:
        return Vision.Properties(
            classifications_supported=True,
            detections_supported=False,
            object_point_clouds_supported=False,
            detections_3d_supported=False,
            default_camera=self.config.camera_name,
        )

    async def get_detections(self, image: ViamImage, *, extra=None, timeout=None, **kwargs) -> List[Detection]:
        raise MethodNotImplementedError("get_detections")

    async def get_detections_from_camera(self, camera_name: str, *, extra=None, timeout=None, **kwargs) -> List[Detection]:
        raise MethodNotImplementedError("get_detections_from_camera")

    async def get_object_point_clouds(self, camera_name: str, *, extra=None, timeout=None, **kwargs) -> List[PointCloudObject]:
        raise MethodNotImplementedError("get_object_point_clouds")

    async def get_detections_3d(self, camera_name: str, *, extra=None, timeout=None, **kwargs) -> List[Detection3D]:
        raise MethodNotImplementedError("get_detections_3d")

    async def do_command(self, command: Mapping[str, ValueTypes], *, timeout=None, **kwargs) -> Mapping[str, ValueTypes]:
        raise MethodNotImplementedError("do_command")


class ClassifierModule(Module):
    async def validate_config(self, request: ValidateConfigRequest) -> ValidateConfigResponse:
        # The SDK prefixes every validation message with "<class 'type'>: "; a ConfigError
        # already names the attribute, so it goes to the user as it is.
        if request.config.model == str(OnnxClassifier.MODEL):
            try:
                required, optional = OnnxClassifier.validate_config(request.config)
            except ConfigError as e:
                raise GRPCError(Status.INVALID_ARGUMENT, str(e)) from e
            return ValidateConfigResponse(dependencies=required, optional_dependencies=optional)
        return await super().validate_config(request)
