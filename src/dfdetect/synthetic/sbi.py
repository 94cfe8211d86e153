"""Self-Blended Images (SBI): pseudo-fakes made from real faces only.

Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022
(mapooon/SelfBlendedImages). A real face is blended back into itself through a soft face-shaped
mask after one of the two copies has been altered, so a detector trained on (real, SBI) pairs
learns the blending boundary and colour/sharpness mismatch common to face swaps, not one
generator's look. The recipe (``../shared/REFERENCE.md``), written here with numpy/OpenCV:

1. mask: the convex hull of the landmarks (5-point MTCNN landmarks are extended to a face
   outline); with no landmarks, a face-shaped ellipse from the crop geometry (crops are centred
   with about 1.3x margin);
2. either the source or the target copy gets RGB/HSV/brightness/contrast jitter and a down-scale
   or sharpen; the source and the mask then get one small random affine (shift/scale), and the
   mask alone an elastic deformation, then a two-pass Gaussian blur;
3. blend ratio drawn from {0.25, 0.5, 0.75, 1, 1, 1};
4. JPEG at quality 40-100, applied alike to the fake *and* its real partner, so compression is
   never what tells them apart.

When the *target* copy is the altered one, the whole crop changes, not just the face; the real
half of the pair is then that altered target (as in the SBI code), so the pair differs only
inside the mask. Use :func:`sbi_pair` for training; :func:`self_blend` keeps
the architecture's ``(fake, mask)`` signature.

Everything draws from the ``numpy.random.Generator`` it is given: same seed, same output.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dfdetect.errors import BadInputError
from dfdetect.synthetic.blend import (
    alpha_blend,
    blur_mask,
    colour_jitter,
    degrade_or_sharpen,
    elastic_warp,
    ellipse_mask,
    jpeg_roundtrip,
    polygon_mask,
    random_affine_matrix,
)

__all__ = [
    "BLEND_RATIOS",
    "SBIPair",
    "deform_mask",
    "face_hull_mask",
    "face_outline",
    "pseudo_source",
    "sbi_blend",
    "sbi_pair",
    "self_blend",
]

#: SBI's blend ratios; 1 is three times as likely as each partial ratio.
BLEND_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
MIN_FACE_SIDE = 32


@dataclass(frozen=True)
class SBIPair:
    """One training pair: ``real`` and ``fake`` differ only inside ``mask`` (before JPEG)."""

    real: np.ndarray  #: (H, W, 3) uint8 BGR: the target copy, JPEG'd like the fake
    fake: np.ndarray  #: (H, W, 3) uint8 BGR: the self-blended image
    mask: np.ndarray  #: (H, W) float32 in [0, 1]: the blend weight actually used (soft mask x ratio)
    jpeg_quality: int | None  #: quality applied to both, or None


def _check_face(face_bgr: np.ndarray) -> np.ndarray:
    arr = np.asarray(face_bgr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < MIN_FACE_SIDE:
        raise BadInputError(
            f"self-blending needs a BGR uint8 face crop of shape (H, W, 3) with H, W >= {MIN_FACE_SIDE}; "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks, np.float32)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 5 or not np.isfinite(pts).all():
        raise BadInputError(f"landmarks must be finite (x, y) pixels of shape (N >= 5, 2); "
                            f"got shape {pts.shape}")
    return pts


def face_outline(landmarks: np.ndarray) -> np.ndarray:
    """Points whose convex hull covers the face, from 5 or more landmarks in (x, y) pixels.

    Dense landmarks (68/81 points) are returned as they are. Five points (MTCNN order: left eye,
    right eye, nose, left and right mouth corner) only span eyes to mouth, so they are extended
    to forehead, cheeks and chin with the proportions of the common 112x112 five-point template
    (chin ~0.45 eye-mouth distances below the mouth, cheeks ~1.1 eye distances out from the eyes).
    """
    pts = _check_landmarks(landmarks)
    if len(pts) != 5:
        return pts
    le, re, _, ml, mr = pts
    eye_c, mouth_c = (le + re) / 2, (ml + mr) / 2
    d = float(np.linalg.norm(mouth_c - eye_c)) or 1.0
    ipd = float(np.linalg.norm(re - le)) or d
    up = (eye_c - mouth_c) / d
    right = np.array([-up[1], up[0]], np.float32)
    if np.dot(right, re - le) < 0:
        right = -right
    top = eye_c + up * 0.6 * d
    chin = mouth_c - up * 0.45 * d
    jaw = (mouth_c + chin) / 2
    extra = [
        top, top - right * 0.7 * ipd, top + right * 0.7 * ipd,
        eye_c - right * 1.05 * ipd, eye_c + right * 1.05 * ipd,
        mouth_c - right * 0.95 * ipd, mouth_c + right * 0.95 * ipd,
        jaw - right * 0.7 * ipd, jaw + right * 0.7 * ipd,
        chin, chin - right * 0.35 * ipd, chin + right * 0.35 * ipd,
    ]
    return np.vstack([pts, np.asarray(extra, np.float32)])


def face_hull_mask(shape: tuple[int, int], landmarks: np.ndarray | None = None) -> np.ndarray:
    """A hard (0/1) face mask: the hull of :func:`face_outline`, or an ellipse for a centred crop.

    Without landmarks the crop is assumed centred with ~1.3x margin (the face box is the middle
    ~77% of the crop), so the face (brows to chin, cheek to cheek) is an upright ellipse a little
    below the centre.
    """
    h, w = shape[:2]
    if landmarks is not None:
        return polygon_mask((h, w), face_outline(landmarks))
    return ellipse_mask((h, w), (w * 0.5, h * 0.53), (w * 0.31, h * 0.37))


def deform_mask(hard_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Elastic-deform then blur a hard mask into a soft one in [0, 1] (SBI's mask randomisation)."""
    size = float(np.sqrt(max(float(hard_mask.sum()), 1.0)))
    m = elastic_warp(hard_mask.astype(np.float32), rng, alpha=0.03 * size, sigma=0.05 * size)
    return blur_mask(m, rng, size=size)


