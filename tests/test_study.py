"""study: the grid runs, writes Table 2 and every cell's plots, skips a backbone without weights, resumes."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from dfdetect._io import write_image
from dfdetect.config import Protocol
from dfdetect.data.crops import CropTable
from dfdetect.errors import BadInputError, WeightsError
from dfdetect.evaluation import study


class Brightness:
    threshold_ = 0.5
    protocol_ = Protocol.default()

    def predict_proba(self, crops):
        return np.array([c.mean() / 255.0 for c in crops])


def _crops(root, n_videos=8, frames=2, official_test=True) -> CropTable:
    rng = np.random.default_rng(1)
    rows = []
    for v in range(n_videos):
        label = v % 2
        for f in range(frames):
            path = root / f"v{v}" / f"{f:05d}.png"
            write_image(path, np.full((8, 8, 3), int(rng.integers(40, 200)) + 40 * label, np.uint8))
            rows.append((path, label, f"v{v}", (f"v{v}",), official_test and v >= n_videos - 4))
    paths, labels, videos, groups, is_test = zip(*rows, strict=True)
    return CropTable(list(paths), np.array(labels), list(videos), list(groups), np.array(is_test))


@pytest.fixture
def stubs(monkeypatch):
    """Stand-in split and train: fast, and they record which cells were trained."""
    calls: list[str] = []

    def split(table, protocol):  # fixed, so the assertions below do not depend on split_table's draws
        test = table.subset(np.flatnonzero(table.is_test))
        rest = table.subset(np.flatnonzero(~table.is_test))
        return rest, rest.subset([i for i, v in enumerate(rest.videos) if v in ("v0", "v1")]), test

    def train(table, protocol, out_dir, progress):
        calls.append(f"{protocol.model.backbone}:{out_dir.name}")
        if protocol.model.backbone == "vgg16":
            raise WeightsError("no ImageNet weights offline; pass --weights FILE")
        history = [{"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "val_loss": 0.7, "val_acc": 0.5}]
        return SimpleNamespace(detector=Brightness(), history=history)

    monkeypatch.setattr(study, "_split", split)
    monkeypatch.setattr(study, "_train", train)
    return calls


def test_grid_table_plots_skip_and_resume(tmp_path, stubs):
    tables = {"faces": _crops(tmp_path / "faces"), "srm": _crops(tmp_path / "srm")}
    out = tmp_path / "study"
    res = study.run_study(tables, out, Protocol.seed(), backbones=["mobilenet_v2", "vgg16"])
    assert stubs == ["mobilenet_v2:mobilenet_v2-faces", "mobilenet_v2:mobilenet_v2-srm", "vgg16:vgg16-faces"]
    for cell in ("mobilenet_v2-faces", "mobilenet_v2-srm"):
        for name in ("metrics.json", "scores.csv", "history.png", "confusion.png", "roc.png"):
            assert (out / cell / name).is_file(), f"{cell}/{name}"
        m = json.loads((out / cell / "metrics.json").read_text())
        assert m["test_set"] == "official test list" and m["n_frames"] == 8
    assert [c.status for c in res.cells] == ["trained", "trained", "skipped", "skipped"]
    assert len(res.skipped) == 1 and res.skipped[0].startswith("vgg16: skipped, no weights")
    md = (out / "table.md").read_text()
    assert "| method | AUC without SRM | AUC with SRM |" in md
    assert "| vgg16 | skipped | skipped |" in md
    rows = list(csv.DictReader((out / "table.csv").open()))
    auc = json.loads((out / "mobilenet_v2-faces" / "metrics.json").read_text())["frame_auc"]
    assert float(rows[0]["frame_auc_faces"]) == pytest.approx(auc, abs=1e-4)
    assert rows[1]["status_srm"] == "skipped"

    stubs.clear()  # resume: finished cells are read back, not retrained
    res2 = study.run_study(tables, out, Protocol.seed(), backbones=["mobilenet_v2", "vgg16"])
    assert stubs == ["vgg16:vgg16-faces"]
    assert [c.status for c in res2.cells][:2] == ["reused", "reused"]
    assert (out / "table.md").read_text() == md


def test_default_protocol_adds_video_auc_and_accuracy_and_falls_back_to_validation(tmp_path, stubs):
    tables = {"faces": _crops(tmp_path / "faces", official_test=False)}
    res = study.run_study(tables, tmp_path / "s", Protocol.default(), backbones=["mobilenet_v2"])
    md = res.table_md.read_text()
    assert "video AUC (faces)" in md and "accuracy (faces)" in md
    assert "held-out validation split" in md
    assert res.rows()[0]["AUC without SRM"].endswith("%")


# --------------------------------------------------------------------------- end to end, real modules


def _face_folder(root, n=16):
    """real/ and fake/ tiny crops; a fake carries a blended bright patch (a crude manipulation)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        for label in ("real", "fake"):
            img = rng.integers(60, 120, (40, 40, 3), dtype=np.uint8)
            if label == "fake":
                img[10:30, 10:30] = np.clip(img[10:30, 10:30].astype(int) + 90, 0, 255)
            write_image(root / label / f"{label}{i:03d}.jpg", img)
    return root


