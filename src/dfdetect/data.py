"""Face crops as a table, leakage-free splits, and the torch Datasets that read them.

A :class:`CropTable` is one row per face crop: its path, label (1 = fake), video and the groups
(identities / source videos) it shows. :func:`split_table` keeps the official test list apart
and, for ``split='group'``, never lets a group or a video sit on both sides of train/val.
Preprocessing is derived from the backbone's data config (mean/std), never hard-coded, and is
shared by training (:class:`CropDataset`) and inference (:func:`preprocess_crops`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from dfdetect._io import atomic_path, load_cached, read_image
from dfdetect.config import TrainConfig
from dfdetect.datasets import Dataset, contained_rel, parse_celebdf_name
from dfdetect.errors import NothingUsableError
from dfdetect.labels import IMAGE_SUFFIXES, Label, read_label_file
from dfdetect.stage import ProgressCallback

__all__ = [
    "CropDataset",
    "CropTable",
    "DecodedCrops",
    "PairDataset",
    "augment_crop",
    "balanced_sampler",
    "build_crop_table",
    "decode_crops",
    "group_components",
    "load_label_table",
    "pos_weight",
    "preprocess_crops",
    "resize_bgr",
    "resize_rgb",
    "split_table",
]


# --------------------------------------------------------------------------- the table


@dataclass
class CropTable:
    """One row per face crop. ``labels`` use the internal convention, 1 = fake."""

    paths: list[Path]
    labels: np.ndarray  #: int64, shape (n,)
    videos: list[str]  #: crops of one video share it; scores are aggregated by it
    groups: list[tuple[str, ...]]  #: identities / source videos; group splits keep each on one side
    is_test: np.ndarray  #: bool, shape (n,): in the dataset's official test list
    skipped: list[str] = field(default_factory=list)  #: one line per item that gave no crop
    notes: list[str] = field(default_factory=list)  #: e.g. rows dropped to keep identities apart

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.is_test = np.asarray(self.is_test, dtype=bool).reshape(-1)
        n = len(self.paths)
        if not (self.labels.size == len(self.videos) == len(self.groups) == self.is_test.size == n):
            raise ValueError(f"CropTable columns differ in length: {n} paths, {self.labels.size} labels, "
                             f"{len(self.videos)} videos, {len(self.groups)} groups, {self.is_test.size} is_test")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int] | np.ndarray) -> CropTable:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return CropTable([self.paths[i] for i in idx], self.labels[idx], [self.videos[i] for i in idx],
                         [self.groups[i] for i in idx], self.is_test[idx])

    @classmethod
    def concat(cls, *tables: CropTable) -> CropTable:
        """The rows of ``tables`` one after the other (notes and skipped lines are not carried)."""
        return cls([p for t in tables for p in t.paths], np.concatenate([t.labels for t in tables]),
                   [v for t in tables for v in t.videos], [g for t in tables for g in t.groups],
                   np.concatenate([t.is_test for t in tables]))

    def counts(self) -> dict[str, int]:
        fake = int(self.labels.sum())
        return {"crops": len(self), "real": len(self) - fake, "fake": fake, "videos": len(set(self.videos)),
                "test": int(self.is_test.sum())}

    def fingerprint(self) -> str:
        """Hash of paths, labels, sizes and mtimes: a feature cache is valid only for the same files."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels.tolist(), strict=True):
            try:
                st = p.stat()
                h.update(f"{p}\0{y}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0{y}\0missing\n".encode())
        return h.hexdigest()


def _even_pick(files: list[Path], k: int | None) -> list[Path]:
    if k is None or len(files) <= k:
        return files
    idx = np.unique(np.linspace(0, len(files) - 1, k).round().astype(int))
    return [files[i] for i in idx]


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    # Hidden files are never crops: a killed run can leave an atomic write's ".00003.png.x1y2.png" behind.
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _once_each(paths: Sequence[Path], labels: Sequence[int], where: str) -> tuple[list[int], list[str]]:
    """Indices that keep each file once, and one line per file listed more than once.

    A file listed twice with one label is used once; one labelled both real and fake is left out, since
    either label would be a guess (and both would teach the model to contradict itself).
    """
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        rows.setdefault(os.path.abspath(p), []).append(i)
    keep: list[int] = []
    lines: list[str] = []
    for idx in rows.values():
        if len(idx) > 1 and len({labels[i] for i in idx}) > 1:
            lines.append(f"{paths[idx[0]]}: labelled both real and fake in {where}; left out")
            continue
        if len(idx) > 1:
            lines.append(f"{paths[idx[0]]}: listed {len(idx)} times in {where}; used once")
        keep.append(idx[0])
    return sorted(keep), lines


