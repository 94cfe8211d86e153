"""Commands: predict, serve, export.

Examples::

    dfdetect predict clip.mp4                                 # the shipped default model (dfdetect models)
    dfdetect predict clip.mp4 --model mobilenet_v2.dfdc_sbi  # a named model
    dfdetect predict clip.mp4 --model runs/best/detector.safetensors
    dfdetect predict ../shared/data/videos photos/ --model det.safetensors --json out.json --save vis/
    dfdetect predict faces/ --model det.onnx --crops          # images that are face crops already
    dfdetect predict videos/ --workers 2 --jsonl out/scan.jsonl  # a folder: 2 processes, resumable lines
    dfdetect predict list.txt --engine ray --ray-address auto --jsonl out/scan.jsonl  # on a Ray cluster
    dfdetect export --model runs/best/detector.safetensors --onnx det.onnx
    dfdetect serve --model det.safetensors --port 8000       # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dfdetect.cli._app import (
    EngineChoice,
    RayAddressOpt,
    app,
    check_result_file,
    check_writable,
    handle_errors,
    out,
    print_report,
    print_skipped,
    progress_bar,
    rate_progress,
    say,
    shown,
)
from dfdetect.config import INFERENCE, MAX_FRAMES
from dfdetect.errors import DfdetectError, WeightsError

# A string, not a Path: a Path would fold the "//" of hf:// and https:// references.
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="A detector: a model name (`dfdetect models`), detector.safetensors or its run folder, "
    "an exported .onnx, hf://owner/repo/file or a URL. Default: the shipped model.")]

_GET_ONE = ("Get one with `dfdetect train DATA --out runs/NAME` (writes runs/NAME/detector.safetensors) "
            "or `make demo` (writes demo/study/mobilenet_v2-faces/detector.safetensors), then pass it with --model")


def no_model_help(path: Path | None) -> str:
    where = f"no trained model at {path}" if path else "no --model given"
    return f"{where}. {_GET_ONE}"


def resolve_cli(model: str | None) -> Any:
    """``--model`` (a name, path, Hub reference or URL; None: the shipped default) -> ``hub.Resolved``,
    saying which model it is, so a verdict never comes from a model the user did not know about."""
    from dfdetect.model import hub

    try:
        used = hub.resolve(model)
    except WeightsError as exc:
        if model is None:
            raise WeightsError(f"{exc}. {_GET_ONE}") from None
        raise
    say(f"model: {used.describe()}")
    return used


def load_scorer(path: Path | None, *, onnx: bool = False) -> Any:
    """A torch Detector for .safetensors (or a run folder holding one), an OnnxDetector for .onnx (or --onnx)."""
    if path is not None and path.is_dir():  # a run folder, as Detector.load takes it
        from dfdetect.model.detector import detector_file

        path = detector_file(path)
    if path is None or not path.is_file():
        raise WeightsError(no_model_help(path))
    if onnx or path.suffix.lower() == ".onnx":
        if path.suffix.lower() != ".onnx":
            raise WeightsError(f"--onnx needs an .onnx file; write one with `dfdetect export --model {path} "
                               "--onnx det.onnx`", path=path)
        from dfdetect.model.export import OnnxDetector

        return OnnxDetector.load(path)
    from dfdetect import threads
    from dfdetect.model.detector import Detector

    detector = Detector.load(path)
    threads.tune()  # once per process, here at the edge (not inside each scoring call)
    return detector


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def verdict_table(results: list[Any], title: str | None = None) -> Table:
    table = Table(title=title or "dfdetect predict (P(fake): mean over all faces, and mean over frames of the top "
                  "face)")
    for name, justify in (("file", "left"), ("verdict", "left"), ("P(fake) mean", "right"),
                          ("P(fake) max-face", "right"), ("threshold", "right"), ("frames with face", "right"),
                          ("faces", "right")):
        table.add_column(name, justify=justify, overflow="fold")
    colour = {"fake": "bold red", "real": "bold green", "no_face": "yellow"}
    for r in results:
        table.add_row(shown(r.file), f"[{colour[r.verdict]}]{r.verdict}[/]", _fmt(r.p_fake_mean),
                      _fmt(r.p_fake_max_face),
                      f"{r.threshold:.3f}", f"{r.frames_with_face}/{len(r.frames)}", str(r.n_faces))
    return table


@app.command()
@handle_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(
        help="Videos, images, folders of them, or list files (.txt, .lst, .list: one path a line).")],
    model: ModelOpt = None,
    frames: Annotated[int, typer.Option("--frames", "-n", min=1, max=MAX_FRAMES,
                                        help="Frames sampled per video.")] = INFERENCE.frames,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write per-frame boxes, scores and verdicts.")]
    = None,
    save: Annotated[Path | None, typer.Option(
        "--save", help="Folder for a contact sheet of scored faces, a score-per-frame plot and Grad-CAM overlays.")]
    = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Run --model (an .onnx file) on onnxruntime, no torch.")]
    = False,
    crops: Annotated[bool, typer.Option("--crops", help="Images are face crops already: score them whole.")]
    = False,
    jsonl: Annotated[Path | None, typer.Option(
        "--jsonl", help="Append one JSON line per file as it finishes; a rerun skips the files already there.")]
    = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-j", min=0, help="Processes (or Ray actors) that each load the model once; 0 = this "
        "process (with --engine ray: one per cluster CPU).")] = 0,
    engine: Annotated[EngineChoice, typer.Option("--engine", help="'process' (local pool) or 'ray' (actors).")]
    = EngineChoice.process,
    ray_address: RayAddressOpt = None,
) -> None:
    """A fake/real verdict for each video or image, with P(fake) and the threshold used."""
    from dfdetect._io import check_separate, media_limits, write_json
    from dfdetect.inference import predict as P
    from dfdetect.preprocess.stage import StageReport

    media_limits()  # a bad DFDETECT_* value is one line now, not an error line for every file
    if jsonl is not None or workers > 0 or engine == EngineChoice.ray:
        if json_out is not None or save is not None:
            raise DfdetectError("--json and --save are for a few files in one process; a scan (--jsonl, "
                                "--workers, --engine ray) writes its results to --jsonl")
        _scan(paths, model, frames=frames, onnx=onnx, crops=crops, jsonl=jsonl, workers=workers,
              engine=engine.value, ray_address=ray_address)
        return
    from dfdetect.inference.scan import expand_lists
    from dfdetect.rundir import RunDir

    repeats: list[str] = []
    paths = expand_lists(paths, repeats)
    # Before any work: an output that cannot be written would otherwise fail after every file was scored.
    if json_out is not None:
        check_result_file(json_out, "--json", "results.json")
    if save is not None and save.exists() and not save.is_dir():
        raise DfdetectError("--save names a file; give a folder for the pictures", path=save)
    if save is not None:
        check_writable(save, "--save")
        for p in paths:  # pictures written among the inputs would overwrite them, or be scanned next time
            if p.is_dir():
                check_separate(p, save, "input", flag="--save")
            elif os.path.realpath(p.parent) == os.path.realpath(save):
                raise DfdetectError(f"--save {save} is the folder of the input {p}; its pictures could overwrite "
                                    "inputs there: choose another folder")
        # `a_faces.png` of an earlier run is dfdetect's to replace, a user's own picture of that name is not
        RunDir(save).claim(legacy=(), flag="--save")
    used = resolve_cli(model)
    path, twin = used.scorer_file(explain=save is not None)  # --save draws Grad-CAM overlays
    scorer = load_scorer(path, onnx=onnx or twin)
    # The summary names a folder only when pictures went there, else the input when there is one: the inputs'
    # common folder (the working directory, often) is neither; each skipped input has its own line
    report = StageReport("predict", save, done_as="scored", source=paths[0] if len(paths) == 1 else None,
                         notes=repeats)
    results = []
    saved = P.picture_index(save) if save is not None else {}  # names given, this run and earlier ones
    with progress_bar("predict", P.count_media(paths)) as advance:
        for res in P.iter_predict(paths, scorer, report=report, progress=advance, frames=frames, crops=crops,
                                  keep_images=save is not None, explain=save is not None):
            if save is not None:
                P.save_visuals(res, save, taken=saved)
                res.drop_images()
            results.append(res)
    if results:
        out.print(verdict_table(results))
    if json_out is not None:
        write_json(json_out, P.results_json(results, report, model=used.name or str(used.path),
                                              model_used=used.describe()))
        say(f"results -> {json_out}")
    if save is not None and results:
        say(f"contact sheets, score plots and Grad-CAM overlays -> {save}")
    for note in sorted({n for r in results for n in r.notes}):
        say(f"note: {note}")
    print_report(report)


def _scan(paths: list[Path], model: str | None, *, jsonl: Path | None, **kwargs: Any) -> None:
    """``predict`` over many files (dfdetect.inference.scan): lines streamed to --jsonl, errors on stderr, a summary."""
    from collections import Counter

    from dfdetect.inference.scan import ModelRef, scan
    from dfdetect.preprocess.stage import StageReport

    if jsonl is not None:
        check_result_file(jsonl, "--jsonl", "scan.jsonl", append=True)
    used = resolve_cli(model)
    path, twin = used.scorer_file()
    kwargs["onnx"] = kwargs["onnx"] or twin
    ref = ModelRef.of(path, onnx=kwargs["onnx"], name=used.name)
    report = StageReport("predict", jsonl, done_as="scored")
    verdicts: Counter[str] = Counter()
    rows = []
    printed = 0  # error lines printed as they came
    with rate_progress("predict") as (advance, set_total):
        for line in scan(paths, ref, jsonl=jsonl, report=report, progress=advance, on_total=set_total, **kwargs):
            if "error" in line:
                print_skipped(line['error'])
                printed += 1
                continue
            verdicts[line["verdict"]] += 1
            if jsonl is None:
                rows.append(line)
    if rows:
        table = Table(title="dfdetect predict")
        for name in ("file", "verdict", "P(fake)", "threshold", "faces"):
            table.add_column(name, overflow="fold")
        for r in rows:
            table.add_row(shown(r["file"]), r["verdict"], _fmt(r["p_fake"]), f"{r['threshold']:.3f}", str(r["faces"]))
        out.print(table)
    counts = ", ".join(f"{verdicts[v]} {v}" for v in ("fake", "real", "no_face"))
    say(f"this run: {counts}, {len(report.failed)} failed; {report.reused} done by an earlier run"
        + (f" -> {jsonl}" if jsonl is not None else ""), to=out)
    for line in report.failed[:len(report.failed) - printed]:  # inputs refused before any work (an empty folder)
        print_skipped(line)
    for note in report.notes:
        say(f"note: {note}")
    report.raise_if_empty()


@app.command()
@handle_errors
def export(
    model: ModelOpt = None,
    onnx_out: Annotated[Path, typer.Option("--onnx", help="Where to write the ONNX model.")] = Path("detector.onnx"),
) -> None:
    """Write the detector to ONNX (preprocessing, threshold and protocol in its metadata)."""
    from dfdetect.model.export import export_onnx

    used = resolve_cli(model)
    if used.path.suffix.lower() == ".onnx":
        raise DfdetectError("--model is already ONNX; export takes the .safetensors detector", path=used.path)
    check_result_file(onnx_out, "--onnx", "detector.onnx", need=(".onnx",))  # never over the model itself
    info = export_onnx(load_scorer(used.path), onnx_out)
    say(f"ONNX model -> {info.path} (input {info.preprocess.size[0]}x{info.preprocess.size[1]}; "
        f"onnxruntime vs torch max |dP| = {info.max_abs_diff:.1e} on random crops)", to=out)


def _check_port(host: str, port: int) -> None:
    """Bind once, before the model loads and "serving ..." is printed: a port in use was that line, then uvicorn's
    own ``ERROR: [Errno 98]`` line. (Another process may still take it in between: uvicorn then says so.)"""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(addr)
    except OSError as exc:
        raise DfdetectError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


@app.command()
@handle_errors
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest accepted upload.")]
    = 200,
    frames: Annotated[int, typer.Option("--frames", "-n", min=1, max=MAX_FRAMES,
                                        help="Frames sampled per video.")] = INFERENCE.frames,
    upload_timeout: Annotated[float, typer.Option(
        "--upload-timeout", min=0.001, help="Seconds a whole upload may take; slower or stalled ones get 408.")]
    = 120.0,
    head_timeout: Annotated[float, typer.Option(
        "--head-timeout", min=0.001, help="Seconds a request's line and headers may take; slower ones get 408.")]
    = 10.0,
    max_uploads: Annotated[int, typer.Option(
        "--max-uploads", min=1, help="Uploads received at once; past it 503 with Retry-After.")] = 16,
    workers: Annotated[int, typer.Option(
        "--workers", "-j", min=0, help="Predictions run at once (threads); 0 = one per CPU core.")] = 0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=0, help="Uploads waiting for a worker; past it 503 with Retry-After.")] = 8,
    explain: Annotated[bool, typer.Option(
        "--explain/--no-explain", help="Grad-CAM heatmaps. A shipped model draws them through its ONNX twin, "
        "without torch; a .safetensors model needs torch for them.")] = True,
) -> None:
    """Web page and API: POST /api/v1/detect, GET / (upload page), GET /healthz."""
    import math

    import uvicorn
    from pydantic import ValidationError

    from dfdetect.config import ServiceConfig, validation_line
    from dfdetect.service import create_app
    from dfdetect.service.http import protocol_for

    if not math.isfinite(max_upload_mb):  # inf MB: an OverflowError traceback
        raise DfdetectError(f"--max-upload-mb must be a finite number of MB, got {max_upload_mb}")
    try:
        cfg = ServiceConfig(max_upload_bytes=int(max_upload_mb * 2**20), frames=frames, upload_timeout=upload_timeout,
                            head_timeout=head_timeout, max_uploads=max_uploads, workers=workers, max_queue=max_queue,
                            explain=explain)
    except ValidationError as exc:  # --upload-timeout inf and the like: one line naming the setting
        raise DfdetectError(f"serve: {validation_line(exc)}") from None
    used = resolve_cli(model)
    from dfdetect._io import media_limits

    media_limits()  # a bad DFDETECT_* value refuses the start, not every upload
    _check_port(host, port)
    path, twin = used.scorer_file(explain=explain)
    app_ = create_app(load_scorer(path), cfg)
    say(f"serving {used.describe()}{' through its ONNX twin' if twin else ''} on http://{host}:{port}/ with "
        f"{cfg.pool_size()} workers, {cfg.max_queue} queued, {cfg.max_uploads} uploads at once (Ctrl+C stops)")
    uvicorn.run(app_, host=host, port=port, log_level="info", http=protocol_for(cfg.head_timeout))
