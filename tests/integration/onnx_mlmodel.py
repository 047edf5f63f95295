"""An ML model service (`rdk:service:mlmodel`, model `test:mlmodel:onnxruntime`) for the integration
tier: a local module that runs onnxruntime on the ONNX file named in its attributes.

    {"name": "onnx-model", "api": "rdk:service:mlmodel", "model": "test:mlmodel:onnxruntime",
     "attributes": {"model_path": "/abs/model.onnx", "label_path": "/abs/labels.txt"}}

Its metadata has the shape Viam's own ML model services report: one TensorInfo per graph input and
output with the name, the data type as numpy names it (`float32`, `uint8`), the shape with -1 for a
dynamic dimension, and `extra.labels` on the first output holding the labels file's path (where
rdk's built-in `mlmodel` vision service looks for labels). Inference takes and returns tensors by
the graph's own names. Started by viam-server through onnx_mlmodel.sh, with this checkout's .venv.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort
from grpclib import Status
from numpy.typing import NDArray
from viam.errors import ViamGRPCError
from viam.module.module import Module
from viam.proto.app.robot import ComponentConfig
from viam.proto.common import ResourceName
from viam.resource.base import ResourceBase
from viam.resource.easy_resource import EasyResource
from viam.resource.types import Model, ModelFamily
from viam.services.mlmodel import Metadata, MLModel, TensorInfo
from viam.utils import ValueTypes, dict_to_struct, struct_to_dict

# onnxruntime's element types, as Viam's ML model services name them.
DATA_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def _paths(config: ComponentConfig) -> Tuple[Path, Optional[Path]]:
    attributes = struct_to_dict(config.attributes)
    if not isinstance(attributes.get("model_path"), str):
        raise ValueError(f"mlmodel {config.name!r}: attribute 'model_path' (a path to an .onnx file) is required")
    model = Path(attributes["model_path"])
    labels = Path(attributes["label_path"]) if isinstance(attributes.get("label_path"), str) else None
    for attribute, path in (("model_path", model), ("label_path", labels)):
        if path is not None and not path.is_file():
            raise ValueError(f"mlmodel {config.name!r}: attribute {attribute!r}: no file at {str(path)!r}")
    return model, labels


def _tensor_info(node: ort.NodeArg, extra: Mapping[str, ValueTypes]) -> TensorInfo:
    return TensorInfo(
        name=node.name,
        data_type=DATA_TYPES.get(node.type, node.type),
        shape=[dim if isinstance(dim, int) else -1 for dim in node.shape],
        extra=dict_to_struct(dict(extra)),
    )


class OnnxMLModel(MLModel, EasyResource):
    MODEL: ClassVar[Model] = Model(ModelFamily("test", "mlmodel"), "onnxruntime")

    session: ort.InferenceSession
    model_path: Path
    label_path: Optional[Path]

    @classmethod
    def validate_config(cls, config: ComponentConfig) -> Tuple[Sequence[str], Sequence[str]]:
        _paths(config)
        return [], []

    @classmethod
    def new(cls, config: ComponentConfig, dependencies: Mapping[ResourceName, ResourceBase]) -> "OnnxMLModel":
        service = cls(config.name)
        service.model_path, service.label_path = _paths(config)
        service.session = ort.InferenceSession(str(service.model_path), providers=["CPUExecutionProvider"])
        return service

    async def infer(
        self, input_tensors: Dict[str, NDArray], *, extra: Optional[Mapping[str, ValueTypes]] = None, timeout: Optional[float] = None
    ) -> Dict[str, NDArray]:
        expected = [node.name for node in self.session.get_inputs()]
        if sorted(input_tensors) != sorted(expected):
            raise ViamGRPCError(f"this model takes the input tensors {expected}, got {sorted(input_tensors)}", Status.INVALID_ARGUMENT)
        outputs = await asyncio.to_thread(self.session.run, None, dict(input_tensors))
        return {node.name: np.asarray(value) for node, value in zip(self.session.get_outputs(), outputs)}

    async def metadata(self, *, extra: Optional[Mapping[str, ValueTypes]] = None, timeout: Optional[float] = None) -> Metadata:
        outputs = self.session.get_outputs()
        labels = {"labels": str(self.label_path)} if self.label_path is not None else {}
        return Metadata(
            name=self.model_path.stem,
            type="onnxruntime",
            description=f"onnxruntime {ort.__version__} on {self.model_path}",
            input_info=[_tensor_info(node, {}) for node in self.session.get_inputs()],
            output_info=[_tensor_info(node, labels if i == 0 else {}) for i, node in enumerate(outputs)],
        )


if __name__ == "__main__":
    asyncio.run(Module.run_from_registry())
