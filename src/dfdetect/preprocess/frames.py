"""Video -> N evenly spaced frames, decoded by seeking (PyAV).

Why seeking: the seed read every frame with ``cv2.VideoCapture`` up to the one it wanted, converting
each to BGR. Here the packets are indexed first (demuxing only, no decoding: a few ms), then for each
wanted frame the decoder jumps to the keyframe before it and decodes forward to exactly that frame.
Frames that are not wanted are never converted to BGR, and non-reference frames that are not wanted
are not even decoded (``skip_frame="NONREF"``): no other frame depends on them.

Frame identity is defined as a sequential decode defines it: frame ``i`` is the ``i``-th frame in
presentation order. The packet index gives that order exactly (sorted packet timestamps), also when
the container does not store a frame count (``stream.frames == 0``, e.g. Matroska/WebM). Streams
without packet timestamps fall back to a plain sequential decode.

Output layout: ``out_dir/<video_id>/<frame:05d>.<png|jpg>``, plus a small ``.frames.json`` marker per
video, written last, so a resumed run does not even open a finished video.

Why not torchcodec (``VideoDecoder.get_frames_at``) on the torch-installed path: it gives the same pixels, but was
slower than this decoder on every video measured (``bench/decode.py``, docs/SPEED.md).

Why one file: the seeking decoder and the stage that writes its frames share the packet index and the
done-marker's notion of a frame; split, the marker's check would reach into the decoder's internals.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import av
import numpy as np

from dfdetect._io import (
    inside,
    is_valid_image,
    load_image,
    media_limits,
    read_image,
    regular_file,
    write_image,
    write_json,
)
from dfdetect.config import FrameConfig, MediaLimits
from dfdetect.data.labels import IMAGE_SUFFIXES
from dfdetect.data.sources import MediaItem
from dfdetect.errors import BadInputError, failure_line
from dfdetect.parallel import Engine, ProgressCallback, in_worker
from dfdetect.preprocess.stage import JobResult, Stage, StageReport, run_stage

__all__ = [
    "DONE_MARKER",
    "count_frames",
    "extract_frames",
    "frame_name",
    "read_frames",
    "read_frames_at",
    "sample_indices",
]

#: Per-video marker, written atomically after all its frames: a rerun trusts it and skips the video.
DONE_MARKER = ".frames.json"


def sample_indices(total: int, n: int) -> list[int]:
    """Indices of ``n`` frames out of ``total``: the first frame for ``n == 1`` (the seed), else
    ``np.linspace(0, total - 1, n)`` rounded, i.e. evenly spaced over the whole video, first and last
    included. Fewer than ``n`` come back when the video is shorter than ``n`` frames (no duplicates).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if total <= 0:
        return []
    if n == 1:
        return [0]
    return sorted({int(i) for i in np.rint(np.linspace(0, total - 1, n))})


def frame_name(index: int, ext: str) -> str:
    return f"{index:05d}.{ext}"


# --------------------------------------------------------------------------- decoding


@dataclass
class _PacketIndex:
    """Video packets in decode order: what seeking needs, read without decoding anything. Typed arrays, not lists:
    about 17 bytes a packet instead of about 90 (a video may hold a million)."""

    pts: array = field(default_factory=lambda: array("q"))  #: per packet, decode order
    seek_ts: array = field(default_factory=lambda: array("q"))  #: min(pts, dts): a timestamp seek lands at or before
    key: bytearray = field(default_factory=bytearray)
    sequential_only: bool = False  #: some packet had no pts: only a sequential decode is trustworthy

    @property
    def frame_pts(self) -> list[int]:
        """Presentation order: frame i of a sequential decode has timestamp ``frame_pts[i]``."""
        return sorted(self.pts)


