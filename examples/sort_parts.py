"""Classify a camera's frame and act on the top label, only when it is confident enough.

    VIAM_ADDRESS=... VIAM_API_KEY_ID=... VIAM_API_KEY=... \
        .venv/bin/python examples/sort_parts.py --service classifier --camera cam --min-confidence 0.8

A part-sorting cell: "good" parts go on, anything else (or anything the model is unsure of) goes to
manual inspection. Replace the prints with your actuator calls.
"""

from __future__ import annotations

import argparse
import asyncio

from viam.services.vision import VisionClient

from _connect import connect


async def decide(classifier: VisionClient, camera: str, min_confidence: float, good: str) -> str:
    """What to do with the part in front of the camera."""
    results = await classifier.get_classifications_from_camera(camera, 1)
    if not results or results[0].confidence < min_confidence:
        best = f"{results[0].class_name} at {results[0].confidence:.2f}" if results else "nothing"
        return f"unsure ({best}): send the part to inspection"
    label, confidence = results[0].class_name, results[0].confidence
    if label == good:
        return f"{label} ({confidence:.2f}): pass the part on"
    return f"{label} ({confidence:.2f}): send the part to inspection"


async def main(service: str, camera: str, min_confidence: float, good: str) -> None:
    machine = await connect()
    try:
        print(await decide(VisionClient.from_robot(machine, service), camera, min_confidence, good))
    finally:
        await machine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", default="classifier")
    parser.add_argument("--camera", default="cam")
    parser.add_argument("--min-confidence", type=float, default=0.8)
    parser.add_argument("--good", default="good", help="the label of a part that passes")
    args = parser.parse_args()
    asyncio.run(main(args.service, args.camera, args.min_confidence, args.good))
