"""Faces straight from videos: the ``frames`` and ``faces`` stages in one pass, with no frame files between.

Why: with the default protocol's lossless PNG frames, writing and reading back the frames cost more than
decoding and finding the faces (docs/SPEED.md). Each video's sampled frames are decoded into memory (PyAV,
seeking, as ``frames`` does), its faces found in batches, and only the crops written. With PNG frames the
crops and ``manifest.csv`` are the very bytes ``frames`` then ``faces`` would write (tested), so everything that
reads a faces folder takes this one.

Resumable per video: a record (``.video-faces.json``) lists the rows of a finished video, trusted only for the
same source file (size and mtime) and settings; a video killed half way is decoded again and keeps the crops
it had written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from dfdetect._io import inside, media_limits, write_json
from dfdetect.config import FaceConfig, FrameConfig, MediaLimits
from dfdetect.data.sources import MediaItem
from dfdetect.errors import BadInputError, failure_line
from dfdetect.parallel import Engine, ProgressCallback
from dfdetect.preprocess.faces import (
    DETECT_CHUNK,
    check_detector,
    crop_chunk,
    finish_manifest,
    worker_detector,
)
from dfdetect.preprocess.frames import frame_name, lost_line, read_selected, sample_indices, source_stamp
from dfdetect.preprocess.stage import JobResult, Stage, StageReport, run_stage

__all__ = ["RECORD", "VideoFacesJob", "VideoFacesStage", "extract_video_faces"]

RECORD = ".video-faces.json"  #: per video: the settings, the source's stamp and the manifest rows


@dataclass(frozen=True)
class VideoFacesJob:
    """One video (or image) and its frame settings (test-list items may take more frames)."""

    src: str  #: absolute, as in FramesJob
    video_id: str
    frames: FrameConfig


@dataclass
class VideoFacesStage(Stage[VideoFacesJob]):
    """Face crops of every item's sampled frames, to ``out_dir/<video_id>/<frame:05d>.<ext>``, plus the manifest."""

    name: ClassVar[str] = "faces"
    items: list[MediaItem]
    out_dir: Path
    frames: FrameConfig
    cfg: FaceConfig
    limits: MediaLimits

    def settings(self) -> dict[str, Any]:
        # the crops depend on the sampling and on the frames' scaling as well as on the face settings
        return {**self.cfg.model_dump(mode="json"), "from_videos": self.frames.model_dump(mode="json"),
                "max_frame_side": self.limits.max_frame_side}

    def inputs(self) -> list[Path]:
        return [Path(it.path) for it in self.items]

    def plan(self) -> list[VideoFacesJob]:
        check_detector(self.cfg.detector)  # before starting any worker
        return [VideoFacesJob(os.path.abspath(it.path), it.video_id, self.frames.for_item(it.is_test))
                for it in self.items]

    def source(self, job: VideoFacesJob) -> Path:
        return Path(job.src)

    def for_workers(self) -> VideoFacesStage:
        return replace(super().for_workers(), items=[])  # planned already: the items need not ride every job

    def _record_key(self, job: VideoFacesJob) -> str:
        return f"{self.cfg.model_dump_json()}|{job.frames.model_dump_json()}|{self.limits.max_frame_side}"

    def run_job(self, job: VideoFacesJob) -> JobResult:
        """Decode the video's sampled frames, crop their faces, then write its record."""
        src, result = Path(job.src), JobResult()
        try:
            video_out = inside(self.out_dir, job.video_id)
        except BadInputError as exc:
            result.failed.append(f"{src}: {exc}")
            return result
        record, key = video_out / RECORD, self._record_key(job)
        done = self._reuse(record, key, src)
        if done is not None:
            return done
        wanted: list[int] = []

        def select(total: int) -> list[int]:
            wanted[:] = sample_indices(total, job.frames.num_frames)
            return wanted

        try:
            got = dict(read_selected(src, select, self.limits))
            detector = worker_detector(self.cfg)
            ext = job.frames.image_format
            found = [i for i in wanted if i in got]
            for start in range(0, len(found), DETECT_CHUNK):
                chunk = found[start:start + DETECT_CHUNK]
                crop_chunk([(frame_name(i, ext), got[i], "", f"{src} frame {i}") for i in chunk], detector, self.cfg,
                           out_root=self.out_dir, video_id=job.video_id, result=result)
                for i in chunk:
                    del got[i]  # a chunk's frames are done: memory stays at one chunk (~45 MB at 720p), not a video
            lost = [i for i in wanted if i not in found]
            if lost:
                result.failed.append(lost_line(src, lost, len(wanted)))
            write_json(record, {"key": key, "source_stamp": source_stamp(src), "rows": result.rows,
                                "failed": result.failed})
        except BadInputError as exc:
            result.failed.append(str(exc))
        except OSError as exc:  # e.g. the output disk is full: name the file, skip, go on
            result.failed.append(f"{src}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, is one line; the stage goes on
            result.failed.append(failure_line(src, exc))
        return result

    def _reuse(self, record: Path, key: str, src: Path) -> JobResult | None:
        """What a finished video's record vouches for: its rows, if it is this very file, these settings, and
        every crop it lists is still there."""
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("key") != key or data.get("source_stamp") != source_stamp(src):
            return None
        rows, failed = data.get("rows"), data.get("failed")
        if not isinstance(rows, list) or not isinstance(failed, list) or not all(isinstance(r, dict) for r in rows):
            return None
        crops = [self.out_dir / str(r.get("path")) for r in rows if r.get("status") == "ok"]
        if not all(c.is_file() and c.stat().st_size > 0 for c in crops):
            return None
        return JobResult(reused=len(crops), rows=rows, failed=[str(f) for f in failed])

    def finish(self, report: StageReport, jobs: list[VideoFacesJob], results: list[JobResult]) -> None:
        frames = {(row.get("video_id"), row.get("frame")) for r in results for row in r.rows}
        finish_manifest(self.out_dir, report, results, len(frames))


def extract_video_faces(
    items: list[MediaItem],
    out_dir: str | Path,
    frames: FrameConfig,
    faces: FaceConfig,
    *,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    limits: MediaLimits | None = None,
) -> StageReport:
    """Crop the faces of ``frames.num_frames`` sampled frames of every item (``frames.test_frames`` for items of
    the official test list) into ``out_dir/<video_id>/``, with ``manifest.csv``; no frame files are written.

    A bad video is one line in ``report.failed``; frames without a face are lines too, and rows of the
    manifest. ``progress(1)`` is called per item.
    """
    stage = VideoFacesStage(list(items), Path(out_dir), frames, faces, media_limits(limits))
    return run_stage(stage, workers=workers, engine=engine, ray_address=ray_address, progress=progress)
