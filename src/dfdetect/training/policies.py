"""What a fine-tune decides once per epoch, each with its checkpoint state, in the shape of Lightning's callbacks.

Each policy has ``state_dict()`` / ``load_state_dict()``; the trainer merges their states into its checkpoint
(flat keys, as the checkpoints written before these classes existed, so those still resume).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfdetect._io import atomic_path
from dfdetect.errors import DfdetectError

__all__ = ["EMA", "BestWeights", "EarlyStopping", "save_weights", "saving"]


def _same(value: bool) -> bool:
    return value


class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation score (Lightning's ``EarlyStopping``, mode max).

    ``agree`` makes every rank take rank 0's decision (:meth:`dfdetect.training.distributed.DistInfo.agree`).
    """

    def __init__(self, patience: int, agree: Callable[[bool], bool] = _same) -> None:
        self.patience, self.agree = patience, agree
        self.best_score, self.bad_epochs, self.stopped = -math.inf, 0, False

    def update(self, score: float) -> bool:
        """Record one epoch's score; True when it is the best so far."""
        improved = bool(self.agree(score > self.best_score))
        if improved:
            self.best_score, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        self.stopped = bool(self.agree(self.bad_epochs >= self.patience))
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best_auc": self.best_score, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.bad_epochs = float(state["best_auc"]), int(state["bad_epochs"])
        self.stopped = self.bad_epochs >= self.patience


@contextmanager
def saving(path: Path, kept: str) -> Iterator[None]:
    """A save the disk refuses (full, read-only) becomes one line naming the file and saying what is kept.

    torch.save reports a full disk as a RuntimeError and safetensors as a SafetensorError, not an OSError.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip().splitlines()
                                                                                or [type(exc).__name__])[0]
        raise DfdetectError(f"cannot save ({why}); {kept}", path=path) from None


def save_weights(path: Path, model: nn.Module) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(sd, str(tmp))


class BestWeights:
    """The best epoch's weights, on disk, and its validation scores (Lightning's ``ModelCheckpoint``, top 1).

    Only the process that ``writes`` (rank 0) touches the file; every rank keeps the scores.
    """

    def __init__(self, path: Path, *, writes: bool = True, kept: str = "") -> None:
        self.path, self.writes, self.kept = path, writes, kept
        self.scores = np.empty(0)

    def clear(self) -> None:
        """A fresh run: a best epoch of another run must never be loaded at the end."""
        if self.writes:
            self.path.unlink(missing_ok=True)

    def update(self, model: nn.Module, scores: np.ndarray) -> None:
        self.scores = scores
        if self.writes:
            with saving(self.path, self.kept):
                save_weights(self.path, model)

    def restore(self, model: nn.Module) -> None:
        if self.path.is_file():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(self.path)))

    def state_dict(self) -> dict[str, Any]:
        return {"best_p": torch.from_numpy(np.asarray(self.scores, dtype=np.float32))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = state["best_p"].numpy()


class EMA:
    """timm's moving average of the weights, warmed up (the average follows the weights closely at first)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, model: nn.Module, step: int) -> None:
        self.ema.update(model, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["ema"])
