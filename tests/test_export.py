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
from dfdetect.model.export import OnnxDetector, export_onnx
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


def real_detector(tmp_path: Path, size: int = 64, members: int = 1, pool: str = "avg"):
    """dfdetect's own Detector around randomly initialised MobileNetV2s (``members`` > 1: an ensemble), saved
    and loaded back."""
    from dfdetect.model.backbones import create_backbone, ensemble_of
    from dfdetect.model.detector import Detector

    protocol = Protocol.default()
    protocol = protocol.model_copy(update={"model": protocol.model.model_copy(update={"input_size": size,
                                                                                      "pool": pool})})
    torch.manual_seed(0)
    m = protocol.model
    nets = [create_backbone("mobilenet_v2", pretrained=False, pool=m.pool, num_classes=1) for _ in range(members)]
    det = Detector.from_model(ensemble_of(nets), protocol, threshold=0.42)
    return Detector.load(det.save(tmp_path / "detector.safetensors"))


def test_onnx_in_a_worker_uses_one_thread(exported, monkeypatch):
    """Regression: each scan worker's onnxruntime session took a thread per core, so 2 workers on 2 cores ran
    4 threads and gave 1.07x the videos/min of 1 worker (bench/scan.py; 1.74x with one thread each)."""
    from dfdetect.parallel import WORKER_ENV

    _, path = exported
    monkeypatch.setenv(WORKER_ENV, "1")
    assert OnnxDetector.load(path).session_.get_session_options().intra_op_num_threads == 1
    assert OnnxDetector.load(path, threads=2).session_.get_session_options().intra_op_num_threads == 2
    monkeypatch.delenv(WORKER_ENV)
    assert OnnxDetector.load(path).session_.get_session_options().intra_op_num_threads == 0  # its default


@pytest.mark.parametrize("members", [1, 2])
def test_real_detector_round_trip(tmp_path, members):
    pytest.importorskip("dfdetect.model.detector")
    det = real_detector(tmp_path, members=members)
    assert len(getattr(det.model_, "members", [det.model_])) == members
    info = export_onnx(det, tmp_path / "det.onnx")
    assert info.preprocess.interpolation == "area_down" and info.preprocess.size == (64, 64)
    onnx_det = OnnxDetector.load(info.path)
    crops = random_crops(12, seed=5) + [np.full((300, 280, 3), 128, np.uint8)]  # small and large crops
    diff = np.abs(det.predict_proba(crops) - onnx_det.predict_proba(crops)).max()
    assert diff < 1e-4 and onnx_det.threshold_ == pytest.approx(0.42)


def test_the_detectors_declared_preprocess_spec_is_exported(tmp_path):
    class AreaDetector(TinyTorchDetector):
        @property
        def preprocess_spec(self):
            return super().preprocess_spec.model_copy(update={"interpolation": "area"})

        def preprocess(self, crops):
            crops = [cv2.resize(c, (self.size, self.size), interpolation=cv2.INTER_AREA) for c in crops]
            return super().preprocess(crops)

    info = export_onnx(AreaDetector(tiny_cnn(1), size=40, **IMAGENET), tmp_path / "a.onnx")
    assert info.preprocess.interpolation == "area" and info.max_abs_diff < 1e-4
    assert OnnxDetector.load(tmp_path / "a.onnx").preprocess_ == info.preprocess
    # a detector that declares one rule and resizes by another is refused, not exported to score differently
    class Liar(AreaDetector):
        @property
        def preprocess_spec(self):
            return TinyTorchDetector.preprocess_spec.fget(self)

    with pytest.raises(DfdetectError, match="cannot reproduce"):
        export_onnx(Liar(tiny_cnn(1), size=40, **IMAGENET), tmp_path / "b.onnx")


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
        from dfdetect.model.export import OnnxDetector
        from dfdetect.inference.predict import predict_path
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


