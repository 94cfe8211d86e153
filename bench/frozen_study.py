"""The seed's frozen-backbone loop against dfdetect's cached features: same epochs, same metrics.

Issue 5 item 2 (target: >= 20x). Both train the seed's recipe (frozen ImageNet MobileNetV2 from the
offline wheel, 128 px, global max pooling, a 1-unit sigmoid head, Adam lr 1e-4, BCE, batch 32, the
seeded 85/15 split) on the same crops, in the same process, with the same CPU threads:

* **seed loop**: every epoch reads and resizes every training crop and runs the frozen backbone on
  every batch (and on the validation set for the epoch's metrics), as ``model.fit`` did;
* **dfdetect**: ``dfdetect.training.trainer.train`` with ``mode='head'``: the backbone runs once per crop, into
  a disk-backed feature cache, and the head trains on the cached features.

The head's initialisation and batch order are the same, so both print the same validation AUC per
epoch (up to float noise); the script checks that. The ratio of the two wall times is printed. With
E epochs the backbone work shrinks about E-fold, so the ratio grows with the number of epochs.

    nice -n 10 python bench/frozen_study.py                     # 1000 dfdc-faces crops, 10 epochs (the seed's)
    python bench/frozen_study.py --crops 600 --epochs 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dfdc-faces"


def crop_table(n: int, tmp: Path):
    """``n`` crops from ../shared/data/dfdc-faces (half real, half fake), or generated ones if absent."""
    import cv2

    from dfdetect.data.crops import build_crop_table
    from dfdetect.data.sources import discover, load_csv

    if (SHARED / "labels.csv").is_file():
        ds = load_csv(SHARED / "labels.csv")
        reals = [it for it in ds.items if it.label == 0][: n // 2]
        fakes = [it for it in ds.items if it.label == 1][: n - n // 2]
        ds.items = reals + fakes
        return build_crop_table(ds, None), f"{n} crops from {SHARED}"
    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        (tmp / "gen" / label).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            img = cv2.GaussianBlur(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), (0, 0), 3)
            if label == "fake":
                img[60:160, 60:160] = cv2.GaussianBlur(img[60:160, 60:160], (0, 0), 4)
            cv2.imwrite(str(tmp / "gen" / label / f"{i:05d}.jpg"), img)
    return build_crop_table(discover(tmp / "gen"), None), f"{n} generated 224 px crops"


def seed_loop(table, protocol) -> tuple[float, list[float]]:
    """The backbone on every batch of every epoch; returns (seconds, val AUC per epoch)."""
    from dfdetect.data.crops import split_table
    from dfdetect.data.torch_datasets import CropDataset
    from dfdetect.evaluation.metrics import compute_metrics
    from dfdetect.model.backbones import create_backbone, new_head

    cfg, size = protocol.train, protocol.model.input_size
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = create_backbone(protocol.model.backbone, pretrained=True, pool="max").eval()
    model = model.to(memory_format=torch.channels_last)  # the same fast layout dfdetect uses
    for p in model.parameters():
        p.requires_grad_(False)
    train_t, val_t, _ = split_table(table, cfg)
    ds_tr = CropDataset(train_t, input_size=size, data_config=model.data_config)
    ds_va = CropDataset(val_t, input_size=size, data_config=model.data_config)
    torch.manual_seed(cfg.seed)
    head = new_head(model.num_features)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    gen = np.random.default_rng(cfg.seed)
    aucs = []

    def feats(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.pool_features(model.forward_features(x.contiguous(memory_format=torch.channels_last)))

    for _ in range(cfg.epochs):
        order = gen.permutation(len(train_t))
        for start in range(0, order.size, cfg.batch_size):
            b = np.sort(order[start:start + cfg.batch_size])
            x = torch.stack([ds_tr[int(i)][0] for i in b])  # read + resize + normalise, every epoch
            y = torch.from_numpy(train_t.labels[b].astype(np.float32))
            loss = nn.functional.binary_cross_entropy_with_logits(head(feats(x)).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ps = []
        for x, _, _ in DataLoader(ds_va, batch_size=64):
            with torch.no_grad():
                ps.append(torch.sigmoid(head(feats(x))).squeeze(1).numpy())
        aucs.append(compute_metrics(val_t.labels, np.concatenate(ps)).frame_auc)
    return time.perf_counter() - t0, aucs


def cached(table, protocol, out: Path) -> tuple[float, list[float]]:
    from dfdetect.training.trainer import train

    t0 = time.perf_counter()
    r = train(table, protocol, out)
    return time.perf_counter() - t0, [h["val_auc"] for h in r.history]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)

    # imports paid before either clock starts (timm is otherwise imported inside the first create_backbone)
    import timm  # noqa: F401

    import dfdetect.evaluation.metrics
    import dfdetect.model.backbones
    import dfdetect.training.trainer  # noqa: F401
    from dfdetect.config import Protocol
    from dfdetect.threads import cpu_threads

    seed = Protocol.seed()
    protocol = seed.model_copy(update={"train": seed.train.model_copy(update={"epochs": args.epochs})})
    with tempfile.TemporaryDirectory() as tmp, cpu_threads() as threads:
        table, what = crop_table(args.crops, Path(tmp))
        print(f"data: {what}; MobileNetV2 (offline ImageNet), {protocol.model.input_size} px, "
              f"{args.epochs} epochs, batch {protocol.train.batch_size}, {threads} torch thread(s), "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        t_ours, auc_ours = cached(table, protocol, Path(tmp) / "run")
        t_seed, auc_seed = seed_loop(table, protocol)
    print(f"seed loop (backbone every batch, every epoch): {t_seed:8.1f} s   val AUC by epoch "
          f"{' '.join(f'{a:.3f}' for a in auc_seed)}")
    print(f"dfdetect (features cached once)             : {t_ours:8.1f} s   val AUC by epoch "
          f"{' '.join(f'{a:.3f}' for a in auc_ours)}")
    same = np.allclose(auc_seed, auc_ours, atol=1e-3)
    print(f"same metrics: {'yes' if same else 'NO'} (max |dAUC| = {np.max(np.abs(np.subtract(auc_seed, auc_ours))):.2e})")
    print(f"ratio: {t_seed / t_ours:.1f}x faster (target >= 20x)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
