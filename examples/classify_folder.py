"""Classify every saved image in a folder through the service on a machine, and print a CSV.

    VIAM_ADDRESS=... VIAM_API_KEY_ID=... VIAM_API_KEY=... \
        .venv/bin/python examples/classify_folder.py --service classifier --count 3 ./captures > labels.csv

Uses the machine's model and configuration (labels, thresholds, region), so the answers are the
ones the robot would give. To classify files without a machine, use `./run.sh classify` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path
from typing import TextIO

from grpclib import GRPCError
from viam.services.vision import VisionClient

from _connect import connect, image_of

SUFFIXES = {".jpg", ".jpeg", ".png"}


async def classify_folder(classifier: VisionClient, folder: Path, count: int, out: TextIO) -> int:
    """Write path, rank, label, confidence rows for every image under `folder`; the number that failed."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    rows = csv.writer(out)
    rows.writerow(["path", "rank", "label", "confidence"])
    failed = 0
    for path in paths:
        try:
            results = await classifier.get_classifications(image_of(str(path)), count)
        except (GRPCError, OSError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            failed += 1
            continue
        for rank, c in enumerate(results, 1):
            rows.writerow([path, rank, c.class_name, f"{c.confidence:.4f}"])
    print(f"{len(paths)} images, {failed} failed", file=sys.stderr)
    return failed


async def main(service: str, count: int, folder: Path) -> int:
    machine = await connect()
    try:
        failed = await classify_folder(VisionClient.from_robot(machine, service), folder, count, sys.stdout)
    finally:
        await machine.close()
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--service", default="classifier")
    parser.add_argument("--count", type=int, default=3)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.service, args.count, args.folder)))