def _tiny_seed() -> Protocol:
    seed = Protocol.seed()
    return seed.model_copy(update={"model": seed.model.model_copy(update={"input_size": 32}),
                                   "train": seed.train.model_copy(update={"epochs": 3})})


def test_pipeline_end_to_end_on_a_crop_folder_and_resume(tmp_path):
    from dfdetect.evaluation.pipeline import run_pipeline

    src = _face_folder(tmp_path / "crops")
    out = tmp_path / "run"
    res = run_pipeline(src, out, _tiny_seed(), backbones=["mobilenet_v2"], pretrained=False)
    assert [r.stage for r in res.reports] == ["srm"]  # images are their own crops: no frames/faces stage
    assert any("own face crop" in n for n in res.notes)
    assert res.study.test_set == "held-out validation split"
    for cell in ("mobilenet_v2-faces", "mobilenet_v2-srm"):
        for name in ("detector.safetensors", "history.json", "metrics.json", "scores.csv", "history.png",
                     "confusion.png", "roc.png"):
            assert (out / "study" / cell / name).is_file(), f"{cell}/{name}"
        m = json.loads((out / "study" / cell / "metrics.json").read_text())
        assert m["n_frames"] == len(list(csv.DictReader((out / "study" / cell / "scores.csv").open())))
        assert m["threshold"] == 0.5 and m["n_real"] > 0 and m["n_fake"] > 0
    srm_scores = out / "study" / "mobilenet_v2-srm" / "scores.csv"
    srm_paths = [r["path"] for r in csv.DictReader(srm_scores.open())]
    assert all("faces-srm" in p and p.endswith(".png") for p in srm_paths)
    assert "| mobilenet_v2 |" in (out / "study" / "table.md").read_text()

    again = run_pipeline(src, out, _tiny_seed(), backbones=["mobilenet_v2"], pretrained=False)
    assert [c.status for c in again.study.cells] == ["reused", "reused"]
    assert again.reports[0].written == 0 and again.reports[0].reused == 32
    # run settings (-j) are not the recipe: another worker count still resumes (it was refused)
    busy = _tiny_seed().model_copy(update={"train": _tiny_seed().train.model_copy(update={"workers": 2})})
    again = run_pipeline(src, out, busy, backbones=["mobilenet_v2"], pretrained=False)
    assert [c.status for c in again.study.cells] == ["reused", "reused"]

    other = _tiny_seed().model_copy(update={"train": _tiny_seed().train.model_copy(update={"epochs": 4})})
    table_md = (out / "study" / "table.md").read_text()
    with pytest.raises(BadInputError, match="another protocol"):
        run_pipeline(src, out, other, backbones=["mobilenet_v2"], pretrained=False)
    assert (out / "study" / "table.md").read_text() == table_md  # left as it was


