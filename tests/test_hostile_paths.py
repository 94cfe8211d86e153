"""Hostile paths: no data file may make a stage write or delete outside its output folder (issue 12, item 1).

Each test builds the attack the issue describes: a ``labels.csv`` row or a DFDC ``metadata.json`` key that
is absolute or climbs with ``../``, a frames folder holding a user's own ``NNNNN.jpg`` files, and an output
folder equal to or inside the source.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from dfdetect._io import inside
from dfdetect.cli import app
from dfdetect.config import FrameConfig
from dfdetect.data.labels import Label
from dfdetect.data.sources import MediaItem, contained_rel, discover
from dfdetect.errors import BadInputError
from dfdetect.preprocess import frames as F
from test_frames import make_video as _make_video

runner = CliRunner()


def _photo(path: Path, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 16, 3), value, np.uint8))
    return path


def make_video(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _make_video(path, **kw)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def victim(tmp_path) -> Path:
    """A user's folder beside the dataset, with frame-like files dfdetect never wrote."""
    home = tmp_path / "home" / "clip"
    home.mkdir(parents=True)
    make_video(home / "clip.mp4", n=24)  # gives the escaping rows a real video to read
    for i in (0, 3, 7, 11, 23):
        _photo(home / f"{i:05d}.jpg", 10 * i)
    _photo(home / "00005.png")
    return tmp_path / "home"


@pytest.mark.parametrize("row", ["../home/clip/clip.mp4", "{abs}"])
def test_csv_rows_that_leave_the_dataset_are_skipped_and_named(tmp_path, victim, row):
    data = tmp_path / "data"
    _photo(data / "real" / "a.png")
    bad = row.format(abs=victim / "clip" / "clip.mp4")
    (data / "labels.csv").write_text(f"path,label\nreal/a.png,real\n{bad},fake\n")
    ds = discover(data)
    assert [it.rel for it in ds.items] == ["real/a.png"]
    assert len(ds.skipped) == 1 and "labels.csv:3" in ds.skipped[0] and bad in ds.skipped[0]


def test_dfdc_keys_that_leave_the_dataset_are_skipped_and_named(tmp_path, victim):
    data = tmp_path / "dfdc" / "part0"
    make_video(data / "ok.mp4", n=8)
    meta = {"ok.mp4": {"label": "REAL"},
            "../../home/clip/clip.mp4": {"label": "FAKE", "original": "ok.mp4"},
            str(victim / "clip" / "clip.mp4"): {"label": "FAKE"}}
    (data / "metadata.json").write_text(json.dumps(meta))
    ds = discover(tmp_path / "dfdc")
    assert [it.rel for it in ds.items] == ["part0/ok.mp4"]
    assert len(ds.skipped) == 2 and all("metadata.json" in s for s in ds.skipped)
    assert any("leaves the dataset" in s for s in ds.skipped) and any("absolute" in s for s in ds.skipped)


@pytest.mark.parametrize("meta, message", [([{"a.mp4": "REAL"}], "found a JSON list"),
                                            ({"a.mp4": "REAL"}, "is a JSON str")])
def test_dfdc_metadata_of_the_wrong_shape_is_one_line(tmp_path, meta, message):
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    make_video(tmp_path / "a.mp4", n=4)
    ds = discover(tmp_path)
    assert ds.items == [] and len(ds.skipped) == 1 and message in ds.skipped[0]


def test_frames_refuses_an_output_folder_that_holds_the_inputs(tmp_path, victim):
    before = _tree(victim)
    item = MediaItem(victim / "clip" / "clip.mp4", "clip.mp4", Label.FAKE, ("clip",))
    with pytest.raises(BadInputError, match="holds the input"):
        F.extract_frames([item], victim, FrameConfig(num_frames=4, image_format="jpg"))
    assert _tree(victim) == before


