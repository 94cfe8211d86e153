"""Typed configuration for every stage, and the two protocols.

Each stage takes one frozen config object. Every field's default is the default protocol's value, so a bare
``Protocol()`` *is* ``Protocol.default()``, the recipe that works; ``Protocol.seed()`` sets every field the
seed report used. ``train`` is a union on ``mode``: a head-mode config has no full-only fields, so they cannot be
set where they would be ignored. Configs round-trip through YAML/JSON so a run folder records how it was made;
:func:`validation_line` turns any validation error into one line.
"""

from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

ProtocolName = Literal["seed", "default"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: Bounds that keep one model file or recipe from costing gigabytes: frames sampled per video, and the side of a
#: network input or a face crop (EfficientNet-B4 takes 380; 30000 px crops took 3.5 GB per image).
MAX_FRAMES = 10_000
MAX_SIDE = 1024

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 60, 4, 4


def _shown(value: Any) -> str:
    """A value as an error line may quote it: bounded (an alias bomb expands to 9^9 leaves, and ``repr`` of an
    integer of 5,000 digits raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {value.bit_length() * 30103 // 100000 + 1} digits"
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def validation_line(exc: ValidationError, names: dict[str, str] | None = None, *, prefix: str = "") -> str:
    """The first problem of ``exc`` in one line: ``train.lr: Input should be greater than 0 (got -1)``.

    ``names`` maps a field path (``"train.lr"`` or ``"lr"``) to what the user typed (a flag, a variable);
    otherwise the path is shown after ``prefix``.
    """
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"] if p not in ("head", "full"))  # a union's tag is not a field
    where = (names or {}).get(path) or (names or {}).get(path.rpartition(".")[2]) or prefix + (path or "config")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {_shown(got)})"
    return f"{where}: {str(err['msg']).removeprefix('Value error, ')}{shown}"


class MediaLimits(_Config):
    """How large an input may be: checked from the file's header, before anything is decoded.

    Why: a 1 KB PNG can declare 100000 x 100000 pixels (30 GB decoded), and an 8K video decodes to 100 MB
    per frame. Images above ``max_pixels`` are refused in one line; video frames are decoded scaled down
    so their longer side is at most ``max_frame_side`` (what the face stages need: detection runs at
    <= 640 px, crops are 256 px). Change them with ``DFDETECT_MAX_PIXELS`` / ``DFDETECT_MAX_FRAME_SIDE``
    (see :meth:`from_env` and docs/MEDIA_LIMITS.md).
    """

    max_pixels: int = Field(40_000_000, ge=1, description="largest width x height an image (or a video's "
                            "declared frame size) may have; larger ones are refused, not decoded")
    max_frame_side: int = Field(1920, ge=64, description="decoded video frames whose longer side exceeds "
                                "this are scaled down to it (aspect kept); smaller ones are untouched")
    max_image_bytes: int = Field(256 * 2**20, ge=1, description="largest image file read (bytes): the file is "
                                 "read whole before its header is checked")
    max_video_frames: int = Field(1_000_000, ge=1, description="most frames (packets) a video may hold, over 9 "
                                  "hours at 30 fps: seeking indexes every packet, and 4 million 16 x 16 frames "
                                  "in 62 MB took 1.2 GB")
    max_decoded_frames: int = Field(50_000, ge=1, description="most frames decoded to reach one video's sampled "
                                    "frames (32 frames 10 s apart need a few thousand); the wanted frames past it "
                                    "are lost, named in one line: a million frames after one keyframe took 50 s")

    #: Environment variables :meth:`from_env` reads, per field.
    ENV: ClassVar[dict[str, str]] = {"max_pixels": "DFDETECT_MAX_PIXELS", "max_frame_side": "DFDETECT_MAX_FRAME_SIDE",
                                     "max_image_bytes": "DFDETECT_MAX_IMAGE_BYTES",
                                     "max_video_frames": "DFDETECT_MAX_VIDEO_FRAMES",
                                     "max_decoded_frames": "DFDETECT_MAX_DECODED_FRAMES"}

    @classmethod
    def from_env(cls) -> MediaLimits:
        """The defaults, overridden by ``DFDETECT_MAX_PIXELS`` / ``DFDETECT_MAX_FRAME_SIDE`` where set
        (pool workers inherit them); a bad value is one line naming the variable."""
        from dfdetect.errors import DfdetectError

        values = {f: os.environ[var] for f, var in cls.ENV.items() if os.environ.get(var, "").strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise DfdetectError(validation_line(exc, cls.ENV)) from None


class FrameConfig(_Config):
    """Which frames to take from each video."""

    num_frames: int = Field(8, ge=1, le=MAX_FRAMES, description="1 = the first frame (the seed); N = N evenly "
                            "spaced frames")
    test_frames: int | None = Field(32, ge=1, le=MAX_FRAMES, description="frames for videos in the official test list "
                                    "(evaluation samples more than training); None = num_frames")
    image_format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)

    def for_item(self, is_test: bool) -> FrameConfig:
        """The config one video is sampled with: test videos get ``test_frames`` when set."""
        if is_test and self.test_frames is not None and self.test_frames != self.num_frames:
            return self.model_copy(update={"num_frames": self.test_frames})
        return self


class FaceConfig(_Config):
    """How faces are found and cropped."""

    #: YuNet (no torch) finds the faces MTCNN finds, several times faster (docs/SPEED.md)
    detector: str = Field("yunet", min_length=1, description="a registered face finder: yunet, haar, mtcnn, or a "
                          "plugin's (dfdetect.preprocess.faces.register_detector); checked before any work")
    min_size: int = Field(40, ge=1, description="smallest face side in pixels (Haar minSize)")
    scale_factor: float = Field(1.1, ge=1.01, le=2.0, description="Haar's pyramid step: nearer 1 is slower "
                                "(1.0000001 made 2 GB of pyramid)")
    min_neighbors: int = Field(5, ge=0)
    margin: float = Field(1.3, ge=1.0, le=4.0, description="crop side / box side; 1.0 = the detector box (seed)")
    output_size: int | None = Field(256, ge=8, le=MAX_SIDE, description="resize crops to this square side; None "
                                    "keeps size")
    keep: Literal["largest", "all"] = "largest"
    image_format: Literal["png", "jpg"] = "png"
    min_score: float = Field(0.0, ge=0, le=1, description="MTCNN, YuNet: drop faces below this confidence "
                             "(Haar gives no probability and ignores it)")
    detect_max_side: int | None = Field(640, ge=64, description="detect on a copy whose longer side is at "
                                        "most this (min_size scaled alike), boxes mapped back; None = full frame")


class SRMConfig(_Config):
    """How the SRM-filtered copy of the crops is made."""

    mode: Literal["classic3", "seed"] = "classic3"
    seed_kernel: Literal["KB", "KV", "H2"] = "KV"
    # at most 255, an 8-bit image's own range: past it (inf, 1e308) every SRM crop came out black, unsaid
    clip: float = Field(3.0, gt=0, le=255, allow_inf_nan=False,
                        description="residuals are clipped to [-clip, clip] before 8-bit scaling")


MAX_ENSEMBLE = 16  #: most members a detector may average (config, CLI and detector files alike)


class ModelConfig(_Config):
    """The network: a backbone, optional in-model SRM, and a 1-logit head."""

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    weights: Path | None = None
    input_size: int = Field(128, ge=32, le=MAX_SIDE)
    pool: Literal["max", "avg"] = "avg"
    srm_in_model: bool = False
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the head")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth in the backbone's residual blocks "
                                  "(timm's drop_path_rate; MobileNet, EfficientNet and ResNetV2 bodies)")
    tta_flip: bool = Field(True, description="full mode: score a crop and its mirror image and average the logits")
    ensemble: int = Field(2, ge=1, le=MAX_ENSEMBLE, description="full mode: train this many members (training seeds seed, "
                          "seed+1, ...) on the same split; the detector averages their logits")


class _TrainCommon(_Config):
    """What both modes share."""

    # Upper bounds are far past any sane value: a typo's 1e300 or 10**23 is one line, not an overflow mid-run
    epochs: int = Field(14, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(5e-4, gt=0, le=10, allow_inf_nan=False)
    weight_decay: float = Field(0.05, ge=0, le=10, allow_inf_nan=False)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    split: Literal["random", "group"] = "group"
    balance: Literal["none", "weighted", "sampler"] = "sampler"
    frames_per_video: int = Field(8, ge=1)
    seed: int = Field(0, ge=0, lt=2**32)  #: numpy's seed range
    workers: int = Field(0, ge=0, le=1024)
    threshold: Literal["fixed", "val_eer", "val_youden"] = "val_youden"


#: Full-only fields, at the value that does nothing. A head-mode file written before modes were a union
#: carries them at these values; they are dropped on load. Any other value is refused: head mode ignores it.
_FULL_ONLY_NEUTRAL: dict[str, Any] = {
    "augment": False, "erase": 0.0, "pseudo_fakes": "none", "pairs": False, "warmup": 0.05, "sbi_mix": True,
    "patience": 3, "ema": 0.0, "parallel_members": True, "sbi_mask": "ellipse", "launder": False,
    "calibration": "none"}


class HeadTrainConfig(_TrainCommon):
    """The seed's mode: a frozen backbone's features, cached once, and a 1-unit head trained on them."""

    mode: Literal["head"] = "head"

    @model_validator(mode="before")
    @classmethod
    def _no_full_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _FULL_ONLY_NEUTRAL.keys() & data.keys():
                if data[key] != _FULL_ONLY_NEUTRAL[key]:
                    raise ValueError(f"{key} applies to mode='full' only")
            data = {k: v for k, v in data.items() if k not in _FULL_ONLY_NEUTRAL}
        return data


class FullTrainConfig(_TrainCommon):
    """Fine-tune the whole network: augmentation, AdamW, a cosine schedule, early stopping, a weight average."""

    mode: Literal["full"] = "full"
    augment: bool = True
    erase: float = Field(0.0, ge=0, le=1, description="with augment: probability of random erasing, one rectangle "
                         "(2-33 % of the crop, aspect 0.3-3.3) filled with noise")
    pseudo_fakes: Literal["none", "sbi"] = "none"
    pairs: bool = Field(True, description="each real crop is batched with a fake of the same group "
                        "(its source video / identity) when there is one, so batches are half real, half fake")
    warmup: float = Field(0.05, ge=0, lt=1, description="share of steps with linear LR warm-up")
    sbi_mix: bool = Field(True, description="with pseudo_fakes='sbi': also train on the real fakes (half of the "
                          "fake slots); False = SBI pseudo-fakes alone, from real faces only")
    patience: int = Field(6, ge=1, description="early stopping on validation AUC")
    ema: float = Field(0.998, ge=0, lt=1, description="decay of an exponential moving average of the "
                       "weights (0 = off); validation, the best checkpoint and the detector use the average")
    parallel_members: bool = Field(True, description="on a CPU with no more cores than ensemble "
                                   "members: train the members side by side, one thread each (faster there)")
    sbi_mask: Literal["ellipse", "landmarks"] = Field(
        "ellipse", description="with pseudo_fakes='sbi': the blend region; 'landmarks' = five face points found on "
        "each real crop (YuNet), extended to the face outline (sbi.face_outline); a crop with none falls back "
        "to the ellipse")
    launder: bool = Field(False, description="with augment: also what sharing sites do to a video: down- and "
                          "re-upscaling (0.25-0.8x), sensor noise and harder JPEG (quality 30-100)")
    calibration: Literal["none", "temperature"] = Field(
        "none", description="fit one temperature on the validation logits (Guo et al. 2017) and fold "
        "it into the last layer, so P(fake) = 0.8 means about 80 %; the threshold is chosen after it")


def _mode_of(value: Any) -> str:
    return value.get("mode", "full") if isinstance(value, dict) else getattr(value, "mode", "full")


#: ``train:`` in a protocol: its class is decided by ``mode`` (absent: ``full``, the default protocol's).
TrainConfig = Annotated[Annotated[HeadTrainConfig, Tag("head")] | Annotated[FullTrainConfig, Tag("full")],
                        Discriminator(_mode_of)]
_TRAIN = TypeAdapter(TrainConfig)


def train_config(data: dict[str, Any]) -> HeadTrainConfig | FullTrainConfig:
    """A train config from plain values, the class chosen by ``data['mode']`` (default ``full``)."""
    return _TRAIN.validate_python(data)


class EvalConfig(_Config):
    frames_per_video: int = Field(32, ge=1)
    aggregate: Literal["mean", "max"] = "mean"


class InferenceConfig(_Config):
    """How predict, scan, serve and evaluate score media: how a model is run, never part of its recipe."""

    frames: int = Field(32, ge=1, description="frames sampled per video")
    batch_size: int = Field(64, ge=1, description="crops per network call: bounds memory on many-face videos")


INFERENCE = InferenceConfig()  #: the defaults every command and API function starts from


#: How a run executes, not what it learns: left out of resume keys and of every saved recipe (config.yaml,
#: detector metadata), so changing ``-j`` or how members are scheduled never throws a run away.
RUN_SETTINGS: dict[str, set[str]] = {"train": {"workers", "parallel_members"}}


class Protocol(_Config):
    """A complete recipe: every stage's config under one name."""

    name: ProtocolName = "default"
    frames: FrameConfig = FrameConfig()
    faces: FaceConfig = FaceConfig()
    srm: SRMConfig = SRMConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = FullTrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _full_only_model_settings(self) -> Protocol:
        if self.train.mode == "head":
            for name, off in (("tta_flip", False), ("ensemble", 1)):
                if getattr(self.model, name) != off:
                    raise ValueError(f"model.{name} applies to mode='full' only; head mode needs {name}={off!r}")
        return self

    @classmethod
    def seed(cls) -> Protocol:
        """The seed report, step for step: first frame, Haar, frozen backbone, random 85/15 split."""
        return cls(
            name="seed",
            frames=FrameConfig(num_frames=1, test_frames=None, image_format="jpg"),
            faces=FaceConfig(detector="haar", min_size=128, scale_factor=1.1, min_neighbors=5, margin=1.0,
                             output_size=None, detect_max_side=None, image_format="jpg"),
            model=ModelConfig(input_size=128, pool="max", tta_flip=False, ensemble=1),
            train=HeadTrainConfig(epochs=10, batch_size=32, lr=1e-4, weight_decay=0.0, split="random",
                                  balance="none", frames_per_video=1, threshold="fixed"),
            eval=EvalConfig(frames_per_video=1),
        )

    @classmethod
    def default(cls) -> Protocol:
        """What works (every field's default): identity splits, more frames, YuNet crops with margin,
        balance, fine-tuning of two members (docs/QUALITY.md has how each choice was measured)."""
        return cls()

    @classmethod
    def named(cls, name: ProtocolName) -> Protocol:
        return cls.seed() if name == "seed" else cls.default()

    def recipe(self) -> Protocol:
        """This protocol with the run settings (``RUN_SETTINGS``) at their defaults: what a model is made by."""
        return Protocol.model_validate(self.model_dump(exclude=RUN_SETTINGS))

    def recipe_json(self) -> str:
        """The recipe as JSON, without the run settings (resume keys, detector metadata)."""
        return self.model_dump_json(exclude=RUN_SETTINGS)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last silently, so a
    recipe with ``frames:`` twice ran with one of them, unsaid."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:  # the keys as written (a "<<" merge may repeat them: that is YAML's override)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key_node.value!r} is given "
                                                            "twice", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_protocol(path: str | Path) -> Protocol:
    return Protocol.model_validate(yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader))


