"""The one contract every scorer keeps: the torch ``Detector``, the ``OnnxDetector`` and test stand-ins.

predict, serve, scan and evaluate take anything with these three members, so none of them needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """What predict, serve, scan and evaluate need from a model: a torch ``Detector`` and an ``OnnxDetector`` both fit."""

    threshold_: float
    protocol_: Any  #: dfdetect.config.Protocol; ``.faces`` is the FaceConfig the model was trained with

    def predict_proba(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray: ...
