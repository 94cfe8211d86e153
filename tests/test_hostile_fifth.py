"""The fifth hostile run (stop 21): inputs no earlier test had tried, each a regression test that failed before.

Output folders and result files that replaced a user's or a dataset's own files, a report that hung on a pipe or
ate memory from /dev/zero, options with no upper bound, Celeb-DF test lists spelt another way, and a terminal that
cannot print a file's name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_hostile_media import cli, make_video


def _celebdf(root: Path, test_list: str) -> Path:
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-real/id1_0000.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
                "Celeb-synthesis/id1_id0_0000.mp4"):
        make_video(root / rel, n=4)
    (root / "List_of_testing_videos.txt").write_text(test_list)
    return root


def test_study_never_writes_over_a_users_files_in_its_folder(tmp_path):
    """Regression: ``study CDF --out OUT`` replaced a user's own OUT/study/table.md and table.csv (and ``demo`` wrote
    its report.html there). The study folder takes the run stamp, checked before any preprocessing."""
    data = _celebdf(tmp_path / "cdf", "1 Celeb-real/id0_0000.mp4\n")
    mine = tmp_path / "out" / "study"
    mine.mkdir(parents=True)
    (mine / "table.md").write_text("my own table, months of work")
    res = cli("study", str(data), "--out", str(tmp_path / "out"), "--protocol", "seed", "--backbones", "mobilenet_v2")
    assert res.exit_code == 1 and "no .dfdetect-run" in res.output, res.output
    assert (mine / "table.md").read_text() == "my own table, months of work"
    assert not (tmp_path / "out" / "frames").exists()  # refused before the stages ran


def test_labels_never_writes_over_a_datasets_own_list_or_csv_nor_outside_it(tmp_path):
    """Regression: ``labels CDF --out CDF/List_of_testing_videos.txt`` rewrote the official test list (every video a
    test video), ``--out DS/labels.csv`` replaced the dataset's CSV, and ``--subfolder ../outside`` labelled files
    outside ROOT in lines no reader accepts."""
    data = _celebdf(tmp_path / "cdf", "1 Celeb-real/id0_0000.mp4\n")
    (data / "labels.csv").write_text("path,label\n")
    for target in (data / "List_of_testing_videos.txt", data / "labels.csv"):
        before = target.read_bytes()
        res = cli("labels", str(data), "--out", str(target))
        assert res.exit_code == 1 and "is a dataset's own list or labels" in res.output, res.output
        assert target.read_bytes() == before
    make_video(tmp_path / "outside" / "id0_0000.mp4", n=2)
    res = cli("labels", str(data), "--subfolder", "../outside", "--value", "1", "--out", str(tmp_path / "l.txt"))
    assert res.exit_code == 1 and "is not a folder inside" in res.output and not (tmp_path / "l.txt").exists()


def test_trains_feature_cache_is_kept_out_of_the_data(tmp_path):
    """Regression: ``train DATA --cache-dir DATA/real`` wrote its .npy files among the input images; a file as
    --cache-dir gave the bare line ``afile: File exists``."""
    for d in ("real", "fake"):
        (tmp_path / "data" / d).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / d / "a.png"), np.zeros((32, 32, 3), np.uint8))
    res = cli("train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--cache-dir",
              str(tmp_path / "data" / "real"))
    assert res.exit_code == 1 and "--cache-dir" in res.output and "inside the dataset folder" in res.output
    assert sorted(p.name for p in (tmp_path / "data" / "real").iterdir()) == ["a.png"]
    (tmp_path / "afile").write_text("x")
    res = cli("train", str(tmp_path / "data"), "--out", str(tmp_path / "run2"), "--cache-dir", str(tmp_path / "afile"))
    assert res.exit_code == 1 and "--cache-dir names a file" in res.output, res.output


def test_report_survives_a_pipe_a_device_a_folder_and_a_table_that_is_not_utf8(tmp_path):
    """Regression: a named pipe called fifo.png in the run folder hung ``report``; a zero.png linked to /dev/zero took
    7.8 GB in 20 s; a folder called x.png lost the whole page ("cannot write the report"); a table.csv that is not
    UTF-8 gave a UnicodeDecodeError traceback. Each is now a damaged part of the page."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"accuracy": 0.5, "threshold": 0.5}')
    os.mkfifo(run / "fifo.png")
    (run / "zero.png").symlink_to("/dev/zero")
    (run / "x.png").mkdir()
    (run / "table.csv").write_bytes(b"backbone,x\n\xff\xfe,1\n")
    res = cli("report", str(run))
    assert res.exit_code == 0 and "report:" in res.output, res.output
    page = (run / "report.html").read_text()
    assert all(name in page for name in ("fifo.png", "zero.png", "x.png"))


