"""scan: many files in one process, a process pool and Ray give the same lines; a killed run resumes.

The model is a real (untrained, 32 px) MobileNetV2 detector saved to a file, and the videos come from
the built-in synthetic data, whose faces Haar finds: every engine loads the same file in its own
processes, so no stand-in can be patched in and the comparison is of real work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfdetect.config import FaceConfig, ModelConfig, Protocol, SynthConfig
from dfdetect.errors import DfdetectError
from dfdetect.inference.scan import read_done, scan
from dfdetect.preprocess.stage import StageReport

FRAMES = 4
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from dfdetect.model.backbones import create_backbone
    from dfdetect.model.detector import Detector

    proto = Protocol.seed().model_copy(update={"model": ModelConfig(pretrained=False, input_size=32, tta_flip=False, ensemble=1, pool="max"),
                                               "faces": FaceConfig(detector="haar", min_size=64)})
    net = create_backbone("mobilenet_v2", pretrained=False, num_classes=1)
    return Detector.from_model(net, proto, 0.5).save(tmp_path_factory.mktemp("model") / "detector.safetensors")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    from dfdetect.synthetic.synth import make_synthetic_celebdf

    cfg = SynthConfig(identities=2, videos_per_identity=2, fakes_per_identity=1, youtube_videos=0, frames=FRAMES,
                      frame_size=192, face_size=96)
    root = make_synthetic_celebdf(tmp_path_factory.mktemp("synth") / "celebdf", cfg)
    return sorted(Path(root).rglob("*.mp4"))


def media_dir(dest: Path, videos: list[Path], copies: int = 1) -> Path:
    """``copies`` of each video under dest/a and dest/b (so same names in two folders)."""
    for i in range(copies):
        for j, v in enumerate(videos):
            sub = dest / ("a" if j % 2 else "b")
            sub.mkdir(parents=True, exist_ok=True)
            shutil.copy(v, sub / f"{v.stem}-{i}.mp4")
    return dest


def by_file(lines) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for line in lines:
        assert line["file"] not in out, f"{line['file']} twice"
        out[line["file"]] = line
    return out


def assert_same(a, b, path="") -> None:
    """Equal, scores to 1e-5 (1 thread in a worker, 2 in process: float sums in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, abs=1e-5), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, model, videos):
    """The folder, and its lines from one process and from a pool of 2."""
    folder = media_dir(tmp_path_factory.mktemp("media"), videos)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker: on a busy 2-core box two spinning OpenMP threads are many times slower
    try:
        here = by_file(scan([folder], model, frames=FRAMES, workers=0))
    finally:
        torch.set_num_threads(threads)
    pool = by_file(scan([folder], model, frames=FRAMES, workers=2))
    return folder, here, pool


def test_pool_of_two_gives_the_in_process_results(scanned, videos):
    _, here, pool = scanned
    assert len(here) == len(videos) and set(here) == set(pool)
    assert all("error" not in line for line in here.values())
    assert sum(line["faces"] for line in here.values()) > 0  # Haar found the synthetic faces: real scoring
    for f in here:
        assert_same(here[f], pool[f], f)


