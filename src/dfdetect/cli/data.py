"""Preprocessing commands: ``frames``, ``faces``, ``srm``, ``labels``.

Examples::

    dfdetect frames Celeb-DF-v2 --out work/frames --frames 32 --workers 2
    dfdetect faces work/frames --out work/faces --protocol seed
    dfdetect srm work/faces --out work/faces-srm
    dfdetect labels work/faces --out work/labels.txt
    dfdetect frames Celeb-DF-v2 --out /shared/frames --engine ray --ray-address auto

Unset options take the value of ``--protocol`` (``default`` unless given; ``seed`` reproduces the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dfdetect._io import check_separate
from dfdetect.cli._app import (
    EngineChoice,
    EngineOpt,
    ProtocolOpt,
    RayAddressOpt,
    WorkersOpt,
    app,
    check_result_file,
    handle_errors,
    load_protocol_option,
    out,
    override,
    print_report,
    print_skipped,
    progress_bar,
    say,
)
from dfdetect.config import FaceConfig, FrameConfig, SRMConfig
from dfdetect.errors import BadInputError, DfdetectError, NothingUsableError

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors the input structure).")]


_FLAGS = {"num_frames": "--frames", "test_frames": "--test-frames", "image_format": "--format",
            "output_size": "--size"}


@app.command("frames")
@handle_errors
def frames_cmd(
    source: Annotated[Path, typer.Argument(help="Dataset: Celeb-DF v2 / FF++ / DFDC root, real/+fake/, or a CSV.")],
    out_dir: OutOpt,
    frames: Annotated[int | None, typer.Option("--frames", "-n", help="Frames per video (1 = the first).")] = None,
    test_frames: Annotated[int | None, typer.Option(
        "--test-frames", help="Frames per video in the official test list (default protocol: 32).")] = None,
    image_format: Annotated[str | None, typer.Option("--format", help="png or jpg.")] = None,
    workers: WorkersOpt = 0,
    engine: EngineOpt = EngineChoice.process,
    ray_address: RayAddressOpt = None,
    protocol: ProtocolOpt = "default",
) -> None:
    """Take N evenly spaced frames from every video (PyAV, seeking): OUT/<video>/<frame>.png."""
    from dfdetect.data.sources import discover
    from dfdetect.preprocess.frames import extract_frames

    cfg: FrameConfig = override(load_protocol_option(protocol).frames, _FLAGS, num_frames=frames, test_frames=test_frames,
                                 image_format=image_format)
    dataset = discover(source)
    check_separate(dataset.root, out_dir, "dataset")
    if not dataset.items:
        for line in dataset.skipped:
            print_skipped(line)
        raise NothingUsableError(f"no videos or images found ({len(dataset.skipped)} entries skipped)", path=source)
    with progress_bar(f"frames x{cfg.num_frames}", len(dataset.items)) as advance:
        report = extract_frames(dataset.items, out_dir, cfg, workers=workers, engine=engine.value,
                                ray_address=ray_address, progress=advance)
    report.failed[:0] = dataset.skipped  # what discovery could not use is skipped input too: named and counted
    print_report(report)


@app.command("faces")
@handle_errors
def faces_cmd(
    frames_dir: Annotated[Path, typer.Argument(help="Folder of frames (the output of 'frames'), or a dataset of "
                                                    "videos: their sampled frames, with no frame files written.")],
    out_dir: OutOpt,
    frames: Annotated[int | None, typer.Option("--frames", "-n", help="A dataset of videos: frames per video.")] = None,
    test_frames: Annotated[int | None, typer.Option(
        "--test-frames", help="A dataset of videos: frames per video in the official test list.")] = None,
    detector: Annotated[str | None, typer.Option("--detector", help="yunet (default), haar (seed) or mtcnn.")] = None,
    min_size: Annotated[int | None, typer.Option("--min-size", help="Smallest face side, px.")] = None,
    scale_factor: Annotated[float | None, typer.Option("--scale-factor", help="Haar scaleFactor.")] = None,
    min_neighbors: Annotated[int | None, typer.Option("--min-neighbors", help="Haar minNeighbors.")] = None,
    margin: Annotated[float | None, typer.Option("--margin", help="Crop side / box side (1.3 = 30% more).")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Resize crops to SIZE x SIZE.")] = None,
    keep: Annotated[str | None, typer.Option("--keep", help="largest (one per frame) or all.")] = None,
    image_format: Annotated[str | None, typer.Option("--format", help="png or jpg.")] = None,
    detect_max_side: Annotated[int | None, typer.Option(
        "--detect-max-side", help="Detect on a copy at most this wide/high, boxes mapped back (faster YuNet/MTCNN).")] = None,
    min_score: Annotated[float | None, typer.Option("--min-score", help="YuNet/MTCNN: drop faces below this.")] = None,
    workers: WorkersOpt = 0,
    engine: EngineOpt = EngineChoice.process,
    ray_address: RayAddressOpt = None,
    protocol: ProtocolOpt = "default",
) -> None:
    """Crop the face in every frame: OUT/<video>/<frame>.png and OUT/manifest.csv (frames without one too).

    Given a dataset of videos, it decodes their sampled frames itself (as 'frames' would) and writes only the
    crops: the same files as 'frames' then 'faces' with PNG frames, without the frame files in between."""
    from dfdetect.preprocess.faces import check_detector, extract_faces, images_in

    proto = load_protocol_option(protocol)
    cfg: FaceConfig = override(proto.faces, _FLAGS, detector=detector, min_size=min_size,
                                scale_factor=scale_factor, min_neighbors=min_neighbors, margin=margin,
                                output_size=size, keep=keep, image_format=image_format,
                                detect_max_side=detect_max_side, min_score=min_score)
    check_detector(cfg.detector)  # before the bar: a bad --detector or folder is one line, nothing else
    dataset = _video_dataset(frames_dir)
    if dataset is not None:
        from dfdetect.preprocess.video_faces import extract_video_faces

        fcfg: FrameConfig = override(proto.frames, _FLAGS, num_frames=frames, test_frames=test_frames)
        check_separate(dataset.root, out_dir, "dataset")
        with progress_bar(f"faces ({cfg.detector}) from videos x{fcfg.num_frames}", len(dataset.items)) as advance:
            report = extract_video_faces(dataset.items, out_dir, fcfg, cfg, workers=workers, engine=engine.value,
                                         ray_address=ray_address, progress=advance)
        report.failed[:0] = dataset.skipped  # what discovery could not use is skipped input too
        print_report(report)
        return
    if frames is not None or test_frames is not None:
        raise BadInputError("--frames and --test-frames are for a dataset of videos; this is a folder of frames",
                            path=frames_dir)
    total = len(images_in(frames_dir, "frames"))
    check_separate(frames_dir, out_dir, "frames")
    with progress_bar(f"faces ({cfg.detector})", total) as advance:
        report = extract_faces(frames_dir, out_dir, cfg, workers=workers, engine=engine.value,
                               ray_address=ray_address, progress=advance)
    print_report(report)


def _video_dataset(source: Path) -> Any:
    """The dataset under ``source`` when it holds videos (``faces`` then reads them itself), else None: a folder
    of frames (a 'frames' output is stamped so) or of images is cropped as it is."""
    import json

    from dfdetect.data.sources import discover
    from dfdetect.preprocess.stage import STAMP

    if not source.is_dir():
        return None
    try:  # a 'frames' output says so in its stamp (a 'synth' output is a dataset of videos)
        if json.loads((source / STAMP).read_text(encoding="utf-8")).get("stage") == "frames":
            return None
    except (OSError, ValueError, RecursionError, AttributeError):
        pass
    try:
        dataset = discover(source)
    except BadInputError:  # no dataset layout: a plain folder of frames or images
        return None
    return dataset if any(it.is_video for it in dataset.items) else None


@app.command("srm")
@handle_errors
def srm_cmd(
    faces_dir: Annotated[Path, typer.Argument(help="Folder of face crops (the output of 'faces').")],
    out_dir: OutOpt,
    mode: Annotated[str | None, typer.Option("--mode", help="classic3 (3 kernels, one per channel) or seed.")] = None,
    clip: Annotated[float | None, typer.Option("--clip", help="Clip residuals to +-CLIP before 8-bit.")] = None,
    workers: WorkersOpt = 0,
    engine: EngineOpt = EngineChoice.process,
    ray_address: RayAddressOpt = None,
    protocol: ProtocolOpt = "default",
) -> None:
    """Write the SRM-filtered copy of the face crops (PNG, same structure, manifest copied)."""
    from dfdetect.preprocess.faces import images_in
    from dfdetect.preprocess.srm import make_srm_copy

    cfg: SRMConfig = override(load_protocol_option(protocol).srm, _FLAGS, mode=mode, clip=clip)
    total = len(images_in(faces_dir, "faces"))  # before the bar: a bad folder is one line, nothing else
    check_separate(faces_dir, out_dir, "faces")
    with progress_bar(f"srm ({cfg.mode})", total) as advance:
        report = make_srm_copy(faces_dir, out_dir, cfg, workers=workers, engine=engine.value,
                               ray_address=ray_address, progress=advance)
    print_report(report)


#: Celeb-DF folder -> the seed file's value (1 = real, 0 = fake).
CELEBDF_VALUES = {"Celeb-synthesis": 0, "Celeb-real": 1, "YouTube-real": 1, "Youtube-real": 1}


@app.command("labels")
@handle_errors
def labels_cmd(
    root: Annotated[Path, typer.Argument(help="Folder whose files to label (faces, SRM copy, frames).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Label file to write ('{value} {path}').")],
    subfolder: Annotated[str | None, typer.Option("--subfolder", help="Label only ROOT/NAME ...")] = None,
    value: Annotated[int | None, typer.Option("--value", help="... with this value: 1 = real, 0 = fake.")] = None,
) -> None:
    """Write a seed-style label file ('1 path' = real, '0 path' = fake); by default every Celeb-DF folder."""
    from dfdetect.data.labels import from_seed_value, generate_labels

    if (subfolder is None) != (value is None):
        raise DfdetectError("--subfolder and --value go together (or give neither to label Celeb-DF folders)")
    if not root.is_dir():
        raise BadInputError("folder not found", path=root)
    check_result_file(out_file, "--out", "labels.txt")  # never over a crop, a video, a pipe or a device
    # nor over a dataset's own label sources: the official test list (same line format) or a labels.csv
    if out_file.name.lower() == "list_of_testing_videos.txt" or out_file.suffix.lower() in (".csv", ".json"):
        raise BadInputError("is a dataset's own list or labels, not an output of `labels`: write to another file, "
                            "such as labels.txt", path=out_file)
    if subfolder is not None:
        if value not in (0, 1):
            raise DfdetectError(f"--value must be 1 (real) or 0 (fake), got {value}")
        sub = Path(subfolder)  # ../outside (or /etc) labelled files outside ROOT, in lines no reader accepts
        if sub.is_absolute() or ".." in sub.parts:
            raise DfdetectError(f"--subfolder {subfolder} is not a folder inside {root}; name one of its folders")
        plan = {subfolder: value}
    else:
        plan = {name: v for name, v in CELEBDF_VALUES.items() if (root / name).is_dir()}
        if not plan:
            raise NothingUsableError(f"no Celeb-DF folders ({', '.join(CELEBDF_VALUES)}); "
                                     "use --subfolder NAME --value 1|0", path=root)
    total = 0
    for name, v in plan.items():
        skipped: list[str] = []
        lines = generate_labels(root, name, from_seed_value(v), dest=out_file, skipped=skipped)
        for line in skipped:
            print_skipped(line)
        say(f"labels: {len(lines)} files in {name}/ -> {v} ({'real' if v == 1 else 'fake'})")
        total += len(lines)
    if total == 0:
        raise NothingUsableError("no images or videos to label", path=root)
    say(str(out_file), to=out)