class SynthConfig(_Config):
    """The built-in Celeb-DF-shaped dataset (``dfdetect synth``); defaults keep the demo fast."""

    # Upper bounds: a built-in test set, not a benchmark; --frames 100000000 took 6.4 GB in 25 s, and 100,000
    # identities spun in the planner without a word
    identities: int = Field(8, ge=2, le=1000, description="celebrity identities id0..id{N-1}")
    videos_per_identity: int = Field(2, ge=1, le=100, description="Celeb-real videos per identity")
    fakes_per_identity: int = Field(4, ge=1, le=100, description="Celeb-synthesis videos per target identity")
    youtube_videos: int = Field(4, ge=0, le=10_000, description="YouTube-real videos (no identity label)")
    frames: int = Field(20, ge=2, le=1000, description="frames per video")
    frame_size: int = Field(288, ge=192, le=1024, multiple_of=2, description="square frame side in pixels (even)")
    face_size: int = Field(160, ge=64, le=1024, description="face box side in pixels at scale 1")
    fps: int = Field(25, ge=1, le=60)
    crf: int = Field(23, ge=0, le=51, description="H.264 constant rate factor, the same for every video")
    sbi_fraction: float = Field(0.5, ge=0, le=1, description="share of fakes made by self-blending, rest face swaps")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="identities (and YouTube clips) held out for test")
    seed: int = Field(0, ge=0, lt=2**32, description="random seed (numpy's: 0 to 2**32 - 1)")


