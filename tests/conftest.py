"""Shared fixtures. Tests never need a GPU or the network, and make their own data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm otherwise waits ~45 s for the hub before failing
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip, saying why, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (it sits beside the checkout in dev and CI)")
    return SHARED_DATA


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """A real detector file (a scan loads its model itself, in its workers)."""
    from dfdetect.config import ModelConfig, Protocol
    from dfdetect.model.backbones import create_backbone
    from dfdetect.model.detector import Detector

    proto = Protocol.seed().model_copy(update={"model": ModelConfig(pretrained=False, input_size=32, tta_flip=False,
                                                                    ensemble=1, pool="max")})
    net = create_backbone("mobilenet_v2", pretrained=False, num_classes=1)
    return Detector.from_model(net, proto, 0.5).save(tmp_path / "tiny" / "detector.safetensors")


@pytest.fixture
def red_cli(monkeypatch, tmp_path) -> Path:
    """The CLI's scorer replaced by a stand-in that calls every red crop fake (``test_predict.RedScorer``): the
    path it returns stands for the model file."""
    from dfdetect.cli import use
    from test_predict import RedScorer

    monkeypatch.setattr(use, "load_scorer", lambda path, **kw: RedScorer())
    stand_in = tmp_path / "m.safetensors"
    stand_in.write_bytes(b"x")
    return stand_in
