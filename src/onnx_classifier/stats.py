"""Counts and per-stage latencies of a service's calls, for `do_command` "stats"."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Mapping

import numpy as np

STAGES = ("fetch", "decode", "preprocess", "inference", "postprocess", "total")
# Percentiles come from the most recent samples, so that memory stays bounded on a robot that runs for weeks.
SAMPLES_KEPT = 4096


class CallStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._since = time.time()
            self._calls: Counter[str] = Counter()
            self._errors: Counter[str] = Counter()
            self._stages = {stage: deque(maxlen=SAMPLES_KEPT) for stage in STAGES}

    def record(self, method: str, timings: Mapping[str, float], error: str = "") -> None:
        """One call: its method, the seconds each stage took, and its error status name if it failed."""
        with self._lock:
            self._calls[method] += 1
            if error:
                self._errors[error] += 1
            for stage, seconds in timings.items():
                self._stages[stage].append(seconds)

    def report(self) -> dict[str, Any]:
        with self._lock:
            latency = {}
            for stage, samples in self._stages.items():
                if samples:
                    ms = np.asarray(samples) * 1000.0
                    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
                    latency[stage] = {"samples": len(ms), "p50_ms": round(p50, 3), "p90_ms": round(p90, 3),
                                      "p99_ms": round(p99, 3), "max_ms": round(float(ms.max()), 3)}
            return {
                "since_unix_s": round(self._since, 3),
                "calls": dict(self._calls),
                "errors": dict(self._errors),
                "latency": latency,
                "latency_samples_kept": SAMPLES_KEPT,
            }
