"""The checks on a saved detector's metadata, shared by ``Detector.load`` (.safetensors) and
``OnnxDetector.load`` (.onnx).

Why one function: both files carry the same fields (format, protocol, threshold, ...) as strings, and a
damaged one must be refused the same way, before it is used: a NaN or out-of-range threshold silently
turns every verdict "real", and broken JSON would otherwise surface as a traceback, or as a 500 on every
upload to ``serve``. Every problem is one :class:`~dfdetect.errors.WeightsError` line naming the file and
the field. Imports no torch: the ONNX path runs where torch is not installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dfdetect.config import MAX_ENSEMBLE, Protocol, validation_line
from dfdetect.data.preprocess_spec import PreprocessSpec
from dfdetect.errors import WeightsError

__all__ = ["check_metadata", "check_threshold"]

def check_threshold(value: Any) -> float:
    """A decision threshold as a float in [0, 1]; ValueError otherwise (NaN included)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{str(value)[:40]!r} is not a number") from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"{t} is not in [0, 1]")
    return t


def _members(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not a whole number (ValueError)") from None
    if not 1 <= n <= MAX_ENSEMBLE:  # never build a million networks from a damaged file
        raise ValueError(f"asks for {n} ensemble members, expected 1 to {MAX_ENSEMBLE}")
    return n


def _backbone(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value


def _json_model(model: type[BaseModel]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            json.loads(value)
        except RecursionError:
            raise ValueError("is JSON nested too deep") from None
        except ValueError as exc:
            raise ValueError(f"is not JSON ({exc})") from None
        try:
            return model.model_validate_json(value)
        except ValidationError as exc:
            raise ValueError(f"is invalid ({validation_line(exc)})") from None

    return parse


def _protocol(value: str) -> Protocol:
    protocol = _json_model(Protocol)(value)
    from dfdetect.errors import DfdetectError
    from dfdetect.preprocess.faces import check_detector

    try:  # a face finder this install does not have would fail every file later, in lines not naming this one
        check_detector(protocol.faces.detector)
    except DfdetectError as exc:
        raise ValueError(f"faces.detector: {exc}") from None
    return protocol


#: every field either file may carry -> its parser (raises ValueError with the reason)
_FIELDS: dict[str, Callable[[str], Any]] = {
    "protocol": _protocol,
    "threshold": check_threshold,
    "members": _members,
    "backbone": _backbone,
    "preprocess": _json_model(PreprocessSpec),
}


def check_metadata(meta: Mapping[str, str], path: str | Path, *, fmt: str, required: Sequence[str],
                   prefix: str = "", hint: str = "") -> dict[str, Any]:
    """Validate a detector file's metadata; the parsed value of every known field present, by field name.

    ``fmt`` is the ``format`` the file must declare, ``required`` the fields it must have; ``prefix`` is
    how the file spells its keys (``dfdetect.`` in ONNX); ``hint`` is appended to "not a detector" lines.
    Raises one-line :class:`WeightsError` naming ``path`` and the field (its key as stored).
    """
    got = meta.get(prefix + "format")
    if got != fmt:
        raise WeightsError(f"not a dfdetect detector (metadata {prefix}format {got!r}, expected {fmt!r}){hint}",
                           path=path)
    missing = [prefix + k for k in required if prefix + k not in meta]
    if missing:
        raise WeightsError(f"detector metadata is damaged: {', '.join(missing)} missing{hint}", path=path)
    out: dict[str, Any] = {}
    for name, parse in _FIELDS.items():
        if prefix + name not in meta:
            continue
        try:
            out[name] = parse(meta[prefix + name])
        except ValueError as exc:
            reason = " ".join(str(exc).split())[:300]  # one line, never a page of JSON
            raise WeightsError(f"detector metadata is damaged: {prefix}{name} {reason}", path=path) from None
    return out
