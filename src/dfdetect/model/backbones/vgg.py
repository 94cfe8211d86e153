"""VGG16 (Simonyan & Zisserman, 2014, https://arxiv.org/abs/1409.1556) as timm ``vgg16``.

Only the convolutional features (512 channels) are used, then global pooling, as the seed did
with Keras ``VGG16(include_top=False)``; timm's 4096-d ConvMlp ``pre_logits`` is removed.
"""

from __future__ import annotations

from typing import Any

from dfdetect.model.backbones._factory import BackboneClassifier, build_backbone
from dfdetect.model.backbones._registry import BackboneCfg, generate_default_cfgs, register_backbone

__all__ = ["vgg16"]

default_cfgs = generate_default_cfgs({
    "vgg16.tv_in1k": BackboneCfg(timm_name="vgg16", timm_tag="tv_in1k", cam_layer="features.29",
                                 drop_modules=("pre_logits",), description="timm hub (torchvision) weights"),
})


@register_backbone
def vgg16(pretrained: bool = False, *, name: str = "vgg16", **kwargs: Any) -> BackboneClassifier:
    """VGG16 conv features -> 512-d; with ``srm_in_model`` this is NA-VGG."""
    return build_backbone(name, pretrained=pretrained, **kwargs)
