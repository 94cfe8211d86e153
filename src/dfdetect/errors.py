"""Errors a user can act on.

Every failure that a user can fix is a :class:`DfdetectError` whose message is one line naming the
file and the problem. The CLI prints that line (no traceback) and moves on or exits non-zero.
"""

from __future__ import annotations

import re
from pathlib import Path

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, C1, and the two Unicode line breaks
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` on one line, with no control characters: a file name may hold a line break (a reason must never
    lose its second half) or terminal escape codes (they must not reach the terminal)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                                  else f"\\u{ord(m.group()):04x}"), text)


def failure_line(src: str | Path, exc: BaseException) -> str:
    """``file: failed (Type: problem); skipped``, one line, for an error no stage foresaw."""
    text = (str(exc).strip().splitlines() or [""])[-1][:160]
    return f"{src}: failed ({type(exc).__name__}{': ' + text if text else ''}); skipped"


class DfdetectError(Exception):
    """A problem with the user's input, reported as one line."""

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.message = message  #: the problem without the file name, for a caller that names the file itself
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class BadInputError(DfdetectError):
    """One input file (video, image, label line) cannot be used; callers skip and count it."""


class TooManyPixelsError(BadInputError):
    """An image declares more pixels than may be decoded (a decompression bomb); refused from its header."""


class WeightsError(DfdetectError):
    """Weights cannot be found, or do not fit the backbone."""


class NothingUsableError(DfdetectError):
    """A stage was left with no usable input at all; the only case with a non-zero exit."""
