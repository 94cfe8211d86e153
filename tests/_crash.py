"""Pool-worker functions for the hostile tests: a module of its own, so a worker that unpickles one imports
only this (not a whole test module, and torch with it)."""

from __future__ import annotations

import os


def square_or_die(x: int) -> int:
    """``x * x``; the worker process dies at once for 3 (a crash in a native decoder looks like this)."""
    if x == 3:
        os._exit(1)
    return x * x


def square_or_raise(x: int) -> int:
    if x == 2:
        raise MemoryError(f"no memory for item {x}")
    return x * x


def no_weights(x: int) -> int:
    """A problem of the run, not of the item: the same for every one."""
    from dfdetect.errors import WeightsError

    raise WeightsError("weights file not found")
