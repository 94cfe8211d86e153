"""One self-contained HTML page for a run: metrics, study table, figures and the worst mistakes.

The page has no external references at all: CSS is inline and every image (figures and face
crops) is a base64 ``data:`` URI, so the single file can be mailed, archived or opened offline.

It works on a study folder (``table.md`` plus one sub-folder per cell) and on a single
evaluate / train run folder (``metrics.json``, ``scores.csv``, PNGs).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import cv2

from dfdetect._io import read_image, write_text
from dfdetect.errors import BadInputError
from dfdetect.evaluate import HISTORY_JSON, METRICS_JSON, SCORES_CSV, read_scores
from dfdetect.plots import CONFUSION_PNG, HISTORY_PNG, ROC_PNG, plot_history
from dfdetect.rundir import TRAIN_JSON
from dfdetect.study import TABLE_CSV, TABLE_MD

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


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(path: Path) -> str:
    return f'<img alt="{html.escape(path.stem)}" src="{_data_uri(path.read_bytes(), "image/png")}">'


def _thumb(path: str) -> str:
    img = read_image(path)
    if img is None:
        return '<div class="muted">crop not found</div>'
    img = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f'<img alt="crop" src="{_data_uri(buf.tobytes(), "image/jpeg")}">' if ok else ""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a (one class only)"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def confident_errors(scores: list[dict[str, Any]], threshold: float, n: int) -> list[dict[str, Any]]:
    """The ``n`` wrong calls the model was surest of: real scored most fake, fake scored most real."""
    wrong = [r for r in scores if (r["p_fake"] >= threshold) != bool(r["label"])]
    return sorted(wrong, key=lambda r: r["p_fake"] if r["label"] == 0 else 1 - r["p_fake"], reverse=True)[:n]


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [f"<tr><th>{name}</th><td class='num'>{_fmt(metrics[key])}</td></tr>"
            for key, name in METRIC_ROWS if key in metrics]
    cm = metrics.get("confusion")
    if cm:
        (tn, fp), (fn, tp) = cm
        rows.append(f"<tr><th>confusion</th><td>real&rarr;real {tn}, real&rarr;fake {fp}, "
                    f"fake&rarr;real {fn}, fake&rarr;fake {tp}</td></tr>")
    notes = "".join(f"<p class='note'>{html.escape(str(w))}</p>" for w in metrics.get("warnings") or [])
    return f"<table>{''.join(rows)}</table>{notes}"


def _errors_html(run: Path, metrics: dict[str, Any], n: int) -> str:
    scores_path = run / SCORES_CSV
    if not scores_path.is_file():
        return ""
    scores = read_scores(scores_path)
    threshold = float(metrics.get("threshold", 0.5))
    errs = confident_errors(scores, threshold, n)
    head = f"<h3>Most confident errors ({len(errs)} shown, threshold {threshold:.3f})</h3>"
    if not errs:
        return head + "<p>No errors at this threshold.</p>"
    cards = [
        f"<div class='err'>{_thumb(r['path'])}<b>{'real' if r['label'] == 0 else 'fake'}</b>, "
        f"P(fake) {r['p_fake']:.3f}<br><span class='muted'>{html.escape(Path(r['path']).name)}<br>"
        f"{html.escape(str(r['video']))}</span></div>"
        for r in errs
    ]
    return head + f"<div class='errors'>{''.join(cards)}</div>"


def _train_table(path: Path) -> str:
    """What ``train`` records (train.json): threshold rule, split sizes, weights, wall time, notes."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return f"<p class='note'>{html.escape(str(path))}: cannot read ({html.escape(str(exc))})</p>"
    rows = [("threshold", _fmt(info.get("threshold"))),
            ("threshold rule", _fmt(info.get("threshold_method"))), ("weights", _fmt(info.get("weights"))),
            ("training wall time (s)", _fmt(info.get("wall_s")))]
    for split, c in (info.get("counts") or {}).items():
        rows.append((f"{split} split", html.escape(", ".join(f"{k} {v}" for k, v in c.items()))))
    notes = "".join(f"<p class='note'>{html.escape(str(n))}</p>" for n in info.get("notes") or [])
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h3>Training</h3><table>{body}</table>{notes}"


def _history_figure(path: Path) -> str:
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return f"<p class='note'>{html.escape(str(path))}: cannot read ({html.escape(str(exc))})</p>"
    with tempfile.TemporaryDirectory() as tmp:
        return _png(plot_history(history, Path(tmp) / HISTORY_PNG, title=path.parent.name))


