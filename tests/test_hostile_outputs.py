"""Hostile outputs and names (a hostile run of stop 19 found each of these): stage folders dfdetect cannot
vouch for, result files that are inputs or pipes, file names that are not UTF-8 or hold a line break, and
face finders nobody registered. Each is refused or reported in one line, before any work where it can be."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dfdetect.config import FaceConfig, Protocol
from dfdetect.errors import BadInputError, WeightsError
from dfdetect.preprocess import faces as FA
from dfdetect.preprocess.stage import STAMP
from test_hostile_media import cli, lines_naming, make_video, photo, real_and_fake_photos


def _frames(root: Path) -> Path:
    img = np.zeros((120, 120, 3), np.uint8)
    cv2.rectangle(img, (30, 30), (90, 90), (200, 200, 200), -1)
    photo(root / "v" / "00000.png", img)
    return root


@pytest.fixture
def square_faces(monkeypatch):
    FA._WORKER_DETECTORS.clear()
    monkeypatch.setitem(FA._DETECTORS, "haar", lambda cfg: lambda bgr: [FA.Box(30, 30, 90, 90, 1.0)])
    yield FaceConfig(detector="haar", min_size=10, margin=1.0)
    FA._WORKER_DETECTORS.clear()


@pytest.mark.parametrize("damage", ["torn", "bom", "nested", "fifo", "missing"])
def test_a_stage_folder_it_cannot_vouch_for_is_refused(tmp_path, square_faces, damage):
    """Regression: with its stamp unreadable or gone, a faces folder was rerun with another margin, its old
    crops 'reused' and the stamp rewritten to the new margin; a deeply nested stamp gave a RecursionError."""
    frames, out = _frames(tmp_path / "frames"), tmp_path / "faces"
    FA.extract_faces(frames, out, square_faces)
    stamp = out / STAMP
    stamp.unlink()
    if damage == "torn":
        stamp.write_text('{"stage": "fa')
    elif damage == "bom":
        stamp.write_bytes(b"\xef\xbb\xbf" + json.dumps({"stage": "faces"}).encode())
    elif damage == "nested":
        stamp.write_text("[" * 100_000)
    elif damage == "fifo":
        os.mkfifo(stamp)
    crops = {p: p.read_bytes() for p in out.rglob("*.png")}
    want = "holds files but no" if damage == "missing" else "cannot be read"
    with pytest.raises(BadInputError, match=want):
        FA.extract_faces(frames, out, square_faces.model_copy(update={"margin": 2.0}))
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == crops


def test_a_folder_of_the_users_own_files_is_never_a_stage_folder(tmp_path):
    """``frames`` into a folder that holds someone's files refuses it instead of writing among them."""
    video = make_video(tmp_path / "data" / "real" / "a.mp4", n=6)
    mine = photo(tmp_path / "photos" / "holiday.jpg")
    res = cli("frames", str(video.parent.parent), "--out", str(mine.parent), "--frames", "2")
    assert res.exit_code == 1 and "holds files but no .dfdetect-stage.json" in res.output
    assert sorted(p.name for p in mine.parent.iterdir()) == ["holiday.jpg"]
    as_file = cli("frames", str(video.parent.parent), "--out", str(mine), "--frames", "2")
    assert as_file.exit_code == 1 and "is a file, not a folder" in as_file.output



def test_results_files_that_are_inputs_or_pipes_are_refused_before_any_work(tmp_path, red_cli):
    """Regression: --jsonl few/a.png appended JSON to an input image, --json few/b.png replaced one, a --jsonl
    that is a named pipe blocked for ever, and --save into the input folder put pictures among the inputs."""
    few = tmp_path / "few"
    a, b = photo(few / "a.png"), photo(few / "b.png")
    before = {p: p.read_bytes() for p in (a, b)}
    os.mkfifo(tmp_path / "fifo.jsonl")
    for args in (["--jsonl", str(a)], ["--json", str(b)], ["--jsonl", str(tmp_path / "fifo.jsonl")],
                 ["--save", str(few)], ["--save", str(few / "pictures")]):
        res = cli("predict", str(few), "--model", str(red_cli), *args)
        assert res.exit_code == 1, (args, res.output)
        assert any(w in res.output for w in ("video or image", "not a regular file", "inside the input")), res.output
    assert {p: p.read_bytes() for p in (a, b)} == before and sorted(p.name for p in few.iterdir()) == ["a.png", "b.png"]


