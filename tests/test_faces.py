"""faces: detectors (Haar as the seed, MTCNN), cropping, the manifest, resume, one detector per process."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from dfdetect.config import FaceConfig, Protocol
from dfdetect.errors import DfdetectError
from dfdetect.preprocess import faces as FA
from dfdetect.preprocess.manifest import MANIFEST_FIELDS, MANIFEST_NAME, read_manifest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """MTCNN runs many tiny convolutions; on a shared 2-core box one thread is 10x steadier than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SEED = Protocol.seed().faces.model_copy(update={"image_format": "png"})  # Haar, min 128 px, the box itself


def astronaut_face(scale: float = 1.4) -> np.ndarray:
    """The astronaut's head from scikit-image, enlarged so Haar's 128 px minimum finds it."""
    head = np.ascontiguousarray(skimage.data.astronaut()[20:220, 130:320, ::-1])
    return cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def face_frame(size=(480, 360), at=(100, 40), scale: float = 1.4) -> np.ndarray:
    frame = np.full((size[1], size[0], 3), 90, np.uint8)
    face = astronaut_face(scale)
    x, y = at
    frame[y:y + face.shape[0], x:x + face.shape[1]] = face
    return frame


def test_haar_seed_finds_the_face():
    boxes = FA.create_detector(SEED)(face_frame())
    assert len(boxes) == 1
    b = boxes[0]
    assert b.width >= 128 and 100 < (b.x0 + b.x1) / 2 < 370 and b.landmarks is None
    assert FA.create_detector(SEED)(np.full((360, 480, 3), 90, np.uint8)) == []



@pytest.mark.parametrize("break_cv2", ["no_class", "no_files"])
def test_haar_without_cascades_names_the_opencv_fix(monkeypatch, tmp_path, break_cv2):
    """opencv 5 ships no cascade files (some builds no CascadeClassifier): one line, not an AttributeError."""
    if break_cv2 == "no_class":
        monkeypatch.delattr(cv2, "CascadeClassifier")
    else:
        monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path))
    with pytest.raises(DfdetectError, match=r"opencv-python-headless<5"):
        FA.create_detector(SEED)

def test_mtcnn_finds_face_with_landmarks():
    det = FA.create_detector(FaceConfig(detector="mtcnn", min_size=40))
    [b] = det(face_frame())
    assert b.score > 0.9 and len(b.landmarks) == 5
    assert all(b.x0 <= x <= b.x1 and b.y0 <= y <= b.y1 for x, y in b.landmarks)
    # min_size filters: the face is ~130 px wide, so a 300 px minimum keeps nothing
    assert FA.create_detector(FaceConfig(detector="mtcnn", min_size=300))(face_frame()) == []
    # detecting on a half-size copy finds the same face, mapped back to full-size coordinates
    [s] = FA.create_detector(FaceConfig(detector="mtcnn", min_size=40, detect_max_side=240))(face_frame())
    assert abs(s.x0 - b.x0) < 10 and abs(s.width - b.width) < 15 and abs(s.landmarks[0][0] - b.landmarks[0][0]) < 8



def test_mtcnn_calls_are_stateless():
    """A call that asks for another minimum size (the <=640 px copy does) never changes the next call's."""
    det = FA.MTCNNDetector(FaceConfig(detector="mtcnn", min_size=40, detect_max_side=None))
    start = det.model.min_face_size
    assert det.detect_batch([face_frame()], min_size=300) == [[]]
    assert det.model.min_face_size == start and len(det(face_frame())) == 1

def test_haar_downscaled_detection_maps_boxes_back():
    frame = cv2.resize(face_frame(), None, fx=2, fy=2)  # 960x720, face ~300 px
    full = FA.create_detector(SEED)(frame)
    small = FA.create_detector(SEED.model_copy(update={"detect_max_side": 480}))(frame)
    assert len(full) == len(small) == 1
    assert abs(full[0].x0 - small[0].x0) < 24 and abs(full[0].width - small[0].width) < 40


