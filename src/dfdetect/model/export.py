"""Lean deployment: a detector as one ONNX file, scored with onnxruntime and no torch.

``export_onnx`` writes the network with a dynamic batch axis and stores everything needed to use it in
the model's ``metadata_props``: the preprocessing (input size, mean, std, resize interpolation, channel
order), the decision threshold and the training protocol. ``OnnxDetector`` reads them back and offers
the same ``predict_proba(crops_bgr)`` as the torch ``Detector``, with numpy/OpenCV preprocessing only.

This module must never import torch at module level: ``OnnxDetector`` is what runs where torch is not
installed. ``export_onnx`` imports it inside the function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfdetect import _io
from dfdetect.config import Protocol
from dfdetect.errors import DfdetectError, WeightsError
from dfdetect.model.metadata import INTERPOLATIONS, check_metadata

__all__ = ["METADATA_PREFIX", "ExportInfo", "OnnxDetector", "PreprocessSpec", "export_onnx", "onnx_session",
           "torch_to_onnx"]

METADATA_PREFIX = "dfdetect."
_FORMAT = "1"
_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
           "nearest": cv2.INTER_NEAREST}
# INTERPOLATIONS (dfdetect.model.metadata): "area_down" (INTER_AREA when the crop's shorter side exceeds the input
# side, else INTER_LINEAR: dfdetect.data.transforms.resize_rgb, what Detector.preprocess does) first, then _INTERP's
assert INTERPOLATIONS == ("area_down", *_INTERP)
_TOL = 1e-5  # numpy preprocessing must reproduce Detector.preprocess to float32 rounding


@dataclass(frozen=True)
class PreprocessSpec:
    """How a BGR uint8 crop becomes the network input: resize, BGR->RGB, /255, (x - mean) / std, NCHW."""

    size: tuple[int, int]  #: (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "area_down"  #: one of INTERPOLATIONS
    rgb: bool = True  #: the network takes RGB (BGR crops are converted)

    def apply(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """``(n, 3, H, W)`` float32, numpy and OpenCV only."""
        h, w = self.size
        mean = np.asarray(self.mean, np.float32).reshape(1, 1, 3)
        std = np.asarray(self.std, np.float32).reshape(1, 1, 3)
        out = np.empty((len(crops_bgr), 3, h, w), np.float32)
        for i, crop in enumerate(crops_bgr):
            _check_crop(crop, i)
            img = cv2.resize(crop, (w, h), interpolation=self._interp(crop))
            if self.rgb:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            out[i] = ((img.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        return out

    def _interp(self, crop: np.ndarray) -> int:
        if self.interpolation == "area_down":
            return cv2.INTER_AREA if min(crop.shape[:2]) > min(self.size) else cv2.INTER_LINEAR
        return _INTERP[self.interpolation]


def _check_crop(crop: np.ndarray, i: int) -> None:
    if not (isinstance(crop, np.ndarray) and crop.ndim == 3 and crop.shape[2] == 3 and crop.dtype == np.uint8
            and crop.shape[0] > 0 and crop.shape[1] > 0):
        got = f"{crop.dtype} array of shape {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
        raise DfdetectError(f"crop {i}: expected a BGR uint8 image of shape (H, W, 3), got {got}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


# --------------------------------------------------------------------------- export (torch)


def _candidate_specs(detector: Any, hw: tuple[int, int]) -> list[PreprocessSpec]:
    """Specs to try, most likely first; mean/std from ``data_config_``, ``mean_``/``std_`` or the timm cfg."""
    cfg = getattr(detector, "data_config_", None) or {}
    mean, std = cfg.get("mean", getattr(detector, "mean_", None)), cfg.get("std", getattr(detector, "std_", None))
    if mean is None or std is None:
        cfg = getattr(detector.model_, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    m = tuple(float(v) for v in mean)
    s = tuple(float(v) for v in std)
    return [PreprocessSpec(hw, m, s, interp, rgb) for rgb in (True, False) for interp in INTERPOLATIONS]


def resolve_preprocess(detector: Any, *, seed: int = 0) -> PreprocessSpec:
    """The numpy spec that reproduces ``detector.preprocess`` on random crops (checked, not assumed)."""
    rng = np.random.default_rng(seed)
    # small, large and square crops, so that every interpolation rule gives a different answer
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((97, 83), (700, 620), (64, 64), (23, 31))]
    want = [detector.preprocess([c]).detach().cpu().numpy()[0] for c in crops]
    hw = (int(want[0].shape[-2]), int(want[0].shape[-1]))  # the input size is what preprocess makes
    for spec in _candidate_specs(detector, hw):
        got = spec.apply(crops)
        if all(np.abs(g - w).max() <= _TOL for g, w in zip(got, want, strict=True)):
            return spec
    raise DfdetectError(
        f"cannot reproduce {type(detector).__name__}.preprocess with OpenCV resize + mean/std "
        f"(input shape {tuple(want[0].shape)}); the ONNX model would score differently, so it was not written")


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    preprocess: PreprocessSpec
    max_abs_diff: float  #: |P(fake) onnxruntime - P(fake) torch| on random crops


def export_onnx(detector: Any, path: str | Path, *, opset: int = 17, check_crops: int = 8) -> ExportInfo:
    """Write ``detector`` to ``path`` as ONNX (input ``input`` (batch, 3, H, W), output ``logit`` (batch, 1)).

    The preprocessing, threshold and protocol go into ``metadata_props`` (keys ``dfdetect.*``); the
    protocol's ``model.tta_flip`` (mean logit of the crop and its mirror image) is part of the graph. The file
    is checked before it is kept: onnxruntime and torch must agree on ``check_crops`` random crops to 1e-4.
    """
    import onnx
    import torch

    spec = resolve_preprocess(detector)
    model = detector.model_
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    dummy = torch.zeros((1, 3, *spec.size), dtype=torch.float32, device=device)
    graph = _ScoredLogit(model, bool(getattr(detector.protocol_.model, "tta_flip", False)))
    path = Path(path)
    try:
        with _io.atomic_path(path, suffix=".onnx") as tmp:
            torch_to_onnx(graph, dummy, str(tmp), output_name="logit", opset=opset)
            proto = onnx.load(str(tmp))
            meta = {
                "format": _FORMAT,
                "preprocess": json.dumps(asdict(spec)),
                "threshold": repr(float(detector.threshold_)),
                "protocol": detector.protocol_.model_dump_json(),
            }
            for k, v in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = METADATA_PREFIX + k, v
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
            diff = _max_diff(detector, OnnxDetector.load(tmp), check_crops)
            if diff > 1e-4:
                raise DfdetectError(f"ONNX and torch scores differ by {diff:.2e} (> 1e-4); not written", path=path)
    finally:
        model.train(was_training)
    return ExportInfo(path=path, preprocess=spec, max_abs_diff=diff)


def torch_to_onnx(module: Any, dummy: Any, dest: Any, *, output_name: str = "output", opset: int = 17) -> None:
    """``torch.onnx.export`` of ``module`` to a path or file object; input ``input`` with a dynamic batch axis."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # the TorchScript exporter warns it is legacy; the dynamo one needs onnxscript, not a dependency
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), dest, dynamo=False, input_names=["input"], output_names=[output_name],
                          opset_version=opset, dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}})


