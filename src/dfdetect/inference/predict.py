"""A verdict on a video, an image, or a folder of them, from a trained detector.

``predict_path`` samples N frames, finds every face in each frame, scores every face and aggregates
per file. It works with either a torch :class:`~dfdetect.model.detector.Detector` or an
:class:`~dfdetect.model.export.OnnxDetector` (anything that satisfies :class:`Scorer`), and imports no torch
itself, so the ONNX path runs where torch is not installed. The JSON that :meth:`PredictResult.to_json`
returns is what ``dfdetect predict --json`` writes and what ``POST /api/v1/detect`` answers.

Why one file: the result types, the per-file path and the JSON schema are one contract, the one the CLI,
the service and scan all return.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from dfdetect import _io
from dfdetect.config import INFERENCE, FaceConfig
from dfdetect.data.labels import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from dfdetect.errors import BadInputError, DfdetectError, NothingUsableError, one_line
from dfdetect.model.scoring import Scorer
from dfdetect.parallel import ProgressCallback
from dfdetect.preprocess.stage import StageReport

if TYPE_CHECKING:
    from dfdetect.preprocess.faces import FaceCrop, FaceFinder

__all__ = [
    "SCHEMA",
    "FaceResult",
    "FrameResult",
    "PredictResult",
    "contact_sheet",
    "count_media",
    "create_face_finder",
    "gradcam_sheet",
    "iter_predict",
    "media_files",
    "plot_scores",
    "predict_file",
    "predict_path",
    "read_media_frames",
    "results_json",
    "save_visuals",
]

SCHEMA = "dfdetect.predict/1"
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
FaceAggregate = Literal["max_face", "mean"]  #: face scores -> one verdict: the most fake face, or all faces averaged


# --------------------------------------------------------------------------- results


@dataclass
class FaceResult:
    """One scored face. ``crop``/``heatmap`` are BGR images kept only when asked for (not in plain JSON)."""

    box: tuple[int, int, int, int]  #: x0, y0, x1, y1 in frame pixels
    det_score: float  #: MTCNN, YuNet: confidence; Haar: neighbour count (no probability); 1.0 for whole images
    p_fake: float
    whole_image: bool = False  #: the image was scored as a crop (``crops=True``), no detection
    crop: np.ndarray | None = field(default=None, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)  #: Grad-CAM overlay on ``crop``

    def to_json(self, images: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"box": list(self.box), "det_score": round(self.det_score, 4),
                               "p_fake": round(self.p_fake, 6), "whole_image": self.whole_image}
        if images:
            out["crop_png"] = None if self.crop is None else png_base64(_thumbnail(self.crop))
            out["gradcam_png"] = None if self.heatmap is None else png_base64(_thumbnail(self.heatmap))
        return out


@dataclass
class FrameResult:
    index: int  #: frame number in the video (0 for an image)
    faces: list[FaceResult] = field(default_factory=list)

    @property
    def p_fake_max(self) -> float | None:
        return max((f.p_fake for f in self.faces), default=None)

    def to_json(self, images: bool = False) -> dict[str, Any]:
        top = self.p_fake_max
        return {"index": self.index, "p_fake_max": None if top is None else round(top, 6),
                "faces": [f.to_json(images) for f in self.faces]}


@dataclass
class PredictResult:
    """The verdict on one file.

    JSON schema (``to_json()``; ``images=True`` adds the two ``*_png`` keys, used by the web page)::

        {
          "schema": "dfdetect.predict/1",
          "file": str,                 # the path as given (the upload's name in the API)
          "kind": "video" | "image",
          "verdict": "fake" | "real" | "no_face",   # no_face: no face in any sampled frame
          "p_fake": float | null,      # the score the verdict compares with the threshold (see "aggregate")
          "p_fake_mean": float | null,       # mean of every face score in the file
          "p_fake_max_face": float | null,   # mean over frames with a face of the frame's highest face score
          "aggregate": "max_face" | "mean",  # which of the two is "p_fake"
          "threshold": float,          # detector.threshold_; verdict is fake when p_fake >= threshold
          "frames_requested": int, "frames_sampled": int,
          "frames_with_face": int, "frames_without_face": int, "faces": int,
          "face_detector": "haar" | "mtcnn" | "yunet" | "none",
          "notes": [str],              # e.g. why YuNet replaced MTCNN, why there is no heatmap
          "frames": [{"index": int, "p_fake_max": float | null,
                      "faces": [{"box": [x0, y0, x1, y1], "det_score": float, "p_fake": float,
                                 "whole_image": bool,
                                 "crop_png": base64 str | null, "gradcam_png": base64 str | null}]}]
        }

    All scores are P(fake) (fake = 1).
    """

    file: str
    kind: Literal["video", "image"]
    threshold: float
    frames: list[FrameResult]
    frames_requested: int
    aggregate: FaceAggregate = "max_face"
    face_detector: str = "haar"
    notes: list[str] = field(default_factory=list)
    rel: str = ""  #: path below the folder given (the file name for a file); names saved pictures

    @property
    def face_scores(self) -> np.ndarray:
        return np.array([f.p_fake for fr in self.frames for f in fr.faces], dtype=np.float64)

    @property
    def p_fake_mean(self) -> float | None:
        s = self.face_scores
        return float(s.mean()) if s.size else None

    @property
    def p_fake_max_face(self) -> float | None:
        tops = [fr.p_fake_max for fr in self.frames if fr.faces]
        return float(np.mean(tops)) if tops else None

    @property
    def p_fake(self) -> float | None:
        return self.p_fake_max_face if self.aggregate == "max_face" else self.p_fake_mean

    @property
    def verdict(self) -> Literal["fake", "real", "no_face"]:
        p = self.p_fake
        if p is None:
            return "no_face"
        return "fake" if p >= self.threshold else "real"

    @property
    def n_faces(self) -> int:
        return sum(len(fr.faces) for fr in self.frames)

    @property
    def frames_with_face(self) -> int:
        return sum(1 for fr in self.frames if fr.faces)

    def all_faces(self) -> Iterator[tuple[int, FaceResult]]:
        for fr in self.frames:
            for f in fr.faces:
                yield fr.index, f

    def drop_images(self) -> None:
        """Free the crops and heatmaps once they are saved (a folder of thousands of files)."""
        for _, f in self.all_faces():
            f.crop = f.heatmap = None

    def to_json(self, images: bool = False) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "schema": SCHEMA, "file": self.file, "kind": self.kind, "verdict": self.verdict,
            "p_fake": r(self.p_fake), "p_fake_mean": r(self.p_fake_mean), "p_fake_max_face": r(self.p_fake_max_face),
            "aggregate": self.aggregate, "threshold": round(float(self.threshold), 6),
            "frames_requested": self.frames_requested, "frames_sampled": len(self.frames),
            "frames_with_face": self.frames_with_face,
            "frames_without_face": len(self.frames) - self.frames_with_face, "faces": self.n_faces,
            "face_detector": self.face_detector, "notes": list(self.notes),
            "frames": [fr.to_json(images) for fr in self.frames],
        }


# --------------------------------------------------------------------------- the stages predict uses
# Imported when first used, so that importing dfdetect.inference.predict stays cheap and torch-free. Callers
# may inject their own: a frame reader (another decoder, a camera) and a face finder (see FaceFinder).

#: ``reader(path, n) -> [(frame index, bgr uint8)]``: n evenly spaced frames, or the image itself.
FrameReader = Callable[[Path, int], list[tuple[int, np.ndarray]]]


def read_media_frames(path: Path, n: int) -> list[tuple[int, np.ndarray]]:
    """The default :data:`FrameReader` (:func:`dfdetect.preprocess.frames.read_frames`)."""
    from dfdetect.preprocess.frames import read_frames

    return read_frames(path, n)


def create_face_finder(cfg: FaceConfig) -> FaceFinder:
    """The face finder ``cfg.detector`` names (see :func:`dfdetect.preprocess.faces.create_detector`)."""
    from dfdetect.preprocess.faces import create_detector

    return create_detector(cfg)


@functools.cache
def torch_available() -> bool:
    """True when torch imports; False where it is not installed (the lean ONNX deployment)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_face_config(cfg: FaceConfig) -> tuple[FaceConfig, list[str]]:
    """Keep every face (predict looks at all of them); MTCNN needs torch, so without it use YuNet (OpenCV),
    the other 5-landmark CNN detector, which finds nearly the same faces."""
    notes: list[str] = []
    cfg = cfg.model_copy(update={"keep": "all"})
    if cfg.detector == "mtcnn" and not torch_available():
        cfg = cfg.model_copy(update={"detector": "yunet"})
        notes.append("torch is not installed, so faces are found with YuNet (OpenCV) instead of the model's MTCNN; "
                     "crops and scores can differ a little from the torch model's")
    return cfg, notes


