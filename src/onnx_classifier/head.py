"""Raw model output to confidences in [0, 1], and the top-k of those."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from .config import Head, LabelRules, check_label_names

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


def top_k(
    scores: np.ndarray,
    labels: Sequence[str],
    count: int,
    minimums: Union[float, np.ndarray] = 0.0,
    first: Optional[int] = None,
) -> list[Prediction]:
    """At most `count` predictions, each at or above its minimum (one for all classes, or one per
    class), highest first with ties by class index; class `first`, if it passes, leads regardless."""
    if count <= 0:
        return []
    candidates = np.flatnonzero(scores >= minimums)
    if first is not None and first in candidates:
        candidates = candidates[candidates != first]
        count -= 1
        lead = [first]
    else:
        lead = []
    if count < candidates.size:
        # argpartition keeps an arbitrary member of a tie at the cut-off: keep everything above the
        # count-th score, then the lowest class indices among those equal to it (candidates ascend).
        values = scores[candidates]
        cut = -np.partition(-values, count - 1)[count - 1] if count > 0 else np.inf
        above = candidates[values > cut]
        candidates = np.concatenate((above, candidates[values == cut][: count - above.size]))
    order = lead + list(candidates[np.lexsort((candidates, -scores[candidates]))])
    return [Prediction(labels[i], float(scores[i])) for i in order]


class LabelFilter:
    """Per-class minimum confidences from the label rules: `label_confidences` where listed,
    `confidence_threshold` elsewhere, and never for labels not allowed or blocked."""

    def __init__(self, rules: LabelRules, labels: Sequence[str]):
        check_label_names(rules, labels)
        minimums = np.full(len(labels), rules.confidence_threshold)
        allowed = None if rules.allowed_labels is None else set(rules.allowed_labels)
        overrides = dict(rules.label_confidences)
        blocked = set(rules.blocked_labels)
        for i, label in enumerate(labels):  # a label that appears twice gets the same rule in both places
            if label in overrides:
                minimums[i] = overrides[label]
            if label in blocked or (allowed is not None and label not in allowed):
                minimums[i] = np.inf
        self.minimums = minimums
        self.eligible = np.isfinite(minimums)
        self.labels = tuple(labels)

    def select(self, scores: np.ndarray, count: int, first: Optional[int] = None) -> list[Prediction]:
        return top_k(scores, self.labels, count, self.minimums, first)

    def best(self, scores: np.ndarray) -> Optional[int]:
        """The highest-scoring class that may be reported at all (its minimum aside)."""
        if not self.eligible.any():
            return None
        return int(np.argmax(np.where(self.eligible, scores, -np.inf)))
