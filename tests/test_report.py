"""report: one self-contained HTML page (parses, images inlined, no http(s) reference)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from _standins import MeanBrightness as Brightness
from _standins import Table
from dfdetect._io import write_image
from dfdetect.cli import app
from dfdetect.config import Protocol
from dfdetect.errors import BadInputError
from dfdetect.evaluation import study
from dfdetect.evaluation.evaluate import evaluate
from dfdetect.evaluation.report import confident_errors, write_report


def _crops(root) -> Table:
    paths, labels, videos = [], [], []
    for v, (label, level) in enumerate([(0, 60), (0, 200), (1, 220), (1, 40), (0, 90), (1, 180)]):
        path = root / f"v{v}.png"
        write_image(path, np.full((20, 20, 3), level, np.uint8))
        paths.append(path)
        labels.append(label)
        videos.append(f"v{v}")
    return Table(paths, labels, videos)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k in ("src", "href") and v]


def _check_self_contained(path) -> _Collector:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?:", text, re.IGNORECASE), "external reference in the report"
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.srcs and all(s.startswith("data:image/") for s in parser.srcs)
    return parser


def test_single_run_report_shows_metrics_plots_and_errors(tmp_path):
    run = tmp_path / "run"
    evaluate(Brightness(), _crops(tmp_path / "crops"), run,
             history=[{"epoch": 1, "train_loss": 0.6, "train_acc": 0.6}])
    page = write_report(run)
    assert page == run / "report.html"
    parsed = _check_self_contained(page)
    text = page.read_text()
    assert "frame AUC" in text and "Most confident errors (2 shown" in text
    assert parsed.tags.count("img") == 3 + 2  # history, confusion, roc + two error crops
    assert text.index("v3.png") < text.index("v1.png")  # fake at 40/255 is the surest mistake


def test_study_report_via_cli(tmp_path, monkeypatch):
    def split(table, protocol):
        return table, table, Table()

    monkeypatch.setattr(study, "_split", split)
    monkeypatch.setattr(study, "_train", lambda *a: SimpleNamespace(detector=Brightness(), history=None))
    tables = {"faces": _crops(tmp_path / "f"), "srm": _crops(tmp_path / "s")}
    study.run_study(tables, tmp_path / "study", Protocol.seed(), backbones=["mobilenet_v2"])
    dest = tmp_path / "page.html"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "study"), "--out", str(dest)])
    assert res.exit_code == 0, res.output
    _check_self_contained(dest)
    text = dest.read_text()
    assert "Study table" in text and "mobilenet_v2-faces" in text and "mobilenet_v2-srm" in text
    assert "<th>AUC with SRM</th>" in text


def test_confident_errors_order():
    rows = [{"label": 0, "p_fake": 0.9}, {"label": 1, "p_fake": 0.05}, {"label": 0, "p_fake": 0.6},
            {"label": 1, "p_fake": 0.7}]
    assert [r["p_fake"] for r in confident_errors(rows, 0.5, 5)] == [0.05, 0.9, 0.6]


def test_empty_folder_is_one_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="nothing to report"):
        write_report(tmp_path)
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "run folder not found" in res.output and "Traceback" not in res.output


def test_train_run_folder_gets_its_curves_drawn(tmp_path):
    """`dfdetect train` leaves history.json and train.json, no PNGs: the page draws the curves itself."""
    import json

    run = tmp_path / "train-run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([{"epoch": e, "train_loss": 0.7 / e, "train_acc": 0.6,
                                                    "val_loss": 0.8 / e, "val_acc": 0.55, "val_auc": 0.6}
                                                   for e in (1, 2, 3)]))
    (run / "train.json").write_text(json.dumps({"threshold": 0.42, "threshold_method": "val_youden",
                                                "counts": {"train": {"crops": 10}}, "notes": ["a note"]}))
    page = write_report(run)
    parsed = _check_self_contained(page)
    text = page.read_text()
    assert parsed.tags.count("img") == 1 and "val_youden" in text and "a note" in text
    assert not list(run.glob("*.png"))  # drawn into the page, not left in the run folder


@pytest.mark.parametrize("name, text", [
    ("metrics.json", "[1, 2]"),
    ("metrics.json", '{"threshold": 0.5, "confusion": [1, 2]}'),
    ("scores.csv", "path,label\nx.png,1\n"),
    ("scores.csv", "path,video,label,p_fake\nx.png,v,1,abc\n"),
    ("history.json", '{"epoch": 1}'),
    ("train.json", '{"counts": [1, 2]}'),
])
def test_damaged_run_file_becomes_a_note_not_a_traceback(tmp_path, name, text):
    """Regression: a hand-edited or damaged run file (wrong JSON shape, bad CSV row) crashed the report."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"frame_auc": 0.7, "threshold": 0.5,
                                                  "confusion": [[1, 0], [0, 1]]}))
    (run / name).write_text(text)
    page = write_report(run).read_text(encoding="utf-8")
    assert f"{name}: cannot read" in page


def test_text_from_run_files_is_escaped_not_markup(tmp_path):
    """The template autoescapes: a note or a study cell holding markup shows as text and adds no tag."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text(json.dumps({"threshold": 0.5, "notes": ["<script>alert(1)</script> & co"]}))
    (run / "table.md").write_text("| backbone | <b>AUC</b> |\n|---|---|\n| mobilenet_v2 | 0.9 |\n")
    text = write_report(run).read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    assert "<b>AUC</b>" not in text and "&lt;b&gt;AUC&lt;/b&gt;" in text
