"""The classifier core: bytes in, top-k (label, confidence) out. No Viam imports."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import numpy as np
import onnxruntime as ort

from .config import ClassifierConfig, ConfigError
from .cores import available_cores
from .head import Prediction, confidences, top_k
from .model import Layout, ResolvedModel, description_files, file_stamps, resolve_model
from .preprocess import Preprocessor

__all__ = ["Classifier", "Prediction", "SharedClassifiers"]

LOGGER = logging.getLogger(__name__)


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
        self._preprocess = Preprocessor(self.model)
        try:
            self._session: Optional[ort.InferenceSession] = ort.InferenceSession(
                str(config.model_path), session_options(config.num_threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"model_path {str(config.model_path)!r} cannot be loaded by onnxruntime: {e}") from e
        # One run on a blank input: it fixes a dynamic class count, checks the labels
        # against it, and takes the first-call allocation cost off the first request.
        height, width = self.model.input_size
        shape = (1, spec.channels, height, width) if spec.layout is Layout.NCHW else (1, height, width, spec.channels)
        scores = self._run(np.zeros(shape, spec.input_dtype))
        if self.model.labels is not None and len(self.model.labels) != scores.size:
            raise ConfigError(f"{len(self.model.labels)} labels were given but the model outputs {scores.size} classes")
        self.labels: tuple[str, ...] = self.model.labels or tuple(str(i) for i in range(scores.size))

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

    def preprocess(self, data: bytes) -> np.ndarray:
        """The model's input tensor for one encoded image; raises DecodeError for bytes that are not one."""
        return self._preprocess(data)

    def scores(self, tensor: np.ndarray) -> np.ndarray:
        spec = self.model.spec
        return confidences(self._run(tensor), self.model.head, spec.final_activation, spec.output_quantization)

    def classify(self, data: bytes, count: int, min_confidence: float = 0.0) -> list[Prediction]:
        """The top `count` predictions for one encoded image (JPEG, PNG or Viam RGBA), highest first."""
        return top_k(self.scores(self.preprocess(data)), self.labels, count, min_confidence)

    def close(self) -> None:
        self._session = None


class SharedClassifiers:
    """Loaded classifiers shared by equal configs, so that a reconfigure that changes
    nothing else (Viam closes the old resource and builds a new one) does not reload
    the model. In-use classifiers are counted; of the released ones only the most
    recent is kept, and only until a different model is loaded, so memory stays bounded.
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
                idle.close()  # a different model replaces it: free it before loading the new one
        started = time.perf_counter()
        classifier = Classifier(config)
        LOGGER.info("loaded %s in %.2f s", config.model_path, time.perf_counter() - started)
        with self._lock:
            if key in self._in_use:  # another thread loaded the same model meanwhile
                existing, users = self._in_use[key]
                self._in_use[key] = (existing, users + 1)
                classifier.close()
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
            if self._idle is not None:
                self._idle[1].close()
            self._idle = (key, classifier)

    def loaded(self) -> list[Classifier]:
        """Every classifier whose session is held, in use or idle."""
        with self._lock:
            return [c for c, _ in self._in_use.values()] + ([self._idle[1]] if self._idle else [])
