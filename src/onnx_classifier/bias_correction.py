"""Bias correction: int8 weights shift each layer's mean output; the bias takes the shift back.

Rounding a layer's weights to int8 changes its output by (W_q - W) x, whose mean over the inputs
the model sees is (W_q - W) E[x]: a systematic error per output channel that adds up from layer to
layer (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
2019). E[x] is each layer's mean input channel in the float model over the calibration images, and
the correction is written into the quantized bias, so the model's graph, its kernels and its speed
do not change. For the bundled model it halves the 95th percentile confidence error of int8 weights
alone (models/int8_study.py).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

T = TypeVar("T")


def _dequantized(producers: dict[str, onnx.NodeProto], initializers: dict[str, onnx.TensorProto], name: str):
    """(float values, quantized initializer, scale per element of axis) of a DequantizeLinear of an
    initializer, or None."""
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
        return None
    quantized = initializers[node.input[0]]
    q = numpy_helper.to_array(quantized).astype(np.float64)
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
    shape = [1] * q.ndim
    if scale.size > 1:  # per channel, along `axis` (ONNX's default 1; a vector's only axis)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if q.ndim > 1 else 0
        shape[axis] = -1
    return (q - np.reshape(zero, shape)) * np.reshape(scale, shape), quantized, scale.reshape(-1)


def _layers(quantized: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, np.ndarray, onnx.TensorProto, np.ndarray]]:
    """(node, its int8 weights as floats, its int32 bias initializer, the bias's scale) for each
    quantized Conv and Gemm with a bias."""
    producers = {output: node for node in quantized.graph.node for output in node.output}
    initializers = {t.name: t for t in quantized.graph.initializer}
    for node in quantized.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        weights = _dequantized(producers, initializers, node.input[1])
        bias = _dequantized(producers, initializers, node.input[2])
        if weights is not None and bias is not None:
            yield node, weights[0], bias[1], bias[2]


def _float_source(producers: dict[str, onnx.NodeProto], name: str) -> str:
    """The float model's tensor behind a quantized model's activation (DequantizeLinear(QuantizeLinear(x)))."""
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        quantize = producers.get(node.input[0])
        return quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else node.input[0]
    return name


def input_means(
    float_model: onnx.ModelProto, quantized: onnx.ModelProto, inputs: Sequence[T], to_tensor: Callable[[T], np.ndarray], input_name: str
) -> dict[str, np.ndarray]:
    """For each corrected layer (by its input's name in the quantized model), the mean of each of
    its input channels in the float model over `inputs`."""
    producers = {output: node for node in quantized.graph.node for output in node.output}
    sources = {node.input[0]: _float_source(producers, node.input[0]) for node, _, _, _ in _layers(quantized)}
    probe = onnx.ModelProto()
    probe.CopyFrom(float_model)
    wanted = sorted(set(sources.values()))
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted if n not in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor stays as the graph names it
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums = {name: np.zeros(0) for name in wanted}
    for item in inputs:
        for name, value in zip(wanted, session.run(wanted, {input_name: to_tensor(item)})):
            channel_means = value.reshape(value.shape[0], value.shape[1], -1).mean(axis=(0, 2), dtype=np.float64)
            sums[name] = channel_means if sums[name].size == 0 else sums[name] + channel_means
    return {layer_input: sums[source] / len(inputs) for layer_input, source in sources.items()}


def correct_biases(quantized: onnx.ModelProto, float_model: onnx.ModelProto, means: dict[str, np.ndarray]) -> None:
    """Subtract from each quantized layer's int32 bias the mean error of its int8 weights on its inputs."""
    float_weights = {t.name: t for t in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node}
    for node, weights, bias, bias_scale in _layers(quantized):
        exact = numpy_helper.to_array(float_weights[float_nodes[node.name].input[1]]).astype(np.float64)
        error, mean = weights - exact, means[node.input[0]]
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            per_group, outputs_per_group = exact.shape[1], exact.shape[0] // group
            grouped = error.reshape(group, outputs_per_group, per_group, -1).sum(axis=3)  # over the kernel taps
            shift = np.einsum("goc,gc->go", grouped, mean.reshape(group, per_group)).reshape(-1)
        else:
            transposed = bool(next((a.i for a in node.attribute if a.name == "transB"), 0))
            shift = (error if transposed else error.T) @ mean
        corrected = numpy_helper.to_array(bias).astype(np.int64) - np.round(shift / bias_scale).astype(np.int64)
        bias.CopyFrom(numpy_helper.from_array(corrected.astype(np.int32), bias.name))
