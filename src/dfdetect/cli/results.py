"""Commands: evaluate, study, demo, report.

Examples::

    dfdetect evaluate runs/best/detector.safetensors ../shared/data/dfdc-faces
    dfdetect study Celeb-DF-v2 --out runs/seed --protocol seed
    dfdetect study ../shared/data/dfdc-faces --out runs/dfdc --backbones mobilenet_v2
    dfdetect demo --out demo
    dfdetect report runs/seed/study
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from dfdetect.cli._app import (
    EngineChoice,
    EngineOpt,
    ProtocolOpt,
    RayAddressOpt,
    WorkersOpt,
    app,
    check_result_file,
    claim_out,
    console,
    handle_errors,
    load_protocol_option,
    out,
    print_report,
    print_skipped,
    progress_bar,
    say,
)
from dfdetect.errors import BadInputError, DfdetectError, NothingUsableError

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
BackbonesOpt = Annotated[str | None, typer.Option(
    "--backbones", help="Comma-separated backbones (default: mobilenet_v2,vgg16,resnet50v2).")]
CropsOpt = Annotated[Path | None, typer.Option(
    "--crops", help="A folder of face crops made earlier (mirrors SOURCE); frames and faces are skipped.")]

_METRIC_LINES = (("frame_auc", "frame AUC"), ("video_auc", "video AUC"), ("frame_ap", "frame AP"),
                 ("frame_eer", "frame EER"), ("accuracy", "accuracy"), ("threshold", "threshold"))


def _backbones(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = list(dict.fromkeys(b.strip() for b in value.split(",") if b.strip()))  # twice: trained twice
    if not names:
        raise BadInputError("--backbones is empty; give names such as mobilenet_v2,vgg16")
    check_backbones(names)
    return names


def check_backbones(names: list[str]) -> None:
    """Refuse an unknown name now, not after the frames and faces stages have run."""
    from dfdetect.model.backbones import is_backbone, list_backbones

    unknown = [n for n in names if not is_backbone(n)]
    if unknown:
        raise BadInputError(f"unknown backbone {', '.join(map(repr, unknown))}; choose from "
                            f"{', '.join(list_backbones())}")


def _raise_if_no_cell(study: Any) -> None:
    """Exit non-zero only when nothing usable is left: no cell trained (or reused)."""
    if not any(c.status in ("trained", "reused") for c in study.cells):
        raise NothingUsableError("study: no cell could be trained (see the skipped lines above)", path=study.out_dir)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _print_metrics(metrics: dict[str, Any], where: Path) -> None:
    table = Table(title=f"metrics ({metrics.get('n_frames')} crops, {metrics.get('n_videos')} videos)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, name in _METRIC_LINES:
        table.add_row(name, _fmt(metrics.get(key)))
    (tn, fp), (fn, tp) = metrics["confusion"]
    # Plain text: Rich would read "[[tn, fp], ...]" as markup and drop it.
    table.add_row("real: called real / fake", f"{tn} / {fp}")
    table.add_row("fake: called real / fake", f"{fn} / {tp}")
    out.print(table)
    for w in metrics.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)
    for line in metrics.get("skipped") or []:
        print_skipped(line)
    say(f"metrics.json, scores.csv and plots -> {where}")


def print_study(result: Any) -> None:
    """The study table (Rich), the skipped lines, and where everything is."""
    rows = result.rows()
    table = Table(title=f"Study ({result.protocol} protocol), AUC on the {result.test_set}")
    for col in rows[0] if rows else ["method"]:
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows:
        table.add_row(*row.values())
    out.print(table)
    for line in result.skipped:
        print_skipped(line)
    say(f"table: {result.table_md} and {result.table_csv}", to=out)
    say(f"plots: {result.out_dir}/<backbone>-<faces|srm>/(history|confusion|roc).png", to=out)


def _print_pipeline(result: Any) -> None:
    for note in result.notes:
        say(f"note: {note}")
    print_study(result.study)


@app.command()
@handle_errors
def evaluate(
    args: Annotated[list[str], typer.Argument(
        metavar="[MODEL] FOLDER",
        help="Labelled data (real/ + fake/, labels.csv, Celeb-DF, FF++, DFDC), after an optional detector: "
        "RUN_DIR/detector.safetensors, a run folder or a model name (default: the shipped model).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="The detector, instead of MODEL.")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output folder (default RUN_DIR/eval-NAME, or eval-NAME for a named model).")] = None,
    crops: CropsOpt = None,
    srm: Annotated[bool, typer.Option(
        "--srm", help="Score SRM copies (for a detector trained on faces+SRM).")] = False,
    all_crops: Annotated[bool, typer.Option("--all", help="Score every crop, not only the official test list "
                                                          "(Celeb-DF).")] = False,
    workers: WorkersOpt = 0,
) -> None:
    """Score a labelled set with a saved detector at its validation-chosen threshold."""
    from dfdetect.cli.use import resolve_cli
    from dfdetect.evaluation.evaluate import HISTORY_JSON, official_test_subset
    from dfdetect.evaluation.evaluate import evaluate as run_evaluate
    from dfdetect.evaluation.pipeline import prepare_crops
    from dfdetect.model.detector import Detector, detector_file

    if len(args) > 2 or (len(args) == 2 and model is not None):
        raise BadInputError("evaluate takes [MODEL] FOLDER: one detector (as MODEL or --model) and one folder")
    if len(args) == 2:
        model = args[0]
    folder = Path(args[-1])
    used = resolve_cli(model)
    detector = detector_file(used.path)  # a run folder holds its detector; eval-* goes beside it
    if not detector.is_file():
        raise BadInputError("detector file not found (train one with `dfdetect train`)", path=detector)
    det = Detector.load(detector)
    # Never write into the package or the download cache: a named model's results go in the working folder.
    run_dir = detector.parent if used.source == "local" else None
    dest = out_dir or (run_dir or Path(".")) / f"eval-{folder.resolve().name}"
    claim_out(dest, folder, crops, legacy=())  # never in the data, among a user's own metrics.json or in a stage's folder
    prepared = prepare_crops(folder, dest, det.protocol_, crops=crops, srm=srm, workers=workers,
                             progress=progress_bar, on_stage=print_report)
    for note in prepared.notes:
        say(f"note: {note}")
    table = prepared.tables["srm" if srm else "faces"]
    if not all_crops:
        table, note = official_test_subset(table)
        if note:
            say(f"note: {note}")
    history_path = run_dir / HISTORY_JSON if run_dir else None
    history = json.loads(history_path.read_text()) if history_path and history_path.is_file() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # evaluate records them in its result; printed below
        with progress_bar("evaluate", len(table.paths)) as advance:
            metrics = run_evaluate(det, table, dest, history=history, progress=advance)
    _print_metrics(metrics, dest)


def _weights(pairs: list[str] | None) -> dict[str, Path]:
    """``["vgg16=a.pth", ...]`` -> ``{"vgg16": Path("a.pth")}``, checked before any work starts."""
    from dfdetect.model.backbones import is_backbone

    out: dict[str, Path] = {}
    for pair in pairs or []:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise BadInputError(f"--weights {pair!r}: expected BACKBONE=FILE, e.g. vgg16=vgg16.safetensors")
        if not is_backbone(name):
            raise BadInputError(f"--weights {pair!r}: unknown backbone {name!r}")
        if not Path(file).is_file():
            raise BadInputError("weights file not found", path=file)
        out[name] = Path(file)
    return out


@app.command()
@handle_errors
def study(
    source: Annotated[Path, typer.Argument(
        help="Celeb-DF v2 root, or any labelled folder / CSV / face crops.")],
    out_dir: OutOpt = Path("study-out"),
    protocol: ProtocolOpt = "seed",
    backbones: BackbonesOpt = None,
    crops: CropsOpt = None,
    workers: WorkersOpt = 0,
    engine: EngineOpt = EngineChoice.process,
    ray_address: RayAddressOpt = None,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", help="BACKBONE=FILE: local ImageNet weights for a backbone with none offline "
        "(repeat for several), e.g. --weights vgg16=vgg16.safetensors.")] = None,
) -> None:
    """The seed's Table 2: frames -> faces -> SRM -> every backbone on faces and faces+SRM."""
    from dfdetect.evaluation.pipeline import run_pipeline
    from dfdetect.evaluation.study import DEFAULT_BACKBONES

    names = _backbones(backbones) or DEFAULT_BACKBONES
    result = run_pipeline(source, out_dir, load_protocol_option(protocol), backbones=names, crops=crops, workers=workers,
                          engine=engine.value, ray_address=ray_address, weights=_weights(weights),
                          progress=progress_bar, on_stage=print_report)
    _print_pipeline(result)
    _raise_if_no_cell(result.study)


