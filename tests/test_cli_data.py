"""CLI: frames, faces, srm, labels on tiny data; bad input gives one line, is skipped, and counted."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.data.labels import Label, read_label_file
from dfdetect.preprocess.manifest import MANIFEST_NAME, read_manifest

sys.path.insert(0, str(Path(__file__).parent))
from test_faces import face_frame
from test_frames import make_video

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture()
def celebdf(tmp_path) -> Path:
    """Celeb-DF-shaped: one good video, one random-bytes video, one empty video."""
    root = tmp_path / "Celeb-DF-v2"
    for d in ("Celeb-real", "Celeb-synthesis", "YouTube-real"):
        (root / d).mkdir(parents=True)
    make_video(root / "Celeb-real" / "id0_0000.mp4", n=16, size=(64, 48))
    (root / "Celeb-real" / "id0_0001.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "Celeb-synthesis" / "id0_id1_0000.mp4").write_bytes(b"")
    make_video(root / "YouTube-real" / "00001.mp4", n=10, size=(64, 48), seed=1)
    (root / "List_of_testing_videos.txt").write_text("1 YouTube-real/00001.mp4\n")
    return root


def test_frames_skips_and_counts_bad_videos(celebdf, tmp_path):
    out = tmp_path / "frames"
    res = invoke("frames", celebdf, "--out", out, "--frames", "4", "--format", "jpg")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # Rich may wrap long lines
    assert "id0_0001.mp4" in text and "cannot" in text
    assert "id0_id1_0000.mp4" in text and "empty file" in text
    # The default protocol samples the official test video (10 frames long) at up to 32 frames.
    assert "14 written, 0 reused, 2 skipped" in text
    assert len(list((out / "YouTube-real" / "00001").glob("*.jpg"))) == 10
    assert sorted(p.name for p in (out / "Celeb-real" / "id0_0000").glob("*.jpg")) == [
        "00000.jpg", "00005.jpg", "00010.jpg", "00015.jpg"]
    again = invoke("frames", celebdf, "--out", out, "--frames", "4", "--format", "jpg")
    assert again.exit_code == 0 and "0 written, 14 reused, 2 skipped" in " ".join(again.output.split())


def test_frames_seed_protocol_takes_first_frame_as_jpg(celebdf, tmp_path):
    res = invoke("frames", celebdf, "--out", tmp_path / "f", "--protocol", "seed")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "f" / "Celeb-real" / "id0_0000").iterdir()
            if not p.name.startswith(".")] == ["00000.jpg"]


def test_frames_nothing_usable_exits_1(tmp_path):
    root = tmp_path / "ds"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.mp4").write_bytes(b"")
    (root / "real" / "b.png").write_bytes(b"not an image")
    res = invoke("frames", root, "--out", tmp_path / "f")
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "a.mp4" in text and "b.png" in text and "nothing usable" in text


def test_missing_folder_is_one_line(tmp_path):
    for args in (("frames", tmp_path / "nope", "--out", tmp_path / "o"),
                 ("faces", tmp_path / "nope", "--out", tmp_path / "o"),
                 ("srm", tmp_path / "nope", "--out", tmp_path / "o"),
                 ("labels", tmp_path / "nope", "--out", tmp_path / "l.txt")):
        res = invoke(*args)
        assert res.exit_code == 1
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) <= 2 and "nope" in res.output and "not found" in res.output, res.output


def test_bad_option_value_is_one_line(celebdf, tmp_path):
    res = invoke("frames", celebdf, "--out", tmp_path / "o", "--frames", "0")
    # the flag the user typed, not the config field behind it (was "--num-frames", "--image-format", ...)
    assert res.exit_code == 1 and "--frames: Input should be greater than or equal to 1" in res.output
    res = invoke("frames", celebdf, "--out", tmp_path / "o", "--format", "gif")
    assert res.exit_code == 1 and "--format: Input should be 'png' or 'jpg'" in res.output
    res = invoke("faces", celebdf, "--out", tmp_path / "o", "--size", "0")
    assert res.exit_code == 1 and "--size: Input should be greater than or equal to 8" in res.output


@pytest.mark.parametrize("flag, value", [("--engine", "spark"), ("--workers", "-1")])
def test_bad_engine_or_workers_is_refused_before_any_work(celebdf, tmp_path, flag, value):
    res = invoke("frames", celebdf, "--out", tmp_path / "o", flag, value)
    assert res.exit_code == 2 and flag in res.output and "frames x" not in res.output, res.output
    assert not (tmp_path / "o").exists()


def _frames_dir(root: Path) -> Path:
    vid = root / "Celeb-real" / "id0_0000"
    vid.mkdir(parents=True)
    cv2.imwrite(str(vid / "00000.png"), face_frame())
    (vid / "00001.png").write_bytes(b"garbage")
    cv2.imwrite(str(vid / "00002.png"), np.full((200, 200, 3), 80, np.uint8))
    fake = root / "Celeb-synthesis" / "id0_id1_0000"
    fake.mkdir(parents=True)
    cv2.imwrite(str(fake / "00000.png"), face_frame(at=(40, 20)))
    return root


def test_faces_srm_labels_pipeline(tmp_path):
    frames = _frames_dir(tmp_path / "frames")
    faces = tmp_path / "faces"
    res = invoke("faces", frames, "--out", faces, "--protocol", "seed", "--format", "png")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "00001.png" in text and "cannot read" in text and "00002.png" in text and "no face" in text
    assert "2 written, 0 reused, 2 skipped" in text
    statuses = sorted(r["status"] for r in read_manifest(faces / MANIFEST_NAME))
    assert statuses == ["no_face", "ok", "ok", "unreadable"]

    res = invoke("srm", faces, "--out", tmp_path / "srm", "--workers", "0")
    assert res.exit_code == 0 and "2 written" in " ".join(res.output.split())
    assert (tmp_path / "srm" / "Celeb-real" / "id0_0000" / "00000.png").is_file()

    res = invoke("labels", tmp_path / "srm", "--out", tmp_path / "labels.txt")
    assert res.exit_code == 0, res.output
    lines, bad = read_label_file(tmp_path / "labels.txt")
    assert not bad
    assert {(ln.path, ln.label) for ln in lines} == {("Celeb-real/id0_0000/00000.png", Label.REAL),
                                                   ("Celeb-synthesis/id0_id1_0000/00000.png", Label.FAKE)}
    assert (tmp_path / "labels.txt").read_text().splitlines()[0].split(" ")[0] in ("0", "1")

    res = invoke("labels", faces, "--out", tmp_path / "one.txt", "--subfolder", "Celeb-synthesis", "--value", "0")
    assert res.exit_code == 0
    assert (tmp_path / "one.txt").read_text() == "0 Celeb-synthesis/id0_id1_0000/00000.png\n"
    res = invoke("labels", faces, "--out", tmp_path / "x.txt", "--subfolder", "Celeb-real")
    assert res.exit_code == 1 and "go together" in res.output


def test_faces_nothing_usable_exits_1(tmp_path):
    vid = tmp_path / "frames" / "v"
    vid.mkdir(parents=True)
    (vid / "00000.png").write_bytes(b"")
    res = invoke("faces", tmp_path / "frames", "--out", tmp_path / "faces", "--detector", "haar")
    assert res.exit_code == 1 and "00000.png" in res.output and "nothing usable" in " ".join(res.output.split())


def test_output_that_cannot_be_written_is_one_line(tmp_path):
    """Regression: --out naming a folder (or a place that cannot hold a file) gave an OSError traceback."""
    root = tmp_path / "crops"
    (root / "real").mkdir(parents=True)
    cv2.imwrite(str(root / "real" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "taken").mkdir()
    res = invoke("labels", root, "--out", tmp_path / "taken", "--subfolder", "real", "--value", "1")
    assert res.exit_code == 1
    assert "taken: --out names a folder" in res.output and "\n" not in res.output.strip()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_out_inside_the_input_is_refused(tmp_path):
    """Regression: `faces X --out X` (or `srm`) "reused" the input images as finished crops: 0 written,
    every frame silently passed off as a face crop."""
    frames = _frames_dir(tmp_path / "frames")
    before = (frames / "Celeb-real" / "id0_0000" / "00000.png").read_bytes()
    for cmd in ("faces", "srm"):
        for out in (frames, frames / "sub"):
            res = invoke(cmd, frames, "--out", out, "--protocol", "seed", "--format", "png") if cmd == "faces" \
                else invoke(cmd, frames, "--out", out)
            assert res.exit_code == 1 and "choose a separate folder" in res.output, res.output
    assert (frames / "Celeb-real" / "id0_0000" / "00000.png").read_bytes() == before
    assert not (frames / "manifest.csv").exists() and not (frames / "sub").exists()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, celebdf, tmp_path):
    """An interrupted stage says how to resume instead of printing a traceback."""
    import dfdetect.preprocess.frames

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dfdetect.preprocess.frames, "extract_frames", interrupted)
    res = invoke("frames", celebdf, "--out", tmp_path / "f")
    assert res.exit_code == 130 and "run the same command again to resume" in res.output