def _with_metadata(src: Path, dest: Path, **updates: str | None) -> Path:
    """A copy of the ONNX file ``src`` with ``dfdetect.<key>`` metadata replaced (None: removed)."""
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    for k, v in updates.items():
        props.pop("dfdetect." + k, None)
        if v is not None:
            props["dfdetect." + k] = v
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(dest))
    return dest


_GOOD_PRE = {"size": [48, 48], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "linear",
             "rgb": True}
BAD_ONNX_METADATA = [
    ({"threshold": "nan"}, "dfdetect.threshold nan is not in [0, 1]"),
    ({"threshold": "1.5"}, "dfdetect.threshold 1.5 is not in [0, 1]"),
    ({"threshold": "-inf"}, "dfdetect.threshold -inf is not in [0, 1]"),
    ({"threshold": "half"}, "dfdetect.threshold 'half' is not a number"),
    ({"preprocess": '{"size": [48, 48'}, "dfdetect.preprocess is not JSON"),
    ({"preprocess": "[1, 2]"}, "dfdetect.preprocess is invalid"),
    ({"preprocess": json.dumps({**_GOOD_PRE, "size": [0, 48]})}, "dfdetect.preprocess is invalid (size.0"),
    ({"preprocess": json.dumps({**_GOOD_PRE, "size": [10**9, 10**9]})}, "dfdetect.preprocess is invalid (size.0"),
    ({"preprocess": json.dumps({**_GOOD_PRE, "std": [0, 1, 1]})}, "dfdetect.preprocess is invalid (std.0"),
    ({"preprocess": json.dumps({**_GOOD_PRE, "mean": [0.5, 0.5]})}, "dfdetect.preprocess is invalid (mean"),
    ({"preprocess": json.dumps({**_GOOD_PRE, "interpolation": "lanczos"})}, "preprocess is invalid (interpolation"),
    ({"protocol": "{not json"}, "dfdetect.protocol is not JSON"),
    ({"protocol": '{"model": {"input_size": 1}}'}, "dfdetect.protocol is invalid (model.input_size"),
    ({"protocol": '"default"'}, "dfdetect.protocol is invalid"),
    ({"format": "2"}, "not a dfdetect detector (metadata dfdetect.format '2', expected '1')"),
    ({"threshold": None}, "dfdetect.threshold missing"),
]


@pytest.mark.parametrize("updates, want", BAD_ONNX_METADATA,
                         ids=[f"{k}-{i}" for i, (u, _) in enumerate(BAD_ONNX_METADATA) for k in u])
def test_damaged_onnx_metadata_is_refused_in_one_line(exported, tmp_path, updates, want):
    """Regression: a NaN threshold loaded and made every verdict 'real'; broken JSON gave a traceback."""
    bad = _with_metadata(exported[1], tmp_path / "bad.onnx", **updates)
    with pytest.raises(WeightsError) as err:
        OnnxDetector.load(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: ") and want in msg and "\n" not in msg and len(msg) < 500


def test_serve_refuses_a_damaged_onnx_model_in_one_line(exported, tmp_path, monkeypatch):
    """Regression: serve started on a NaN-threshold model (every verdict 'real') or one whose protocol was broken
    (every upload a 500)."""
    import uvicorn

    from dfdetect.cli import app

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    for i, updates in enumerate(({"threshold": "nan"}, {"protocol": "{"}, {"preprocess": "{}"})):
        bad = _with_metadata(exported[1], tmp_path / f"bad{i}.onnx", **updates)
        r = CliRunner().invoke(app, ["serve", "--model", str(bad)], env={"COLUMNS": "300"})
        assert r.exit_code == 1 and not started, r.output
        lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and str(bad) in lines[0] and f"dfdetect.{next(iter(updates))}" in lines[0]
        assert "Traceback" not in r.output
    r = CliRunner().invoke(app, ["serve", "--model", str(exported[1])])  # the good file starts
    assert r.exit_code == 0 and len(started) == 1, r.output
