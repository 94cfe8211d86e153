"""One self-contained HTML page for a run: metrics, study table, figures and the worst mistakes.

The page has no external references at all: CSS is inline and every image (figures and face
crops) is a base64 ``data:`` URI, so the single file can be mailed, archived or opened offline.

The page is one Jinja2 template (:data:`_PAGE`, autoescaped); the code below only gathers what goes in it.
It works on a study folder (``table.md`` plus one sub-folder per cell) and on a single
evaluate / train run folder (``metrics.json``, ``scores.csv``, PNGs).
"""

from __future__ import annotations

import base64
import csv
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import cv2
import jinja2
from markupsafe import Markup

from dfdetect._io import read_image, regular_file, write_text
from dfdetect.errors import BadInputError
from dfdetect.evaluation.evaluate import HISTORY_JSON, METRICS_JSON, SCORES_CSV, read_scores
from dfdetect.evaluation.plots import CONFUSION_PNG, HISTORY_PNG, ROC_PNG, plot_history
from dfdetect.evaluation.study import TABLE_CSV, TABLE_MD
from dfdetect.rundir import TRAIN_JSON

__all__ = ["REPORT_HTML", "confident_errors", "write_report"]

REPORT_HTML = "report.html"
THUMB = 112  #: side of the error thumbnails, in pixels
FIGURE_ORDER = (HISTORY_PNG, CONFUSION_PNG, ROC_PNG)
METRIC_ROWS = (
    ("frame_auc", "frame AUC"), ("video_auc", "video AUC"), ("frame_ap", "frame AP"),
    ("frame_eer", "frame EER"), ("accuracy", "accuracy"), ("threshold", "threshold"), ("n_frames", "crops"),
    ("n_videos", "videos"),
    ("n_real", "real crops"), ("n_fake", "fake crops"), ("n_skipped", "unreadable, skipped"),
    ("test_set", "scored on"), ("threshold_source", "threshold rule"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.figs img{max-width:100%;height:auto}
.errors{display:flex;flex-wrap:wrap;gap:.8em}.err{width:150px;font-size:.8em;word-break:break-all}
.err img{width:112px;height:112px;object-fit:cover;display:block;border:3px solid #c33}
.muted{color:#777}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
"""


_PAGE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string("""\
{% macro note(text) %}<p class='note'>{{ text }}</p>{% endmacro %}
{% macro table(rows) %}<table>{% for k, v in rows %}<tr><th>{{ k }}</th><td{% if v.num %} class='num'{% endif %}>\
{{ v.text }}</td></tr>{% endfor %}</table>{% endmacro %}
{% macro part(p) %}
{% if p.kind == "metrics" %}
{{ table(p.rows) }}{% for w in p.warnings %}{{ note(w) }}{% endfor %}
{% elif p.kind == "hint" %}
<p class='muted'>A training run: validation curves below; score a labelled set with <code>dfdetect evaluate</code> \
for test metrics.</p>
{% elif p.kind == "train" %}
<h3>Training</h3>{{ table(p.rows) }}{% for n in p.notes %}{{ note(n) }}{% endfor %}
{% elif p.kind == "figures" %}
<div class='figs'>{% for f in p.figures %}<img alt="{{ f.alt }}" src="{{ f.src }}">{% endfor %}</div>
{% elif p.kind == "errors" %}
<h3>Most confident errors ({{ p.cards | length }} shown, threshold {{ "%.3f" | format(p.threshold) }})</h3>
{% if not p.cards %}<p>No errors at this threshold.</p>{% else %}<div class='errors'>{% for c in p.cards %}\
<div class='err'>{% if c.src %}<img alt="crop" src="{{ c.src }}">{% elif c.src is none %}\
<div class="muted">crop not found</div>{% endif %}<b>{{ c.label }}</b>, P(fake) {{ "%.3f" | format(c.p_fake) }}<br>\
<span class='muted'>{{ c.name }}<br>{{ c.video }}</span></div>{% endfor %}</div>{% endif %}
{% elif p.kind == "damaged" %}
{{ note(p.path ~ ": cannot read (" ~ p.why ~ ")") }}
{% elif p.kind == "study" %}
{% for b in p.blocks %}
{% if b.kind == "table" %}<table><tr>{% for c in b.head %}<th>{{ c }}</th>{% endfor %}</tr>\
{% for r in b.rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
{% elif b.kind == "note" %}{{ note(b.text) }}
{% else %}<p>{{ b.text }}</p>
{% endif %}
{% endfor %}
{% endif %}
{% endmacro %}
<!DOCTYPE html>
<html lang='en'><head><meta charset='utf-8'><title>dfdetect report: {{ title }}</title><style>{{ css }}</style>\
</head><body><h1>dfdetect report: {{ title }}</h1><p class='muted'>Scores are P(fake); fake is the positive class. \
Accuracy and the confusion matrix use the threshold chosen on validation.</p>
{% for section in sections %}
<h2>{{ section.title }}</h2>
{% for p in section.parts %}
{{ part(p) }}
{% endfor %}
{% endfor %}
</body></html>
""")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: The largest figure embedded in a page: dfdetect's plots are ~100 kB; a `*.png` linked to /dev/zero took 7.8 GB.
MAX_FIGURE_BYTES = 32 << 20


def _png(path: Path) -> dict[str, str]:
    """A figure of the run folder as a data URI; a pipe (it would block), a folder or a device named ``*.png``,
    or one larger than :data:`MAX_FIGURE_BYTES`, is refused in one line."""
    size = regular_file(path)
    if size > MAX_FIGURE_BYTES:
        raise BadInputError(f"{size:,} bytes, more than any figure ({MAX_FIGURE_BYTES:,}); not embedded", path=path)
    return {"alt": path.stem, "src": _data_uri(path.read_bytes(), "image/png")}


def _thumb(path: str) -> str | None:
    """The crop as a small JPEG data URI; None when it cannot be read, "" when it cannot be encoded."""
    img = read_image(path)
    if img is None:
        return None
    img = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return _data_uri(buf.tobytes(), "image/jpeg") if ok else ""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a (one class only)"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _cell(text: str, num: bool = False) -> dict[str, Any]:
    return {"text": text, "num": num}


def confident_errors(scores: list[dict[str, Any]], threshold: float, n: int) -> list[dict[str, Any]]:
    """The ``n`` wrong calls the model was surest of: real scored most fake, fake scored most real."""
    wrong = [r for r in scores if (r["p_fake"] >= threshold) != bool(r["label"])]
    return sorted(wrong, key=lambda r: r["p_fake"] if r["label"] == 0 else 1 - r["p_fake"], reverse=True)[:n]


def _metrics_part(metrics: dict[str, Any]) -> dict[str, Any]:
    rows = [(name, _cell(_fmt(metrics[key]), num=True)) for key, name in METRIC_ROWS if key in metrics]
    cm = metrics.get("confusion")
    if cm:
        (tn, fp), (fn, tp) = cm
        rows.append(("confusion", _cell(f"real\u2192real {tn}, real\u2192fake {fp}, fake\u2192real {fn}, "
                                        f"fake\u2192fake {tp}")))
    return {"kind": "metrics", "rows": rows, "warnings": [str(w) for w in metrics.get("warnings") or []]}


def _errors_part(run: Path, metrics: dict[str, Any], n: int) -> dict[str, Any] | None:
    scores_path = run / SCORES_CSV
    if not scores_path.is_file():
        return None
    threshold = float(metrics.get("threshold", 0.5))
    cards = [{"src": _thumb(r["path"]), "label": "real" if r["label"] == 0 else "fake", "p_fake": float(r["p_fake"]),
              "name": Path(r["path"]).name, "video": str(r["video"])}
             for r in confident_errors(read_scores(scores_path), threshold, n)]
    return {"kind": "errors", "threshold": threshold, "cards": cards}


def _train_part(path: Path) -> dict[str, Any]:
    """What ``train`` records (train.json): threshold rule, split sizes, weights, wall time, notes."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return {"kind": "damaged", "path": str(path), "why": str(exc)}
    rows = [("threshold", _cell(_fmt(info.get("threshold")))),
            ("threshold rule", _cell(_fmt(info.get("threshold_method")))),
            ("weights", _cell(_fmt(info.get("weights")))),
            ("training wall time (s)", _cell(_fmt(info.get("wall_s"))))]
    for split, c in (info.get("counts") or {}).items():
        rows.append((f"{split} split", _cell(", ".join(f"{k} {v}" for k, v in c.items()))))
    return {"kind": "train", "rows": rows, "notes": [str(n) for n in info.get("notes") or []]}


def _history_figure(path: Path) -> dict[str, str] | dict[str, Any]:
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return {"kind": "damaged", "path": str(path), "why": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        return _png(plot_history(history, Path(tmp) / HISTORY_PNG, title=path.parent.name))


def _damaged(path: Path, exc: Exception) -> dict[str, Any]:
    return {"kind": "damaged", "path": str(path), "why": f"{type(exc).__name__}: {exc}"}


# A run file edited by hand or from another version must not cost the whole page: its part becomes a note.
_DAMAGE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, csv.Error, RecursionError)


def _run_section(run: Path, title: str, n_errors: int) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    if (run / METRICS_JSON).is_file():
        try:
            metrics = json.loads((run / METRICS_JSON).read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                raise TypeError(f"expected a JSON object, found {type(metrics).__name__}")
            if metrics:
                parts.append(_metrics_part(metrics))
        except _DAMAGE as exc:
            metrics = {}
            parts.append(_damaged(run / METRICS_JSON, exc))
    if not metrics and (run / HISTORY_JSON).is_file():
        parts.append({"kind": "hint"})
    if (run / TRAIN_JSON).is_file():
        try:
            parts.append(_train_part(run / TRAIN_JSON))
        except _DAMAGE as exc:
            parts.append(_damaged(run / TRAIN_JSON, exc))
    pngs = sorted(run.glob("*.png"), key=lambda p: (FIGURE_ORDER.index(p.name) if p.name in FIGURE_ORDER
                                                     else len(FIGURE_ORDER), p.name))
    figs = []
    for png in pngs:
        try:
            figs.append(_png(png))
        except (*_DAMAGE, BadInputError) as exc:
            parts.append(_damaged(png, exc))
    if (run / HISTORY_JSON).is_file() and not (run / HISTORY_PNG).is_file():
        try:
            drawn = _history_figure(run / HISTORY_JSON)  # a train run: draw its curves here
            if drawn.get("kind") == "damaged":
                parts.append(drawn)
            else:
                figs.insert(0, drawn)
        except _DAMAGE as exc:
            parts.append(_damaged(run / HISTORY_JSON, exc))
    if figs:
        parts.append({"kind": "figures", "figures": figs})
    if metrics:
        try:
            errors = _errors_part(run, metrics, n_errors)
            if errors is not None:
                parts.append(errors)
        except _DAMAGE as exc:
            parts.append(_damaged(run / SCORES_CSV, exc))
    return {"title": title, "parts": parts}


def _markdown_blocks(md: str) -> dict[str, Any]:
    """table.md (written by dfdetect.evaluation.study), in its order: text, the pipe table, bullet notes."""
    blocks: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for line in [*md.splitlines(), ""]:  # the trailing "" closes a table that ends the file
        if line.startswith("|"):
            if not set(line) <= set("|-: "):  # not the |---| rule
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if rows:  # the table just ended
            blocks.append({"kind": "table", "head": rows[0], "rows": rows[1:]})
            rows = []
        if line.startswith("- "):
            blocks.append({"kind": "note", "text": line[2:]})
        elif line.strip() and not line.startswith("# "):
            blocks.append({"kind": "text", "text": line})
    return {"kind": "study", "blocks": blocks}


def _study_order(run_dir: Path) -> list[str]:
    """Backbones in the order table.csv lists them, so cells follow the table's rows."""
    path = run_dir / TABLE_CSV
    if not path.is_file():
        return []
    try:  # only the order of the sections: a damaged table.csv leaves them in name order
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            return [row[0] for row in list(csv.reader(fh))[1:] if row]
    except _DAMAGE:
        return []


def _is_run(folder: Path) -> bool:
    marks = (METRICS_JSON, HISTORY_JSON, TRAIN_JSON)
    return any((folder / f).is_file() for f in marks) or any(folder.glob("*.png"))


def write_report(run_dir: str | Path, dest: str | Path | None = None, *, n_errors: int = 12) -> Path:
    """Write one self-contained HTML page for ``run_dir`` (a study, evaluate or train folder).

    Returns the path written, ``run_dir/report.html`` unless ``dest`` is given.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInputError("run folder not found", path=run_dir)
    sections: list[dict[str, Any]] = []
    table_md = run_dir / TABLE_MD
    if table_md.is_file():
        sections.append({"title": "Study table", "parts": [_markdown_blocks(table_md.read_text(encoding="utf-8", errors="replace"))]})
    if _is_run(run_dir):
        sections.append(_run_section(run_dir, run_dir.name or str(run_dir), n_errors))
    order = _study_order(run_dir)

    def key(p: Path) -> tuple[int, str]:
        return next((i for i, b in enumerate(order) if p.name.startswith(f"{b}-")), len(order)), p.name

    for sub in sorted((p for p in run_dir.iterdir() if p.is_dir() and _is_run(p)), key=key):
        sections.append(_run_section(sub, sub.name, n_errors))
    if not sections:
        raise BadInputError(f"nothing to report: no {TABLE_MD}, {METRICS_JSON} or plots found", path=run_dir)
    page = _PAGE.render(title=run_dir.name, css=Markup(_CSS), sections=sections)
    return write_text(Path(dest) if dest else run_dir / REPORT_HTML, page)
