"""ONNX export: scores agree with torch to 1e-4, metadata round-trips, and scoring needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from dfdetect.config import FaceConfig, Protocol
from dfdetect.errors import DfdetectError, WeightsError
from dfdetect.export import OnnxDetector, export_onnx
from test_explain import TinyTorchDetector, tiny_cnn

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def random_crops(n: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(20, 200)), int(rng.integers(20, 200)), 3), dtype=np.uint8)
            for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[TinyTorchDetector, Path]:
    det = TinyTorchDetector(tiny_cnn(), size=48, threshold=0.37, protocol=Protocol.default(), **IMAGENET)
    path = tmp_path_factory.mktemp("onnx") / "det.onnx"
    info = export_onnx(det, path)
    assert info.path == path and info.max_abs_diff < 1e-4
    assert info.preprocess.size == (48, 48) and info.preprocess.interpolation == "linear" and info.preprocess.rgb
    return det, path


def test_scores_agree_to_1e4(exported):
    det, path = exported
    onnx_det = OnnxDetector.load(path)
    crops = random_crops(16)
    a, b = det.predict_proba(crops), onnx_det.predict_proba(crops)
    assert a.shape == b.shape == (16,)
    assert np.abs(a - b).max() < 1e-4
    assert np.ptp(a) > 0  # the scores differ between crops, so agreement is not trivial
    # the default protocol mirrors each crop (tta_flip) and that is in the graph: without it scores differ
    no_flip = TinyTorchDetector(det.model_, size=48, protocol=Protocol.seed(), **IMAGENET)
    assert np.abs(no_flip.predict_proba(crops) - b).max() > 2e-4  # while ONNX vs torch is < 1e-4
    # dynamic batch axis: one crop at a time gives the same scores
    assert np.abs(np.concatenate([onnx_det.predict_proba([c]) for c in crops[:4]]) - b[:4]).max() < 1e-6


def test_metadata_round_trips(exported):
    _, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert {"dfdetect.preprocess", "dfdetect.threshold", "dfdetect.protocol", "dfdetect.format"} <= set(props)
    pre = json.loads(props["dfdetect.preprocess"])
    assert pre["size"] == [48, 48] and pre["mean"] == list(IMAGENET["mean"]) and pre["std"] == list(IMAGENET["std"])
    d = OnnxDetector.load(path)
    assert d.threshold_ == pytest.approx(0.37) and d.protocol_ == Protocol.default()
    inp = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert inp[0].dim_param == "batch" and [x.dim_value for x in inp[1:]] == [3, 48, 48]


def real_detector(tmp_path: Path, size: int = 64, members: int = 1):
    """dfdetect's own Detector around randomly initialised MobileNetV2s (``members`` > 1: an ensemble), saved
    and loaded back."""
    from dfdetect.backbones import create_backbone, ensemble_of
    from dfdetect.detector import Detector

    protocol = Protocol.default()
    protocol = protocol.model_copy(update={"model": protocol.model.model_copy(update={"input_size": size})})
    torch.manual_seed(0)
    m = protocol.model
    nets = [create_backbone("mobilenet_v2", pretrained=False, pool=m.pool, num_classes=1) for _ in range(members)]
    det = Detector.from_model(ensemble_of(nets), protocol, threshold=0.42)
    return Detector.load(det.save(tmp_path / "detector.safetensors"))


@pytest.mark.parametrize("members", [1, 2])
def test_real_detector_round_trip(tmp_path, members):
    pytest.importorskip("dfdetect.detector")
    det = real_detector(tmp_path, members=members)
    assert len(getattr(det.model_, "members", [det.model_])) == members
    info = export_onnx(det, tmp_path / "det.onnx")
    assert info.preprocess.interpolation == "area_down" and info.preprocess.size == (64, 64)
    onnx_det = OnnxDetector.load(info.path)
    crops = random_crops(12, seed=5) + [np.full((300, 280, 3), 128, np.uint8)]  # small and large crops
    diff = np.abs(det.predict_proba(crops) - onnx_det.predict_proba(crops)).max()
    assert diff < 1e-4 and onnx_det.threshold_ == pytest.approx(0.42)


def test_resize_interpolation_is_detected(tmp_path):
    class AreaDetector(TinyTorchDetector):
        def preprocess(self, crops):
            crops = [cv2.resize(c, (self.size, self.size), interpolation=cv2.INTER_AREA) for c in crops]
            return super().preprocess(crops)

    info = export_onnx(AreaDetector(tiny_cnn(1), size=40, **IMAGENET), tmp_path / "a.onnx")
    assert info.preprocess.interpolation == "area" and info.max_abs_diff < 1e-4


def test_unreproducible_preprocessing_is_refused(tmp_path):
    class CentreCrop(TinyTorchDetector):
        def preprocess(self, crops):
            x = super().preprocess([cv2.resize(c, (64, 64)) for c in crops])
            return torch.nn.functional.interpolate(x[:, :, 8:56, 8:56], size=(self.size, self.size))

    with pytest.raises(DfdetectError, match="cannot reproduce"):
        export_onnx(CentreCrop(tiny_cnn(), size=32), tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists() and list(tmp_path.iterdir()) == []


def test_bad_onnx_files(tmp_path):
    with pytest.raises(WeightsError, match="dfdetect export"):
        OnnxDetector.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a loadable ONNX"):
        OnnxDetector.load(tmp_path / "junk.onnx")


def face_image() -> np.ndarray:
    from skimage.data import astronaut  # a photo of a face, shipped inside scikit-image

    return cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)


_NO_TORCH = """
import importlib.abc, json, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "timm", "pytorch_grad_cam", "facenet_pytorch"}:
            raise ImportError(f"{name} is blocked: this test runs without torch")
        return None
