import os
from concurrent.futures import ThreadPoolExecutor


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


# The threads that decode, preprocess and run in-process models off the event loop: as many as
# there are cores, so that a burst of requests queues here instead of oversubscribing them.
WORKERS = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="onnx-classifier")
