"""ResNet50 v2 (He et al., 2016, https://arxiv.org/abs/1603.05027) as timm ``resnetv2_50``: the seed's report."""

from __future__ import annotations

from typing import Any

from dfdetect.model.backbones._factory import BackboneClassifier, build_backbone
from dfdetect.model.backbones._registry import BackboneCfg, generate_default_cfgs, register_backbone

__all__ = ["resnet50v2"]

default_cfgs = generate_default_cfgs({
    "resnet50v2.a1h_in1k": BackboneCfg(timm_name="resnetv2_50", timm_tag="a1h_in1k", cam_layer="norm",
                                       description="timm hub weights (pre-activation ResNet50)"),
})


@register_backbone
def resnet50v2(pretrained: bool = False, *, name: str = "resnet50v2", **kwargs: Any) -> BackboneClassifier:
    """Pre-activation ResNet50, 2048-d features."""
    return build_backbone(name, pretrained=pretrained, **kwargs)
