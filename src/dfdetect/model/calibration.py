"""How a detector's scores become verdicts: the threshold, and temperature scaling of P(fake).

The trainer picks both on validation and stores them in the detector file; evaluation reports
them. Scores are P(fake), fake (1) the positive class; one class only warns and gives NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

ThresholdMethod = Literal["fixed", "val_eer", "val_youden"]


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
