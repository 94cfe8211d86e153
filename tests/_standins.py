"""Small stand-ins shared by the evaluate and report tests (one copy, so they cannot drift apart)."""

from __future__ import annotations

import numpy as np


def Table(paths=(), labels=(), videos=()):
    """A real :class:`dfdetect.data.crops.CropTable` of crops, one group per video, none in a test list."""
    from dfdetect.data.crops import CropTable

    return CropTable(list(paths), np.asarray(list(labels), dtype=np.int64), list(videos), [(v,) for v in videos],
                     np.zeros(len(paths), bool))


class MeanBrightness:
    """Stand-in detector: P(fake) = mean brightness / 255, at a fixed 'validation' threshold."""

    def __init__(self, threshold: float = 0.5):
        from dfdetect.config import Protocol

        self.threshold_ = threshold
        self.protocol_ = Protocol.default()  #: the Scorer contract: what it was made by
        self.calls: list[int] = []

    def predict_proba(self, crops):
        self.calls.append(len(crops))
        return np.array([c.mean() / 255.0 for c in crops])


def ship_tiny_model(models_dir, name=None, **figures):
    """A real (untrained, 48 px, Haar faces) detector shipped into ``models_dir`` with ``ship_model``, so tests
    of the model zoo and the demo never need the trained file. Returns the card path."""
    import torch

    from dfdetect.config import FaceConfig, ModelConfig, Protocol
    from dfdetect.model import hub
    from dfdetect.model.backbones import create_backbone
    from dfdetect.model.card import ModelCard, ModelFigures, ship_model
    from dfdetect.model.detector import Detector

    torch.manual_seed(0)
    proto = Protocol.default().model_copy(update={"model": ModelConfig(input_size=48, pretrained=False, tta_flip=False, ensemble=1, pool="max"),
                                                  "faces": FaceConfig(detector="haar", min_size=40)})
    det = Detector.from_model(create_backbone("mobilenet_v2", pretrained=False), proto, 0.5)
    card = ModelCard(name=name or hub.DEFAULT_MODEL, summary="A tiny untrained test detector.",
                     training_data="none (random weights)", recipe_command="dfdetect train DATA --out runs/x",
                     figures=ModelFigures(**figures))
    return ship_model(det, card, models_dir)
