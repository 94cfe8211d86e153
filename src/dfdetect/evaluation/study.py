"""The seed's Table 2: every backbone on face crops and on their SRM-filtered copy.

For each cell (backbone x {faces, faces+SRM}) the study trains with the protocol's train config
on the train/validation split, evaluates on the test split, and keeps every figure under
``out/<backbone>-<faces|srm>/``. The test split is Celeb-DF's official list when the data has
one; otherwise it is the held-out validation split, and the table says so.

A backbone whose weights cannot be had is one line in ``StudyResult.skipped`` and marked in the
table; the other cells still run. A cell whose ``metrics.json`` exists is finished and is read
back, not retrained, so a killed study resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from dfdetect._io import write_json, write_text
from dfdetect.config import Protocol, load_protocol
from dfdetect.errors import BadInputError, DfdetectError, WeightsError
from dfdetect.evaluation.evaluate import HISTORY_JSON, METRICS_JSON, evaluate
from dfdetect.parallel import ProgressCallback
from dfdetect.rundir import CONFIG_FILE, DETECTOR_FILE

if TYPE_CHECKING:
    from dfdetect.data.crops import CropTable

__all__ = [
    "DEFAULT_BACKBONES",
    "TABLE_CSV",
    "TABLE_MD",
    "VARIANTS",
    "CellResult",
    "ProgressFactory",
    "StudyResult",
    "cell_name",
    "render_markdown",
    "run_study",
]

DEFAULT_BACKBONES: tuple[str, ...] = ("mobilenet_v2", "vgg16", "resnet50v2")
#: variant key (folder suffix) -> column heading, in the seed's order
VARIANTS: dict[str, str] = {"faces": "faces", "srm": "faces+SRM"}
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"

#: ``progress(description, total)`` -> context manager yielding ``advance(n)``; cli._app.progress_bar fits.
ProgressFactory = Callable[[str, int | None], AbstractContextManager[ProgressCallback | None]]
CellStatus = Literal["trained", "reused", "skipped", "failed"]


def _no_progress(description: str, total: int | None) -> AbstractContextManager[None]:
    return nullcontext(None)


@dataclass
class CellResult:
    backbone: str
    variant: str  #: a key of VARIANTS
    status: CellStatus
    out_dir: Path
    metrics: dict[str, Any] | None = None
    message: str = ""  #: why a cell was skipped or failed

    def value(self, key: str) -> float | None:
        v = (self.metrics or {}).get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass
class StudyResult:
    out_dir: Path
    protocol: str
    backbones: list[str]
    variants: list[str]
    cells: list[CellResult]
    test_set: str  #: "official test list" or "held-out validation split"
    skipped: list[str] = field(default_factory=list)  #: one line per skipped backbone / failed cell

    @property
    def table_md(self) -> Path:
        return self.out_dir / TABLE_MD

    @property
    def table_csv(self) -> Path:
        return self.out_dir / TABLE_CSV

    def cell(self, backbone: str, variant: str) -> CellResult | None:
        return next((c for c in self.cells if c.backbone == backbone and c.variant == variant), None)

    def rows(self) -> list[dict[str, str]]:
        """The table as display strings, one dict per backbone (what table.md and the CLI show)."""
        return _rows(self)


def cell_name(backbone: str, variant: str) -> str:
    return f"{backbone}-{variant}"


def _cell_protocol(protocol: Protocol, backbone: str, pretrained: bool | None,
                   weights: Mapping[str, Path] | None = None) -> Protocol:
    update: dict[str, Any] = {"backbone": backbone}
    if pretrained is not None:
        update["pretrained"] = pretrained
    if weights and backbone in weights:
        update["weights"] = Path(weights[backbone])
    return protocol.model_copy(update={"model": protocol.model.model_copy(update=update)})


# The upstream stages are imported where used so each can be swapped in a test, and so that
# importing the study does not pull torch in before it is needed.
def _split(table: CropTable, protocol: Protocol) -> tuple[CropTable, CropTable, CropTable]:
    from dfdetect.data.crops import split_table

    return split_table(table, protocol.train)


def _train(table: CropTable, protocol: Protocol, out_dir: Path, progress: ProgressCallback | None) -> Any:
    from dfdetect.training.trainer import train

    return train(table, protocol, out_dir, progress=progress)


def _load_detector(path: Path) -> Any:
    from dfdetect.model.detector import Detector

    return Detector.load(path)


def _n(table: CropTable) -> int:
    return len(table.paths)


def scoring_split(table: CropTable, protocol: Protocol) -> tuple[CropTable, str]:
    """The set a cell is scored on: the official test list when present, else the validation split."""
    _, val, test = _split(table, protocol)
    if _n(test) > 0:
        return test, "official test list"
    return val, "held-out validation split"


def _check_same_protocol(cell_dir: Path, protocol: Protocol) -> None:
    """Resume only what this very recipe made; never pass off another protocol's results as this one's."""
    saved = cell_dir / CONFIG_FILE
    if not saved.is_file():
        return
    try:
        same = load_protocol(saved).recipe() == protocol.recipe()  # run settings (-j) may change
    except (OSError, ValueError, yaml.YAMLError):
        same = False
    if not same:
        raise BadInputError(f"holds a run made with another protocol (see {CONFIG_FILE}); "
                            "use a new --out folder or delete this one", path=cell_dir)


def _run_cell(backbone: str, variant: str, table: CropTable, protocol: Protocol, cell_dir: Path,
              progress: ProgressFactory) -> tuple[CellResult, str]:
    metrics_path = cell_dir / METRICS_JSON
    test, test_set = scoring_split(table, protocol)
    if metrics_path.is_file():
        try:
            saved = json.loads(metrics_path.read_text())
            return CellResult(backbone, variant, "reused", cell_dir, saved), test_set
        except (OSError, json.JSONDecodeError):
            pass  # a damaged metrics.json: redo the evaluation below
    label = f"{cell_name(backbone, variant)}"
    history = None
    det_path = cell_dir / DETECTOR_FILE
    if det_path.is_file():  # trained before a kill during evaluation: only evaluate
        detector = _load_detector(det_path)
        if (cell_dir / HISTORY_JSON).is_file():
            history = json.loads((cell_dir / HISTORY_JSON).read_text())
        status: CellStatus = "reused"
    else:
        n_fit = _n(table) - _n(test) if test_set == "official test list" else _n(table)
        with progress(f"train {label}", n_fit if protocol.train.mode == "head" else None) as advance:
            result = _train(table, protocol, cell_dir, advance)
        detector, history = result.detector, result.history
        status = "trained"
    with progress(f"evaluate {label}", _n(test)) as advance:
        metrics = evaluate(detector, test, cell_dir, history=history, title=f"{label} ({test_set})",
                           progress=advance)
    metrics = {**metrics, "test_set": test_set}
    write_json(cell_dir / METRICS_JSON, metrics)
    return CellResult(backbone, variant, status, cell_dir, metrics), test_set


def claim_study_dir(out_dir: Path, backbones: Sequence[str]) -> None:
    """The study's folder is dfdetect's (the run stamp): its ``table.md``, ``table.csv`` and ``report.html`` would
    replace a user's own files of those names. A folder from before the stamp is known by its cell folders."""
    from dfdetect.rundir import RunDir

    RunDir(out_dir).claim(legacy=tuple(cell_name(b, v) for b in backbones for v in VARIANTS))


