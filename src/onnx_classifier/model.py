"""What a classifier model is, read without running it: from an ONNX file's graph, or from
the tensor descriptions an ML model service gives.

This is what validation checks and what the classifier is built from: the one
image input (layout, dtype, fixed size), the class-score output, whether the
graph already ends in an activation, how a quantized output is dequantized, and
the model's own description of its labels and preprocessing. Either source gives
the same `ModelSpec`, and `resolve` decides the rest the same way for both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from . import hf
from .config import (
    DESCRIPTION_KEYS,
    ChannelOrder,
    BUILTIN_INPUT_NAME,
    BUILTIN_OUTPUT_NAME,
    ClassifierConfig,
    ConfigError,
    CropRounding,
    Head,
    Interpolation,
    MLModelService,
    ModelDescription,
    OnnxFile,
    Preprocessing,
    Resize,
    parse_model_description,
)
from .onnx_structure import load_structure


class Layout(str, Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


SUPPORTED_INPUT_TYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8))
FLOAT_OUTPUT_TYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
QUANTIZED_OUTPUT_TYPES = (np.dtype(np.uint8), np.dtype(np.int8))

# Constants of up to this many elements are read (scales, zero points); larger ones are weights.
_MATERIALIZED_ELEMENTS = 4096
# Ops that only reshape or retype scores: the producer of interest lies behind them.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
_ACTIVATIONS = {"Softmax": Head.SOFTMAX, "Sigmoid": Head.SIGMOID, "QLinearSoftmax": Head.SOFTMAX, "QLinearSigmoid": Head.SIGMOID}
# For each op that writes a quantized tensor: the input positions of its output scale and zero point.
_QUANTIZED_OUTPUT_PARAMS = {
    "QuantizeLinear": (1, 2),
    "QLinearMatMul": (6, 7),
    "QLinearConv": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearSoftmax": (3, 4),
    "QLinearSigmoid": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
}

DEFAULT_PREPROCESSING = Preprocessing(
    resize=Resize.STRETCH,
    crop_fraction=0.875,
    crop_rounding=CropRounding.ROUND,
    mean=(0.0,),
    std=(1.0,),
    channel_order=ChannelOrder.RGB,
    interpolation=Interpolation.BILINEAR,
)
# Behind an ML model service, a float input gets what Viam's built-in mlmodel vision service feeds
# it, (pixel/255 - 0.5) / 0.5, so that a config moved over from it gives the same answers.
MLMODEL_PREPROCESSING = dataclasses.replace(DEFAULT_PREPROCESSING, mean=(0.5,), std=(0.5,))
# ML model services name tensor types as numpy does; these are the ones an image input may have.
MLMODEL_INPUT_TYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype(np.float32)}


@dataclass(frozen=True)
class ModelSpec:
    """What the graph itself says."""

    input_name: str
    layout: Layout
    channels: int
    input_dtype: np.dtype
    input_size: Optional[tuple[int, int]]  # fixed (height, width), or None when dynamic
    output_name: str
    num_classes: Optional[int]  # None when the class dimension is dynamic
    final_activation: Optional[Head]  # SOFTMAX or SIGMOID when the graph already applies one
    output_quantization: Optional[tuple[float, int]]  # (scale, zero point) of a uint8/int8 output
    description: ModelDescription  # sidecar JSON over ONNX metadata, or what the ML model service says
    # True when the graph was read, so final_activation None means it applies none; False when
    # nothing says (an ML model service), so scores all in [0, 1] may be softmax or sigmoid outputs.
    graph_read: bool


@dataclass(frozen=True)
class ResolvedModel:
    """A model with everything about it decided: what validation approves and the classifier runs."""

    spec: ModelSpec
    labels: Optional[tuple[str, ...]]  # None: class indices serve as labels
    labels_source: str
    preprocessing: Preprocessing  # every field set
    head: Head
    head_source: str  # what set `head`, for `info`
    exact_preprocessing: bool

    @property
    def input_size(self) -> tuple[int, int]:
        assert self.preprocessing.input_size is not None
        return self.preprocessing.input_size


def resolve_model(config: ClassifierConfig) -> ResolvedModel:
    """An ONNX file's model: attribute > model description > default, checked against the graph."""
    assert isinstance(config.source, OnnxFile)
    spec = inspect_model(config.source.path, config.input_name, config.output_name)
    return resolve(config, spec, DEFAULT_PREPROCESSING)


