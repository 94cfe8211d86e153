"""evaluate: outputs exist, metrics.json agrees with scikit-learn, the threshold is the detector's."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from _standins import MeanBrightness, Table
from dfdetect._io import write_image
from dfdetect.errors import NothingUsableError
from dfdetect.evaluation.evaluate import evaluate


def _make_set(root, n_videos=6, frames=3, seed=0) -> Table:
    rng = np.random.default_rng(seed)
    paths, labels, videos = [], [], []
    for v in range(n_videos):
        label = v % 2
        for f in range(frames):
            level = int(rng.integers(60, 160)) + 50 * label
            path = root / ("fake" if label else "real") / f"v{v}" / f"{f:05d}.png"
            write_image(path, np.full((16, 16, 3), level, np.uint8))
            paths.append(path)
            labels.append(label)
            videos.append(f"v{v}")
    return Table(paths, labels, videos)


def test_outputs_and_sklearn_agreement(tmp_path):
    table = _make_set(tmp_path / "crops")
    det = MeanBrightness(threshold=0.55)
    out = tmp_path / "eval"
    history = [{"epoch": 1, "train_loss": 0.6, "train_acc": 0.7}]
    result = evaluate(det, table, out, history=history, batch_size=4)
    for name in ("metrics.json", "scores.csv", "confusion.png", "roc.png", "history.png"):
        assert (out / name).is_file(), name
    assert max(det.calls) <= 4  # streamed in batches, never all at once
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(result))
    with (out / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_fake"]) for r in rows])
    assert len(rows) == m["n_frames"] == 18 and m["n_videos"] == 6
    assert m["frame_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-5)
    assert m["frame_ap"] == pytest.approx(average_precision_score(y, p), abs=1e-5)
    vids = sorted({r["video"] for r in rows})
    yv = [int(next(r["label"] for r in rows if r["video"] == v)) for v in vids]
    pv = [np.mean([float(r["p_fake"]) for r in rows if r["video"] == v]) for v in vids]
    assert m["video_auc"] == pytest.approx(roc_auc_score(yv, pv), abs=1e-5)
    assert m["threshold"] == 0.55  # the detector's, never re-chosen on the test set
    pred = p >= 0.55
    assert m["confusion"] == [[int(((y == 0) & ~pred).sum()), int(((y == 0) & pred).sum())],
                              [int(((y == 1) & ~pred).sum()), int(((y == 1) & pred).sum())]]
    assert m["accuracy"] == pytest.approx((pred == y).mean())


def test_unreadable_crop_is_skipped_and_counted(tmp_path):
    table = _make_set(tmp_path / "crops", n_videos=4, frames=2)
    bad = tmp_path / "crops" / "broken.png"
    bad.write_bytes(b"not a png")
    table = Table([*table.paths, bad], [*table.labels, 1], [*table.videos, "v9"])
    m = evaluate(MeanBrightness(0.5), table, tmp_path / "eval")
    assert m["n_skipped"] == 1 and m["n_frames"] == 8
    assert "broken.png" in m["skipped"][0]


def test_single_class_warns_and_gives_nan_auc(tmp_path):
    table = _make_set(tmp_path / "crops", n_videos=6, frames=1)
    keep = [i for i, lab in enumerate(table.labels) if lab == 1]
    table = Table([table.paths[i] for i in keep], [1] * len(keep), [table.videos[i] for i in keep])
    with pytest.warns(UserWarning, match="one class"):
        m = evaluate(MeanBrightness(0.5), table, tmp_path / "eval")
    assert m["frame_auc"] is None and m["video_auc"] is None
    assert m["warnings"] and m["n_fake"] == 3
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["frame_auc"] is None
    assert not math.isnan(m["accuracy"])


def test_nothing_readable_is_one_error(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"")
    with pytest.raises(NothingUsableError, match="none of the 1 crops"):
        evaluate(MeanBrightness(0.5), Table([bad], [0], ["x"]), tmp_path / "eval")
