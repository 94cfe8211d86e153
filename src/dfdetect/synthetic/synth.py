"""The built-in data: a small Celeb-DF-v2-shaped dataset made from real face photos.

``make_synthetic_celebdf`` writes::

    Celeb-real/idX_NNNN.mp4          identity X's real videos
    YouTube-real/NNNNN.mp4           real videos with no identity label
    Celeb-synthesis/idX_idY_NNNN.mp4 X's real video NNNN with Y's face blended in
    List_of_testing_videos.txt       "1 YouTube-real/00003.mp4" (1 = real, 0 = fake): held-out identities
    synth_manifest.json              the settings, the photo behind each identity, and what each fake is

**How a video is made.** Each identity is a real photo, cropped to a head-and-shoulders layer
aligned on its face box (OpenCV Haar, found once per photo). A *scene* (seeded by the real
video's name) is a generated textured background that pans, plus a smooth path of the face
(translation, +/-5% scale, +/-4 degree rotation), a lighting gain and per-frame sensor noise.
Every frame composites the person over the background; the face box is ``face_size`` pixels
(160 by default) so Haar with minSize 128 and MTCNN find it.

**Fakes are genuine manipulations, made per frame in frame space.** A fake ``idX_idY_NNNN`` is
X's real video NNNN, frame by frame, with a source face blended in through a soft, deformed
face mask warped by that frame's face motion (so it follows the face), with a sub-pixel jitter
of the source per frame as generated faces have:

* face swap (Y != X): Y's face layer, aligned on the face box, Reinhard colour-matched to X's
  skin inside the mask, blended at full strength;
* self-blend (Y == X, as in SBI): X's own face after :func:`dfdetect.synthetic.sbi.pseudo_source` (colour
  jitter, down-scale or sharpen) and a small shift/scale, through an SBI-deformed mask at an SBI
  ratio from {0.5, 0.75, 1} (0.25 barely survives H.264 at this size). Only the source copy is
  altered here: altering the target would recolour the whole face layer, which in a video is not
  a local manipulation. No per-frame JPEG either; H.264 is the compression for every video.

**Nothing but the face tells real from fake.** Reals and fakes share one background generator,
one motion model, frame size, frame count, fps and the same H.264 settings (libx264, yuv420p,
``crf``, veryfast, mbtree off, one thread); each fake reuses the exact uncompressed frames of
the real video it was made from and is compressed once, like its real (no double-compression
trace), so a real/fake pair differs only inside the face mask. The blended face carries no
sensor noise of its own, like a generated face pasted into a camera frame; that is a
manipulation trace inside the face, not a shortcut outside it.

**Identities and their limits.** By default the photos are the real portraits that installed
packages ship: scikit-image's ``astronaut`` (Eileen Collins) and matplotlib's
``grace_hopper.jpg``. Two photos cannot make eight people: the remaining identities are
*derived* from them (mirrored, re-cropped, re-coloured), so several identities are the same
person and a swap between them changes less than a swap between two people (swap sources are
taken from the other photo whenever possible). This is a limitation of the built-in data,
recorded per identity in the manifest (``variant`` > 0).
``faces_dir`` (e.g. ``../shared/data/lfw-faces``, one photo per person) gives every identity
its own person, and YouTube-real clips people not used as identities while photos last.

The defaults (:class:`~dfdetect.config.SynthConfig`) make 52 videos of 20 frames at 288x288:
8 identities x 2 real, 4 YouTube-real and 32 fakes (16 swaps, 16 self-blends), 13 of them in
the test list (2 held-out identities and 1 YouTube clip); about 9 s of CPU.

Deterministic per seed: every video draws from a generator seeded by ``(seed, its name)``, so a
resumed run (valid videos are kept; each mp4 is written to a temp name and renamed) gives the
same files as a fresh one.

Why one file: the generator is one recipe (identities, faces, motion, blending, encoding, manifest) whose
parts mean nothing alone.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import av
import cv2
import numpy as np

from dfdetect._io import atomic_path, read_image, write_json
from dfdetect.config import SynthConfig
from dfdetect.data.labels import IMAGE_SUFFIXES, Label, LabelLine, write_label_file
from dfdetect.data.sources import CELEBDF_FAKE_DIR, CELEBDF_TEST_LIST
from dfdetect.errors import BadInputError, DfdetectError, NothingUsableError
from dfdetect.parallel import ProgressCallback
from dfdetect.preprocess.stage import JobResult, Stage, StageReport, check_stamp, run_stage
from dfdetect.synthetic.blend import alpha_blend, colour_transfer, ellipse_mask
from dfdetect.synthetic.sbi import BLEND_RATIOS, deform_mask, pseudo_source

__all__ = ["FacePhoto", "VideoSpec", "check_inputs", "default_face_photos", "face_photo_files",
           "load_face_photos", "make_synthetic_celebdf", "plan_videos"]

CELEB_REAL = "Celeb-real"
YOUTUBE_REAL = "YouTube-real"
MANIFEST = "synth_manifest.json"
LAYER_SCALE = 2.0  #: person layer side / face box side: head, hair and shoulders
FACE_Y = 0.42  #: face box centre height in the layer, as a fraction (more room below for the neck)
_HAAR = "haarcascade_frontalface_alt.xml"


# --------------------------------------------------------------------------- photos and identities


@dataclass(frozen=True)
class FacePhoto:
    """A real photo and the face box found in it once (x, y, w, h in pixels)."""

    name: str
    image: np.ndarray
    box: tuple[int, int, int, int]


def _haar() -> cv2.CascadeClassifier:
    casc = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / _HAAR))
    if casc.empty():  # pragma: no cover - opencv-python-headless<5 ships the cascades
        raise BadInputError("OpenCV Haar cascade not found; install opencv-python-headless<5", path=_HAAR)
    return casc


def _largest_face(image: np.ndarray, casc: cv2.CascadeClassifier) -> tuple[int, int, int, int] | None:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    side = max(24, int(min(grey.shape) * 0.15))
    boxes = casc.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    if len(boxes) == 0:
        return None
    x, y, w, h = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
    return int(x), int(y), int(w), int(h)


def default_face_photos() -> list[FacePhoto]:
    """The real portraits shipped by installed packages: skimage astronaut, matplotlib grace_hopper."""
    images: list[tuple[str, np.ndarray | None]] = []
    # Either package may lack its sample (trimmed installs); use whichever is there.
    with contextlib.suppress(ImportError, OSError):
        from skimage import data as skdata

        images.append(("skimage:astronaut", cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)))
    with contextlib.suppress(ImportError, OSError):
        from matplotlib import cbook

        images.append(("matplotlib:grace_hopper.jpg",
                       read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))))
    casc = _haar()
    photos = []
    for name, img in images:
        box = None if img is None else _largest_face(img, casc)
        if box is not None:
            photos.append(FacePhoto(name, img, box))
    if not photos:
        raise NothingUsableError("no face photo found in scikit-image or matplotlib; "
                                 "pass a folder of photos with --faces")
    return photos


def face_photo_files(faces_dir: str | Path) -> list[Path]:
    """The image files in ``faces_dir``, sorted; a missing or image-less folder is one clear error."""
    faces_dir = Path(faces_dir)
    if not faces_dir.is_dir():
        raise BadInputError("is a file, not a folder of face photos" if faces_dir.exists()
                            else "face photo folder not found", path=faces_dir)
    files = sorted(p for p in faces_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the face photo folder",
                            path=faces_dir)
    return files


def load_face_photos(faces_dir: str | Path, limit: int, seed: int = 0) -> tuple[list[FacePhoto], list[str]]:
    """Up to ``limit`` photos with a detectable face from ``faces_dir``, in a seeded order.

    Only as many files as needed are opened (LFW has 1,500). Returns the photos and one line per
    file skipped (unreadable, or no face found).
    """
    files = face_photo_files(faces_dir)
    order = np.random.default_rng([seed, 7]).permutation(len(files))
    casc = _haar()
    photos: list[FacePhoto] = []
    skipped: list[str] = []
    for i in order:
        if len(photos) >= limit:
            break
        path = files[int(i)]
        img = read_image(path)
        if img is None:
            skipped.append(f"{path}: cannot read image")
            continue
        box = _largest_face(img, casc)
        if box is None:
            skipped.append(f"{path}: no face found (Haar)")
            continue
        photos.append(FacePhoto(path.name, img, box))
    if not photos:
        raise NothingUsableError(f"none of {len(files)} images has a detectable face", path=faces_dir)
    return photos, skipped


@dataclass(frozen=True)
class _Person:
    """A head-and-shoulders layer aligned on the face box, and its soft alpha."""

    name: str
    photo: str
    variant: int  #: 0 = the photo as it is; > 0 = derived by mirror / crop / colour from the same photo
    layer: np.ndarray  #: (P, P, 3) uint8
    alpha: np.ndarray  #: (P, P) float32


def _person(name: str, photo: FacePhoto, variant: int, face_size: int, seed: int) -> _Person:
    p = round(face_size * LAYER_SCALE)
    x, y, w, h = photo.box
    cx, cy, side = x + w / 2.0, y + h / 2.0, float(max(w, h))
    img = photo.image
    if variant:
        # A derived identity: same person, changed enough that the two are not the same pixels.
        rng = np.random.default_rng([seed, 11, variant, zlib.crc32(photo.name.encode())])
        if variant % 2 == 1:
            img = img[:, ::-1].copy()
            cx = img.shape[1] - cx
        cx += rng.uniform(-0.04, 0.04) * side
        cy += rng.uniform(-0.04, 0.04) * side
        side *= rng.uniform(0.92, 1.08)
    s = face_size / side
    m = np.float32([[s, 0, p / 2.0 - s * cx], [0, s, FACE_Y * p - s * cy]])
    layer = cv2.warpAffine(img, m, (p, p), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if variant:
        hsv = cv2.cvtColor(layer, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-10, 10)) % 180
        hsv[..., 1] *= rng.uniform(0.75, 1.25)
        hsv[..., 2] = 255.0 * (hsv[..., 2] / 255.0) ** rng.uniform(0.8, 1.25)
        layer = cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    alpha = ellipse_mask((p, p), (p / 2.0, 0.62 * p), (0.4 * p, 0.6 * p))
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.02 * p)
    return _Person(name, photo.name, variant, layer, alpha)


def _people(photos: Sequence[FacePhoto], names: Sequence[str], face_size: int, seed: int) -> list[_Person]:
    """One person per name, cycling through the photos; a photo's second use is a derived variant."""
    k = len(photos)
    return [_person(name, photos[i % k], i // k, face_size, seed) for i, name in enumerate(names)]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class VideoSpec:
    """One video to write: who is in it, and for a fake, what was blended in."""

    rel: str  #: path under the dataset root
    kind: str  #: "real", "swap" or "self_blend"
    person: str  #: identity (or YouTube person) whose video it is
    scene: str  #: ``rel`` of the real video whose scene it uses (itself for reals)
    source: str | None = None  #: identity whose face is blended in (fakes)
    is_test: bool = False

    @property
    def label(self) -> Label:
        return Label.REAL if self.kind == "real" else Label.FAKE


def _ident(i: int) -> str:
    return f"id{i}"


def plan_videos(cfg: SynthConfig, n_photos: int | None = None) -> list[VideoSpec]:
    """Every video the config asks for; depends only on the config and the number of photos.

    Test identities (``test_fraction``) are held out whole: their real videos and every fake
    made on them. Swap sources are people from another photo where possible (identity ``i``
    uses photo ``i % n_photos``), then from the same side of the split.
    Each real video has at most one self-blend (``idX_idX_NNNN``), so names never collide.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.identities
    n_test = min(n - 1, max(1, round(n * cfg.test_fraction)))
    test_ids = {int(i) for i in rng.permutation(n)[:n_test]}
    specs: list[VideoSpec] = []
    for x in range(n):
        for v in range(cfg.videos_per_identity):
            specs.append(VideoSpec(f"{CELEB_REAL}/id{x}_{v:04d}.mp4", "real", _ident(x),
                                   f"{CELEB_REAL}/id{x}_{v:04d}.mp4", is_test=x in test_ids))
    for k in range(cfg.youtube_videos):
        rel = f"{YOUTUBE_REAL}/{k:05d}.mp4"
        specs.append(VideoSpec(rel, "real", f"yt{k:05d}", rel))
    n_yt_test = max(1, round(cfg.youtube_videos * cfg.test_fraction)) if cfg.youtube_videos else 0
    yt_test = {int(k) for k in rng.permutation(cfg.youtube_videos)[:n_yt_test]}
    specs = [s if not s.rel.startswith(YOUTUBE_REAL) or int(Path(s.rel).stem) not in yt_test
             else VideoSpec(s.rel, s.kind, s.person, s.scene, None, True) for s in specs]

    f, vpi = cfg.fakes_per_identity, cfg.videos_per_identity
    n_sbi = min(vpi, round(f * cfg.sbi_fraction))
    for x in range(n):
        # Swap sources: another photo first (a derived variant of X's own photo is the same
        # person), then the same side of the test split; seeded order within each rank.
        def rank(y: int, x: int = x) -> tuple[bool, bool]:
            same_photo = n_photos is not None and y % n_photos == x % n_photos
            return same_photo, (y in test_ids) != (x in test_ids)

        pool = sorted((int(y) for y in rng.permutation(n) if y != x), key=rank)
        used: set[tuple[int, int]] = set()
        for j in range(f):
            v = j % vpi
            scene = f"{CELEB_REAL}/id{x}_{v:04d}.mp4"
            if j >= f - n_sbi:  # the last n_sbi fakes fall on distinct videos, so idX_idX_v is unique
                y, kind = x, "self_blend"
            else:
                y = next((y for y in pool if (y, v) not in used), -1)
                if y < 0:  # more swaps than distinct names allow; stop rather than collide
                    break
                kind = "swap"
            used.add((y, v))
            specs.append(VideoSpec(f"{CELEBDF_FAKE_DIR}/id{x}_id{y}_{v:04d}.mp4", kind, _ident(x), scene,
                                   _ident(y), is_test=x in test_ids))
    return specs


# --------------------------------------------------------------------------- scenes and rendering


def _rng(cfg: SynthConfig, *key: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *(zlib.crc32(k.encode()) for k in key)])


@dataclass(frozen=True)
class _Scene:
    background: np.ndarray  #: (S + 2 * pan, S + 2 * pan, 3) float32 texture
    pan: np.ndarray  #: (T, 2) background offsets per frame
    affines: np.ndarray  #: (T, 2, 3) person layer -> frame, per frame
    gain: np.ndarray  #: (T,) lighting gain per frame
    noise_seed: int


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A room-like texture: smooth colour field, a few soft shapes, fabric grain; out of focus."""
    def muted(c: np.ndarray) -> np.ndarray:  # rooms are mostly greys and pastels, not pure hues
        return c.mean(-1, keepdims=True) + (c - c.mean(-1, keepdims=True)) * rng.uniform(0.3, 0.7)

    field = cv2.resize(muted(rng.uniform(30, 220, (4, 4, 3))).astype(np.float32), (side, side),
                       interpolation=cv2.INTER_CUBIC)
    img = field.copy()
    for _ in range(int(rng.integers(4, 9))):
        colour = tuple(float(c) for c in muted(rng.uniform(0, 255, 3)))
        overlay = img.copy()
        a, b = (int(v) for v in rng.integers(0, side, 2)), (int(v) for v in rng.integers(0, side, 2))
        shape = rng.integers(3)
        if shape == 0:
            cv2.rectangle(overlay, tuple(a), tuple(b), colour, -1)
        elif shape == 1:
            cv2.circle(overlay, tuple(a), int(rng.integers(side // 20, side // 5)), colour, -1, cv2.LINE_AA)
        else:
            cv2.line(overlay, tuple(a), tuple(b), colour, int(rng.integers(2, 10)), cv2.LINE_AA)
        w = float(rng.uniform(0.4, 0.9))
        img = cv2.addWeighted(overlay, w, img, 1 - w, 0)
    grain = cv2.resize(rng.normal(0, 1, (side // 3, side // 3)).astype(np.float32), (side, side),
                       interpolation=cv2.INTER_LINEAR)
    img += grain[..., None] * float(rng.uniform(4, 14))
    return cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.8, 2.0))).clip(0, 255)


def _scene(cfg: SynthConfig, rel: str) -> _Scene:
    rng = _rng(cfg, "scene", rel)
    size, t_n = cfg.frame_size, cfg.frames
    pan = max(8, size // 12)
    t = np.linspace(0.0, 1.0, t_n)

    def wave(amp: float) -> np.ndarray:  # one smooth path: random frequency and phase per video
        return amp * np.sin(2 * np.pi * (rng.uniform(0.3, 0.9) * t + rng.uniform(0, 1)))

    pans = np.stack([pan + wave(pan), pan + wave(pan)], 1)
    p = round(cfg.face_size * LAYER_SCALE)
    # Keep the whole face box in frame at the largest scale.
    room = max(0.0, size / 2.0 - cfg.face_size * 1.05 / 2.0 - 4)
    cx = size / 2.0 + rng.uniform(-0.3, 0.3) * room + wave(0.5 * room)
    cy = size / 2.0 + rng.uniform(-0.2, 0.2) * room + wave(0.4 * room)
    cx, cy = np.clip(cx, size / 2 - room, size / 2 + room), np.clip(cy, size / 2 - room, size / 2 + room)
    scale = 1.0 + wave(0.05) * 0.9 + rng.uniform(-0.02, 0.02)
    angle = wave(4.0)
    affines = np.empty((t_n, 2, 3), np.float64)
    for i in range(t_n):
        m = cv2.getRotationMatrix2D((p / 2.0, FACE_Y * p), float(angle[i]), float(scale[i]))
        m[:, 2] += (cx[i] - p / 2.0, cy[i] - FACE_Y * p)
        affines[i] = m
    gain = rng.uniform(0.85, 1.15) * (1.0 + rng.uniform(-0.015, 0.015, t_n))
    return _Scene(_background(rng, size + 2 * pan), pans, affines, gain, int(rng.integers(2**31)))


def _warp(img: np.ndarray, m: np.ndarray, size: int, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


def _render_real(scene: _Scene, person: _Person, size: int) -> list[np.ndarray]:
    """Composite the person over the panning background; lighting gain and sensor noise on top."""
    noise_rng = np.random.default_rng(scene.noise_seed)
    frames = []
    for i, m in enumerate(scene.affines):
        ox, oy = (round(float(v)) for v in scene.pan[i])
        bg = scene.background[oy:oy + size, ox:ox + size]
        layer = _warp(person.layer, m, size, cv2.BORDER_REPLICATE).astype(np.float32)
        a = _warp(person.alpha, m, size)[..., None]
        img = (bg * (1 - a) + layer * a) * scene.gain[i]
        img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(2.0)
        frames.append(np.rint(img).clip(0, 255).astype(np.uint8))
    return frames


def _face_mask(cfg: SynthConfig) -> np.ndarray:
    """Hard inner-face ellipse (brows to chin) in layer coordinates."""
    p, f = round(cfg.face_size * LAYER_SCALE), cfg.face_size
    return ellipse_mask((p, p), (p / 2.0, FACE_Y * p + 0.06 * f), (0.36 * f, 0.46 * f))


def _manipulate(cfg: SynthConfig, spec: VideoSpec, real: list[np.ndarray], scene: _Scene,
                target: _Person, source: _Person) -> list[np.ndarray]:
    """Blend a source face into each real frame through a soft mask that follows the face."""
    rng = _rng(cfg, "fake", spec.rel)
    p = target.layer.shape[0]
    hard = _face_mask(cfg)
    if spec.kind == "swap":
        src = colour_transfer(source.layer, target.layer, hard)
        ratio = 1.0
    else:  # self-blend: SBI's source transform and small affine on X's own face
        src = pseudo_source(target.layer, rng)
        m = cv2.getRotationMatrix2D((p / 2.0, FACE_Y * p), 0.0, 1.0 + rng.uniform(-0.04, 0.04))
        m[:, 2] += rng.uniform(-0.02, 0.02, 2) * cfg.face_size
        src = cv2.warpAffine(src, m, (p, p), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        hard = cv2.warpAffine(hard, m, (p, p), flags=cv2.INTER_LINEAR)
        ratio = float(rng.choice(BLEND_RATIOS[1:]))  # 0.25 is too faint to survive H.264 at this size
    mask = deform_mask(hard, rng) * ratio
    size = cfg.frame_size
    out = []
    for i, m in enumerate(scene.affines):
        jitter = m.copy()
        jitter[:, 2] += rng.uniform(-0.5, 0.5, 2)  # generated faces wobble a little frame to frame
        face = np.rint(_warp(src, jitter, size, cv2.BORDER_REPLICATE).astype(np.float32) * scene.gain[i])
        out.append(alpha_blend(real[i], face.clip(0, 255).astype(np.uint8), _warp(mask, m, size)))
    return out


# --------------------------------------------------------------------------- video files


def _write_mp4(dest: Path, frames: Sequence[np.ndarray], cfg: SynthConfig) -> None:
    """H.264 (libx264, yuv420p) with the same settings for every video, written atomically."""
    with atomic_path(dest, suffix=".mp4") as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.width = stream.height = cfg.frame_size
        stream.pix_fmt = "yuv420p"
        # mbtree off: with it, the first encode in a process varied run to run (measured, threads=1
        # too), which broke "same seed, same videos". One thread keeps it simple on shared CPUs.
        stream.options = {"crf": str(cfg.crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _is_valid_video(path: Path, frames: int) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames not in (0, frames):
                return False
            return next(container.decode(stream), None) is not None
    except (av.FFmpegError, IndexError, OSError):
        return False


# --------------------------------------------------------------------------- the dataset


def _manifest_key(cfg: SynthConfig, faces_dir: str | Path | None) -> dict:
    return {"config": cfg.model_dump(mode="json"),
            "faces_dir": None if faces_dir is None else str(Path(faces_dir).resolve())}


def check_inputs(out_dir: str | Path, cfg: SynthConfig, faces_dir: str | Path | None = None) -> None:
    """Fail fast, before any work: a bad ``faces_dir``, or an ``out_dir`` made with other settings.

    Resuming into a folder made with another seed or size would mix two datasets, so that is
    refused rather than silently overwritten.
    """
    if faces_dir is not None:
        face_photo_files(faces_dir)
    check_stamp(out_dir, SynthStage.name, _manifest_key(cfg, faces_dir))


@dataclass(frozen=True)
class SynthJob:
    """A real video's scene and every video made from it: the real frames are rendered once for all."""

    scene: str
    specs: tuple[VideoSpec, ...]


@dataclass
class SynthStage(Stage[SynthJob]):
    """The videos of :func:`plan_videos`, then the test list and the manifest."""

    name: ClassVar[str] = "synth"
    out_dir: Path
    cfg: SynthConfig
    faces_dir: Path | None
    photos: list[FacePhoto]
    skipped_photos: list[str]

    def settings(self) -> dict:
        return _manifest_key(self.cfg, self.faces_dir)

    def inputs(self) -> list[Path]:
        return [] if self.faces_dir is None else [self.faces_dir]

    def plan(self) -> list[SynthJob]:
        by_scene: dict[str, list[VideoSpec]] = {}
        for spec in sorted(self.specs, key=lambda s: s.scene):  # stable: the real video first
            by_scene.setdefault(spec.scene, []).append(spec)
        return [SynthJob(scene, tuple(specs)) for scene, specs in by_scene.items()]

    @cached_property
    def specs(self) -> list[VideoSpec]:
        return plan_videos(self.cfg, len(self.photos))

    @cached_property
    def people(self) -> dict[str, _Person]:
        # Identities first, then YouTube people: with a photo folder they are different people.
        cfg = self.cfg
        names = [_ident(i) for i in range(cfg.identities)] + [f"yt{k:05d}" for k in range(cfg.youtube_videos)]
        return {p.name: p for p in _people(self.photos, names, cfg.face_size, cfg.seed)}

    def source(self, job: SynthJob) -> Path:
        return self.out_dir / job.scene

    def weight(self, job: SynthJob) -> int:
        return len(job.specs)

    def run_job(self, job: SynthJob) -> JobResult:
        result = JobResult()
        todo = [s for s in job.specs if not _is_valid_video(self.out_dir / s.rel, self.cfg.frames)]
        result.reused = len(job.specs) - len(todo)
        if not todo:
            return result
        people = self.people
        scene = _scene(self.cfg, job.scene)
        real = _render_real(scene, people[todo[0].person], self.cfg.frame_size)  # fakes follow their real's frames
        for spec in todo:
            frames = real if spec.kind == "real" else _manipulate(
                self.cfg, spec, real, scene, people[spec.person], people[spec.source or spec.person])
            _write_mp4(self.out_dir / spec.rel, frames, self.cfg)
            result.written += 1
        return result

    def finish(self, report: StageReport, jobs: list[SynthJob], results: list[JobResult]) -> None:
        if report.failed:  # a dataset with holes is no dataset: no test list or manifest that would vouch for it
            return
        specs = self.specs  # plan order, as the test list always had it
        for folder in (CELEB_REAL, YOUTUBE_REAL, CELEBDF_FAKE_DIR):  # the Celeb-DF layout, empty folders included
            (self.out_dir / folder).mkdir(parents=True, exist_ok=True)
        write_label_file(self.out_dir / CELEBDF_TEST_LIST, [LabelLine(s.label, s.rel) for s in specs if s.is_test])
        write_json(self.out_dir / MANIFEST, {
            **self.settings(),
            "photos": [p.name for p in self.photos],
            "identities": {n: {"photo": p.photo, "variant": p.variant} for n, p in self.people.items()},
            "videos": [{"rel": s.rel, "kind": s.kind, "target": s.person, "source": s.source, "test": s.is_test}
                       for s in specs],
            "reused": report.reused,
            "skipped_photos": self.skipped_photos,
        })


def make_synthetic_celebdf(out_dir: str | Path, cfg: SynthConfig | None = None, *,
                           faces_dir: str | Path | None = None,
                           progress: ProgressCallback | None = None) -> Path:
    """Write the built-in Celeb-DF-v2-shaped dataset to ``out_dir`` and return it.

    Parameters
    ----------
    out_dir : path
        Created if needed. A rerun with the same settings keeps every valid video.
    cfg : SynthConfig, default=SynthConfig()
        Sizes, counts, seed; ``len(plan_videos(cfg))`` videos are written.
    faces_dir : path, default=None
        A folder of face photos, one person each; None uses the photos shipped by installed
        packages (see the module docstring for what that limits).
    progress : callable, default=None
        ``progress(n)`` after each real video and the fakes made from it (``n`` videos).

    Raises
    ------
    BadInputError
        ``faces_dir`` is missing or has no images, or ``out_dir`` holds a dataset made with
        other settings.
    NothingUsableError
        No photo has a detectable face.
    """
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    check_inputs(out, cfg, faces_dir)
    skipped: list[str] = []
    if faces_dir is None:
        photos = default_face_photos()
    else:
        photos, skipped = load_face_photos(faces_dir, cfg.identities + cfg.youtube_videos, cfg.seed)
    stage = SynthStage(out, cfg, None if faces_dir is None else Path(faces_dir), photos, skipped)
    report = run_stage(stage, progress=progress)
    if report.failed:
        raise DfdetectError(f"{len(report.failed)} of {len(stage.specs)} videos could not be written; first: "
                            f"{report.failed[0]}", path=out)
    return out
