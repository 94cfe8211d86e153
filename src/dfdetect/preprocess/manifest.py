"""``manifest.csv``: the faces stage's record of every crop, and of every frame without one, with the reason.

Written by ``faces``, copied by ``srm``, read by the crop table and the CLI.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dfdetect._io import write_text

__all__ = ["MANIFEST_FIELDS", "MANIFEST_NAME", "read_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("path", "video_id", "frame", "x0", "y0", "x1", "y1", "score", "status", "reason")
#: Per-video record of finished rows (written last); a rerun reuses it instead of detecting again.


def write_manifest(dest: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(dest, buf.getvalue())


def read_manifest(path: str | Path) -> list[dict]:
    with Path(path).open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))
