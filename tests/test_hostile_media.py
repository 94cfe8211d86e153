"""Hostile media: no input may hang, crash or balloon a stage (issue 12, items 2, 3, 8, 9, 12a, 12e).

Every test generates its attack: PNG headers declaring 100000 x 100000 pixels, a named pipe and a symlink
loop among the videos, twins that differ only in suffix (``clip.mp4``/``clip.mkv``), a file name holding a
line break, truncated and polyglot files. Against the CLI stages each must end in a clean exit, one line
per bad file, the right counts, and nothing written outside ``--out``. Parsers get property-based tests
(hypothesis) in tests/test_hostile_parsers.py.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import _crash
from dfdetect import parallel as P
from dfdetect.cli import app
from dfdetect.config import FaceConfig, FrameConfig, SRMConfig
from dfdetect.data.crops import build_crop_table
from dfdetect.data.labels import read_label_file
from dfdetect.data.sources import discover
from dfdetect.errors import BadInputError, DfdetectError
from dfdetect.preprocess import frames as F
from dfdetect.preprocess.faces import extract_faces
from dfdetect.preprocess.manifest import read_manifest
from dfdetect.preprocess.srm import make_srm_copy
from test_faces import face_frame
from test_frames import make_video as _make_video

runner = CliRunner()
SEED_FACES = FaceConfig(detector="haar", min_size=128, image_format="png")


# --------------------------------------------------------------------------- the attacks


def png_bomb(path: Path, w: int, h: int) -> Path:
    """A valid PNG header declaring ``w`` x ``h`` RGB pixels and a tiny IDAT: ~130 bytes that a decoder
    trusting the header allocates ``3 w h`` bytes for (30 GB at 100000 x 100000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(w, 1024)) * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def photo(path: Path, img: np.ndarray | None = None, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, np.full((48, 48, 3), value, np.uint8) if img is None else img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def real_and_fake_photos(data: Path, n: int = 2) -> Path:
    """``data/real`` and ``data/fake`` with ``n`` flat photos each, the fakes brighter: a dataset to train on."""
    for label in ("real", "fake"):
        for i in range(n):
            photo(data / label / f"{i}.png", value=40 + 100 * (label == "fake") + i)
    return data


def make_video(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _make_video(path, **kw)


def snapshot(root: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but outside ``out``: (size, mtime) by path."""
    out_r = os.path.abspath(out)
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if not os.path.abspath(p).startswith(out_r + os.sep) and os.path.abspath(p) != out_r}


def cli(*args: str, env: dict[str, str] | None = None):
    res = runner.invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})
    assert res.exception is None or isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    return res


def lines_naming(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if name in line]


@pytest.fixture
def bombs(tmp_path) -> Path:
    """A frames-like folder: one real face, a PNG declaring 100000 x 100000, one declaring 8000 x 6000 (48 MP,
    just above the default 40 MP limit, so the old code decoded it)."""
    root = tmp_path / "frames"
    photo(root / "v" / "00000.png", face_frame())
    png_bomb(root / "v" / "00001.png", 100_000, 100_000)
    png_bomb(root / "v" / "00002.png", 8000, 6000)
    return root


# --------------------------------------------------------------------------- item 2: bombs and huge media


@pytest.mark.parametrize("stage", ["srm", "faces"])
def test_png_bombs_are_refused_from_the_header_in_one_line_each(bombs, tmp_path, stage):
    """Regression: a PNG declaring 100000 x 100000 aborted faces and srm with a cv2.error traceback."""
    before = snapshot(tmp_path, tmp_path / "out")
    extra = ["--protocol", "seed"] if stage == "faces" else []
    res = cli(stage, str(bombs), "--out", str(tmp_path / "out"), *extra)
    assert res.exit_code == 0, res.output
    for name, mp in (("00001.png", "10000 MP"), ("00002.png", "48 MP")):
        [line] = lines_naming(res.output, name)
        assert "skipped" in line and mp in line and "not decoded" in line
    assert "1 written" in res.output and "2 skipped" in res.output
    assert snapshot(tmp_path, tmp_path / "out") == before


def test_frames_train_and_evaluate_skip_a_bomb(tmp_path):
    """Regression: frames, train and evaluate aborted on a bomb among the images (cv2.error traceback)."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        for i in range(12):
            img = rng.integers(0, 120, (36, 36, 3), dtype=np.uint8)
            if label == "fake":
                img[:, :12] = 250
            photo(data / label / f"{i:02d}.png", img)
    png_bomb(data / "real" / "bomb.png", 100_000, 100_000)
    png_bomb(data / "fake" / "big.png", 8000, 6000)
    before = snapshot(tmp_path, tmp_path / "frames")
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--protocol", "seed")
    assert res.exit_code == 0 and "24 written" in res.output and "2 skipped" in res.output, res.output
    assert len(lines_naming(res.output, "bomb.png")) == 1 and len(lines_naming(res.output, "big.png")) == 1
    assert snapshot(tmp_path, tmp_path / "frames") == before

    run = tmp_path / "run"
    res = cli("train", str(data), "--out", str(run), "--protocol", "seed", "--no-pretrained", "--input-size", "32",
              "--epochs", "1")
    assert res.exit_code == 0, res.output
    assert (run / "detector.safetensors").is_file()
    res = cli("evaluate", str(run / "detector.safetensors"), str(data), "--out", str(tmp_path / "ev"))
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_frames"] == 24
    assert len(lines_naming(res.output, "bomb.png")) == 1 and len(lines_naming(res.output, "big.png")) == 1


def test_video_frames_are_decoded_scaled_down_to_the_limit(tmp_path, monkeypatch):
    """Regression: every frame came back at full size (an 8K video took predict to 4.5 GB)."""
    from dfdetect.config import MediaLimits

    video = make_video(tmp_path / "data" / "real" / "wide.mp4", n=12, size=(320, 192))
    full = dict(F.read_frames(video, 3, MediaLimits(max_frame_side=10_000)))
    monkeypatch.setenv("DFDETECT_MAX_FRAME_SIDE", "96")
    small = dict(F.read_frames(video, 3))
    assert sorted(small) == sorted(full) and all(f.shape == (58, 96, 3) for f in small.values())
    for i, f in small.items():  # the same picture (scaled in YUV, so close to, not equal to, a BGR resize)
        ref = cv2.resize(full[i], (96, 58), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(f.ravel().astype(float), ref.ravel().astype(float))[0, 1] > 0.7
    res = cli("frames", str(tmp_path / "data"), "--out", str(tmp_path / "frames"), "--frames", "2")
    assert res.exit_code == 0, res.output
    written = sorted((tmp_path / "frames" / "real" / "wide").glob("*.png"))
    assert len(written) == 2 and all(cv2.imread(str(p)).shape == (58, 96, 3) for p in written)


def test_a_video_declaring_frames_above_the_limit_is_refused(tmp_path, monkeypatch):
    video = make_video(tmp_path / "v.mp4", n=4, size=(320, 192))
    monkeypatch.setenv("DFDETECT_MAX_PIXELS", "50000")
    with pytest.raises(BadInputError, match=r"declares 320 x 192 frames .*above the 0.05 MP limit") as err:
        F.read_frames(video, 2)
    assert str(video) in str(err.value) and "\n" not in str(err.value)
    # A PNG named .mp4 is a one-frame "video" to FFmpeg, which decodes a frame while probing: refused too
    fake_video = png_bomb(tmp_path / "png.mp4", 12_000, 12_000)
    monkeypatch.delenv("DFDETECT_MAX_PIXELS")
    with pytest.raises(BadInputError) as err:
        F.read_frames(fake_video, 2)
    assert str(fake_video) in str(err.value)


def test_limits_come_from_the_environment_and_a_bad_value_is_one_line(tmp_path):
    photo(tmp_path / "faces" / "v" / "a.png")  # 48 x 48 = 2304 pixels
    res = cli("srm", str(tmp_path / "faces"), "--out", str(tmp_path / "srm"), env={"DFDETECT_MAX_PIXELS": "2000"})
    assert res.exit_code == 1 and "above the 0.002 MP limit (DFDETECT_MAX_PIXELS)" in res.output, res.output
    res = cli("srm", str(tmp_path / "faces"), "--out", str(tmp_path / "srm"), env={"DFDETECT_MAX_PIXELS": "lots"})
    assert res.exit_code == 1 and "DFDETECT_MAX_PIXELS" in res.output, res.output


# --------------------------------------------------------------------------- item 3: one file's error is one line


def test_any_decoder_error_is_one_line_and_the_stage_goes_on(tmp_path, monkeypatch):
    """Regression: a cv2.error (or any exception but BadInputError/OSError) from one file stopped the stage."""
    for name in ("a", "b", "c"):
        make_video(tmp_path / "data" / "real" / f"{name}.mp4", n=6)
    items = discover(tmp_path / "data").items
    real_read = F.read_selected

    def flaky(path, select, limits=None):
        if path.name == "b.mp4":
            raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) in function 'imdecode_'")
        return real_read(path, select, limits)

    monkeypatch.setattr(F, "read_selected", flaky)
    report = F.extract_frames(items, tmp_path / "frames", FrameConfig(num_frames=2))
    assert report.written == 4 and len(report.failed) == 1
    assert "b.mp4" in report.failed[0] and "error" in report.failed[0] and "\n" not in report.failed[0]

    from dfdetect.preprocess import srm as S

    for name in ("a", "b", "c"):
        photo(tmp_path / "faces" / "v" / f"{name}.png", value=40 if name == "b" else 120)
    real_filter = S.srm_filter_image

    def filter_or_fail(img, cfg=None):
        if img.mean() < 50:
            raise MemoryError("out of memory")
        return real_filter(img, cfg)

    monkeypatch.setattr(S, "srm_filter_image", filter_or_fail)
    rep = make_srm_copy(tmp_path / "faces", tmp_path / "srm", SRMConfig())
    assert rep.written == 2 and len(rep.failed) == 1 and "b.png" in rep.failed[0] and "MemoryError" in rep.failed[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_map_items_turns_any_failure_into_the_items_result(workers):
    """With and without -j: an exception, or a worker process that dies, is that item's result, not the run's."""
    def on_error(item, exc):
        return f"{item}: {type(exc).__name__}"

    got = P.map_items(_crash.square_or_raise, [0, 1, 2, 3], workers=workers, on_error=on_error)
    assert got == [0, 1, "2: MemoryError", 9]
    with pytest.raises(DfdetectError, match="weights file not found"):  # the run's problem ends the run, once
        P.map_items(_crash.no_weights, [0, 1, 2], workers=workers, on_error=on_error)
    if workers:
        done: list[int] = []
        got = P.map_items(_crash.square_or_die, list(range(8)), workers=workers, on_error=on_error,
                          progress=done.append)
        assert got == [0, 1, 4, "3: RuntimeError", 16, 25, 36, 49] and sum(done) == 8


def test_frames_with_workers_survive_a_bomb(tmp_path):
    """Regression: with -j the bomb's cv2.error came back from the worker and ended the run."""
    data = tmp_path / "data"
    make_video(data / "real" / "a.mp4", n=6)
    make_video(data / "fake" / "b.mp4", n=6, seed=1)
    png_bomb(data / "fake" / "bomb.png", 100_000, 100_000)
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "2", "-j", "2")
    assert res.exit_code == 0 and "4 written" in res.output and "1 skipped" in res.output, res.output
    assert len(lines_naming(res.output, "bomb.png")) == 1


# --------------------------------------------------------------------------- item 8: special files, odd trees


def _unblock_after(fifo: Path, seconds: float) -> threading.Event:
    """If a stage still blocks on ``fifo`` after ``seconds``, open its write end once (so the read sees EOF)
    and record that it hung: the old code waited forever for a writer."""
    hung = threading.Event()

    def rescue() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while someone waits to read
        except OSError:
            return
        hung.set()
        os.close(fd)

    timer = threading.Timer(seconds, rescue)
    timer.daemon = True
    timer.start()
    hung.timer = timer  # type: ignore[attr-defined]
    return hung


def test_a_named_pipe_among_the_videos_is_one_line_and_never_blocks(tmp_path, monkeypatch):
    """Regression: a named pipe among the videos hung frames (and predict) forever."""
    data = tmp_path / "data"
    make_video(data / "real" / "ok.mp4", n=6)
    os.mkfifo(data / "real" / "pipe.mp4")
    os.mkfifo(data / "real" / "still.png")
    hung = _unblock_after(data / "real" / "pipe.mp4", 30)
    hung_png = _unblock_after(data / "real" / "still.png", 30)
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "2")
    assert not hung.is_set() and not hung_png.is_set(), "frames blocked on the named pipe"
    assert res.exit_code == 0 and "2 written" in res.output, res.output
    for name in ("pipe.mp4", "still.png"):
        [line] = lines_naming(res.output, name)
        assert "named pipe" in line

    from dfdetect.cli import use
    from test_predict import RedScorer

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    for target in (data / "real" / "pipe.mp4", data / "real"):
        hung = _unblock_after(data / "real" / "pipe.mp4", 30)
        res = cli("predict", str(target), "--model", str(model), "--frames", "2")
        assert not hung.is_set(), "predict blocked on the named pipe"
        [line] = [s for s in lines_naming(res.output, "pipe.mp4") if s.startswith("skipped")]
        assert "named pipe" in line


def test_a_symlink_loop_is_one_line(tmp_path):
    """Regression: a symlink loop among the videos gave a RuntimeError traceback in frames."""
    data = tmp_path / "data"
    make_video(data / "real" / "ok.mp4", n=6)
    os.symlink("loop.mp4", data / "real" / "loop.mp4")
    (data / "fake").mkdir()
    os.symlink("b.mp4", data / "fake" / "a.mp4")
    os.symlink("a.mp4", data / "fake" / "b.mp4")
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "2")
    assert res.exit_code == 0 and "2 written" in res.output, res.output
    for name in ("loop.mp4", "fake/a.mp4", "fake/b.mp4"):
        [line] = lines_naming(res.output, name)
        assert "symbolic links" in line


def test_odd_dfdc_metadata_is_one_line_each(tmp_path):
    data = tmp_path / "dfdc"
    make_video(data / "p0" / "ok.mp4", n=6)
    (data / "p0" / "metadata.json").write_text(json.dumps({
        "ok.mp4": {"label": "REAL"}, "str.mp4": "FAKE", "/etc/passwd": {"label": "FAKE"}}))
    (data / "p1").mkdir()
    (data / "p1" / "metadata.json").write_text(json.dumps([{"label": "FAKE"}]))
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "2")
    assert res.exit_code == 0 and "2 written" in res.output, res.output
    assert len(lines_naming(res.output, "str.mp4")) == 1 and len(lines_naming(res.output, "/etc/passwd")) == 1
    assert len(lines_naming(res.output, "p1/metadata.json")) == 1


