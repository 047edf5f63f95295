"""The classifier core: bytes in, top-k (label, confidence) out. No Viam imports."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

from .config import (
    ClassifierConfig,
    ConfigError,
    Head,
    Region,
    ServiceConfig,
    check_label_names,
    did_you_mean,
    parse_service_config,
)
from .cores import available_cores
from .head import Prediction, confidences, is_distribution, top_k
from .model import Layout, ResolvedModel, description_files, file_stamps, resolve_model
from .preprocess import Preprocessor

__all__ = ["Classifier", "Prediction", "SharedClassifiers"]

LOGGER = logging.getLogger(__name__)


_warned_unavailable: set[str] = set()


def resolve_providers(config: ClassifierConfig) -> tuple[str, ...]:
    """The requested execution providers this onnxruntime build has, in the requested order.

    A name onnxruntime does not know at all is an error; a known one missing from this build
    is an error with `strict_providers`, else skipped with a warning (once per provider), and
    the CPU provider is used when none is left.
    """
    known, available = ort.get_all_providers(), ort.get_available_providers()
    for name in config.providers:
        if name not in known:
            hint = did_you_mean(name, known, "providers")
            raise ConfigError(f"attribute 'providers': {name!r} is not an onnxruntime execution provider{hint}")
    missing = [name for name in config.providers if name not in available]
    if missing and config.strict_providers:
        raise ConfigError(
            f"attribute 'providers': {', '.join(map(repr, missing))} not available in the installed onnxruntime "
            f"{ort.__version__} (available: {', '.join(available)}); install the onnxruntime package built with it, "
            "or set 'strict_providers' to false to fall back"
        )
    for name in missing:
        if name not in _warned_unavailable:
            _warned_unavailable.add(name)
            LOGGER.warning(
                "execution provider %s is not available in onnxruntime %s (available: %s); falling back",
                name, ort.__version__, ", ".join(available),
            )
    return tuple(name for name in config.providers if name in available) or ("CPUExecutionProvider",)


def validate_service_config(attributes: Any) -> tuple[ServiceConfig, ResolvedModel]:
    """Everything that can be checked without running the model: attributes, the model file,
    its description, the execution providers and the label names the attributes use."""
    config = parse_service_config(attributes)
    model = resolve_model(config.classifier)
    resolve_providers(config.classifier)
    labels = model.labels
    if labels is None and model.spec.num_classes is not None:
        labels = tuple(str(i) for i in range(model.spec.num_classes))
    if labels is not None:
        check_label_names(config.labels, labels)
    return config, model


def session_options(num_threads: Optional[int]) -> ort.SessionOptions:
    """Threads that do not spin, so that between runs they leave the cores to the event loop and the decoder."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Classifier:
    """One loaded model with its labels and preprocessing; `classify` is safe to call from several threads."""

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.model: ResolvedModel = resolve_model(config)
        spec = self.model.spec
        self._preprocess = Preprocessor(self.model, config.max_image_pixels)
        self.options = session_options(config.num_threads)
        try:
            self._session: Optional[ort.InferenceSession] = ort.InferenceSession(
                str(config.model_path), self.options, providers=list(resolve_providers(config))
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"model_path {str(config.model_path)!r} cannot be loaded by onnxruntime: {e}") from e
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        # One run on a blank input: it fixes a dynamic class count, checks the labels
        # against it, and takes the first-call allocation cost off the first request.
        height, width = self.model.input_size
        shape = (1, spec.channels, height, width) if spec.layout is Layout.NCHW else (1, height, width, spec.channels)
        scores = self._run(np.zeros(shape, spec.input_dtype))
        if self.model.labels is not None and len(self.model.labels) != scores.size:
            raise ConfigError(f"{len(self.model.labels)} labels were given but the model outputs {scores.size} classes")
        self.labels: tuple[str, ...] = self.model.labels or tuple(str(i) for i in range(scores.size))
        self._blank_output_is_distribution = is_distribution(np.asarray(scores, np.float64).reshape(-1))
        self._sha256: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise RuntimeError("the classifier is closed")
        spec = self.model.spec
        (raw,) = session.run([spec.output_name], {spec.input_name: tensor})
        return raw if raw.ndim == 1 else raw[0]

    def preprocess(self, data: bytes, region: Optional[Region] = None, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """The model's input tensor for one encoded image (or `region` of it); raises DecodeError for bytes that are not one."""
        return self._preprocess(data, region, timings)

    def scores(self, tensor: np.ndarray, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """Confidences in [0, 1] for every class, in label order."""
        started = time.perf_counter()
        raw = self._run(tensor)
        ran = time.perf_counter()
        spec = self.model.spec
        result = confidences(raw, self.model.head, spec.final_activation, spec.output_quantization)
        if timings is not None:
            timings["inference"] = ran - started
            timings["postprocess"] = time.perf_counter() - ran
        return result

    def image_scores(self, data: bytes, region: Optional[Region] = None, timings: Optional[dict[str, float]] = None) -> np.ndarray:
        return self.scores(self.preprocess(data, region, timings), timings)

    def classify(self, data: bytes, count: int, min_confidence: float = 0.0, region: Optional[Region] = None) -> list[Prediction]:
        """The top `count` predictions for one encoded image (JPEG, PNG or Viam RGBA), highest first."""
        return top_k(self.image_scores(data, region), self.labels, count, min_confidence)

    def head_in_use(self) -> tuple[Head, str]:
        """The activation applied to the model's output, and why it was chosen."""
        head, spec, config = self.model.head, self.model.spec, self.config
        if head is not Head.AUTO:
            source = "attribute 'head'" if config.head is not None else "the model description's 'head'"
            return head, f"set by {source}"
        if spec.final_activation is not None:
            name = spec.final_activation.value.capitalize()
            return Head.NONE, f"auto: the graph already ends in {name}, so its output is used as it is"
        observed = "is" if self._blank_output_is_distribution else "is not"
        return Head.SOFTMAX, (
            "auto: softmax, unless a frame's output already is a probability distribution (checked on every frame; "
            f"the output for a blank image {observed} one)"
        )

    def model_sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.config.model_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def info(self) -> dict[str, Any]:
        """What was loaded and how it will be run, as plain JSON-able values."""
        session = self._session
        if session is None:
            raise RuntimeError("the classifier is closed")
        (model_input,) = session.get_inputs()
        output = next(o for o in session.get_outputs() if o.name == self.model.spec.output_name)
        head, reason = self.head_in_use()
        pre = self.model.preprocessing
        return {
            "model_path": str(self.config.model_path),
            "model_sha256": self.model_sha256(),
            "input": {
                "name": model_input.name,
                "shape": list(model_input.shape),
                "type": model_input.type,
                "layout": self.model.spec.layout.value,
            },
            "output": {"name": output.name, "shape": list(output.shape), "type": output.type},
            "labels": {"count": self.num_classes, "first": list(self.labels[:5])},
            "head": {"in_use": head.value, "reason": reason},
            "preprocessing": {
                **{k: (v.value if hasattr(v, "value") else list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(pre).items()},
                "exact_preprocessing": self.model.exact_preprocessing,
                "max_image_pixels": self.config.max_image_pixels,
            },
            "providers": {"requested": list(self.config.providers), "in_use": list(self.providers)},
            "threads": {
                "intra_op": self.options.intra_op_num_threads,
                "inter_op": self.options.inter_op_num_threads,
                "spinning": False,
            },
            "onnxruntime_version": ort.__version__,
        }

    def close(self) -> None:
        self._session = None


class SharedClassifiers:
    """Loaded classifiers shared by equal configs, so that a reconfigure that changes
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
        return config, file_stamps(config.model_path, config.labels_path, *description_files(config.model_path))

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
        classifier = Classifier(config)
        LOGGER.info("loaded %s in %.2f s", config.model_path, time.perf_counter() - started)
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