# --------------------------------------------------------------------------- inputs


def media_files(path: str | Path, skipped: list[str] | None = None) -> list[Path]:
    """A media file -> [it]; a folder -> its videos and images (recursive, sorted). Raises if neither.

    An entry of the folder that cannot be looked at (a name too long for the file system) is a line in
    ``skipped``; the rest of the folder is still used."""
    p = Path(path)
    try:
        if p.is_dir():
            # Not only regular files: a named pipe or a symlink loop among them is one line, not left out silently
            return _io.walk_files(p, MEDIA_SUFFIXES, regular_only=False, skipped=skipped)
        exists = os.path.lexists(p)
    except OSError as exc:  # a name too long for the file system, a folder we may not read
        raise BadInputError(f"cannot use ({exc.strerror or exc})", path=p) from None
    if not exists:
        raise BadInputError("no such file or folder", path=p)
    if p.suffix.lower() not in MEDIA_SUFFIXES:
        raise BadInputError(f"not a video or image (expected one of {', '.join(sorted(MEDIA_SUFFIXES))})", path=p)
    return [p]


def count_media(paths: Iterable[str | Path]) -> int:
    """How many files ``iter_predict`` will try (for a progress bar); missing paths count 0."""
    total = 0
    for p in paths:
        try:
            total += len(media_files(p))
        except BadInputError:
            pass
    return total


