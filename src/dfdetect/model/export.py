"""Lean deployment: a detector as one ONNX file, scored with onnxruntime and no torch.

``export_onnx`` writes the network with a dynamic batch axis and stores everything needed to use it in
the model's ``metadata_props``: the preprocessing (input size, mean, std, resize interpolation, channel
order), the decision threshold and the training protocol. ``OnnxDetector`` reads them back and offers
the same ``predict_proba(crops_bgr)`` as the torch ``Detector``, with numpy/OpenCV preprocessing only.

This module must never import torch at module level: ``OnnxDetector`` is what runs where torch is not
installed. ``export_onnx`` imports it inside the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfdetect import _io
from dfdetect.config import Protocol
from dfdetect.data.preprocess_spec import PreprocessSpec
from dfdetect.errors import DfdetectError, WeightsError
from dfdetect.model.metadata import check_metadata

__all__ = ["METADATA_PREFIX", "ExportInfo", "OnnxDetector", "PreprocessSpec", "export_onnx", "onnx_session",
           "torch_to_onnx"]

METADATA_PREFIX = "dfdetect."
_FORMAT = "1"
_TOL = 1e-5  # numpy preprocessing must reproduce Detector.preprocess to float32 rounding


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


# --------------------------------------------------------------------------- export (torch)


def resolve_preprocess(detector: Any, *, seed: int = 0) -> PreprocessSpec:
    """The detector's declared :class:`PreprocessSpec`, checked: it must reproduce ``detector.preprocess``.

    The check is on random crops (small, large and square ones, where resize rules differ), so an exported
    model never scores a crop differently from the detector it came from.
    """
    spec = getattr(detector, "preprocess_spec", None)
    if not isinstance(spec, PreprocessSpec):
        raise DfdetectError(f"{type(detector).__name__} declares no preprocess_spec (a PreprocessSpec); "
                            "the ONNX model could not know how to prepare a crop, so it was not written")
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((97, 83), (700, 620), (64, 64), (23, 31))]
    want = [detector.preprocess([c]).detach().cpu().numpy()[0] for c in crops]
    got = spec.apply(crops)
    if not all(g.shape == w.shape and np.abs(g - w).max() <= _TOL for g, w in zip(got, want, strict=True)):
        raise DfdetectError(
            f"cannot reproduce {type(detector).__name__}.preprocess with its preprocess_spec ({spec.interpolation} "
            f"resize to {spec.size}, mean/std); the ONNX model would score differently, so it was not written")
    return spec


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    preprocess: PreprocessSpec
    max_abs_diff: float  #: |P(fake) onnxruntime - P(fake) torch| on random crops


def export_onnx(detector: Any, path: str | Path, *, opset: int = 17, check_crops: int = 8) -> ExportInfo:
    """Write ``detector`` to ``path`` as ONNX (input ``input`` (batch, 3, H, W), output ``logit`` (batch, 1)).

    Where the maps are the network's Grad-CAM (:func:`~dfdetect.model.detector.cam_is_gradcam`), a second output
    ``cam`` (batch, members, h, w) carries them, so the file draws heatmaps without torch. The preprocessing, threshold and protocol go into ``metadata_props`` (keys ``dfdetect.*``); the
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
    from dfdetect.model.detector import ScoredLogit, ScoredLogitAndCam, cam_is_gradcam

    tta = bool(getattr(detector.protocol_.model, "tta_flip", False))
    explains = cam_is_gradcam(model, spec.size)
    graph = (ScoredLogitAndCam if explains else ScoredLogit)(model, tta).eval()
    path = Path(path)
    try:
        with _io.atomic_path(path, suffix=".onnx") as tmp:
            torch_to_onnx(graph, dummy, str(tmp), output_names=("logit", "cam") if explains else ("logit",),
                          opset=opset)
            proto = onnx.load(str(tmp))
            meta = {
                "format": _FORMAT,
                "preprocess": spec.model_dump_json(),
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


def torch_to_onnx(module: Any, dummy: Any, dest: Any, *, output_names: Sequence[str] = ("output",),
                  opset: int = 17) -> None:
    """``torch.onnx.export`` of ``module`` to a path or file object; input ``input`` and every output with a dynamic
    batch axis."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # the TorchScript exporter warns it is legacy; the dynamo one needs onnxscript, not a dependency
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), dest, dynamo=False, input_names=["input"], output_names=list(output_names),
                          opset_version=opset,
                          dynamic_axes={"input": {0: "batch"}, **{name: {0: "batch"} for name in output_names}})


def onnx_session(module: Any, dummy: Any, *, threads: int = 0, spin: bool = True) -> Any:
    """An onnxruntime session running ``module`` on CPU, exported in memory (no file).

    ``spin=False`` stops its threads busy-waiting between runs, for callers that do other work (reading
    the next batch) on the same cores in the meantime.
    """
    import io

    buf = io.BytesIO()
    torch_to_onnx(module, dummy, buf)
    return _cpu_session(buf.getvalue(), threads, spin)


#: Operators whose work the file, not the input, decides: a ``Loop`` of 2**62 turns held predict, and a serve
#: worker, for ever. :func:`export_onnx` writes none of them.
_UNBOUNDED_OPS = frozenset({"Loop", "Scan", "If", "SequenceMap"})
#: An ONNX file larger than this is not a dfdetect twin (VGG16's fp32 twin is about 0.5 GB): not parsed.
_MAX_ONNX_BYTES = 1 << 30


def _check_graph(path: Path) -> None:
    """Refuse, from the graph and before onnxruntime runs it, an ONNX file that could run without end: control
    flow, operators outside the standard domain (onnxruntime's contrib kernels), or more bytes than any twin."""
    import onnx

    from dfdetect._io import regular_file

    size = regular_file(path)
    if size > _MAX_ONNX_BYTES:
        raise WeightsError(f"{size / 2**20:.0f} MB, larger than any dfdetect ONNX twin ({_MAX_ONNX_BYTES >> 20} MB); "
                           "not loaded", path=path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's errors for a file that is not an ONNX model
        why = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"not a loadable ONNX model ({why})", path=path) from None
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    odd = sorted({n.op_type for n in nodes if n.op_type in _UNBOUNDED_OPS}
                 | {f"{n.domain}.{n.op_type}" for n in nodes if n.domain not in ("", "ai.onnx")})
    if odd:
        raise WeightsError(f"its graph holds {', '.join(odd[:5])}, which `dfdetect export` never writes (control flow "
                           "or non-standard operators could run for ever); not loaded", path=path)


def _cpu_session(model: str | bytes, threads: int, spin: bool = True) -> Any:
    """An onnxruntime CPU session for a file path or serialised model (``threads=0``: its default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: its errors are raised, and become dfdetect's one line
    # Without its arena, onnxruntime frees each batch's activations: with it, RSS grew by 1.3 GB over five
    # batches of 64 crops at 160 px and stayed there (docs/SPEED.md); speed was the same.
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


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
    either. Heatmaps come from the file's ``cam`` output when it has one (:attr:`explainable`); there are no
    gradients.
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
        """Open an ONNX file written by :func:`export_onnx` (``threads=0``: onnxruntime's default, one per core;
        one inside a pool or Ray worker, where N workers already use the N cores)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError("no such ONNX file; write one with `dfdetect export --model FILE --onnx OUT.onnx`",
                               path=path)
        from dfdetect.parallel import in_worker

        _check_graph(path)
        try:
            session = _cpu_session(str(path), threads or (1 if in_worker() else 0))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a corrupt file
            raise WeightsError(f"not a loadable ONNX model ({str(exc).splitlines()[0][:200]})", path=path) from None
        meta = session.get_modelmeta().custom_metadata_map
        fields = check_metadata(meta, path, fmt=_FORMAT, prefix=METADATA_PREFIX,
                                required=("preprocess", "threshold", "protocol"),
                                hint="; export it with `dfdetect export`")
        return cls(session, fields["preprocess"], fields["threshold"], fields["protocol"], path)

    def preprocess(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        return self.preprocess_.apply(crops_bgr)

    def predict_logit(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops_bgr) == 0:
            return np.zeros(0, np.float64)
        # 16 crops per run: as fast as 64 through onnxruntime, at 0.4x the peak memory (160 px, this CPU)
        parts = [self.session_.run(["logit"], {"input": self.preprocess(crops_bgr[i:i + 16])})[0]
                 for i in range(0, len(crops_bgr), 16)]
        return np.asarray(np.concatenate(parts), np.float64).reshape(len(crops_bgr), -1)[:, 0]

    def predict_proba(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) per crop, shape ``(n,)``."""
        return _sigmoid(self.predict_logit(crops_bgr))

    @property
    def explainable(self) -> bool:
        """Whether the file has the ``cam`` output :func:`export_onnx` writes, from which heatmaps are drawn."""
        return self.session_ is not None and "cam" in {o.name for o in self.session_.get_outputs()}

    def class_activations(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """Each member's raw class activation map per crop, ``(n, members, h, w)`` float32, from the ``cam`` output
        (:class:`dfdetect.inference.explain` turns them into Grad-CAM heatmaps)."""
        if not self.explainable:
            raise WeightsError("this ONNX file has no 'cam' output to draw heatmaps from; re-export it with "
                               "`dfdetect export`", path=self.path_)
        parts = [self.session_.run(["cam"], {"input": self.preprocess(crops_bgr[i:i + 16])})[0]
                 for i in range(0, len(crops_bgr), 16)]
        maps = np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.float32)
        if maps.ndim != 4 or maps.shape[0] != len(crops_bgr):
            raise WeightsError(f"the ONNX 'cam' output has shape {maps.shape}, not (crops, members, h, w)",
                               path=self.path_)
        return np.nan_to_num(maps.astype(np.float32, copy=False))
