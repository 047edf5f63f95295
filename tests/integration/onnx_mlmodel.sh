#!/usr/bin/env bash
# viam-server starts the test ML model service through this: onnx_mlmodel.py on this checkout's
# .venv (the one the tier's tests run in).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../.venv/bin/python" "$here/onnx_mlmodel.py" "$@"
