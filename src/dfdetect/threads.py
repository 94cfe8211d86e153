"""CPU threads for torch and the BLAS pools: this process's share of the cores, minus what others keep busy.

Scoring sets them once, at the edge (:func:`tune`, from the CLI and the service); the trainer re-measures them
per epoch, an explicit choice in its loop, because a long fit on shared cores sees the load change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["CpuSample", "auto_threads", "cpu_sample", "cpu_threads", "tune"]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds spent so far by the whole machine and by this process, at one moment."""

    wall: float
    machine: float
    own: float


def cpu_sample() -> CpuSample | None:
    """Now, from Linux ``/proc/stat`` (None elsewhere): the busy time of every core and of this process."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 8:
        return None
    busy = sum(ticks[:3]) + sum(ticks[5:8])  # user nice system + irq softirq steal; not idle, iowait
    t = os.times()
    return CpuSample(time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system)


def _others_busy(since: CpuSample | None) -> float | None:
    """Cores that other processes kept busy since ``since`` (None: no sample, or too short to tell)."""
    now = cpu_sample()
    if since is None or now is None or now.wall - since.wall < 1.0:
        return None
    return max(0.0, (now.machine - since.machine) - (now.own - since.own)) / (now.wall - since.wall)


def auto_threads(world_size: int = 1, running: int = 1, since: CpuSample | None = None) -> int:
    """CPU threads for torch: this process's share of the cores, minus what other processes keep busy.

    Why: OpenMP threads spin while they wait, so oversubscribed cores make a step tens of times slower
    (docs/QUALITY.md#measurements). An explicit ``OMP_NUM_THREADS`` is always respected.
    With ``since`` (a :func:`cpu_sample` from, say, the start of the last epoch) other processes' use is
    measured from ``/proc/stat``. Otherwise the load average stands in; it lags a minute and counts this process too, so
    ``running`` (the threads this process kept busy lately) is taken off it; alone, it kept a fine-tune at
    1 thread on an idle machine.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    share = max(1, _cores() // max(world_size, 1))
    others = _others_busy(since)
    if others is not None:
        others /= max(world_size, 1)
    else:
        try:
            others = max(0.0, os.getloadavg()[0] / max(world_size, 1) - running)
        except OSError:
            others = 0.0
    return max(1, min(share, round(share - others)))


@contextmanager
def cpu_threads(world_size: int = 1) -> Iterator[int]:
    """Run a block with :func:`auto_threads` threads, then restore the caller's settings.

    torch's own pool is set by torch; threadpoolctl limits the BLAS pools torch does not own (numpy's and
    scipy's OpenBLAS), which would otherwise spin on the same busy cores.
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    n = auto_threads(world_size)
    with threadpool_limits(limits=n, user_api="blas"):
        torch.set_num_threads(n)
        try:
            yield n
        finally:
            torch.set_num_threads(before)


def tune() -> int:
    """Set torch's and the BLAS pools' threads once for this process (:func:`auto_threads`); return the count.

    Called at the edge, where a torch model is loaded for scoring (the CLI, the service), never inside a
    scoring call: a thread count changed per call is global state that concurrent requests would race on.
    """
    from threadpoolctl import threadpool_limits

    n = auto_threads()
    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
    return n
