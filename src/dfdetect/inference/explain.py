"""Where the model looks: Grad-CAM heatmaps on face crops, through the ``grad-cam`` package.

Our models have one output, the fake logit (logit > 0 means fake), so the Grad-CAM target is that logit
itself: the map shows the regions whose activations push the score towards *fake*. ``sign=-1`` shows the
evidence for *real* instead. A torch :class:`~dfdetect.model.detector.Detector` (``model_``, ``preprocess`` and
``cam_target_layers``) goes through ``grad-cam``; an :class:`~dfdetect.model.export.OnnxDetector` whose file has
the ``cam`` output gives the same maps from its class activations, with numpy and no torch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["LogitTarget", "can_explain", "gradcam_maps", "gradcam_overlay", "gradcam_overlays"]

# grad-cam registers hooks on the shared model; the web service may explain two uploads at once
_LOCK = threading.Lock()


class LogitTarget:
    """Grad-CAM target for a one-logit model: ``sign * logit`` (pytorch_grad_cam calls it per sample).

    ``ClassifierOutputTarget(0)`` would pick the same number for ``(n, 1)`` outputs; this one also takes
    ``(n,)`` outputs and can flip the sign to explain *real*.
    """

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def __call__(self, model_output: Any) -> Any:
        return self.sign * model_output.reshape(-1)[0]


def can_explain(scorer: Any) -> bool:
    """A torch model (gradients), or an ONNX file with the ``cam`` output."""
    return hasattr(scorer, "model_") or bool(getattr(scorer, "explainable", False))


def _scale(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Each map to [0, 1], resized to ``size`` (W, H): ``pytorch_grad_cam.utils.image.scale_cam_image``, whose
    package imports torch, redone here so that the ONNX path needs none."""
    out = []
    for m in maps:
        m = m - np.min(m)
        m = m / (1e-7 + np.max(m))
        out.append(cv2.resize(np.float32(m), size) if size is not None else m)
    return np.float32(out)


def cam_maps_from_activations(acts: np.ndarray, size: tuple[int, int], *, sign: float = 1.0) -> np.ndarray:
    """Grad-CAM's maps from each member's class activations ``(n, members, h, w)``, at ``size`` (H, W): per member
    ReLU and scaled, then averaged and scaled again, as ``grad-cam`` aggregates several target layers."""
    per_member = [_scale(np.maximum(sign * acts[:, j], 0), (size[1], size[0])) for j in range(acts.shape[1])]
    return _scale(np.maximum(np.stack(per_member, axis=1), 0).mean(axis=1))


def gradcam_maps(detector: Any, crops_bgr: Sequence[np.ndarray], *, sign: float = 1.0) -> np.ndarray:
    """Grad-CAM maps in [0, 1], shape ``(n, H, W)`` at the model's input size.

    Parameters
    ----------
    detector : a torch model, with ``model_`` (tensor -> (n, 1) logit), ``preprocess(crops) -> (n, 3, H, W)`` and
        ``cam_target_layers() -> list[nn.Module]``; or an ONNX one with ``class_activations(crops)`` and
        ``preprocess_.size``.
    crops_bgr : face crops, BGR uint8, any size.
    sign : +1 explains the fake logit, -1 the real side.
    """
    if len(crops_bgr) == 0:
        return np.zeros((0, 1, 1), np.float32)
    if not hasattr(detector, "model_"):
        acts = detector.class_activations(list(crops_bgr))
        return np.nan_to_num(cam_maps_from_activations(acts, tuple(detector.preprocess_.size), sign=sign))
    from pytorch_grad_cam import GradCAM

    model = detector.model_
    x = detector.preprocess(list(crops_bgr))
    # a frozen backbone has no parameter that needs gradients; the input must, or no gradient reaches the layer
    x = x.detach().clone().requires_grad_(True)
    with _LOCK:
        was_training = model.training
        # gradients are needed at the target layer only: freezing the weights meanwhile leaves no .grad
        # behind on the shared model (memory, and a later fine-tune would start from stale gradients)
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with GradCAM(model=model, target_layers=list(detector.cam_target_layers())) as cam:
                maps = cam(input_tensor=x, targets=[LogitTarget(sign) for _ in range(len(crops_bgr))])
        finally:
            for p in trainable:
                p.requires_grad_(True)
            model.train(was_training)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def overlay(crop_bgr: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] map (any size) over the crop with the JET colour map; BGR uint8 at the crop's size."""
    h, w = crop_bgr.shape[:2]
    cam = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)
    return cv2.addWeighted(heat, alpha, crop_bgr, 1 - alpha, 0)


def gradcam_overlays(detector: Any, crops_bgr: Sequence[np.ndarray], *, sign: float = 1.0,
                     alpha: float = 0.45) -> list[np.ndarray]:
    """One overlay per crop (BGR uint8, same size as the crop)."""
    maps = gradcam_maps(detector, crops_bgr, sign=sign)
    return [overlay(c, m, alpha=alpha) for c, m in zip(crops_bgr, maps, strict=True)]


def gradcam_overlay(detector: Any, crop_bgr: np.ndarray, *, sign: float = 1.0, alpha: float = 0.45) -> np.ndarray:
    """The Grad-CAM overlay on one face crop: BGR uint8, same size as ``crop_bgr``."""
    return gradcam_overlays(detector, [crop_bgr], sign=sign, alpha=alpha)[0]