def test_file_names_that_are_not_utf8_or_hold_a_line_break(tmp_path, red_cli, tiny_model):
    """Regression: --jsonl crashed with UnicodeEncodeError on a name that is not UTF-8 (every rerun too), and a
    name with a line break split its skipped line in two, or lost the reason (-j 2, --jsonl)."""
    odd = tmp_path / "odd"
    odd.mkdir()
    raw = os.fsencode(odd) + b"/bad\xffname.png"
    with open(raw, "wb") as fh:
        fh.write(b"not a png")
    (odd / "new\nline.png").write_bytes(b"not a png either")
    jsonl = tmp_path / "out" / "scan.jsonl"
    for _ in range(2):  # the rerun reads its own lines back (and tries the two failed files again)
        res = cli("predict", str(odd), "--model", str(tiny_model), "--jsonl", str(jsonl))  # a scan loads a real one
        assert res.exit_code in (0, 1) and "Traceback" not in res.output
    assert "2 file(s) with an error line" in res.output, res.output  # the odd names matched their own lines
    lines = [json.loads(x) for x in jsonl.read_bytes().splitlines()]
    assert len(lines) == 4 and all("error" in x for x in lines)
    nl = [x for x in lines if "line.png" in x["file"]][-1]
    assert "cannot" in nl["error"] and "\n" not in nl["error"]
    res = cli("predict", str(odd), "--model", str(red_cli))
    [line] = lines_naming(res.output, "line.png")
    assert line.startswith("skipped:") and "new\\nline.png" in line and "cannot" in line


def test_a_face_finder_nobody_registered_is_named_with_its_file(tmp_path):
    """Regression: an unknown detector in a recipe named neither the file nor the key, and a model whose
    metadata named one loaded fine, then failed every upload to serve with a 422 blaming the upload."""
    recipe = tmp_path / "upper.yaml"
    recipe.write_text(yaml.safe_dump({"faces": {"detector": "YUNET"}}))
    res = cli("faces", str(_frames(tmp_path / "frames")), "--out", str(tmp_path / "faces"), "--config", str(recipe))
    assert res.exit_code == 1 and "upper.yaml: not a dfdetect recipe: faces.detector: unknown face detector" in \
        " ".join(res.output.split())

    from dfdetect.model.backbones import create_backbone
    from dfdetect.model.detector import Detector

    proto = Protocol.seed().model_copy(update={"faces": FaceConfig.model_construct(
        **{**FaceConfig().model_dump(), "detector": "YUNET"})})
    net = create_backbone("mobilenet_v2", pretrained=False, num_classes=1)
    path = Detector.from_model(net, proto, 0.5).save(tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match=r"m.safetensors: detector metadata is damaged: protocol faces.detector: "
                                           r"unknown face detector 'YUNET'"):
        Detector.load(path)


def test_frames_counts_what_discovery_skipped(tmp_path):
    """Regression: frames named a pipe and a symlink loop among the videos but counted neither as skipped."""
    data = tmp_path / "data"
    make_video(data / "real" / "ok.mp4", n=6)
    os.mkfifo(data / "real" / "pipe.mp4")
    os.symlink("loop.mp4", data / "real" / "loop.mp4")
    res = cli("frames", str(data), "--out", str(tmp_path / "frames"), "--frames", "2")
    assert res.exit_code == 0
    summary = [ln for ln in res.output.splitlines() if ln.startswith("frames:")][-1]
    assert "2 written" in summary and "2 skipped" in summary, res.output


def test_outputs_that_would_overwrite_a_model_an_input_or_a_pipe_are_refused(tmp_path, red_cli):
    """Regression (second hostile run): --save beside the input files overwrote an input named like a contact
    sheet; export --onnx onto the model and report --out onto the model, an image or a pipe destroyed them."""
    q = tmp_path / "q"
    x, sheet = photo(q / "x.png"), photo(q / "x_faces.png", value=30)
    before = sheet.read_bytes()
    res = cli("predict", str(x), str(sheet), "--crops", "--model", str(red_cli), "--save", str(q))
    assert res.exit_code == 1 and "--save" in res.output and "folder of the input" in res.output
    assert sheet.read_bytes() == before
    model = red_cli
    res = cli("export", "--model", str(model), "--onnx", str(model))
    assert res.exit_code == 1 and "--onnx must end in .onnx" in res.output and model.read_bytes() == b"x"
    os.mkfifo(tmp_path / "pipe.html")
    for dest in (model, x, tmp_path / "pipe.html"):
        res = cli("report", str(tmp_path), "--out", str(dest))
        assert res.exit_code == 1, (dest, res.output)
    assert model.read_bytes() == b"x" and (tmp_path / "pipe.html").is_fifo()


