"""How long validation takes as a model grows: the module's validate_service_config (graph only,
weights never read) against loading the whole file with onnx.load.

    .venv/bin/python bench/validation.py [--megabytes 50 400]

viam-server gives a module's ValidateConfig about 5 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from onnx_classifier.classifier import validate_service_config  # noqa: E402


def write_model(path: Path, megabytes: int) -> None:
    """An image classifier whose one big MatMul weight makes the file `megabytes` large."""
    hidden = megabytes * 1024 * 1024 // 4 // 1000
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "expand"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "classes"], ["logits"]),
    ]
    weights = [
        numpy_helper.from_array(rng.random((3, hidden), np.float32), "expand"),
        numpy_helper.from_array(rng.random((hidden, 1000), np.float32), "classes"),
    ]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, nargs="+", default=[50, 400])
    args = parser.parse_args()
    print("| model file | validate_service_config | onnx.load (whole file) |")
    print("|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for megabytes in args.megabytes:
            path = Path(folder) / f"m{megabytes}.onnx"
            write_model(path, megabytes)
            onnx.load(str(path))  # both timings below with the file in the page cache
            started = time.perf_counter()
            validate_service_config({"model_path": str(path)})
            validated = time.perf_counter() - started
            started = time.perf_counter()
            onnx.load(str(path))
            loaded = time.perf_counter() - started
            print(f"| {path.stat().st_size / 1e6:.0f} MB | {validated * 1e3:.1f} ms | {loaded * 1e3:.0f} ms |")
            path.unlink()


if __name__ == "__main__":
    main()