def test_crop_face_geometry():
    img = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    box = FA.Box(30, 20, 70, 60)  # 40x40
    assert np.array_equal(FA.crop_face(img, box, 1.0), img[20:60, 30:70])  # the seed's img[y:y+h, x:x+w]
    crop = FA.crop_face(img, box, 1.5)
    assert crop.shape == (60, 60, 3) and np.array_equal(crop, img[10:70, 20:80])
    edge = FA.crop_face(img, FA.Box(0, 0, 40, 40), 1.5)  # shifted inside the image, not padded
    assert np.array_equal(edge, img[0:60, 0:60])
    big = FA.crop_face(img, FA.Box(10, 10, 110, 90), 1.3)  # larger than the image: padded
    assert big.shape == (130, 130, 3)
    assert FA.crop_face(img, box, 1.3, output_size=32).shape == (32, 32, 3)


def test_faces_in_image_largest_first():
    frame = np.full((420, 900, 3), 90, np.uint8)
    small, large = astronaut_face(1.0), astronaut_face(1.5)
    frame[10:10 + large.shape[0], 20:20 + large.shape[1]] = large
    frame[100:100 + small.shape[0], 600:600 + small.shape[1]] = small
    cfg = FaceConfig(detector="mtcnn", min_size=40, margin=1.3, output_size=64)
    found = FA.faces_in_image(frame, FA.create_detector(cfg), cfg)
    assert len(found) == 2
    assert found[0].box.area > found[1].box.area and found[0].box.x0 < 300
    assert all(f.crop.shape == (64, 64, 3) for f in found)


def test_registry():
    assert {"haar", "mtcnn"} <= set(FA.list_detectors())
    with pytest.raises(DfdetectError, match="unknown face detector"):
        FA.create_detector(FaceConfig.model_construct(**{**SEED.model_dump(), "detector": "nope"}))
    with pytest.warns(UserWarning, match="registered twice"):
        FA.register_detector("haar")(FA._DETECTORS["haar"])


def _frames_dir(root: Path) -> Path:
    vid = root / "Celeb-real" / "id0_0000"
    vid.mkdir(parents=True)
    cv2.imwrite(str(vid / "00000.png"), face_frame())
    cv2.imwrite(str(vid / "00010.png"), face_frame(at=(150, 60)))
    cv2.imwrite(str(vid / "00020.png"), np.full((360, 480, 3), 90, np.uint8))  # no face
    (vid / "00030.png").write_bytes(b"garbage")  # unreadable
    other = root / "Celeb-real" / "id1_0000"
    other.mkdir(parents=True)
    cv2.imwrite(str(other / "00000.png"), face_frame(at=(10, 10)))
    return root


def test_extract_faces_manifest_and_resume(tmp_path, monkeypatch):
    frames = _frames_dir(tmp_path / "frames")
    out = tmp_path / "faces"
    report = FA.extract_faces(frames, out, SEED)
    assert (report.written, report.reused, len(report.failed)) == (3, 0, 2)
    assert any("00020.png" in f and "no face" in f for f in report.failed)
    assert any("00030.png" in f and "cannot read" in f for f in report.failed)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "Celeb-real/id0_0000/00000.png", "Celeb-real/id0_0000/00010.png", "Celeb-real/id1_0000/00000.png"]
    rows = read_manifest(out / MANIFEST_NAME)
    assert list(rows[0]) == list(MANIFEST_FIELDS)
    status = {(r["video_id"], r["frame"]): r["status"] for r in rows}
    assert status == {("Celeb-real/id0_0000", "00000"): "ok", ("Celeb-real/id0_0000", "00010"): "ok",
                      ("Celeb-real/id0_0000", "00020"): "no_face", ("Celeb-real/id0_0000", "00030"): "unreadable",
                      ("Celeb-real/id1_0000", "00000"): "ok"}
    ok = next(r for r in rows if r["frame"] == "00000" and r["status"] == "ok")
    crop = cv2.imread(str(out / ok["path"]))
    assert crop.shape[0] == round(float(ok["x1"]) - float(ok["x0"]))  # margin 1: the box itself

    # Rerun: records and crops exist, so no detector is even built.
    FA._WORKER_DETECTORS.clear()
    monkeypatch.setitem(FA._DETECTORS, "haar", lambda cfg: (_ for _ in ()).throw(AssertionError("rebuilt")))
    again = FA.extract_faces(frames, out, SEED)
    assert (again.written, again.reused, len(again.failed)) == (0, 3, 2)
    assert read_manifest(out / MANIFEST_NAME) == rows