def build_crop_table(dataset: Dataset, crops_dir: str | Path | None, *,
                     frames_per_video: int | None = None) -> CropTable:
    """Join each item of ``dataset`` to its face crops.

    Crops are looked up at ``crops_dir/<video_id>/*.png|jpg`` (what the faces stage writes) or, for an
    image item, at ``crops_dir/<rel>`` (a mirrored copy, e.g. an SRM-filtered folder). Without
    ``crops_dir`` an image item is its own crop. ``frames_per_video`` keeps that many evenly spaced
    crops per video. Items without crops are listed in ``skipped``, never silently dropped.
    """
    crops = Path(crops_dir) if crops_dir is not None else None
    paths: list[Path] = []
    labels: list[int] = []
    videos: list[str] = []
    groups: list[tuple[str, ...]] = []
    is_test: list[bool] = []
    skipped = list(dataset.skipped)
    keep, repeated = _once_each([it.path for it in dataset.items], [int(it.label) for it in dataset.items],
                                "the dataset")
    skipped += repeated
    for item in (dataset.items[i] for i in keep):
        if crops is None:
            found = [] if item.is_video else [item.path]
            why = "a video needs --crops (run frames and faces first)"
        else:
            found = _images_in(crops / item.video_id)
            if not found and not item.is_video:
                # A mirrored copy may change the suffix (the SRM stage writes PNG for JPEG crops).
                # A twin's copy is named <stem>_<ext>.png (face.jpg beside face.png; see srm.srm_names).
                mirrored = crops / item.rel
                twin = mirrored.with_name(f"{mirrored.stem}_{mirrored.suffix.lstrip('.').lower()}.png")
                found = [c for c in (mirrored, twin, *(mirrored.with_suffix(s) for s in sorted(IMAGE_SUFFIXES)))
                         if c.is_file()][:1]
            why = f"no face crops in {crops / item.video_id}"
        if not found:
            skipped.append(f"{item.path}: {why}")
            continue
        for p in _even_pick(found, frames_per_video):
            paths.append(p)
            labels.append(int(item.label))
            videos.append(item.video_id)
            groups.append(item.groups)
            is_test.append(item.is_test)
    if not paths:
        where = crops if crops is not None else dataset.root
        raise NothingUsableError(f"no face crops for any of the {len(dataset)} items", path=where)
    return CropTable(paths, np.array(labels), videos, groups, np.array(is_test), skipped=skipped)


def _groups_of_video(video: str) -> tuple[str, ...]:
    try:
        return parse_celebdf_name(Path(video).name).identities
    except ValueError:
        return (video,)


def load_label_table(label_file: str | Path, root: str | Path, *, is_test: bool = False) -> CropTable:
    """Read a seed ``{value} {path}`` file (1 = real) of crops relative to ``root``.

    A crop ``Celeb-real/id0_0000/00000.png`` belongs to video ``Celeb-real/id0_0000``; a two-part
    path (``real/x.jpg``) is its own video. Celeb-DF names give identity groups.
    """
    root = Path(root)
    lines, bad = read_label_file(label_file)
    paths, labels, videos, groups = [], [], [], []
    skipped = list(bad)
    for line in lines:
        try:  # a line that is absolute or climbs with ../ would read outside the root
            rel_s = contained_rel(root, line.path)
        except ValueError as exc:
            skipped.append(f"{label_file}: {exc}; skipped")
            continue
        p = root / rel_s
        if not p.is_file():
            skipped.append(f"{p}: listed in {Path(label_file).name} but not found")
            continue
        rel = Path(rel_s)
        video = rel.parent.as_posix() if len(rel.parts) >= 3 else rel.with_suffix("").as_posix()
        paths.append(p)
        labels.append(int(line.label))
        videos.append(video)
        groups.append(_groups_of_video(video))
    keep, repeated = _once_each(paths, labels, Path(label_file).name)
    skipped += repeated
    paths, labels, videos, groups = ([col[i] for i in keep] for col in (paths, labels, videos, groups))
    if not paths:
        raise NothingUsableError(f"no usable crops listed ({len(skipped)} lines skipped)", path=label_file)
    return CropTable(paths, np.array(labels), videos, groups, np.full(len(paths), is_test), skipped=skipped)


