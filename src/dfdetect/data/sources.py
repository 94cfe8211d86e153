"""Discover labelled media: Celeb-DF v2, FaceForensics++, DFDC, or any labelled folder / CSV.

Each loader returns a :class:`Dataset` of :class:`MediaItem` with the internal label (1 = fake),
a ``group`` for leakage-free splitting (identity, or source video) and ``is_test`` where the
dataset defines an official test set. Unusable entries are skipped and reported, never raised.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dfdetect._io import output_stems, regular_file, walk_files
from dfdetect.data.labels import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Label, parse_label_name, read_label_file
from dfdetect.errors import BadInputError

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
CELEBDF_REAL_DIRS = ("Celeb-real", "YouTube-real", "Youtube-real")
CELEBDF_FAKE_DIR = "Celeb-synthesis"
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"

DatasetKind = Literal["celebdf", "ffpp", "dfdc", "folder", "csv"]


@dataclass(frozen=True)
class MediaItem:
    """One labelled video or image."""

    path: Path  #: absolute path of the file
    rel: str  #: POSIX path relative to the dataset root; every stage mirrors it
    label: Label  #: internal convention, 1 = fake
    groups: tuple[str, ...]  #: identities / source videos it shows; splits keep these on one side
    is_test: bool = False  #: in the dataset's official test list
    id: str | None = None  #: set when ``rel`` without its suffix is another item's too (``clip.mp4``, ``clip.mkv``)

    @property
    def video_id(self) -> str:
        """``rel`` without its suffix: the key that frames, crops and scores are grouped by. Two files that
        differ only in suffix get distinct ids (see :func:`dfdetect._io.output_stems`): ``clip_mp4``, ``clip_mkv``."""
        return self.id or str(Path(self.rel).with_suffix("").as_posix())

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Dataset:
    root: Path
    kind: DatasetKind
    items: list[MediaItem]
    skipped: list[str] = field(default_factory=list)  #: one line per unusable entry

    def __post_init__(self) -> None:
        self.items = with_distinct_ids(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        fake = sum(1 for it in self.items if it.label == Label.FAKE)
        return {"real": len(self.items) - fake, "fake": fake, "test": sum(it.is_test for it in self.items)}


def with_distinct_ids(items: list[MediaItem]) -> list[MediaItem]:
    """``items``, where two share a ``video_id`` (``clip.mp4`` and ``clip.mkv`` in one folder), each with its
    own: their frames and crops would otherwise mix in one folder. Unique ids are left as they were."""
    stems = output_stems(it.rel for it in items if it.id is None)
    return [it if it.id is not None or stems[it.rel] == it.video_id else replace(it, id=stems[it.rel])
            for it in items]


def media_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a media file (a named pipe, a folder, a symlink loop), or None."""
    try:
        regular_file(path)
    except BadInputError as exc:
        return str(exc)
    return None


def contained_rel(root: Path, raw: object, *, base: Path | None = None) -> str:
    """``raw`` (a path read from a data file, relative to ``base``, default ``root``) as a POSIX path
    relative to ``root``; ValueError unless it stays inside ``root``.

    Outputs are named after this path, so a row that is absolute or climbs with ``../`` would write
    (and clean up) outside the output folder. The check is lexical: a symlink inside the dataset may
    point anywhere, since it is only read.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("no path")
    if "\x00" in raw or "\n" in raw or "\r" in raw:
        raise ValueError(f"path {raw!r} holds a control character")
    if os.path.isabs(raw) or raw.startswith("\\"):
        raise ValueError(f"path {raw!r} is absolute; paths in a data file must be relative to its folder")
    prefix = "" if base is None else Path(os.path.relpath(base, root)).as_posix()
    rel = os.path.normpath(os.path.join(prefix, raw)).replace(os.sep, "/")
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise ValueError(f"path {raw!r} leaves the dataset folder {root}")
    return rel


def _data_path(root: Path, rel: str) -> Path:
    """Absolute, but with the dataset's own names: symlinks are not resolved, so messages name what the
    user listed, not a link's target."""
    return Path(os.path.abspath(root / rel))


# --------------------------------------------------------------------------- Celeb-DF v2

_CELEB_REAL = re.compile(r"^id(?P<x>\d+)_(?P<n>\d+)$")
_CELEB_FAKE = re.compile(r"^id(?P<x>\d+)_id(?P<y>\d+)_(?P<n>\d+)$")
_YOUTUBE = re.compile(r"^(?P<n>\d+)$")


@dataclass(frozen=True)
class CelebDFName:
    """Parsed Celeb-DF file name: ``idX_NNNN`` (real) or ``idX_idY_NNNN`` (Y's face swapped onto X)."""

    target: str  #: identity whose video it is (``id0``), or ``yt00000`` for YouTube-real
    source: str | None  #: identity whose face was swapped in, fakes only
    index: int

    @property
    def identities(self) -> tuple[str, ...]:
        return (self.target,) if self.source is None else (self.target, self.source)


