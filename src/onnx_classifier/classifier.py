"""The classifier core: bytes in, top-k (label, confidence) out. No Viam imports.

A call runs in three stages, as transformers' pipelines do: `preprocess` (decode and fit the
frame to the model's input, on a worker thread), the model's run, and `postprocess` (raw scores
to confidences). Only the run differs between backends: an ONNX file runs in this process
(`onnx_runtime.OnnxRuntime`, a `LocalBackend`), a Viam ML model service elsewhere
(`mlmodel_backend.MLModelBackend`, a `RemoteBackend`); the model's description, preprocessing,
heads, labels and label rules are the same objects for both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np

from .config import (
    ClassifierConfig,
    ConfigError,
    Head,
    OnnxFile,
    Region,
    Resize,
    ServiceConfig,
    check_label_names,
    parse_service_config,
)
from .cores import WORKERS
from .head import Prediction, auto_head, confidences, dequantized, top_k
from .model import Layout, ResolvedModel, assumed_preprocessing, description_files, file_stamps, read_labels, resolve_model
from .onnx_runtime import OnnxRuntime, resolve_providers
from .preprocess import Preprocessor

__all__ = [
    "Backend",
    "Classifier",
    "InferenceTimeout",
    "InferenceUnavailable",
    "LocalBackend",
    "Prediction",
    "RemoteBackend",
    "SharedClassifiers",
    "UnexpectedOutput",
]

LOGGER = logging.getLogger(__name__)


class BackendBase(Protocol):
    def describe(self) -> str:
        """The model's source in words, for messages ("model_path '/m.onnx'", "ML model service 'm'")."""

    def info(self) -> dict[str, Any]:
        """What runs the model and how, as plain JSON-able values (`backend`, `input`, `output`...)."""

    def close(self) -> None:
        """Free what the backend holds in this process (an onnxruntime session) now, rather than when the last reference goes."""


class LocalBackend(BackendBase, Protocol):
    """Runs the model in this process, on the calling thread."""

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The raw output for one input tensor."""


@runtime_checkable
class RemoteBackend(BackendBase, Protocol):
    """Runs the model elsewhere; the event loop awaits its answer."""

    async def forward(self, tensor: np.ndarray, timeout: Optional[float]) -> np.ndarray:
        """The raw output for one input tensor; `timeout` is the seconds left to the caller."""


# What runs the model: the input tensor in, the raw class-score output out.
Backend = Union[LocalBackend, RemoteBackend]


class InferenceUnavailable(Exception):
    """The backend cannot run the model now (an ML model service that is down or failing); a later call may succeed."""


class InferenceRefused(InferenceUnavailable):
    """The backend answered with an error of its own (it was reached, and refused this input)."""


class InferenceTimeout(InferenceUnavailable):
    """The backend did not answer within the time the call had left."""


class UnexpectedOutput(Exception):
    """The model's output is not what it was when the classifier was built (a changed model behind a service)."""


def validate_service_config(attributes: Any) -> tuple[ServiceConfig, tuple[str, ...]]:
    """Everything that can be checked without running the model: attributes, the model file,
    its description, the execution providers and the label names the attributes use. A model
    behind an ML model service is only known once the service answers; its labels file, if an
    attribute names one, is checked here.

    Returns the config and what the user should know: unrecognized attributes and model description
    keys (ignored), and preprocessing assumed for a model that nothing describes."""
    config = parse_service_config(attributes)
    classifier = config.classifier
    labels: Optional[tuple[str, ...]] = None
    warnings = config.warnings
    if isinstance(classifier.source, OnnxFile):
        model = resolve_model(classifier)
        resolve_providers(classifier.source)
        warnings += model.spec.description.warnings
        assumed = assumed_preprocessing(classifier, model)
        if assumed is not None:
            warnings += (assumed,)
        labels = model.labels
        if labels is None and model.spec.num_classes is not None:
            labels = tuple(str(i) for i in range(model.spec.num_classes))
    elif classifier.labels_path is not None:
        labels = read_labels(classifier.labels_path, f"attribute 'labels_path' ({classifier.labels_path})")
    if labels is not None:
        check_label_names(config.labels, labels)
    return config, warnings


def blank_input(model: ResolvedModel) -> np.ndarray:
    """An all-zero input tensor of the model's shape and type."""
    spec, (height, width) = model.spec, model.input_size
    shape = (1, spec.channels, height, width) if spec.layout is Layout.NCHW else (1, height, width, spec.channels)
    return np.zeros(shape, spec.input_dtype)