def _open(path: Path, limits: MediaLimits) -> av.container.InputContainer:
    if regular_file(path) == 0:  # a named pipe would block av.open forever
        raise BadInputError("empty file (0 bytes), not a video", path=path)
    # max_pixels: FFmpeg decodes a frame while probing, so a PNG "video" declaring 16000 x 16000 would take
    # 800 MB before our own check below; with it the decoder refuses such frames (probing, then decoding).
    limit = {"max_pixels": str(limits.max_pixels)}
    try:
        container = av.open(str(path), mode="r", options=limit)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise BadInputError(f"cannot open as a video ({_reason(exc)})", path=path) from None
    if not container.streams.video:
        container.close()
        raise BadInputError("no video stream in the file", path=path)
    cc = video_stream(container).codec_context
    cc.options = limit
    if (cc.width or 0) * (cc.height or 0) > limits.max_pixels:
        container.close()
        raise BadInputError(f"declares {cc.width} x {cc.height} frames ({cc.width * cc.height / 1e6:.0f} MP), above "
                            f"the {limits.max_pixels / 1e6:g} MP limit ({MediaLimits.ENV['max_pixels']}); not decoded",
                            path=path)
    return container


def video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The stream the ``ffmpeg`` tool would take: the largest video stream that is not a cover picture, not simply
    the first (a 64 x 64 black stream before the real one gave "no face"). FFmpeg's ``av_find_best_stream``
    does not weigh the size, so it is not used."""
    streams = list(container.streams.video)
    moving = [s for s in streams if not (int(s.disposition) & int(av.stream.Disposition.attached_pic))] or streams
    return max(moving, key=lambda s: (s.codec_context.width or 0) * (s.codec_context.height or 0))


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)  # FFmpegError: "Invalid data found when ..."
    return str(text).strip() or type(exc).__name__


def _index(container: av.container.InputContainer, stream: av.VideoStream, limits: MediaLimits,
           path: Path) -> _PacketIndex:
    idx = _PacketIndex()
    packets = 0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # flush packet / frames an edit list hides
            continue
        packets += 1
        if packets > limits.max_video_frames:
            raise BadInputError(f"holds more than {limits.max_video_frames:,} frames, the limit "
                                f"({MediaLimits.ENV['max_video_frames']}); not decoded", path=path)
        if packet.pts is None:
            idx.sequential_only = True
            continue
        idx.pts.append(packet.pts)
        idx.seek_ts.append(packet.pts if packet.dts is None else min(packet.pts, packet.dts))
        idx.key.append(bool(packet.is_keyframe))
    if np.unique(np.frombuffer(idx.pts, np.int64)).size != len(idx.pts) or (idx.pts and not idx.key[0]):
        idx.sequential_only = True  # duplicate timestamps, or no keyframe to start from
    return idx


#: A display matrix's rotation (counter-clockwise degrees, as FFmpeg's ``av_display_rotation_get``) -> the
#: quarter turns counter-clockwise (``np.rot90``) that show the frame as players do, FFmpeg's autorotate among them.
_UPRIGHT = {90: 1, 180: 2, 270: 3}


def _bgr(frame: av.VideoFrame, max_side: int | None = None) -> np.ndarray:
    """The frame as BGR uint8, scaled down (area filter, aspect kept) so its longer side is at most
    ``max_side`` (an 8K frame is 100 MB as BGR, and no stage needs more than ``max_side`` pixels), and turned
    upright: a phone's portrait video is stored sideways with a rotation to show it by, and its faces lay on
    their side, so none was found."""
    w, h = frame.width, frame.height
    if max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)
        image = frame.to_ndarray(format="bgr24", width=max(1, round(w * s)), height=max(1, round(h * s)),
                                 interpolation="AREA")
    else:
        image = frame.to_ndarray(format="bgr24")
    turn = _UPRIGHT.get(round(getattr(frame, "rotation", 0) or 0) % 360)
    return image if turn is None else np.ascontiguousarray(np.rot90(image, turn))


def _decode_sequential(container, stream, wanted: set[int], max_side: int | None = None,
                       budget: int | None = None) -> dict[int, np.ndarray]:
    """Frame i = i-th decoded frame. Slow but needs no timestamps; the fallback and the test oracle. At most
    ``budget`` frames are decoded: the wanted ones past it are lost."""
    container.seek(0)
    out: dict[int, np.ndarray] = {}
    try:
        for i, frame in enumerate(container.decode(stream)):
            if budget is not None and i >= budget:
                break
            if i in wanted:
                out[i] = _bgr(frame, max_side)
                if len(out) == len(wanted):
                    break
    except av.FFmpegError:  # damaged from here on (a truncated file): the frames before it still count
        pass
    return out


def _decode_seeking(container, stream, idx: _PacketIndex, wanted: list[int],
                    stats: dict[str, int] | None = None, max_side: int | None = None,
                    budget: int | None = None) -> dict[int, np.ndarray]:
    """Seek to the keyframe before each wanted frame and decode forward to it (see module docstring); stop after
    ``budget`` packets sent to the decoder, with the frames found so far.

    ``stats``, if given, counts ``packets`` sent to the decoder and ``seeks`` (tests and benchmarks).
    """
    stats = {} if stats is None else stats
    stats.setdefault("packets", 0)
    stats.setdefault("seeks", 0)
    frame_pts = idx.frame_pts
    target_pts = {frame_pts[i]: i for i in wanted}
    order_of = {p: k for k, p in enumerate(idx.pts)}  # pts -> decode-order position
    keys = [k for k, is_key in enumerate(idx.key) if is_key]
    # The decode-order position a wanted frame's decode must start from: the last keyframe before
    # the frame's own packet. Frames whose packet sits before the keyframe in decode order but after
    # it in presentation order cannot occur from that keyframe on (closed or open GOP alike).
    start_of = {p: keys[bisect.bisect_right(keys, order_of[p]) - 1] for p in target_pts}

    cc = stream.codec_context
    out: dict[int, np.ndarray] = {}
    need = set(target_pts)
    pos = -1  # decode-order position of the last packet sent to the decoder
    packets = None
    tried_from: set[int] = set()
    while need:
        t = min(need)
        start = start_of[t]
        if packets is None or start > pos:
            if start in tried_from:  # decoded from this keyframe already and never saw t: give up on t
                need.discard(t)
                continue
            tried_from.add(start)
            packets = _seek(container, stream, idx, start, order_of, keys)
            stats["seeks"] += 1
            pos = -1
        ended = True
        for packet in packets:
            if packet.size == 0:  # PyAV's flush packet at the end of the stream
                continue
            if packet.is_discard or packet.pts is None:
                continue
            pos = order_of.get(packet.pts, pos)
            # Non-reference frames nobody asked for are skipped: nothing else refers to them.
            cc.skip_frame = "DEFAULT" if packet.pts in need else "NONREF"
            stats["packets"] += 1
            if budget is not None and stats["packets"] > budget:
                cc.skip_frame = "DEFAULT"
                return out
            try:
                frames = cc.decode(packet)
            except av.FFmpegError:  # a corrupt packet: its frame is lost, the rest may decode
                frames = []
            _collect(frames, need, target_pts, out, max_side)
            if t not in need:
                ended = False
                break
        if ended:  # end of stream: flush what the decoder still holds; the rest cannot be had from here
            cc.skip_frame = "DEFAULT"
            try:
                _collect(cc.decode(None), need, target_pts, out, max_side)
            except av.FFmpegError:  # a truncated last packet: keep the frames already decoded
                pass
            packets = None
            need = {p for p in need if start_of[p] not in tried_from}
    cc.skip_frame = "DEFAULT"
    return out


def _seek(container, stream, idx: _PacketIndex, start: int, order_of: dict[int, int], keys: list[int]):
    """Packets from the keyframe at decode position ``start`` (or an earlier one), never a later one.

    Containers seek on different timestamps (MP4: dts shifted by the edit list; Matroska: pts), so
    try the keyframe's pts, then its dts, then earlier keyframes, and check where each try landed.
    """
    earlier = [k for k in keys if k < start][::-1]
    for ts in [idx.pts[start], idx.seek_ts[start], *(idx.seek_ts[k] for k in earlier[:2])]:
        container.seek(ts, stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        first = next((p for p in packets if p.size and p.pts is not None), None)
        if first is not None and order_of.get(first.pts, len(order_of)) <= start:
            return itertools.chain([first], packets)
    container.seek(min(idx.seek_ts), stream=stream, backward=True, any_frame=True)  # from the top
    return container.demux(stream)


def _collect(frames, need: set[int], target_pts: dict[int, int], out: dict[int, np.ndarray],
             max_side: int | None = None) -> None:
    for frame in frames:
        if frame.pts in need:
            out[target_pts[frame.pts]] = _bgr(frame, max_side)
            need.discard(frame.pts)


def _decode_at(container, stream, idx: _PacketIndex, wanted: list[int], max_side: int | None = None,
               budget: int | None = None) -> dict[int, np.ndarray]:
    """The wanted frames, by seeking (the sequential decode where timestamps cannot be trusted), decoding at most
    ``budget`` packets: a million frames after one keyframe held a worker for 50 s, so the frames past the budget
    are lost (named in the stage's line), not decoded at any cost."""
    # Each frame thread holds frames of its own: on a 16-core machine an 8K stream would hold ~2 GB that way
    frame_bytes = 1.5 * (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
    threads = int(_DECODER_BUDGET // max(8 * frame_bytes, 1))
    if in_worker() or threads <= 1:  # N workers already use the N cores
        stream.thread_count = 1
    else:
        if threads < (os.cpu_count() or 1):
            stream.thread_count = threads
        # Frame threads: x264 writes one slice per frame, so slice threads alone leave cores idle. FFmpeg
        # hands each packet's skip_frame to its frame thread (update_context_from_user), so the per-packet
        # NONREF skipping below stays exact; tests compare against a sequential decode.
        stream.thread_type = "AUTO"
    if idx.sequential_only:
        return _decode_sequential(container, stream, set(wanted), max_side, budget)
    stats: dict[str, int] = {}
    out = _decode_seeking(container, stream, idx, wanted, stats, max_side=max_side, budget=budget)
    missing = set(wanted) - set(out)
    left = None if budget is None else budget - stats["packets"]
    if missing and (left is None or left > 0):  # timestamps lied (rare, broken files): the sequential decode rules
        out.update(_decode_sequential(container, stream, missing, max_side, left))
    return out


#: Bytes the decoder's frame threads may hold together (about 8 YUV frames each, its own and references): an
#: 8K video decodes on 1 thread (280 MB peak RSS against 470 MB on 2), 4K on 4, 1080p on up to 16.
_DECODER_BUDGET = 400e6


def _count(container, stream, idx: _PacketIndex) -> int:
    if not idx.sequential_only:
        return len(idx.pts)
    container.seek(0)
    return sum(1 for _ in container.decode(stream))


def count_frames(path: str | Path, limits: MediaLimits | None = None) -> int:
    """Frames a sequential decode yields, without decoding (from the packet index) where possible."""
    path, limits = Path(path), media_limits(limits)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return 1 if read_image(path, limits) is not None else 0
    container = _open(path, limits)
    try:
        stream = video_stream(container)
        return _count(container, stream, _index(container, stream, limits, path))
    except av.FFmpegError as exc:
        raise BadInputError(f"cannot decode ({_reason(exc)})", path=path) from None
    finally:
        container.close()


def read_selected(path: Path, select: Callable[[int], list[int]], limits: MediaLimits | None = None
          ) -> list[tuple[int, np.ndarray]]:
    """Open once, count frames, ask ``select(total)`` which indices to decode, decode them.

    Any error of a decoder on this one file is a :class:`BadInputError` naming it: callers skip and count it.
    """
    limits = media_limits(limits)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = load_image(path, limits)
        return [(0, image)] if 0 in select(1) else []
    container = _open(path, limits)
    try:
        stream = video_stream(container)
        idx = _index(container, stream, limits, path)
        total = _count(container, stream, idx)
        if total == 0:
            raise BadInputError("no decodable video frames", path=path)
        wanted = sorted(i for i in select(total) if 0 <= i < total)
        frames = (_decode_at(container, stream, idx, wanted, limits.max_frame_side, limits.max_decoded_frames)
                  if wanted else {})
    except BadInputError:
        raise
    except av.FFmpegError as exc:
        raise BadInputError(f"cannot decode ({_reason(exc)})", path=path) from None
    except Exception as exc:  # noqa: BLE001 - PyAV raises more than FFmpegError on hostile files
        raise BadInputError(f"cannot decode ({type(exc).__name__}: {_reason(exc)})", path=path) from None
    finally:
        container.close()
    if wanted and not frames:
        raise BadInputError("no decodable video frames", path=path)
    return sorted(frames.items())


def read_frames(path: str | Path, n: int, limits: MediaLimits | None = None) -> list[tuple[int, np.ndarray]]:
    """``n`` evenly spaced frames of a video (see :func:`sample_indices`) as ``(index, bgr uint8)``.

    An image file is one frame, index 0. A missing, empty or undecodable file raises
    :class:`~dfdetect.errors.BadInputError` naming it. Frames that are wanted but cannot be decoded
    (a truncated file) are left out, so fewer than ``n`` may come back. Frames come back scaled down to
    ``limits.max_frame_side`` (see :class:`~dfdetect.config.MediaLimits`); images are never scaled.
    """
    return read_selected(Path(path), lambda total: sample_indices(total, n), limits)


def read_frames_at(path: str | Path, indices: list[int], limits: MediaLimits | None = None
                   ) -> list[tuple[int, np.ndarray]]:
    """Frames at explicit indices (out-of-range ones are ignored), decoded by seeking."""
    return read_selected(Path(path), lambda total: list(indices), limits)


# --------------------------------------------------------------------------- the stage


def source_stamp(src: Path) -> list[int]:
    """Size and mtime of the source: a marker is trusted only for the very file it was made from."""
    try:
        st = src.stat()
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


def _read_marker(video_dir: Path) -> dict:
    try:
        data = json.loads((video_dir / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _marker_ok(video_dir: Path, src: Path, cfg: FrameConfig) -> JobResult | None:
    """What a valid done-marker vouches for, or None if the video must be looked at.

    A video with frames that cannot be decoded gets a marker too (listing them), so a rerun reports
    it again from the marker instead of decoding the whole file once more.
    """
    data = _read_marker(video_dir)
    if (not data.get("complete", "frames" in data) or data.get("num_frames") != cfg.num_frames
            or data.get("format") != cfg.image_format or data.get("source_stamp", []) != source_stamp(src)):
        return None
    files = [video_dir / frame_name(i, cfg.image_format) for i in data.get("frames", [])]
    # Files are written atomically, so an existing non-empty file is complete; no need to decode it.
    if not all(f.is_file() and f.stat().st_size > 0 for f in files):
        return None
    lost = data.get("lost", [])
    if not files and not lost:
        return None
    return JobResult(reused=len(files), failed=[lost_line(src, lost, len(files) + len(lost))] if lost else [])


def lost_line(src: Path, lost: list[int], wanted: int) -> str:
    return (f"{src}: {len(lost)} of {wanted} wanted frames could not be decoded "
            f"(frames {lost[:5]}{'...' if len(lost) > 5 else ''})")


def _ours(marker: dict) -> set[str]:
    """Frame files an earlier run of this stage wrote (or was about to write) in this folder."""
    names = marker.get("written", [])
    return {n for n in names if isinstance(n, str) and "/" not in n and n != DONE_MARKER}


def _remove_unplanned(video_dir: Path, keep: set[str], ours: set[str]) -> None:
    """Drop frame files this plan does not list, left by an earlier version of the video (another
    length). Only files this stage recorded as its own are ever deleted: never a user's file."""
    for name in ours - keep:
        f = video_dir / name
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)


@dataclass(frozen=True)
class FramesJob:
    """One video (or image) and the frame settings for it (test-list items may take more frames)."""

    src: str  #: absolute: Ray workers (possibly on other machines) do not share our working directory
    video_id: str
    cfg: FrameConfig


@dataclass
class FramesStage(Stage[FramesJob]):
    """Sampled frames of every item, to ``out_dir/<video_id>/<frame:05d>.<ext>``."""

    name: ClassVar[str] = "frames"
    items: list[MediaItem]
    out_dir: Path
    cfg: FrameConfig
    limits: MediaLimits

    def settings(self) -> dict:
        # frames come back scaled to max_frame_side (MediaLimits): another limit gives frames of another size
        return {**self.cfg.model_dump(mode="json"), "max_frame_side": self.limits.max_frame_side}

    def inputs(self) -> list[Path]:
        return [Path(it.path) for it in self.items]

    def plan(self) -> list[FramesJob]:
        return [FramesJob(os.path.abspath(it.path), it.video_id, self.cfg.for_item(it.is_test)) for it in self.items]

    def source(self, job: FramesJob) -> Path:
        return Path(job.src)

    def for_workers(self) -> FramesStage:
        return replace(super().for_workers(), items=[])  # planned already; 100,000 items would ride every job

    def run_job(self, job: FramesJob) -> JobResult:
        """Write the video's sampled frames, skipping valid ones, then its marker."""
        src, cfg = Path(job.src), job.cfg
        result = JobResult()
        try:
            video_dir = inside(self.out_dir, job.video_id)
        except BadInputError as exc:
            result.failed.append(f"{src}: {exc}")
            return result
        done = _marker_ok(video_dir, src, cfg)
        if done is not None:
            return done
        plan: dict[str, list[int]] = {}
        ext = cfg.image_format

        def select(total: int) -> list[int]:
            # Called once the frame count is known: keep valid frames from an earlier run, decode the rest.
            plan["total"] = [total]
            plan["all"] = sample_indices(total, cfg.num_frames)
            plan["missing"] = [i for i in plan["all"] if not is_valid_image(video_dir / frame_name(i, ext))]
            return plan["missing"]

        meta = {"source": src.name, "source_stamp": source_stamp(src), "num_frames": cfg.num_frames, "format": ext}
        try:
            ours = _ours(_read_marker(video_dir))
            got = dict(read_selected(src, select, self.limits))
            indices, missing = plan["all"], plan["missing"]
            names = {i: frame_name(i, ext) for i in indices}
            # The record comes first: a run killed mid-way still knows which files are its own.
            ours |= {names[i] for i in missing if i in got}
            write_json(video_dir / DONE_MARKER, {**meta, "complete": False, "written": sorted(ours)})
            result.reused = len(indices) - len(missing)
            for i in missing:
                if i in got:
                    write_image(video_dir / names[i], got[i], jpeg_quality=cfg.jpeg_quality)
                    result.written += 1
            lost = [i for i in missing if i not in got]
            if lost:
                result.failed.append(lost_line(src, lost, len(indices)))
            keep = {names[i] for i in indices if i not in lost}
            _remove_unplanned(video_dir, keep, ours)
            write_json(video_dir / DONE_MARKER, {
                **meta, "complete": True, "total_frames": plan["total"][0],
                "frames": [i for i in indices if i not in lost], "lost": lost, "written": sorted(ours & keep)})
        except BadInputError as exc:
            result.failed.append(str(exc))
        except OSError as exc:  # e.g. the output disk is full: name the file, skip, go on
            result.failed.append(f"{src}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, is one line; the stage goes on
            result.failed.append(failure_line(src, exc))
        return result


def extract_frames(
    items: list[MediaItem],
    out_dir: str | Path,
    cfg: FrameConfig,
    *,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    limits: MediaLimits | None = None,
) -> StageReport:
    """Write ``cfg.num_frames`` frames of every item to ``out_dir/<video_id>/<frame:05d>.<ext>``.

    Items in the official test list get ``cfg.test_frames`` instead when it is set (the default
    protocol trains on 8 frames per video and evaluates on 32).

    Resumable: valid existing frames are kept (``reused``), and a video whose done-marker lists
    frames that all exist is not opened at all. A bad video is one line in ``report.failed``; the
    others go on. ``progress(1)`` is called per item.
    """
    stage = FramesStage(list(items), Path(out_dir), cfg, media_limits(limits))
    return run_stage(stage, workers=workers, engine=engine, ray_address=ray_address, progress=progress)
