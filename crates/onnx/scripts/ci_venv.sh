#!/bin/sh
# Creates a Python venv with onnx and onnxruntime for convkit-onnx's ONNX Runtime tests
# (no torch: the PyTorch fixtures are committed) and prints its python's path.
#
#   python=$(crates/onnx/scripts/ci_venv.sh)          # venv in target/onnx-venv
#   CONVKIT_ONNX_PYTHON=$python CONVKIT_REQUIRE_ONNXRUNTIME=1 cargo test -p convkit-onnx
#
# The venv directory can be given as the first argument. Progress goes to stderr, so that
# stdout is only the path.
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
venv=${1:-"$root/target/onnx-venv"}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    echo "ci_venv: creating $venv" >&2
    "$python" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    onnx onnxruntime numpy safetensors >&2
"$venv/bin/python" -c "import onnx, onnxruntime, numpy, safetensors" >&2
echo "$venv/bin/python"
