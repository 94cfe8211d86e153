"""Xception (Chollet, 2017, https://arxiv.org/abs/1610.02357) as timm ``legacy_xception``: FF++'s baseline."""

from __future__ import annotations

from typing import Any

from dfdetect.model.backbones._factory import BackboneClassifier, build_backbone
from dfdetect.model.backbones._registry import BackboneCfg, generate_default_cfgs, register_backbone

__all__ = ["xception"]

default_cfgs = generate_default_cfgs({
    "xception.tf_in1k": BackboneCfg(timm_name="legacy_xception", timm_tag="tf_in1k", cam_layer="act4",
                                    description="timm hub weights"),
})


@register_backbone
def xception(pretrained: bool = False, *, name: str = "xception", **kwargs: Any) -> BackboneClassifier:
    """Xception, 2048-d features."""
    return build_backbone(name, pretrained=pretrained, **kwargs)