def onnx_session(module: Any, dummy: Any, *, threads: int = 0, spin: bool = True) -> Any:
    """An onnxruntime session running ``module`` on CPU, exported in memory (no file).

    ``spin=False`` stops its threads busy-waiting between runs, for callers that do other work (reading
    the next batch) on the same cores in the meantime.
    """
    import io

    buf = io.BytesIO()
    torch_to_onnx(module, dummy, buf)
    return _cpu_session(buf.getvalue(), threads, spin)


def _cpu_session(model: str | bytes, threads: int, spin: bool = True) -> Any:
    """An onnxruntime CPU session for a file path or serialised model (``threads=0``: its default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _ScoredLogit(model: Any, tta_flip: bool) -> Any:
    """The network as Detector.predict_proba runs it: with ``tta_flip`` the mean logit of crop and mirror.

    Baked into the graph so that onnxruntime needs no extra step; ``(n, 1)`` logits either way.
    """
    import torch
    from torch import nn

    class ScoredLogit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logit = self.model(x).reshape(-1, 1)
            if tta_flip:
                logit = (logit + self.model(torch.flip(x, dims=(3,))).reshape(-1, 1)) / 2
            return logit

    return ScoredLogit().eval()


def _max_diff(detector: Any, onnx_det: OnnxDetector, n: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 256, (int(rng.integers(48, 300)), int(rng.integers(48, 300)), 3), dtype=np.uint8)
             for _ in range(n)]
    a = np.asarray(detector.predict_proba(crops), np.float64).reshape(-1)
    return float(np.abs(a - onnx_det.predict_proba(crops)).max())


# --------------------------------------------------------------------------- onnxruntime detector


class OnnxDetector:
    """An exported detector on onnxruntime: ``predict_proba(crops_bgr) -> P(fake)``, no torch.

    Has the same ``threshold_`` and ``protocol_`` as the torch ``Detector``, so predict and serve take
    either. Grad-CAM is not available (no gradients).
    """

    def __init__(self, session: Any = None, preprocess: PreprocessSpec | None = None, threshold: float = 0.5,
                 protocol: Protocol | None = None, path: Path | None = None):
        self.session_ = session
        self.preprocess_ = preprocess
        self.threshold_ = threshold
        self.protocol_ = protocol or Protocol.default()
        self.path_ = path

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 0) -> OnnxDetector:
        """Open an ONNX file written by :func:`export_onnx` (``threads=0``: onnxruntime's default)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError("no such ONNX file; write one with `dfdetect export --model FILE --onnx OUT.onnx`",
                               path=path)
        try:
            session = _cpu_session(str(path), threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a corrupt file
            raise WeightsError(f"not a loadable ONNX model ({str(exc).splitlines()[0][:200]})", path=path) from None
        meta = session.get_modelmeta().custom_metadata_map
        fields = check_metadata(meta, path, fmt=_FORMAT, prefix=METADATA_PREFIX,
                                required=("preprocess", "threshold", "protocol"),
                                hint="; export it with `dfdetect export`")
        p = fields["preprocess"]
        spec = PreprocessSpec(size=p.size, mean=p.mean, std=p.std, interpolation=p.interpolation, rgb=p.rgb)
        return cls(session, spec, fields["threshold"], fields["protocol"], path)

    def preprocess(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        return self.preprocess_.apply(crops_bgr)

    def predict_logit(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops_bgr) == 0:
            return np.zeros(0, np.float64)
        (logit,) = self.session_.run(["logit"], {"input": self.preprocess(crops_bgr)})
        return np.asarray(logit, np.float64).reshape(len(crops_bgr), -1)[:, 0]

    def predict_proba(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) per crop, shape ``(n,)``."""
        return _sigmoid(self.predict_logit(crops_bgr))
