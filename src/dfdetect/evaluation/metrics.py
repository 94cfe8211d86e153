"""Detection metrics: frame- and video-level AUC, AP, EER, and accuracy at a threshold.

Scores are P(fake) and fake (1) is the positive class. Video-level scores are the mean (or max)
of a video's frame scores, as DeepfakeBench reports them. Degenerate inputs (one class only) warn
and give NaN, as scikit-learn does, rather than crash an evaluation of an all-fake shard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from dfdetect.model.calibration import _check_scores, _two_classes, eer

FrameAggregate = Literal["mean", "max"]  #: frame scores -> one video score (DeepfakeBench's video AUC)


def expected_calibration_error(y_true: Sequence[int] | np.ndarray, p_fake: Sequence[float] | np.ndarray, *,
                               bins: int = 15) -> float:
    """ECE: the sample-weighted gap between mean P(fake) and the share of fakes, over equal-width bins."""
    y, p = _check_scores(y_true, p_fake)
    if y.size == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            gap += m.sum() * abs(float(p[m].mean()) - float(y[m].mean()))
    return gap / y.size


def video_scores(
    y_true: Sequence[int] | np.ndarray,
    p_fake: Sequence[float] | np.ndarray,
    videos: Sequence[str],
    how: FrameAggregate = "mean",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """FrameAggregate frame scores per video. Returns ``(video_ids, y_video, p_video)`` sorted by id.

    A video's label is the label of its frames; frames of one video with different labels are an
    error in the input, reported rather than averaged away.
    """
    y, p = _check_scores(y_true, p_fake)
    if len(videos) != y.size:
        raise ValueError(f"videos has {len(videos)} entries but there are {y.size} scores; they must match")
    ids, inverse = np.unique(np.asarray(videos, dtype=object).astype(str), return_inverse=True)
    y_min = np.full(ids.size, 2)
    y_max = np.full(ids.size, -1)
    np.minimum.at(y_min, inverse, y)
    np.maximum.at(y_max, inverse, y)
    if (y_min != y_max).any():
        bad = ids[np.flatnonzero(y_min != y_max)[0]]
        raise ValueError(f"video {bad!r} has frames labelled both real and fake")
    if how == "max":
        agg = np.full(ids.size, -np.inf)
        np.maximum.at(agg, inverse, p)
    else:
        agg = np.bincount(inverse, weights=p, minlength=ids.size) / np.bincount(inverse, minlength=ids.size)
    return ids.tolist(), y_min, agg


@dataclass(frozen=True)
class Metrics:
    """Everything ``metrics.json`` reports. Confusion is ``[[tn, fp], [fn, tp]]`` with fake positive."""

    frame_auc: float
    frame_ap: float
    frame_eer: float
    video_auc: float
    video_ap: float
    video_eer: float
    accuracy: float
    threshold: float
    confusion: list[list[int]]
    n_frames: int
    n_videos: int
    n_real: int
    n_fake: int

    def to_dict(self) -> dict:
        """JSON-ready; NaN becomes None so the file stays valid JSON."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _auc_ap_eer(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    if y.size == 0 or not _two_classes(y, "AUC/AP/EER"):
        return math.nan, math.nan, math.nan
    return float(roc_auc_score(y, p)), float(average_precision_score(y, p)), eer(y, p)[0]


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    p_fake: Sequence[float] | np.ndarray,
    *,
    threshold: float = 0.5,
    videos: Sequence[str] | None = None,
    aggregate: FrameAggregate = "mean",
) -> Metrics:
    """Frame-level and video-level metrics, and accuracy / confusion at ``threshold``.

    ``threshold`` should come from :func:`choose_threshold` on validation scores. A score at or
    above it is called fake. Without ``videos`` each frame is its own video.
    """
    y, p = _check_scores(y_true, p_fake)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    frame_auc, frame_ap, frame_eer = _auc_ap_eer(y, p)
    if videos is None:
        video_auc, video_ap, video_eer, n_videos = frame_auc, frame_ap, frame_eer, int(y.size)
    else:
        ids, yv, pv = video_scores(y, p, videos, aggregate)
        video_auc, video_ap, video_eer = _auc_ap_eer(yv, pv)
        n_videos = len(ids)
    pred = (p >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1]) if y.size else np.zeros((2, 2), dtype=int)
    return Metrics(
        frame_auc=frame_auc, frame_ap=frame_ap, frame_eer=frame_eer,
        video_auc=video_auc, video_ap=video_ap, video_eer=video_eer,
        accuracy=float((pred == y).mean()) if y.size else math.nan,
        threshold=float(threshold), confusion=cm.astype(int).tolist(),
        n_frames=int(y.size), n_videos=n_videos, n_real=int((y == 0).sum()), n_fake=int((y == 1).sum()),
    )