class ServiceConfig(_Config):
    """How ``dfdetect serve`` takes uploads and runs the detector: limits for a service facing the internet.

    Why each exists: without a body timeout and an upload cap, stalled clients held connections and disk as
    long as they liked; without a bounded pool and queue, a burst made every request wait. Past a cap the
    answer is 503 with ``Retry-After``, never a hang.
    """

    max_upload_bytes: int = Field(200 * 2**20, ge=1, description="largest accepted upload (413 past it)")
    upload_timeout: float = Field(120.0, gt=0, allow_inf_nan=False, description="seconds the whole body may take to arrive; a slower "
                                  "or stalled upload is cut with 408")
    head_timeout: float = Field(10.0, gt=0, allow_inf_nan=False, description="seconds a request's line and headers may take (from the "
                                "connection, or the previous response); slower ones get 408 and are closed")
    max_uploads: int = Field(16, ge=1, description="uploads being received at once; past it 503 + Retry-After")
    workers: int = Field(0, ge=0, description="predictions run at once (a thread pool); 0 = one per CPU core")
    max_queue: int = Field(8, ge=0, description="received uploads waiting for a worker; past it 503 + Retry-After")
    retry_after: int = Field(5, ge=1, description="seconds a 503 tells the client to wait (Retry-After)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest image (width x height, read from its "
                                  "header before decoding); a larger one is refused with 422")
    frames: int = Field(INFERENCE.frames, ge=1, description="frames sampled per video")
    explain: bool = Field(True, description="Grad-CAM heatmaps (torch models only)")
    max_explain: int = Field(8, ge=0, description="faces explained per upload, most likely fake first")

    def pool_size(self) -> int:
        """Worker threads: ``workers``, or the CPU cores this process may use."""
        import os

        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
