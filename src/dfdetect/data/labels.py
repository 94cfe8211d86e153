"""Label conventions, converted exactly once, at the file boundary.

Internally dfdetect scores P(fake): **fake = 1 is the positive class, real = 0**. Every metric,
threshold and model output uses that convention.

Celeb-DF's ``List_of_testing_videos.txt`` and the seed's ``{value} {path}`` label files use the
opposite: **1 = real, 0 = fake**. :func:`from_seed_value` and :func:`to_seed_value` are the only
places the two meet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from dfdetect._io import files_under, regular_file, write_text
from dfdetect.errors import BadInputError

# What folder scans pick up: every still format OpenCV decodes here, and the containers FFmpeg reads that
# cameras, phones and broadcast captures write (a folder's .tif photos and .3gp clips were left out unsaid).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                            ".flv", ".wmv", ".3gp", ".ogv"})


class Label(IntEnum):
    """Internal label: the positive class is fake."""

    REAL = 0
    FAKE = 1


def from_seed_value(value: int) -> Label:
    """Seed / Celeb-DF file value (1 = real, 0 = fake) to the internal label."""
    if value not in (0, 1):
        raise ValueError(f"label value must be 0 (fake) or 1 (real), got {value!r}")
    return Label.REAL if value == 1 else Label.FAKE


def to_seed_value(label: int) -> int:
    """Internal label (1 = fake) to the seed / Celeb-DF file value (1 = real)."""
    return 0 if int(label) == Label.FAKE else 1


def parse_label_name(name: str) -> Label:
    """Map a textual label (``real``/``fake``, ``REAL``/``FAKE``, ``0``/``1`` internal) to :class:`Label`."""
    key = str(name).strip().lower()
    if key in ("real", "original", "pristine", "0"):
        return Label.REAL
    if key in ("fake", "deepfake", "manipulated", "synthesis", "1"):
        return Label.FAKE
    raise ValueError(f"unknown label {name!r}; use real/fake")


@dataclass(frozen=True)
class LabelLine:
    label: Label
    path: str


def read_label_file(path: str | Path) -> tuple[list[LabelLine], list[str]]:
    """Read a ``{value} {path}`` file (1 = real, 0 = fake).

    Returns the parsed lines and one message per line that does not parse, so callers can skip
    and count bad lines rather than stop.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise BadInputError("label file not found", path=path)
    regular_file(path)  # a named pipe would block the read forever
    lines: list[LabelLine] = []
    bad: list[str] = []
    # Lines end at "\n" only: str.splitlines() would also cut a name at "\x0c", "\x1c" or "\u2028"
    # surrogateescape: bytes that are not UTF-8 (a file name written as its own bytes) come back as that name
    text_all = path.read_text(encoding="utf-8-sig", errors="surrogateescape")  # -sig: a BOM (Notepad) is not a name
    for n, raw in enumerate(text_all.split("\n"), start=1):
        text = raw.strip()
        if not text:
            continue
        value, _, rel = text.partition(" ")
        try:
            label = from_seed_value(int(value))
            if not rel.strip():
                raise ValueError("no path after the value")
        except ValueError as exc:
            bad.append(f"{path}:{n}: cannot parse {text!r} ({exc}); expected '<1|0> <path>' with 1 = real")
            continue
        lines.append(LabelLine(label, rel.strip()))
    return lines, bad


def label_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be one line of a label file, or None: a line break would split the row in two
    (the second half lost or misread), and leading or trailing blanks are stripped when the line is read."""
    if "\n" in path or "\r" in path:
        return "its name holds a line break, which would split its row in the label file"
    if path != path.strip():
        return "its name starts or ends with a blank, which reading the label file would strip"
    if not path:
        return "an empty path"
    return None


def format_label_lines(lines: list[LabelLine]) -> str:
    """The lines as text; BadInputError for a path no line can hold (see :func:`label_path_problem`)."""
    for line in lines:
        if problem := label_path_problem(line.path):
            raise BadInputError(f"{line.path!r}: {problem}")
    return "".join(f"{to_seed_value(line.label)} {line.path}\n" for line in lines)


def write_label_file(dest: str | Path, lines: list[LabelLine]) -> Path:
    """Write a seed-style label file atomically (1 = real, 0 = fake)."""
    return write_text(dest, format_label_lines(lines))


def generate_labels(
    root: str | Path, subfolder: str, label: Label, *, dest: str | Path, append: bool = True,
    skipped: list[str] | None = None,
) -> list[LabelLine]:
    """The seed's ``generate_labels``: label every file under ``root/subfolder`` with one value.

    Paths are written relative to ``root`` (``Celeb-real/id0_0000/00000.png``), so the same file
    serves the face crops and their SRM copy, which mirror one structure. A file whose name no line can
    hold (a line break in it) is left out with one line in ``skipped``, never written half.
    """
    root = Path(root)
    folder = root / subfolder
    if not folder.is_dir():
        raise BadInputError("folder not found", path=folder)
    files = files_under(folder, IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    new: list[LabelLine] = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        if problem := label_path_problem(rel):
            if skipped is not None:
                skipped.append(f"{p!s:.300}: {problem}; left out of {Path(dest).name}".replace("\n", "\\n")
                               .replace("\r", "\\r"))
            continue
        new.append(LabelLine(label, rel))
    dest = Path(dest)
    old: list[LabelLine] = []
    if append and dest.is_file():
        old, _ = read_label_file(dest)
        seen = {line.path for line in new}
        old = [line for line in old if line.path not in seen]
    write_label_file(dest, old + new)
    return new
