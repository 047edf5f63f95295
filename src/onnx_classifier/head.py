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


def in_unit_range(x: np.ndarray) -> bool:
    return bool(x.min() >= 0.0 and x.max() <= 1.0)


def is_distribution(x: np.ndarray) -> bool:
    return in_unit_range(x) and abs(x.sum() - 1.0) <= _DISTRIBUTION_TOLERANCE


def auto_head(scores: np.ndarray, final_activation: Optional[Head], graph_read: bool) -> Head:
    """What `auto` applies to one row of (dequantized) scores; it never applies an activation twice.

    A graph that ends in Softmax or Sigmoid is used as it is. Where the graph was read and ends in
    neither, scores that already form a probability distribution are used as they are (a Softmax
    followed by other ops); where nothing describes the model (an ML model service), scores all in
    [0, 1] are, since they may be softmax or independent sigmoid outputs. Anything else is logits:
    softmax, or sigmoid for a single class.
    """
    if final_activation is not None:
        return Head.NONE
    if is_distribution(scores) if graph_read else in_unit_range(scores):
        return Head.NONE
    return Head.SIGMOID if scores.size == 1 else Head.SOFTMAX


def dequantized(raw: np.ndarray, quantization: Optional[tuple[float, int]]) -> np.ndarray:
    """One row of raw scores as finite float64 values, a quantized output's dequantized; no activation, no clipping."""
    scores = raw.reshape(-1).astype(np.float64)
    if quantization is not None:
        scale, zero_point = quantization
        scores = (scores - zero_point) * scale
    return np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)


def confidences(
    raw: np.ndarray,
    head: Head,
    final_activation: Optional[Head],
    quantization: Optional[tuple[float, int]],
    graph_read: bool,
) -> np.ndarray:
    """One row of class scores as float64 confidences in [0, 1]; a quantized output is dequantized
    first, and `auto` decides per row (`auto_head`)."""
    scores = dequantized(raw, quantization)
    if head is Head.AUTO:
        head = auto_head(scores, final_activation, graph_read)
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
