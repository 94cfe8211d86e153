"""Detector: predict_proba on any crop, one-file save/load without the network, one-line load errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dfdetect.config import ModelConfig, Protocol
from dfdetect.errors import BadInputError, WeightsError
from dfdetect.model.backbones import _weights, create_backbone
from dfdetect.model.detector import Detector, NotFittedError


@pytest.fixture(scope="module")
def det() -> Detector:
    torch.manual_seed(0)
    proto = Protocol.seed().model_copy(update={"model": ModelConfig(input_size=48, pretrained=False, tta_flip=False, ensemble=1, pool="max")})
    return Detector.from_model(create_backbone("mobilenet_v2", pretrained=False), proto, 0.37)


def _crops():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((20, 30), (48, 48), (200, 120))] + [
        rng.integers(0, 255, (40, 40), dtype=np.uint8)]


def test_predict_proba_any_size_in_batches(det):
    p = det.predict_proba(_crops())
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    det.batch_size = 1
    np.testing.assert_allclose(det.predict_proba(_crops()), p, atol=1e-5)
    det.batch_size = 64
    assert det.predict_proba([]).shape == (0,)
    assert det.predict(_crops()).tolist() == (p >= 0.37).astype(int).tolist()
    assert det.preprocess(_crops()).shape == (4, 3, 48, 48)
    assert not det.model_.training


def test_bad_crop_shape_names_the_remedy(det):
    with pytest.raises(BadInputError, match=r"crop 1: expected a BGR uint8 image of shape \(H, W, 3\), got a uint8 "
                                            r"array of shape \(3, 4, 5, 6\)"):
        det.predict_proba([np.zeros((8, 8, 3), np.uint8), np.zeros((3, 4, 5, 6), np.uint8)])
    with pytest.raises(BadInputError, match="got a float64 array"):
        det.predict_proba([np.zeros((8, 8, 3))])
    # grey and BGRA crops are scored as their BGR version
    bgr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert np.allclose(det.predict_proba([grey]), det.predict_proba([cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)]))
    assert np.allclose(det.predict_proba([grey[..., None]]), det.predict_proba([grey]))
    assert np.allclose(det.predict_proba([np.dstack([bgr, bgr[..., :1]])]), det.predict_proba([bgr]))


def test_unfitted_detector_says_what_to_do():
    with pytest.raises(NotFittedError, match="fit"):
        Detector().predict_proba(_crops())


def test_cam_target_layer_is_the_last_conv_block(det):
    (layer,) = det.cam_target_layers()
    assert layer is det.model_.body.bn2


def test_save_is_one_file_and_load_needs_no_pretrained_weights(det, tmp_path, monkeypatch):
    path = det.save(tmp_path / "d.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["protocol"])["name"] == "seed" and float(meta["threshold"]) == 0.37

    def no_weights(*a, **k):
        raise AssertionError("loading a detector must not resolve pretrained weights")

    monkeypatch.setattr(_weights, "offline_weights_path", no_weights)
    monkeypatch.setattr(_weights, "_from_hub", no_weights)
    back = Detector.load(path)
    assert back.threshold_ == 0.37 and back.protocol_ == det.protocol_ and back.input_size == 48
    np.testing.assert_allclose(back.predict_proba(_crops()), det.predict_proba(_crops()), atol=1e-6)


def test_load_errors_are_one_line(det, tmp_path):
    with pytest.raises(WeightsError, match="detector file not found"):
        Detector.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a readable .safetensors file"):
        Detector.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="not a dfdetect detector"):
        Detector.load(plain)
    # a detector whose metadata names another backbone: its tensors do not fit
    good = det.save(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as fh:
        meta, state = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    meta["backbone"] = "efficientnet_lite0"
    save_file(state, str(tmp_path / "swapped.safetensors"), metadata=meta)
    with pytest.raises(WeightsError) as err:
        Detector.load(tmp_path / "swapped.safetensors")
    assert "do not fit backbone 'efficientnet_lite0'" in str(err.value) and "\n" not in str(err.value)


def _resaved(det, tmp_path, name, **meta_updates):
    good = det.save(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as fh:
        meta, state = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    save_file(state, str(tmp_path / name), metadata={**meta, **meta_updates})
    return tmp_path / name


@pytest.mark.parametrize("threshold", ["nan", "1.5", "-0.1"])
def test_damaged_threshold_is_refused(det, tmp_path, threshold):
    """Regression: a NaN threshold loaded fine and every verdict silently became 'real'."""
    path = _resaved(det, tmp_path, "thr.safetensors", threshold=threshold)
    with pytest.raises(WeightsError, match=r"threshold .* is not in \[0, 1\]") as err:
        Detector.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("members, want", [("0", "0 ensemble members"), ("1000000", "1000000 ensemble members"),
                                           ("two", "ValueError"), ("2", "do not fit backbone")])
def test_damaged_member_count_is_refused(det, tmp_path, members, want):
    path = _resaved(det, tmp_path, "m.safetensors", members=members)  # det holds one network
    with pytest.raises(WeightsError, match=want) as err:
        Detector.load(path)
    assert str(path) in str(err.value)


def test_unknown_backbone_in_metadata_names_the_file(det, tmp_path):
    path = _resaved(det, tmp_path, "bb.safetensors", backbone="nope")
    with pytest.raises(WeightsError, match="unknown backbone 'nope'") as err:
        Detector.load(path)
    assert str(path) in str(err.value)


def test_tensor_mismatch_message_stays_short(det, tmp_path):
    path = _resaved(det, tmp_path, "sw.safetensors", backbone="efficientnet_lite0")
    with pytest.raises(WeightsError) as err:
        Detector.load(path)
    assert len(str(err.value)) < 500


def test_a_run_folder_loads_its_detector(det, tmp_path):
    """Users pass RUN_DIR as often as RUN_DIR/detector.safetensors; an empty folder says what is missing."""
    det.save(tmp_path / "run" / "detector.safetensors")
    back = Detector.load(tmp_path / "run")
    assert back.threshold_ == pytest.approx(det.threshold_)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="a folder with no detector.safetensors in it"):
        Detector.load(tmp_path / "empty")
