"""torchrun / DistributedDataParallel helpers; one process on CPU stays the default path.

Under ``torchrun --nproc_per_node N`` the environment carries ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`init_distributed` joins the process group (``nccl`` on CUDA, ``gloo`` on CPU) and picks this
rank's device. Without those variables nothing is initialised and training runs as one process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["CpuSample", "DistInfo", "auto_threads", "broadcast_object", "cleanup", "cpu_sample", "cpu_threads",
           "init_distributed", "pick_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun job; the one distributed context the trainer consults."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable value)
    owns_group: bool = False  #: this call created the process group, so it must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in one process)."""
        if self.distributed:
            dist.barrier()

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (:func:`broadcast_object`), so the ranks decide alike."""
        return broadcast_object(value, self)


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` = this rank's CUDA device when there is one, else CPU."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(preference)


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


# A fallback window for a call without ``since``: other processes' use since dfdetect was imported (at most
# 10 minutes back). At a fresh start the load average still counts what this process did a minute ago as
# someone else's (docs/QUALITY.md#measurements).
_IMPORTED = cpu_sample()
_IMPORTED_WINDOW_S = 600.0


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
    measured from ``/proc/stat``; without it, since this module was imported, if that is 1 s to 10 min
    ago. Otherwise the load average stands in; it lags a minute and counts this process too, so
    ``running`` (the threads this process kept busy lately) is taken off it; alone, it kept a fine-tune at
    1 thread on an idle machine.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    share = max(1, _cores() // max(world_size, 1))
    if since is None and _IMPORTED is not None and time.monotonic() - _IMPORTED.wall < _IMPORTED_WINDOW_S:
        since = _IMPORTED
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


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; else describe a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    dev = pick_device(device, local_rank)
    if world <= 1:
        if dev.type == "cpu":
            torch.set_num_threads(auto_threads())
        return DistInfo(device=dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        owns = True
    if dev.type == "cpu":  # share the cores between ranks instead of oversubscribing them
        torch.set_num_threads(auto_threads(dist.get_world_size()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value on every rank (e.g. the early-stopping decision), so ranks never diverge."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
