"""The ML model service backend: a Viam ML model service (`rdk:service:mlmodel`) runs the model
(TF-Lite, Triton on a GPU host, a registry module, a remote part's service); this module
decodes and preprocesses the frame, sends the service the input tensor, and reads back the scores.

Importing this module imports `viam.services.mlmodel`, which registers the ML model API with
the SDK: without it the SDK would not hand this module its ML model service dependency.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from grpclib import GRPCError, Status
from grpclib.client import UnaryUnaryMethod
from viam.proto.service.mlmodel import FlatTensor, FlatTensors, InferRequest, InferResponse, Metadata
from viam.services.mlmodel import MLModel
from viam.services.mlmodel.client import MLModelClient
from viam.utils import struct_to_dict

from .classifier import Classifier, InferenceRefused, InferenceTimeout, InferenceUnavailable, UnexpectedOutput, blank_input
from .config import ClassifierConfig, ConfigError, MLModelService
from .deadlines import within
from .model import MLMODEL_PREPROCESSING, ModelSpec, TensorInfo, describe_service_model, resolve

INFER_METHOD = "/viam.service.mlmodel.v1.MLModelService/Infer"
# Which FlatTensor field carries each input type, and the wire tags of the messages built by hand.
_DATA_FIELD = {np.dtype(np.uint8): "uint8_tensor", np.dtype(np.float32): "float_tensor"}
_LENGTH_DELIMITED = 2
# Statuses of a service that could not take the call at all; any other error is its answer to this input.
_NOT_REACHED = {Status.UNAVAILABLE, Status.CANCELLED, Status.RESOURCE_EXHAUSTED, Status.ABORTED}
# The FlatTensor fields whose values protobuf gives as a list of Python ints.
_REPEATED_INTEGER_TYPES = {
    "int16_tensor": np.int16,
    "uint16_tensor": np.uint16,
    "int32_tensor": np.int32,
    "uint32_tensor": np.uint32,
    "int64_tensor": np.int64,
    "uint64_tensor": np.uint64,
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _number(message, name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


def encode_infer_request(service_name: str, tensors: Mapping[str, np.ndarray]) -> bytes:
    """An InferRequest's wire bytes, with each tensor's data as one packed block.

    The SDK's `ndarrays_to_flat_tensors` hands a float32 tensor to protobuf element by element
    (about 70 ms for 1x3x224x224 here); packed repeated floats and uint8 bytes are both the
    array's own little-endian bytes, so they are written as they are (a fraction of a millisecond).
    """
    entries = b""
    for name, array in tensors.items():
        data_field = _DATA_FIELD[array.dtype]
        data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        shape = np.array(array.shape, "<u8").tobytes()  # FlatTensor.shape is packed fixed64
        flat = _field(_number(FlatTensor, "shape"), shape) + _field(
            _number(FlatTensor, data_field), _field(1, data)  # FlatTensorData*.data is field 1 in every type
        )
        entry = _field(1, name.encode()) + _field(2, flat)  # a map entry: key 1, value 2
        entries += _field(_number(FlatTensors, "tensors"), entry)
    return _field(_number(InferRequest, "name"), service_name.encode()) + _field(_number(InferRequest, "input_tensors"), entries)


class EncodedInferRequest:
    """An InferRequest already in wire form, for grpclib's protobuf codec (which calls SerializeToString)."""

    def __init__(self, data: bytes):
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
        return self.data


def decode_tensor(tensor: FlatTensor) -> np.ndarray:
    """One output tensor as an ndarray of its own type, read from its packed bytes."""
    kind = tensor.WhichOneof("tensor")
    if kind is None:
        raise UnexpectedOutput("an output tensor holds no data")
    data = getattr(tensor, kind)
    shape = tuple(tensor.shape)
    if kind in ("uint8_tensor", "int8_tensor"):
        return np.frombuffer(data.data, np.uint8 if kind == "uint8_tensor" else np.int8).reshape(shape)
    if kind in ("float_tensor", "double_tensor"):
        # Packed floats are stored as they are: the serialized field, less its one-byte tag and
        # its varint length, is the array's little-endian bytes.
        dtype = np.dtype("<f4" if kind == "float_tensor" else "<f8")
        wire = data.SerializeToString()
        if not wire:
            return np.zeros(0, dtype).reshape(shape)
        start = 1
        while wire[start] & 0x80:
            start += 1
        return np.frombuffer(wire, dtype, offset=start + 1).reshape(shape)
    return np.asarray(data.data, _REPEATED_INTEGER_TYPES[kind]).reshape(shape)  # small and rare


def tensor_infos(infos: Sequence[Any]) -> list[TensorInfo]:
    return [
        TensorInfo(i.name, i.data_type, tuple(int(d) for d in i.shape), struct_to_dict(i.extra) if i.HasField("extra") else {})
        for i in infos
    ]


