"""A model's raw outputs for a batch of input tensors, as run in a process of its own: the part of
the fidelity check that runs under an emulated CPU (emulation.py). It imports only numpy and
onnxruntime, so it runs from a copy of this file in any Python that has them.

    python emulated_outputs.py MODEL INPUT_NAME OUTPUT_NAME INPUTS.npy OUTPUTS.npy
"""

import sys

import numpy as np
import onnxruntime as ort


def main(model: str, input_name: str, output_name: str, inputs: str, outputs: str) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2  # emulated timings mean nothing; two threads make the run shorter
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    tensors = np.load(inputs)
    raw = [session.run([output_name], {input_name: tensor})[0] for tensor in tensors]
    np.save(outputs, np.stack(raw))


if __name__ == "__main__":
    main(*sys.argv[1:])
