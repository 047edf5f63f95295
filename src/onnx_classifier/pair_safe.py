"""Weight ranges under which an int8 model computes the same integer sums on every CPU.

onnxruntime multiplies uint8 activations by int8 weights. On x86 without VNNI (AVX2, and AVX-512
before VNNI) its kernels use VPMADDUBSW, which multiplies adjacent pairs along the reduction axis
and adds each pair into a saturating int16 before widening: 255 x 127 + 255 x 127 = 64770 does not
fit, and the sum is clipped. x86 with VNNI or AMX and ARM64 (with or without dot-product
instructions) add the products exactly. A model whose weights never make such a pair overflow gives
the same sums on all of them.

For activations in [0, 255], a pair can only overflow when both weights have the same sign and
|q1| + |q2| > 128. Symmetric int8 quantization maps a channel's range [-r, r] to [-127, 127], so a
range r that covers the largest |w1| + |w2| of the channel's same-sign pairs keeps every such sum
within 127 + 1 (one step of rounding). Channels whose largest weight dominates keep their range;
this costs less precision than `reduce_range` (7-bit weights everywhere).

The pairs are adjacent inputs as the kernels read them: for a convolution the input channels at
each kernel tap, channels innermost (onnxruntime's NHWC layout), and, where the channel count is
odd, across taps; for Gemm and MatMul the reduction axis. Depthwise convolutions are left as they
are: their kernels widen each product to 32 bits on every CPU.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

# Largest |q1| + |q2| for which 255 * (|q1| + |q2|) fits in int16.
PAIR_LIMIT = 32767 // 255


def same_sign_pair_sums(rows: np.ndarray) -> np.ndarray:
    """Per row, the largest |a| + |b| over the pairs (0, 1), (2, 3), ... whose signs agree, or the
    largest |a| where none do (a pair of opposite signs cannot add up past either product)."""
    if rows.shape[1] % 2:
        rows = np.pad(rows, ((0, 0), (0, 1)))
    a, b = np.abs(rows[:, 0::2]), np.abs(rows[:, 1::2])
    same_sign = np.sign(rows[:, 0::2]) * np.sign(rows[:, 1::2]) > 0
    return np.where(same_sign, a + b, np.maximum(a, b)).max(axis=1)


def _reduction_rows(node: onnx.NodeProto, weights: np.ndarray) -> tuple[int, list[np.ndarray]] | None:
    """(channel axis, [each way the kernels pair the inputs, as rows of [channels, K]]) for a layer
    whose int8 products can saturate; None for one whose cannot."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv" and weights.ndim >= 3:
        if attributes.get("group", 1) > 1 and weights.shape[1] == 1:
            return None  # depthwise
        taps = np.moveaxis(weights, 1, -1)  # [O, kh, kw, C]: channels innermost
        per_tap = taps.reshape(-1, taps.shape[-1])
        return 0, [taps.reshape(taps.shape[0], -1), per_tap.reshape(taps.shape[0], -1, taps.shape[-1])]
    if node.op_type == "Gemm" and weights.ndim == 2:
        transposed = bool(attributes.get("transB", 0))
        return (0, [weights]) if transposed else (1, [weights.T])
    if node.op_type == "MatMul" and weights.ndim == 2:
        return 1, [weights.T]
    return None


def _pair_limits(rows: list[np.ndarray]) -> np.ndarray:
    limits = []
    for row in rows:
        if row.ndim == 3:  # [channels, taps, C]: pairs within each tap
            limits.append(same_sign_pair_sums(row.reshape(-1, row.shape[-1])).reshape(row.shape[0], -1).max(axis=1))
        else:
            limits.append(same_sign_pair_sums(row))
    return np.max(limits, axis=0)


def pair_safe_overrides(model: onnx.ModelProto, quantized_nodes: Iterable[str], per_channel: bool) -> dict[str, list[dict[str, Any]]]:
    """onnxruntime `TensorQuantOverrides` giving each quantized layer's weights a range (per
    channel, or one per tensor) that covers every same-sign adjacent pair of its weights."""
    wanted = set(quantized_nodes)
    initializers = {t.name: t for t in model.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        if node.name not in wanted or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weights = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        layout = _reduction_rows(node, weights)
        if layout is None:
            continue
        axis, rows = layout
        absmax = np.abs(np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)).max(axis=1)
        limits = np.maximum(absmax, _pair_limits(rows)).astype(np.float32)
        if per_channel:
            overrides[node.input[1]] = [{"axis": axis, "rmin": -limit, "rmax": limit} for limit in limits]
        else:
            overrides[node.input[1]] = [{"rmin": -limits.max(), "rmax": limits.max()}]
    return overrides


def largest_pair(model: onnx.ModelProto) -> int:
    """The largest |q1| + |q2| over the same-sign adjacent pairs of a QDQ model's int8 weights that
    feed saturating layers: at most PAIR_LIMIT when no CPU can saturate."""
    initializers = {t.name: t for t in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    largest = 0
    for node in model.graph.node:
        source = dequantized.get(node.input[1]) if len(node.input) > 1 else None
        if source not in initializers or initializers[source].data_type != onnx.TensorProto.INT8:
            continue
        weights = numpy_helper.to_array(initializers[source]).astype(np.int64)
        layout = _reduction_rows(node, weights)
        if layout is not None:
            largest = max(largest, int(_pair_limits(layout[1]).max()))
    return largest