def parse_celebdf_name(name: str) -> CelebDFName:
    """Parse ``id0_0000``, ``id0_id16_0000`` or ``00170`` (with or without ``.mp4``)."""
    stem = Path(name).stem if Path(name).suffix else name
    if m := _CELEB_FAKE.match(stem):
        return CelebDFName(f"id{int(m['x'])}", f"id{int(m['y'])}", int(m["n"]))
    if m := _CELEB_REAL.match(stem):
        return CelebDFName(f"id{int(m['x'])}", None, int(m["n"]))
    if m := _YOUTUBE.match(stem):
        # YouTube-real clips carry no identity label; each is its own group.
        return CelebDFName(f"yt{m['n']}", None, int(m["n"]))
    raise ValueError(f"not a Celeb-DF name: {name!r} (expected idX_NNNN, idX_idY_NNNN or NNNNN)")


def _canonical_rel(rel: str) -> str:
    """The list's and the folder's spelling of one path: ``./Celeb-synthesis/x.mp4`` and ``a//b`` as the file's own
    (they were "not found", and an official test video became training data); and the test list says
    YouTube-real while some copies name the folder Youtube-real."""
    return posixpath.normpath(rel).replace("Youtube-real/", "YouTube-real/")


def load_celebdf(root: str | Path) -> Dataset:
    """Load a Celeb-DF v2 root; the official test list marks ``is_test``."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError("Celeb-DF root not found", path=root)
    folders = [d for d in (*CELEBDF_REAL_DIRS, CELEBDF_FAKE_DIR) if (root / d).is_dir()]
    if CELEBDF_FAKE_DIR not in folders or not any(d in folders for d in CELEBDF_REAL_DIRS):
        raise BadInputError(
            f"not a Celeb-DF v2 root: expected {CELEBDF_FAKE_DIR}/ and Celeb-real/ or YouTube-real/", path=root
        )
    skipped: list[str] = []
    test: dict[str, Label] = {}
    list_path = root / CELEBDF_TEST_LIST
    if list_path.is_file():
        lines, bad = read_label_file(list_path)
        skipped += bad
        test = {_canonical_rel(line.path): line.label for line in lines}
    else:
        skipped.append(f"{list_path}: missing; no official test set, every video is train/val")

    items: list[MediaItem] = []
    present: set[str] = set()  # every entry of the folders, used or not: what the test list may name
    for folder in folders:
        label = Label.FAKE if folder == CELEBDF_FAKE_DIR else Label.REAL
        for path in sorted((root / folder).iterdir()):
            rel = path.relative_to(root).as_posix()
            present.add(_canonical_rel(rel))
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            if problem := media_problem(path):
                skipped.append(problem)
                continue
            try:
                name = parse_celebdf_name(path.name)
            except ValueError as exc:
                skipped.append(f"{path}: {exc}")
                continue
            key = _canonical_rel(rel)
            if key in test and test[key] != label:  # which is right is unknown: used neither to train nor to test
                skipped.append(f"{list_path}: {key} is listed as {test[key].name.lower()} but sits in {folder}/")
                continue
            items.append(MediaItem(_data_path(root, rel), rel, label, name.identities, is_test=key in test))
    missing = set(test) - present
    skipped += [f"{root / rel}: in {CELEBDF_TEST_LIST} but not found" for rel in sorted(missing)]
    return Dataset(root, "celebdf", items, skipped)


# --------------------------------------------------------------------------- FaceForensics++


def load_ffpp(root: str | Path) -> Dataset:
    """FF++: ``original_sequences/**/NNN.mp4`` (real) and ``manipulated_sequences/**/NNN_MMM.mp4`` (fake)."""
    root = Path(root)
    items: list[MediaItem] = []
    skipped: list[str] = []
    for top, label in (("original_sequences", Label.REAL), ("manipulated_sequences", Label.FAKE)):
        for path in walk_files(root / top, VIDEO_SUFFIXES, regular_only=False, skipped=skipped):
            if problem := media_problem(path):
                skipped.append(problem)
                continue
            ids = tuple(f"ff{p}" for p in path.stem.split("_") if p.isdigit())
            if not ids:
                skipped.append(f"{path}: not an FF++ name (expected NNN or NNN_MMM)")
                continue
            items.append(MediaItem(Path(os.path.abspath(path)), path.relative_to(root).as_posix(), label, ids))
    return Dataset(root, "ffpp", items, skipped)


# --------------------------------------------------------------------------- DFDC


def load_dfdc(root: str | Path) -> Dataset:
    """DFDC: every ``metadata.json`` under ``root`` maps a file name to its label and original."""
    root = Path(root)
    items: list[MediaItem] = []
    skipped: list[str] = []
    for meta_path in sorted(root.rglob("metadata.json")):
        if problem := media_problem(meta_path):  # a named pipe would block the read forever
            skipped.append(problem)
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8-sig"))  # a BOM is fine, as in labels.csv
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append(f"{meta_path}: cannot read metadata ({exc})")
            continue
        except RecursionError:  # "[[[[..." nested deeper than the JSON parser recurses
            skipped.append(f"{meta_path}: cannot read metadata (nested too deeply)")
            continue
        if not isinstance(meta, dict):
            skipped.append(f"{meta_path}: expected an object of file name -> {{label, original}}, "
                           f"found a JSON {type(meta).__name__}")
            continue
        for name, entry in sorted(meta.items()):
            try:
                rel = contained_rel(root, name, base=meta_path.parent)
            except ValueError as exc:
                skipped.append(f"{meta_path}: entry {name!r} skipped: {exc}")
                continue
            path = _data_path(root, rel)
            if not isinstance(entry, dict):
                skipped.append(f"{meta_path}: entry {name!r} is a JSON {type(entry).__name__}, "
                               "expected {\"label\": \"REAL\"|\"FAKE\", ...}")
                continue
            try:
                label = parse_label_name(entry["label"])
            except (KeyError, TypeError, ValueError) as exc:
                skipped.append(f"{meta_path}: entry {name!r} has no usable label ({exc})")
                continue
            if problem := media_problem(path):
                skipped.append(f"{problem} (listed in {meta_path})")
                continue
            original = entry.get("original")
            group = Path(original if isinstance(original, str) and original else name).stem
            items.append(MediaItem(path, rel, label, (group,)))
    return Dataset(root, "dfdc", items, skipped)


# --------------------------------------------------------------------------- generic


def load_folder(root: str | Path) -> Dataset:
    """``real/`` and ``fake/`` subfolders of images or videos; each file is its own group."""
    root = Path(root)
    items: list[MediaItem] = []
    skipped: list[str] = []
    for sub, label in (("real", Label.REAL), ("fake", Label.FAKE)):
        for path in walk_files(root / sub, MEDIA_SUFFIXES, regular_only=False, skipped=skipped):
            rel = path.relative_to(root).as_posix()
            if problem := media_problem(_data_path(root, rel)):
                skipped.append(problem)
                continue
            items.append(MediaItem(_data_path(root, rel), rel, label, (Path(rel).with_suffix("").as_posix(),)))
    return Dataset(root, "folder", items, skipped)


GROUP_COLUMNS = ("group", "original_video", "original", "video", "identity")


def load_csv(csv_path: str | Path) -> Dataset:
    """A CSV with ``path`` and ``label`` (real/fake) columns and an optional group column.

    Paths are relative to the CSV's folder. The group column is the first of
    ``group, original_video, original, video, identity`` that is present.
    """
    csv_path = Path(csv_path)
    root = csv_path.parent
    items: list[MediaItem] = []
    skipped: list[str] = []
    try:
        # utf-8-sig: the byte-order mark a spreadsheet writes would otherwise hide the 'path' column.
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"cannot read as a UTF-8 CSV ({type(exc).__name__}: {str(exc)[:120]})",
                            path=csv_path) from None
    if "path" not in fields or "label" not in fields:
        raise BadInputError(f"CSV needs 'path' and 'label' columns, found {fields}", path=csv_path)
    group_col = next((c for c in GROUP_COLUMNS if c in fields), None)
    for n, row in enumerate(rows, start=2):
        try:
            label = parse_label_name(row["label"])
        except ValueError as exc:
            skipped.append(f"{csv_path}:{n}: {exc}")
            continue
        try:  # None when a short row ends before the path column
            rel = contained_rel(root, row.get("path"))
        except ValueError as exc:
            skipped.append(f"{csv_path}:{n}: {exc}")
            continue
        path = _data_path(root, rel)
        if problem := media_problem(path):
            skipped.append(f"{problem} (listed in {csv_path.name}:{n})")
            continue
        group = (row.get(group_col) or "").strip() if group_col else ""
        group = Path(group).stem if group else Path(rel).with_suffix("").as_posix()
        items.append(MediaItem(path, rel, label, (group,)))
    return Dataset(root, "csv", items, skipped)


def discover(source: str | Path) -> Dataset:
    """Recognise the layout of ``source`` and load it; the error lists the layouts understood."""
    source = Path(source)
    if not source.exists():
        raise BadInputError("not found", path=source)
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return load_csv(source)
        raise BadInputError("expected a folder or a .csv of path,label[,group]", path=source)
    if (source / CELEBDF_FAKE_DIR).is_dir():
        return load_celebdf(source)
    if (source / "original_sequences").is_dir() or (source / "manipulated_sequences").is_dir():
        return load_ffpp(source)
    if (source / "labels.csv").is_file():
        return load_csv(source / "labels.csv")
    if (source / "real").is_dir() or (source / "fake").is_dir():
        return load_folder(source)
    if next(source.rglob("metadata.json"), None) is not None:
        return load_dfdc(source)
    raise BadInputError(
        "unknown layout: expected Celeb-DF v2 (Celeb-synthesis/), FF++ (original_sequences/), "
        "DFDC (metadata.json), real/ + fake/ folders, or labels.csv",
        path=source,
    )