def resolve(config: ClassifierConfig, spec: ModelSpec, defaults: Preprocessing) -> ResolvedModel:
    """Combine attribute > model description > `defaults`, checking that they fit the model."""
    description = spec.description
    pre = config.preprocessing.over(description.preprocessing).over(defaults)

    if spec.input_size is None and pre.input_size is None:
        raise ConfigError(
            f"attribute 'input_size' is required: the model's input {spec.input_name!r} has dynamic height/width"
        )
    if spec.input_size is not None and pre.input_size not in (None, spec.input_size):
        source = "attribute" if config.preprocessing.input_size else "model description"
        raise ConfigError(
            f"{source} 'input_size' {list(pre.input_size)} does not match the model's fixed input size {list(spec.input_size)}"
        )
    input_size = pre.input_size or spec.input_size
    for key in ("mean", "std"):
        values = getattr(pre, key)
        if len(values) not in (1, spec.channels):
            raise ConfigError(f"'{key}' has {len(values)} values but the model takes {spec.channels} channel(s)")
    pre = dataclasses.replace(pre, input_size=input_size)

    labels: Optional[tuple[str, ...]]
    if config.labels_path is not None:
        labels_source = f"attribute 'labels_path' ({config.labels_path})"
        labels = read_labels(config.labels_path, labels_source)
    elif description.labels_path is not None:
        labels_source = description.labels_source or f"the model description's labels_path ({description.labels_path})"
        try:
            labels = read_labels(description.labels_path, labels_source)
        except ConfigError as e:
            raise ConfigError(f"{e}; or set attribute 'labels_path' to a labels file on this machine") from e
    elif description.labels is not None:
        labels = description.labels
        labels_source = description.labels_source or "the model description's labels"
    else:
        labels, labels_source = None, "none: class indices"
    if labels is not None and spec.num_classes is not None and len(labels) != spec.num_classes:
        raise ConfigError(
            f"{labels_source} has {len(labels)} labels but output {spec.output_name!r} has {spec.num_classes} classes"
        )

    if config.head is not None:
        head, head_source = config.head, "set by attribute 'head'"
    elif description.head is not None:
        head, head_source = description.head, "set by the model description's 'head'"
    else:
        head, head_source = Head.AUTO, "auto"
    return ResolvedModel(
        spec=spec,
        labels=labels,
        labels_source=labels_source,
        preprocessing=pre,
        head=head,
        head_source=head_source,
        exact_preprocessing=config.exact_preprocessing,
    )


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as an ML model service describes it in its metadata."""

    name: str
    data_type: str  # numpy's name ("uint8", "float32"...), or "" when the service does not say
    shape: tuple[int, ...]  # -1 for a dimension of any size; empty when the service does not say
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def describe_service_model(
    service: MLModelService,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    input_name: Optional[str],
    output_name: Optional[str],
) -> ModelSpec:
    """What an ML model service's metadata says about its model, read as an ONNX graph is read.

    The image input is `input_name`, else the only input, else the one called "image" (the built-in
    vision service's name); the class scores are `output_name`, else the output called "probability",
    else the only output. A uint8 input takes raw pixels; a uint8 output is dequantized to [0, 1].
    """
    where = service.describe()
    image = _pick(inputs, input_name, "input_name", BUILTIN_INPUT_NAME, where, "input")
    dims = [d if d > 0 else None for d in image.shape]
    if not dims:
        raise ConfigError(f"{where} gives no shape for input {image.name!r}; expected [N, H, W, C] or [N, C, H, W]")
    layout, channels, input_size = _image_layout(image.name, dims, where)
    data_type = image.data_type or "float32"  # services that leave it out (some ONNX ones) take float32
    if data_type not in MLMODEL_INPUT_TYPES:
        raise ConfigError(f"{where}: input {image.name!r} has data_type {image.data_type!r}; supported are uint8 and float32")

    scores = _pick(outputs, output_name, "output_name", BUILTIN_OUTPUT_NAME, where, "output")
    out_dims = [d if d > 0 else None for d in scores.shape]
    if out_dims:
        _check_score_shape(scores.name, out_dims, where)
    labels_file = next((v for k in ("labels", "label") if isinstance(v := scores.extra.get(k), str) and v.strip()), None)
    description = ModelDescription(
        labels_path=Path(labels_file) if labels_file else None,
        labels_source=f"the labels file {labels_file!r} that {where} names for output {scores.name!r}" if labels_file else None,
    )
    return ModelSpec(
        input_name=image.name,
        layout=layout,
        channels=channels,
        input_dtype=MLMODEL_INPUT_TYPES[data_type],
        input_size=input_size,
        output_name=scores.name,
        num_classes=out_dims[-1] if out_dims else None,
        final_activation=None,
        output_quantization=(1.0 / 255.0, 0) if scores.data_type == "uint8" else None,
        description=description,
        graph_read=False,
    )


def _pick(
    tensors: Sequence[TensorInfo], wanted: Optional[str], attribute: str, conventional: str, where: str, kind: str
) -> TensorInfo:
    """The tensor named by the attribute, else the only one, else the one with the conventional name."""
    names = ", ".join(repr(t.name) for t in tensors) or "none"
    by_name = {t.name: t for t in tensors}
    if wanted is not None:
        if wanted not in by_name:
            raise ConfigError(f"attribute {attribute!r} {wanted!r} is not an {kind} of {where}; its {kind}s are: {names}")
        return by_name[wanted]
    if len(tensors) == 1:
        return tensors[0]
    if conventional in by_name:
        return by_name[conventional]
    if not tensors:
        raise ConfigError(f"{where} reports no {kind}s in its metadata")
    what = "the image" if kind == "input" else "the class scores (a detector's outputs are not: this service classifies)"
    raise ConfigError(
        f"{where} has {len(tensors)} {kind}s ({names}) and none named {conventional!r}: set attribute {attribute!r} to {what}"
    )


def read_labels(path: Path, source: str) -> tuple[str, ...]:
    """One label per line; trailing blank lines are ignored. `source` says who named the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: labels file {str(path)!r} cannot be read: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConfigError(f"{source}: labels file {str(path)!r} is empty")
    return tuple(line.strip() for line in lines)


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def assumed_preprocessing(config: ClassifierConfig, model: ResolvedModel) -> Optional[str]:
    """A notice for a float ONNX model that nothing describes (no sidecar, ONNX metadata or Hugging
    Face files, no preprocessing attributes): it runs on the built-in defaults, which are right only
    by chance (an ImageNet model wants its mean and std), and nothing else would say so."""
    spec, given = model.spec, config.preprocessing
    if not isinstance(config.source, OnnxFile) or spec.input_dtype == np.uint8:
        return None
    if spec.description.preprocessing != Preprocessing() or any(v is not None for v in (given.resize, given.mean, given.std)):
        return None
    pre, sidecar = model.preprocessing, sidecar_path(config.source.path)
    return (
        f"model {str(config.source.path)!r} has no preprocessing description (no sidecar {sidecar.name!r}, no ONNX metadata) "
        f"and no attribute sets it: assuming resize {pre.resize.value!r}, mean {list(pre.mean)} and std {list(pre.std)}. "
        "If it was trained otherwise (an ImageNet model: resize 'center_crop', mean [0.485, 0.456, 0.406], std "
        f"[0.229, 0.224, 0.225]), set the attributes 'resize', 'mean' and 'std', or write them into {sidecar.name!r} "
        "beside it (models/efficientnet_lite0.json is an example)"
    )


def description_files(model_path: Path) -> tuple[Path, ...]:
    """Every file beside the model that may describe it, present or not: what the caches watch."""
    folder = model_path.parent
    return (sidecar_path(model_path), folder / hf.CONFIG_FILE, folder / hf.PREPROCESSOR_FILE)


def file_stamps(*paths: Optional[Path]) -> tuple:
    """What changes when any of these files is edited or replaced (None for an absent file)."""
    stamps = []
    for path in paths:
        try:
            stat = path.stat() if path is not None else None
        except FileNotFoundError:
            stat = None
        stamps.append((stat.st_mtime_ns, stat.st_size) if stat is not None else None)
    return tuple(stamps)


def inspect_model(path: Path, input_name: Optional[str], output_name: Optional[str]) -> ModelSpec:
    return _inspect_cached(path, file_stamps(path, *description_files(path)), input_name, output_name)


@functools.lru_cache(maxsize=8)
def _inspect_cached(path: Path, _stamps: tuple, input_name: Optional[str], output_name: Optional[str]) -> ModelSpec:
    where = f"model_path {str(path)!r}"
    try:
        model = load_structure(path)
    except Exception as e:  # onnx raises DecodeError, OSError or its own errors for a bad file
        raise ConfigError(f"{where} is not a readable ONNX model: {e}") from e
    graph = model.graph
    constants = _constant_values(graph)

    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise ConfigError(f"{where} has {len(inputs)} inputs ({names}); an image classifier takes exactly one")
    if input_name is not None and input_name != inputs[0].name:
        raise ConfigError(f"the image input {input_name!r} is not an input of {where}; its input is {inputs[0].name!r}")
    layout, channels, input_size = _image_layout(inputs[0].name, _dims(inputs[0]), where)
    input_dtype = _dtype(inputs[0])
    if input_dtype not in SUPPORTED_INPUT_TYPES:
        raise ConfigError(
            f"{where}: input {inputs[0].name!r} has type {input_dtype}; supported are float32, float16 and uint8"
        )

    output = _class_output(graph, output_name, where)
    out_dims = _dims(output)
    output_dtype = _dtype(output)
    if output_dtype in QUANTIZED_OUTPUT_TYPES:
        quantization = _output_quantization(graph, constants, output.name)
        if quantization is None:
            raise ConfigError(
                f"{where}: output {output.name!r} is {output_dtype} but no QuantizeLinear or QLinear op in the graph "
                "gives its scale and zero point"
            )
    elif output_dtype in FLOAT_OUTPUT_TYPES:
        quantization = None
    else:
        raise ConfigError(f"{where}: output {output.name!r} has type {output_dtype}; expected float or uint8/int8 scores")

    return ModelSpec(
        input_name=inputs[0].name,
        layout=layout,
        channels=channels,
        input_dtype=input_dtype,
        input_size=input_size,
        output_name=output.name,
        num_classes=out_dims[-1],
        final_activation=_final_activation(graph, output.name),
        output_quantization=quantization,
        description=_description(path, model),
        graph_read=True,
    )


def _dims(value_info: onnx.ValueInfoProto) -> list[Optional[int]]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def _dtype(value_info: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))