def results_json(results: Sequence[PredictResult], report: StageReport, **extra: Any) -> dict[str, Any]:
    """What ``predict --json`` writes: each of ``results`` is exactly the API's response body."""
    return {"schema": SCHEMA, **extra, "results": [r.to_json() for r in results], "failed": list(report.failed),
            "notes": list(report.notes)}


# --------------------------------------------------------------------------- scoring


def _score(scorer: Scorer, crops: list[np.ndarray]) -> np.ndarray:
    if not crops:
        return np.zeros(0, dtype=np.float64)
    parts = [np.asarray(scorer.predict_proba(crops[i:i + INFERENCE.batch_size]), dtype=np.float64).reshape(-1)
             for i in range(0, len(crops), INFERENCE.batch_size)]
    scores = np.concatenate(parts)
    if scores.shape != (len(crops),) or not np.all(np.isfinite(scores)):
        raise DfdetectError(f"the model returned {scores.shape} scores for {len(crops)} crops, or non-finite ones")
    return scores


def _box(face: FaceCrop) -> tuple[tuple[int, int, int, int], float]:
    b = face.box
    return (int(b.x0), int(b.y0), int(b.x1), int(b.y1)), float(b.score)


def _explain(scorer: Scorer, faces: list[FaceResult], max_explain: int, notes: list[str]) -> None:
    """Grad-CAM on the ``max_explain`` faces most likely fake: the torch model, or an ONNX file with its maps."""
    if max_explain <= 0 or not faces:
        return
    from dfdetect.inference.explain import can_explain, gradcam_overlays

    if not can_explain(scorer):
        notes.append("Grad-CAM heatmaps need the torch model (.safetensors) or an ONNX file from `dfdetect export` "
                     "with its 'cam' output; this one gives scores only")
        return

    chosen = sorted(faces, key=lambda f: -f.p_fake)[:max_explain]
    for face, overlay in zip(chosen, gradcam_overlays(scorer, [f.crop for f in chosen]), strict=True):
        face.heatmap = overlay


