"""Training in head and full mode, resume, threshold on validation, SBI, and the `train` command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dfdetect.config import ModelConfig, Protocol, train_config
from dfdetect.data.crops import build_crop_table
from dfdetect.data.sources import discover
from dfdetect.data.transforms import augment_crop
from dfdetect.errors import DfdetectError
from dfdetect.model.calibration import apply_temperature, choose_threshold
from dfdetect.model.detector import Detector
from dfdetect.threads import cpu_threads
from dfdetect.training.features import extract_features
from dfdetect.training.trainer import CHECKPOINT_FILE, train

SIZE = 32


@pytest.fixture(autouse=True)
def _threads():
    """2 shared cores: oversubscribed OpenMP threads make tiny forwards 10x slower."""
    with cpu_threads():
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """24 real + 24 fake tiny crops; fakes carry a bright band, so the classes are learnable."""
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        (root / label).mkdir()
        for i in range(24):
            img = rng.integers(0, 120, (36, 36, 3), dtype=np.uint8)
            if label == "fake":
                img[:, :12] = 250
            cv2.imwrite(str(root / label / f"{i:02d}.png"), img)
    return root


@pytest.fixture(scope="module")
def table(folder):
    return build_crop_table(discover(folder), None)


# tests that compare saved scores to the run's fp32 ones pin the CPU: on a GPU training runs in bf16
# autocast (tests/test_distributed.py covers that, to a looser tolerance)
CPU = "cpu"


def _proto(base: Protocol, **train) -> Protocol:
    model = ModelConfig(pretrained=False, input_size=SIZE, pool=base.model.pool, tta_flip=False, ensemble=1)
    return base.model_copy(update={"model": model, "train": base.train.model_copy(update=train)})


def test_head_mode_is_the_seed_recipe_on_cached_features(table, tmp_path, monkeypatch):
    p = _proto(Protocol.seed(), epochs=3)
    r = train(table, p, tmp_path / "run")
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert set(r.history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "seconds"}
    assert r.detector.threshold_ == 0.5  # the seed's fixed threshold
    assert r.val_y.size == r.val_p.size == len(r.val_videos) == 8  # 15 % of 48, stratified
    for f in ("detector.safetensors", "history.json", "config.yaml"):
        assert (tmp_path / "run" / f).is_file()
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == r.history
    # the head's weights went into the detector's classifier
    det = Detector.load(tmp_path / "run" / "detector.safetensors")
    assert torch.equal(det.model_.fc.weight, r.detector.model_.fc.weight)
    # second run: features come from the cache, the backbone is never run
    from dfdetect.model.backbones import BackboneClassifier

    def boom(self, x):
        raise AssertionError("backbone ran although the features were cached")

    monkeypatch.setattr(BackboneClassifier, "forward_features", boom)
    r2 = train(table, p, tmp_path / "run2", cache_dir=tmp_path / "run" / "features")
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(r2.history) == timeless(r.history)  # the same training; only the clock differs


def test_cached_features_equal_the_frozen_model(table, tmp_path):
    from dfdetect.data.transforms import preprocess_crops
    from dfdetect.model.backbones import create_backbone

    m = create_backbone("mobilenet_v2", pretrained=False).eval()
    sub = table.subset(range(5))
    feats, ok = extract_features(m, sub, tmp_path, input_size=SIZE, batch_size=2)
    assert isinstance(feats, np.memmap) and feats.shape == (5, m.num_features) and ok.all()
    x = preprocess_crops([cv2.imread(str(p)) for p in sub.paths], m.data_config, SIZE)
    with torch.no_grad():
        direct = m.pool_features(m.forward_features(x)).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-3, atol=1e-4 * np.abs(direct).max())  # onnxruntime
    assert len(list(tmp_path.glob("*.features.npy"))) == 1 and not list(tmp_path.glob(".*"))  # no temp left


def test_features_fall_back_to_torch_when_onnx_cannot_be_built(table, tmp_path, monkeypatch):
    from dfdetect.model import export
    from dfdetect.model.backbones import create_backbone
    from dfdetect.training.features import onnx_featuriser

    m = create_backbone("mobilenet_v2", pretrained=False).eval()
    sub = table.subset(range(3))
    assert onnx_featuriser(m, SIZE) is not None
    via_onnx, _ = extract_features(m, sub, tmp_path / "a", input_size=SIZE)

    def refuse(*a, **k):
        raise RuntimeError("exporter cannot take this network")

    monkeypatch.setattr(export, "onnx_session", refuse)
    assert onnx_featuriser(m, SIZE) is None
    via_torch, _ = extract_features(m, sub, tmp_path / "b", input_size=SIZE)
    np.testing.assert_allclose(via_onnx, via_torch, rtol=1e-3, atol=1e-4 * np.abs(via_torch).max())


def test_full_mode_threshold_on_validation_and_resume(table, tmp_path):
    p = _proto(Protocol.default(), epochs=2, batch_size=8, lr=1e-3, split="random", patience=5)
    calls = {"n": 0}

    def killer(n):
        calls["n"] += 1
        if calls["n"] == 8:  # in epoch 2 (5 batches per epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(table, p, tmp_path, device=CPU, progress=killer)
    assert (tmp_path / CHECKPOINT_FILE).is_file() and not (tmp_path / "detector.safetensors").exists()
    r = train(table, p, tmp_path, device=CPU)
    assert any("resumed" in n and "epoch 1" in n for n in r.notes)
    assert [h["epoch"] for h in r.history] == [1, 2]
    assert all(h["seconds"] > 0 for h in r.history)  # epoch 1's survived the kill, in the checkpoint
    assert r.detector.threshold_ == pytest.approx(choose_threshold(r.val_y, r.val_p, "val_youden"))
    # the kept model is the best validation epoch, and its scores are the reported ones
    crops = [cv2.imread(str(table.paths[table.videos.index(v)])) for v in r.val_videos]
    np.testing.assert_allclose(r.detector.predict_proba(crops), r.val_p, atol=1e-5)


def test_test_rows_are_never_used_for_training_or_threshold(table, tmp_path):
    t = table.subset(range(len(table)))
    t.is_test[[0, 1, 30, 31]] = True
    r = train(t, _proto(Protocol.seed(), epochs=1), tmp_path)
    test_videos = {t.videos[i] for i in (0, 1, 30, 31)}
    assert not test_videos & set(r.val_videos)
    assert r.counts["test"]["crops"] == 4 and r.counts["train"]["crops"] + r.counts["val"]["crops"] == 44


def test_full_mode_with_sbi_pseudo_fakes_only(table, tmp_path):
    def blend(face, rng, landmarks):
        out = face.copy()
        out[4:20, 4:20] = 255 - out[4:20, 4:20]
        return face, out

    p = _proto(Protocol.default(), epochs=1, batch_size=8, pseudo_fakes="sbi", sbi_mix=False, split="random")
    r = train(table, p, tmp_path, blend_fn=blend)
    assert len(r.history) == 1 and np.isfinite(r.history[0]["train_loss"])


def test_train_command(folder, tmp_path):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(folder), "--out", str(run), "--protocol", "seed", "--no-pretrained",
                                   "--input-size", str(SIZE), "--epochs", "1"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert (run / "detector.safetensors").is_file() and (run / "config.yaml").is_file()
    assert "seconds" in res.output  # the epoch's wall time: a slow machine shows in the table
    assert "threshold 0.5000" in res.output
    bad = CliRunner().invoke(app, ["train", str(folder), "--out", str(run), "--weights", str(folder / "nope.pth"),
                                   "--input-size", str(SIZE)])
    assert bad.exit_code == 1 and "weights file not found" in bad.output and "Traceback" not in bad.output
    two = CliRunner().invoke(app, ["train", str(folder), "--out", str(tmp_path / "two"), "--no-pretrained",
                                   "--input-size", str(SIZE), "--epochs", "1", "--batch-size", "8", "--ensemble", "2"])
    assert two.exit_code == 0, two.output
    assert "member" in two.output and (tmp_path / "two" / "member1" / CHECKPOINT_FILE).is_file()


def test_history_cells_and_rows_from_an_older_checkpoint():
    from dfdetect.cli.model import _cell

    assert (_cell(83.46, "seconds"), _cell(0.912345, "val_auc"), _cell(3, "epoch")) == ("83", "0.9123", "3")
    assert _cell(None, "seconds") == "-"  # resumed rows written before the column existed
def test_fold_batchnorm_keeps_features_and_refuses_a_wrong_fold(monkeypatch):
    from dfdetect.model.backbones import create_backbone
    from dfdetect.training.features import fold_batchnorm

    m = create_backbone("mobilenet_v2", pretrained=False).eval()
    for mod in m.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    f = fold_batchnorm(m)
    assert f is not m and not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        want, got = m.pool_features(m.forward_features(x)), f.pool_features(f.forward_features(x))
    assert torch.allclose(want, got, rtol=1e-3, atol=1e-4 * float(want.abs().max()))

    from torch.nn.utils import fusion

    def broken(conv, bn):  # a fold that forgets the BatchNorm: fresh random weights
        return torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               groups=conv.groups)

    monkeypatch.setattr(fusion, "fuse_conv_bn_eval", broken)
    assert fold_batchnorm(m) is m  # the check caught the wrong weights


def test_full_mode_with_no_readable_crop_is_nothing_usable(tmp_path):
    """Regression: full mode masked every unreadable crop, "trained" on none, saved a detector, exit 0."""
    from dfdetect.errors import NothingUsableError

    for label in ("real", "fake"):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "d" / label / f"{i}.png").write_bytes(b"not a png")
    bad = build_crop_table(discover(tmp_path / "d"), None)
    with pytest.raises(NothingUsableError, match="no readable training crops"):
        train(bad, _proto(Protocol.default(), epochs=1, batch_size=4), tmp_path / "run")
    assert not (tmp_path / "run" / "detector.safetensors").exists()


def test_full_mode_ema_is_validated_checkpointed_and_saved(table, tmp_path):
    """With ``ema`` the detector holds the weight average, not the last weights, and a resume restores it."""
    from safetensors.torch import load_file

    p = _proto(Protocol.default(), epochs=1, batch_size=8, split="random", ema=0.9)
    r = train(table, p, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    saved = load_file(str(tmp_path / "detector.safetensors"))
    w = "fc.weight"
    assert torch.equal(state["ema"][w], saved[w]) and not torch.equal(state["model"][w], saved[w])
    assert r.history[0]["epoch"] == 1


def test_ensemble_members_train_apart_and_the_detector_averages_their_logits(table, tmp_path, monkeypatch):
    """Each member has its own seed and folder (so it resumes alone); the saved detector is their mean logit."""
    import dfdetect.training.trainer as T
    from dfdetect.model.backbones import EnsembleClassifier
    from dfdetect.model.detector import Detector

    p = _proto(Protocol.default(), epochs=1, batch_size=8, split="random")
    p = p.model_copy(update={"model": p.model.model_copy(update={"ensemble": 2})})
    drawn = []
    real_create = T.create_backbone
    monkeypatch.setattr(T, "create_backbone", lambda *a, **kw: drawn.append(
        (net := real_create(*a, **kw)).fc.weight.detach().clone()) or net)
    r = train(table, p, tmp_path, device=CPU)
    monkeypatch.setattr(T, "create_backbone", real_create)
    model = r.detector.model_
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 2
    assert [(h["member"], h["epoch"]) for h in r.history] == [(0, 1), (1, 1)]
    assert all((tmp_path / f"member{k}" / CHECKPOINT_FILE).is_file() for k in (0, 1))
    a, b = model.members
    assert not torch.equal(a.fc.weight, b.fc.weight)  # different seeds, different members
    T._seed_everything(1)  # member 1 starts from seed 0 + 1, whatever member 0 drew before it
    want = T.create_backbone("mobilenet_v2", pretrained=False, pool=p.model.pool, num_classes=1).fc.weight
    assert torch.equal(drawn[1], want) and not torch.equal(drawn[0], want)
    x = r.detector.preprocess([cv2.imread(str(pth)) for pth in table.paths[:6]])
    with torch.no_grad():
        torch.testing.assert_close(model(x), (a(x) + b(x)) / 2)
    crops = [cv2.imread(str(table.paths[table.videos.index(v)])) for v in r.val_videos]
    np.testing.assert_allclose(r.detector.predict_proba(crops), r.val_p, atol=1e-5)  # threshold saw these scores
    loaded = Detector.load(tmp_path / "detector.safetensors")
    assert isinstance(loaded.model_, EnsembleClassifier) and len(loaded.cam_target_layers()) == 2
    np.testing.assert_allclose(loaded.predict_proba(crops), r.val_p, atol=1e-5)
    again = train(table, p, tmp_path, device=CPU)  # both members finished: a rerun resumes each, trains nothing
    assert sum("resumed" in n for n in again.notes) == 2
    np.testing.assert_allclose(again.val_p, r.val_p, atol=1e-6)


def test_members_side_by_side_train_exactly_as_members_in_turn(table, tmp_path, monkeypatch):
    """On a CPU with no more cores than members they train at once, one thread each, with the same result.

    Both runs use one torch thread per member, so only the scheduling differs: any random draw or state
    one member took from another (a shared generator, a shared model) would change the numbers.
    """
    p = _proto(Protocol.default(), epochs=2, batch_size=8, split="random", patience=6)
    p = p.model_copy(update={"model": p.model.model_copy(update={"ensemble": 2})})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # auto_threads keeps what torch is set to
    torch.set_num_threads(1)
    in_turn = train(table, p, tmp_path / "turn", device=CPU)
    torch.set_num_threads(2)  # as on this project's 2-core machine
    import dfdetect.training.trainer as T

    decoded = []
    real_decode = T.decode_crops
    monkeypatch.setattr(T, "decode_crops", lambda t, *a, **kw: decoded.append(len(t)) or real_decode(t, *a, **kw))
    side = train(table, p, tmp_path / "side", device=CPU)
    assert len(decoded) == 2  # train and validation crops, decoded once for both members
    assert torch.get_num_threads() == 2  # restored after the run
    assert not any("side by side" in n for n in in_turn.notes)
    assert any("2 members trained side by side, 2 at a time" in n for n in side.notes)
    np.testing.assert_array_equal(side.val_p, in_turn.val_p)
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in side.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in in_turn.history]
    for a, b in zip(side.detector.model_.members, in_turn.detector.model_.members, strict=True):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    turn = p.model_copy(update={"train": p.train.model_copy(update={"parallel_members": False})})
    again = train(table, turn, tmp_path / "side", device=CPU)  # how members are scheduled is not the recipe:
    assert sum("resumed" in n for n in again.notes) == 2       # in turn, the side-by-side run resumes
    assert not any("side by side" in n for n in again.notes)   # members in turn when asked
    # and when dropout draws from torch's shared generator
    dropout = p.model_copy(update={"model": p.model.model_copy(update={"drop_rate": 0.2})})
    assert not any("side by side" in n for n in train(table, dropout, tmp_path / "dropout", device=CPU).notes)


def test_head_mode_refuses_full_only_settings_instead_of_ignoring_them(table, tmp_path):
    p = _proto(Protocol.seed(), epochs=1)
    with pytest.raises(ValueError, match="ensemble applies to mode='full' only"):
        Protocol.model_validate({**p.model_dump(), "model": {**p.model.model_dump(), "ensemble": 2}})
    with pytest.raises(ValueError, match="ema applies to mode='full' only"):
        train_config({"mode": "head", "ema": 0.99})
    bypass = p.model_copy(update={"model": p.model.model_copy(update={"tta_flip": True})})  # model_copy skips checks
    with pytest.raises(DfdetectError, match="tta_flip applies to mode='full' only"):
        train(table, bypass, tmp_path)
    assert not (tmp_path / "detector.safetensors").exists()


def test_temperature_calibration_is_folded_into_the_saved_detector(table, tmp_path):
    """calibration='temperature': the saved detector's P(fake) is sigmoid(logit / T) of the uncalibrated run's,
    the threshold moves with it (same verdicts), and the ranking is unchanged."""
    kw = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "split": "random", "ema": 0.0}
    plain = train(table, _proto(Protocol.default(), **kw), tmp_path / "plain", device=CPU)
    cal = train(table, _proto(Protocol.default(), calibration="temperature", **kw), tmp_path / "cal", device=CPU)
    t = json.loads((tmp_path / "cal" / "train.json").read_text())["temperature"]
    assert t != 1.0 and any("temperature" in n for n in cal.notes)
    crops = [cv2.imread(str(p)) for p in table.paths]
    p0 = Detector.load(tmp_path / "plain").predict_proba(crops)
    p1 = Detector.load(tmp_path / "cal").predict_proba(crops)
    np.testing.assert_allclose(p1, apply_temperature(p0, t), atol=1e-4)
    np.testing.assert_allclose(cal.val_p, apply_temperature(plain.val_p, t), atol=1e-4)
    v0 = p0 >= plain.detector.threshold_
    v1 = p1 >= cal.detector.threshold_
    assert (v0 == v1).mean() > 0.95


def test_launder_augmentation_resizes_and_adds_noise_reproducibly():
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    outs = [augment_crop(img, np.random.default_rng(s), launder=True) for s in range(40)]
    again = [augment_crop(img, np.random.default_rng(s), launder=True) for s in range(40)]
    plain = [augment_crop(img, np.random.default_rng(s)) for s in range(40)]
    assert all(a.shape == img.shape and a.dtype == np.uint8 for a in outs)
    assert all(np.array_equal(a, b) for a, b in zip(outs, again, strict=True))
    assert sum(not np.array_equal(a, b) for a, b in zip(outs, plain, strict=True)) >= 10


def test_sbi_masks_follow_the_landmarks_found_on_each_real_crop(table, tmp_path):
    """sbi_mask='landmarks': each real crop's five points (found once, cached) shape its blend region."""
    calls = {"n": 0}

    def finder(bgr):  # five points in the top-left quarter of the crop
        calls["n"] += 1
        h, w = bgr.shape[:2]
        return np.array([[0.1, 0.1], [0.3, 0.1], [0.2, 0.2], [0.12, 0.3], [0.28, 0.3]]) * [w, h]

    p = _proto(Protocol.default(), epochs=1, batch_size=8, pseudo_fakes="sbi", sbi_mask="landmarks", split="random")
    r = train(table, p, tmp_path / "run", device=CPU, landmark_finder=finder)
    assert any("SBI masks from landmarks" in n for n in r.notes)
    n_train_real = calls["n"]
    assert 0 < n_train_real < int((table.labels == 0).sum())  # the training split's real crops only
    from dfdetect.training.trainer import crop_landmarks

    lm = crop_landmarks(table, 64, tmp_path / "run" / "features", finder=finder)  # other rows: found again
    n_calls = calls["n"]
    assert n_calls == n_train_real + int((table.labels == 0).sum())
    assert crop_landmarks(table, 64, tmp_path / "run" / "features", finder=finder) is not None
    assert calls["n"] == n_calls  # cached
    assert np.isnan(lm[table.labels == 1]).all() and np.isfinite(lm[table.labels == 0]).all()
    # the pair differs only where the landmarks are: the top-left of the crop
    from dfdetect.data.torch_datasets import PairDataset
    from dfdetect.synthetic.sbi import sbi_blend

    ds = PairDataset(table, input_size=64, data_config={"mean": (0, 0, 0), "std": (1, 1, 1)}, sbi=1.0,
                     landmarks=lm, blend_fn=sbi_blend)
    real_row = int(ds.real[0])
    face = cv2.resize(cv2.imread(str(table.paths[real_row])), (64, 64))
    real, fake = ds._blend(face, np.random.default_rng(0), real_row)
    diff = np.abs(real.astype(int) - fake.astype(int)).sum(2)
    assert diff[:32, :32].sum() > 4 * diff[32:, 32:].sum()
