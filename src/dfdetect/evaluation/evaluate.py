"""Score a labelled set of face crops with a saved detector, and write what the seed evaluated.

Outputs in ``out_dir``: ``metrics.json`` (frame/video AUC, AP, EER, accuracy, confusion counts,
threshold, counts), ``scores.csv`` (one row per crop), and the figures from :mod:`dfdetect.evaluation.plots`.

The threshold is the detector's ``threshold_``, chosen on *validation* scores when it was
trained; it is never re-chosen here, because choosing it on the test set would flatter accuracy.
Crops are read and scored in batches, so memory stays flat however large the set is.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfdetect._io import load_image, write_json, write_text
from dfdetect.config import INFERENCE
from dfdetect.errors import BadInputError, NothingUsableError
from dfdetect.evaluation import plots
from dfdetect.evaluation.metrics import compute_metrics
from dfdetect.model.scoring import Scorer
from dfdetect.parallel import ProgressCallback
from dfdetect.rundir import HISTORY_FILE

if TYPE_CHECKING:
    from dfdetect.data.crops import CropTable

__all__ = ["HISTORY_JSON", "METRICS_JSON", "SCORES_CSV", "evaluate", "official_test_subset",
           "read_scores"]

METRICS_JSON = "metrics.json"
SCORES_CSV = "scores.csv"
HISTORY_JSON = HISTORY_FILE  #: the run folder's name for it (dfdetect.rundir)
MAX_SKIPPED_LISTED = 100  #: metrics.json lists this many skipped crops; the count is always exact


def _batches(paths: Sequence[Any], size: int) -> Iterator[tuple[list[int], list[np.ndarray], list[str]]]:
    """Yield (row indices, decoded crops, problems) per batch; unreadable files become problems."""
    for start in range(0, len(paths), size):
        idx, imgs, bad = [], [], []
        for i in range(start, min(start + size, len(paths))):
            try:
                img = load_image(paths[i])
            except BadInputError as exc:  # a bomb, a pipe, a corrupt file: named, the rest go on
                bad.append(f"{exc}; skipped")
            else:
                idx.append(i)
                imgs.append(img)
        yield idx, imgs, bad


def _threshold_source(detector: Scorer) -> str:
    method = detector.protocol_.train.threshold
    if method == "fixed":
        return "fixed at 0.5 (the seed's rule); not chosen on this set"
    return f"{method}: chosen on the validation split at training time; not re-chosen on this set"


def _scores_csv(paths: Sequence[str], videos: Sequence[str], y: np.ndarray, p: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "video", "label", "p_fake"])
    for row in zip(paths, videos, y.tolist(), p.tolist(), strict=True):
        w.writerow([row[0], row[1], row[2], f"{row[3]:.6f}"])
    return buf.getvalue()


def official_test_subset(table: CropTable) -> tuple[CropTable, str | None]:
    """Only the rows of the dataset's official test list (Celeb-DF), when it has one.

    Scoring a Celeb-DF root as a whole would mix in the videos a model may have trained on; the
    note says what was kept. Data without an official list is returned whole.
    """
    is_test = np.asarray(table.is_test, dtype=bool)
    if not is_test.any() or is_test.all():
        return table, None
    kept = table.subset(np.flatnonzero(is_test))
    return kept, (f"scoring the official test list only: {len(kept.paths)} of {len(table.paths)} crops "
                  "(use --all to score every crop)")


def read_scores(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``scores.csv`` back as dicts with ``label`` as int and ``p_fake`` as float."""
    with Path(path).open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return [{**r, "label": int(r["label"]), "p_fake": float(r["p_fake"])} for r in csv.DictReader(fh)]


def evaluate(
    detector: Scorer,
    table: CropTable,
    out_dir: str | Path,
    *,
    history: Sequence[Mapping[str, float]] | None = None,
    title: str = "",
    batch_size: int = INFERENCE.batch_size,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Score every crop in ``table`` and write metrics.json, scores.csv and the plots to ``out_dir``.

    Parameters
    ----------
    detector : object with ``predict_proba(list of BGR crops) -> P(fake)`` and ``threshold_``
    table : CropTable, with ``paths``, ``labels`` (1 = fake) and ``videos`` of equal length
    history : list of dict, default=None
        Per-epoch ``train_loss/train_acc/val_loss/val_acc``; when given, ``history.png`` is drawn.

    Returns
    -------
    dict
        The content of ``metrics.json``. A one-class set gives NaN (``None``) AUCs and a warning
        in ``result["warnings"]``, not an error. Unreadable crops are skipped and counted.
    """
    out_dir = Path(out_dir)
    paths = [str(p) for p in table.paths]
    labels = np.asarray(table.labels).astype(int).reshape(-1)
    videos = [str(v) for v in table.videos]
    if not (len(paths) == labels.size == len(videos)):
        raise ValueError(f"table columns differ in length: {len(paths)} paths, {labels.size} labels, "
                         f"{len(videos)} videos")
    if not paths:
        raise NothingUsableError("evaluate: the labelled set has no face crops", path=out_dir)

    kept: list[int] = []
    scores: list[np.ndarray] = []
    skipped: list[str] = []
    for idx, imgs, bad in _batches(paths, batch_size):
        skipped += bad
        if imgs:
            p = np.asarray(detector.predict_proba(imgs), dtype=np.float64).reshape(-1)
            if p.size != len(imgs):
                raise ValueError(f"detector returned {p.size} scores for {len(imgs)} crops")
            kept += idx
            scores.append(p)
        if progress is not None:
            progress(len(idx) + len(bad))
    if not kept:
        raise NothingUsableError(f"evaluate: none of the {len(paths)} crops could be read", path=out_dir)

    p = np.concatenate(scores)
    y = labels[kept]
    vids = [videos[i] for i in kept]
    aggregate = detector.protocol_.eval.aggregate
    threshold = float(detector.threshold_)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = compute_metrics(y, p, threshold=threshold, videos=vids, aggregate=aggregate)  # type: ignore[arg-type]
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    for msg in messages:  # surface them to the caller too, once each
        warnings.warn(f"evaluate: {msg}", stacklevel=2)

    result: dict[str, Any] = {
        **m.to_dict(),
        "threshold_source": _threshold_source(detector),
        "aggregate": aggregate,
        "n_skipped": len(skipped),
        "skipped": skipped[:MAX_SKIPPED_LISTED],
        "warnings": messages,
    }
    write_text(out_dir / SCORES_CSV, _scores_csv([paths[i] for i in kept], vids, y, p))
    if history:
        write_json(out_dir / HISTORY_JSON, list(history))
        plots.plot_history(history, out_dir / plots.HISTORY_PNG, title=title)
    plots.plot_confusion(m.confusion, out_dir / plots.CONFUSION_PNG, threshold=threshold, title=title)
    # A video curve only adds something when some video has more than one crop.
    per_video = vids if len(set(vids)) < len(vids) else None
    plots.plot_roc(y, p, out_dir / plots.ROC_PNG, auc=_finite(m.frame_auc), videos=per_video,
                   video_auc=_finite(m.video_auc), aggregate=aggregate, title=title)  # type: ignore[arg-type]
    # metrics.json last: its presence marks a finished evaluation (the study resumes on it).
    write_json(out_dir / METRICS_JSON, result)
    return result


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)
