"""Raw model output to confidences in [0, 1], and the top-k of those."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from .config import Head

# How far a vector's sum may stray from 1 and still count as a probability distribution.
_DISTRIBUTION_TOLERANCE = 1e-3


class Prediction(NamedTuple):
    label: str
    confidence: float


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def is_distribution(x: np.ndarray) -> bool:
    return bool(x.min() >= 0.0 and x.max() <= 1.0 and abs(x.sum() - 1.0) <= _DISTRIBUTION_TOLERANCE)


def confidences(
    raw: np.ndarray, head: Head, final_activation: Optional[Head], quantization: Optional[tuple[float, int]]
) -> np.ndarray:
    """One row of class scores as float64 confidences.

    `auto` never applies an activation twice: a graph that already ends in Softmax
    or Sigmoid, or an output that already is a probability distribution, is used
    as it is; anything else is taken as logits and gets softmax.
    """
    scores = raw.reshape(-1).astype(np.float64)
    if quantization is not None:
        scale, zero_point = quantization
        scores = (scores - zero_point) * scale
    scores = np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)
    if head is Head.AUTO:
        head = Head.NONE if final_activation is not None or is_distribution(scores) else Head.SOFTMAX
    if head is Head.SOFTMAX:
        scores = softmax(scores)
    elif head is Head.SIGMOID:
        scores = sigmoid(scores)
    return np.clip(scores, 0.0, 1.0)


def top_k(scores: np.ndarray, labels: Sequence[str], count: int, min_confidence: float = 0.0) -> list[Prediction]:
    """At most `count` predictions at or above `min_confidence`, highest first (ties by class index)."""
    if count <= 0:
        return []
    if count < scores.size:
        candidates = np.argpartition(-scores, count - 1)[:count]
    else:
        candidates = np.arange(scores.size)
    candidates = candidates[scores[candidates] >= min_confidence]
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    return [Prediction(labels[i], float(scores[i])) for i in order]