sys.meta_path.insert(0, NoTorch())
"""


def test_onnx_scoring_and_predict_without_torch(exported, tmp_path):
    det, path = exported
    crops = random_crops(6, seed=9)
    np.save(tmp_path / "crops.npy", np.stack([cv2.resize(c, (64, 64)) for c in crops]))
    want = det.predict_proba(list(np.load(tmp_path / "crops.npy")))
    cv2.imwrite(str(tmp_path / "face.png"), face_image())
    code = _NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        try:
            import torch
            raise SystemExit("torch was importable")
        except ImportError:
            pass
        from dfdetect.export import OnnxDetector
        from dfdetect.predict import predict_path
        det = OnnxDetector.load({str(path)!r})
        scores = det.predict_proba(list(np.load({str(tmp_path / "crops.npy")!r})))
        [res] = predict_path({str(tmp_path / "face.png")!r}, det)
        print(json.dumps({{"scores": scores.tolist(), "result": res.to_json(),
                          "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["torch_loaded"]
    assert np.abs(np.array(got["scores"]) - want).max() < 1e-4
    res = got["result"]
    # the default protocol's YuNet needs no torch: the torch-free path finds faces with it, as the torch one does
    assert res["face_detector"] == "yunet" and res["notes"] == []
    assert res["faces"] >= 1 and res["verdict"] in ("fake", "real")


def test_cli_export_and_predict_onnx(tmp_path, monkeypatch):
    from dfdetect.cli import app, use

    haar40 = Protocol.seed().model_copy(update={"faces": FaceConfig(detector="haar", min_size=40)})
    det = TinyTorchDetector(tiny_cnn(), size=48, threshold=0.5, protocol=haar40, **IMAGENET)
    monkeypatch.setattr(use, "load_scorer", lambda path, onnx=False: det if not onnx and path.suffix != ".onnx"
                        else OnnxDetector.load(path))
    model = tmp_path / "det.safetensors"
    model.write_bytes(b"stand-in")
    r = CliRunner().invoke(app, ["export", "--model", str(model), "--onnx", str(tmp_path / "d.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.onnx").is_file() and "max |dP|" in r.output
    cv2.imwrite(str(tmp_path / "face.png"), face_image())
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "face.png"), "--model", str(tmp_path / "d.onnx"),
                                 "--json", str(tmp_path / "o.json")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["results"][0]["faces"] >= 1 and doc["results"][0]["verdict"] in r.output


def test_cli_onnx_flag_needs_onnx_file(tmp_path):
    from dfdetect.cli import app

    model = tmp_path / "det.safetensors"
    model.write_bytes(b"x")
    r = CliRunner().invoke(app, ["predict", str(tmp_path), "--model", str(model), "--onnx"])
    assert r.exit_code == 1 and "dfdetect export" in " ".join(r.output.split())
