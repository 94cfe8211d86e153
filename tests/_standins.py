"""Small stand-ins shared by the evaluate and report tests (one copy, so they cannot drift apart)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Table:
    """Stand-in for dfdetect.data.CropTable: only the columns evaluate and report read."""

    paths: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    videos: list = field(default_factory=list)


class MeanBrightness:
    """Stand-in detector: P(fake) = mean brightness / 255, at a fixed 'validation' threshold."""

    def __init__(self, threshold: float = 0.5):
        self.threshold_ = threshold
        self.calls: list[int] = []

    def predict_proba(self, crops):
        self.calls.append(len(crops))
        return np.array([c.mean() / 255.0 for c in crops])
