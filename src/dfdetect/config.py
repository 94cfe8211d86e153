"""Typed configuration for every stage, and the two protocols.

Each stage takes one frozen config object. ``Protocol.seed()`` reproduces the seed report's recipe
exactly; ``Protocol.default()`` is the recipe that works. Configs round-trip through YAML/JSON so
a run folder records exactly how it was made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ProtocolName = Literal["seed", "default"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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

    #: Environment variables :meth:`from_env` reads, per field.
    ENV: ClassVar[dict[str, str]] = {"max_pixels": "DFDETECT_MAX_PIXELS", "max_frame_side": "DFDETECT_MAX_FRAME_SIDE",
                                     "max_image_bytes": "DFDETECT_MAX_IMAGE_BYTES"}

    @classmethod
    def from_env(cls) -> MediaLimits:
        """The defaults, overridden by ``DFDETECT_MAX_PIXELS`` / ``DFDETECT_MAX_FRAME_SIDE`` where set
        (pool workers inherit them); a bad value is one line naming the variable."""
        from dfdetect.errors import DfdetectError

        values = {f: os.environ[var] for f, var in cls.ENV.items() if os.environ.get(var, "").strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DfdetectError(f"{cls.ENV[str(err['loc'][0])]}: {err['msg']}") from None


class FrameConfig(_Config):
    """Which frames to take from each video."""

    num_frames: int = Field(1, ge=1, description="1 = the first frame (the seed); N = N evenly spaced frames")
    test_frames: int | None = Field(None, ge=1, description="frames for videos in the official test list "
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

    detector: Literal["haar", "mtcnn", "yunet"] = "haar"
    min_size: int = Field(128, ge=1, description="smallest face side in pixels (Haar minSize)")
    scale_factor: float = Field(1.1, gt=1.0)
    min_neighbors: int = Field(5, ge=0)
    margin: float = Field(1.0, ge=1.0, description="crop side / box side; 1.0 = the detector box (seed)")
    output_size: int | None = Field(None, ge=8, description="resize crops to this square side; None keeps size")
    keep: Literal["largest", "all"] = "largest"
    image_format: Literal["png", "jpg"] = "png"
    min_score: float = Field(0.0, ge=0, le=1, description="MTCNN, YuNet: drop faces below this confidence "
                             "(Haar gives no probability and ignores it)")
    detect_max_side: int | None = Field(None, ge=64, description="detect on a copy whose longer side is at "
                                        "most this (min_size scaled alike), boxes mapped back; None = full frame")


class SRMConfig(_Config):
    """How the SRM-filtered copy of the crops is made."""

    mode: Literal["classic3", "seed"] = "classic3"
    seed_kernel: Literal["KB", "KV", "H2"] = "KV"
    clip: float = Field(3.0, gt=0, description="residuals are clipped to [-clip, clip] before 8-bit scaling")


MAX_ENSEMBLE = 16  #: most members a detector may average (config, CLI and detector files alike)


class ModelConfig(_Config):
    """The network: a backbone, optional in-model SRM, and a 1-logit head."""

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    weights: Path | None = None
    input_size: int = Field(128, ge=32)
    pool: Literal["max", "avg"] = "max"
    srm_in_model: bool = False
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the head")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth in the backbone's residual blocks "
                                  "(timm's drop_path_rate; MobileNet, EfficientNet and ResNetV2 bodies)")
    tta_flip: bool = Field(False, description="score a crop and its mirror image and average the logits")
    ensemble: int = Field(1, ge=1, le=MAX_ENSEMBLE, description="full mode: train this many members (training seeds seed, "
                          "seed+1, ...) on the same split; the detector averages their logits")


class TrainConfig(_Config):
    """How the model is fitted."""

    mode: Literal["head", "full"] = "head"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    split: Literal["random", "group"] = "random"
    balance: Literal["none", "weighted", "sampler"] = "none"
    augment: bool = False
    erase: float = Field(0.0, ge=0, le=1, description="with augment: probability of random erasing, one rectangle "
                         "(2-33 % of the crop, aspect 0.3-3.3) filled with noise")
    pseudo_fakes: Literal["none", "sbi"] = "none"
    pairs: bool = Field(False, description="full mode: each real crop is batched with a fake of the same group "
                        "(its source video / identity) when there is one, so batches are half real, half fake")
    warmup: float = Field(0.05, ge=0, lt=1, description="full mode: share of steps with linear LR warm-up")
    sbi_mix: bool = Field(True, description="with pseudo_fakes='sbi': also train on the real fakes (half of the "
                          "fake slots); False = SBI pseudo-fakes alone, from real faces only")
    patience: int = Field(3, ge=1, description="early stopping on validation AUC (full mode)")
    ema: float = Field(0.0, ge=0, lt=1, description="full mode: decay of an exponential moving average of the "
                       "weights (0 = off); validation, the best checkpoint and the detector use the average")
    frames_per_video: int = Field(8, ge=1)
    seed: int = 0
    workers: int = Field(0, ge=0)
    parallel_members: bool = Field(True, description="full mode on a CPU with no more cores than ensemble "
                                   "members: train the members side by side, one thread each (faster there)")
    threshold: Literal["fixed", "val_eer", "val_youden"] = "fixed"
    sbi_mask: Literal["ellipse", "landmarks"] = Field(
        "ellipse", description="with pseudo_fakes='sbi': the blend region; 'landmarks' = five face points found on "
        "each real crop (YuNet), extended to the face outline (sbi.face_outline); a crop with none falls back "
        "to the ellipse")
    launder: bool = Field(False, description="with augment: also what sharing sites do to a video: down- and "
                          "re-upscaling (0.25-0.8x), sensor noise and harder JPEG (quality 30-100)")
    calibration: Literal["none", "temperature"] = Field(
        "none", description="full mode: fit one temperature on the validation logits (Guo et al. 2017) and fold "
        "it into the last layer, so P(fake) = 0.8 means about 80 %; the threshold is chosen after it")


class EvalConfig(_Config):
    frames_per_video: int = Field(32, ge=1)
    aggregate: Literal["mean", "max"] = "mean"


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
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @classmethod
    def seed(cls) -> Protocol:
        """The seed report, step for step: first frame, Haar, frozen backbone, random 85/15 split."""
        return cls(
            name="seed",
            frames=FrameConfig(num_frames=1, image_format="jpg"),
            faces=FaceConfig(detector="haar", min_size=128, scale_factor=1.1, min_neighbors=5, margin=1.0,
                             image_format="jpg"),
            model=ModelConfig(input_size=128, pool="max"),
            train=TrainConfig(mode="head", epochs=10, batch_size=32, lr=1e-4, split="random", balance="none",
                              frames_per_video=1, threshold="fixed"),
            eval=EvalConfig(frames_per_video=1),
        )

    @classmethod
    def default(cls) -> Protocol:
        """What works: identity splits, more frames, YuNet crops with margin, balance, fine-tuning."""
        return cls(
            name="default",
            frames=FrameConfig(num_frames=8, test_frames=32, image_format="png"),
            # YuNet (no torch) finds the faces MTCNN finds, several times faster; both on a <=640 px copy
            # (MTCNN there found the same faces, 1.8-2.8x faster); figures in bench/preprocess.py, docs/SPEED.md
            faces=FaceConfig(detector="yunet", min_size=40, margin=1.3, output_size=256, detect_max_side=640),
            # bench/quality.py's DEFAULT recipe (docs/QUALITY.md): MobileNetV2 at 128 px with a weight average,
            # two members of 14 epochs whose logits are averaged: test AUC 0.935 and 0.932, the best of every
            # recipe run end to end (10-epoch pairs and triples, three 112 px or 8-epoch members: 0.920-0.929);
            # trained side by side on 2 cores, bench/quality.py took 32.1 min in all
            model=ModelConfig(input_size=128, pool="avg", tta_flip=True, ensemble=2),
            train=TrainConfig(mode="full", epochs=14, batch_size=32, lr=5e-4, weight_decay=0.05, warmup=0.05,
                              split="group", balance="sampler", pairs=True, augment=True, patience=6,
                              ema=0.998, frames_per_video=8, threshold="val_youden"),
            eval=EvalConfig(frames_per_video=32),
        )

    @classmethod
    def named(cls, name: ProtocolName) -> Protocol:
        return cls.seed() if name == "seed" else cls.default()

    def recipe(self) -> Protocol:
        """This protocol with the run settings (``RUN_SETTINGS``) at their defaults: what a model is made by."""
        return Protocol.model_validate(self.model_dump(exclude=RUN_SETTINGS))

    def recipe_json(self) -> str:
        """The recipe as JSON, without the run settings (resume keys, detector metadata)."""
        return self.model_dump_json(exclude=RUN_SETTINGS)


def load_protocol(path: str | Path) -> Protocol:
    return Protocol.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


class SynthConfig(_Config):
    """The built-in Celeb-DF-shaped dataset (``dfdetect synth``); defaults keep the demo fast."""

    identities: int = Field(8, ge=2, description="celebrity identities id0..id{N-1}")
    videos_per_identity: int = Field(2, ge=1, description="Celeb-real videos per identity")
    fakes_per_identity: int = Field(4, ge=1, description="Celeb-synthesis videos per target identity")
    youtube_videos: int = Field(4, ge=0, description="YouTube-real videos (no identity label)")
    frames: int = Field(20, ge=2, description="frames per video")
    frame_size: int = Field(288, ge=192, le=1024, multiple_of=2, description="square frame side in pixels (even)")
    face_size: int = Field(160, ge=64, description="face box side in pixels at scale 1")
    fps: int = Field(25, ge=1, le=60)
    crf: int = Field(23, ge=0, le=51, description="H.264 constant rate factor, the same for every video")
    sbi_fraction: float = Field(0.5, ge=0, le=1, description="share of fakes made by self-blending, rest face swaps")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="identities (and YouTube clips) held out for test")
    seed: int = 0


class ServiceConfig(_Config):
    """How ``dfdetect serve`` takes uploads and runs the detector: limits for a service facing the internet.

    Why each exists: without a body timeout and an upload cap, stalled clients held connections and disk as
    long as they liked; without a bounded pool and queue, a burst made every request wait. Past a cap the
    answer is 503 with ``Retry-After``, never a hang.
    """

    max_upload_bytes: int = Field(200 * 2**20, ge=1, description="largest accepted upload (413 past it)")
    upload_timeout: float = Field(120.0, gt=0, description="seconds the whole body may take to arrive; a slower "
                                  "or stalled upload is cut with 408")
    max_uploads: int = Field(16, ge=1, description="uploads being received at once; past it 503 + Retry-After")
    workers: int = Field(0, ge=0, description="predictions run at once (a thread pool); 0 = one per CPU core")
    max_queue: int = Field(8, ge=0, description="received uploads waiting for a worker; past it 503 + Retry-After")
    retry_after: int = Field(5, ge=1, description="seconds a 503 tells the client to wait (Retry-After)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest image (width x height, read from its "
                                  "header before decoding); a larger one is refused with 422")
    frames: int = Field(32, ge=1, description="frames sampled per video")
    explain: bool = Field(True, description="Grad-CAM heatmaps (torch models only)")
    max_explain: int = Field(8, ge=0, description="faces explained per upload, most likely fake first")

    def pool_size(self) -> int:
        """Worker threads: ``workers``, or the CPU cores this process may use."""
        import os

        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