@pytest.mark.parametrize(("args", "words"), [
    (["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
    (["--frames", "100000000"], "--frames: Input should be less than or equal to 1000"),
    (["--identities", "100000"], "--identities: Input should be less than or equal to 1000"),
    (["--youtube", "-1"], "--youtube: Input should be greater than or equal to 0"),
])
def test_synth_options_are_bounded(tmp_path, args, words):
    """Regression: ``synth --seed -1`` was numpy's traceback; ``--frames 100000000`` took 6.4 GB in 25 s and
    ``--identities 100000`` spun without a word; ``--youtube -1`` named the option ``--youtube-videos``."""
    res = cli("synth", "--out", str(tmp_path / "s"), *args)
    assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output, res.output


def test_srm_clip_past_the_8_bit_range_is_refused(tmp_path):
    """Regression: ``srm --clip inf`` (or 1e308) wrote every SRM crop all black, unsaid."""
    (tmp_path / "faces").mkdir()
    cv2.imwrite(str(tmp_path / "faces" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    for clip in ("inf", "1e308"):
        res = cli("srm", str(tmp_path / "faces"), "--out", str(tmp_path / "srm"), "--clip", clip)
        assert res.exit_code == 1 and "--clip" in res.output and not (tmp_path / "srm").exists(), res.output


def test_serve_refuses_infinite_settings_and_a_port_in_use_in_one_line(tmp_path):
    """Regression: ``--upload-timeout inf`` gave a pydantic traceback, ``--max-upload-mb inf`` an OverflowError;
    a port in use printed "serving ... on http://..." and then uvicorn's own error."""
    for args, words in ((["--upload-timeout", "inf"], "upload_timeout: Input should be a finite number"),
                        (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number")):
        res = cli("serve", "--port", "1", *args)
        assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output, res.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert res.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in res.output, res.output
    assert "serving" not in res.output


def test_a_test_list_entry_against_its_folder_is_used_for_nothing_and_odd_spellings_match(tmp_path):
    """Regression: ``1 Celeb-synthesis/X`` (listed real, in the fake folder) was "skipped" yet kept as a fake test
    video; ``./Celeb-synthesis/x.mp4`` or ``a//b`` in the list was "not found" while the file was there, and the
    official test video silently became training data."""
    from dfdetect.data.sources import load_celebdf

    data = _celebdf(tmp_path / "cdf", "1 Celeb-synthesis/id0_id1_0000.mp4\n0 ./Celeb-synthesis/id1_id0_0000.mp4\n"
                                       "1 Celeb-real//id0_0000.mp4\n")
    ds = load_celebdf(data)
    items = {it.rel: it for it in ds.items}
    assert "Celeb-synthesis/id0_id1_0000.mp4" not in items
    assert any("id0_id1_0000.mp4 is listed as real but sits in Celeb-synthesis" in s for s in ds.skipped)
    assert items["Celeb-synthesis/id1_id0_0000.mp4"].is_test and items["Celeb-real/id0_0000.mp4"].is_test
    assert not any("not found" in s for s in ds.skipped), ds.skipped


def test_a_name_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path, tiny_model):
    """Regression: with ``PYTHONIOENCODING=ascii`` (or a C locale), ``predict фото.jpg`` scored the file, then died
    printing its table with a UnicodeEncodeError traceback."""
    photo = tmp_path / "фото.jpg"
    cv2.imwrite(str(photo), np.full((48, 48, 3), 120, np.uint8))
    run = subprocess.run([sys.executable, "-m", "dfdetect", "predict", str(photo), "--model", str(tiny_model)],
                         capture_output=True, timeout=120, check=False,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "ascii", "COLUMNS": "200"})
    text = (run.stdout + run.stderr).decode("ascii")
    assert run.returncode == 0 and "Traceback" not in text and "\\u0444\\u043e\\u0442\\u043e.jpg" in text, text


def test_head_requests_are_answered_and_a_backbone_named_twice_trains_once():
    """Regression: ``HEAD /`` and ``HEAD /healthz`` (uptime checks) got 405; ``study --backbones a,a`` trained the
    same cells twice into one folder."""
    from fastapi.testclient import TestClient

    from dfdetect.cli.results import _backbones
    from dfdetect.config import ServiceConfig
    from dfdetect.service import create_app
    from test_service import haar_detector

    client = TestClient(create_app(haar_detector(), ServiceConfig()))
    assert [client.head(u).status_code for u in ("/", "/healthz")] == [200, 200]
    assert _backbones("mobilenet_v2, mobilenet_v2") == ["mobilenet_v2"]


def test_a_link_to_a_folder_inside_a_stage_folder_is_refused_not_written_through(tmp_path):
    """Regression (sixth hostile run): ``faces/v2 -> ../elsewhere`` made a resumed ``faces`` (and ``frames``,
    ``srm``) write its crops into ``elsewhere``, over a user's own 00000.png there."""
    make_video(tmp_path / "data" / "real" / "a.mp4", n=4)
    make_video(tmp_path / "data" / "real" / "b.mp4", n=4, seed=1)
    out = tmp_path / "frames"
    assert cli("frames", str(tmp_path / "data"), "--out", str(out), "--frames", "1").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "00000.png").write_bytes(b"the user's own file")
    victim = next(p for p in out.rglob("*") if p.is_dir() and p.name.startswith("b"))
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    victim.symlink_to(elsewhere, target_is_directory=True)
    res = cli("frames", str(tmp_path / "data"), "--out", str(out), "--frames", "1")
    assert res.exit_code == 1 and "holds a link to a folder" in res.output, res.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["00000.png"]
    assert (elsewhere / "00000.png").read_bytes() == b"the user's own file"
