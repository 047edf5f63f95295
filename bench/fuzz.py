"""Fuzz the decode-and-classify path: thousands of mutated frames, each in a worker process with a time limit.

    .venv/bin/python bench/fuzz.py [--cases 5000] [--seed 1] [--workers 2] [--limit-s 10]

The cases are those of tests/test_fuzz.py (real JPEG, PNG, RGBA, depth and point-cloud frames
with bit flips, truncations, splices and header edits), drawn from --seed. Each case must end
in a result or a DecodeError (INVALID_ARGUMENT through the service). Anything else is a failure:
another exception or an invalid result ("error"), a case still running after --limit-s ("hang"),
or the worker process dying ("crash"; the worker is restarted). Prints the counts by outcome, the
kinds of DecodeError by message, and each failing case so it can be replayed; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(connection, folder: str) -> None:
    """Receive cases, send back (kind, detail) for each; kind is result, DecodeError or error."""
    sys.path.insert(0, str(ROOT))
    from onnx_classifier import DecodeError
    from tests.test_fuzz import case_bytes, fuzz_classifiers, outcome

    classifiers = fuzz_classifiers(folder)
    connection.send(("ready", ""))
    while True:
        try:
            index, case = connection.recv()
        except EOFError:
            return
        try:
            data = case_bytes(case)
            kind = outcome(classifiers[index % len(classifiers)], data, case[2])
            detail = ""
            if kind == "DecodeError":
                try:
                    classifiers[index % len(classifiers)].classify(data, case[2])
                except DecodeError as e:
                    detail = str(e)
        except Exception as e:  # anything but a DecodeError is what the fuzzer looks for
            kind, detail = "error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"
        connection.send((kind, detail))


class Lane:
    """One worker process; replaced when a case crashes it or runs past the limit."""

    def __init__(self, context, folder: str):
        self.context, self.folder = context, folder
        self.start()

    def start(self) -> None:
        self.connection, child = self.context.Pipe()
        self.process = self.context.Process(target=worker, args=(child, self.folder), daemon=True)
        self.process.start()
        child.close()
        if not self.connection.poll(120):
            raise RuntimeError("a fuzz worker did not start within 120 s")
        self.connection.recv()

    def run(self, index: int, case, limit_s: float) -> tuple[str, str]:
        try:
            self.connection.send((index, case))
            if self.connection.poll(limit_s):
                return self.connection.recv()
            kind, detail = "hang", f"still running after {limit_s} s"
            self.process.kill()
        except (EOFError, OSError):  # the worker died: the pipe is closed or broken
            self.process.join(5)
            kind, detail = "crash", f"worker exited with status {self.process.exitcode}"
        self.process.join(5)
        self.start()
        return kind, detail

    def close(self) -> None:
        self.connection.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


def category(message: str) -> str:
    """A DecodeError message with its numbers and quoted bytes blanked, cut to its gist."""
    gist = re.sub(r"b'[^']*'|b\"[^\"]*\"|\([^)]*bytes[^)]*\)|first bytes [0-9a-f ]+", "…", message)
    gist = re.sub(r"\d+", "N", gist).split(";")[0]
    return gist[:90]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit-s", type=float, default=10.0, help="per-case time limit")
    args = parser.parse_args()

    from tests.test_fuzz import SEED_NAMES, random_case

    rng = random.Random(args.seed)
    cases = [random_case(rng) for _ in range(args.cases)]
    outcomes: Counter = Counter()
    messages: Counter = Counter()
    failures: list[tuple[int, object, str, str]] = []
    lock = threading.Lock()
    next_index = iter(range(len(cases)))
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="oc-fuzz-") as folder:
        context = multiprocessing.get_context("spawn")

        def lane_loop() -> None:
            lane = Lane(context, folder)
            try:
                while True:
                    with lock:
                        index = next(next_index, None)
                    if index is None:
                        return
                    kind, detail = lane.run(index, cases[index], args.limit_s)
                    with lock:
                        outcomes[kind] += 1
                        if kind == "DecodeError":
                            messages[category(detail)] += 1
                        elif kind != "result":
                            failures.append((index, cases[index], kind, detail))
            finally:
                lane.close()

        # The model file is written once, before the lanes load it.
        from tests.test_fuzz import fuzz_classifiers

        fuzz_classifiers(folder)
        threads = [threading.Thread(target=lane_loop) for _ in range(max(1, args.workers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    elapsed = time.monotonic() - started
    print(f"{args.cases} cases (seed {args.seed}) in {elapsed:.1f} s, per-case limit {args.limit_s} s, {args.workers} workers")
    for kind in ("result", "DecodeError", "error", "hang", "crash"):
        print(f"  {kind:<12} {outcomes.get(kind, 0)}")
    print("DecodeError messages (numbers as N):")
    for message, count in messages.most_common(25):
        print(f"  {count:>6}  {message}")
    if len(messages) > 25:
        print(f"  ... and {len(messages) - 25} more kinds")
    for index, case, kind, detail in failures[:20]:
        seed, mutations, count = case
        print(f"\nFAIL {kind} case {index}: seed {SEED_NAMES[seed]!r}, count {count}, mutations {mutations}\n{detail}")
    print("\nOK: every case ended in a result or a DecodeError" if not failures else f"\n{len(failures)} FAILURES")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
