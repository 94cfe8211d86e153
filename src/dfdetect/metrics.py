"""Detection metrics: frame- and video-level AUC, AP, EER, and accuracy at a threshold.

Scores are P(fake) and fake (1) is the positive class. Video-level scores are the mean (or max)
of a video's frame scores, as DeepfakeBench reports them. Degenerate inputs (one class only) warn
and give NaN, as scikit-learn does, rather than crash an evaluation of an all-fake shard.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

ThresholdMethod = Literal["fixed", "val_eer", "val_youden"]
Aggregate = Literal["mean", "max"]


def _check_scores(y_true: Sequence[int] | np.ndarray, p_fake: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate at the boundary: 1-D, same length, labels in {0, 1}, finite probabilities."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(p_fake, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.shape[0]} labels but p_fake has {p.shape[0]} scores; they must match")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0 (real) or 1 (fake), found {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(p).all():
        raise ValueError("p_fake has NaN or infinite values; check the model output")
    return y.astype(int), p


def _two_classes(y: np.ndarray, what: str) -> bool:
    if np.unique(y).size < 2:
        warnings.warn(f"only one class present in y_true; {what} is undefined (NaN)", stacklevel=3)
        return False
    return True


def eer(y_true: Sequence[int] | np.ndarray, p_fake: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false-positive and false-negative rates meet.

    Returns ``(eer, threshold)``; ``(nan, 0.5)`` when only one class is present.
    """
    y, p = _check_scores(y_true, p_fake)
    if not _two_classes(y, "EER"):
        return math.nan, 0.5
    fpr, tpr, thr = roc_curve(y, p)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(np.clip(thr[i], 0.0, 1.0))


def choose_threshold(
    y_true: Sequence[int] | np.ndarray, p_fake: Sequence[float] | np.ndarray, method: ThresholdMethod = "val_youden"
) -> float:
    """Pick the decision threshold on *validation* scores; never call this on test data.

    ``fixed`` is 0.5 (the seed); ``val_eer`` is the EER point; ``val_youden`` maximises TPR - FPR,
    which is what fixes the seed's everything-is-fake failure under class imbalance.
    """
    if method == "fixed":
        return 0.5
    y, p = _check_scores(y_true, p_fake)
    if not _two_classes(y, "the threshold"):
        return 0.5
    if method == "val_eer":
        return eer(y, p)[1]
    fpr, tpr, thr = roc_curve(y, p)
    return float(np.clip(thr[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q) - np.log1p(-q)


def fit_temperature(y_true: Sequence[int] | np.ndarray, p_fake: Sequence[float] | np.ndarray) -> float:
    """The temperature T minimising the log-loss of ``sigmoid(logit(p) / T)`` on *validation* scores.

    Temperature scaling (Guo et al. 2017) keeps the ranking, so AUC and the ROC are unchanged; only how
    confident the scores are moves. One class only: 1.0 (nothing to fit on).
    """
    from scipy.optimize import minimize_scalar

    y, p = _check_scores(y_true, p_fake)
    if np.unique(y).size < 2:
        return 1.0
    z = _logit(p)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)  # log-loss of sigmoid(s), written stably
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
    return float(math.exp(res.x))


def apply_temperature(p_fake: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)``: the scores :func:`fit_temperature`'s T gives."""
    return 1.0 / (1.0 + np.exp(-_logit(np.asarray(p_fake, dtype=np.float64)) / float(temperature)))


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
    how: Aggregate = "mean",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Aggregate frame scores per video. Returns ``(video_ids, y_video, p_video)`` sorted by id.

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
    aggregate: Aggregate = "mean",
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
