"""The int8 model on each family of int8 kernels onnxruntime has, whichever this machine is: x86
without VNNI (Haswell, emulated on any x86 host), ARM64 without and with dot products (Raspberry
Pi 4 and 5, emulated in the arm64 root), and this machine itself.

A canary model first shows that each emulated CPU really runs its family's kernels: one convolution
whose adjacent int8 products overflow int16, which x86 without VNNI clips and every other family
sums exactly. Then the bundled int8 model must give, on every family, the fidelity to the float
model that tests/test_int8.py asks of it natively."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_classifier.cpu import describe_cpu
from onnx_classifier.emulation import FAMILIES, emulated_outputs
from onnx_classifier.paths import BUNDLED_MODEL
from onnx_classifier.quantize import load_classifier

from ..test_int8 import FRAMES, INT8_MODEL, check_fidelity
from ..variants import camera_frames

pytestmark = pytest.mark.emulated

X86 = platform.machine().lower() in ("x86_64", "amd64")
# The canary: 8 inputs of 255 times 8 weights of 127, requantized with a scale of 2000.
CANARY_EXACT = round(8 * 255 * 127 / 2000) * 2000
CANARY_SATURATED = round(4 * 32767 / 2000) * 2000
# Frames for the x86 comparison: each takes about 5 s under emulated AVX2.
HASWELL_FRAMES = 12


def canary_model(path: Path) -> Path:
    """Quantize, dequantize, a 1x1 convolution with int8 weights of 127, quantize, dequantize: a
    QDQ graph that onnxruntime runs as one QLinearConv."""
    scalar = lambda name, value, kind: numpy_helper.from_array(np.array(value, kind), name)  # noqa: E731
    initializers = [
        scalar("one", 1.0, np.float32), scalar("u8_zero", 0, np.uint8), scalar("s8_zero", 0, np.int8),
        scalar("out_scale", 2000.0, np.float32),
        numpy_helper.from_array(np.full((8, 8, 1, 1), 127, np.int8), "weights_q"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "u8_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "one", "u8_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["weights_q", "one", "s8_zero"], ["weights"]),
        helper.make_node("Conv", ["x_dq", "weights"], ["y"], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "out_scale", "u8_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "out_scale", "u8_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "canary", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])], initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> tuple[Path, np.ndarray]:
    return canary_model(tmp_path_factory.mktemp("canary") / "canary.onnx"), np.full((1, 1, 8, 4, 4), 255, np.float32)


def canary_value(outputs: np.ndarray) -> float:
    values = np.unique(outputs)
    assert values.size == 1, values
    return float(values[0])


def test_this_machine_runs_the_kernels_its_cpu_is_said_to_have(canary):
    model, inputs = canary
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    native = canary_value(session.run(None, {"x": inputs[0]})[0])
    kernels = describe_cpu()["int8_kernels"]
    assert native == (CANARY_SATURATED if "saturating" in kernels else CANARY_EXACT), kernels


@pytest.mark.skipif(not X86, reason="x86 CPUs are emulated on x86 hosts only (an ARM host would need an amd64 root)")
def test_emulated_haswell_saturates_the_int16_pairs(canary):
    model, inputs = canary
    assert canary_value(emulated_outputs(FAMILIES["Haswell"], model, "x", "out", inputs)) == CANARY_SATURATED


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_emulated_raspberry_pis_sum_exactly(canary, arm64_root, installed, cpu):
    model, inputs = canary
    assert canary_value(emulated_outputs(FAMILIES[cpu], model, "x", "out", inputs, arm64_root)) == CANARY_EXACT


@pytest.fixture(scope="module")
def frames():
    """The frames of tests/test_int8.py, preprocessed once: the float model's input and its scores."""
    reference = load_classifier({"model_path": str(BUNDLED_MODEL)})
    described = list(camera_frames(FRAMES))
    tensors = np.stack([reference.preprocess(data) for _, data in described])
    return [d for d, _ in described], tensors, np.stack([reference.scores(t) for t in tensors])


@pytest.fixture(scope="module")
def int8():
    return load_classifier({"model_path": str(INT8_MODEL)})


def emulated_scores(int8, family: str, tensors: np.ndarray, arm64_root=None) -> np.ndarray:
    spec = int8.model.spec
    raw = emulated_outputs(FAMILIES[family], INT8_MODEL, spec.input_name, spec.output_name, tensors, arm64_root)
    return np.stack([int8.postprocess(r) for r in raw])


@pytest.mark.skipif(not X86, reason="x86 CPUs are emulated on x86 hosts only (an ARM host would need an amd64 root)")
def test_x86_without_vnni_gives_this_machines_int8_answers_bit_for_bit(frames, int8):
    # Every x86 family sums the same integers when no pair saturates, so the emulated AVX2 kernels
    # must give what this machine's give, whichever x86 family it is (VNNI cannot be emulated:
    # QEMU's TCG has neither AVX-VNNI nor AVX-512).
    _, tensors, _ = frames
    native = np.stack([int8.scores(t) for t in tensors[:HASWELL_FRAMES]])
    assert np.array_equal(emulated_scores(int8, "Haswell", tensors[:HASWELL_FRAMES]), native)


@pytest.fixture(scope="module")
def pi_scores(frames, int8, arm64_root, installed):
    _, tensors, _ = frames
    return {cpu: emulated_scores(int8, cpu, tensors, arm64_root) for cpu in ("cortex-a72", "cortex-a76")}


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_int8_fidelity_on_a_raspberry_pi(frames, pi_scores, cpu):
    descriptions, _, expected = frames
    check_fidelity(descriptions, expected, pi_scores[cpu])


def test_both_raspberry_pis_give_the_same_int8_answers(pi_scores):
    # Both ARM kernel families sum int8 products exactly.
    assert np.array_equal(pi_scores["cortex-a72"], pi_scores["cortex-a76"])
