"""Command line: classify image files with the same configuration the service takes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .classifier import Classifier
from .config import ConfigError, parse_service_config
from .decode import DecodeError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run.sh classify",
        description="Print the top classes of each image as 'label: confidence' lines (bundled ImageNet model by default).",
    )
    parser.add_argument("images", nargs="+", help="JPEG, PNG or Viam RGBA files")
    parser.add_argument("-n", "--count", type=int, default=5, help="how many classes to print per image (default 5)")
    parser.add_argument(
        "--attributes",
        default="{}",
        metavar="JSON",
        help='service attributes as JSON, e.g. \'{"model_path": "my.onnx", "head": "sigmoid"}\'',
    )
    args = parser.parse_args(argv)
    try:
        attributes = json.loads(args.attributes)
        if not isinstance(attributes, dict):
            parser.error("--attributes must be a JSON object")
        config = parse_service_config(attributes)
        classifier = Classifier(config.classifier)
    except json.JSONDecodeError as e:
        parser.error(f"--attributes is not valid JSON: {e}")
    except ConfigError as e:
        parser.error(str(e))

    failed = False
    for path in args.images:
        if len(args.images) > 1:
            print(f"{path}:")
        try:
            with open(path, "rb") as f:
                data = f.read()
            predictions = classifier.classify(data, args.count, config.confidence_threshold)
        except (OSError, DecodeError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            failed = True
            continue
        for prediction in predictions:
            print(f"{prediction.label}: {prediction.confidence:.2f}")
    return 1 if failed else 0
