#!/usr/bin/env python3
"""Checks an ONNX model and runs it in ONNX Runtime (used by convkit-onnx's tests).

    python ort_run.py MODEL.onnx INPUTS.safetensors OUTPUTS.safetensors

Runs onnx.checker.check_model (full check, with shape inference), then feeds every tensor of
INPUTS whose name is a graph input, on the CPU provider, and writes every graph output to
OUTPUTS under its name. Prints the opset and the output shapes. Needs onnx, onnxruntime,
numpy and safetensors (scripts/ci_venv.sh makes such a venv).
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    model_path, inputs_path, outputs_path = argv[1:]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    options = ort.SessionOptions()
    # Keep ORT's own graph rewrites from changing the numbers being compared.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    tensors = load_file(inputs_path)
    feeds = {i.name: np.ascontiguousarray(tensors[i.name]) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    save_file({n: np.ascontiguousarray(r) for n, r in zip(names, results)}, outputs_path)
    shapes = {n: list(r.shape) for n, r in zip(names, results)}
    print(f"ort_run: {model_path}: opsets {opsets}, outputs {shapes}, onnxruntime {ort.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
