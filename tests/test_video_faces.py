"""Faces straight from videos (issue 14): the same crops and manifest as ``frames`` then ``faces`` with PNG frames,
with no frame files; resumable per video; a bad video is one line; ``dfdetect faces DATASET`` takes this path."""

from __future__ import annotations

import csv
import filecmp
import os
from pathlib import Path

import pytest

from dfdetect.config import Protocol, SynthConfig
from dfdetect.data.sources import discover
from dfdetect.preprocess.faces import extract_faces
from dfdetect.preprocess.frames import extract_frames
from dfdetect.preprocess.manifest import MANIFEST_NAME
from dfdetect.preprocess.video_faces import RECORD, extract_video_faces
from test_hostile_media import cli

FRAMES = Protocol.default().frames.model_copy(update={"num_frames": 3, "test_frames": 4})
FACES = Protocol.default().faces  # YuNet on the synthetic faces


@pytest.fixture(scope="module")
def celebdf(tmp_path_factory) -> Path:
    from dfdetect.synthetic.synth import make_synthetic_celebdf

    cfg = SynthConfig(identities=2, videos_per_identity=2, fakes_per_identity=1, youtube_videos=1, frames=10,
                      frame_size=192, face_size=96)
    root = Path(make_synthetic_celebdf(tmp_path_factory.mktemp("synth") / "celebdf", cfg))
    (root / "Celeb-real" / "id9_0000.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # broken
    return root


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _manifest(root: Path) -> list[tuple[str, ...]]:
    with open(root / MANIFEST_NAME, newline="") as fh:
        return sorted(map(tuple, csv.reader(fh)))


def test_same_crops_and_manifest_as_frames_then_faces_without_frame_files(tmp_path, celebdf):
    items = discover(celebdf).items
    extract_frames(items, tmp_path / "frames", FRAMES)
    two = extract_faces(tmp_path / "frames", tmp_path / "two", FACES)
    one = extract_video_faces(items, tmp_path / "one", FRAMES, FACES)
    crops = _files(tmp_path / "one")
    assert crops == _files(tmp_path / "two") and len(crops) > 10
    assert all(filecmp.cmp(tmp_path / "one" / c, tmp_path / "two" / c, shallow=False) for c in crops
               if c != MANIFEST_NAME)
    assert _manifest(tmp_path / "one") == _manifest(tmp_path / "two")
    assert one.written == two.written and not any(p.suffix == ".png" and "frames" in p.parts
                                                  for p in (tmp_path / "one").rglob("*"))
    # the broken video is one line naming it, counted; the others went on
    assert [f for f in one.failed if "id9_0000" in f] and len(one.failed) == 1 and "\n" not in one.failed[0]
    # test-list items take test_frames, as the frames stage gives them
    tests = [it for it in items if it.is_test and it.is_video and "id9" not in it.video_id]
    assert tests and all(len(list((tmp_path / "one" / it.video_id).glob("*.png"))) == FRAMES.test_frames
                         for it in tests)


def test_resumes_per_video_and_redoes_a_changed_or_unfinished_one(tmp_path, celebdf):
    items = discover(celebdf).items
    out = tmp_path / "out"
    first = extract_video_faces(items, out, FRAMES, FACES)
    again = extract_video_faces(items, out, FRAMES, FACES)
    assert again.written == 0 and again.reused == first.written and again.failed == first.failed
    videos = sorted(p.parent for p in out.rglob(RECORD))
    killed, changed = videos[0], videos[1]
    (killed / RECORD).unlink()  # killed after writing its crops, before its record
    crop = min(killed.glob("*.png"))
    crop.unlink()
    src = next(it.path for it in items if it.video_id == changed.relative_to(out).as_posix())
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source changed: its record is not trusted
    third = extract_video_faces(items, out, FRAMES, FACES)
    assert crop.is_file() and third.written == 1 and third.reused == first.written - 1
    assert _manifest(out) == _manifest(out)  # still readable
    # another sampling is another folder's work: refused in one line, nothing written
    with pytest.raises(Exception, match="other faces settings"):
        extract_video_faces(items, out, FRAMES.model_copy(update={"num_frames": 5}), FACES)


def test_cli_faces_on_a_dataset_of_videos_reads_them_itself(tmp_path, celebdf):
    res = cli("faces", str(celebdf), "--out", str(tmp_path / "faces"), "--frames", "3", "--test-frames", "4")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "faces" / MANIFEST_NAME).is_file() and "id9_0000.mp4" in res.output
    assert not list(tmp_path.glob("faces/**/*.mp4"))
    # a folder of frames is cropped as before; --frames means nothing there and is refused in one line
    cli("frames", str(celebdf), "--out", str(tmp_path / "frames"), "--frames", "2")
    res = cli("faces", str(tmp_path / "frames"), "--out", str(tmp_path / "f2"))
    assert res.exit_code == 0 and (tmp_path / "f2" / MANIFEST_NAME).is_file(), res.output
    res = cli("faces", str(tmp_path / "frames"), "--out", str(tmp_path / "f3"), "--frames", "2")
    assert res.exit_code == 1 and "for a dataset of videos" in res.output
    # the output may not be inside the dataset
    res = cli("faces", str(celebdf), "--out", str(celebdf / "faces"))
    assert res.exit_code == 1 and not (celebdf / "faces").exists()
