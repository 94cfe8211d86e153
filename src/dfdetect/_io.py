"""Atomic, resumable file output.

Every stage writes through these helpers so a killed run leaves either the old file or the new
one, never half of one, and a rerun can trust any file it finds.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel

from dfdetect.config import RUN_SETTINGS, MediaLimits, Protocol
from dfdetect.errors import BadInputError, TooManyPixelsError

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


def lock_exclusive(fh: Any) -> bool:
    """Take an exclusive ``flock`` on the open file ``fh`` without waiting: False when another process holds it.
    Where ``fcntl`` does not exist (not POSIX) there is no lock, and True."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_stale_temps(root: str | Path) -> int:
    """Delete the hidden temp files a killed run left under ``root``; returns how many. A link to a folder inside
    ``root`` is refused (BadInputError) before anything is deleted or written.

    A SIGKILL skips :func:`atomic_path`'s clean-up, so its temp file stays beside the output. Stages
    call this once before they start, holding the folder's lock (a second run at once is refused).
    """
    removed = 0
    for dirpath, dirs, files in os.walk(root):
        # os.walk lists a symlink to a folder among the folders, without following it: a stage would write
        # through it, outside the output folder, over whatever has the same name there
        for name in dirs:
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                raise BadInputError(f"holds a link to a folder ({link} -> {os.readlink(link)}); outputs would be "
                                    "written through it, outside the output folder: remove the link", path=root)
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


def output_stems(names: Iterable[str], keep_ext: str | None = None) -> dict[str, str]:
    """The output stem for each input name (a file name or a POSIX path), distinct from every other.

    An output is named after its input without the suffix, so ``clip.mp4`` and ``clip.mkv`` (or ``face.bmp``
    and ``face.webp``) would write the same output. Names that share a stem keep it only when their
    suffix is ``keep_ext`` (the output's own format: ``face.png`` stays ``face``); the others become
    ``<stem>_<ext>`` (``clip_mp4``, ``face_bmp``), with ``-2``, ``-3`` if even that is taken. A name with no
    such twin keeps its plain stem, so outputs of earlier runs keep their names.
    """
    names = sorted(set(names))
    by_stem: dict[str, list[str]] = {}
    for n in names:
        by_stem.setdefault(_stem(n), []).append(n)
    out: dict[str, str] = {}
    renamed: list[str] = []
    for stem, group in by_stem.items():
        keeper = group[0] if len(group) == 1 else next(
            (n for n in group if keep_ext is not None and _ext(n) == keep_ext.lower()), None)
        if keeper is not None:
            out[keeper] = stem
        renamed += [n for n in group if n != keeper]
    taken = set(out.values())
    for n in renamed:
        base = f"{_stem(n)}_{_ext(n) or 'noext'}"
        stem, k = base, 1
        while stem in taken:
            k += 1
            stem = f"{base}-{k}"
        taken.add(stem)
        out[n] = stem
    return out


def _stem(name: str) -> str:
    head, _ = os.path.splitext(name)
    return head


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lstrip(".").lower()


