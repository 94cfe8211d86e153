"""Named, shipped models: fp16 files, model cards, resolution (local -> shipped -> download) and the CLI.

Every test ships its own tiny untrained detector into a temporary folder and points the catalog at it;
downloads are tested offline (file:// URLs, a stand-in ``hf_hub_download``, an empty HF cache).
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from _standins import ship_tiny_model
from dfdetect.errors import WeightsError
from dfdetect.evaluation import pipeline
from dfdetect.model import hub
from dfdetect.model.card import ModelCard, ModelFigures, read_card, sha256_file, ship_model
from dfdetect.model.detector import Detector

NAME = hub.DEFAULT_MODEL
FIGS = {"in_domain_auc": 0.961, "ffpp_video_auc": 0.905, "ffpp_per_method": {"Deepfakes": 0.95, "Face2Face": 0.81},
        "ffpp_per_compression": {"c23": 0.93, "c40": 0.85}, "laundering": {"JPEG q50": 0.94}, "ece_before": 0.12,
        "ece_after": 0.031, "calibration": "temperature scaling, T=1.4", "seconds_per_video": 2.5}


@pytest.fixture(scope="module")
def zoo_src(tmp_path_factory):
    """One tiny shipped model (built once); tests copy it so none can damage another's."""
    d = tmp_path_factory.mktemp("zoo")
    ship_tiny_model(d, **FIGS)
    return d


@pytest.fixture
def zoo(zoo_src, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "models"
    shutil.copytree(zoo_src, d)
    monkeypatch.setattr(hub, "MODELS_DIR", d)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return d


def _crops(n=3):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (60, 60, 3), dtype=np.uint8) for _ in range(n)]


def _with_card(zoo, name, **front):
    """A second card beside the shipped one: same text, other front-matter fields."""
    import yaml

    meta, body = read_card(zoo / f"{NAME}.md")
    meta.update(name=name, **front)
    (zoo / f"{name}.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n" + body)
    return meta


# --------------------------------------------------------------------------- fp16 files and cards