class MLModelBackend:
    """Runs the model on an ML model service: one Infer call per frame, bounded by the call's deadline
    and `mlmodel_timeout_s`."""

    def __init__(self, service: MLModelService, client: MLModel, metadata: Metadata, spec: ModelSpec, input_type_source: str):
        self.service = service
        self.client = client
        self.metadata = metadata
        self.spec = spec
        self.input_type_source = input_type_source  # why the input is sent as spec.input_dtype, for `info`
        # The SDK's client converts tensors element by element; its channel takes prepared bytes.
        self._infer_bytes = (
            UnaryUnaryMethod(client.channel, INFER_METHOD, EncodedInferRequest, InferResponse)
            if isinstance(client, MLModelClient)
            else None
        )

    def describe(self) -> str:
        return self.service.describe()

    async def forward(self, tensor: np.ndarray, timeout: Optional[float]) -> np.ndarray:
        limit = self.service.timeout_s if timeout is None else min(timeout, self.service.timeout_s)
        try:
            outputs = await within(self._infer(tensor, limit), limit)
        except asyncio.TimeoutError as e:
            raise InferenceTimeout(
                f"{self.describe()} did not answer within {limit:g} s (the call's deadline or "
                f"'mlmodel_timeout_s' = {self.service.timeout_s:g} s)"
            ) from e
        except GRPCError as e:
            kind = InferenceUnavailable if e.status in _NOT_REACHED else InferenceRefused
            raise kind(f"{self.describe()} failed: {e.status.name}: {e.message}") from e
        except (OSError, ConnectionError) as e:
            raise InferenceUnavailable(f"{self.describe()} cannot be reached: {e}") from e
        except UnexpectedOutput:
            raise
        except Exception as e:  # an in-process service's own errors
            raise InferenceRefused(f"{self.describe()} failed: {type(e).__name__}: {e}") from e
        scores = outputs.get(self.spec.output_name)
        if scores is None:
            names = ", ".join(repr(n) for n in outputs) or "none"
            raise UnexpectedOutput(f"{self.describe()} returned outputs {names}, without {self.spec.output_name!r}")
        return scores

    async def _infer(self, tensor: np.ndarray, timeout: float) -> dict[str, np.ndarray]:
        inputs = {self.spec.input_name: tensor}
        if self._infer_bytes is None:
            return dict(await self.client.infer(inputs, timeout=timeout))
        request = EncodedInferRequest(encode_infer_request(self.client.name, inputs))
        response: InferResponse = await self._infer_bytes(request, timeout=timeout)
        return {name: decode_tensor(t) for name, t in response.output_tensors.tensors.items()}

    def close(self) -> None:
        """Nothing to free: the ML model service is a resource of its own, which others may use."""

    def info(self) -> dict[str, Any]:
        metadata, spec = self.metadata, self.spec
        image = next(i for i in metadata.input_info if i.name == spec.input_name)
        scores = next(o for o in metadata.output_info if o.name == spec.output_name)
        return {
            "backend": "mlmodel",
            "mlmodel_name": self.service.name,
            "mlmodel_timeout_s": self.service.timeout_s,
            "metadata": {
                "name": metadata.name,
                "type": metadata.type,
                "description": metadata.description,
                "inputs": [{"name": i.name, "data_type": i.data_type, "shape": list(i.shape)} for i in metadata.input_info],
                "outputs": [{"name": o.name, "data_type": o.data_type, "shape": list(o.shape)} for o in metadata.output_info],
            },
            "input": {
                "name": image.name,
                "shape": list(image.shape),
                "type": str(spec.input_dtype),
                "type_source": self.input_type_source,
                "layout": spec.layout.value,
            },
            "output": {"name": scores.name, "shape": list(scores.shape), "type": scores.data_type},
        }


async def load_classifier(config: ClassifierConfig, client: MLModel) -> Classifier:
    """A classifier over the ML model service: its metadata read, the model resolved as an ONNX
    file's would be (with the built-in vision service's defaults), and one blank frame run through
    it to learn the output's shape and check the labels.

    Metadata that gives the image input no data_type leaves the blank frame to tell: float32 (what
    most such services take), then uint8 if the service refuses float32.

    Raises InferenceUnavailable / InferenceTimeout when the service cannot answer, ConfigError or
    UnexpectedOutput when its model cannot work as a classifier."""
    service = config.source
    assert isinstance(service, MLModelService)
    where = service.describe()
    try:
        metadata = await within(client.metadata(timeout=service.timeout_s), service.timeout_s)
    except asyncio.TimeoutError as e:
        raise InferenceTimeout(f"{where} did not return its metadata within {service.timeout_s:g} s ('mlmodel_timeout_s')") from e
    except GRPCError as e:
        raise InferenceUnavailable(f"{where} did not return its metadata: {e.status.name}: {e.message}") from e
    except Exception as e:
        raise InferenceUnavailable(f"{where} did not return its metadata: {type(e).__name__}: {e}") from e
    spec = describe_service_model(
        service, tensor_infos(metadata.input_info), tensor_infos(metadata.output_info), config.input_name, config.output_name
    )
    image = next(i for i in metadata.input_info if i.name == spec.input_name)
    if image.data_type:
        return await _started(config, client, metadata, spec, f"the metadata's data_type {image.data_type!r}")
    refusals = []
    for dtype in (np.dtype(np.float32), np.dtype(np.uint8)):
        candidate = dataclasses.replace(spec, input_dtype=dtype)
        if refusals:
            reason = f"the metadata gives no data_type; {refusals[0]}, and {dtype} was accepted"
        else:
            reason = f"the metadata gives no data_type, and {dtype} was accepted"
        try:
            return await _started(config, client, metadata, candidate, reason)
        except InferenceTimeout:
            raise
        except InferenceRefused as e:
            refusals.append(f"{dtype} was refused ({e})")
    raise ConfigError(
        f"{where} gives no data_type for input {spec.input_name!r} and refused both input types: {'; '.join(refusals)}"
    )


async def _started(config: ClassifierConfig, client: MLModel, metadata: Metadata, spec: ModelSpec, input_type_source: str) -> Classifier:
    """The classifier, once a blank frame in `spec`'s input type has run on the service."""
    service = config.source
    assert isinstance(service, MLModelService)
    model = resolve(config, spec, MLMODEL_PREPROCESSING)
    backend = MLModelBackend(service, client, metadata, spec, input_type_source)
    return Classifier(config, model, backend, await backend.forward(blank_input(model), service.timeout_s))
