"""The seed's evaluation figures: accuracy/loss per epoch, confusion matrix, ROC curve.

Plots only draw what :mod:`dfdetect.evaluation.metrics` and the training history already hold; they never
re-decide a threshold or recompute an AUC, so a figure always agrees with ``metrics.json``.
Each figure is saved through :func:`dfdetect._io.atomic_path`, so a killed run never leaves a
half-written PNG that a resumed study would trust.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from dfdetect._io import atomic_path
from dfdetect.evaluation.metrics import FrameAggregate, video_scores

__all__ = ["CONFUSION_PNG", "HISTORY_PNG", "ROC_PNG", "plot_confusion", "plot_history", "plot_roc"]

HISTORY_PNG = "history.png"
CONFUSION_PNG = "confusion.png"
ROC_PNG = "roc.png"


def _save(fig: Figure, dest: str | Path) -> Path:
    dest = Path(dest)
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return dest


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values for one key, skipping epochs that lack it (e.g. no validation set)."""
    xs, ys = [], []
    for i, row in enumerate(history, start=1):
        value = row.get(key)
        if value is not None and np.isfinite(value):
            xs.append(int(row.get("epoch", i)))
            ys.append(float(value))
    return xs, ys


def plot_history(history: Sequence[Mapping[str, float]], dest: str | Path, *, title: str = "") -> Path:
    """Accuracy and loss per epoch, train and validation, side by side in one PNG (the seed's Fig. 1a/b).

    ``history`` rows are ``{epoch, train_loss, train_acc, val_loss, val_acc, ...}`` as
    :func:`dfdetect.training.trainer.train` returns them; an ensemble's rows also carry ``member``, one line each.
    """
    members = sorted({int(row["member"]) for row in history if "member" in row}) or [None]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, name in ((ax_acc, "acc", "accuracy"), (ax_loss, "loss", "loss")):
        for k in members:
            rows = history if k is None else [row for row in history if row.get("member") == k]
            for split, style in (("train", "-o"), ("val", "-s")):
                xs, ys = _series(rows, f"{split}_{metric}")
                label = "train" if split == "train" else "validation"
                if xs:
                    ax.plot(xs, ys, style, markersize=3, label=label if k is None else f"{label}, member {k}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, dest)


def plot_confusion(confusion: Sequence[Sequence[int]], dest: str | Path, *, threshold: float | None = None,
                   title: str = "") -> Path:
    """Confusion matrix ``[[tn, fp], [fn, tp]]`` (fake is positive) with counts in each cell."""
    cm = np.asarray(confusion, dtype=int).reshape(2, 2)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    labels = ["real", "fake"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    dark = cm.max() / 2 if cm.max() else 1
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=13, color="white" if n > dark else "black")
    head = title or "confusion matrix"
    ax.set_title(f"{head}\nthreshold {threshold:.3f}" if threshold is not None else head, fontsize=10)
    return _save(fig, dest)


def plot_roc(y_true: Sequence[int] | np.ndarray, p_fake: Sequence[float] | np.ndarray, dest: str | Path, *,
             auc: float | None = None, videos: Sequence[str] | None = None, video_auc: float | None = None,
             aggregate: FrameAggregate = "mean", title: str = "") -> Path:
    """ROC curve with its AUC in the legend; a video-level curve too when ``videos`` are given.

    The AUC values come from :func:`dfdetect.evaluation.metrics.compute_metrics` (pass them in) so the
    legend matches ``metrics.json``. A curve with one class only is left out and said so.
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    p = np.asarray(p_fake, dtype=float).reshape(-1)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    curves: list[tuple[str, np.ndarray, np.ndarray, float | None]] = [("frame", y, p, auc)]
    if videos is not None:
        _, yv, pv = video_scores(y, p, videos, aggregate)
        curves.append(("video", yv, pv, video_auc))
    for name, yy, pp, value in curves:
        if np.unique(yy).size < 2:
            ax.plot([], [], " ", label=f"{name}: one class only, no ROC")
            continue
        fpr, tpr, _ = roc_curve(yy, pp)
        auc_text = "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC = {auc_text})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake caught)")
    ax.set_title(title or "ROC", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, dest)
