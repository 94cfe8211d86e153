"""plots: each figure is a readable PNG, written atomically, and degenerate input does not crash."""

from __future__ import annotations

import numpy as np

from dfdetect._io import read_image
from dfdetect.evaluation.plots import plot_confusion, plot_history, plot_roc


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_history_confusion_roc_are_pngs(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 20, "val_loss": 1.2 / e,
                "val_acc": 0.5 + e / 25, "val_auc": 0.6} for e in range(1, 5)]
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20)
    p = np.clip(y * 0.3 + rng.random(40) * 0.7, 0, 1)
    videos = [f"v{i // 4}" for i in range(40)]
    paths = [
        plot_history(history, tmp_path / "history.png", title="t"),
        plot_confusion([[5, 3], [2, 10]], tmp_path / "confusion.png", threshold=0.5),
        plot_roc(y, p, tmp_path / "roc.png", auc=0.8, videos=videos, video_auc=0.9),
    ]
    for path in paths:
        img = read_image(path)
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, path
    assert _no_temp_files(tmp_path)


def test_history_without_validation_and_one_class_roc(tmp_path):
    plot_history([{"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "val_loss": None}], tmp_path / "h.png")
    plot_roc(np.ones(6, dtype=int), np.linspace(0, 1, 6), tmp_path / "roc.png", auc=None)
    plot_confusion([[0, 0], [0, 0]], tmp_path / "c.png")
    assert all(read_image(tmp_path / n) is not None for n in ("h.png", "roc.png", "c.png"))


def test_ensemble_history_draws_one_line_per_member(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **kw: drawn.append((list(a[0]), kw.get("label"))) or original(self, *a, **kw))
    history = [{"member": k, "epoch": e, "train_loss": 1 / e, "train_acc": 0.6, "val_loss": 1 / e, "val_acc": 0.6}
               for k in (0, 1) for e in (1, 2, 3)]
    plot_history(history, tmp_path / "h.png")
    assert len(drawn) == 8 and all(xs == [1, 2, 3] for xs, _ in drawn)  # 2 members x train/val x acc/loss
    assert {label for _, label in drawn} == {"train, member 0", "validation, member 0", "train, member 1",
                                             "validation, member 1"}
    assert read_image(tmp_path / "h.png") is not None
