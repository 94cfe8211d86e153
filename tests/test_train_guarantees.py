"""Issue 12's training guarantees: resume equals uninterrupted, run settings are not the recipe, bad
training data is refused in one line, a full disk keeps the checkpoint, identical trainings give identical files."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dfdetect.training.trainer as T
from dfdetect.config import ModelConfig, Protocol
from dfdetect.data.crops import build_crop_table
from dfdetect.data.sources import discover
from dfdetect.errors import DfdetectError, NothingUsableError
from dfdetect.training.trainer import CHECKPOINT_FILE, train

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One torch thread, kept every epoch: bit-for-bit comparisons must not depend on how busy the cores are."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # auto_threads keeps what torch is set to
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_crops(root: Path, n: int = 12, labels: tuple[str, ...] = ("real", "fake")) -> Path:
    rng = np.random.default_rng(0)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 120, (36, 36, 3), dtype=np.uint8)
            if label == "fake":
                img[:, :12] = 250
            cv2.imwrite(str(root / label / f"{i:02d}.png"), img)
    return root


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return build_crop_table(discover(_write_crops(tmp_path_factory.mktemp("crops"))), None)


def _full(**train) -> Protocol:
    """The default recipe (pairs, balanced sampler, augmentation, EMA, TTA), tiny, one member."""
    base = Protocol.default()
    model = ModelConfig(pretrained=False, input_size=SIZE, pool="avg", tta_flip=True, ensemble=1, drop_rate=0.2)
    cfg = {"epochs": 3, "batch_size": 8, "patience": 5, "ema": 0.9, "lr": 1e-3, **train}
    return base.model_copy(update={"model": model, "train": base.train.model_copy(update=cfg)})


def _kill_after_epoch_1(monkeypatch):
    """kill -9 just after epoch 1's checkpoint is on disk."""
    real = T._save_state

    def save_then_die(path, state):
        real(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_save_state", save_then_die)
    return lambda: monkeypatch.setattr(T, "_save_state", real)


def _assert_same_weights(a, b):
    sa, sb = a.detector.model_.state_dict(), b.detector.model_.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


# --------------------------------------------------------------------------- item 4


def test_resumed_fine_tune_equals_the_uninterrupted_one_bit_for_bit(table, tmp_path, monkeypatch):
    """Regression: the sampler's generator was seeded once and advanced every epoch, but not checkpointed, so a
    run killed after epoch 1 replayed epoch 1's order in epoch 2 (and dropout drew from another state)."""
    p = _full()
    whole = train(table, p, tmp_path / "whole", device="cpu")
    restore = _kill_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(table, p, tmp_path / "killed", device="cpu")
    restore()
    resumed = train(table, p, tmp_path / "killed", device="cpu")
    assert any("resumed" in n and "after epoch 1" in n for n in resumed.notes)
    _assert_same_weights(whole, resumed)
    assert resumed.detector.threshold_ == whole.detector.threshold_
    np.testing.assert_array_equal(resumed.val_p, whole.val_p)
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in whole.history]


# --------------------------------------------------------------------------- item 5


def test_changing_workers_or_member_scheduling_resumes_and_is_not_saved(table, tmp_path, monkeypatch):
    """Regression: ``workers`` was part of the resume key (a run killed at -j 0 started afresh at -j 1) and of
    config.yaml and the detector's metadata, so the same model was saved differently."""
    from safetensors import safe_open

    p = _full(epochs=2)
    restore = _kill_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(table, p, tmp_path, device="cpu")
    restore()
    other = p.model_copy(update={"train": p.train.model_copy(update={"workers": 1, "parallel_members": False})})
    r = train(table, other, tmp_path, device="cpu")
    assert any("resumed" in n and "after epoch 1" in n for n in r.notes), r.notes
    config = (tmp_path / "config.yaml").read_text()
    with safe_open(str(tmp_path / "detector.safetensors"), framework="pt") as fh:
        saved = json.loads(fh.metadata()["protocol"])
    for setting in ("workers", "parallel_members"):
        assert setting not in config and setting not in saved["train"]
    assert r.detector.protocol_ == p.recipe() == other.recipe()


# --------------------------------------------------------------------------- item 10