def run_study(
    tables: Mapping[str, CropTable],
    out_dir: str | Path,
    protocol: Protocol,
    *,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    pretrained: bool | None = None,
    weights: Mapping[str, Path] | None = None,
    progress: ProgressFactory | None = None,
) -> StudyResult:
    """Run the grid and write ``table.md`` / ``table.csv`` with every cell's plots under ``out_dir``.

    Parameters
    ----------
    tables : mapping of variant -> CropTable
        ``{"faces": ..., "srm": ...}``; the SRM table lists the SRM copies of the same crops.
        A variant that is absent is left out of the table.
    protocol : Protocol
        Its train config is used for every cell; only ``model.backbone`` changes per cell.
    pretrained : bool, default=None
        Override ``protocol.model.pretrained`` (tests use ``False`` to stay offline and fast).
    weights : mapping of backbone -> path, default=None
        Local ImageNet weights for backbones that have none offline (VGG16, ResNet50V2 without the hub).
    progress : callable, default=None
        ``progress(description, total)`` returning a context manager that yields ``advance(n)``.
    """
    out_dir = Path(out_dir)
    progress = progress or _no_progress
    variants = [v for v in VARIANTS if v in tables]
    unknown = set(tables) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown study variants {sorted(unknown)}; use {list(VARIANTS)}")
    if not variants:
        raise DfdetectError("study: no crop tables given", path=out_dir)
    claim_study_dir(out_dir, backbones)
    for backbone in backbones:  # before anything is written: a clash leaves the folder as it was
        for variant in variants:
            _check_same_protocol(out_dir / cell_name(backbone, variant),
                                 _cell_protocol(protocol, backbone, pretrained, weights))
    cells: list[CellResult] = []
    skipped: list[str] = []
    test_set = ""
    for backbone in backbones:
        proto = _cell_protocol(protocol, backbone, pretrained, weights)
        no_weights = ""
        for variant in variants:
            cell_dir = out_dir / cell_name(backbone, variant)
            if no_weights:
                cells.append(CellResult(backbone, variant, "skipped", cell_dir, message=no_weights))
                continue
            try:
                cell, test_set = _run_cell(backbone, variant, tables[variant], proto, cell_dir, progress)
            except WeightsError as exc:
                no_weights = str(exc)
                skipped.append(f"{backbone}: skipped, no weights ({exc})")
                cells.append(CellResult(backbone, variant, "skipped", cell_dir, message=no_weights))
                continue
            except DfdetectError as exc:
                skipped.append(f"{cell_name(backbone, variant)}: failed ({exc})")
                cells.append(CellResult(backbone, variant, "failed", cell_dir, message=str(exc)))
                continue
            cells.append(cell)
    result = StudyResult(out_dir, protocol.name, list(backbones), variants, cells, test_set or "n/a", skipped)
    write_text(out_dir / TABLE_MD, render_markdown(result))
    write_text(out_dir / TABLE_CSV, _render_csv(result))
    return result


