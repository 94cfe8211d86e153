"""The run folder's layout in one place: what ``train`` writes and ``evaluate``, ``study``, ``report`` and
the CLI read back. Torch-free, so the readers need not import the trainer to know a file's name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dfdetect.errors import BadInputError

__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "DETECTOR_FILE", "FEATURES_DIR", "HISTORY_FILE",
           "RUN_STAMP", "TRAIN_JSON", "RunDir"]

DETECTOR_FILE = "detector.safetensors"  #: the saved detector (weights, recipe, threshold)
HISTORY_FILE = "history.json"  #: one row per epoch (and member)
CONFIG_FILE = "config.yaml"  #: the recipe, as ``--protocol`` reads it back
TRAIN_JSON = "train.json"  #: the run's summary: threshold, split counts, notes, wall time, device
CHECKPOINT_FILE = "last.ckpt"  #: resume state (model, optimiser, schedule, history), every epoch
BEST_FILE = "best.safetensors"  #: weights of the best validation epoch (full mode)
FEATURES_DIR = "features"  #: frozen features, decoded crops and landmarks, unless a cache folder is given
RUN_STAMP = ".dfdetect-run"  #: marks a folder as a run folder, written before anything else goes in
_RUN_FILES = (CHECKPOINT_FILE, TRAIN_JSON, HISTORY_FILE)  #: what only a run writes (folders older than the stamp)


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

    def claim(self, legacy: tuple[str, ...] = _RUN_FILES, flag: str = "--out") -> None:
        """Make ``path`` an output folder of dfdetect's (created if need be), or refuse one holding someone else's files.

        Why: a run writes ``config.yaml``, ``detector.safetensors``, ``metrics.json`` and more by those names, so
        ``-o`` pointed at a user's own folder would overwrite their files. Accepted: a new or empty folder (hidden
        files aside), one this stamp marks, and one from before the stamp that holds a file named in ``legacy``
        (a training run's checkpoint or history; ``evaluate`` and ``predict --save`` pass none: their file names are
        too common).
        """
        stamp = self.path / RUN_STAMP
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(stamp):
                if not stamp.is_file():
                    raise BadInputError(f"its {RUN_STAMP} is not a regular file; use a new {flag} folder",
                                        path=self.path)
                return
            names = sorted(n for n in os.listdir(self.path) if not n.startswith("."))
            if names and not any(n in legacy for n in names):
                shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                raise BadInputError(f"holds files ({shown}) but no {RUN_STAMP}, so dfdetect did not make it; they "
                                    f"could be overwritten: use a new or empty {flag} folder", path=self.path)
            stamp.write_bytes(b"")
        except OSError as exc:
            raise BadInputError(f"cannot use it as the run folder ({exc.strerror or exc})", path=self.path) from None