def test_detector_built_once_per_process_and_keep_all(tmp_path, monkeypatch):
    frames = _frames_dir(tmp_path / "frames")
    built = []
    real = FA._DETECTORS["mtcnn"]
    FA._WORKER_DETECTORS.clear()
    monkeypatch.setitem(FA._DETECTORS, "mtcnn", lambda cfg: built.append(1) or real(cfg))
    cfg = FaceConfig(detector="mtcnn", min_size=40, margin=1.3, output_size=96, keep="all", image_format="jpg")
    report = FA.extract_faces(frames, tmp_path / "faces", cfg)  # 2 videos = 2 jobs
    assert len(built) == 1
    assert report.written >= 3
    assert (tmp_path / "faces" / "Celeb-real" / "id0_0000" / "00000_f1.jpg").is_file()
    assert cv2.imread(str(tmp_path / "faces" / "Celeb-real" / "id0_0000" / "00000_f1.jpg")).shape == (96, 96, 3)


def test_missing_frames_dir(tmp_path):
    with pytest.raises(DfdetectError, match="frames folder not found"):
        FA.extract_faces(tmp_path / "nope", tmp_path / "out", SEED)


def test_mtcnn_batched_frames_find_what_single_frames_find():
    """faces_in_frames runs MTCNN on same-sized frames together; the boxes match frame-by-frame detection."""
    cfg = FaceConfig(detector="mtcnn", min_size=40, margin=1.3, output_size=64, detect_max_side=400)
    det = FA.create_detector(cfg)
    frames = [face_frame(at=(40 + 30 * i, 30)) for i in range(3)] + [np.full((360, 480, 3), 90, np.uint8),
                                                                   face_frame(size=(400, 300), at=(20, 10))]
    batched = FA.faces_in_frames(frames, det, cfg)
    single = [FA.faces_in_image(f, det, cfg) for f in frames]
    assert [len(b) for b in batched] == [len(s) for s in single] == [1, 1, 1, 0, 1]
    for b, s in zip(batched, single):
        if b:
            np.testing.assert_allclose([b[0].box.x0, b[0].box.y0, b[0].box.x1, b[0].box.y1],
                                       [s[0].box.x0, s[0].box.y0, s[0].box.x1, s[0].box.y1], atol=0.5)
            assert b[0].crop.shape == (64, 64, 3)


def test_a_batch_that_crashes_the_detector_is_retried_frame_by_frame(tmp_path, monkeypatch):
    """One bad frame must cost that frame only: the batch falls back to one detection per frame."""
    frames = _frames_dir(tmp_path / "frames")
    real = FA.create_detector(SEED)

    class Flaky:
        name = "haar"

        def __init__(self):
            self.inner = real

        def detect_batch(self, images):
            raise RuntimeError("batch failed")

        def __call__(self, bgr):
            if (bgr == 90).all():  # the empty grey frame: a detector crash on it alone
                raise RuntimeError("bad frame")
            return self.inner(bgr)

    FA._WORKER_DETECTORS.clear()
    monkeypatch.setitem(FA._DETECTORS, "haar", lambda cfg: Flaky())
    report = FA.extract_faces(frames, tmp_path / "faces", SEED)
    FA._WORKER_DETECTORS.clear()
    assert report.written == 3
    assert any("00020.png" in f and "detector failed (RuntimeError: bad frame)" in f for f in report.failed)