def test_names_that_are_too_long_or_hold_escape_codes(tmp_path, red_cli):
    """Regression: one over-long path in a list ended the whole run; escape codes in a file name reached the
    terminal raw (colours, a cleared screen)."""
    esc = tmp_path / "esc"
    photo(esc / "a\x1b[31mRED\x1b[0m.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{'x' * 5000}.jpg\n{esc / 'a'}\x1b[31mRED\x1b[0m.png\n")
    res = cli("predict", str(listing), "--crops", "--model", str(red_cli))
    assert res.exit_code == 0 and "\x1b" not in res.output, res.output
    assert "a\\x1b[31mRED" in res.output and "File name too long" in res.output


def test_training_values_past_any_sane_range_are_one_line(tmp_path):
    """Regression: lr .inf, lr 1e300, seed -1 or 10**23 and batch size 10**23 crashed mid-run with a traceback."""
    data = tmp_path / "data"
    real_and_fake_photos(data)
    for train in ({"lr": float("inf")}, {"lr": 1e300}, {"seed": -1}, {"seed": 10**23}, {"batch_size": 10**23},
                  {"weight_decay": float("inf")}):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"train": {"mode": "head", **train}}))
        res = cli("train", str(data), "--out", str(tmp_path / "run"), "--config", str(recipe))
        assert res.exit_code == 1 and "r.yaml: not a dfdetect recipe: train." in " ".join(res.output.split()), train


def test_a_model_url_that_is_a_device_is_refused(tmp_path):
    from dfdetect.model import hub

    with pytest.raises(WeightsError, match="no such regular file"):
        hub.resolve("file:///dev/zero")
    assert not (tmp_path / "hf").exists()


def test_nothing_usable_says_why(tmp_path, tiny_model):
    """Regression: a folder whose only metadata.json was unreadable said only 'no labelled videos or images'."""
    d = tmp_path / "dfdc"
    d.mkdir()
    (d / "metadata.json").write_text("[" * 100_000)
    res = cli("evaluate", str(tiny_model), str(d), "--out", str(tmp_path / "ev"))
    assert res.exit_code == 1 and "metadata.json: cannot read metadata" in res.output, res.output


def test_train_into_a_users_own_folder_is_refused_and_touches_nothing(tmp_path):
    """Regression: ``train -o`` a folder of the user's own (their config.yaml, their notes) wrote config.yaml,
    history.json and the detector over them; a run folder had nothing to tell it from theirs."""
    from dfdetect.rundir import RUN_STAMP, RunDir

    data = tmp_path / "data"
    real_and_fake_photos(data)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own settings\n")
    (mine / "notes.txt").write_text("keep me")
    res = cli("train", str(data), "--out", str(mine), "--mode", "head", "--epochs", "1")
    assert res.exit_code == 1 and "holds files (config.yaml, notes.txt) but no .dfdetect-run" in \
        " ".join(res.output.split()), res.output
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "notes.txt"]
    assert (mine / "config.yaml").read_text() == "my: own settings\n"
    # a new, an empty and a stamped folder are run folders; so is one from before the stamp (it has a history)
    for name, files in (("new", None), ("empty", []), ("hidden", [".DS_Store"]), ("old", ["history.json"])):
        run = tmp_path / name
        if files is not None:
            run.mkdir()
            for f in files:
                (run / f).write_text("{}")
        RunDir(run).claim()
        assert (run / RUN_STAMP).is_file()
        (run / "config.yaml").write_text("x")
        RunDir(run).claim()  # claimed already: its own files are no reason to refuse it
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RUN_STAMP).mkdir()
    with pytest.raises(BadInputError, match="not a regular file"):
        RunDir(tmp_path / "bad").claim()