class Classifier:
    """One model with its labels and preprocessing, run by a backend. The stages are safe to call
    from several threads and tasks at once.

    `blank_output` is the backend's output for `blank_input(model)`: it fixes a dynamic class
    count and the output's shape, and is checked against the labels.
    """

    def __init__(self, config: ClassifierConfig, model: ResolvedModel, backend: Backend, blank_output: np.ndarray):
        self.config = config
        self.model = model
        self.backend = backend
        # Decided once: isinstance against a runtime-checkable Protocol costs about 12 us, twice a call.
        remote = isinstance(backend, RemoteBackend)
        self._remote: Optional[RemoteBackend] = backend if remote else None
        self._local: Optional[LocalBackend] = None if remote else backend
        self._preprocess = Preprocessor(model, config.max_image_pixels)
        self.output_shape: tuple[int, ...] = tuple(blank_output.shape)
        if sum(d != 1 for d in self.output_shape) > 1:
            raise ConfigError(
                f"{backend.describe()}: output {model.spec.output_name!r} gave shape {list(self.output_shape)} for an "
                "image; expected class scores [N, C] or [C]"
            )
        size = int(np.prod(self.output_shape))
        if model.labels is not None and len(model.labels) != size:
            raise ConfigError(
                f"{model.labels_source} has {len(model.labels)} labels but {backend.describe()} outputs {size} "
                f"classes (output {model.spec.output_name!r})"
            )
        self.labels: tuple[str, ...] = model.labels or tuple(str(i) for i in range(size))
        spec = model.spec
        self._blank_head = auto_head(dequantized(blank_output, spec.output_quantization), spec.final_activation, spec.graph_read)

    @classmethod
    def from_onnx_file(cls, config: ClassifierConfig) -> Classifier:
        """Load an ONNX file into onnxruntime and run it once on a blank input (which also takes the
        first-call allocation cost off the first request)."""
        assert isinstance(config.source, OnnxFile)
        model = resolve_model(config)
        backend = OnnxRuntime(config.source, model.spec)
        return cls(config, model, backend, backend.run(blank_input(model)))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def preprocess(self, data: bytes, region: Optional[Region] = None, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """The model's input tensor for one encoded image (or `region` of it); raises DecodeError for bytes that are not one."""
        return self._preprocess(data, region, timings)

    def postprocess(self, raw: np.ndarray, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """Confidences in [0, 1] for every class, in label order."""
        started = time.perf_counter()
        if tuple(raw.shape) != self.output_shape:
            raise UnexpectedOutput(
                f"{self.backend.describe()} returned output {self.model.spec.output_name!r} of shape {list(raw.shape)}, "
                f"expected {list(self.output_shape)} (its shape when the service started)"
            )
        spec = self.model.spec
        scores = confidences(raw, self.model.head, spec.final_activation, spec.output_quantization, spec.graph_read)
        if timings is not None:
            timings["postprocess"] = time.perf_counter() - started
        return scores

    async def score(self, data: bytes, region: Optional[Region], timeout: Optional[float], timings: dict[str, float]) -> np.ndarray:
        """All three stages for one encoded image, preprocessing on a worker thread.

        An in-process model runs on that same thread: handing the tensor back to the event loop and
        on to another worker cost about 3 ms a frame at 1080p (`bench/bench.py`'s e2e rows, measured
        both ways). A model elsewhere is awaited from the event loop, `timeout` being the call's time left.
        """
        loop = asyncio.get_running_loop()
        if self._remote is None:
            return await loop.run_in_executor(WORKERS, self.image_scores, data, region, timings)
        tensor = await loop.run_in_executor(WORKERS, self.preprocess, data, region, timings)
        started = time.perf_counter()
        raw = await self._remote.forward(tensor, timeout)
        timings["inference"] = time.perf_counter() - started
        return self.postprocess(raw, timings)

    # In-process, synchronous use (the command line, the benchmark): the ONNX file backend only.

    def scores(self, tensor: np.ndarray, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """Confidences for one input tensor, run on the calling thread."""
        started = time.perf_counter()
        raw = self._local_backend().run(tensor)
        if timings is not None:
            timings["inference"] = time.perf_counter() - started
        return self.postprocess(raw, timings)

    def image_scores(self, data: bytes, region: Optional[Region] = None, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        return self.scores(self.preprocess(data, region, timings), timings)

    def classify(self, data: bytes, count: int, min_confidence: float = 0.0, region: Optional[Region] = None) -> list[Prediction]:
        """The top `count` predictions for one encoded image (JPEG, PNG or Viam RGBA), highest first."""
        return top_k(self.image_scores(data, region), self.labels, count, min_confidence)

    def _local_backend(self) -> LocalBackend:
        if self._local is None:
            raise TypeError(f"{self.backend.describe()} runs outside this process: use `score`")
        return self._local

    def head_in_use(self) -> tuple[Head, str]:
        """The activation applied to the model's output, and why it was chosen."""
        head, spec = self.model.head, self.model.spec
        if head is not Head.AUTO:
            return head, self.model.head_source
        if spec.final_activation is not None:
            name = spec.final_activation.value.capitalize()
            return Head.NONE, f"auto: the graph already ends in {name}, so its output is used as it is"
        rule = (
            "scores that already form a probability distribution are used as they are"
            if spec.graph_read
            else "scores all in [0, 1] are used as they are (softmax or sigmoid outputs; nothing describes the model's head)"
        )
        return self._blank_head, (
            f"auto, decided on every frame (this is its choice for a blank image): {rule}; anything else is taken "
            "as logits (softmax, or sigmoid for a single class)"
        )

    def preprocessing_info(self) -> dict[str, Any]:
        """The resolved recipe, with only the settings that apply to this model."""
        pre = self.model.preprocessing
        info = {
            key: (value.value if hasattr(value, "value") else list(value) if isinstance(value, tuple) else value)
            for key, value in dataclasses.asdict(pre).items()
        }
        if self.model.spec.input_dtype == np.uint8:
            del info["mean"], info["std"]  # a uint8 input takes raw pixels
        if pre.resize is not Resize.CENTER_CROP:
            del info["crop_fraction"], info["crop_rounding"]
        return {**info, "exact_preprocessing": self.model.exact_preprocessing, "max_image_pixels": self.config.max_image_pixels}

    def info(self) -> dict[str, Any]:
        """What was loaded and how it will be run, as plain JSON-able values."""
        head, reason = self.head_in_use()
        return {
            **self.backend.info(),
            "labels": {"count": self.num_classes, "first": list(self.labels[:5]), "source": self.model.labels_source},
            "head": {"in_use": head.value, "reason": reason},
            "preprocessing": self.preprocessing_info(),
        }

    def close(self) -> None:
        """Free what the backend holds in this process now rather than when the last reference goes."""
        self.backend.close()


class SharedClassifiers:
    """Loaded ONNX-file classifiers shared by equal configs, so that a reconfigure that changes
    nothing else (Viam closes the old resource and builds a new one) does not reload
    the model. In-use classifiers are counted; of the released ones only the most
    recent is kept, and only until a different model is loaded, so memory stays bounded.
    Classifiers are dropped, never closed: a call still running on a replaced one (a
    reconfigure under load) finishes on it, and its session is freed when that call ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: dict[tuple, tuple[Classifier, int]] = {}
        self._idle: Optional[tuple[tuple, Classifier]] = None

    @staticmethod
    def _key(config: ClassifierConfig) -> tuple:
        assert isinstance(config.source, OnnxFile)
        path = config.source.path
        return config, file_stamps(path, config.labels_path, *description_files(path))

    def acquire(self, config: ClassifierConfig) -> Classifier:
        key = self._key(config)
        with self._lock:
            if key in self._in_use:
                classifier, users = self._in_use[key]
                self._in_use[key] = (classifier, users + 1)
                return classifier
            if self._idle is not None:
                idle_key, idle = self._idle
                self._idle = None
                if idle_key == key:
                    self._in_use[key] = (idle, 1)
                    return idle
                # A different model replaces it. Dropping the last reference frees its session here,
                # before the new one loads; a call still running on it holds it until that call ends.
                del idle
        started = time.perf_counter()
        classifier = Classifier.from_onnx_file(config)
        LOGGER.info("loaded %s in %.2f s", classifier.backend.describe(), time.perf_counter() - started)
        with self._lock:
            if key in self._in_use:  # another thread loaded the same model meanwhile: use theirs
                existing, users = self._in_use[key]
                self._in_use[key] = (existing, users + 1)
                return existing
            self._in_use[key] = (classifier, 1)
        return classifier

    def release(self, classifier: Classifier) -> None:
        with self._lock:
            for key, (held, users) in self._in_use.items():
                if held is classifier:
                    break
            else:
                return
            if users > 1:
                self._in_use[key] = (held, users - 1)
                return
            del self._in_use[key]
            self._idle = (key, classifier)  # the previous idle one is dropped, and freed once no call uses it

    def loaded(self) -> list[Classifier]:
        """Every classifier whose session is held, in use or idle."""
        with self._lock:
            return [c for c, _ in self._in_use.values()] + ([self._idle[1]] if self._idle else [])
