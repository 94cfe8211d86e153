"""How a BGR uint8 face crop becomes the network's input: the one contract of the model, wherever it runs.

The torch ``Detector``, the training datasets, the ``OnnxDetector`` and the exported graph's metadata all use
one :class:`PreprocessSpec`, derived from the backbone's data config (mean/std) and the input size, so a crop
is scored the same everywhere. NumPy and OpenCV only (OpenCV imported when first used): the metadata checks
and the ONNX path load it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfdetect.errors import BadInputError

__all__ = ["INTERPOLATIONS", "MAX_INPUT_SIDE", "PreprocessSpec", "check_crop", "resize_bgr"]

#: resize rules a spec may name; "area_down" = INTER_AREA when shrinking, else INTER_LINEAR (the training rule)
INTERPOLATIONS = ("area_down", "linear", "area", "cubic", "nearest")
MAX_INPUT_SIDE = 4096  #: a larger network input is a damaged file, not a model (it would allocate GBs per crop)

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_Side = Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)]


def check_crop(crop: Any, i: int = 0) -> np.ndarray:
    """``crop`` as an array if it is an image a detector can score (grey, BGR or BGRA uint8), else one line."""
    a = np.asarray(crop)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise BadInputError(f"crop {i}: expected a BGR uint8 image of shape (H, W, 3), got a {a.dtype} array of "
                            f"shape {a.shape}")
    return a


def _cv2_flag(name: str, shrinking: bool) -> int:
    import cv2

    if name == "area_down":
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return getattr(cv2, f"INTER_{name.upper()}")


def resize_bgr(crop_bgr: np.ndarray, size: int | tuple[int, int], interpolation: str = "area_down") -> np.ndarray:
    """Any crop (BGR, BGRA or grey) -> ``size`` BGR uint8 (``(height, width)``, or one side for a square)."""
    import cv2

    h_out, w_out = (size, size) if isinstance(size, int) else size
    if crop_bgr.ndim == 2 or crop_bgr.shape[2] == 1:
        crop_bgr = cv2.cvtColor(crop_bgr, cv2.COLOR_GRAY2BGR)
    crop_bgr = crop_bgr[..., :3]
    h, w = crop_bgr.shape[:2]
    if (h, w) == (h_out, w_out):
        return np.ascontiguousarray(crop_bgr)
    return cv2.resize(crop_bgr, (w_out, h_out), interpolation=_cv2_flag(interpolation, min(h, w) > min(h_out, w_out)))


class PreprocessSpec(BaseModel):
    """Resize, BGR -> RGB, /255, (x - mean) / std, NCHW float32. Stored in every exported detector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: tuple[_Side, _Side]  #: (height, width)
    mean: tuple[_Finite, _Finite, _Finite]
    std: tuple[_Positive, _Positive, _Positive]
    interpolation: Literal[INTERPOLATIONS] = "area_down"  # type: ignore[valid-type]
    rgb: bool = True  #: the network takes RGB (BGR crops are converted)

    @classmethod
    def from_data_config(cls, data_config: dict[str, Any], input_size: int) -> PreprocessSpec:
        """The spec of a timm backbone's data config (its mean and std) at a square ``input_size``."""
        return cls(size=(input_size, input_size), mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))

    def resize(self, crop_bgr: np.ndarray) -> np.ndarray:
        """One crop at the input size, uint8, in the network's channel order."""
        import cv2

        img = resize_bgr(crop_bgr, self.size, self.interpolation)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if self.rgb else img

    def normalise(self, batch_hwc: np.ndarray) -> np.ndarray:
        """``(n, H, W, 3)`` uint8 -> ``(n, 3, H, W)`` float32."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return ((batch_hwc.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2)

    def apply(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """``(n, 3, H, W)`` float32 network input for ``crops_bgr`` (each checked by :func:`check_crop`)."""
        h, w = self.size
        if len(crops_bgr) == 0:
            return np.empty((0, 3, h, w), np.float32)
        return self.normalise(np.stack([self.resize(check_crop(c, i)) for i, c in enumerate(crops_bgr)]))