# --------------------------------------------------------------------------- the table


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _columns(result: StudyResult) -> list[tuple[str, str, str]]:
    """(heading, variant, metric key) per displayed column: AUC per variant, then more for default."""
    cols = [(f"AUC {'without' if v == 'faces' else 'with'} SRM", v, "frame_auc") for v in result.variants]
    if result.protocol != "seed":
        for key, name in (("video_auc", "video AUC"), ("accuracy", "accuracy")):
            cols += [(f"{name} ({VARIANTS[v]})", v, key) for v in result.variants]
    return cols


def _rows(result: StudyResult) -> list[dict[str, str]]:
    rows = []
    for backbone in result.backbones:
        row = {"method": backbone}
        for heading, variant, key in _columns(result):
            cell = result.cell(backbone, variant)
            if cell is None or cell.status in ("skipped", "failed"):
                row[heading] = "skipped" if cell is not None and cell.status == "skipped" else "failed"
            else:
                row[heading] = _pct(cell.value(key))
        rows.append(row)
    return rows


def render_markdown(result: StudyResult) -> str:
    """The seed's Table 2 as markdown, with a note on the test set and any skipped backbone."""
    headings = ["method"] + [h for h, _, _ in _columns(result)]
    lines = [
        f"# Study: {result.protocol} protocol",
        "",
        f"Frame-level AUC on the {result.test_set}" + (
            "; accuracy at the threshold chosen on validation." if result.protocol != "seed" else "."),
        "",
        "| " + " | ".join(headings) + " |",
        "|" + "|".join("---" for _ in headings) + "|",
    ]
    lines += ["| " + " | ".join(row[h] for h in headings) + " |" for row in _rows(result)]
    if result.skipped:
        lines += ["", *[f"- {line}" for line in result.skipped]]
    return "\n".join(lines) + "\n"


def _render_csv(result: StudyResult) -> str:
    """Machine-readable: one row per backbone, every metric of every variant (empty when n/a)."""
    keys = ("frame_auc", "video_auc", "accuracy", "frame_ap", "frame_eer", "threshold", "n_frames",
            "n_videos")
    header = ["backbone"] + [f"{k}_{v}" for v in result.variants for k in ("status", *keys)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for backbone in result.backbones:
        row: list[Any] = [backbone]
        for v in result.variants:
            cell = result.cell(backbone, v)
            row.append(cell.status if cell else "")
            for k in keys:
                value = cell.value(k) if cell else None
                row.append("" if value is None else (int(value) if k.startswith("n_") else f"{value:.4f}"))
        w.writerow(row)
    return buf.getvalue()
