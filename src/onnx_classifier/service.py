"""The Viam vision service: a thin adapter from the vision API to the classifier core."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, ClassVar, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

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
from viam.services.mlmodel import MLModel
from viam.services.vision import CaptureAllResult, Vision
from viam.utils import ValueTypes, struct_to_dict

from .classifier import (
    Classifier,
    InferenceTimeout,
    InferenceUnavailable,
    SharedClassifiers,
    UnexpectedOutput,
    validate_service_config,
)
from .config import ConfigError, MLModelService, OnnxFile, Region, ServiceConfig, parse_region, parse_service_config
from .deadlines import within, work_time
from .decode import DecodeError
from .head import LabelFilter
from .mlmodel_backend import load_classifier
from .paths import META_JSON
from .smoothing import CameraSmoother
from .stats import CallStats

T = TypeVar("T")


def _model_from_meta() -> str:
    """The model triplet lives in meta.json only, so an organization changes its namespace in one place."""
    (entry,) = json.loads(META_JSON.read_text())["models"]
    return entry["model"]


# Route the package's logs (loggers under "onnx_classifier") to viam-server like the SDK's own. This
# module's logger is a plain child of that one: with handlers of its own, each line would be sent twice.
viam_logging.getLogger("onnx_classifier")
LOGGER = logging.getLogger(__name__)


SHARED_CLASSIFIERS = SharedClassifiers()
# capture_all_from_camera has no count of its own: it returns the conventional top-5.
CAPTURE_COUNT = 5
# What a camera may send beside its colour image.
NOT_COLOUR_TYPES = {"image/vnd.viam.dep", "pointcloud/pcd"}
COMMANDS = ("info", "stats", "reset")


class OnnxClassifier(Vision, EasyResource):
    MODEL: ClassVar[Model] = _model_from_meta()

    config: ServiceConfig
    # The model and the label rules that apply to its labels; None until a model behind an ML
    # model service has been described by it, and after close.
    loaded: Optional[tuple[Classifier, LabelFilter]]
    mlmodel: Optional[MLModel]  # the ML model service that runs the model, if one does
    loading: Optional[asyncio.Task]
    closed: bool
    cameras: Mapping[str, Camera]
    smoothers: dict[str, CameraSmoother]
    stats: CallStats

    @classmethod
    def validate_config(cls, config: ComponentConfig) -> Tuple[Sequence[str], Sequence[str]]:
        """Check every attribute, the model file and the label names; the cameras and the ML model
        service are required dependencies."""
        parsed, warnings = validate_service_config(struct_to_dict(config.attributes))
        for warning in warnings:
            LOGGER.warning("vision service %r: %s", config.name, warning)
        return list(parsed.dependencies), []

    @classmethod
    def new(cls, config: ComponentConfig, dependencies: Mapping[ResourceName, ResourceBase]) -> "OnnxClassifier":
        parsed = parse_service_config(struct_to_dict(config.attributes))
        cameras = {}
        for name in parsed.cameras:
            camera = dependencies.get(Camera.get_resource_name(name))
            if not isinstance(camera, Camera):
                raise ConfigError(f"camera {name!r} is not among this service's dependencies")
            cameras[name] = camera
        source = parsed.classifier.source
        mlmodel = None
        if isinstance(source, MLModelService):
            mlmodel = dependencies.get(MLModel.get_resource_name(source.name))
            if not isinstance(mlmodel, MLModel):
                raise ConfigError(f"{source.describe()} is not among this service's dependencies")
        service = cls(config.name)
        service.config = parsed
        service.cameras = cameras
        service.smoothers = {}
        service.stats = CallStats()
        service.mlmodel = mlmodel
        service.loading = None
        service.closed = False
        service.loaded = None
        if isinstance(source, OnnxFile):
            classifier = SHARED_CLASSIFIERS.acquire(parsed.classifier)
            try:
                service.loaded = (classifier, LabelFilter(parsed.labels, classifier.labels))
            except ConfigError:
                SHARED_CLASSIFIERS.release(classifier)
                raise
        else:
            # new() cannot wait for the ML model service: its metadata is read by a task, and calls wait for it.
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # built outside an event loop (tests): the first call starts loading
            else:
                service._start_loading()
        return service

    def _start_loading(self) -> asyncio.Task:
        self.loading = asyncio.get_running_loop().create_task(self._load())
        self.loading.add_done_callback(self._report_loading)
        return self.loading

    async def _load(self) -> None:
        assert self.mlmodel is not None
        started = time.perf_counter()
        classifier = await load_classifier(self.config.classifier, self.mlmodel)
        label_filter = LabelFilter(self.config.labels, classifier.labels)
        if not self.closed:
            self.loaded = (classifier, label_filter)
        LOGGER.info(
            "vision service %r: %s described its model in %.2f s (%d classes)",
            self.name, classifier.backend.describe(), time.perf_counter() - started, classifier.num_classes,
        )

    def _report_loading(self, task: asyncio.Task) -> None:
        """Log a failed load (which also marks its error as seen: a later call retries and reports it)."""
        if not task.cancelled() and task.exception() is not None:
            LOGGER.warning("vision service %r: %s", self.name, task.exception())

    async def _ready(self, deadline: Optional[float]) -> tuple[Classifier, LabelFilter]:
        """The loaded model and label rules, waiting for (or retrying) an ML model service's description."""
        if self.loaded is not None:
            return self.loaded
        if self.closed:
            raise ViamGRPCError(f"vision service {self.name!r} is closed", Status.UNAVAILABLE)
        task = self.loading
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._start_loading()  # the previous attempt failed: this call tries again
        try:
            await asyncio.wait_for(asyncio.shield(task), _remaining(deadline))
        except asyncio.TimeoutError as e:
            raise ViamGRPCError(
                f"{self.config.classifier.source.describe()} had not described its model when the call's deadline passed",
                Status.DEADLINE_EXCEEDED,
            ) from e
        except InferenceUnavailable as e:
            raise ViamGRPCError(f"{e}; this service retries on the next call", Status.UNAVAILABLE) from e
        except (ConfigError, UnexpectedOutput) as e:
            raise ViamGRPCError(
                f"{self.config.classifier.source.describe()} cannot be used as this classifier: {e}", Status.FAILED_PRECONDITION
            ) from e
        assert self.loaded is not None
        return self.loaded

    async def close(self) -> None:
        self.closed = True
        loaded, self.loaded = self.loaded, None
        self.smoothers.clear()
        if self.loading is not None:
            self.loading.cancel()
        # The ML model service is not closed: it is a resource of its own, which others may use.
        if loaded is not None and isinstance(self.config.classifier.source, OnnxFile):
            SHARED_CLASSIFIERS.release(loaded[0])

    @property
    def smoothing(self) -> bool:
        return self.config.smoothing_window > 1 or self.config.label_hold_frames > 1

    async def _observed(self, method: str, work: Callable[[dict[str, float]], Awaitable[T]]) -> T:
        """Run one call, recording its stage timings and, if it fails, its status, for "stats"."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        try:
            result = await work(timings)
        except ViamGRPCError as e:
            self.stats.record(method, timings, e.grpc_code.name)
            raise
        except BaseException as e:
            self.stats.record(method, timings, "CANCELLED" if isinstance(e, asyncio.CancelledError) else "UNKNOWN")
            raise
        timings["total"] = time.perf_counter() - started
        self.stats.record(method, timings)
        return result

    async def _classify(
        self,
        data: bytes,
        count: int,
        region: Optional[Region],
        camera: Optional[str],
        smoothing: bool,
        deadline: Optional[float],
        timings: dict[str, float],
    ) -> List[Classification]:
        """One frame's top `count` classifications; `camera` names the camera it came from (None: the client's image)."""
        classifier, label_filter = await self._ready(deadline)
        source = "image" if camera is None else f"image from camera {camera!r}"
        try:
            scores = await classifier.score(data, region, _remaining(deadline), timings)
        except DecodeError as e:
            raise ViamGRPCError(f"{source}: {e}", Status.INVALID_ARGUMENT) from e
        except InferenceTimeout as e:
            raise ViamGRPCError(f"{source}: {e}", Status.DEADLINE_EXCEEDED) from e
        except InferenceUnavailable as e:
            raise ViamGRPCError(f"{source}: {e}", Status.UNAVAILABLE) from e
        except Exception as e:
            LOGGER.exception("vision service %r: classifying %s failed", self.name, source)
            raise ViamGRPCError(f"{source}: the model failed on this image: {e}", Status.INTERNAL) from e
        return self._select(scores, label_filter, count, camera, smoothing)

    def _select(
        self, scores: np.ndarray, label_filter: LabelFilter, count: int, camera: Optional[str], smoothing: bool
    ) -> List[Classification]:
        held = None
        if camera is not None and smoothing and self.smoothing:
            smoother = self.smoothers.get(camera)
            if smoother is None:
                smoother = self.smoothers[camera] = CameraSmoother(self.config.smoothing_window, self.config.label_hold_frames)
            scores, held = smoother.update(scores, label_filter.best)
        return [Classification(class_name=p.label, confidence=p.confidence) for p in label_filter.select(scores, count, first=held)]

    def _call_options(self, extra: Optional[Mapping[str, Any]], camera: Optional[str]) -> tuple[Optional[Region], bool]:
        """The region and whether to smooth, from the call's `extra` over the configuration."""
        extra = extra or {}
        region = self.config.region_for(camera)
        if extra.get("region") is not None:
            try:
                region = parse_region(extra["region"], "extra 'region'")
            except ConfigError as e:
                raise ViamGRPCError(str(e), Status.INVALID_ARGUMENT) from e
        smoothing = extra.get("smoothing", True)
        if not isinstance(smoothing, bool):
            raise ViamGRPCError(f"extra 'smoothing' must be true or false, got {smoothing!r}", Status.INVALID_ARGUMENT)
        return region, smoothing

    def _camera(self, camera_name: str) -> Tuple[str, Camera]:
        """The requested camera and its name; an empty name means the default camera."""
        name = camera_name or self.config.camera_name
        if not name:
            raise ViamGRPCError(
                "no camera named in the request and no 'camera_name' configured for this service", Status.INVALID_ARGUMENT
            )
        camera = self.cameras.get(name)
        if camera is None:
            configured = ", ".join(repr(c) for c in self.cameras) or "none"
            raise ViamGRPCError(f"camera {name!r} is not configured for this service; configured cameras: {configured}", Status.NOT_FOUND)
        return name, camera

    async def _frame(self, name: str, camera: Camera, timeout: Optional[float], timings: dict[str, float]) -> ViamImage:
        """The camera's first colour image."""
        limit = self.config.camera_timeout_s if timeout is None else min(timeout, self.config.camera_timeout_s)
        started = time.perf_counter()
        try:
            images, _ = await within(camera.get_images(timeout=limit), limit)
        except asyncio.TimeoutError as e:
            raise ViamGRPCError(
                f"camera {name!r} did not return an image within {limit:g} s "
                f"(the call's deadline or 'camera_timeout_s' = {self.config.camera_timeout_s:g} s)",
                Status.DEADLINE_EXCEEDED,
            ) from e
        except Exception as e:
            raise ViamGRPCError(f"camera {name!r} did not return an image: {_reason(e)}", Status.UNAVAILABLE) from e
        finally:
            timings["fetch"] = time.perf_counter() - started
        if not images:
            raise ViamGRPCError(f"camera {name!r} returned no images", Status.UNAVAILABLE)
        # A camera may send a depth map or point cloud beside its colour image: take the first that is not one.
        image = next((i for i in images if str(i.mime_type) not in NOT_COLOUR_TYPES), None)
        if image is None:
            sent = ", ".join(sorted({str(i.mime_type) for i in images}))
            raise ViamGRPCError(
                f"camera {name!r} returned only {sent} (a depth map or point cloud); this service classifies "
                "colour images (JPEG, PNG or image/vnd.viam.rgba): use the camera's colour stream",
                Status.INVALID_ARGUMENT,
            )
        return image

    async def get_classifications(
        self,
        image: ViamImage,
        count: int,
        *,
        extra: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs,
    ) -> List[Classification]:
        deadline = _deadline(timeout)

        async def work(timings: dict[str, float]) -> List[Classification]:
            region, _ = self._call_options(extra, None)
            return await self._classify(image.data, count, region, None, False, deadline, timings)

        return await self._observed("get_classifications", work)

    async def get_classifications_from_camera(
        self,
        camera_name: str,
        count: int,
        *,
        extra: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs,
    ) -> List[Classification]:
        deadline = _deadline(timeout)

        async def work(timings: dict[str, float]) -> List[Classification]:
            name, camera = self._camera(camera_name)
            region, smoothing = self._call_options(extra, name)  # a bad request fails before the camera is asked
            frame = await self._frame(name, camera, _remaining(deadline), timings)
            return await self._classify(frame.data, count, region, name, smoothing, deadline, timings)

        return await self._observed("get_classifications_from_camera", work)

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
        deadline = _deadline(timeout)

        async def work(timings: dict[str, float]) -> CaptureAllResult:
            # Data capture asks for everything; what a classifier cannot give stays None.
            name, camera = self._camera(camera_name)
            region, smoothing = self._call_options(extra, name)
            frame = await self._frame(name, camera, _remaining(deadline), timings)
            result = CaptureAllResult()
            if return_image:
                result.image = frame
            if return_classifications:
                result.classifications = await self._classify(frame.data, CAPTURE_COUNT, region, name, smoothing, deadline, timings)
            return result

        return await self._observed("capture_all_from_camera", work)

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
        """"info": what is loaded and how it runs; "stats": calls, errors and stage latencies;
        "reset": clear the stats and every camera's smoothing state."""
        name = command.get("command")
        if name == "info":
            classifier, _ = await self._ready(_deadline(timeout))
            info = dict(await asyncio.to_thread(classifier.info))  # hashes the model file once
            info["service"] = self.config.summary()
            return info
        if name == "stats":
            return self.stats.report()
        if name == "reset":
            self.stats.reset()
            self.smoothers.clear()
            return {"reset": ["stats", "smoothing"]}
        known = ", ".join(repr(c) for c in COMMANDS)
        raise ViamGRPCError(f"unknown command {name!r}: send {{\"command\": ...}} with one of {known}", Status.INVALID_ARGUMENT)


def _reason(error: Exception) -> str:
    """An error's own words. A dependency reached over gRPC fails with a GRPCError, whose str() is its
    (status, message, details) tuple."""
    if isinstance(error, GRPCError):
        return error.message or error.status.name
    return str(error)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """When the work of a call with `timeout` seconds left must end, on the event loop's clock: a
    margin before the caller's deadline (deadlines.work_time)."""
    return None if timeout is None else asyncio.get_running_loop().time() + work_time(timeout)


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())


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