def _image_layout(name: str, dims: Sequence[Optional[int]], where: str) -> tuple[Layout, int, Optional[tuple[int, int]]]:
    """Layout, channels and fixed (height, width) of an image input's shape (None for a dynamic dimension)."""
    if len(dims) != 4:
        raise ConfigError(f"{where}: input {name!r} has shape {dims}; expected an image batch [N, C, H, W] or [N, H, W, C]")
    if dims[0] not in (None, 1):
        raise ConfigError(f"{where}: input {name!r} has a fixed batch size of {dims[0]}; expected 1 or dynamic")
    if dims[1] in (1, 3):
        layout, channels, size = Layout.NCHW, dims[1], (dims[2], dims[3])
    elif dims[3] in (1, 3):
        layout, channels, size = Layout.NHWC, dims[3], (dims[1], dims[2])
    else:
        raise ConfigError(f"{where}: input {name!r} has shape {dims}; expected 1 or 3 channels in position 1 (NCHW) or 3 (NHWC)")
    fixed = None if None in size else (int(size[0]), int(size[1]))
    return layout, channels, fixed


def _class_output(graph, output_name, where):
    outputs = {o.name: o for o in graph.output}
    if output_name is not None:
        if output_name not in outputs:
            raise ConfigError(
                f"attribute 'output_name' {output_name!r} is not an output of {where}; outputs are: {', '.join(outputs)}"
            )
        output = outputs[output_name]
    elif len(outputs) == 1:
        output = graph.output[0]
    else:
        raise ConfigError(
            f"{where} has {len(outputs)} outputs ({', '.join(outputs)}); set attribute 'output_name' to the class scores"
        )
    _check_score_shape(output.name, _dims(output), where)
    return output


