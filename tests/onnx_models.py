"""Small ONNX classifiers built with onnx.helper, whose outputs tests can compute in numpy.

Each model averages its input over the image (so a solid-colour frame gives
exactly its normalized colour, whatever the resizing) and maps the per-channel
means to class scores with a fixed affine layer: scores = means @ WEIGHTS + BIAS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.array(
    [[4.0, -2.0, 0.5, 1.0, -1.0], [-3.0, 5.0, 0.0, 1.0, 2.0], [1.0, -1.0, 3.0, -2.0, 0.25]], np.float32
)
BIAS = np.array([0.1, -0.2, 0.3, 0.0, -0.5], np.float32)
NUM_CLASSES = WEIGHTS.shape[1]


def scores_for(channel_means: Sequence[float]) -> np.ndarray:
    """What the models compute (before any final activation) for the given per-channel input means
    (one mean for a one-channel model, which uses the first row of WEIGHTS)."""
    means = np.asarray(channel_means, np.float64)
    return means @ WEIGHTS[: means.size].astype(np.float64) + BIAS.astype(np.float64)


def build(
    path: Path,
    *,
    layout: str = "NCHW",
    channels: int = 3,
    batch: object = "N",
    input_type: int = TensorProto.FLOAT,
    size: Optional[tuple[int, int]] = (16, 16),
    final: Optional[str] = None,
    scale_after_final: Optional[float] = None,
    quantize_output: Optional[tuple[float, int]] = None,
    features_output: bool = False,
    output_rank: int = 2,
    dynamic_classes: bool = False,
    metadata: Optional[dict] = None,
    sidecar: Optional[dict] = None,
) -> Path:
    """Write a model to `path`. `final` is "Softmax" or "Sigmoid" to end the graph in an activation;
    `scale_after_final` multiplies the activation's output by a constant, so that the graph no longer
    ends in the activation (by 1, its output is still a probability distribution);
    `quantize_output` (scale, zero point) makes the output uint8 through QuantizeLinear;
    `features_output` adds a second output (the channel means) before the class scores; `channels`
    1 makes a greyscale model, `batch` a fixed batch size, `dynamic_classes` an output of [N, C]."""
    height, width = size if size is not None else ("H", "W")
    shape = [batch, channels, height, width] if layout == "NCHW" else [batch, height, width, channels]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    nodes = []
    x = "image"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["image_f32"], to=TensorProto.FLOAT))
        x = "image_f32"
    initializers = [
        numpy_helper.from_array(np.array(axes, np.int64), "axes"),
        numpy_helper.from_array(WEIGHTS[:channels], "weights"),
        numpy_helper.from_array(BIAS, "bias"),
    ]
    nodes += [
        helper.make_node("ReduceMean", [x, "axes"], ["means"], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], ["affine"]),
        helper.make_node("Add", ["affine", "bias"], ["scores"]),
    ]
    scores = "scores"
    if final is not None:
        nodes.append(helper.make_node(final, [scores], ["activated"], **({"axis": -1} if final == "Softmax" else {})))
        scores = "activated"
    if scale_after_final is not None:
        initializers.append(numpy_helper.from_array(np.array(scale_after_final, np.float32), "after_final"))
        nodes.append(helper.make_node("Mul", [scores, "after_final"], ["scaled"]))
        scores = "scaled"
    if output_rank == 1:
        initializers.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", [scores, "flat"], ["flattened"]))
        scores = "flattened"
    output_type = TensorProto.FLOAT
    if quantize_output is not None:
        scale, zero_point = quantize_output
        initializers += [
            numpy_helper.from_array(np.array(scale, np.float32), "q_scale"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), "q_zero"),
        ]
        nodes.append(helper.make_node("QuantizeLinear", [scores, "q_scale", "q_zero"], ["quantized"]))
        scores = "quantized"
        output_type = TensorProto.UINT8
    nodes.append(helper.make_node("Identity", [scores], ["class_scores"]))
    classes = "C" if dynamic_classes else NUM_CLASSES
    out_shape = [batch, classes] if output_rank == 2 else [classes]
    outputs = [helper.make_tensor_value_info("class_scores", output_type, out_shape)]
    if features_output:
        outputs.insert(0, helper.make_tensor_value_info("means", TensorProto.FLOAT, [batch, channels]))
    graph = helper.make_graph(
        nodes, "test_classifier", [helper.make_tensor_value_info("image", input_type, shape)], outputs, initializer=initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path
