"""predict: sampling, every face scored, per-file aggregation, bad files skipped, JSON, CLI.

The face finder and the scorer are small stand-ins with known answers (a "face" is a green square and
its P(fake) is its red level), so the aggregation can be checked exactly. Other test files import the
stand-ins from here (tiny, torch-only-where-needed).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from dfdetect.config import FaceConfig, Protocol
from dfdetect.errors import NothingUsableError
from dfdetect.inference import predict as P
from dfdetect.preprocess.faces import Box, list_detectors, register_detector
from dfdetect.preprocess.stage import StageReport

# --------------------------------------------------------------------------- stand-ins (shared by my tests)



class GreenSquares:
    """A face finder with known answers: each bright-green blob is a face. It is registered as a plugin
    (``register_detector``), the public route, so the API and the CLI find it by name like any detector."""

    name = "green-squares"

    def __init__(self, cfg: FaceConfig | None = None):
        self.cfg = cfg

    def __call__(self, bgr: np.ndarray) -> list[Box]:
        mask = (bgr[..., 1] > 128).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        return [Box(int(x), int(y), int(x + w), int(y + h), 0.9) for x, y, w, h, area in stats[1:] if area >= 16]


if GreenSquares.name not in list_detectors():  # other test files import this one
    register_detector(GreenSquares.name)(GreenSquares)

#: The box itself is the crop (margin 1, no resize), so a face's red level is exactly its P(fake).
GREEN_FACES = FaceConfig(detector=GreenSquares.name, margin=1.0, output_size=None, min_size=4)


class RedScorer:
    """P(fake) = mean red level of the crop: known answers for the aggregation tests."""

    def __init__(self, threshold: float = 0.5, faces: FaceConfig = GREEN_FACES):
        self.threshold_ = threshold
        self.protocol_ = Protocol.seed().model_copy(update={"faces": faces})

    def predict_proba(self, crops_bgr):
        return np.array([c[..., 2].mean() / 255.0 for c in crops_bgr])


def square(img: np.ndarray, x: int, y: int, side: int, red: int) -> None:
    img[y:y + side, x:x + side] = (0, 255, red)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """mp4v through OpenCV: tiny, fast to write, decoded by PyAV like any user video."""
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()
    return path


def two_face_video(path: Path, n: int = 12) -> Path:
    """Face A (red 200) in every frame but the last two; face B (red 40) in even frames; frames 10, 11 empty."""
    frames = []
    for i in range(n):
        img = np.zeros((96, 128, 3), np.uint8)
        if i < n - 2:
            square(img, 8, 8, 40, 200)
            if i % 2 == 0:
                square(img, 80, 50, 24, 40)
        frames.append(img)
    return write_video(path, frames)


# --------------------------------------------------------------------------- API


def test_video_every_face_scored_and_aggregated(tmp_path, monkeypatch):
    video = two_face_video(tmp_path / "clip.mp4")
    [res] = P.predict_path(video, RedScorer(threshold=0.5), frames=12)
    assert [fr.index for fr in res.frames] == list(range(12))
    assert res.frames_with_face == 10 and len(res.frames) - res.frames_with_face == 2
    assert res.n_faces == 10 + 5
    a, b = 200 / 255, 40 / 255
    assert res.p_fake_max_face == pytest.approx(a, abs=0.02)  # per-frame max is always face A
    assert res.p_fake_mean == pytest.approx((10 * a + 5 * b) / 15, abs=0.02)
    assert res.verdict == "fake" and res.p_fake == res.p_fake_max_face
    # largest face first, boxes in frame pixels
    assert res.frames[0].faces[0].box == (8, 8, 48, 48)
    # the mean aggregate can flip the verdict on a multi-face video: that is why max_face is the default
    [mean_res] = P.predict_path(video, RedScorer(threshold=0.6), frames=12, aggregate="mean")
    assert mean_res.verdict == "real" and mean_res.p_fake == mean_res.p_fake_mean


def test_frames_sampled_evenly(tmp_path, monkeypatch):
    [res] = P.predict_path(two_face_video(tmp_path / "clip.mp4"), RedScorer(), frames=4)
    assert [fr.index for fr in res.frames] == [0, 4, 7, 11] and res.frames_requested == 4


def test_an_injected_frame_reader_and_face_finder(tmp_path):
    """predict_file decodes with the reader it is given (another decoder, a camera) and finds faces with the
    finder it is given, with no file on disk and no registry entry."""
    asked = []

    def camera(path: Path, n: int) -> list[tuple[int, np.ndarray]]:
        asked.append((path.name, n))
        frames = []
        for i in range(n):
            img = np.zeros((64, 64, 3), np.uint8)
            square(img, 5, 5, 20, 100 + 50 * (i % 2))
            frames.append((i * 10, img))
        return frames

    res = P.predict_file("cam0.mp4", RedScorer(faces=GREEN_FACES.model_copy(update={"detector": "nobody"})),
                         frames=4, frame_reader=camera, face_detector=GreenSquares())
    assert asked == [("cam0.mp4", 4)] and [fr.index for fr in res.frames] == [0, 10, 20, 30]
    assert res.face_detector == "green-squares"  # the finder that ran, not the config's name
    assert res.n_faces == 4 and res.p_fake_max_face == pytest.approx(125 / 255, abs=0.01)  # mean of frame maxima


def test_folder_skips_and_counts_bad_files(tmp_path, monkeypatch):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    two_face_video(d / "sub" / "good.mp4")
    img = np.zeros((64, 64, 3), np.uint8)
    square(img, 10, 10, 30, 30)
    cv2.imwrite(str(d / "real.png"), img)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not media")
    report = StageReport("predict", d)
    results = P.predict_path(d, RedScorer(), frames=4, report=report)
    assert sorted(Path(r.file).name for r in results) == ["good.mp4", "real.png"]
    assert {r.file: r.verdict for r in results}[str(d / "real.png")] == "real"
    assert len(report.failed) == 2 and report.written == 2
    for line in report.failed:
        assert "\n" not in line and ("broken.mp4" in line or "empty.jpg" in line)


def test_nothing_usable_raises_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"garbage")
    with pytest.raises(NothingUsableError, match="x.mp4"):
        P.predict_path(bad, RedScorer())
    with pytest.raises(NothingUsableError, match="no such file"):
        P.predict_path(tmp_path / "missing.mp4", RedScorer())


def test_image_without_face_and_crops_mode(tmp_path, monkeypatch):
    crop = np.full((50, 40, 3), (0, 0, 230), np.uint8)  # no green: the stand-in finds no face
    cv2.imwrite(str(tmp_path / "face.png"), crop)
    [res] = P.predict_path(tmp_path / "face.png", RedScorer())
    assert res.verdict == "no_face" and res.p_fake is None and "--crops" in " ".join(res.notes)
    [res] = P.predict_path(tmp_path / "face.png", RedScorer(), crops=True)
    assert res.verdict == "fake" and res.frames[0].faces[0].whole_image
    assert res.frames[0].faces[0].box == (0, 0, 40, 50) and res.face_detector == "none"


def test_json_schema_and_images(tmp_path, monkeypatch):
    [res] = P.predict_path(two_face_video(tmp_path / "clip.mp4"), RedScorer(), frames=4, keep_images=True)
    doc = json.loads(json.dumps(res.to_json()))
    assert doc["schema"] == P.SCHEMA and doc["verdict"] == "fake" and doc["threshold"] == 0.5
    assert doc["faces"] == sum(len(f["faces"]) for f in doc["frames"])
    assert doc["frames_sampled"] == 4 and doc["frames_with_face"] + doc["frames_without_face"] == 4
    face = doc["frames"][0]["faces"][0]
    assert set(face) == {"box", "det_score", "p_fake", "whole_image"} and len(face["box"]) == 4
    with_images = res.to_json(images=True)["frames"][0]["faces"][0]
    png = cv2.imdecode(np.frombuffer(base64.b64decode(with_images["crop_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (40, 40, 3) and with_images["gradcam_png"] is None
    res.drop_images()
    assert res.to_json(images=True)["frames"][0]["faces"][0]["crop_png"] is None


def test_yunet_replaces_mtcnn_without_torch(monkeypatch):
    monkeypatch.setattr(P, "torch_available", lambda: False)
    cfg, notes = P.resolve_face_config(FaceConfig(detector="mtcnn", keep="largest"))
    assert cfg.detector == "yunet" and cfg.keep == "all" and "YuNet" in notes[0]
    cfg, notes = P.resolve_face_config(FaceConfig(detector="yunet"))  # needs no torch: kept, no note
    assert cfg.detector == "yunet" and notes == []
    monkeypatch.setattr(P, "torch_available", lambda: True)
    cfg, notes = P.resolve_face_config(FaceConfig(detector="mtcnn"))
    assert cfg.detector == "mtcnn" and notes == []


def test_explain_needs_torch_model(tmp_path, monkeypatch):
    [res] = P.predict_path(two_face_video(tmp_path / "c.mp4"), RedScorer(), frames=2, explain=True)
    assert any("Grad-CAM" in n for n in res.notes)


def test_save_visuals(tmp_path, monkeypatch):
    from dfdetect._io import is_valid_image

    [res] = P.predict_path(two_face_video(tmp_path / "clip.mp4"), RedScorer(), frames=6, keep_images=True)
    written = P.save_visuals(res, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == [f"{P._slug(res.rel)}_faces.png", f"{P._slug(res.rel)}_scores.png"]
    assert all(is_valid_image(p) for p in written)
    sheet = P.contact_sheet(res)
    assert sheet.shape[1] == 8 * 128  # 9 faces -> 2 rows of 8 tiles


# --------------------------------------------------------------------------- CLI


def test_cli_without_model_says_how_to_get_one(tmp_path):
    from dfdetect.cli import app

    r = CliRunner().invoke(app, ["predict", str(tmp_path), "--model", str(tmp_path / "nope.safetensors")])
    assert r.exit_code == 1
    text = " ".join(r.output.split())
    assert "dfdetect train" in text and "make demo" in text and "Traceback" not in text


def test_cli_predict_table_json_save(tmp_path, monkeypatch):
    from dfdetect.cli import app, use

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    video = two_face_video(tmp_path / "clip.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope")
    r = CliRunner().invoke(app, ["predict", str(video), str(bad), "--model", str(model), "--frames", "4",
                                 "--json", str(tmp_path / "out.json"), "--save", str(tmp_path / "vis")],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "clip.mp4" in r.output and "fake" in r.output and "bad.mp4" in r.output
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [d["file"] for d in doc["results"]] == [str(video)] and len(doc["failed"]) == 1
    assert sorted(p.name for p in (tmp_path / "vis").iterdir() if not p.name.startswith(".")) == ["clip_faces.png", "clip_scores.png"]


# --------------------------------------------------------------------------- real data (skips when absent)


@pytest.mark.shared
def test_real_videos_and_face_crops(shared_data):
    """The done-when of issue 4 on real files: every shared video and a few real face crops get a verdict."""
    scorer = RedScorer(threshold=0.3)
    faces = FaceConfig(detector="haar", min_size=40, detect_max_side=640)  # Haar on a 640 px copy: fast
    scorer.protocol_ = Protocol.default().model_copy(update={"faces": faces})
    report = StageReport("predict", shared_data / "videos")
    results = P.predict_path(shared_data / "videos", scorer, frames=2, report=report)
    assert len(results) == len(P.media_files(shared_data / "videos")) and report.failed == []
    assert all(r.verdict in ("fake", "real") and r.n_faces >= 1 for r in results)
    crops = sorted((shared_data / "dfdc-faces" / "real").glob("*.jpg"))[:3]
    for c in crops:
        [res] = P.predict_path(c, scorer, crops=True)
        assert res.verdict in ("fake", "real") and res.n_faces == 1


def test_empty_folder_is_a_named_skip(tmp_path, monkeypatch):
    """Regression: an empty folder said only "0 skipped" and "nothing usable" about '.'."""
    (tmp_path / "empty").mkdir()
    report = StageReport("predict", tmp_path)
    assert list(P.iter_predict([tmp_path / "empty"], RedScorer(), report=report)) == []
    assert len(report.failed) == 1 and str(tmp_path / "empty") in report.failed[0]
    assert "no videos or images" in report.failed[0]


def test_cli_save_same_named_inputs_do_not_overwrite(tmp_path, monkeypatch):
    """Regression: a/clip.mp4 and b/clip.mp4 both wrote vis/clip_*.png; the second erased the first."""
    from dfdetect.cli import app, use

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clips = [two_face_video(tmp_path / d / "clip.mp4") for d in ("a", "b")]
    r = CliRunner().invoke(app, ["predict", *map(str, clips), "--model", str(tmp_path / "m.safetensors"),
                                 "--frames", "4", "--save", str(tmp_path / "vis")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "vis").iterdir() if not p.name.startswith(".")) == [
        "clip-2_faces.png", "clip-2_scores.png", "clip_faces.png", "clip_scores.png"]


def test_cli_save_refuses_a_folder_of_the_users_own_pictures(tmp_path, monkeypatch):
    """Regression (third hostile run): --save into a folder of one's own pictures overwrote a `clip_faces.png`
    that dfdetect never wrote. A folder dfdetect made is reused (a rerun replaces its own pictures)."""
    from dfdetect.cli import app, use

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    (tmp_path / "in").mkdir()
    clip = two_face_video(tmp_path / "in" / "clip.mp4")
    mine = tmp_path / "pictures"
    mine.mkdir()
    (mine / "clip_faces.png").write_bytes(b"the user's own picture")
    args = ["predict", str(clip), "--model", str(tmp_path / "m.safetensors"), "--frames", "4"]
    r = CliRunner().invoke(app, [*args, "--save", str(mine)])
    assert r.exit_code != 0 and "no .dfdetect-run" in r.output and "--save" in r.output, r.output
    assert (mine / "clip_faces.png").read_bytes() == b"the user's own picture"
    for _ in range(2):  # a new folder, then the same folder again: dfdetect's own
        r = CliRunner().invoke(app, [*args, "--save", str(tmp_path / "vis")])
        assert r.exit_code == 0 and (tmp_path / "vis" / "clip_faces.png").is_file(), r.output


def test_cli_unwritable_json_or_save_fails_before_scoring(tmp_path, monkeypatch):
    """Regression: --json naming a folder (or --save naming a file) failed only after every file was scored."""
    from dfdetect.cli import app, use

    calls: list[str] = []
    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: calls.append("loaded") or RedScorer())
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    video = str(two_face_video(tmp_path / "clip.mp4"))
    for flag, target, msg in (("--json", "adir", "--json names a folder"), ("--save", "afile", "--save names a file")):
        r = CliRunner().invoke(app, ["predict", video, "--model", "m.safetensors", flag, str(tmp_path / target)])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output
    assert calls == []


def test_cli_json_in_an_unwritable_place_fails_before_scoring(tmp_path, monkeypatch):
    """Regression: a --json whose folder could not be made (a file stands in its path) failed after the scoring."""
    from dfdetect.cli import app, use

    calls: list[str] = []
    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: calls.append("loaded") or RedScorer())
    (tmp_path / "afile").write_text("x")
    video = str(two_face_video(tmp_path / "clip.mp4"))
    for flag, target in (("--json", tmp_path / "afile" / "sub" / "out.json"), ("--save", tmp_path / "afile" / "vis")):
        r = CliRunner().invoke(app, ["predict", video, "--model", "m.safetensors", flag, str(target)],
                               env={"COLUMNS": "300"})
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"cannot write {flag}" in r.output and "is a file, not a folder" in r.output
    assert calls == []


def test_cli_model_may_be_a_run_folder(tmp_path):
    """Regression: `--model runs/NAME` said "no trained model" although Detector.load takes run folders."""
    from dfdetect.cli import app, use
    from dfdetect.config import ModelConfig
    from dfdetect.model.backbones import create_backbone
    from dfdetect.model.detector import Detector

    proto = Protocol.seed().model_copy(update={"model": ModelConfig(pretrained=False, input_size=32, tta_flip=False, ensemble=1, pool="max")})
    net = create_backbone("mobilenet_v2", pretrained=False, num_classes=1)
    Detector.from_model(net, proto, 0.5).save(tmp_path / "run" / "detector.safetensors")
    assert use.load_scorer(tmp_path / "run").threshold_ == 0.5
    crop = tmp_path / "face.png"
    cv2.imwrite(str(crop), np.full((40, 40, 3), 128, np.uint8))
    r = CliRunner().invoke(app, ["predict", str(crop), "--model", str(tmp_path / "run"), "--crops"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "face.png" in r.output and "no trained model" not in r.output
    empty = CliRunner().invoke(app, ["predict", str(crop), "--model", str(tmp_path)])  # a folder without one
    assert empty.exit_code == 1 and "no trained model" in empty.output
