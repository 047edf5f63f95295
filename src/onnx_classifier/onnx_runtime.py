"""The in-process backend: an ONNX file run by onnxruntime in this process. The only file that uses onnxruntime."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

from .config import ConfigError, OnnxFile, did_you_mean
from .cores import available_cores
from .cpu import describe_cpu
from .model import ModelSpec

LOGGER = logging.getLogger(__name__)

_warned_unavailable: set[str] = set()


def resolve_providers(source: OnnxFile) -> tuple[str, ...]:
    """The requested execution providers this onnxruntime build has, in the requested order.

    A name onnxruntime does not know at all is an error; a known one missing from this build
    is an error with `strict_providers`, else skipped with a warning (once per provider), and
    the CPU provider is used when none is left.
    """
    known, available = ort.get_all_providers(), ort.get_available_providers()
    for name in source.providers:
        if name not in known:
            hint = did_you_mean(name, known, "providers")
            raise ConfigError(f"attribute 'providers': {name!r} is not an onnxruntime execution provider{hint}")
    missing = [name for name in source.providers if name not in available]
    if missing and source.strict_providers:
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
    return tuple(name for name in source.providers if name in available) or ("CPUExecutionProvider",)


def session_options(num_threads: Optional[int]) -> ort.SessionOptions:
    """Threads that do not spin, so that between runs they leave the cores to the event loop and the decoder."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntime:
    """Runs an ONNX file's model on the shared worker threads; `run` is safe to call from several threads."""

    def __init__(self, source: OnnxFile, spec: ModelSpec):
        self.source = source
        self.spec = spec
        self.options = session_options(source.num_threads)
        providers = list(resolve_providers(source))
        try:
            self._session: Optional[ort.InferenceSession] = ort.InferenceSession(str(source.path), self.options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"{source.describe()} cannot be loaded by onnxruntime: {e}") from e
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        self._sha256: Optional[str] = None

    def describe(self) -> str:
        return self.source.describe()

    def run(self, tensor: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise RuntimeError("the classifier is closed")
        (raw,) = session.run([self.spec.output_name], {self.spec.input_name: tensor})
        return raw

    def model_sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.source.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def info(self) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise RuntimeError("the classifier is closed")
        (model_input,) = session.get_inputs()
        output = next(o for o in session.get_outputs() if o.name == self.spec.output_name)
        return {
            "backend": "onnxruntime",
            "model_path": str(self.source.path),
            "model_sha256": self.model_sha256(),
            "input": {
                "name": model_input.name,
                "shape": list(model_input.shape),
                "type": model_input.type,
                "layout": self.spec.layout.value,
            },
            "output": {"name": output.name, "shape": list(output.shape), "type": output.type},
            "providers": {"requested": list(self.source.providers), "in_use": list(self.providers)},
            "threads": {
                "intra_op": self.options.intra_op_num_threads,
                "inter_op": self.options.inter_op_num_threads,
                "spinning": False,
            },
            "onnxruntime_version": ort.__version__,
            "cpu": describe_cpu(),
        }

    def close(self) -> None:
        self._session = None
