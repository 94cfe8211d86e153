"""A trained detector: the network, its protocol and the validation-chosen threshold, in one file.

Follows the scikit-learn estimator habits: ``__init__`` only stores, training
(:func:`dfdetect.training.trainer.train`, which returns a fitted one) or :meth:`Detector.load` fits it, and learned state
ends in ``_`` (``model_``, ``threshold_``, ``protocol_``,
``data_config_``). :meth:`Detector.save` writes ONE ``.safetensors`` file whose metadata holds the
protocol JSON and the threshold; :meth:`Detector.load` rebuilds the network with
``pretrained=False`` (no network, no pretrained weights needed) and loads it strictly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from dfdetect._io import atomic_path
from dfdetect.config import INFERENCE, Protocol
from dfdetect.data.preprocess_spec import PreprocessSpec, check_crop
from dfdetect.errors import DfdetectError, WeightsError
from dfdetect.model.metadata import check_metadata
from dfdetect.rundir import DETECTOR_FILE

if TYPE_CHECKING:
    from dfdetect.model.backbones import BackboneClassifier, EnsembleClassifier

__all__ = ["DETECTOR_FILE", "FORMAT", "Detector", "NotFittedError", "detector_file", "score_logits"]

FORMAT = "dfdetect.detector/1"


def detector_file(path: str | Path) -> Path:
    """A run folder -> the ``detector.safetensors`` in it (train, study cells and demo save one there);
    any other path as it is."""
    path = Path(path)
    return path / DETECTOR_FILE if path.is_dir() and (path / DETECTOR_FILE).is_file() else path


def score_logits(model: nn.Module, x: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """``(N,)`` logits; with ``tta_flip`` the mean of the crop's and its mirror image's logits."""
    logits = model(x).reshape(-1)
    if tta_flip:
        logits = (logits + model(torch.flip(x, dims=(3,))).reshape(-1)) / 2
    return logits


class ScoredLogit(nn.Module):
    """The network as :meth:`Detector.predict_proba` runs it, ``(n, 1)`` logits (with ``tta_flip`` the mean of the
    crop's and its mirror image's): one module for torch scoring and the exported ONNX graph."""

    def __init__(self, model: nn.Module, tta_flip: bool = False):
        super().__init__()
        self.model, self.tta_flip = model, tta_flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return score_logits(self.model, x, self.tta_flip).reshape(-1, 1)


def _members(model: nn.Module) -> list[nn.Module]:
    return list(getattr(model, "members", [model]))


class ScoredLogitAndCam(ScoredLogit):
    """:class:`ScoredLogit`'s logits and, as a second output, each member's class activation map
    ``(n, members, h, w)`` at its last feature map: ``sum_k dlogit/dA_k * A_k``.

    Why: for a pooled linear head the gradient of the logit, averaged over the map, is ``w_k / (h w)`` (divided by
    the members' count in an ensemble) for average and max pooling alike, so this map is exactly what Grad-CAM
    weighs at that layer. The ONNX twin then draws the same heatmaps with no gradients, and no torch.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        members = _members(self.model)
        feats = [m.forward_features(x) for m in members]
        logits = torch.stack([m.forward_head(f) for m, f in zip(members, feats, strict=True)]).mean(0).reshape(-1)
        if self.tta_flip:
            logits = (logits + self.model(torch.flip(x, dims=(3,))).reshape(-1)) / 2
        h, w = feats[0].shape[-2:]
        cams = torch.stack([torch.einsum("nkhw,k->nhw", f, m.fc.weight[0])
                            for m, f in zip(members, feats, strict=True)], dim=1)
        return logits.reshape(-1, 1), cams / (len(members) * h * w)


def cam_is_gradcam(model: nn.Module, size: tuple[int, int]) -> bool:
    """Whether :class:`ScoredLogitAndCam`'s maps are this network's Grad-CAM: one logit from a pooled linear head
    (``fc``), and Grad-CAM's target layer is the last feature map (VGG's is one pooling step earlier)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(0)).to(device)
    for m in _members(model):
        fc = getattr(m, "fc", None)
        if not (isinstance(fc, nn.Linear) and fc.out_features == 1 and hasattr(m, "forward_features")
                and hasattr(m, "cam_target_layers")):
            return False
        seen: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
                 for layer in m.cam_target_layers()]
        try:
            with torch.no_grad():
                feats = m.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        if len(seen) != 1 or seen[0].shape != feats.shape or not torch.equal(seen[0], feats):
            return False
    return True


def _sort_metadata(path: Path) -> None:
    """Rewrite a .safetensors header with its metadata keys sorted, in place.

    Why: safetensors keeps the metadata in a Rust HashMap, written in a random order on every save, so two
    identical trainings gave files whose bytes differed. The header is the same JSON reordered (the format
    allows trailing spaces), so it fits in its old length; the tensor data is not touched.
    """
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        meta = header.pop("__metadata__", None)
        ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta else {}), **header}
        new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) > n:  # never expected (the same JSON, reordered); leave the file as safetensors wrote it
            return
        fh.seek(8)
        fh.write(new.ljust(n))


class NotFittedError(DfdetectError):
    """The detector was used before ``fit`` or ``load``."""


class Detector:
    """P(fake) for face crops.

    Parameters
    ----------
    protocol : Protocol, default=None
        The recipe :meth:`fit` trains with; ``None`` means ``Protocol.default()``.
    batch_size : int, default=INFERENCE.batch_size
        Crops per forward pass in :meth:`predict_proba`.

    Attributes
    ----------
    model_ : BackboneClassifier or EnsembleClassifier (``protocol.model.ensemble`` > 1)
    protocol_ : Protocol
    threshold_ : float
        Decision threshold chosen on validation scores (``protocol.train.threshold``).
    data_config_ : dict
        mean / std / input size used to preprocess crops.
    """

    def __init__(self, protocol: Protocol | None = None, *, batch_size: int = INFERENCE.batch_size):
        self.protocol = protocol
        self.batch_size = batch_size

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model(cls, model: BackboneClassifier | EnsembleClassifier, protocol: Protocol, threshold: float, *,
                   batch_size: int = INFERENCE.batch_size) -> Detector:
        """Wrap an already trained network (what :func:`dfdetect.training.trainer.train` returns)."""
        det = cls(protocol, batch_size=batch_size)
        det.model_ = model.cpu().eval().to(memory_format=torch.channels_last)  # inputs are channels_last too
        det.protocol_ = protocol.recipe()  # what saved files record: the run settings are not the model's
        det.threshold_ = float(threshold)
        det.data_config_ = {**model.data_config, "input_size": (3, protocol.model.input_size,
                                                                 protocol.model.input_size)}
        return det

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this Detector is not fitted yet; use Detector.load(path), or the detector dfdetect.training.trainer.train returns")

    # ------------------------------------------------------------------ inference

    @property
    def input_size(self) -> int:
        self._check_fitted()
        return int(self.data_config_["input_size"][-1])

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        """How a crop becomes this network's input; the ONNX export stores the same spec."""
        self._check_fitted()
        return PreprocessSpec.from_data_config(self.data_config_, self.input_size)

    def preprocess(self, crops_bgr: Sequence[np.ndarray]) -> torch.Tensor:
        """BGR uint8 crops of any size -> normalised ``(N, 3, S, S)`` tensor (channels_last)."""
        return torch.from_numpy(self.preprocess_spec.apply(crops_bgr)).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def predict_proba(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) for each crop, shape ``(n,)``; batched, in eval mode, without gradients."""
        self._check_fitted()
        for i, c in enumerate(crops_bgr):  # every crop checked before any is scored
            check_crop(c, i)
        self.model_.eval()
        out: list[np.ndarray] = []
        for start in range(0, len(crops_bgr), self.batch_size):  # threads: set once, at the edge (threads.tune)
            x = self.preprocess(crops_bgr[start:start + self.batch_size])
            logits = score_logits(self.model_, x, self.protocol_.model.tta_flip)
            out.append(torch.sigmoid(logits.float()).numpy())
        return np.concatenate(out) if out else np.empty(0, dtype=np.float32)

    def predict(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """1 (fake) where P(fake) >= ``threshold_``, else 0."""
        return (self.predict_proba(crops_bgr) >= self.threshold_).astype(np.int64)

    def cam_target_layers(self) -> list[nn.Module]:
        """The backbone's last conv block, for Grad-CAM."""
        self._check_fitted()
        return self.model_.cam_target_layers()

    # ------------------------------------------------------------------ persistence

    def _metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "protocol": self.protocol_.recipe_json(),
            "threshold": repr(float(self.threshold_)),
            "backbone": self.model_.backbone_name,
            "members": str(len(getattr(self.model_, "members", ())) or 1),  # > 1: an EnsembleClassifier
            "weights_id": self.model_.weights_id,
            "data_config": json.dumps({k: list(v) if isinstance(v, tuple) else v
                                       for k, v in self.data_config_.items()}),
        }

    def save(self, path: str | Path, *, half: bool = False) -> Path:
        """Write ONE ``.safetensors`` file (weights + protocol + threshold in metadata), atomically.

        ``half=True`` stores the float tensors as float16: half the size, for a model shipped in the
        package; :meth:`load` casts them back to float32, so inference is unchanged apart from rounding.
        """
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        meta = {**self._metadata(), "dtype": "float16" if half else "float32"}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(state, str(tmp), metadata=meta)
            _sort_metadata(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Load a saved detector without the network or pretrained weights; problems -> one-line WeightsError."""
        from safetensors import safe_open

        from dfdetect.model.backbones import create_backbone, ensemble_of

        path = detector_file(path)
        if path.is_dir():
            raise WeightsError(f"a folder with no {DETECTOR_FILE} in it; pass the detector file", path=path)
        if not path.is_file():
            raise WeightsError("detector file not found", path=path)
        try:
            fh = safe_open(str(path), framework="pt")
            meta = fh.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - any reader error means "not a detector file"
            raise WeightsError(f"not a readable .safetensors file ({type(exc).__name__})", path=path) from None
        fields = check_metadata(meta, path, fmt=FORMAT, required=("protocol", "threshold"))
        protocol, threshold = fields["protocol"], fields["threshold"]
        backbone = fields.get("backbone", protocol.model.backbone)
        n_members = fields.get("members", 1)
        m = protocol.model
        try:
            members = [create_backbone(backbone, pretrained=False, srm_in_model=m.srm_in_model, pool=m.pool,
                                       num_classes=1, drop_rate=m.drop_rate) for _ in range(n_members)]
            model = ensemble_of(members)
        except DfdetectError as exc:  # e.g. a backbone this version does not know
            raise WeightsError(f"cannot rebuild the model ({exc})", path=path) from None
        # Names and shapes from the header first: a sparse 1 GB file took 4 GB and 14 s to be read, cast and only
        # then refused; no tensor is read unless the file holds exactly this model's tensors
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        try:
            have = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (no __iter__)
        except Exception as exc:  # noqa: BLE001 - a header the reader cannot follow
            raise WeightsError(f"not a readable .safetensors file ({type(exc).__name__})", path=path) from None
        if have != want:
            odd = sorted(set(have) ^ set(want)) or sorted(k for k in want if have[k] != want[k])
            shown = ", ".join(f"{k} {have.get(k, 'missing')} (model: {want.get(k, 'none')})" for k in odd[:3])
            why = f"weights do not fit backbone {backbone!r}: {len(odd)} tensors differ, e.g. {shown}"
            raise WeightsError(why[:400], path=path)
        try:
            state = {k: fh.get_tensor(k) for k in want}
        except Exception as exc:  # noqa: BLE001 - a truncated or lying data section
            raise WeightsError(f"not a readable .safetensors file ({type(exc).__name__})", path=path) from None
        # A half-precision file (save(half=True)): back to float32 for CPU inference, other dtypes kept.
        state = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            first = lines[1].strip() if len(lines) > 1 else str(exc)
            first = first if len(first) <= 300 else first[:300] + " ..."  # not hundreds of key names
            raise WeightsError(f"weights do not fit backbone {backbone!r}: {first}", path=path) from None
        model.weights_id = meta.get("weights_id", "file")
        return cls.from_model(model, protocol, threshold)

    def __repr__(self) -> str:
        if not hasattr(self, "model_"):
            return "Detector(unfitted)"
        return (f"Detector(backbone={self.model_.backbone_name!r}, input_size={self.input_size}, "
                f"threshold={self.threshold_:.4f}, protocol={self.protocol_.name!r})")