def _print_shipped(result: Any) -> None:
    """The demo's last step: the shipped detector's verdicts on the videos the demo made."""
    from dfdetect.cli.use import verdict_table

    shipped = result.shipped
    if shipped is None:
        say(f"note: {result.shipped_note or 'no shipped detector'}")
        return
    out.print(verdict_table(shipped.results, title=f"{shipped.model}: verdicts on the demo's test videos "
                                                   "(trained elsewhere; never saw these)"))
    say(f"{shipped.model}: {shipped.correct} of {len(shipped.results)} verdicts match the true label "
        "(the file names say real or fake)", to=out)


@app.command()
@handle_errors
def demo(
    out_dir: OutOpt = Path("demo"),
    backbones: Annotated[str | None, typer.Option(
        "--backbones", help="Comma-separated backbones (default: those whose weights ship offline).")] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames per video (the seed takes 1).")] = 4,
    workers: WorkersOpt = 0,
) -> None:
    """Built-in synthetic Celeb-DF, then the seed study with the backbones that work offline."""
    from dfdetect.evaluation.pipeline import run_demo
    from dfdetect.evaluation.report import write_report

    start = time.perf_counter()
    result = run_demo(out_dir, backbones=_backbones(backbones), frames_per_video=frames, workers=workers,
                      progress=progress_bar, on_stage=print_report)
    _print_pipeline(result)
    page = write_report(result.study.out_dir)
    say(f"report: {page} (one self-contained page)", to=out)
    _print_shipped(result)
    say(f"demo finished in {time.perf_counter() - start:.0f} s", to=out)


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A study, train or evaluate output folder.")],
    dest: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default RUN_DIR/report.html).")]
    = None,
    errors: Annotated[int, typer.Option("--errors", min=0, help="How many confident errors to show per run.")]
    = 12,
) -> None:
    """Write one self-contained HTML page: metrics, study table, curves and the worst errors."""
    from dfdetect.evaluation.report import write_report

    if dest is not None:  # before any work: never over an image, the model or a pipe
        check_result_file(dest, "--out", "report.html", need=(".html", ".htm"))
    try:
        path = write_report(run_dir, dest, n_errors=errors)
    except OSError as exc:
        where = dest or run_dir
        raise DfdetectError(f"cannot write the report ({exc.strerror or exc})", path=where) from None
    say(f"report: {path}", to=out)