def check_separate(src: str | Path, out_dir: str | Path, what: str, flag: str = "--out") -> None:
    """Refuse an output folder at or under the input: its files would be taken for outputs or inputs."""
    src_r, out_r = Path(os.path.realpath(src)), Path(os.path.realpath(out_dir))
    if out_r == src_r or src_r in out_r.parents:
        raise BadInputError(f"{flag} {out_dir} is inside the {what} folder {src}; choose a separate folder "
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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights, shipped models, the scan's model identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(dest: str | Path, text: str) -> Path:
    """UTF-8; a file name that is not UTF-8 (Python holds its bytes as surrogates) is written as those very
    bytes (``surrogateescape``), so a manifest or label file naming it reads back to the same path."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
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


@functools.lru_cache(maxsize=8)
def _limits_from(env: tuple[str | None, ...]) -> MediaLimits:
    return MediaLimits.from_env()


def media_limits(limits: MediaLimits | None = None) -> MediaLimits:
    """``limits``, or the defaults with the environment's overrides (``DFDETECT_MAX_PIXELS``, ...)."""
    if limits is not None:
        return limits
    return _limits_from(tuple(os.environ.get(var) for var in MediaLimits.ENV.values()))


def regular_file(path: str | Path) -> int:
    """The size of ``path``, refused in one line unless it is a regular file (a symlink to one is fine).

    Why: opening a named pipe blocks until someone writes to it (a stage would hang forever), and a
    device or a folder is no media file either.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInputError("not found", path=path) from None
    except OSError as exc:  # ELOOP: a symlink loop; EACCES; ENAMETOOLONG
        raise BadInputError(f"cannot open ({exc.strerror or exc})", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or special file")
        raise BadInputError(f"{kind}, not a regular file; skipped", path=path)
    return st.st_size


def image_size(src: bytes | np.ndarray | str | Path) -> tuple[int, int, str]:
    """``(width, height, format)`` from an encoded image's header (bytes, or a file read lazily), without
    decoding its pixels (Pillow reads only the header); TooManyPixelsError past Pillow's own bomb cut,
    BadInputError when the header is not an image's."""
    try:
        with warnings.catch_warnings():
            # callers check their own pixel limit; Pillow's other warnings (a corrupt EXIF block) are about
            # metadata this header read does not use, and named no file on stderr
            warnings.simplefilter("ignore")
            with Image.open(src if isinstance(src, str | Path) else io.BytesIO(memoryview(src))) as im:
                return int(im.width), int(im.height), str(im.format)
    except Image.DecompressionBombError as exc:  # above Pillow's own cut (~179 MP): far past any limit
        m = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(m[1]) / 1e6:.0f} MP" if m else "more pixels than Pillow's own limit"
        raise TooManyPixelsError(f"declares an image of {what}, too large to decode; not decoded") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on a hostile header
        raise BadInputError(f"cannot read as an image (no image header: {type(exc).__name__})") from None


_FD2 = threading.Lock()  # one decode at a time may hold file descriptor 2
_OPENCV_LOG = re.compile(r"^\[\s*(?:WARN|ERROR|INFO)[^\]]*\]\s*(?:global\s+)?\S+:\d+\s+\S+\s+(.*)")


@contextmanager
def _decoder_messages(into: list[str]) -> Iterator[None]:
    """Collect the lines OpenCV, libpng and libtiff write straight to file descriptor 2 while OpenCV decodes.

    Why: OpenCV installs no message handler of theirs, so a PNG with a bad ancillary chunk printed
    ``libpng warning: tEXt: CRC error`` beside dfdetect's own one line per file, naming no file. Whatever else
    reached descriptor 2 meanwhile (another thread's log) is written back to it afterwards.
    """
    with _FD2, tempfile.TemporaryFile() as caught:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):  # no usable sys.stderr: nothing of ours is buffered
            pass
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            other = []
            for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True):
                own = _OPENCV_LOG.match(line)  # "[ WARN:0@0.2] global grfmt_png.cpp:793 readFrom... PNG input..."
                if own:
                    into.append(own[1].strip())
                elif line.startswith(("libpng ", "TIFF")) or ": Warning," in line:
                    into.append(line.strip())
                else:
                    other.append(line)
            if other:
                os.write(2, "".join(other).encode())


