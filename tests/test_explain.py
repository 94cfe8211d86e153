"""Grad-CAM on a one-logit model: the map must sit on what pushes the logit towards fake (logit > 0).

The tiny model has two 1x1 channels, "red" and "blue", and logit = 4 * mean(red) - 4 * mean(blue): a red
patch is evidence of fake, a blue one of real. Other test files import ``TinyTorchDetector`` from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dfdetect.config import Protocol
from dfdetect.data.preprocess_spec import PreprocessSpec
from dfdetect.inference.explain import LogitTarget, gradcam_maps, gradcam_overlay


class TinyTorchDetector:
    """Stand-in for dfdetect.model.detector.Detector with the same contract (model_, preprocess, predict_proba,
    cam_target_layers, threshold_, protocol_); any tiny ``nn.Module`` returning (n, 1) logits."""

    def __init__(self, model: nn.Module, size: int = 32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                 threshold: float = 0.5, protocol: Protocol | None = None, cam_layer: nn.Module | None = None):
        self.model_ = model.eval()
        self.size, self.mean_, self.std_ = size, mean, std
        self.threshold_ = threshold
        self.protocol_ = protocol or Protocol.seed()
        self._cam_layer = cam_layer

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(size=(self.size, self.size), mean=self.mean_, std=self.std_, interpolation="linear")

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        x = np.stack([cv2.cvtColor(cv2.resize(c, (self.size, self.size), interpolation=cv2.INTER_LINEAR),
                                   cv2.COLOR_BGR2RGB) for c in crops]).astype(np.float32) / 255.0
        x = (x - np.float32(self.mean_)) / np.float32(self.std_)
        return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def predict_proba(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            x = self.preprocess(crops)
            logit = self.model_(x).reshape(-1)
            if getattr(self.protocol_.model, "tta_flip", False):  # as Detector does
                logit = (logit + self.model_(torch.flip(x, dims=(3,))).reshape(-1)) / 2
            return torch.sigmoid(logit).numpy().astype(np.float64)

    def cam_target_layers(self) -> list[nn.Module]:
        return [self._cam_layer or [m for m in self.model_.modules() if isinstance(m, nn.Conv2d)][-1]]


class RedBlueNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0  # RGB input: channel 0 = red
            self.conv.weight[1, 2] = 1.0  # channel 1 = blue
            self.conv.bias.fill_(-0.5)
            self.head.weight.copy_(torch.tensor([[4.0, -4.0]]))
            self.head.bias.zero_()
        for p in self.parameters():  # frozen, as a head-only model's backbone is
            p.requires_grad_(False)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A small random CNN with BatchNorm (as real backbones have), 1 logit."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 1))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def red_blue_image() -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[2:14, 2:14] = (0, 0, 255)  # red, top-left (BGR)
    img[20:30, 20:30] = (255, 0, 0)  # blue, bottom-right
    return img


@pytest.fixture(scope="module")
def red_blue() -> TinyTorchDetector:
    net = RedBlueNet()
    return TinyTorchDetector(net, size=32, cam_layer=net.act)


def test_fake_logit_map_sits_on_fake_evidence(red_blue):
    img = red_blue_image()
    assert red_blue.predict_proba([img])[0] > 0.5  # more red than blue: the logit is > 0, fake
    [cam] = gradcam_maps(red_blue, [img])
    assert cam.shape == (32, 32) and 0 <= cam.min() and cam.max() <= 1
    assert cam[3:13, 3:13].mean() > 0.8 and cam[21:29, 21:29].mean() < 0.05


def test_sign_minus_one_explains_real(red_blue):
    [cam] = gradcam_maps(red_blue, [red_blue_image()], sign=-1)
    assert cam[21:29, 21:29].mean() > 0.8 and cam[3:13, 3:13].mean() < 0.05


def test_overlay_is_bgr_at_crop_size_and_differs_from_crop(red_blue):
    crop = cv2.resize(red_blue_image(), (70, 50), interpolation=cv2.INTER_NEAREST)
    out = gradcam_overlay(red_blue, crop)
    assert out.shape == crop.shape and out.dtype == np.uint8 and not np.array_equal(out, crop)
    assert red_blue.model_.training is False


def test_batch_and_random_cnn():
    det = TinyTorchDetector(tiny_cnn(), size=40)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (int(h), 60, 3), dtype=np.uint8) for h in (30, 60, 90)]
    maps = gradcam_maps(det, crops)
    assert maps.shape == (3, 40, 40) and np.isfinite(maps).all()
    assert gradcam_maps(det, []).shape[0] == 0


def test_logit_target_shapes():
    t = LogitTarget()
    assert float(t(torch.tensor([2.5]))) == 2.5 and float(t(torch.tensor([[1.5]]))) == 1.5
    assert float(LogitTarget(-1)(torch.tensor([2.0]))) == -2.0


def test_predict_explain_adds_heatmaps(tmp_path, monkeypatch, red_blue):
    from dfdetect.inference import predict as P
    from test_predict import GreenSquares, write_video

    frames = []
    for i in range(6):
        img = np.zeros((64, 64, 3), np.uint8)
        img[10:40, 10:40] = (0, 255, 255 if i % 2 else 60)  # the stand-in finds green squares
        frames.append(img)
    video = write_video(tmp_path / "v.mp4", frames)
    [res] = P.predict_path(video, red_blue, frames=6, explain=True, max_explain=2, keep_images=True,
                           face_detector=GreenSquares())  # an injected face finder
    heat = [f for _, f in res.all_faces() if f.heatmap is not None]
    assert len(heat) == 2 and all(h.heatmap.shape == h.crop.shape for h in heat)
    assert min(h.p_fake for h in heat) >= max(f.p_fake for _, f in res.all_faces() if f.heatmap is None)
    assert P.gradcam_sheet(res) is not None


@pytest.mark.parametrize("members", [1, 2])
def test_real_detector_gradcam(tmp_path, members):
    from test_export import real_detector

    det = real_detector(tmp_path, size=64, members=members)
    crop = cv2.resize(red_blue_image(), (90, 90))
    out = gradcam_overlay(det, crop)
    assert out.shape == crop.shape and out.dtype == np.uint8
    params = list(det.model_.parameters())
    assert not det.model_.training and all(p.grad is None for p in params) and all(p.requires_grad for p in params)


# --------------------------------------------------------------------------- heatmaps from the ONNX twin


@pytest.mark.parametrize(("members", "pool"), [(1, "avg"), (2, "avg"), (1, "max")])
def test_onnx_file_draws_the_torch_gradcam_maps(tmp_path, members, pool):
    """The exported file's ``cam`` output gives torch Grad-CAM's maps, both signs, ensembles and max pooling
    included: serve and predict --save draw heatmaps through it without torch (issue 12: memory)."""
    from dfdetect.model.export import OnnxDetector, export_onnx
    from test_export import real_detector

    det = real_detector(tmp_path, size=64, members=members, pool=pool)
    export_onnx(det, tmp_path / "d.onnx")
    onnx = OnnxDetector.load(tmp_path / "d.onnx")
    assert onnx.explainable
    rng = np.random.default_rng(4)
    crops = [rng.integers(0, 256, (int(h), 70, 3), dtype=np.uint8) for h in (50, 70, 90)]
    peaks = []
    for sign in (1.0, -1.0):
        want = gradcam_maps(det, crops, sign=sign)
        got = gradcam_maps(onnx, crops, sign=sign)
        assert got.shape == want.shape == (3, 64, 64)
        np.testing.assert_allclose(got, want, atol=1e-4)
        peaks.append(want.max(axis=(1, 2)))
    assert (np.max(peaks, axis=0) > 0.5).all()  # each crop has a map on one side: not blanks that trivially agree
    assert gradcam_overlay(onnx, crops[0]).shape == crops[0].shape


def test_no_cam_output_where_it_would_not_be_gradcam(tmp_path):
    """A Grad-CAM layer before the last feature map (VGG's) has other maps: the file then gets no ``cam`` output,
    and asking it for maps is one line, not wrong heatmaps."""
    from dfdetect.errors import WeightsError
    from dfdetect.inference.explain import can_explain
    from dfdetect.model.detector import cam_is_gradcam
    from dfdetect.model.export import OnnxDetector, export_onnx
    from test_export import real_detector

    det = real_detector(tmp_path, size=64)
    assert cam_is_gradcam(det.model_, (64, 64))
    det.model_.cam_layer = "blocks.5"
    assert not cam_is_gradcam(det.model_, (64, 64))
    export_onnx(det, tmp_path / "d.onnx")
    onnx = OnnxDetector.load(tmp_path / "d.onnx")
    assert not onnx.explainable and not can_explain(onnx) and can_explain(det)
    with pytest.raises(WeightsError, match="no 'cam' output"):
        onnx.class_activations([red_blue_image()])
    assert not cam_is_gradcam(tiny_cnn(), (32, 32))  # no pooled linear head named fc


def test_onnx_heatmaps_in_predict_need_no_torch(tmp_path):
    """predict with explain=True on an explaining ONNX file, with torch, timm and grad-cam blocked."""
    import json
    import subprocess
    import sys
    import textwrap

    from dfdetect.model.export import export_onnx
    from test_export import _NO_TORCH, face_image, real_detector

    path = tmp_path / "d.onnx"
    export_onnx(real_detector(tmp_path, size=64), path)
    cv2.imwrite(str(tmp_path / "face.png"), face_image())
    code = _NO_TORCH + textwrap.dedent(f"""
        from dfdetect.model.export import OnnxDetector
        from dfdetect.inference.predict import predict_path
        [res] = predict_path({str(tmp_path / "face.png")!r}, OnnxDetector.load({str(path)!r}), explain=True,
                             keep_images=True)
        heat = [f.heatmap.shape for _, f in res.all_faces() if f.heatmap is not None]
        print(json.dumps({{"heat": heat, "crops": [f.crop.shape for _, f in res.all_faces()], "notes": res.notes,
                          "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["torch_loaded"] and got["notes"] == []
    assert got["heat"] and got["heat"] == got["crops"][:len(got["heat"])]
