"""Temporal smoothing of one camera's results, so that labels do not flicker between frames.

Confidences are averaged per class over the last `window` frames; the reported top
label changes only once another label has led the averaged ranking for `hold`
consecutive frames (hysteresis).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

import numpy as np


class CameraSmoother:
    def __init__(self, window: int, hold: int):
        self.hold = hold
        self._recent: deque[np.ndarray] = deque(maxlen=window)
        # A running sum, so that a frame costs the same whatever the window (this runs on the event loop).
        self._sum: Optional[np.ndarray] = None
        self.held: Optional[int] = None
        self._challenger: Optional[int] = None
        self._challenger_frames = 0

    def update(self, scores: np.ndarray, leader: Callable[[np.ndarray], Optional[int]]) -> tuple[np.ndarray, Optional[int]]:
        """Add one frame's confidences; returns the averaged confidences and the held top class.

        `leader` picks the top class of the averaged confidences (among the labels that may be reported).
        """
        if self._sum is None:
            self._sum = np.zeros_like(scores)
        if len(self._recent) == self._recent.maxlen:
            self._sum -= self._recent[0]
        self._recent.append(scores)
        self._sum += scores
        # Adding and subtracting leaves rounding residue of about 1e-16: keep averages in [0, 1].
        averaged = np.clip(self._sum / len(self._recent), 0.0, 1.0)
        top = leader(averaged)
        if self.held is None or top == self.held:
            self.held, self._challenger, self._challenger_frames = top, None, 0
        elif top == self._challenger:
            self._challenger_frames += 1
        else:
            self._challenger, self._challenger_frames = top, 1
        if self._challenger is not None and self._challenger_frames >= self.hold:
            self.held, self._challenger, self._challenger_frames = self._challenger, None, 0
        return averaged, self.held
