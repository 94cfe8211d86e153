"""The fine-tune's data loaders, and the decisions that go with them: which sampler, and whether the loss
weighs the classes (``pos_weight``) instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dfdetect.config import Protocol
from dfdetect.data.crops import CropTable
from dfdetect.data.torch_datasets import (
    BlendFn,
    CropDataset,
    DecodedCrops,
    PairDataset,
    balanced_sampler,
    pos_weight,
)
from dfdetect.training.distributed import DistInfo

__all__ = ["TrainLoaders", "make_loaders"]


@dataclass
class TrainLoaders:
    train: DataLoader
    val: DataLoader
    dataset: CropDataset  #: the training set (a PairDataset for pairs and SBI)
    sampler: Any  #: DistributedSampler, the balanced sampler or a seeded RandomSampler
    pos_weight: torch.Tensor | None  #: on the device; None when the sampler (or pairs) balances the classes

    def set_epoch(self, epoch: int, seed: int) -> None:
        """This epoch's draws: the sampler's order and the dataset's augmentation, from ``seed`` (or the epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        else:
            self.sampler.generator.manual_seed(seed)
        self.dataset.set_epoch(epoch)


def make_loaders(train_t: CropTable, val_t: CropTable, protocol: Protocol, data_config: dict[str, Any],
                 decoded: tuple[DecodedCrops, DecodedCrops], info: DistInfo, *, blend_fn: BlendFn | None = None,
                 landmarks: np.ndarray | None = None) -> TrainLoaders:
    """Datasets over the decoded crops and their loaders. Pairs are balanced already; under DDP the sampler
    shards the data, so class balance falls back to a weighted loss."""
    cfg, size, device = protocol.train, protocol.model.input_size, info.device
    dec_tr, dec_va = decoded
    if cfg.pseudo_fakes == "sbi" or cfg.pairs:
        sbi = 0.0 if cfg.pseudo_fakes != "sbi" else (0.5 if cfg.sbi_mix else 1.0)
        train_ds: CropDataset = PairDataset(train_t, input_size=size, data_config=data_config, augment=cfg.augment,
                                            erase=cfg.erase, seed=cfg.seed, sbi=sbi, blend_fn=blend_fn,
                                            decoded=dec_tr, launder=cfg.launder, landmarks=landmarks)
        per_batch = max(1, cfg.batch_size // 2)  # each item is a (real, fake) pair
    else:
        train_ds = CropDataset(train_t, input_size=size, data_config=data_config, augment=cfg.augment,
                               erase=cfg.erase, seed=cfg.seed, decoded=dec_tr, launder=cfg.launder)
        per_batch = cfg.batch_size
    val_ds = CropDataset(val_t, input_size=size, data_config=data_config, decoded=dec_va)
    pairs = isinstance(train_ds, PairDataset)
    if info.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler: Any = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=False)
    elif cfg.balance == "sampler" and not pairs:
        sampler = balanced_sampler(train_t.labels, cfg.seed)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
    weighted = cfg.balance == "weighted" or (cfg.balance == "sampler" and info.distributed)
    pw = pos_weight(train_t.labels).to(device) if weighted and not pairs else None
    kw: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda",
                          "persistent_workers": False}
    train_dl = DataLoader(train_ds, batch_size=per_batch, sampler=sampler, drop_last=len(train_ds) > per_batch, **kw)
    val_dl = DataLoader(val_ds, batch_size=max(cfg.batch_size, 64), shuffle=False, **kw)
    return TrainLoaders(train_dl, val_dl, train_ds, sampler, pw)