def pseudo_source(face_bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI's source transform: colour jitter, then down-scale or sharpen."""
    return degrade_or_sharpen(colour_jitter(face_bgr, rng), rng)


def sbi_pair(face_bgr: np.ndarray, rng: np.random.Generator, *, landmarks: np.ndarray | None = None,
             jpeg_quality: tuple[int, int] | None = (40, 100)) -> SBIPair:
    """Make one (real, self-blended fake) pair from a real face crop.

    Parameters
    ----------
    face_bgr : ndarray of shape (H, W, 3), uint8
        A real face crop, centred (about 1.3x margin) unless ``landmarks`` are given.
    rng : numpy.random.Generator
        Every random choice comes from it.
    landmarks : ndarray of shape (N >= 5, 2), default=None
        Landmarks in crop pixels; 5 (MTCNN) are extended to a face outline.
    jpeg_quality : (low, high) or None, default=(40, 100)
        JPEG quality range applied to both images; None skips compression.
    """
    face = _check_face(face_bgr)
    h, w = face.shape[:2]
    hull = face_hull_mask((h, w), landmarks)
    target, source = face.copy(), face.copy()
    if rng.random() < 0.5:
        source = pseudo_source(source, rng)
    else:
        target = pseudo_source(target, rng)
    # One affine moves source and mask together (SBI's randaffine); the elastic part is mask-only.
    m = random_affine_matrix(w, h, rng, shift=0.03, scale=0.05)
    source = cv2.warpAffine(source, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    hull = cv2.warpAffine(hull, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = deform_mask(hull, rng) * float(rng.choice(BLEND_RATIOS))
    fake = alpha_blend(target, source, mask)
    quality = None
    if jpeg_quality is not None:
        quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
        target, fake = jpeg_roundtrip(target, quality), jpeg_roundtrip(fake, quality)
    return SBIPair(target, fake, mask.astype(np.float32), quality)


def sbi_blend(face_bgr: np.ndarray, rng: np.random.Generator,
              landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(real, fake) of :func:`sbi_pair`: the trainer's ``blend_fn``. Both halves are JPEG-compressed at the
    same quality; compressing only the fake would teach "recompressed = fake" instead of blending boundaries."""
    pair = sbi_pair(face_bgr, rng, landmarks=landmarks)
    return pair.real, pair.fake


def self_blend(face_bgr: np.ndarray, rng: np.random.Generator, *,
               landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The SBI fake of ``face_bgr`` and its blend mask (H, W) in [0, 1]; see :func:`sbi_pair`.

    The fake is JPEG-compressed (quality 40-100). When the recipe altered the target copy, the
    fake differs from ``face_bgr`` outside the mask too; use :func:`sbi_pair` to get the matching
    real.
    """
    pair = sbi_pair(face_bgr, rng, landmarks=landmarks)
    return pair.fake, pair.mask
