"""The one stage runner: every stage gets the same folder policy, stamp, crash lines and sums."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from dfdetect.config import FaceConfig, FrameConfig
from dfdetect.data.labels import Label
from dfdetect.data.sources import MediaItem
from dfdetect.errors import BadInputError, DfdetectError
from dfdetect.preprocess import faces as FA
from dfdetect.preprocess import frames as F
from dfdetect.preprocess.stage import STAMP, JobResult, Stage, run_stage


@dataclass
class Squares(Stage[int]):
    """A toy stage: job k writes k*k to ``k.txt``; job 3 crashes."""

    name: ClassVar[str] = "squares"
    src: Path
    out_dir: Path
    power: int = 2

    def settings(self) -> dict:
        return {"power": self.power}

    def inputs(self) -> list[Path]:
        return [self.src]

    def plan(self) -> list[int]:
        return [1, 2, 3, 4]

    def source(self, job: int) -> Path:
        return self.src / f"{job}.in"

    def run_job(self, job: int) -> JobResult:
        if job == 3:
            raise RuntimeError("boom")
        dest = self.out_dir / f"{job}.txt"
        if dest.is_file():
            return JobResult(reused=1)
        dest.write_text(str(job ** self.power))
        return JobResult(written=1, rows=[{"job": job}])

    def finish(self, report, jobs, results) -> None:
        report.notes.append(f"{sum(len(r.rows) for r in results)} rows from {len(jobs)} jobs")


def test_runner_sums_names_crashes_and_resumes(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (out / ".sub").mkdir(parents=True)
    (out / ".sub" / ".x.png.dfdetect-tmp-abcd1234.png").write_bytes(b"torn")  # a killed run's temp file
    report = run_stage(Squares(src, out))
    assert (report.written, report.reused) == (3, 0)
    assert report.failed == [f"{src / '3.in'}: failed (RuntimeError: boom); skipped"]
    assert any("removed 1 temp file" in n for n in report.notes) and "3 rows from 4 jobs" in report.notes
    assert json.loads((out / STAMP).read_text()) == {"stage": "squares", "settings": {"power": 2}}
    again = run_stage(Squares(src, out))
    assert (again.written, again.reused, len(again.failed)) == (0, 3, 1)


def test_runner_refuses_a_folder_made_with_other_settings_or_by_another_stage(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    run_stage(Squares(src, out))
    with pytest.raises(BadInputError, match=r"other squares settings \(power: 2 -> 3\)"):
        run_stage(Squares(src, out, power=3))
    assert (out / "2.txt").read_text() == "4"  # nothing was touched
    (out / STAMP).write_text(json.dumps({"stage": "frames", "settings": {}}))
    with pytest.raises(BadInputError, match="made by the 'frames' stage"):
        run_stage(Squares(src, out))


def test_runner_keeps_output_and_inputs_apart(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(BadInputError, match="inside the squares input folder"):
        run_stage(Squares(src, src / "out"))
    with pytest.raises(BadInputError, match="inside the squares input folder"):
        run_stage(Squares(src, src))
    with pytest.raises(BadInputError, match="holds the input"):
        run_stage(Squares(src, tmp_path))
    assert not (src / "out").exists() and not (tmp_path / STAMP).exists()


def test_faces_with_another_margin_is_refused_not_mixed(tmp_path, monkeypatch):
    """Before the runner, a rerun with another margin detected again but kept the old crops as 'reused' (same
    names): a folder of crops cut at two margins."""
    frames = tmp_path / "frames" / "v"
    frames.mkdir(parents=True)
    img = np.zeros((200, 200, 3), np.uint8)
    cv2.rectangle(img, (60, 60), (140, 140), (200, 200, 200), -1)
    cv2.imwrite(str(frames / "00000.png"), img)

    FA._WORKER_DETECTORS.clear()
    monkeypatch.setitem(FA._DETECTORS, "haar", lambda cfg: lambda bgr: [FA.Box(60, 60, 140, 140, 1.0)])
    cfg = FaceConfig(detector="haar", min_size=10, margin=1.0)
    out = tmp_path / "faces"
    try:
        report = FA.extract_faces(tmp_path / "frames", out, cfg)
        assert report.written == 1 and report.out_dir == out  # the folder as given, not made absolute
        with pytest.raises(BadInputError, match=r"other faces settings \(margin: 1.0 -> 1.3\)"):
            FA.extract_faces(tmp_path / "frames", out, cfg.model_copy(update={"margin": 1.3}))
        with pytest.raises(DfdetectError, match="unknown face detector 'haarr'"):  # not "other settings"
            FA.extract_faces(tmp_path / "frames", out, cfg.model_copy(update={"detector": "haarr"}))
    finally:
        FA._WORKER_DETECTORS.clear()


def test_frames_with_other_settings_is_refused(tmp_path):
    from test_frames import make_video

    video = make_video(tmp_path / "a.mp4", n=12)
    item = MediaItem(video, "a.mp4", Label.REAL, ("a",))
    out = tmp_path / "frames"
    assert F.extract_frames([item], out, FrameConfig(num_frames=3, test_frames=None)).written == 3
    with pytest.raises(BadInputError, match=r"other frames settings \(num_frames: 3 -> 4\)"):
        F.extract_frames([item], out, FrameConfig(num_frames=4, test_frames=None))
    assert sorted(p.name for p in (out / "a").glob("*.png")) == ["00000.png", "00006.png", "00011.png"]


def test_only_the_planned_stage_travels_to_workers(tmp_path):
    """Regression: every pool job pickled the whole item list with the stage (quadratic in the items)."""
    import pickle

    from dfdetect._io import media_limits

    items = [MediaItem(tmp_path / f"v{i}.mp4", f"v{i}.mp4", Label.REAL, (f"v{i}",)) for i in range(2000)]
    stage = F.FramesStage(items, Path("rel/out"), FrameConfig(), media_limits(None))
    worker = stage.for_workers()
    assert worker.items == [] and worker.out_dir.is_absolute() and len(pickle.dumps(worker)) < 2000
    assert stage.items is items and stage.out_dir == Path("rel/out")  # the parent's copy is untouched


def test_synth_that_cannot_write_its_videos_says_so(tmp_path, monkeypatch):
    """Regression: a job's failure (a full disk) was summed into a report nobody read, and a manifest and test
    list vouched for videos that were not there."""
    from dfdetect.config import SynthConfig
    from dfdetect.synthetic import synth as S

    def full(dest, frames, cfg):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S, "_write_mp4", full)
    cfg = SynthConfig(identities=2, videos_per_identity=1, fakes_per_identity=1, youtube_videos=0, frames=4)
    with pytest.raises(DfdetectError, match="videos could not be written; first: .*No space left"):
        S.make_synthetic_celebdf(tmp_path / "synth", cfg)
    assert not (tmp_path / "synth" / S.MANIFEST).exists()