def test_half_precision_file_is_half_the_size_and_scores_the_same(tmp_path):
    import torch

    from dfdetect.config import ModelConfig, Protocol
    from dfdetect.model.backbones import create_backbone

    torch.manual_seed(0)
    proto = Protocol.seed().model_copy(update={"model": ModelConfig(input_size=48, pretrained=False, tta_flip=False, ensemble=1, pool="max")})
    det = Detector.from_model(create_backbone("mobilenet_v2", pretrained=False), proto, 0.4)
    full, half = det.save(tmp_path / "full.safetensors"), det.save(tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back = Detector.load(half)
    assert all(p.dtype == torch.float32 for p in back.model_.parameters())
    np.testing.assert_allclose(back.predict_proba(_crops()), det.predict_proba(_crops()), atol=2e-2)
    assert back.threshold_ == 0.4


def test_ship_model_writes_weights_card_and_recipe(zoo):
    weights, card = zoo / f"{NAME}.safetensors", zoo / f"{NAME}.md"
    front, body = read_card(card)
    assert front["sha256"] == sha256_file(weights) and front["size_bytes"] == weights.stat().st_size
    assert front["dtype"] == "float16" and front["file"] == weights.name and front["threshold"] == 0.5
    assert front["figures"] == {"in_domain_auc": 0.961, "ffpp_video_auc": 0.905, "ece": 0.031,
                                "seconds_per_video": 2.5}
    for text in ("research use only, not commercial", "dfdetect train DATA --out runs/x", "detector: haar",
                 "| Face2Face | 0.810 |", "| c40 | 0.850 |", "| JPEG q50 | 0.940 |", "before: 0.120",
                 "**0.031** (temperature scaling, T=1.4)", "2 CPU cores: 2.50 s", "## Intended use",
                 "## Known limits"):
        assert text in body, text
    assert "dlib" not in body
    from dfdetect.config import load_protocol

    assert load_protocol(zoo / f"{NAME}.protocol.yaml").faces.detector == "haar"  # the recipe reloads


def test_card_says_research_only_for_dlib_landmarks_and_checks_the_name(tmp_path):
    from dfdetect.model.card import render_card

    ship_tiny_model(tmp_path)
    card = ModelCard(name=NAME, summary="s", training_data="t", recipe_command="c", dlib_landmarks=True,
                     bench_table="| recipe | AUC |\n|---|---|\n| seed | 0.5 |")
    text = render_card(card, tmp_path / f"{NAME}.safetensors")
    assert "dlib's 68-point" in text and text.count("research use only") >= 2
    assert "2 CPU cores: not measured" in text  # figures that were not measured say so
    assert "bench/generalization.py" in text and "| seed | 0.5 |" in text
    with pytest.raises(ValueError, match="architecture.tag"):
        ModelCard(name="My Model", summary="s", training_data="t", recipe_command="c")


def test_ship_model_refuses_a_file_over_the_size_limit(tmp_path, monkeypatch):
    from dfdetect.model import card as modelcard

    monkeypatch.setattr(modelcard, "MAX_SHIPPED_BYTES", 1000)
    with pytest.raises(WeightsError, match="over the 0 MiB limit"):
        ship_tiny_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ship_model_refuses_a_detector_that_would_not_load(tmp_path):
    """Regression: a protocol edited without validation (margin 0.73 < FaceConfig's floor) was shipped, and
    every predict then failed on the shipped file."""
    import torch

    from dfdetect.config import ModelConfig, Protocol
    from dfdetect.model.backbones import create_backbone

    torch.manual_seed(0)
    proto = Protocol.default().model_copy(update={"model": ModelConfig(input_size=48, pretrained=False, tta_flip=False, ensemble=1, pool="max")})
    det = Detector.from_model(create_backbone("mobilenet_v2", pretrained=False), proto, 0.5)
    det.protocol_ = det.protocol_.model_copy(update={"faces": det.protocol_.faces.model_copy(update={"margin": 0.73})})
    card = ModelCard(name=NAME, summary="s", training_data="none", recipe_command="x")
    with pytest.raises(WeightsError, match="margin"):
        ship_model(det, card, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- resolution


def test_catalog_comes_from_the_cards(zoo):
    [entry] = hub.list_models()  # the README is not a card
    assert entry.name == NAME and entry.figures["ece"] == 0.031 and hub.model_status(entry) == "shipped"


def test_resolve_order_local_then_shipped(zoo, tmp_path, monkeypatch):
    used = hub.resolve(None)
    assert used.source == "shipped" and used.path == zoo / f"{NAME}.safetensors"
    assert used.describe() == f"shipped model {NAME}" and hub.resolve_model(NAME) == used.path
    assert Detector.load(used.path).threshold_ == 0.5
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()  # a local run folder of the same name wins
    assert hub.resolve(NAME).source == "local" and hub.resolve(NAME).describe() == f"model file {NAME}"
    missing = hub.resolve(str(tmp_path / "nope.safetensors"))  # left for the loader to say "not found"
    assert missing.source == "local" and missing.path.name == "nope.safetensors"


def test_unknown_name_and_missing_default_are_one_line(zoo, monkeypatch, tmp_path):
    with pytest.raises(WeightsError, match=rf"unknown model 'resnet9.nope' \(known: {NAME};"):
        hub.resolve("resnet9.nope")
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path / "empty")
    with pytest.raises(WeightsError, match=f"default model {NAME} is not shipped in this install") as exc:
        hub.resolve(None)
    assert "\n" not in str(exc.value)


def test_damaged_shipped_file_is_refused_by_sha256(zoo):
    weights = zoo / f"{NAME}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"sha256 mismatch for shipped model {NAME}") as exc:
        hub.resolve(NAME)
    assert "\n" not in str(exc.value)


def test_url_download_is_checked_cached_and_offline(zoo, tmp_path, monkeypatch):
    src = tmp_path / "remote" / "det.safetensors"
    src.parent.mkdir()
    (zoo / f"{NAME}.safetensors").rename(src)  # no longer shipped: only the URL has it
    url = src.as_uri()
    _with_card(zoo, NAME, url=url)
    first = hub.resolve(NAME)
    assert first.source == "downloaded" and first.path.read_bytes() == src.read_bytes()
    assert first.path.is_relative_to(tmp_path / "hf-cache") and hub.model_status(hub.get_model(NAME)) == "cached"
    src.unlink()  # the cache alone serves it now
    again = hub.resolve(NAME)
    assert again.source == "cached" and again.describe() == f"cached model {NAME}"
    # a URL given directly, with the wrong bytes for the card's sha256: refused, and nothing cached
    bad = tmp_path / "remote" / "bad.safetensors"
    bad.write_bytes(b"not the model")
    _with_card(zoo, "other.model", url=bad.as_uri(), sha256=hub.get_model(NAME).sha256)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        hub.resolve("other.model")
    assert not hub._url_cache_path(bad.as_uri()).exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE=1 forbids downloading; unset HF_HUB_OFFLINE"):
        hub.resolve("https://example.invalid/det.safetensors")


def test_hub_download_is_checked_by_sha256(zoo, tmp_path, monkeypatch):
    import huggingface_hub

    weights = zoo / f"{NAME}.safetensors"
    fetched = tmp_path / "fetched.safetensors"
    weights.rename(fetched)
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw["local_files_only"]))
        return str(fetched)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _with_card(zoo, NAME, hub="owner/repo/sub/det.safetensors")
    used = hub.resolve(NAME)
    assert used.path == fetched and used.source == "downloaded" and calls == [("owner/repo", "sub/det.safetensors",
                                                                              False)]
    assert hub.resolve("hf://owner/repo/sub/det.safetensors").name == NAME  # a known file by its address
    fetched.write_bytes(b"changed upstream")
    with pytest.raises(WeightsError, match="sha256 mismatch for hf://owner/repo/sub/det.safetensors"):
        hub.resolve(NAME)