def test_a_file_labelled_both_ways_or_listed_twice_is_one_line(tmp_path):
    """Regression: a labels.csv row for a file as real and another as fake trained on both labels; a duplicate
    row counted the file twice; nothing was said."""
    from dfdetect.data.crops import load_label_table

    root = _write_crops(tmp_path / "d", n=3)
    rows = ["path,label", "real/00.png,real", "real/00.png,fake", "real/01.png,real", "real/01.png,real",
            "fake/00.png,fake", "real/02.png,real", "fake/01.png,fake"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    t = build_crop_table(discover(root), None)
    assert sorted(p.relative_to(root).as_posix() for p in t.paths) == [
        "fake/00.png", "fake/01.png", "real/01.png", "real/02.png"]
    assert [s.split(": ", 1)[1] for s in t.skipped if "real/0" in s] == [
        "labelled both real and fake in the dataset; left out"]
    # a file used once of two rows is used, so it is a note, not a skip (it made "N skipped" count it)
    assert [s.split(": ", 1)[1] for s in t.notes] == ["listed 2 times in the dataset; used once"]
    seed = tmp_path / "labels.txt"  # the seed's '{1|0} {path}' file (1 = real): the same checks
    seed.write_text("1 real/00.png\n0 real/00.png\n0 fake/00.png\n0 fake/00.png\n1 real/01.png\n")
    t = load_label_table(seed, root)
    assert sorted(p.relative_to(root).as_posix() for p in t.paths) == ["fake/00.png", "real/01.png"]
    assert sum("labelled both real and fake" in s for s in t.skipped) == 1
    assert t.notes == [f"{root / 'fake/00.png'}: listed 2 times in labels.txt; used once"]
    assert not any("listed" in s for s in t.skipped)


def test_one_class_training_set_is_refused_before_saving_a_detector(tmp_path):
    """Regression: ``--protocol seed`` on real crops alone saved a detector with val_auc nan."""
    from typer.testing import CliRunner

    from dfdetect.cli import app

    root = _write_crops(tmp_path / "d", n=8, labels=("real",))
    res = CliRunner().invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--protocol", "seed",
                                   "--no-pretrained", "--input-size", str(SIZE), "--epochs", "1"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "the training split has only real crops" in " ".join(res.output.split())
    assert not (tmp_path / "run" / "detector.safetensors").exists()
    t = build_crop_table(discover(root), None)
    with pytest.raises(NothingUsableError, match="only real crops"):  # full mode too
        train(t, _full(epochs=1), tmp_path / "full", device="cpu")
    # SBI makes its own fakes: real crops alone are a valid training set there
    p = _full(epochs=1, pseudo_fakes="sbi", sbi_mix=False, split="random")
    r = train(t, p, tmp_path / "sbi", device="cpu",
              blend_fn=lambda face, rng, landmarks: (face, 255 - face))
    assert any("validation split has only real crops" in n for n in r.notes)
    assert r.detector.threshold_ == 0.5  # no threshold can be chosen on one class
    from dfdetect.model.detector import Detector

    assert Detector.load(tmp_path / "sbi").threshold_ == 0.5


# --------------------------------------------------------------------------- item 11


def _disk_full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_end_is_one_line_and_keeps_the_checkpoint(table, tmp_path, monkeypatch):
    """Regression: the save after training raised a traceback and the trained model was lost from view."""
    from dfdetect.model.detector import Detector

    p = _full(epochs=1)
    monkeypatch.setattr(Detector, "save", _disk_full)
    with pytest.raises(DfdetectError) as err:
        train(table, p, tmp_path, device="cpu")
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(tmp_path / "detector.safetensors"))
    assert "No space left on device" in line and str(tmp_path / CHECKPOINT_FILE) in line
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    monkeypatch.undo()
    trained: list[int] = []
    r = train(table, p, tmp_path, device="cpu", progress=trained.append)  # space again: saves, trains nothing
    assert trained == [] and any("resumed" in n for n in r.notes)
    assert (tmp_path / "detector.safetensors").is_file()


def test_a_full_disk_while_checkpointing_names_the_checkpoint(table, tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError: it too is one line naming the file."""
    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(T.torch, "save", full)
    with pytest.raises(DfdetectError, match=r"last\.ckpt: cannot save \(\[enforce fail.*file write failed\); "
                                            r"the last checkpoint written is kept"):
        train(table, _full(epochs=1), tmp_path, device="cpu")


def test_train_command_on_a_full_disk_says_it_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dfdetect.cli import app
    from dfdetect.model.detector import Detector

    root = _write_crops(tmp_path / "d", n=8)
    monkeypatch.setattr(Detector, "save", _disk_full)
    res = CliRunner().invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--protocol", "seed",
                                   "--no-pretrained", "--input-size", str(SIZE), "--epochs", "1"],
                             env={"COLUMNS": "400"})
    assert res.exit_code == 1 and "Traceback" not in res.output
    [line] = [ln for ln in res.output.splitlines() if "error:" in ln]
    assert "detector.safetensors: cannot save (No space left on device)" in line and "features" in line


# --------------------------------------------------------------------------- item 12 (f)


def test_identical_trainings_give_byte_identical_detector_files(table, tmp_path):
    """Regression: safetensors wrote the metadata in a random (Rust HashMap) order on every save."""
    from dfdetect.model.detector import Detector

    seed = Protocol.seed()
    p = seed.model_copy(update={"model": ModelConfig(pretrained=False, input_size=SIZE, tta_flip=False, ensemble=1, pool="max"),
                                "train": seed.train.model_copy(update={"epochs": 1})})
    a = train(table, p, tmp_path / "a", cache_dir=tmp_path / "features")
    train(table, p, tmp_path / "b", cache_dir=tmp_path / "features")
    files = [(tmp_path / d / "detector.safetensors").read_bytes() for d in ("a", "b")]
    for k in range(4):  # one process, several saves: each one drew a new order
        files.append(a.detector.save(tmp_path / f"again{k}.safetensors").read_bytes())
    assert all(f == files[0] for f in files)
    assert (tmp_path / "a" / "config.yaml").read_bytes() == (tmp_path / "b" / "config.yaml").read_bytes()
    back = Detector.load(tmp_path / "a")
    assert back.threshold_ == a.detector.threshold_ and back.protocol_ == a.detector.protocol_
