"""The run folder's layout in one place: what ``train`` writes and ``evaluate``, ``study``, ``report`` and
the CLI read back. Torch-free, so the readers need not import the trainer to know a file's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "DETECTOR_FILE", "FEATURES_DIR", "HISTORY_FILE",
           "TRAIN_JSON", "RunDir"]

DETECTOR_FILE = "detector.safetensors"  #: the saved detector (weights, recipe, threshold)
HISTORY_FILE = "history.json"  #: one row per epoch (and member)
CONFIG_FILE = "config.yaml"  #: the recipe, as ``--protocol`` reads it back
TRAIN_JSON = "train.json"  #: the run's summary: threshold, split counts, notes, wall time, device
CHECKPOINT_FILE = "last.ckpt"  #: resume state (model, optimiser, schedule, history), every epoch
BEST_FILE = "best.safetensors"  #: weights of the best validation epoch (full mode)
FEATURES_DIR = "features"  #: frozen features, decoded crops and landmarks, unless a cache folder is given


@dataclass(frozen=True)
class RunDir:
    """One run folder. An ensemble's members keep their checkpoint and best weights in ``member<k>/``."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def detector(self) -> Path:
        return self.path / DETECTOR_FILE

    @property
    def history(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary(self) -> Path:
        return self.path / TRAIN_JSON

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def best(self) -> Path:
        return self.path / BEST_FILE

    @property
    def features(self) -> Path:
        return self.path / FEATURES_DIR

    def member(self, k: int) -> RunDir:
        return RunDir(self.path / f"member{k}")