def test_offline_with_an_empty_hub_cache_names_the_fix(zoo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the Hugging Face cache .* HF_HUB_OFFLINE=1 forbids") as exc:
        hub.resolve("hf://owner/repo/det.safetensors")  # the real hf_hub_download, offline
    assert "\n" not in str(exc.value)
    with pytest.raises(WeightsError, match="runs/best: no such local file or folder, and as a Hugging Face repo"):
        hub.resolve("runs/best")


# --------------------------------------------------------------------------- CLI


def _cli(*args, **kw):
    from dfdetect.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"}, **kw)


def test_cli_models_lists_and_prints_cards(zoo):
    r = _cli("models")
    assert r.exit_code == 0, r.output
    assert f"{NAME} (default)" in r.output and "shipped" in r.output
    assert "0.961" in r.output and "0.905" in r.output and "0.031" in r.output
    r = _cli("models", "--info", NAME)
    assert r.exit_code == 0 and "Training data and terms" in r.output and "research use only" in r.output
    r = _cli("models", "--info", "nope.x")
    assert r.exit_code == 1 and f"unknown model 'nope.x'; known: {NAME}" in r.output and "Traceback" not in r.output


def test_cli_models_with_no_cards_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path)
    r = _cli("models")
    assert r.exit_code == 0 and f"the default {NAME} is not shipped yet" in " ".join(r.output.split())


def test_cli_predict_uses_the_shipped_model_without_model(zoo, tmp_path):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), _crops(1)[0])
    r = _cli("predict", str(face), "--crops", "--json", str(tmp_path / "o.json"))
    assert r.exit_code == 0, r.output
    assert f"model: shipped model {NAME}" in r.output
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["model"] == NAME and doc["model_used"] == f"shipped model {NAME}"
    assert doc["results"][0]["verdict"] in ("fake", "real")



def test_the_shipped_onnx_twin_scores_as_the_shipped_file_and_plain_verdicts_use_it(zoo, tmp_path):
    """ship_model exports an ONNX twin, listed (with its sha256) in the card; a verdict without Grad-CAM
    scores through it, a damaged twin is refused like the safetensors file."""
    from dfdetect.model.export import OnnxDetector

    front, _ = read_card(zoo / f"{NAME}.md")
    twin = zoo / front["onnx"]
    assert twin.is_file() and front["onnx_sha256"] == sha256_file(twin)
    used = hub.resolve(None)
    assert used.onnx == twin and used.scorer_file() == (twin, True)
    # the twin has the maps' output, so heatmaps go through it too; a twin without it leaves them to torch
    assert front["onnx_explains"] is True and used.scorer_file(explain=True) == (twin, True)
    assert dataclasses.replace(used, onnx_explains=False).scorer_file(explain=True) == (used.path, False)
    crops = _crops(4)
    np.testing.assert_allclose(OnnxDetector.load(twin).predict_proba(crops),
                               Detector.load(used.path).predict_proba(crops), atol=1e-4)
    twin.write_bytes(twin.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsError, match="sha256"):
        hub.resolve(None)

