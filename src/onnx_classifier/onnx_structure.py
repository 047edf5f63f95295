"""An ONNX model's graph without its weights, read in time that does not grow with the weights.

Validation must answer within viam-server's budget (about 5 s) even for models of a
gigabyte or more, and it needs only the graph: inputs, outputs, nodes and the small
constants that hold quantization parameters. So the protobuf wire format is walked
over a memory map, and every large initializer is kept as its name, type and shape
only; its bytes are never read from disk.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import onnx

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
# TensorProto fields that describe a tensor without holding its values: dims, data_type, name,
# external_data, data_location.
_TENSOR_DESCRIPTION = {1, 2, 8, 13, 14}
# Initializers up to this size are kept whole (scales, zero points and other small constants live there).
SMALL_TENSOR_BYTES = 1 << 16

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(buffer, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buffer, start: int, end: int):
    """(field number, wire type, start of the whole field, start of its value, end) for each field."""
    position = start
    while position < end:
        field_start = position
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, position = _varint(buffer, position)
            value_start = field_start
        elif wire_type == _FIXED64:
            value_start, position = position, position + 8
        elif wire_type == _FIXED32:
            value_start, position = position, position + 4
        elif wire_type == _LENGTH_DELIMITED:
            length, value_start = _varint(buffer, position)
            position = value_start + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if position > end:
            raise ValueError("truncated protobuf field")
        yield number, wire_type, field_start, value_start, position


def _length_delimited(number: int, content: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH_DELIMITED) + _encode_varint(len(content)) + content


def _described_tensor(buffer, start: int, end: int) -> bytes:
    return b"".join(
        bytes(buffer[field_start:field_end])
        for number, _, field_start, _, field_end in _fields(buffer, start, end)
        if number in _TENSOR_DESCRIPTION
    )


def _graph_without_weights(buffer, start: int, end: int) -> bytes:
    parts = []
    for number, wire_type, field_start, value_start, field_end in _fields(buffer, start, end):
        if number == _GRAPH_INITIALIZER and wire_type == _LENGTH_DELIMITED and field_end - value_start > SMALL_TENSOR_BYTES:
            parts.append(_length_delimited(number, _described_tensor(buffer, value_start, field_end)))
        else:
            parts.append(bytes(buffer[field_start:field_end]))
    return b"".join(parts)


def load_structure(path: Path) -> onnx.ModelProto:
    """The model with every initializer larger than SMALL_TENSOR_BYTES reduced to its description."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ValueError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            parts = []
            for number, wire_type, field_start, value_start, field_end in _fields(buffer, 0, len(buffer)):
                if number == _MODEL_GRAPH and wire_type == _LENGTH_DELIMITED:
                    parts.append(_length_delimited(number, _graph_without_weights(buffer, value_start, field_end)))
                else:
                    parts.append(bytes(buffer[field_start:field_end]))
    return onnx.ModelProto.FromString(b"".join(parts))