def test_frames_keeps_a_users_frame_like_files_in_its_output(tmp_path, victim):
    """A frames folder that already holds files the stage did not write: a folder with no stamp is refused
    whole; files a user drops into a stage folder later are left as they are."""
    src = tmp_path / "src"
    make_video(src / "clip.mp4", n=24)
    out = tmp_path / "out"
    (out / "clip").mkdir(parents=True)
    user = {i: _photo(out / "clip" / f"{i:05d}.jpg", 3 * i).read_bytes() for i in (3, 7, 11)}
    item = MediaItem(src / "clip.mp4", "clip.mp4", Label.REAL, ("clip",))
    with pytest.raises(BadInputError, match="holds files but no"):
        F.extract_frames([item], out, FrameConfig(num_frames=4, image_format="jpg"))
    for i, data in user.items():
        assert (out / "clip" / f"{i:05d}.jpg").read_bytes() == data
    out = tmp_path / "out2"
    report = F.extract_frames([item], out, FrameConfig(num_frames=4, image_format="jpg"))
    assert report.written == 4 and not report.failed
    user = {i: _photo(out / "clip" / f"{i:05d}.jpg", 3 * i).read_bytes() for i in (3, 7, 11)}  # dropped in later
    # What it wrote it may clean: a shorter source plans other frames, and only its own go.
    make_video(src / "clip.mp4", n=12, seed=1)
    again = F.extract_frames([item], out, FrameConfig(num_frames=4, image_format="jpg"))
    names = {p.name for p in (out / "clip").glob("*.jpg")}
    assert {F.frame_name(i, "jpg") for i in F.sample_indices(12, 4)} <= names
    for i, data in user.items():  # the user's, untouched (00011.jpg is also a planned frame now: kept as is)
        assert (out / "clip" / f"{i:05d}.jpg").read_bytes() == data
    assert F.frame_name(23, "jpg") not in names  # its own, from the longer version
    assert not again.failed


def test_frames_stage_skips_an_item_whose_id_climbs_out(tmp_path, victim):
    before = _tree(victim)
    src = tmp_path / "src"
    make_video(src / "clip.mp4", n=24)
    bad = MediaItem(src / "clip.mp4", "../home/clip/x.mp4", Label.REAL, ("x",))
    report = F.extract_frames([bad], tmp_path / "out", FrameConfig(num_frames=4, image_format="jpg"))
    assert report.written == 0 and len(report.failed) == 1 and "leave the output folder" in report.failed[0]
    assert _tree(victim) == before


def test_cli_frames_refuses_out_at_or_inside_the_source(tmp_path):
    src = tmp_path / "data"
    make_video(src / "real" / "a.mp4", n=8)
    make_video(src / "fake" / "b.mp4", n=8)
    before = _tree(src)
    for out in (src, src / "frames", src / "real"):
        res = runner.invoke(app, ["frames", str(src), "--out", str(out), "--frames", "2"])
        assert res.exit_code == 1 and "inside the dataset folder" in res.output, res.output
    assert _tree(src) == before


def test_cli_frames_with_an_escaping_csv_row_touches_nothing_outside_out(tmp_path, victim):
    """The issue's reproduction, end to end: the row is skipped with one line, the user's files stay."""
    data = tmp_path / "data"
    make_video(data / "v.mp4", n=8)
    (data / "labels.csv").write_text("path,label\nv.mp4,real\n../home/clip/clip.mp4,fake\n")
    before = _tree(victim)
    res = runner.invoke(app, ["frames", str(data), "--out", str(tmp_path / "out"), "--frames", "2"])
    assert res.exit_code == 0, res.output
    assert "leaves the dataset folder" in res.output
    assert _tree(victim) == before


@pytest.mark.parametrize("raw", ["", "  ", "/etc/passwd", "..", "../x", "a/../../x", "a\nb", "a\x00b", 3, None])
def test_contained_rel_refuses(raw, tmp_path):
    with pytest.raises(ValueError):
        contained_rel(tmp_path, raw)


def test_contained_rel_normalises_inside(tmp_path):
    assert contained_rel(tmp_path, "a/./b/../c.mp4") == "a/c.mp4"
    assert contained_rel(tmp_path, "../part1/c.mp4", base=tmp_path / "part0") == "part1/c.mp4"


@pytest.mark.parametrize("rel", ["../x", "/abs/x", "a/../../x"])
def test_inside_refuses(tmp_path, rel):
    with pytest.raises(BadInputError):
        inside(tmp_path, rel)
