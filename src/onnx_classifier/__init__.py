"""ONNX image classification, usable on its own and as a Viam vision service.

The classifier core (`Classifier` and what it uses) imports nothing from Viam;
`onnx_classifier.service` adapts it to the vision API and `onnx_classifier.cli`
to the command line.
"""

from .classifier import Classifier, Prediction
from .config import ClassifierConfig, ConfigError, Head, ServiceConfig, parse_service_config
from .decode import DecodeError

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "ConfigError",
    "DecodeError",
    "Head",
    "Prediction",
    "ServiceConfig",
    "parse_service_config",
]