# --------------------------------------------------------------------------- item 9: twins


def test_videos_that_differ_only_in_suffix_get_their_own_frames(tmp_path):
    """Regression: clip.mp4 and clip.mkv wrote into one frames folder, mixing the two videos."""
    data = tmp_path / "data"
    make_video(data / "real" / "clip.mp4", n=6, seed=0)
    make_video(data / "real" / "clip.mkv", n=6, seed=1)
    make_video(data / "real" / "solo.mp4", n=6, seed=2)
    photo(data / "fake" / "face.bmp", value=30)
    photo(data / "fake" / "face.webp", value=200)
    out = tmp_path / "frames"
    res = cli("frames", str(data), "--out", str(out), "--frames", "2")
    assert res.exit_code == 0 and "8 written" in res.output, res.output
    dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*") if p.is_dir())
    assert dirs == ["fake/face_bmp", "fake/face_webp", "real/clip_mkv", "real/clip_mp4", "real/solo"]
    a, b = (cv2.imread(str(out / "real" / d / "00000.png")) for d in ("clip_mp4", "clip_mkv"))
    assert not np.array_equal(a, b)
    again = cli("frames", str(data), "--out", str(out), "--frames", "2")
    assert "0 written, 8 reused" in again.output, again.output
    table = build_crop_table(discover(data), out)  # train and evaluate find each one's own frames
    assert sorted(set(table.videos)) == ["fake/face_bmp", "fake/face_webp", "real/clip_mkv", "real/clip_mp4",
                                         "real/solo"]
    assert len(table) == 8