def test_backbone_whose_weights_do_not_load_is_one_line_not_a_crash(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    tables = {"faces": _crops(tmp_path / "faces")}
    proto = _tiny_seed()
    proto = proto.model_copy(update={"model": proto.model.model_copy(update={"weights": bad})})
    res = study.run_study(tables, tmp_path / "s", proto, backbones=["mobilenet_v2"])
    assert [c.status for c in res.cells] == ["skipped"]
    assert len(res.skipped) == 1 and res.skipped[0].startswith("mobilenet_v2: skipped, no weights")
    assert str(bad) in res.skipped[0]
    assert "| mobilenet_v2 | skipped |" in res.table_md.read_text()


@pytest.mark.shared
def test_study_on_a_slice_of_dfdc_faces(shared_data, tmp_path):
    """Real face crops with labels.csv (grouped by original video) go straight to SRM and the study."""
    from dfdetect.evaluation.pipeline import run_pipeline

    src_dir = shared_data / "dfdc-faces"
    rows = list(csv.DictReader((src_dir / "labels.csv").open()))
    pick = [r for r in rows if r["label"] == "real"][:12] + [r for r in rows if r["label"] == "fake"][:12]
    sub = tmp_path / "dfdc"
    for r in pick:  # links, never copies of the shared data
        (sub / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (sub / r["path"]).symlink_to(src_dir / r["path"])
    with (sub / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(pick[0]))
        w.writeheader()
        w.writerows(pick)
    res = run_pipeline(sub, tmp_path / "out", _tiny_seed(), backbones=["mobilenet_v2"], pretrained=False)
    assert [c.status for c in res.study.cells] == ["trained", "trained"]
    assert len(res.prepared.tables["srm"].paths) == len(res.prepared.tables["faces"].paths) == 24


def test_cli_unknown_backbone_fails_before_any_stage(tmp_path):
    """Regression: --backbones nope ran frames/faces/SRM, marked every cell failed and exited 0."""
    from typer.testing import CliRunner

    from dfdetect.cli import app

    src = _face_folder(tmp_path / "crops", n=2)
    res = CliRunner().invoke(app, ["study", str(src), "--out", str(tmp_path / "out"), "--backbones", "nope"])
    assert res.exit_code == 1 and "unknown backbone 'nope'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(app, ["train", str(src), "--out", str(tmp_path / "out"), "--backbone", "nope"])
    assert res.exit_code == 1 and "unknown backbone 'nope'" in res.output


def test_cli_study_with_no_cell_trained_exits_1(tmp_path, stubs):
    """Nothing usable left (every backbone skipped or failed): the table is written, the exit code is 1."""
    from typer.testing import CliRunner

    from dfdetect.cli import app

    src = _face_folder(tmp_path / "crops", n=4)
    res = CliRunner().invoke(app, ["study", str(src), "--out", str(tmp_path / "out"), "--backbones", "vgg16"])
    assert res.exit_code == 1 and "no cell could be trained" in res.output and "Traceback" not in res.output
    assert (tmp_path / "out" / "study" / "table.md").is_file()


def test_study_weights_reach_only_their_backbone(tmp_path):
    """--weights BACKBONE=FILE: the file is used for that backbone's cells and no other."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    tables = {"faces": _crops(tmp_path / "faces")}
    res = study.run_study(tables, tmp_path / "s", _tiny_seed(), backbones=["mobilenet_v2"], pretrained=False,
                          weights={"vgg16": bad})
    assert [c.status for c in res.cells] == ["trained"]  # vgg16's file does not touch mobilenet_v2
    res = study.run_study(tables, tmp_path / "s2", _tiny_seed(), backbones=["mobilenet_v2"],
                          weights={"mobilenet_v2": bad})
    assert [c.status for c in res.cells] == ["skipped"] and str(bad) in res.skipped[0]


def test_cli_study_weights_option_is_checked_up_front(tmp_path):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    src = _face_folder(tmp_path / "crops", n=2)
    for arg, msg in (("vgg16", "expected BACKBONE=FILE"), ("nope=x.pth", "unknown backbone 'nope'"),
                     ("vgg16=missing.pth", "weights file not found")):
        res = CliRunner().invoke(app, ["study", str(src), "--out", str(tmp_path / "out"), "--weights", arg])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "out").exists()
