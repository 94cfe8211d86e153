"""Atomic, resumable file output.

Every stage writes through these helpers so a killed run leaves either the old file or the new
one, never half of one, and a rerun can trust any file it finds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfdetect.errors import BadInputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; rename it over ``dest`` only if the block succeeds."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{TEMP_TAG}", suffix=suffix or dest.suffix,
                                   dir=dest.parent)
    except OSError as exc:
        raise _naming(exc, dest) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; give the output the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        try:
            os.replace(tmp_path, dest)
        except OSError as exc:
            raise _naming(exc, dest) from None
    finally:
        tmp_path.unlink(missing_ok=True)


#: Marks dfdetect's own temp files, so the clean-up below never matches a user's hidden file.
TEMP_TAG = "dfdetect-tmp-"
#: What :func:`atomic_path` names its temp files: ``.<dest name>.dfdetect-tmp-<8 random chars><suffix>``.
_TEMP_NAME = re.compile(r"^\..+\." + TEMP_TAG + r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale_temps(root: str | Path) -> int:
    """Delete the hidden temp files a killed run left under ``root``; returns how many.

    A SIGKILL skips :func:`atomic_path`'s clean-up, so its temp file stays beside the output. Stages
    call this once before they start, so run one stage per output folder at a time.
    """
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and _TEMP_NAME.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def inside(root: str | Path, rel: str | Path) -> Path:
    """``root / rel``, refused unless it stays inside ``root``: outputs are named after data-file paths,
    and those must never climb out of the output folder (``../``, an absolute path)."""
    rel = Path(rel)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts:
        raise BadInputError(f"output path {rel.as_posix()!r} would leave the output folder; skipped", path=root)
    return Path(root) / rel


def check_separate(src: str | Path, out_dir: str | Path, what: str) -> None:
    """Refuse an output folder at or under the input: its files would be taken for outputs or inputs."""
    src_r, out_r = Path(src).resolve(), Path(out_dir).resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise BadInputError(f"--out {out_dir} is inside the {what} folder {src}; choose a separate folder "
                            "(files there would be taken for finished outputs, or overwritten)")


def _naming(exc: OSError, dest: Path) -> OSError:
    """The same error, naming ``dest`` rather than the hidden temp file the user never asked for."""
    return type(exc)(exc.errno, f"cannot write ({exc.strerror or exc})", str(dest))


def load_cached(path: Path, ok_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A cached ``.npy`` array (memory-mapped) and its per-row ok flags (bool), or None when either is
    missing or unreadable: the caller checks the shape it needs and rebuilds otherwise."""
    try:
        return np.load(path, mmap_mode="r"), np.load(ok_path).astype(bool)
    except (OSError, ValueError):
        return None


def write_text(dest: str | Path, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: str | Path, obj: Any) -> Path:
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_image(dest: str | Path, image_bgr: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Write a BGR uint8 image; the format follows the file suffix (png lossless, jpg at ``jpeg_quality``)."""
    dest = Path(dest)
    ext = dest.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image_bgr, params)
    if not ok:
        raise OSError(f"{dest}: could not encode image")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.tobytes())
    return dest


def read_image(path: str | Path) -> np.ndarray | None:
    """Read a BGR uint8 image, or None if the file is missing, empty or not an image."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def is_valid_image(path: str | Path) -> bool:
    """True when ``path`` exists and decodes; used to decide whether a resumed stage can skip it."""
    p = Path(path)
    return p.is_file() and p.stat().st_size > 0 and read_image(p) is not None
