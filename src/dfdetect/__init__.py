"""dfdetect: find face deepfakes in videos and images.

Internally every score is P(fake): fake = 1 is the positive class (see :mod:`dfdetect.data.labels`).
The names below are the public Python API (training and evaluation are ``dfdetect.training.trainer.train`` and
``dfdetect.evaluation.evaluate.evaluate``); the ``dfdetect`` command is a thin layer over them.
Imports are lazy so that ``import dfdetect`` (and the ONNX-only path) does not pull in torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# onnxruntime (1.32) writes a device id and an event queue for upload under ~/.cache/Microsoft on import unless
# this is set: nothing may be written outside the output folder. A user's own setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

_API = {
    "Protocol": "dfdetect.config",
    "discover": "dfdetect.data.sources",
    "extract_frames": "dfdetect.preprocess.frames",
    "extract_faces": "dfdetect.preprocess.faces",
    "make_srm_copy": "dfdetect.preprocess.srm",
    "create_backbone": "dfdetect.model.backbones",
    "list_backbones": "dfdetect.model.backbones",
    "build_crop_table": "dfdetect.data.crops",
    "Detector": "dfdetect.model.detector",
    "compute_metrics": "dfdetect.evaluation.metrics",
    "run_study": "dfdetect.evaluation.study",
    "predict_path": "dfdetect.inference.predict",
    "resolve_model": "dfdetect.model.hub",
    "list_models": "dfdetect.model.hub",
}
__all__ = ["Detector", "Protocol", "build_crop_table", "compute_metrics", "create_backbone", "discover",
           "extract_faces", "extract_frames", "list_backbones", "list_models", "make_srm_copy", "predict_path",
           "resolve_model", "run_study"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dfdetect' has no attribute {name!r}")