def predict_file(
    path: str | Path,
    scorer: Scorer,
    *,
    frames: int = INFERENCE.frames,
    face_cfg: FaceConfig | None = None,
    face_detector: FaceFinder | None = None,
    frame_reader: FrameReader = read_media_frames,
    crops: bool = False,
    explain: bool = False,
    max_explain: int = 8,
    keep_images: bool = False,
    aggregate: FaceAggregate = "max_face",
    name: str | None = None,
) -> PredictResult:
    """Score one video or image; raises :class:`BadInputError` when it cannot be decoded.

    ``crops=True`` treats images as face crops already (scored whole, no detection). ``face_detector`` is
    a face finder made once by the caller, for ``face_cfg`` or its own (MTCNN is slow to build);
    ``frame_reader`` decodes the file (see :data:`FrameReader`).
    """
    from dfdetect.preprocess.faces import faces_in_frames

    path = Path(path)
    kind: Literal["video", "image"] = "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"
    whole = crops and kind == "image"
    face_cfg, notes = resolve_face_config(face_cfg or scorer.protocol_.faces)
    if face_detector is None and not whole:
        face_detector = create_face_finder(face_cfg)

    sampled = frame_reader(path, 1 if kind == "image" else frames)
    if not sampled:
        raise BadInputError("no frames could be decoded", path=path)

    frame_results: list[FrameResult] = []
    face_list: list[FaceResult] = []
    found = [[] for _ in sampled] if whole else faces_in_frames([f for _, f in sampled], face_detector, face_cfg)
    for (index, bgr), faces in zip(sampled, found, strict=True):
        fr = FrameResult(index=int(index))
        if whole:
            h, w = bgr.shape[:2]
            fr.faces.append(FaceResult(box=(0, 0, w, h), det_score=1.0, p_fake=0.0, whole_image=True, crop=bgr))
        for fc in faces:
            box, det = _box(fc)
            fr.faces.append(FaceResult(box=box, det_score=det, p_fake=0.0, crop=fc.crop))
        face_list.extend(fr.faces)
        frame_results.append(fr)

    for face, p in zip(face_list, _score(scorer, [f.crop for f in face_list]), strict=True):
        face.p_fake = float(p)
    if explain:
        _explain(scorer, face_list, max_explain, notes)
    if not face_list and kind == "image":
        notes.append("no face found; if these images are face crops already, pass --crops (crops=True)")
    if not keep_images:
        for f in face_list:
            f.crop = f.heatmap = None
    return PredictResult(
        file=name or str(path), kind=kind, threshold=float(scorer.threshold_), frames=frame_results,
        frames_requested=1 if kind == "image" else frames, aggregate=aggregate,
        face_detector="none" if whole else getattr(face_detector, "name", face_cfg.detector), notes=notes,
    )