def _damaged(path: Path, exc: Exception) -> str:
    return f"<p class='note'>{html.escape(str(path))}: cannot read ({html.escape(f'{type(exc).__name__}: {exc}')})</p>"


# A run file edited by hand or from another version must not cost the whole page: its part becomes a note.
_DAMAGE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _run_section(run: Path, title: str, n_errors: int) -> str:
    parts = [f"<h2>{html.escape(title)}</h2>"]
    metrics: dict[str, Any] = {}
    if (run / METRICS_JSON).is_file():
        try:
            metrics = json.loads((run / METRICS_JSON).read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                raise TypeError(f"expected a JSON object, found {type(metrics).__name__}")
            parts.append(_metrics_table(metrics) if metrics else "")
        except _DAMAGE as exc:
            metrics = {}
            parts.append(_damaged(run / METRICS_JSON, exc))
    if not metrics and (run / HISTORY_JSON).is_file():
        parts.append("<p class='muted'>A training run: validation curves below; score a labelled set with "
                     "<code>dfdetect evaluate</code> for test metrics.</p>")
    if (run / TRAIN_JSON).is_file():
        try:
            parts.append(_train_table(run / TRAIN_JSON))
        except _DAMAGE as exc:
            parts.append(_damaged(run / TRAIN_JSON, exc))
    pngs = sorted(run.glob("*.png"), key=lambda p: (FIGURE_ORDER.index(p.name) if p.name in FIGURE_ORDER
                                                     else len(FIGURE_ORDER), p.name))
    figs = [_png(p) for p in pngs]
    if (run / HISTORY_JSON).is_file() and not (run / HISTORY_PNG).is_file():
        try:
            figs.insert(0, _history_figure(run / HISTORY_JSON))  # a train run: draw its curves here
        except _DAMAGE as exc:
            parts.append(_damaged(run / HISTORY_JSON, exc))
    if figs:
        parts.append(f"<div class='figs'>{''.join(figs)}</div>")
    if metrics:
        try:
            parts.append(_errors_html(run, metrics, n_errors))
        except _DAMAGE as exc:
            parts.append(_damaged(run / SCORES_CSV, exc))
    return "\n".join(p for p in parts if p)


def _markdown_table(md: str) -> str:
    """table.md (written by dfdetect.study) to HTML, in its order: text, the pipe table, bullet notes."""
    out: list[str] = []
    rows: list[list[str]] = []
    for line in [*md.splitlines(), ""]:  # the trailing "" closes a table that ends the file
        if line.startswith("|"):
            if not set(line) <= set("|-: "):  # not the |---| rule
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if rows:  # the table just ended
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                           for r in rows[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            rows = []
        if line.startswith("- "):
            out.append(f"<p class='note'>{html.escape(line[2:])}</p>")
        elif line.strip() and not line.startswith("# "):
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def _study_order(run_dir: Path) -> list[str]:
    """Backbones in the order table.csv lists them, so cells follow the table's rows."""
    path = run_dir / TABLE_CSV
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [row[0] for row in list(csv.reader(fh))[1:] if row]


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
    sections: list[str] = []
    table_md = run_dir / TABLE_MD
    if table_md.is_file():
        sections.append("<h2>Study table</h2>\n" + _markdown_table(table_md.read_text(encoding="utf-8")))
    if _is_run(run_dir):
        sections.append(_run_section(run_dir, run_dir.name or str(run_dir), n_errors))
    order = _study_order(run_dir)

    def key(p: Path) -> tuple[int, str]:
        return next((i for i, b in enumerate(order) if p.name.startswith(f"{b}-")), len(order)), p.name

    for sub in sorted((p for p in run_dir.iterdir() if p.is_dir() and _is_run(p)), key=key):
        sections.append(_run_section(sub, sub.name, n_errors))
    if not sections:
        raise BadInputError(f"nothing to report: no {TABLE_MD}, {METRICS_JSON} or plots found", path=run_dir)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>dfdetect report: {html.escape(run_dir.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>dfdetect report: {html.escape(run_dir.name)}</h1>"
        "<p class='muted'>Scores are P(fake); fake is the positive class. Accuracy and the confusion matrix "
        "use the threshold chosen on validation.</p>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    return write_text(Path(dest) if dest else run_dir / REPORT_HTML, page)
