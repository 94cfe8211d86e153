"""demo / study / evaluate CLI plumbing, on a tiny built-in dataset (the full demo: one slow test)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from _standins import ship_tiny_model
from dfdetect.cli import app
from dfdetect.config import SynthConfig
from dfdetect.evaluation import pipeline
from dfdetect.model import hub

TINY = SynthConfig(identities=4, videos_per_identity=1, fakes_per_identity=1, youtube_videos=0, frames=3,
                   frame_size=192, face_size=150)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    models = tmp_path_factory.mktemp("models")
    ship_tiny_model(models)  # stands in for the trained file shipped in the package
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "DEMO_SYNTH", TINY)
    mp.setattr(hub, "MODELS_DIR", models)
    try:
        args = ["demo", "--out", str(out), "--backbones", "mobilenet_v2", "--frames", "2"]
        res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})  # table rows on one line each
    finally:
        mp.undo()
    return out, res


def test_demo_prints_table_and_where_things_are(demo_out):
    out, res = demo_out
    assert res.exit_code == 0, res.output
    text = res.output
    assert "AUC without SRM" in text and "AUC with SRM" in text and "mobilenet_v2" in text
    assert f"table: {out / 'study' / 'table.md'}" in text.replace("\n", "")
    assert "2 frames per video instead of the seed's 1" in text.replace("\n", " ")
    for cell in ("mobilenet_v2-faces", "mobilenet_v2-srm"):
        m = json.loads((out / "study" / cell / "metrics.json").read_text())
        assert m["test_set"] == "official test list" and m["threshold"] == 0.5
        assert (out / "study" / cell / "roc.png").is_file()
    assert (out / "data" / "List_of_testing_videos.txt").is_file()
    assert (out / "study" / "report.html").is_file() and "report.html" in text


def test_demo_ends_with_the_shipped_models_verdicts(demo_out):
    _, res = demo_out
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    tail = text[text.index("report:"):]  # after the study: the last step
    assert f"shipped model {hub.DEFAULT_MODEL}: verdicts on the demo's test videos" in tail
    assert "Celeb-real/" in tail and "Celeb-synthesis/" in tail  # a real and a fake test video
    assert re.search(rf"shipped model {re.escape(hub.DEFAULT_MODEL)}: [012] of 2 verdicts match the true label",
                     tail)  # the tiny set's test split: one real and one fake video


def test_demo_without_a_shipped_model_says_it_skips_that_step(demo_out, monkeypatch, tmp_path):
    """What run_demo does on a checkout with no trained file yet: one line, and the demo goes on."""
    out, _ = demo_out
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path / "empty")
    shipped, note = pipeline.demo_shipped_step(out / "data")
    assert shipped is None and "no shipped detector in this install" in note and "skipping the last step" in note


def test_evaluate_cli_on_a_labelled_folder(demo_out, tmp_path):
    out, _ = demo_out
    folder = tmp_path / "labelled"
    for label, sub in (("real", "Celeb-real"), ("fake", "Celeb-synthesis")):
        for i, crop in enumerate(sorted((out / "faces" / sub).rglob("*.jpg"))[:3]):
            (folder / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(crop, folder / label / f"{i}.jpg")
    det = out / "study" / "mobilenet_v2-faces" / "detector.safetensors"
    res = CliRunner().invoke(app, ["evaluate", str(det), str(folder), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_frames"] == 6 and m["n_real"] == 3 and "frame AUC" in res.output
    assert (tmp_path / "ev" / "history.png").is_file()  # the run's history.json is picked up


def test_evaluate_cli_on_celebdf_scores_the_official_test_list_like_the_study(demo_out, tmp_path):
    out, _ = demo_out
    cell = out / "study" / "mobilenet_v2-faces"
    res = CliRunner().invoke(app, ["evaluate", str(cell / "detector.safetensors"), str(out / "data"),
                                   "--crops", str(out / "faces"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "official test list only" in res.output
    ours = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    study_m = json.loads((cell / "metrics.json").read_text())
    for key in ("n_frames", "n_videos", "confusion", "threshold"):
        assert ours[key] == study_m[key], key
    assert ours["frame_auc"] == pytest.approx(study_m["frame_auc"], abs=1e-6)


def test_cli_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["study", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["study", str(tmp_path), "--protocol", "best"])
    assert res.exit_code == 1 and "unknown protocol 'best'" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing.safetensors"), str(tmp_path)])
    assert res.exit_code == 1 and "detector file not found" in res.output


@pytest.mark.slow
def test_full_demo_runs_every_offline_backbone(tmp_path):
    """`make demo` as a test: the default built-in data, both offline backbones, all four cells trained.

    About 2.5-3 minutes on 2 busy cores (measured), so it is marked slow; it never asserts on time.
    """
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    expected = pipeline.offline_backbones()
    assert "mobilenet_v2" in expected
    for backbone in expected:
        for variant in ("faces", "srm"):
            cell = tmp_path / "study" / f"{backbone}-{variant}"
            for name in ("metrics.json", "history.png", "confusion.png", "roc.png"):
                assert (cell / name).is_file(), f"{cell.name}/{name}"
    table = (tmp_path / "study" / "table.md").read_text()
    assert all(f"| {b} |" in table for b in expected) and "skipped" not in table