def load_image(path: str | Path, limits: MediaLimits | None = None) -> np.ndarray:
    """Read a BGR uint8 image, or raise :class:`BadInputError` saying why not, in one line naming ``path``.

    The one image loader every stage uses. Checked before any pixel is decoded: a regular file (a named
    pipe would block), at most ``limits.max_image_bytes``, and a header declaring at most
    ``limits.max_pixels`` (a 1 KB PNG may declare 100000 x 100000). Any decoder error is this one error.
    """
    lim = media_limits(limits)
    size = regular_file(path)
    if size == 0:
        raise BadInputError("empty file (0 bytes), cannot read as an image", path=path)
    if size > lim.max_image_bytes:
        raise BadInputError(f"{size:,} bytes, above the {lim.max_image_bytes:,}-byte limit for an "
                            f"image ({MediaLimits.ENV['max_image_bytes']}); skipped", path=path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise BadInputError(f"cannot read ({exc.strerror or exc})", path=path) from None
    try:
        w, h, fmt = image_size(data)
    except BadInputError as exc:
        raise type(exc)(str(exc), path=path) from None
    if w * h > lim.max_pixels:
        raise TooManyPixelsError(f"{fmt} declares {w} x {h} pixels ({w * h / 1e6:.0f} MP), above the "
                            f"{lim.max_pixels / 1e6:g} MP limit ({MediaLimits.ENV['max_pixels']}); not decoded",
                            path=path)
    said: list[str] = []  # the decoder's own words: in the file's one line, never loose on stderr
    try:
        with _decoder_messages(said):
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise BadInputError(f"cannot decode the {fmt} image ({str(exc).strip().splitlines()[-1][:120]})",
                            path=path) from None
    if image is None:
        why = "; ".join(said)[:160] or "corrupt or truncated"
        raise BadInputError(f"cannot decode the {fmt} image ({why})", path=path)
    return image  # a warning alone (a bad ancillary chunk) leaves pixels that are fine: nothing to say


def read_image(path: str | Path, limits: MediaLimits | None = None) -> np.ndarray | None:
    """:func:`load_image`, or None when the file is missing, empty, too large or not an image."""
    try:
        return load_image(path, limits)
    except BadInputError:
        return None


def is_valid_image(path: str | Path) -> bool:
    """True when ``path`` exists and decodes; used to decide whether a resumed stage can skip it."""
    p = Path(path)
    return p.is_file() and p.stat().st_size > 0 and read_image(p) is not None


def walk_files(folder: Path, suffixes: frozenset[str], *, regular_only: bool = True,
               skipped: list[str] | None = None) -> list[Path]:
    """Every entry under ``folder`` (recursive, symlinked folders not followed, as ``Path.rglob``) that is not a
    folder and has one of ``suffixes``, sorted; ``regular_only`` keeps only files (after symlinks).

    Why not ``rglob``: one entry it cannot stat (a path longer than PATH_MAX) ends its walk with an OSError, so a
    single odd name lost the whole folder. Here such an entry, or a folder that cannot be listed, is left out,
    with a line in ``skipped``.
    """
    out: list[Path] = []

    def unlistable(exc: OSError) -> None:
        if skipped is not None and not isinstance(exc, FileNotFoundError):  # absent (as rglob): nothing to list
            skipped.append(f"{exc.filename}: cannot list this folder ({exc.strerror or exc}); skipped")

    for dirpath, _, filenames in os.walk(folder, onerror=unlistable):
        for name in filenames:
            p = Path(dirpath) / name
            if p.suffix.lower() not in suffixes:
                continue
            try:
                if not regular_only or p.is_file():
                    out.append(p)
            except OSError as exc:  # e.g. a name too long for the file system
                if skipped is not None:
                    skipped.append(f"{p}: cannot use ({exc.strerror or exc}); skipped")
    return sorted(out)


def files_under(folder: Path, suffixes: frozenset[str], skipped: list[str] | None = None) -> list[Path]:
    """Every file under ``folder`` (recursive) with one of ``suffixes``, sorted (:func:`walk_files`).

    Hidden files are never data: done-markers, a killed run's atomic-write temp files, macOS "._x.png".
    """
    return [p for p in walk_files(folder, suffixes, skipped=skipped) if not p.name.startswith(".")]


def save_config(cfg: BaseModel, path: str | Path) -> Path:
    """Atomically write ``cfg`` as YAML; a Protocol without its run settings (the recipe a run is made by)."""
    exclude = RUN_SETTINGS if isinstance(cfg, Protocol) else None
    return write_text(path, yaml.safe_dump(cfg.model_dump(mode="json", exclude=exclude), sort_keys=False))