def test_cli_without_model_and_nothing_shipped_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path / "empty")
    for args in (["predict", str(tmp_path)], ["export", "--onnx", str(tmp_path / "d.onnx")],
                 ["serve"], ["evaluate", str(tmp_path)]):
        r = _cli(*args)
        text = " ".join(r.output.split())
        assert r.exit_code == 1 and f"default model {NAME} is not shipped" in text and "dfdetect train" in text, args
        assert "Traceback" not in r.output and not (tmp_path / "d.onnx").exists()


def test_cli_export_and_serve_default_to_the_shipped_model(zoo, tmp_path, monkeypatch):
    import uvicorn

    import dfdetect.model.export as export_mod

    seen = []
    monkeypatch.setattr(export_mod, "export_onnx", lambda det, path: seen.append(det) or (_ for _ in ()).throw(
        WeightsError("stop here")))
    r = _cli("export", "--onnx", str(tmp_path / "d.onnx"))
    assert f"model: shipped model {NAME}" in r.output and isinstance(seen[0], Detector), r.output
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(app))
    r = _cli("serve", "--port", "8123")
    assert r.exit_code == 0, r.output
    assert f"serving shipped model {NAME} through its ONNX twin on http://127.0.0.1:8123/" in r.output
    assert len(seen) == 2
    # heatmaps or not, the service scores through the ONNX twin, which draws them too: no torch model is loaded
    from dfdetect.model.export import OnnxDetector

    built = []
    monkeypatch.setattr("dfdetect.service.create_app", lambda scorer, cfg: built.append((scorer, cfg)) or "app")
    for flag, explain in (("--no-explain", False), ("--explain", True)):
        r = _cli("serve", flag)
        assert r.exit_code == 0 and f"serving shipped model {NAME} through its ONNX twin" in r.output, r.output
        assert isinstance(built[-1][0], OnnxDetector) and built[-1][0].explainable and built[-1][1].explain is explain


def test_cli_evaluate_with_the_shipped_model_writes_in_the_working_folder(zoo, tmp_path, monkeypatch):
    data = tmp_path / "labelled"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
        for i, crop in enumerate(_crops(2)):
            cv2.imwrite(str(data / label / f"{i}.png"), crop)
    monkeypatch.chdir(tmp_path)
    r = _cli("evaluate", str(data))
    assert r.exit_code == 0, r.output
    assert f"model: shipped model {NAME}" in r.output
    assert json.loads((tmp_path / "eval-labelled" / "metrics.json").read_text())["n_frames"] == 4
    assert sorted(p.name for p in zoo.iterdir()) == sorted(p.name for p in zoo.iterdir() if not p.is_dir())
    r = _cli("evaluate", str(zoo / f"{NAME}.safetensors"), str(data), "--model", NAME)
    assert r.exit_code == 1 and "evaluate takes [MODEL] FOLDER" in r.output


def test_demo_verdicts_need_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path / "empty")
    with pytest.raises(WeightsError, match="no shipped detector in this install"):
        pipeline.shipped_verdicts(tmp_path)


def test_ship_model_is_the_documented_call(tmp_path):
    """What docs tell the coordinator to run works as written: a Detector from a run folder, then ship_model."""
    ship_tiny_model(tmp_path / "run", name="mobilenet_v2.test")
    det = Detector.load(tmp_path / "run" / "mobilenet_v2.test.safetensors")
    card = ModelCard(name="mobilenet_v2.test2", summary="s", training_data="t", recipe_command="c",
                     figures=ModelFigures(in_domain_auc=0.9))
    path = ship_model(det, card, tmp_path / "out")
    assert path == tmp_path / "out" / "mobilenet_v2.test2.md" and read_card(path)[0]["figures"] == {
        "in_domain_auc": 0.9}


def test_train_takes_the_cards_protocol_yaml(zoo, tmp_path):
    """The card's "one command" recipe: `dfdetect train DATA --protocol <name>.protocol.yaml`."""
    from dfdetect.cli.model import _protocol
    from dfdetect.errors import BadInputError

    recipe = zoo / f"{NAME}.protocol.yaml"
    p = _protocol(str(recipe), {"backbone": None}, {"epochs": 3})
    assert p.faces.detector == "haar" and p.model.input_size == 48 and p.train.epochs == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    for path, msg in ((bad, "not a dfdetect recipe"), (tmp_path / "none.yaml", "protocol file not found")):
        with pytest.raises(BadInputError, match=msg) as exc:
            _protocol(str(path), {}, {})
        assert "\n" not in str(exc.value)