def _check_score_shape(name: str, dims: Sequence[Optional[int]], where: str) -> None:
    if not (len(dims) == 1 or (len(dims) == 2 and dims[0] in (None, 1))):
        raise ConfigError(f"{where}: output {name!r} has shape {list(dims)}; expected class scores [N, C] or [C]")


def _constant_values(graph) -> dict[str, Optional[np.ndarray]]:
    """Initializers and Constant outputs; only small scalars and vectors (quantization parameters)
    are materialized: weights are not needed here, and load_structure has left their values out."""
    values: dict[str, Optional[np.ndarray]] = {
        t.name: numpy_helper.to_array(t) if _is_small_vector(t) else None for t in graph.initializer
    }
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _is_small_vector(tensor: onnx.TensorProto) -> bool:
    return (
        len(tensor.dims) <= 1
        and math.prod(tensor.dims) <= _MATERIALIZED_ELEMENTS
        and tensor.data_location != onnx.TensorProto.EXTERNAL
    )


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _walk_back(graph, name: str, through: set[str]):
    """The node that writes `name`, skipping ops in `through` (following their first input)."""
    producers = _producers(graph)
    node = producers.get(name)
    while node is not None and node.op_type in through:
        node = producers.get(node.input[0])
    return node


def _final_activation(graph, output: str) -> Optional[Head]:
    node = _walk_back(graph, output, _PASS_THROUGH | {"QuantizeLinear", "DequantizeLinear"})
    return _ACTIVATIONS.get(node.op_type) if node is not None else None


