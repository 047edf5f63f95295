"""Real ML model services (`rdk:service:mlmodel`) for the parent robot: onnxruntime runs an ONNX file,
and the metadata is written the way each kind of service users have writes it.

Each service is an `MLModel` subclass served by the SDK's own server, so the module reaches it as it
reaches a TF-Lite, Triton or registry service under viam-server: through the parent, over gRPC.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnxruntime as ort
from viam.proto.service.mlmodel import InferRequest, InferResponse, Metadata, TensorInfo
from viam.services.mlmodel import MLModel
from viam.services.mlmodel.service import MLModelRPCService
from viam.services.mlmodel.utils import ndarrays_to_flat_tensors
from viam.utils import dict_to_struct

from onnx_classifier.mlmodel_backend import decode_tensor
from onnx_classifier.onnx_runtime import session_options


def tensor_info(name: str, data_type: str, shape: Sequence[int], extra: Optional[Mapping[str, Any]] = None) -> TensorInfo:
    info = TensorInfo(name=name, data_type=data_type, shape=list(shape))
    if extra is not None:
        info.extra.CopyFrom(dict_to_struct(dict(extra)))
    return info


class OnnxModelService(MLModel):
    """Runs an ONNX file with onnxruntime; its tensors are named and described as `inputs`/`outputs`
    say (model tensor names are mapped to those positionally).

    Faults for tests: `metadata_error` and `infer_error` raised while set, `metadata_hang` and `hang`
    (Events that metadata and infer wait for while they are clear), `outputs_override` (returned
    instead of the model's outputs). `infer_started` is set by every infer call, `received` keeps
    what each was given, `timeouts` the (method, timeout) each call was given.
    """

    def __init__(self, name: str, model_path: Path, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], **metadata):
        super().__init__(name)
        # The module's own settings (threads that do not spin), so that it and the parent share the cores fairly.
        self.session = ort.InferenceSession(str(model_path), session_options(None), providers=["CPUExecutionProvider"])
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.metadata_fields = metadata
        self.metadata_error: Optional[Exception] = None
        self.metadata_calls = 0
        self.metadata_hang = asyncio.Event()
        self.metadata_hang.set()
        self.infer_error: Optional[Exception] = None
        self.hang = asyncio.Event()
        self.hang.set()
        self.outputs_override: Optional[dict[str, np.ndarray]] = None
        self.received: list[dict[str, np.ndarray]] = []
        self.infer_started = asyncio.Event()
        self.timeouts: list[tuple[str, Optional[float]]] = []

    async def metadata(self, *, extra=None, timeout=None, **kwargs) -> Metadata:
        self.metadata_calls += 1
        self.timeouts.append(("metadata", timeout))
        await self.metadata_hang.wait()
        if self.metadata_error is not None:
            raise self.metadata_error
        return Metadata(input_info=self.inputs, output_info=self.outputs, **self.metadata_fields)

    async def infer(self, input_tensors, *, extra=None, timeout=None, **kwargs) -> dict[str, np.ndarray]:
        self.received.append(dict(input_tensors))
        self.timeouts.append(("infer", timeout))
        self.infer_started.set()
        await self.hang.wait()
        if self.infer_error is not None:
            raise self.infer_error
        if self.outputs_override is not None:
            return self.outputs_override
        (model_input,) = self.session.get_inputs()
        raw = self.session.run(None, {model_input.name: input_tensors[self.inputs[0].name]})
        return {info.name: value.reshape(value.shape if len(info.shape) != 1 else (-1,)) for info, value in zip(self.outputs, raw)}

    async def close(self) -> None:
        self.hang.set()
        self.metadata_hang.set()


class PackedTensorsRPCService(MLModelRPCService):
    """The SDK's ML model RPC service, reading float32 input tensors from their packed bytes as
    viam-server (Go) does, instead of element by element (about 20 ms for 1x3x224x224 in Python):
    for benchmarks, so that the figures are this module's cost and not the stand-in parent's."""

    async def Infer(self, stream) -> None:  # noqa: N802 (gRPC's name)
        request: InferRequest = await stream.recv_message()
        mlmodel = self.get_resource(request.name)
        inputs = {name: decode_tensor(tensor) for name, tensor in request.input_tensors.tensors.items()}
        timeout = stream.deadline.time_remaining() if stream.deadline else None
        outputs = await mlmodel.infer(inputs, timeout=timeout)
        await stream.send_message(InferResponse(output_tensors=ndarrays_to_flat_tensors(outputs)))
