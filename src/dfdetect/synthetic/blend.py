"""Soft-mask blending and the photometric / geometric jitter shared by :mod:`dfdetect.synthetic.sbi` and
:mod:`dfdetect.synthetic.synth`.

Both modules make fakes the same way a face-swap pipeline does: a *source* face is altered
(colour, sharpness, position), and pasted onto a *target* through a blurred, slightly deformed
mask. Keeping the pieces here means the built-in data's fakes and the SBI training pseudo-fakes
share one implementation. Everything is numpy/OpenCV and takes an explicit
``numpy.random.Generator``, so results are reproducible per seed.

Images are BGR ``uint8`` of shape (H, W, 3); masks are ``float32`` of shape (H, W) in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "alpha_blend",
    "blur_mask",
    "colour_jitter",
    "colour_transfer",
    "degrade_or_sharpen",
    "elastic_warp",
    "ellipse_mask",
    "jpeg_roundtrip",
    "polygon_mask",
    "random_affine_matrix",
]


def _odd(n: float) -> int:
    n = max(1, round(n))
    return n if n % 2 else n + 1


def ellipse_mask(shape: tuple[int, int], center: tuple[float, float], axes: tuple[float, float],
                 angle: float = 0.0) -> np.ndarray:
    """A filled ellipse, 1 inside and 0 outside; ``center``/``axes`` in pixels (x, y)."""
    mask = np.zeros(shape[:2], np.float32)
    # cv2.ellipse takes integers; shift=4 gives 1/16-pixel precision so small moves stay smooth.
    c = (round(float(center[0]) * 16), round(float(center[1]) * 16))
    ax = (max(1, round(float(axes[0]) * 16)), max(1, round(float(axes[1]) * 16)))
    cv2.ellipse(mask, c, ax, float(angle), 0, 360, 1.0, thickness=-1, lineType=cv2.LINE_AA, shift=4)
    return mask


def polygon_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """The convex hull of ``points`` (N, 2) in (x, y) pixels, filled with 1."""
    mask = np.zeros(shape[:2], np.float32)
    hull = cv2.convexHull(np.round(np.asarray(points, np.float32) * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1.0, lineType=cv2.LINE_AA, shift=4)
    return mask


def random_affine_matrix(width: int, height: int, rng: np.random.Generator, *, shift: float = 0.03,
                         scale: float = 0.05, rotate: float = 0.0) -> np.ndarray:
    """A 2x3 affine about the centre: shift up to ``shift`` of the size, scale 1 +/- ``scale``,
    rotate up to ``rotate`` degrees. Separate from the warp so one draw can move two images alike."""
    s = 1.0 + rng.uniform(-scale, scale)
    a = rng.uniform(-rotate, rotate) if rotate else 0.0
    m = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), a, s)
    m[:, 2] += rng.uniform(-shift, shift, 2) * (width, height)
    return m


def elastic_warp(image: np.ndarray, rng: np.random.Generator, *, alpha: float, sigma: float) -> np.ndarray:
    """Elastic deformation (Simard et al.): a random displacement field smoothed by a Gaussian.

    ``alpha`` is the displacement scale in pixels, ``sigma`` the smoothness in pixels. Hand-written
    because albumentations is not a dependency; it is ten lines of OpenCV.
    """
    h, w = image.shape[:2]
    k = _odd(sigma * 6)
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (k, k), sigma)
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (k, k), sigma)
    # Normalise so alpha is the largest displacement regardless of how much the blur averaged out.
    norm = max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xs + dx * (alpha / norm), ys + dy * (alpha / norm), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def blur_mask(mask: np.ndarray, rng: np.random.Generator, *, size: float) -> np.ndarray:
    """Soften a hard mask as SBI does: blur, keep only the fully-inside part, blur again.

    The first pass plus the cut shrinks the mask a little (so the soft edge stays inside the hull
    instead of spilling past it); the second pass gives the soft boundary. Kernel sizes are drawn
    relative to ``size`` (the face size in pixels) so the result does not depend on resolution.
    """
    k1 = _odd(size * rng.uniform(0.04, 0.12))
    k2 = _odd(size * rng.uniform(0.06, 0.16))
    m = cv2.GaussianBlur(mask.astype(np.float32), (k1, k1), 0)
    m[m < 0.999] = 0.0
    m = cv2.GaussianBlur(m, (k2, k2), 0)
    peak = float(m.max())
    return (m / peak if peak > 0 else m).clip(0.0, 1.0)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, *, strength: float = 1.0) -> np.ndarray:
    """RGB shift, HSV shift, brightness and contrast: the SBI source transform's colour part."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-20, 20, 3).astype(np.float32) * strength
    img = img.clip(0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6) * strength) % 180
    hsv[..., 1] *= 1.0 + rng.uniform(-0.2, 0.2) * strength
    hsv[..., 2] *= 1.0 + rng.uniform(-0.15, 0.15) * strength
    img = cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    brightness = rng.uniform(-0.1, 0.1) * 255 * strength
    contrast = 1.0 + rng.uniform(-0.1, 0.1) * strength
    mean = img.mean()
    img = (img - mean) * contrast + mean + brightness
    return img.clip(0, 255).astype(np.uint8)


def degrade_or_sharpen(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Either down-scale by 2-4x and back (lost detail) or unsharp-mask (extra detail), 50/50."""
    h, w = image.shape[:2]
    if rng.random() < 0.5:
        f = rng.uniform(2.0, 4.0)
        small = cv2.resize(image, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    amount = rng.uniform(0.2, 0.6)
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    return cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0)


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Reinhard colour transfer in Lab: give ``source`` the mean/std of ``target`` inside ``mask``.

    This is how face-swap pipelines colour-match a pasted face to the skin it lands on.
    """
    src = cv2.cvtColor(source, cv2.COLOR_BGR2LAB).astype(np.float32)
    tgt = cv2.cvtColor(target, cv2.COLOR_BGR2LAB).astype(np.float32)
    sel = np.ones(src.shape[:2], bool) if mask is None else mask > 0.5
    if sel.sum() < 16:
        sel = np.ones(src.shape[:2], bool)
    s_mean, s_std = src[sel].mean(0), src[sel].std(0) + 1e-3
    t_mean, t_std = tgt[sel].mean(0), tgt[sel].std(0) + 1e-3
    out = (src - s_mean) * (t_std / s_std) + t_mean
    return cv2.cvtColor(out.clip(0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


def alpha_blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``target * (1 - mask) + source * mask``, rounded back to uint8; exact where mask is 0."""
    m = mask.astype(np.float32)[..., None]
    out = target.astype(np.float32) * (1.0 - m) + source.astype(np.float32) * m
    return np.rint(out).clip(0, 255).astype(np.uint8)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG at ``quality`` (1-100)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 BGR image
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)
