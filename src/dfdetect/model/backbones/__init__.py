"""Backbones: a registry of timm feature extractors with offline weights. Importing fills the registry."""

from dfdetect.model.backbones._factory import (
    BackboneClassifier,
    EnsembleClassifier,
    create_backbone,
    ensemble_of,
    new_head,
)
from dfdetect.model.backbones._registry import (
    BackboneCfg,
    OfflineWeights,
    get_backbone_cfg,
    is_backbone,
    list_backbones,
    register_backbone,
    split_backbone_name_tag,
)
from dfdetect.model.backbones._weights import load_state_file
from dfdetect.model.backbones.catalog import *

__all__ = [
    "BackboneCfg", "BackboneClassifier", "EnsembleClassifier", "OfflineWeights", "create_backbone",
    "ensemble_of", "get_backbone_cfg", "is_backbone", "list_backbones", "load_state_file", "new_head", "register_backbone",
    "split_backbone_name_tag",
]
