"""Pixels to tensors for torch, and the training augmentations.

The resize and normalisation are :class:`dfdetect.data.preprocess_spec.PreprocessSpec`'s, derived from the
backbone's data config, never hard-coded: training (:class:`dfdetect.data.torch_datasets.CropDataset`), the
torch detector (:func:`preprocess_crops`) and the ONNX one share them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from dfdetect.data.preprocess_spec import PreprocessSpec, resize_bgr

__all__ = ["augment_crop", "preprocess_crops", "resize_bgr", "resize_rgb"]


# --------------------------------------------------------------------------- preprocessing


def preprocess_crops(crops_bgr: Sequence[np.ndarray], data_config: dict[str, Any], input_size: int) -> torch.Tensor:
    """BGR uint8 crops -> ``(N, 3, S, S)`` float tensor, channels_last: :class:`PreprocessSpec`, as torch."""
    x = PreprocessSpec.from_data_config(data_config, input_size).apply(crops_bgr)
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


def resize_rgb(crop_bgr: np.ndarray, size: int) -> np.ndarray:
    """BGR crop of any size -> ``size x size`` RGB uint8: the one resize training and inference share."""
    return cv2.cvtColor(resize_bgr(crop_bgr, size), cv2.COLOR_BGR2RGB)


def augment_crop(rgb: np.ndarray, rng: np.random.Generator, *, erase: float = 0.0, launder: bool = False) -> np.ndarray:
    """Full-mode augmentation of one RGB uint8 crop (never changed in place): what a re-uploaded video goes
    through.

    Colour (saturation, contrast, brightness; p 0.8), Gaussian blur (sigma 0.3-1.5; p 0.2), JPEG at
    quality 40-100 (p 0.5), horizontal flip (p 0.5): the recipe bench/quality.py measured. With
    ``erase`` > 0, random erasing (Zhong et al. 2020) with that probability, last: it hides one region so
    the model cannot lean on a single artefact. With ``launder``, what re-sharing does before the JPEG
    step: a down- and re-upscale (0.25-0.8x; p 0.3) and Gaussian sensor noise (sigma 2-8; p 0.2), with JPEG
    from quality 30, so the score cannot hang on detail that one re-upload removes.
    Why OpenCV rather than torchvision.transforms.v2: these are the exact ops the recipe was measured
    with, they are cheap on small uint8 arrays, and every draw comes from ``rng``, so a batch is the same
    with or without DataLoader workers.
    """
    img = rgb
    if rng.random() < 0.8:  # saturation, contrast and brightness in one uint8 pass
        sat, con, bri = rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        img = cv2.addWeighted(img, sat * con * bri, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB),
                              (1 - sat) * con * bri, float(gray.mean()) * (1 - con) * bri)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    if launder:
        img = _launder(img, rng)
    if rng.random() < 0.5:
        q_low = 30 if launder else 40
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(q_low, 101))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    if erase and rng.random() < erase:
        img = _erase(img, rng)
    return img


def _launder(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A re-upload's resize and sensor noise (see :func:`augment_crop`)."""
    h, w = img.shape[:2]
    if rng.random() < 0.3:
        f = rng.uniform(0.25, 0.8)
        small = cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.2:
        noise = rng.normal(0.0, rng.uniform(2.0, 8.0), img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img


def _erase(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``img`` with one random-erasing rectangle filled with uniform noise (a copy: ``img`` may be
    the caller's array or a read-only cache row). By hand because timm's RandomErasing draws from Python's
    global ``random``; this one draws from ``rng``, so a batch stays the same with or without workers."""
    img = img.copy()
    h, w = img.shape[:2]
    for _ in range(10):  # timm's attempts: resample until the rectangle fits
        area = h * w * rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            img[y:y + eh, x:x + ew] = rng.integers(0, 256, (eh, ew, img.shape[2]), dtype=np.uint8)
            break
    return img