# --------------------------------------------------------------------------- splits


class _UnionFind:
    """Disjoint sets over hashable keys (path halving).

    Why not scipy's ``connected_components``: it finds the same components (tests check it) but numbers them
    otherwise, and the numbers order StratifiedGroupKFold's shuffle, so the same seed would give other splits
    (docs/QUALITY.md#measurements).
    """

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def group_components(videos: Sequence[str], groups: Sequence[tuple[str, ...]]) -> np.ndarray:
    """Connected component id per row, joining rows that share a video or any group.

    A Celeb-DF fake ``idX_idY`` joins identities X and Y, so a component is a set of people no
    split may cut.
    """
    uf = _UnionFind()
    for v, gs in zip(videos, groups, strict=True):
        for g in gs:
            uf.union(("v", v), ("g", g))
        uf.find(("v", v))
    roots = [uf.find(("v", v)) for v in videos]
    _, comp = np.unique(np.array([repr(r) for r in roots]), return_inverse=True)
    return comp.astype(np.int64)


def _random_split(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(y.size)
    n_val = int(np.ceil(frac * y.size))  # what train_test_split takes; stratifying needs a row of each class
    n_cls = np.unique(y).size
    strat = y if np.bincount(y, minlength=2).min() >= 2 and min(n_val, y.size - n_val) >= n_cls else None
    tr, va = train_test_split(idx, test_size=frac, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)


def _component_split(y: np.ndarray, comp: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified group split: the first fold of StratifiedGroupKFold with about 1/frac folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    # sklearn refuses more folds than the larger class has rows: a tiny set gets fewer, larger folds.
    n_splits = max(2, min(round(1 / frac), int(np.bincount(y).max())))
    skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    tr, va = next(skf.split(np.zeros(y.size), y, groups=comp))
    return np.sort(tr), np.sort(va)


def _identity_split(y: np.ndarray, videos: Sequence[str], groups: Sequence[tuple[str, ...]], frac: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """When the identity graph is one blob, split *identities* and drop rows that would straddle."""
    rng = np.random.default_rng(seed)
    keys = sorted({g for gs in groups for g in gs})
    order = rng.permutation(len(keys))
    val_ids: set[str] = set()
    target = frac * y.size
    in_val = np.zeros(y.size, dtype=bool)
    for k in order:
        val_ids.add(keys[k])
        in_val = np.array([all(g in val_ids for g in gs) for gs in groups])
        if in_val.sum() >= target:
            break
    in_train = np.array([not any(g in val_ids for g in gs) for gs in groups])
    return np.flatnonzero(in_train), np.flatnonzero(in_val), int((~in_train & ~in_val).sum())


def split_table(table: CropTable, cfg: TrainConfig) -> tuple[CropTable, CropTable, CropTable]:
    """``(train, val, test)``: official test rows always go to test; the rest is split by ``cfg.split``.

    ``random`` is the seed's seeded, stratified 85/15 over rows. ``group`` keeps every connected set
    of groups (identities joined by two-identity fakes, and all frames of a video) on one side; if
    the graph is one component, identities are split and fakes that would straddle are dropped (noted).
    """
    test_idx = np.flatnonzero(table.is_test)
    pool = np.flatnonzero(~table.is_test)
    if pool.size < 2:
        raise NothingUsableError(f"only {pool.size} non-test crops: nothing to train and validate on")
    y = table.labels[pool]
    vids = [table.videos[i] for i in pool]
    grps = [table.groups[i] for i in pool]
    notes: list[str] = []
    if cfg.split == "random":
        tr, va = _random_split(y, cfg.val_fraction, cfg.seed)
    else:
        comp = group_components(vids, grps)
        n_comp = int(comp.max()) + 1
        if n_comp >= max(2, round(1 / cfg.val_fraction)):
            tr, va = _component_split(y, comp, cfg.val_fraction, cfg.seed)
        else:
            tr, va, dropped = _identity_split(y, vids, grps, cfg.val_fraction, cfg.seed)
            notes.append(f"group split: the identity graph has {n_comp} component(s); split identities and "
                         f"dropped {dropped} crops whose identities fall on both sides")
        if tr.size == 0 or va.size == 0:
            raise NothingUsableError(f"group split left {tr.size} train and {va.size} validation crops; "
                                     "need more distinct groups (or use split='random')")
    train, val = table.subset(pool[tr]), table.subset(pool[va])
    train.notes, train.skipped = notes, list(table.skipped)
    return train, val, table.subset(test_idx)


# --------------------------------------------------------------------------- preprocessing


def resize_bgr(crop_bgr: np.ndarray, size: int) -> np.ndarray:
    """Any crop (BGR, BGRA or grey) -> ``size x size`` BGR uint8 (area when shrinking, linear when growing)."""
    if crop_bgr.ndim == 2:
        crop_bgr = cv2.cvtColor(crop_bgr, cv2.COLOR_GRAY2BGR)
    crop_bgr = crop_bgr[..., :3]
    h, w = crop_bgr.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(crop_bgr)
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(crop_bgr, (size, size), interpolation=interp)


def resize_rgb(crop_bgr: np.ndarray, size: int) -> np.ndarray:
    """BGR crop of any size -> ``size x size`` RGB uint8: the one resize training and inference share."""
    return cv2.cvtColor(resize_bgr(crop_bgr, size), cv2.COLOR_BGR2RGB)


def _normalise(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> float32 normalised with the backbone's mean/std."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x_uint8.float().div_(255.0) - m) / s


def preprocess_crops(crops_bgr: Sequence[np.ndarray], data_config: dict[str, Any], input_size: int) -> torch.Tensor:
    """BGR uint8 crops -> ``(N, 3, S, S)`` float tensor, channels_last; the inference transform."""
    if len(crops_bgr) == 0:
        return torch.empty((0, 3, input_size, input_size)).contiguous(memory_format=torch.channels_last)
    batch = np.stack([resize_rgb(np.asarray(c), input_size) for c in crops_bgr])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return _normalise(x, data_config["mean"], data_config["std"]).contiguous(memory_format=torch.channels_last)


def augment_crop(rgb: np.ndarray, rng: np.random.Generator, *, erase: float = 0.0, launder: bool = False) -> np.ndarray:
    """Full-mode augmentation of one RGB uint8 crop (never changed in place): what a re-uploaded video goes
    through.

    Colour (saturation, contrast, brightness; p 0.8), Gaussian blur (sigma 0.3-1.5; p 0.2), JPEG at
    quality 40-100 (p 0.5), horizontal flip (p 0.5): the recipe bench/quality.py measured. With
    ``erase`` > 0, random erasing (Zhong et al. 2020) with that probability, last: it hides one region so
    the model cannot lean on a single artefact. With ``launder``, what re-sharing does before the JPEG
    step: a down- and re-upscale (0.25-0.8x; p 0.3) and Gaussian sensor noise (sigma 2-8; p 0.2), with JPEG
    from quality 30, so the score cannot hang on detail that one re-upload removes.
    Why OpenCV rather than torchvision.transforms.v2: these are the exact ops the recipe was measured
    with, they are cheap on small uint8 arrays, and every draw comes from ``rng``, so a batch is the same
    with or without DataLoader workers.
    """
    img = rgb
    if rng.random() < 0.8:  # saturation, contrast and brightness in one uint8 pass
        sat, con, bri = rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        img = cv2.addWeighted(img, sat * con * bri, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB),
                              (1 - sat) * con * bri, float(gray.mean()) * (1 - con) * bri)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    if launder:
        img = _launder(img, rng)
    if rng.random() < 0.5:
        q_low = 30 if launder else 40
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(q_low, 101))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    if erase and rng.random() < erase:
        img = _erase(img, rng)
    return img


def _launder(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A re-upload's resize and sensor noise (see :func:`augment_crop`)."""
    h, w = img.shape[:2]
    if rng.random() < 0.3:
        f = rng.uniform(0.25, 0.8)
        small = cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.2:
        noise = rng.normal(0.0, rng.uniform(2.0, 8.0), img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img


def _erase(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``img`` with one random-erasing rectangle filled with uniform noise (a copy: ``img`` may be
    the caller's array or a read-only cache row). By hand because timm's RandomErasing draws from Python's
    global ``random``; this one draws from ``rng``, so a batch stays the same with or without workers."""
    img = img.copy()
    h, w = img.shape[:2]
    for _ in range(10):  # timm's attempts: resample until the rectangle fits
        area = h * w * rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            img[y:y + eh, x:x + ew] = rng.integers(0, 256, (eh, ew, img.shape[2]), dtype=np.uint8)
            break
    return img


# --------------------------------------------------------------------------- decoded crops


DECODED_SUFFIX = ".crops.npy"


@dataclass
class DecodedCrops:
    """Every crop of a table decoded and resized once: ``images`` (n, S, S, 3) BGR uint8, ``ok`` (n,) bool."""

    images: np.ndarray
    ok: np.ndarray


def decode_crops(table: CropTable, size: int, cache_dir: str | Path, *,
                 progress: ProgressCallback | None = None) -> DecodedCrops:
    """Decode and resize every crop once into a disk-backed array that training reads each epoch.

    Why: a fine-tune reads each crop 20+ times; decoding PNG/JPEG and resizing every time cost about
    4 ms per crop here, against microseconds from a memory-mapped array. The array is written to a
    temporary ``.npy`` and renamed into place when complete, keyed by the files' fingerprint and the
    size, so a killed run rebuilds it and a changed file list never reads a stale one. Memory stays
    flat: rows are appended to the file one by one.
    """
    cache_dir = Path(cache_dir)
    key = hashlib.sha256(f"{table.fingerprint()}\0{size}\0v1".encode()).hexdigest()[:20]
    path, ok_path = cache_dir / f"{key}{DECODED_SUFFIX}", cache_dir / f"{key}.ok.npy"
    n = len(table)
    hit = load_cached(path, ok_path)
    if hit is not None and hit[0].shape == (n, size, size, 3) and hit[1].shape == (n,):
        if progress is not None:
            progress(n)
        return DecodedCrops(*hit)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ok = np.zeros(n, dtype=bool)
    blank = np.zeros((size, size, 3), np.uint8)
    # Plain appends, not a writable memmap: written pages would stay in this process's resident memory.
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (n, size, size, 3)})
        for i, p in enumerate(table.paths):
            img = read_image(p)
            ok[i] = img is not None
            fh.write((resize_bgr(img, size) if img is not None else blank).tobytes())
            if progress is not None:
                progress(1)
        fh.close()
        with atomic_path(ok_path, suffix=".npy") as tmp_ok:  # ok first: images without ok count as absent
            np.save(tmp_ok, ok)
    return DecodedCrops(np.load(path, mmap_mode="r"), ok)


# --------------------------------------------------------------------------- torch datasets


class CropDataset(TorchDataset):
    """Crops as ``(x, y, ok)`` with x normalised ``(3, S, S)``; an unreadable crop gives ok=0.

    Reads from ``decoded`` (see :func:`decode_crops`) when given, else from disk. Augmentation draws
    from a generator seeded by ``(seed, epoch, index)``; call :meth:`set_epoch` so each epoch draws anew.
    """

    def __init__(self, table: CropTable, *, input_size: int, data_config: dict[str, Any], augment: bool = False,
                 erase: float = 0.0, seed: int = 0, decoded: DecodedCrops | None = None, launder: bool = False):
        self.launder = launder
        self.paths = [str(p) for p in table.paths]
        self.labels = table.labels.astype(np.float32)
        self.input_size = input_size
        self.mean, self.std = tuple(data_config["mean"]), tuple(data_config["std"])
        self.augment, self.erase = augment, erase
        self.seed, self.epoch = seed, 0
        if decoded is not None and decoded.images.shape[:2] != (len(self.paths), input_size):
            raise ValueError(f"decoded crops have shape {decoded.images.shape}; want ({len(self.paths)}, "
                             f"{input_size}, {input_size}, 3)")
        self.decoded = decoded

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def _tensor(self, bgr: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        rgb = resize_rgb(bgr, self.input_size)
        if self.augment:
            rgb = augment_crop(rgb, rng, erase=self.erase, launder=self.launder)
        return _normalise(torch.from_numpy(rgb).permute(2, 0, 1), self.mean, self.std)

    def _read(self, i: int) -> np.ndarray | None:
        """BGR uint8, or None when the file cannot be decoded."""
        if self.decoded is not None:
            return np.asarray(self.decoded.images[i]) if self.decoded.ok[i] else None
        return read_image(self.paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = self._read(i)
        ok = img is not None
        if not ok:
            img = np.zeros((self.input_size, self.input_size, 3), np.uint8)
        return self._tensor(img, self._rng(i)), torch.tensor(self.labels[i]), torch.tensor(float(ok))


class PairDataset(CropDataset):
    """Each item is a real crop and a fake, so every batch is half real, half fake.

    The fake is, with probability ``sbi``, a self-blended copy of the real (:func:`dfdetect.sbi.self_blend`,
    pseudo-fakes as SBI trains); otherwise a fake that shares a group with the real when one exists
    (``same_group``: a DFDC fake and its source video, a Celeb-DF swap and its identity), else any fake.
    """

    def __init__(self, table: CropTable, *, input_size: int, data_config: dict[str, Any], augment: bool = False,
                 erase: float = 0.0, seed: int = 0, sbi: float = 0.0, same_group: bool = True,
                 decoded: DecodedCrops | None = None,
                 blend_fn: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None, launder: bool = False,
                 landmarks: np.ndarray | None = None):
        super().__init__(table, input_size=input_size, data_config=data_config, augment=augment, erase=erase,
                         seed=seed, decoded=decoded, launder=launder)
        if landmarks is not None and landmarks.shape != (len(table), 5, 2):
            raise ValueError(f"landmarks have shape {landmarks.shape}; want ({len(table)}, 5, 2), NaN where none")
        self.landmarks = landmarks  #: in the pixels of the crop as read (decoded: input_size), NaN = none
        self.real = np.flatnonzero(table.labels == Label.REAL)
        self.fake = np.flatnonzero(table.labels == Label.FAKE)
        if self.real.size == 0:
            raise NothingUsableError("paired / SBI training needs real crops in the training split; found none")
        if self.fake.size == 0 and sbi <= 0:
            raise NothingUsableError("paired training needs fake crops in the training split; found none "
                                     "(or use pseudo_fakes='sbi')")
        self.sbi = 1.0 if self.fake.size == 0 else float(sbi)
        by_group: dict[str, list[int]] = {}
        for j in self.fake:
            for g in table.groups[j]:
                by_group.setdefault(g, []).append(int(j))
        self.partners = [sorted({j for g in table.groups[r] for j in by_group.get(g, ())}) if same_group else []
                         for r in self.real]
        self.blend_fn = blend_fn

    def __len__(self) -> int:
        return int(self.real.size)

    def _blend(self, face: np.ndarray, rng: np.random.Generator, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(real, fake) for one SBI pair.

        ``sbi_pair`` JPEG-compresses both halves at the same quality; compressing only the fake would
        teach the model "recompressed = fake" instead of blending boundaries.
        """
        if self.blend_fn is not None:
            return face, self.blend_fn(face, rng)[0]
        from dfdetect.sbi import sbi_pair

        lm = None if self.landmarks is None else self.landmarks[row]
        pair = sbi_pair(face, rng, landmarks=lm if lm is not None and np.isfinite(lm).all() else None)
        return pair.real, pair.fake

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rng = self._rng(i)
        real = self._read(int(self.real[i]))
        if real is None:
            z = torch.zeros((2, 3, self.input_size, self.input_size))
            return z, torch.tensor([0.0, 1.0]), torch.zeros(2)
        if rng.random() < self.sbi:
            real, fake = self._blend(real, rng, int(self.real[i]))
        else:
            pool = self.partners[i] or self.fake
            fake = self._read(int(pool[rng.integers(len(pool))]))
        xs = [self._tensor(real, rng)]
        ok_fake = fake is not None
        xs.append(self._tensor(fake, rng) if ok_fake else torch.zeros_like(xs[0]))
        return torch.stack(xs), torch.tensor([0.0, 1.0]), torch.tensor([1.0, float(ok_fake)])


def balanced_sampler(labels: np.ndarray, seed: int, num_samples: int | None = None) -> torch.utils.data.Sampler:
    """Draw real and fake equally often (with replacement), the imbalance fix for training."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    w = 1.0 / np.maximum(counts[labels], 1.0)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double),
                                                  num_samples or labels.size, replacement=True, generator=g)


def pos_weight(labels: np.ndarray) -> torch.Tensor:
    """BCE ``pos_weight`` = n_real / n_fake, the class-weighted alternative to the sampler."""
    counts = np.bincount(labels, minlength=2).astype(np.float32)
    return torch.tensor(counts[0] / max(counts[1], 1.0))
