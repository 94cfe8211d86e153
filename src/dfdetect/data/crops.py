"""Face crops as a table, and leakage-free splits of it.

A :class:`CropTable` is one row per face crop: its path, label (1 = fake), video and the groups
(identities / source videos) it shows. :func:`split_table` keeps the official test list apart
and, for ``split='group'``, never lets a group or a video sit on both sides of train/val.
The pixels are :mod:`dfdetect.data.transforms`' job; the torch Datasets are :mod:`dfdetect.data.torch_datasets`'.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfdetect.config import TrainConfig
from dfdetect.data.labels import IMAGE_SUFFIXES, read_label_file
from dfdetect.data.sources import Dataset, contained_rel, parse_celebdf_name
from dfdetect.errors import NothingUsableError

__all__ = [
    "CropTable",
    "build_crop_table",
    "group_components",
    "load_label_table",
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


def _once_each(paths: Sequence[Path], labels: Sequence[int],
               where: str) -> tuple[list[int], list[str], list[str]]:
    """Indices that keep each file once; one line per file left out, and one per file used once of several.

    A file listed twice with one label is used once (a note: it is used, so it is not counted as skipped); one
    labelled both real and fake is left out, since either label would be a guess (and both would teach the model
    to contradict itself).
    """
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        rows.setdefault(os.path.abspath(p), []).append(i)
    keep: list[int] = []
    left_out: list[str] = []
    repeated: list[str] = []
    for idx in rows.values():
        if len(idx) > 1 and len({labels[i] for i in idx}) > 1:
            left_out.append(f"{paths[idx[0]]}: labelled both real and fake in {where}; left out")
            continue
        if len(idx) > 1:
            repeated.append(f"{paths[idx[0]]}: listed {len(idx)} times in {where}; used once")
        keep.append(idx[0])
    if len(repeated) > 1:  # one note, not one per file: a label file with every row twice would fill the screen
        repeated = [(f"{len(repeated)} files are listed more than once in {where}; each is used once (first: "
                     f"{repeated[0]})")]
    return sorted(keep), left_out, repeated


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
    keep, left_out, repeated = _once_each([it.path for it in dataset.items], [int(it.label) for it in dataset.items],
                                          "the dataset")
    skipped += left_out
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
    return CropTable(paths, np.array(labels), videos, groups, np.array(is_test), skipped=skipped, notes=repeated)


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
    keep, left_out, repeated = _once_each(paths, labels, Path(label_file).name)
    skipped += left_out
    paths, labels, videos, groups = ([col[i] for i in keep] for col in (paths, labels, videos, groups))
    if not paths:
        raise NothingUsableError(f"no usable crops listed ({len(skipped)} lines skipped)", path=label_file)
    return CropTable(paths, np.array(labels), videos, groups, np.full(len(paths), is_test), skipped=skipped,
                     notes=repeated)


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
    train.notes, train.skipped = [*table.notes, *notes], list(table.skipped)
    return train, val, table.subset(test_idx)