def _output_quantization(graph, constants, output: str) -> Optional[tuple[float, int]]:
    node = _walk_back(graph, output, _PASS_THROUGH - {"Cast"})
    if node is None or node.op_type not in _QUANTIZED_OUTPUT_PARAMS:
        return None
    scale_at, zero_at = _QUANTIZED_OUTPUT_PARAMS[node.op_type]
    scale = constants.get(node.input[scale_at]) if len(node.input) > scale_at else None
    zero = constants.get(node.input[zero_at]) if len(node.input) > zero_at and node.input[zero_at] else np.zeros(())
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None  # per-channel or computed parameters: not a plain quantized score vector
    return float(scale.reshape(())), int(zero.reshape(()))


def _description(path: Path, model: onnx.ModelProto) -> ModelDescription:
    """The sidecar `<model>.json` beside the file, over a Hugging Face export's config.json and
    preprocessor_config.json beside it (both there), over the model's ONNX metadata."""
    metadata = {}
    for prop in model.metadata_props:
        if prop.key in DESCRIPTION_KEYS and prop.key != "labels_path":
            try:
                metadata[prop.key] = json.loads(prop.value)
            except json.JSONDecodeError:
                metadata[prop.key] = prop.value
    description = parse_model_description(metadata, f"ONNX metadata of {str(path)!r}", path.parent)
    export = hf.export_files(path)
    if export is not None:
        description = _over(hf.read_export(*export), description)
    sidecar_file = sidecar_path(path)
    if sidecar_file.is_file():
        try:
            values = json.loads(sidecar_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"model sidecar {str(sidecar_file)!r} is not valid JSON: {e}") from e
        sidecar = parse_model_description(values, f"model sidecar {str(sidecar_file)!r}", sidecar_file.parent)
        description = _over(sidecar, description)
    return description


def _over(upper: ModelDescription, lower: ModelDescription) -> ModelDescription:
    """One description's values where it has them, the other's elsewhere; labels come whole from one."""
    has_own_labels = upper.labels is not None or upper.labels_path is not None
    return ModelDescription(
        preprocessing=upper.preprocessing.over(lower.preprocessing),
        head=upper.head or lower.head,
        labels=upper.labels if has_own_labels else lower.labels,
        labels_path=upper.labels_path if has_own_labels else lower.labels_path,
        labels_source=upper.labels_source if has_own_labels else lower.labels_source,
        warnings=upper.warnings + lower.warnings,
    )