def iter_predict(
    paths: Iterable[str | Path],
    scorer: Scorer,
    *,
    report: StageReport | None = None,
    progress: ProgressCallback | None = None,
    frames: int = INFERENCE.frames,
    face_cfg: FaceConfig | None = None,
    face_detector: FaceFinder | None = None,
    **kwargs: Any,
) -> Iterator[PredictResult]:
    """Yield a result per media file under ``paths``; a bad file becomes one line in ``report.failed``.

    The face finder is built once, at the first file that needs one, unless ``face_detector`` is given.
    """
    report = report if report is not None else StageReport("predict", None, done_as="scored")
    face_cfg = face_cfg or scorer.protocol_.faces
    cfg, notes = resolve_face_config(face_cfg)
    report.notes.extend(notes)
    detector = face_detector
    for root in paths:
        try:
            files = media_files(root, report.failed)
        except BadInputError as exc:
            report.failed.append(str(exc))
            continue
        if not files:  # an empty folder is a skipped input too, named, not a silent "0 skipped"
            report.failed.append(f"{root}: no videos or images ({', '.join(sorted(MEDIA_SUFFIXES))}) in the folder")
        root_p = Path(root)
        for f in files:
            if detector is None and not (kwargs.get("crops") and f.suffix.lower() in IMAGE_SUFFIXES):
                detector = create_face_finder(cfg)
            rel = f.name if f == root_p else f.relative_to(root_p).as_posix()
            name = str(f) if f == root_p else str(root_p / rel)
            try:
                res = predict_file(f, scorer, frames=frames, face_cfg=face_cfg, face_detector=detector, name=name,
                                   **kwargs)
            except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, is one line
                # frames.py raises BadInputError; anything else is an error no one foresaw
                report.failed.append(one_line(str(exc) if isinstance(exc, DfdetectError) else
                                              f"{f}: failed ({type(exc).__name__}: {exc})"))
            else:
                report.written += 1
                res.rel = rel
                yield res
            if progress is not None:
                progress(1)


def predict_path(
    path: str | Path,
    detector: Scorer,
    *,
    frames: int = INFERENCE.frames,
    face_cfg: FaceConfig | None = None,
    explain: bool = False,
    report: StageReport | None = None,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> list[PredictResult]:
    """Verdicts for a video, an image, or every video and image in a folder.

    Parameters
    ----------
    path : a video, an image, or a folder (searched recursively).
    detector : a ``Detector`` or an ``OnnxDetector`` (see :class:`Scorer`).
    frames : frames sampled evenly from each video (images are one frame).
    face_cfg : face detection settings; default ``detector.protocol_.faces`` (every face is kept).
    explain : add Grad-CAM overlays to the most-likely-fake faces (torch model only).
    report : collects one line per skipped file (undecodable, empty) and notes.

    Returns one :class:`PredictResult` per usable file; raises :class:`NothingUsableError` when none is.
    """
    report = report if report is not None else StageReport("predict", None, done_as="scored")
    results = list(iter_predict([path], detector, report=report, progress=progress, frames=frames,
                                face_cfg=face_cfg, explain=explain, **kwargs))
    if not results:
        detail = f": {report.failed[0]}" if len(report.failed) == 1 else f" ({len(report.failed)} failed)"
        raise NothingUsableError(f"no usable video or image{detail}", path=path)
    return results


# --------------------------------------------------------------------------- pictures


def png_base64(bgr: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("could not encode PNG")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _thumbnail(bgr: np.ndarray, side: int = 128) -> np.ndarray:
    """Page and JSON images stay small: a 32-frame video answers in tens of kB, not MB."""
    h, w = bgr.shape[:2]
    s = side / max(h, w)
    return bgr if s >= 1 else cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))),
                                          interpolation=cv2.INTER_AREA)


