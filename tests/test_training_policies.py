"""The fine-tune's per-epoch policies: each one's state survives a checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dfdetect.rundir import RunDir
from dfdetect.training.distributed import DistInfo
from dfdetect.training.policies import EMA, BestWeights, EarlyStopping


def _round_trip(state: dict) -> dict:
    """As the checkpoint does it: torch.save / torch.load(weights_only=True)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def test_early_stopping_counts_bad_epochs_and_resumes_where_it_stopped():
    es = EarlyStopping(patience=2)
    assert [es.update(s) for s in (0.5, 0.7, 0.6)] == [True, True, False]
    assert (es.best_score, es.bad_epochs, es.stopped) == (0.7, 1, False)
    again = EarlyStopping(patience=2)
    again.load_state_dict(_round_trip(es.state_dict()))
    assert (again.best_score, again.bad_epochs, again.stopped) == (0.7, 1, False)
    assert not again.update(0.65) and again.stopped  # the second bad epoch in a row, after the resume
    done = EarlyStopping(patience=2)
    done.load_state_dict(again.state_dict())
    assert done.stopped  # a finished run resumed trains no further epoch
    assert EarlyStopping(1).best_score == -math.inf


def test_early_stopping_takes_the_agreed_decision():
    """Under DDP every rank takes rank 0's decision, whatever its own score says."""
    es = EarlyStopping(patience=1, agree=lambda v: False)
    assert not es.update(1.0) and es.bad_epochs == 1 and not es.stopped


def test_best_weights_keep_the_file_and_the_scores(tmp_path):
    model = nn.Linear(3, 1)
    best = BestWeights(tmp_path / "best.safetensors")
    best.update(model, np.array([0.25, 0.75]))
    assert best.path.is_file()
    back = BestWeights(best.path)
    back.load_state_dict(_round_trip(best.state_dict()))
    np.testing.assert_array_equal(back.scores, [0.25, 0.75])
    other = nn.Linear(3, 1)
    back.restore(other)
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)
    back.clear()
    assert not best.path.exists()
    silent = BestWeights(tmp_path / "rank1.safetensors", writes=False)  # not rank 0: scores only, no file
    silent.update(model, np.array([0.5]))
    assert not silent.path.exists() and silent.scores.tolist() == [0.5]


def test_ema_state_round_trip_continues_the_same_average():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=5)
    again = EMA(nn.Linear(4, 1), decay=0.9)
    again.load_state_dict(_round_trip(ema.state_dict()))
    for a, b in zip(ema.module.state_dict().values(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ema.update(model, step=6)
    again.update(model, step=6)
    assert torch.equal(ema.module.weight, again.module.weight)


def test_run_dir_names_the_layout(tmp_path):
    run = RunDir(tmp_path)
    assert [p.name for p in (run.detector, run.history, run.config, run.summary, run.checkpoint, run.best,
                             run.features)] == ["detector.safetensors", "history.json", "config.yaml", "train.json",
                                                "last.ckpt", "best.safetensors", "features"]
    assert run.member(1).checkpoint == tmp_path / "member1" / "last.ckpt"


def test_one_process_agrees_with_itself_and_never_waits():
    info = DistInfo()
    info.barrier()
    assert info.agree(True) is True and info.agree(3) == 3