def test_frames_that_differ_only_in_suffix_get_their_own_crops(tmp_path):
    """Regression: face.bmp and face.webp became one face.png."""
    frames = tmp_path / "frames"
    photo(frames / "v" / "face.bmp", face_frame(at=(60, 20)))
    photo(frames / "v" / "face.webp", face_frame(at=(200, 60)))
    photo(frames / "v" / "face.png", face_frame(at=(100, 40)))
    rep = extract_faces(frames, tmp_path / "faces", SEED_FACES)
    assert rep.written == 3, rep.failed
    assert sorted(p.name for p in (tmp_path / "faces" / "v").glob("*.png")) == [
        "face.png", "face_bmp.png", "face_webp.png"]
    rows = read_manifest(tmp_path / "faces" / "manifest.csv")
    assert sorted(r["path"] for r in rows if r["status"] == "ok") == ["v/face.png", "v/face_bmp.png",
                                                                      "v/face_webp.png"]


def test_srm_twins_get_their_own_copies(tmp_path):
    """Regression: face.jpg and face.png both became face.png in the SRM copy."""
    crops = tmp_path / "crops"
    rng = np.random.default_rng(0)
    photo(crops / "real" / "face.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    photo(crops / "real" / "face.png", np.full((40, 40, 3), 100, np.uint8))
    photo(crops / "fake" / "other.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    rep = make_srm_copy(crops, tmp_path / "srm", SRMConfig())
    assert rep.written == 3
    assert sorted(p.relative_to(tmp_path / "srm").as_posix() for p in (tmp_path / "srm").rglob("*.png")) == [
        "fake/other.png", "real/face.png", "real/face_jpg.png"]
    table = build_crop_table(discover(crops), tmp_path / "srm")
    assert sorted(Path(p).relative_to(tmp_path / "srm").as_posix() for p in table.paths) == [
        "fake/other.png", "real/face.png", "real/face_jpg.png"]


# --------------------------------------------------------------------------- items 12a, 12e


def test_a_line_break_in_a_file_name_is_one_line_and_no_row_is_lost(tmp_path):
    """Regression: a name holding a newline wrote a row that read back as two (or none): one row lost."""
    faces = tmp_path / "faces" / "Celeb-real" / "id0_0000"
    for name in ("00000.png", "00001\n1 evil.png", "00002.png"):
        photo(faces / name)
    photo(tmp_path / "faces" / "Celeb-synthesis" / "id0_id1_0000" / "00000.png")
    labels = tmp_path / "labels.txt"
    res = cli("labels", str(tmp_path / "faces"), "--out", str(labels))
    assert res.exit_code == 0, res.output
    [line] = [s for s in res.output.splitlines() if "skipped" in s]
    assert "line break" in line and "00001\\n1 evil.png" in line
    lines, bad = read_label_file(labels)
    assert bad == [] and sorted((x.path, int(x.label)) for x in lines) == [
        ("Celeb-real/id0_0000/00000.png", 0), ("Celeb-real/id0_0000/00002.png", 0),
        ("Celeb-synthesis/id0_id1_0000/00000.png", 1)]


def test_lines_name_the_folder_given_not_a_symlinks_target(tmp_path):
    """Regression: faces and srm resolved their input folder, so lines named the symlink's target."""
    store = tmp_path / "store" / "frames"
    photo(store / "v" / "00000.png", face_frame())
    (store / "v" / "00001.png").write_bytes(b"not an image")
    link = tmp_path / "work-frames"
    link.symlink_to(store, target_is_directory=True)
    rep = extract_faces(link, tmp_path / "faces", SEED_FACES)
    [line] = rep.failed
    assert line.startswith(f"{link}/v/00001.png: ") and str(store) not in line
    rep = make_srm_copy(link, tmp_path / "srm", SRMConfig())
    [line] = rep.failed
    assert line.startswith(f"{link}/v/00001.png: ") and str(store) not in line


def test_predict_error_names_the_file_not_dot(tmp_path, monkeypatch):
    """Regression: with nothing usable, predict's last line said "error: .: predict: nothing usable"."""
    from dfdetect.cli import use
    from test_predict import RedScorer

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope")
    res = cli("predict", str(bad), "--model", str(model))
    assert res.exit_code == 1
    assert " .:" not in res.output and "-> .\n" not in res.output, res.output
    named = [line for line in res.output.splitlines() if line.startswith(("error:", "skipped:", "predict:"))]
    assert len(named) == 3 and all(str(bad) in line for line in named), res.output


# --------------------------------------------------------------------------- truncated and polyglot files


def test_truncated_and_polyglot_files_are_one_line_each(tmp_path, monkeypatch):
    data = tmp_path / "data"
    good = make_video(data / "real" / "good.mp4", n=12)
    raw = good.read_bytes()
    (data / "real" / "cut.mp4").write_bytes(raw[: len(raw) // 3])
    png = cv2.imencode(".png", np.full((32, 32, 3), 50, np.uint8))[1].tobytes()
    (data / "fake").mkdir()
    (data / "fake" / "png-then-mp4.mp4").write_bytes(png + raw)  # a PNG with a video after it
    (data / "fake" / "mp4-then-png.png").write_bytes(raw + png)  # a video with a PNG after it
    (data / "fake" / "page.mp4").write_bytes(b"<html><body>" + b"x" * 2000 + b"</body></html>")
    (data / "fake" / "zip.png").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    png_bomb(data / "fake" / "bomb-video.mp4", 12_000, 12_000)
    bad = ["cut.mp4", "png-then-mp4.mp4", "mp4-then-png.png", "page.mp4", "zip.png", "bomb-video.mp4"]
    before = snapshot(tmp_path, tmp_path / "frames")
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "3")
    assert res.exit_code == 0, res.output
    assert snapshot(tmp_path, tmp_path / "frames") == before
    for name in bad:
        assert len(lines_naming(res.output, name)) <= 1, res.output  # one line, or decoded as what it starts as
    assert "skipped: " not in "".join(lines_naming(res.output, "good.mp4"))

    from dfdetect.cli import use
    from test_predict import RedScorer

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    before = snapshot(tmp_path, tmp_path / "frames")
    res = cli("predict", str(data), "--model", str(model), "--frames", "3")
    assert res.exit_code == 0, res.output
    for name in bad:
        assert len([s for s in lines_naming(res.output, name) if "skipped" in s]) <= 1, res.output
    assert snapshot(tmp_path, tmp_path / "frames") == before


# --------------------------------------------------------------------------- found by a hostile run of my own


def test_dfdc_metadata_that_is_a_pipe_or_nested_too_deep_is_one_line(tmp_path):
    """Regression: a metadata.json that is a named pipe hung discovery; one nested 100000 deep raised a
    RecursionError traceback."""
    data = tmp_path / "dfdc"
    make_video(data / "p0" / "ok.mp4", n=6)
    (data / "p0" / "metadata.json").write_text(json.dumps({"ok.mp4": {"label": "REAL"}}))
    (data / "p1").mkdir()
    (data / "p1" / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    (data / "p2").mkdir()
    os.mkfifo(data / "p2" / "metadata.json")
    hung = _unblock_after(data / "p2" / "metadata.json", 30)
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "2")
    assert not hung.is_set(), "discovery blocked on the named pipe"
    assert res.exit_code == 0 and "2 written" in res.output, res.output
    [deep] = lines_naming(res.output, "p1/metadata.json")
    [pipe] = lines_naming(res.output, "p2/metadata.json")
    assert "nested too deeply" in deep and "named pipe" in pipe


def test_file_names_that_are_not_utf8_survive_labels_faces_and_srm(tmp_path):
    """Regression: a file name that is not UTF-8 (bytes \\xff\\xfe) crashed labels and faces with a
    UnicodeEncodeError traceback when they wrote the label file or the manifest."""
    frames = tmp_path / "frames"
    (frames / "Celeb-real" / "v").mkdir(parents=True)
    name = os.fsdecode(b"\xff\xfe.png")
    photo(frames / "Celeb-real" / "v" / name, face_frame())
    photo(frames / "Celeb-real" / "v" / "plain.png", face_frame(at=(60, 20)))
    res = cli("labels", str(frames), "--out", str(tmp_path / "labels.txt"))
    assert res.exit_code == 0, res.output
    lines, bad = read_label_file(tmp_path / "labels.txt")
    assert bad == [] and sorted(x.path for x in lines) == sorted(
        [f"Celeb-real/v/{name}", "Celeb-real/v/plain.png"])
    assert all((frames / x.path).is_file() for x in lines)
    res = cli("faces", str(frames), "--out", str(tmp_path / "faces"), "--protocol", "seed")
    assert res.exit_code == 0 and "2 written" in res.output, res.output
    rows = read_manifest(tmp_path / "faces" / "manifest.csv")
    assert all((tmp_path / "faces" / r["path"]).is_file() for r in rows if r["status"] == "ok")
    res = cli("srm", str(tmp_path / "faces"), "--out", str(tmp_path / "srm"))
    assert res.exit_code == 0 and "2 written" in res.output, res.output