def _tile(img: np.ndarray, label: str, color: tuple[int, int, int], side: int) -> np.ndarray:
    tile = np.full((side + 22, side, 3), 255, np.uint8)
    h, w = img.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    tile[y:y + small.shape[0], x:x + small.shape[1]] = small
    cv2.rectangle(tile, (0, side), (side - 1, side + 21), color, -1)
    cv2.putText(tile, label, (4, side + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _sheet(tiles: list[np.ndarray], cols: int = 8) -> np.ndarray:
    cols = min(cols, len(tiles))
    rows = [np.hstack(tiles[i:i + cols] + [np.full_like(tiles[0], 255)] * (cols - len(tiles[i:i + cols])))
            for i in range(0, len(tiles), cols)]
    return np.vstack(rows)


_RED, _GREEN = (40, 40, 200), (60, 150, 40)  # BGR: fake / real


def contact_sheet(result: PredictResult, side: int = 128) -> np.ndarray | None:
    """Every kept face crop, labelled ``frame: P(fake)``, red at or above the threshold; None if no crops."""
    tiles = [_tile(f.crop, f"f{i}: {f.p_fake:.2f}", _RED if f.p_fake >= result.threshold else _GREEN, side)
             for i, f in result.all_faces() if f.crop is not None]
    return _sheet(tiles) if tiles else None


def gradcam_sheet(result: PredictResult, side: int = 128) -> np.ndarray | None:
    tiles = [_tile(f.heatmap, f"f{i}: {f.p_fake:.2f}", _RED if f.p_fake >= result.threshold else _GREEN, side)
             for i, f in result.all_faces() if f.heatmap is not None]
    return _sheet(tiles) if tiles else None


def plot_scores(result: PredictResult, dest: str | Path) -> Path:
    """P(fake) per sampled frame: every face as a dot, the frame's top face as a line, and the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    xs = [fr.index for fr in result.frames if fr.faces]
    ax.plot(xs, [fr.p_fake_max for fr in result.frames if fr.faces], "-o", color="#c0392b", ms=3,
            label="highest face in frame")
    pts = [(i, f.p_fake) for i, f in result.all_faces()]
    if pts:
        ax.scatter(*zip(*pts), s=10, color="#555", alpha=0.6, label="each face", zorder=3)
    empty = [fr.index for fr in result.frames if not fr.faces]
    if empty:
        ax.scatter(empty, [0.0] * len(empty), marker="x", color="#999", label="no face")
    ax.axhline(result.threshold, color="#2c3e50", ls="--", lw=1, label=f"threshold {result.threshold:.2f}")
    ax.set(ylim=(-0.03, 1.03), xlabel="frame", ylabel="P(fake)",
           title=f"{Path(result.file).name}: {result.verdict}")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with _io.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(dest)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(name).with_suffix("")).strip("/")).strip("_") or "file"


#: In a ``--save`` folder: which input each picture name shows, kept across runs.
PICTURE_INDEX = ".dfdetect-pictures.json"


def picture_index(out_dir: str | Path) -> dict[str, str]:
    """The names a ``--save`` folder's earlier runs gave, each to the input (absolute path) it shows."""
    import json

    try:
        data = json.loads((Path(out_dir) / PICTURE_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def save_visuals(result: PredictResult, out_dir: str | Path, *, taken: dict[str, str] | None = None) -> list[Path]:
    """Write ``<name>_faces.png`` (contact sheet), ``<name>_scores.png`` and ``<name>_gradcam.png``.

    ``taken``: the names given so far (:func:`picture_index`, kept up to date in the folder): ``a/clip.mp4`` and
    ``b/clip.mp4``, in one run or in two, get ``clip`` and ``clip-2`` instead of the second overwriting the
    first's pictures; the same input again replaces its own.
    """
    out_dir = Path(out_dir)
    stem = base = _slug(result.rel or Path(result.file).name)
    if taken is not None:
        source = os.path.abspath(result.file)
        n = 1
        while taken.get(stem, source) != source:
            n += 1
            stem = f"{base}-{n}"
        if stem not in taken:
            taken[stem] = source
            _io.write_json(out_dir / PICTURE_INDEX, taken)
    written = [plot_scores(result, out_dir / f"{stem}_scores.png")]
    for suffix, img in (("faces", contact_sheet(result)), ("gradcam", gradcam_sheet(result))):
        if img is not None:
            written.append(_io.write_image(out_dir / f"{stem}_{suffix}.png", img))
    return written
