"""`python -m onnx_classifier <socket_path> [--log-level=...]` serves the module (what viam-server
starts through run.sh); `python -m onnx_classifier classify ...` runs the command line instead."""

import asyncio
import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "classify":
        from .cli import main as classify

        sys.exit(classify(sys.argv[2:]))

    from .service import ClassifierModule, OnnxClassifier

    asyncio.run(ClassifierModule.run_with_models(OnnxClassifier))


if __name__ == "__main__":
    main()
