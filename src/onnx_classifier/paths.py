"""Where the module's own files are.

The package is installed in editable mode (run.sh and the test set-up both do
this), so it runs from `src/` inside the module folder, beside `models/` and
`meta.json`.
"""

from pathlib import Path

MODULE_ROOT = Path(__file__).resolve().parents[2]
META_JSON = MODULE_ROOT / "meta.json"
BUNDLED_MODEL = MODULE_ROOT / "models" / "efficientnet_lite0.onnx"
