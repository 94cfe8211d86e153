"""frames: evenly spaced sampling, seeking decode identical to a sequential one, resumable stage."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dfdetect.config import FrameConfig, MediaLimits
from dfdetect.data.labels import Label
from dfdetect.data.sources import MediaItem
from dfdetect.errors import BadInputError
from dfdetect.preprocess import frames as F


def make_video(path: Path, n: int = 48, size: tuple[int, int] = (96, 64), keyint: int = 8, codec: str = "libx264",
               seed: int = 0, faststart: bool = False) -> Path:
    """A tiny H.264 clip whose frames all differ (moving block + noise), B-frames on, short GOPs.

    ``faststart`` puts the mp4 index first, so a copy cut short still opens (a partly downloaded file).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=3"}
        base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for i in range(n):
            img = base.copy()
            x = (i * 5) % (w - 16)
            cv2.rectangle(img, (x, 10), (x + 15, 30), (255, 255 - 4 * i % 255, 0), -1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        out.mux(stream.encode())
    return path


def sequential(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(c.streams.video[0])]


def test_sample_indices():
    assert F.sample_indices(300, 1) == [0]
    assert F.sample_indices(100, 5) == [0, 25, 50, 74, 99]
    assert F.sample_indices(100, 5) == [int(v) for v in np.rint(np.linspace(0, 99, 5))]
    assert F.sample_indices(3, 8) == [0, 1, 2]  # short video: every frame once, no duplicates
    assert F.sample_indices(0, 4) == []
    with pytest.raises(ValueError):
        F.sample_indices(10, 0)


@pytest.mark.parametrize("n", [1, 5, 16, 48])
def test_seeking_matches_sequential_decode(tmp_path, n):
    video = make_video(tmp_path / "v.mp4")
    seq = sequential(video)
    got = F.read_frames(video, n)
    assert [i for i, _ in got] == F.sample_indices(len(seq), n)
    for i, frame in got:
        assert frame.dtype == np.uint8 and frame.shape == (64, 96, 3)
        assert np.array_equal(frame, seq[i]), f"frame {i} differs from the sequential decode"


def test_seek_skips_decoding(tmp_path):
    """4 frames out of 48 with GOPs of 8: whole GOPs are jumped over, never sent to the decoder."""
    video = make_video(tmp_path / "v.mp4")
    with av.open(str(video)) as c:
        stream = c.streams.video[0]
        idx = F._index(c, stream, MediaLimits(), video)
        stats: dict[str, int] = {}
        got = F._decode_seeking(c, stream, idx, F.sample_indices(48, 4), stats)
    assert sorted(got) == F.sample_indices(48, 4)
    assert stats["seeks"] >= 3 and stats["packets"] < 36  # a sequential decode sends all 48


def test_unknown_frame_count(tmp_path):
    """Matroska stores no frame count (stream.frames == 0); the packet index still gives exact frames."""
    video = make_video(tmp_path / "v.mkv", n=30)
    with av.open(str(video)) as c:
        assert c.streams.video[0].frames == 0
    assert F.count_frames(video) == 30
    seq = sequential(video)
    for i, frame in F.read_frames(video, 6):
        assert np.array_equal(frame, seq[i])
    assert [i for i, _ in F.read_frames(video, 6)] == F.sample_indices(30, 6)


def test_truncated_video_samples_what_is_there(tmp_path):
    """A download cut short (streamable Matroska): frames are sampled over the part that exists."""
    data = make_video(tmp_path / "v.mkv", n=48).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    total = F.count_frames(cut)
    assert 0 < total < 48
    got = F.read_frames(cut, 4)
    assert 0 < len(got) <= 4 and max(i for i, _ in got) < total


def test_read_frames_at(tmp_path):
    video = make_video(tmp_path / "v.mp4", n=20)
    seq = sequential(video)
    got = F.read_frames_at(video, [19, 3, 3, 50, -1])
    assert [i for i, _ in got] == [3, 19]
    assert all(np.array_equal(f, seq[i]) for i, f in got)


def test_image_is_one_frame(tmp_path):
    img = np.full((20, 30, 3), 7, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    [(i, frame)] = F.read_frames(tmp_path / "a.png", 8)
    assert i == 0 and np.array_equal(frame, img)


@pytest.mark.parametrize("kind, message", [
    ("missing", "not found"), ("empty", "empty file"), ("garbage", "cannot"), ("image", "cannot read as an image")])
def test_bad_input_names_the_file(tmp_path, kind, message):
    path = tmp_path / ("bad.png" if kind == "image" else "bad.mp4")
    if kind == "empty" or kind == "image":
        path.write_bytes(b"" if kind == "empty" else b"not a png")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BadInputError) as err:
        F.read_frames(path, 4)
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


def _item(path: Path, rel: str) -> MediaItem:
    return MediaItem(path, rel, Label.REAL, (rel,))


def test_extract_frames_layout_resume_and_bad_items(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "Celeb-real").mkdir(parents=True)
    make_video(src / "Celeb-real" / "id0_0000.mp4", n=24)
    (src / "Celeb-real" / "id0_0001.mp4").write_bytes(b"")
    items = [_item(src / "Celeb-real" / "id0_0000.mp4", "Celeb-real/id0_0000.mp4"),
             _item(src / "Celeb-real" / "id0_0001.mp4", "Celeb-real/id0_0001.mp4")]
    out = tmp_path / "frames"
    cfg = FrameConfig(num_frames=4, image_format="png")
    report = F.extract_frames(items, out, cfg)
    vdir = out / "Celeb-real" / "id0_0000"
    names = sorted(p.name for p in vdir.glob("*.png"))
    assert names == [F.frame_name(i, "png") for i in F.sample_indices(24, 4)]
    assert (report.written, report.reused, len(report.failed)) == (4, 0, 1)
    assert "id0_0001.mp4" in report.failed[0] and "empty" in report.failed[0]
    marker = json.loads((vdir / F.DONE_MARKER).read_text())
    assert marker["frames"] == F.sample_indices(24, 4)
    seq = sequential(items[0].path)
    assert np.array_equal(cv2.imread(str(vdir / "00008.png")), seq[8])  # png is lossless

    # Rerun: the done-marker vouches for the video, it is never opened.
    monkeypatch.setattr(F, "_open", lambda p: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = F.extract_frames(items[:1], out, cfg)
    assert (again.written, again.reused) == (0, 4)
    monkeypatch.undo()

    # Killed mid-video: no marker, one frame missing -> only that frame is decoded.
    (vdir / F.DONE_MARKER).unlink()
    (vdir / "00015.png").unlink()
    partial = F.extract_frames(items[:1], out, cfg)
    assert (partial.written, partial.reused) == (1, 3)
    assert (vdir / F.DONE_MARKER).is_file()


def test_extract_frames_jpg_and_image_items(tmp_path):
    img = tmp_path / "real" / "x.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.full((16, 16, 3), 100, np.uint8))
    report = F.extract_frames([_item(img, "real/x.jpg")], tmp_path / "out", FrameConfig(num_frames=8,
                                                                                        image_format="jpg"))
    assert report.written == 1 and (tmp_path / "out" / "real" / "x" / "00000.jpg").is_file()


def test_truncated_faststart_mp4_keeps_the_frames_before_the_cut(tmp_path):
    """Regression: an mp4 with its index up front (faststart) cut mid-packet raised at the decoder's final
    flush and in the sequential fallback, so the frames already decoded were thrown away ("cannot decode")."""
    video = make_video(tmp_path / "fs.mp4", faststart=True)
    data = video.read_bytes()
    for frac in (0.55, 0.6, 0.65):
        cut = tmp_path / f"cut{frac}.mp4"
        cut.write_bytes(data[: int(len(data) * frac)])
        got = F.read_frames(cut, 20)
        assert 0 < len(got) < 20 and got[0][0] == 0


def test_official_test_videos_get_more_frames(tmp_path):
    """The default protocol trains on 8 frames per video and evaluates on 32 (issue 3)."""
    from dataclasses import replace

    src = tmp_path / "src"
    src.mkdir()
    make_video(src / "a.mp4", n=48)
    make_video(src / "b.mp4", n=48)
    train_item = _item(src / "a.mp4", "a.mp4")
    test_item = replace(_item(src / "b.mp4", "b.mp4"), is_test=True)
    cfg = FrameConfig(num_frames=4, test_frames=12)
    report = F.extract_frames([train_item, test_item], tmp_path / "out", cfg)
    assert report.written == 16 and not report.failed
    assert len(list((tmp_path / "out" / "a").glob("*.png"))) == 4
    assert len(list((tmp_path / "out" / "b").glob("*.png"))) == 12
    again = F.extract_frames([train_item, test_item], tmp_path / "out", cfg)
    assert (again.written, again.reused) == (0, 16)
    assert FrameConfig(num_frames=4, test_frames=None).for_item(True).num_frames == 4


def test_partly_decodable_video_is_reported_again_without_decoding(tmp_path, monkeypatch):
    """A truncated video's lost frames are recorded in its marker: a rerun reports them, never decodes again,
    and a replaced (repaired) file is looked at afresh."""
    full = make_video(tmp_path / "full.mp4", faststart=True)
    src = tmp_path / "src" / "Celeb-real" / "id0_0000.mp4"
    src.parent.mkdir(parents=True)
    src.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    items = [_item(src, "Celeb-real/id0_0000.mp4")]
    out, cfg = tmp_path / "frames", FrameConfig(num_frames=20)
    first = F.extract_frames(items, out, cfg)
    assert first.written > 0 and len(first.failed) == 1 and "could not be decoded" in first.failed[0]

    monkeypatch.setattr(F, "_open", lambda p: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = F.extract_frames(items, out, cfg)
    assert (again.written, again.reused, again.failed) == (0, first.written, first.failed)
    monkeypatch.undo()

    src.write_bytes(full.read_bytes())  # the repaired file: a new stamp, so it is decoded again
    fixed = F.extract_frames(items, out, cfg)
    vdir = out / "Celeb-real" / "id0_0000"
    assert fixed.failed == [] and fixed.written + fixed.reused == 20
    # frames the truncated file's plan had, and the full file's has not, are gone
    assert sorted(p.name for p in vdir.glob("*.png")) == [F.frame_name(i, "png") for i in F.sample_indices(48, 20)]


def test_stage_removes_temp_files_a_killed_run_left(tmp_path):
    src = tmp_path / "Celeb-real" / "id0_0000.mp4"
    src.parent.mkdir(parents=True)
    make_video(src, n=24)
    F.extract_frames([], tmp_path / "frames", FrameConfig(num_frames=2))  # the killed run: its stamp comes first
    vdir = tmp_path / "frames" / "Celeb-real" / "id0_0000"
    vdir.mkdir(parents=True)
    stale = vdir / ".00008.png.dfdetect-tmp-k2j3ab_9.png"  # what atomic_path leaves after SIGKILL
    stale.write_bytes(b"half a png")
    (vdir / ".keep-me").write_text("not ours")
    (vdir / ".notes.txt.k2j3ab_9.txt").write_text("a user's hidden file that merely looks like a temp name")
    report = F.extract_frames([_item(src, "Celeb-real/id0_0000.mp4")], tmp_path / "frames", FrameConfig(num_frames=2))
    assert not stale.exists() and (vdir / ".keep-me").exists() and (vdir / ".notes.txt.k2j3ab_9.txt").exists()
    assert any("removed 1 temp file" in n for n in report.notes)
