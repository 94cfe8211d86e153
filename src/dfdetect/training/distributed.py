"""torchrun / DistributedDataParallel helpers; one process on CPU stays the default path.

Under ``torchrun --nproc_per_node N`` the environment carries ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`init_distributed` joins the process group (``nccl`` on CUDA, ``gloo`` on CPU) and picks this
rank's device. Without those variables nothing is initialised and training runs as one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dfdetect.threads import auto_threads

__all__ = ["DistInfo", "broadcast_object", "cleanup", "init_distributed", "pick_device"]


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
