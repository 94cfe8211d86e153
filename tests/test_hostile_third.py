"""The third hostile run (stop 20): inputs no earlier test had tried, each a regression test that failed before.

Results files that destroy what they point at, output folders of the user's own, recipes and model metadata
that crash or hang, degenerate images, and what onnxruntime writes outside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_hostile_media import cli, make_video, photo
from test_hostile_outputs import tiny_model  # noqa: F401 - a fixture


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()  # noqa: S324 - a fingerprint, not security


def test_labels_out_never_replaces_a_crop_a_video_a_pipe_or_a_device(tmp_path):
    """Regression: ``labels crops --out X`` replaced whatever X was (an input crop, a video, a FIFO, a device node)
    with its text, by the atomic rename."""
    crop = photo(tmp_path / "crops" / "Celeb-real" / "id0_0000" / "00000.png")
    other = tmp_path / "other"
    other.mkdir()
    video = make_video(other / "clip.mp4", n=4)
    os.mkfifo(other / "pipe.txt")
    os.mknod(other / "nulldev", 0o600 | 0o020000, os.makedev(1, 3))  # a character device, as /dev/null
    before = {p: _md5(p) for p in (crop, video)}
    for target in (crop, video, other / "pipe.txt", other / "nulldev"):
        res = cli("labels", str(tmp_path / "crops"), "--out", str(target))
        assert res.exit_code == 1, (target, res.output)
    assert {p: _md5(p) for p in before} == before
    assert (other / "pipe.txt").is_fifo() and (other / "nulldev").is_char_device()
    ok = cli("labels", str(tmp_path / "crops"), "--out", str(tmp_path / "crops" / "labels.txt"))  # the README's way
    assert ok.exit_code == 0 and (tmp_path / "crops" / "labels.txt").read_text().startswith("1 ")


@pytest.fixture
def red_cli(monkeypatch, tmp_path):
    from dfdetect.cli import use
    from test_predict import RedScorer

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    stand_in = tmp_path / "m.safetensors"
    stand_in.write_bytes(b"x")
    return stand_in


def test_a_jsonl_that_links_to_an_input_or_holds_other_data_is_refused(tmp_path, red_cli, tiny_model):
    """Regression: ``--jsonl`` as a symlink or hard link to face.png cut the image at its last newline (the
    torn-line repair) and appended JSON to it; a JPEG renamed copy.jsonl was appended to."""
    face = photo(tmp_path / "in" / "face.png")
    before = _md5(face)
    (tmp_path / "sym.jsonl").symlink_to(face)
    os.link(face, tmp_path / "hard.jsonl")
    (tmp_path / "copy.jsonl").write_bytes(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    for name, why in (("sym.jsonl", "is a link"), ("hard.jsonl", "is a link"), ("copy.jsonl", "other than JSON")):
        res = cli("predict", str(face), "--model", str(red_cli), "--jsonl", str(tmp_path / name))
        assert res.exit_code == 1 and why in " ".join(res.output.split()), (name, res.output)
    assert _md5(face) == before and _md5(tmp_path / "hard.jsonl") == before
    res = cli("predict", str(face), "--model", str(tiny_model), "--jsonl", str(tmp_path / "new.jsonl"))
    assert res.exit_code == 0 and json.loads((tmp_path / "new.jsonl").read_text().splitlines()[0])["file"]


def test_evaluate_out_is_never_a_users_folder_or_a_stage_folder(tmp_path, tiny_model):
    """Regression: ``evaluate ds --out mine`` overwrote the user's metrics.json and scores.csv there, and wrote
    into a ``frames`` stage folder."""
    model = tiny_model
    data = tmp_path / "ds"
    for label in ("real", "fake"):
        for i in range(2):
            photo(data / label / f"{i}.png", value=40 + 100 * (label == "fake") + i)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"mine": 1}')
    (mine / "scores.csv").write_text("mine\n")
    res = cli("evaluate", str(model), str(data), "--out", str(mine))
    assert res.exit_code == 1 and "no .dfdetect-run" in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.json", "scores.csv"]
    assert (mine / "metrics.json").read_text() == '{"mine": 1}'
    make_video(tmp_path / "vids" / "real" / "a.mp4", n=4)
    assert cli("frames", str(tmp_path / "vids"), "--out", str(tmp_path / "fr"), "--frames", "1").exit_code == 0
    listing = sorted(p.relative_to(tmp_path / "fr") for p in (tmp_path / "fr").rglob("*"))
    res = cli("evaluate", str(model), str(data), "--out", str(tmp_path / "fr"))
    assert res.exit_code == 1 and sorted(p.relative_to(tmp_path / "fr") for p in (tmp_path / "fr").rglob("*")) == listing
    ok = cli("evaluate", str(model), str(data), "--out", str(tmp_path / "ev"))
    assert ok.exit_code == 0 and (tmp_path / "ev" / "metrics.json").is_file(), ok.output
    assert cli("evaluate", str(model), str(data), "--out", str(tmp_path / "ev")).exit_code == 0  # its own: again