def test_local_ray_gives_the_pool_results(scanned, model):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install dfdetect[ray])")
    folder, _, pool = scanned
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = by_file(scan([folder], model, frames=FRAMES, engine="ray", workers=2))
    finally:
        ray.shutdown()
    assert set(on_ray) == set(pool)
    for f in pool:
        assert_same(pool[f], on_ray[f], f)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_killed_run_then_rerun_scores_every_file_exactly_once(tmp_path, model, videos):
    folder = media_dir(tmp_path / "in", videos, copies=8)
    before = sorted(p for p in tmp_path.rglob("*"))
    total = len(videos) * 8
    out = tmp_path / "out" / "scan.jsonl"
    cmd = [sys.executable, "-m", "dfdetect", "predict", str(folder), "--model", str(model), "--frames",
           str(FRAMES), "--jsonl", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([*cmd, "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = out.read_bytes().count(b"\n")
    assert 3 <= first < total, f"the kill came too late to test a resume ({first} of {total} lines)"
    report = StageReport("scan", out.parent)  # the rerun: the same scan, through the API (one CLI start less)
    list(scan([folder], model, frames=FRAMES, jsonl=out, report=report))
    assert report.reused == first and report.written == total - first and report.failed == []
    lines = _lines(out)
    assert len(lines) == total and len(by_file(lines)) == total  # every file, once
    assert {Path(line["file"]) for line in lines} == set(folder.rglob("*.mp4"))
    # nothing written beside the inputs; the output folder holds the jsonl only
    assert sorted(p for p in tmp_path.rglob("*") if p.parent != out.parent and p != out.parent) == before
    assert [p.name for p in out.parent.iterdir()] == ["scan.jsonl"]


def test_bad_file_is_one_error_line_counted_and_the_scan_goes_on(tmp_path, model, videos):
    from dfdetect.cli import app

    good = [shutil.copy(v, tmp_path / v.name) for v in videos[:2]]
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the files\n{Path(good[0]).name}\nbroken.mp4\n\n{good[1]}\nmissing.mp4\n")
    out = tmp_path / "out" / "scan.jsonl"
    r = CliRunner().invoke(app, ["predict", str(listing), "--model", str(model), "--frames", str(FRAMES),
                                 "--jsonl", str(out)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    lines = by_file(_lines(out))
    assert set(lines) == {str(tmp_path / n) for n in (Path(good[0]).name, "broken.mp4", Path(good[1]).name,
                                                       "missing.mp4")}
    errors = {f: line["error"] for f, line in lines.items() if "error" in line}
    assert set(errors) == {str(tmp_path / "broken.mp4"), str(tmp_path / "missing.mp4")}
    assert all("\n" not in e and Path(f).name in e for f, e in errors.items())
    assert "skipped:" in r.output and "broken.mp4" in r.output and "missing.mp4" in r.output
    assert "2 failed" in r.output and "Traceback" not in r.output
    # a rerun redoes no result, and tries the failed files again (hostile run 4: a file missing then, or a limit
    # since changed, stayed failed for ever): the one that has come is scored, its new line the answer
    shutil.copy(videos[0], tmp_path / "missing.mp4")
    again = CliRunner().invoke(app, ["predict", str(listing), "--model", str(model), "--frames", str(FRAMES),
                                     "--jsonl", str(out)], env={"COLUMNS": "300"})
    assert again.exit_code == 0 and "2 done by an earlier run" in again.output, again.output
    assert "2 file(s) with an error line" in again.output and len(_lines(out)) == 6
    last = {line["file"]: line for line in _lines(out)}  # the last line for a file is its answer
    assert "error" not in last[str(tmp_path / "missing.mp4")] and "error" in last[str(tmp_path / "broken.mp4")]


def test_cli_scan_without_jsonl_prints_the_verdict_table(tmp_path, model, videos):
    """Regression: ``predict A B --workers 2`` (no --jsonl) died with a TypeError printing its table, a local
    count having shadowed the name-escaping function (found by bench/serve_load.py)."""
    from dfdetect.cli import app

    good = [shutil.copy(v, tmp_path / v.name) for v in videos[:2]]
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    r = CliRunner().invoke(app, ["predict", *map(str, good), str(tmp_path / "broken.mp4"), "--model", str(model), "--frames",
                                 str(FRAMES), "--workers", "2"], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "dfdetect predict" in r.output and all(Path(g).name in r.output for g in good)
    assert "1 failed" in r.output and r.output.count("broken.mp4") == 1  # its line once, not again at the end


def test_resume_cuts_a_torn_last_line_and_redoes_only_that_file(tmp_path, model, videos):
    folder = media_dir(tmp_path / "in", videos[:3])
    out = tmp_path / "scan.jsonl"
    first = list(scan([folder], model, frames=FRAMES, jsonl=out))
    data = out.read_bytes()
    out.write_bytes(data[:-40])  # a kill in the middle of the last line
    torn_file = first[-1]["file"]
    report = StageReport("scan", tmp_path)
    again = list(scan([folder], model, frames=FRAMES, jsonl=out, report=report))
    assert [line["file"] for line in again] == [torn_file]
    assert report.written == 1 and report.reused == 2 and "torn" in report.notes[0]
    lines = _lines(out)  # every line parses: the torn one was cut off, not glued to the next
    assert len(by_file(lines)) == 3
    assert_same(by_file(lines)[torn_file], first[-1])
    assert read_done(out) == ({(x["file"], x["model_sha256"], FRAMES, False) for x in lines}, 0)
    # another model or other settings would mix two runs' results in one file: refused, naming the difference
    for kwargs, what in (({"frames": FRAMES + 1}, f"frames {FRAMES} (now {FRAMES + 1})"),
                         ({"frames": FRAMES, "crops": True}, "crops False (now True)")):
        with pytest.raises(DfdetectError, match=re.escape(what)):
            list(scan([folder], model, jsonl=out, **kwargs))
    assert len(_lines(out)) == 3 and list(scan([folder], model, frames=FRAMES, jsonl=out)) == []
