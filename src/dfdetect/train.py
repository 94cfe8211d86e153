"""Fit a detector: the seed's frozen head on cached features, or a full fine-tune (optionally DDP).

``mode='head'`` is the seed's recipe: frozen backbone, global max pooling, a 1-unit sigmoid head,
Adam (lr 1e-4), BCE, batch 32, seeded 85/15 split. Because the backbone is frozen its features are
computed once (:mod:`dfdetect.features`) and the head trains on them: the same maths, far faster.

``mode='full'`` fine-tunes everything with augmentation, AdamW and a cosine schedule, optionally a
moving average of the weights (``ema``), early stopping on validation AUC, the best epoch kept, and a
checkpoint written atomically every epoch so a killed run resumes. Crops are decoded once into a
disk-backed array (:func:`dfdetect.data.decode_crops`) and read from it every epoch. Under
``torchrun`` it runs DistributedDataParallel (see :mod:`dfdetect.distributed`). An ensemble's members
train side by side, one thread each, on a CPU with no more cores than members (:func:`_members_at_once`).

Either way the decision threshold is chosen on validation scores, never on test.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dfdetect._io import atomic_path, read_image, write_json
from dfdetect.backbones import BackboneClassifier, create_backbone, ensemble_of, new_head
from dfdetect.config import Protocol, save_config
from dfdetect.data import (
    CropDataset,
    CropTable,
    DecodedCrops,
    PairDataset,
    balanced_sampler,
    decode_crops,
    pos_weight,
    split_table,
)
from dfdetect.detector import DETECTOR_FILE, Detector, score_logits
from dfdetect.distributed import (
    DistInfo,
    auto_threads,
    broadcast_object,
    cleanup,
    cpu_sample,
    init_distributed,
)
from dfdetect.errors import DfdetectError, NothingUsableError
from dfdetect.metrics import apply_temperature, choose_threshold, compute_metrics, fit_temperature
from dfdetect.parallel import run_threads
from dfdetect.stage import ProgressCallback

__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "HISTORY_FILE", "TrainResult", "train"]

CHECKPOINT_FILE = "last.ckpt"  #: resume state (model, optimiser, schedule, history), every epoch
BEST_FILE = "best.safetensors"  #: weights of the best validation epoch (full mode)
HISTORY_FILE = "history.json"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainResult:
    detector: Detector
    history: list[dict[str, float]]  #: per epoch: epoch, train_loss, train_acc, val_loss, val_acc, val_auc
    val_y: np.ndarray
    val_p: np.ndarray
    val_videos: list[str]
    out_dir: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  #: train / val / test table counts
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's draws (sampler order, dropout), from ``(seed, epoch)`` alone.

    Why: a generator seeded once and advanced epoch by epoch is state a checkpoint would have to carry;
    seeded from the epoch, a resumed run draws exactly what the uninterrupted run drew.
    """
    return int(np.random.SeedSequence([seed % 2**63, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if y.size == 0 or np.unique(y).size < 2:
        return math.nan
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_metrics(y, p).frame_auc)


def _bce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pw: torch.Tensor | None) -> torch.Tensor:
    """Mean BCE over valid rows (w = 1 for a readable crop, 0 for one that could not be decoded)."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")
    return (loss * w).sum() / w.sum().clamp_min(1.0)


def _epoch_record(epoch: int, tr_loss: float, tr_acc: float, y: np.ndarray, p: np.ndarray,
                  started: float) -> dict[str, float]:
    """One history row; ``seconds`` (training and validation, from ``started``) shows a slow machine."""
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    val_loss = float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean()) if y.size else math.nan
    val_acc = float(((p >= 0.5) == (y == 1)).mean()) if y.size else math.nan
    return {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": val_loss, "val_acc": val_acc,
            "val_auc": _auc(y, p), "seconds": round(time.perf_counter() - started, 3)}


def _protocol_hash(protocol: Protocol, table_fp: str) -> str:
    """What a checkpoint must match to be resumed: the recipe and the data, never the run settings (workers,
    how members are scheduled), which do not change what is learnt."""
    return hashlib.sha256((protocol.recipe_json() + table_fp).encode()).hexdigest()[:16]


def _check_classes(train_t: CropTable, val_t: CropTable, cfg: Any, notes: list[str]) -> None:
    """Refuse a one-class training split (it would save a detector that learnt nothing, val_auc nan); note a
    one-class validation split. SBI makes its own fakes, so it may train on real crops alone."""
    names = {0: "real", 1: "fake"}
    classes = sorted(set(train_t.labels.tolist()))
    sbi_on_reals = cfg.mode == "full" and cfg.pseudo_fakes == "sbi" and classes == [0]
    if len(classes) == 1 and not sbi_on_reals:
        raise NothingUsableError(f"the training split has only {names[classes[0]]} crops ({len(train_t)}); "
                                 "a detector needs both real and fake ones to learn from")
    val_classes = sorted(set(val_t.labels.tolist()))
    if len(val_classes) == 1:
        notes.append(f"the validation split has only {names[val_classes[0]]} crops: val_auc is undefined "
                     "and the threshold is the fixed 0.5")


def _usable(table: CropTable, ok: np.ndarray, what: str, notes: list[str]) -> np.ndarray:
    bad = np.flatnonzero(~ok)
    if bad.size:
        notes.append(f"{what}: {bad.size} unreadable crops skipped (e.g. {table.paths[int(bad[0])]})")
    return np.flatnonzero(ok)


# --------------------------------------------------------------------------- head mode


def _train_head(model: BackboneClassifier, train_t: CropTable, val_t: CropTable, protocol: Protocol,
                cache_dir: Path, device: torch.device, notes: list[str],
                progress: ProgressCallback | None) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray, np.ndarray]:
    from dfdetect.features import extract_features

    cfg, size = protocol.train, protocol.model.input_size
    for p in model.frozen_parameters():
        p.requires_grad_(False)
    kw: dict[str, Any] = {"input_size": size, "batch_size": max(cfg.batch_size, 64), "workers": cfg.workers,
                          "device": device, "progress": progress}
    # one pass (and one exported network) for both splits; rows are train then validation
    f_all, ok_all = extract_features(model, CropTable.concat(train_t, val_t), cache_dir, **kw)
    n_tr = len(train_t)
    f_tr, ok_tr, f_va, ok_va = f_all[:n_tr], ok_all[:n_tr], f_all[n_tr:], ok_all[n_tr:]
    tr = _usable(train_t, ok_tr, "train", notes)
    va = _usable(val_t, ok_va, "validation", notes)
    if tr.size == 0:
        raise NothingUsableError("no readable training crops")
    y_tr = train_t.labels[tr].astype(np.float32)
    y_va = val_t.labels[va].astype(np.float32)
    x_va = torch.from_numpy(np.asarray(f_va[va], dtype=np.float32))

    torch.manual_seed(cfg.seed)  # the head's init must not depend on whether features came from the cache
    head = new_head(model.num_features)
    drop = nn.Dropout(protocol.model.drop_rate)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pw = pos_weight(train_t.labels[tr]) if cfg.balance == "weighted" else None
    gen = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        if cfg.balance == "sampler":
            order = np.fromiter(iter(balanced_sampler(train_t.labels[tr], cfg.seed + epoch)), dtype=np.int64)
        else:
            order = gen.permutation(tr.size)
        head.train()
        tot_loss = tot_ok = n_seen = 0.0
        for start in range(0, order.size, cfg.batch_size):
            b = np.sort(order[start:start + cfg.batch_size])  # sorted: contiguous memmap reads
            x = torch.from_numpy(np.asarray(f_tr[tr[b]], dtype=np.float32))
            y = torch.from_numpy(y_tr[b])
            logits = head(drop(x)).squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(b)
            tot_ok += float(((logits >= 0) == (y == 1)).sum())
            n_seen += len(b)
        head.eval()
        with torch.no_grad():
            p_va = torch.sigmoid(head(x_va).squeeze(1)).numpy() if va.size else np.empty(0)
        history.append(_epoch_record(epoch, tot_loss / n_seen, tot_ok / n_seen, y_va, p_va, started))
    with torch.no_grad():
        model.fc.weight.copy_(head.weight)
        model.fc.bias.copy_(head.bias)
    for p in model.parameters():
        p.requires_grad_(True)
    return history, y_va.astype(np.int64), p_va, va


# --------------------------------------------------------------------------- full mode


def _cosine(opt: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _ema(model: nn.Module, decay: float) -> Any:
    """timm's weight EMA, warmed up (the average follows the weights closely in the first steps)."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader, device: torch.device,
             tta_flip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model.eval()
    ps, ys, oks = [], [], []
    for x, y, ok in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = score_logits(model, x, tta_flip).float()
        ps.append(torch.sigmoid(logits).cpu().numpy())
        ys.append(y.numpy())
        oks.append(ok.numpy())
    if not ps:
        return np.empty(0), np.empty(0), np.empty(0, bool)
    return np.concatenate(ps), np.concatenate(ys), np.concatenate(oks) > 0


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(state, tmp)


def _save_weights(path: Path, model: nn.Module) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(sd, str(tmp))


@contextmanager
def _saving(path: Path, kept: str) -> Iterator[None]:
    """A save the disk refuses (full, read-only) becomes one line naming the file and saying what is kept.

    torch.save reports a full disk as a RuntimeError and safetensors as a SafetensorError, not an OSError.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip().splitlines()
                                                                                or [type(exc).__name__])[0]
        raise DfdetectError(f"cannot save ({why}); {kept}", path=path) from None


_KEEP_CHECKPOINT = ("the last checkpoint written is kept: free space and run the same command again to resume "
                    "from it")


def _decoded(table: CropTable, size: int, cache_dir: Path, info: DistInfo) -> DecodedCrops:
    """The crops decoded once, read every epoch: rank 0 writes the cache, the other ranks wait and read it."""
    if not info.is_main:
        torch.distributed.barrier()
    decoded = decode_crops(table, size, cache_dir)
    if info.is_main and info.distributed:
        torch.distributed.barrier()
    return decoded


def crop_landmarks(table: CropTable, size: int, cache_dir: Path, *, finder: Any = None) -> np.ndarray:
    """Five face points for each real crop of ``table``, in the pixels of the crop resized to ``size``.

    ``(n, 5, 2)`` float32, NaN for fakes and for crops where none was found; found once and cached by the
    files' fingerprint. ``finder(bgr) -> (5, 2) | None`` defaults to YuNet (``faces.landmarks_for_crop``).
    """
    key = hashlib.sha256(f"{table.fingerprint()}\0{size}\0landmarks-v1".encode()).hexdigest()[:20]
    path = cache_dir / f"{key}.landmarks.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(table), 5, 2):
                return cached
        except (OSError, ValueError):
            pass  # damaged: find them again
    if finder is None:
        from dfdetect.faces import landmarks_for_crop as finder
    out = np.full((len(table), 5, 2), np.nan, np.float32)
    for i in np.flatnonzero(table.labels == 0):
        img = read_image(table.paths[i])
        if img is None:
            continue
        pts = finder(img)
        if pts is not None:
            h, w = img.shape[:2]
            out[i] = np.asarray(pts, np.float32).reshape(5, 2) * np.array([size / w, size / h], np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, out, allow_pickle=False)
    return out


@torch.no_grad()
def _scale_head(model: BackboneClassifier, factor: float) -> None:
    """Multiply the logit by ``factor``: the head is linear, so its weight and bias scale."""
    head = model.get_classifier()
    head.weight.mul_(factor)
    if head.bias is not None:
        head.bias.mul_(factor)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weights only: decaying biases and BatchNorm scales pulls them to 0, which no one wants."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _members_at_once(protocol: Protocol, info: DistInfo) -> int:
    """How many ensemble members train side by side, each in its own thread on one torch thread (1 = in turn).

    Why: on a CPU with no more cores than members, single-threaded steps side by side beat one multi-threaded
    step, because the step is bound by memory traffic and OpenMP threads wait on each other. On this
    project's 2 cores MobileNetV2 at 128 px (batch 32) trained at 68-70 img/s as two or three members at
    once against 50-60 img/s (once 80) for one member on 2 threads; the whole train call ran 1.13-1.15x
    faster (bench/train_members.py).
    With more cores than members each member keeps all of them, in turn. Dropout and stochastic depth draw
    from torch's one global generator, which threads would share in no fixed order, so they keep members
    in turn, where a run repeats exactly; so do DataLoader worker processes, which must not be forked from
    a process running several threads.
    """
    m, cfg, cores = protocol.model, protocol.train, torch.get_num_threads()
    if (cfg.mode != "full" or m.ensemble < 2 or not cfg.parallel_members or info.distributed
            or info.device.type != "cpu" or cfg.workers > 0 or m.drop_rate > 0 or m.drop_path_rate > 0):
        return 1
    # at most two threads per core: three members on two cores measured the same 68-70 img/s as two
    return min(m.ensemble, 2 * cores) if 2 <= cores <= m.ensemble else 1


class _Stopped(Exception):
    """Another member failed, or the run was interrupted: this one stops at its next batch."""


def _train_full(model: BackboneClassifier, train_t: CropTable, val_t: CropTable, protocol: Protocol,
                out_dir: Path, decoded: tuple[DecodedCrops, DecodedCrops], info: DistInfo, notes: list[str],
                progress: ProgressCallback | None, blend_fn: Any, *, threads: int | None = None,
                stop: threading.Event | None = None, landmark_cache: Path | None = None,
                landmark_finder: Any = None) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray, np.ndarray]:
    """``decoded``: the train and validation crops, decoded once for every member. ``threads``: a fixed torch
    thread count (members side by side), else chosen again every epoch."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    cfg, size, device = protocol.train, protocol.model.input_size, info.device
    if threads is not None:
        torch.set_num_threads(threads)
    dc = model.data_config
    dec_tr, dec_va = decoded
    landmarks = None
    if cfg.pseudo_fakes == "sbi" and cfg.sbi_mask == "landmarks":
        landmarks = crop_landmarks(train_t, size, out_dir / "features" if landmark_cache is None else landmark_cache,
                                   finder=landmark_finder)
        notes.append(f"SBI masks from landmarks on {int(np.isfinite(landmarks[:, 0, 0]).sum())} of "
                     f"{int((train_t.labels == 0).sum())} real training crops (the rest: the ellipse)")
    if cfg.pseudo_fakes == "sbi" or cfg.pairs:
        sbi = 0.0 if cfg.pseudo_fakes != "sbi" else (0.5 if cfg.sbi_mix else 1.0)
        train_ds: CropDataset = PairDataset(train_t, input_size=size, data_config=dc, augment=cfg.augment,
                                            erase=cfg.erase, seed=cfg.seed, sbi=sbi, blend_fn=blend_fn,
                                            decoded=dec_tr, launder=cfg.launder,
                                            landmarks=landmarks)
        per_batch = max(1, cfg.batch_size // 2)  # each item is a (real, fake) pair
    else:
        train_ds = CropDataset(train_t, input_size=size, data_config=dc, augment=cfg.augment, erase=cfg.erase,
                               seed=cfg.seed, decoded=dec_tr, launder=cfg.launder)
        per_batch = cfg.batch_size
    val_ds = CropDataset(val_t, input_size=size, data_config=dc, decoded=dec_va)
    if info.distributed:
        sampler: Any = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=False)
    elif cfg.balance == "sampler" and not isinstance(train_ds, PairDataset):  # pairs are balanced already
        sampler = balanced_sampler(train_t.labels, cfg.seed)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
    # Under DDP the sampler shards the data, so class balance falls back to a weighted loss.
    weighted = cfg.balance == "weighted" or (cfg.balance == "sampler" and info.distributed)
    pw = pos_weight(train_t.labels).to(device) if weighted and not isinstance(train_ds, PairDataset) else None
    loader_kw: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda",
                                 "persistent_workers": False}
    train_dl = DataLoader(train_ds, batch_size=per_batch, sampler=sampler, drop_last=len(train_ds) > per_batch,
                          **loader_kw)
    val_dl = DataLoader(val_ds, batch_size=max(cfg.batch_size, 64), shuffle=False, **loader_kw)

    model = model.to(device).to(memory_format=torch.channels_last)
    net: nn.Module = model
    ema = _ema(model, cfg.ema) if cfg.ema > 0 else None
    scored = ema.module if ema is not None else model  # what is validated, kept and saved
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps = max(1, len(train_dl)) * cfg.epochs
    sched = _cosine(opt, steps, warmup=round(cfg.warmup * steps))

    ckpt, best_path = out_dir / CHECKPOINT_FILE, out_dir / BEST_FILE
    key = _protocol_hash(protocol, train_t.fingerprint() + val_t.fingerprint())
    history: list[dict[str, float]] = []
    start_epoch, best_auc, bad_epochs = 1, -math.inf, 0
    best_p = np.empty(0)
    state: dict[str, Any] = {}
    if ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs the resume
            notes.append(f"{ckpt}: unreadable ({type(exc).__name__}); starting afresh")
    if state:
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
            history, best_auc, bad_epochs = list(state["history"]), float(state["best_auc"]), int(state["bad_epochs"])
            best_p = state["best_p"].numpy()
            start_epoch = int(state["epoch"]) + 1
            notes.append(f"resumed from {ckpt} after epoch {start_epoch - 1}")
        else:
            notes.append(f"{ckpt}: from another configuration or data; starting afresh")
    if not history and info.is_main:
        best_path.unlink(missing_ok=True)  # a best epoch of another run must never be loaded at the end
    if info.distributed:
        torch.distributed.barrier()
    done = bool(history) and (bad_epochs >= cfg.patience)
    okv: np.ndarray | None = None
    cpu_then = cpu_sample()

    for epoch in range(start_epoch, cfg.epochs + 1):
        if done:
            break
        started = time.perf_counter()
        # Every draw of this epoch follows from (seed, epoch), so a resumed epoch equals the uninterrupted one:
        # the sampler's order, and dropout / stochastic depth from the global generators.
        _seed_everything(_epoch_seed(cfg.seed, epoch))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        else:
            sampler.generator.manual_seed(_epoch_seed(cfg.seed, epoch))
        train_ds.set_epoch(epoch)
        if device.type == "cpu" and epoch > start_epoch and threads is None:
            # A run started just after other work would keep its first choice for hours: each epoch looks
            # again, at what other processes used during the last one.
            torch.set_num_threads(auto_threads(info.world_size, running=torch.get_num_threads(), since=cpu_then))
        cpu_then = cpu_sample()
        net.train()
        tot_loss = tot_ok = n_seen = 0.0
        for x, y, ok in train_dl:
            if stop is not None and stop.is_set():
                raise _Stopped
            if x.ndim == 5:  # pairs: (B, 2, 3, S, S) -> (2B, 3, S, S), half real half fake
                x, y, ok = x.flatten(0, 1), y.flatten(), ok.flatten()
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y, ok = y.to(device), ok.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = net(x).float().squeeze(1)
            loss = _bce(logits, y, ok, pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model, step=sched.last_epoch)
            n = float(ok.sum())
            tot_loss += loss.item() * n
            tot_ok += float((((logits >= 0) == (y == 1)).float() * ok).sum())
            n_seen += n
            if progress is not None and info.is_main:
                progress(len(x))
        # Head mode refuses this up front; here unreadable rows are masked, so an all-unreadable split
        # would otherwise "train" on nothing and save a detector (rank 0 decides, so all ranks stop together).
        if bool(broadcast_object(n_seen == 0, info)):
            raise NothingUsableError("no readable training crops (every one failed to decode)")
        # Every rank scores the whole (small) validation set with identical weights. Epochs are compared
        # without flip-TTA (half the cost); the kept epoch is scored as the detector scores, below.
        p, yv, okv = _predict(scored, val_dl, device)
        if not okv.any():
            raise NothingUsableError("no readable validation crops (every one failed to decode)")
        p, yv = p[okv], yv[okv]
        rec = _epoch_record(epoch, tot_loss / max(n_seen, 1), tot_ok / max(n_seen, 1), yv, p, started)
        history.append(rec)
        auc = rec["val_auc"]
        score = -rec["val_loss"] if math.isnan(auc) else auc  # one-class validation: fall back to loss
        improved = bool(broadcast_object(score > best_auc, info))
        if improved:
            best_auc, bad_epochs, best_p = score, 0, p
            if info.is_main:
                with _saving(best_path, _KEEP_CHECKPOINT):
                    _save_weights(best_path, scored)
        else:
            bad_epochs += 1
        done = bool(broadcast_object(bad_epochs >= cfg.patience, info))
        if info.is_main:
            with _saving(ckpt, _KEEP_CHECKPOINT):
                _save_state(ckpt, {"key": key, "epoch": epoch, "model": model.state_dict(),
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                   "history": history, "best_auc": best_auc, "bad_epochs": bad_epochs,
                                   "best_p": torch.from_numpy(np.asarray(best_p, dtype=np.float32)),
                                   **({"ema": ema.module.state_dict()} if ema is not None else {})})
        if info.distributed:
            torch.distributed.barrier()
    if best_path.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best_path)))
    tta = protocol.model.tta_flip
    if tta or okv is None or best_p.size != int(okv.sum()):  # TTA, or a finished run resumed: score again
        best_p, _, okv = _predict(model, val_dl, device, tta)
        best_p = best_p[okv]
    okv_idx = np.flatnonzero(okv)
    return history, val_t.labels[okv_idx], np.asarray(best_p, dtype=np.float64), okv_idx


# --------------------------------------------------------------------------- entry point


def train(table: CropTable, protocol: Protocol, out_dir: str | Path, *, progress: ProgressCallback | None = None,
          cache_dir: str | Path | None = None, device: str = "auto", blend_fn: Any = None,
          landmark_finder: Any = None) -> TrainResult:
    """Split ``table``, fit ``protocol``'s model, choose the threshold on validation, save the run.

    Writes ``detector.safetensors``, ``history.json`` and ``config.yaml`` to ``out_dir`` (rank 0 only
    under torchrun). ``cache_dir`` holds frozen features and decoded crops (default
    ``out_dir/features``); share it between runs over the same crops to reuse them. ``blend_fn``
    replaces ``sbi.self_blend`` and ``landmark_finder`` YuNet's five points (tests).
    """
    out_dir = Path(out_dir)
    cfg = protocol.train
    t0 = time.perf_counter()
    _seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    info = init_distributed(device)  # also sets this process's CPU threads (distributed.auto_threads)
    try:
        train_t, val_t, test_t = split_table(table, cfg)
        notes = list(train_t.notes)
        if cfg.mode == "head" and protocol.model.tta_flip:
            # cached features are of the unflipped crops; the threshold must match how the detector scores
            protocol = protocol.model_copy(update={"model": protocol.model.model_copy(update={"tta_flip": False})})
            notes.append("tta_flip applies to mode='full' only; the head-mode detector scores without it")
        if cfg.mode == "head" and protocol.model.ensemble > 1:
            # one frozen backbone: members would differ only in a linear head's seed
            protocol = protocol.model_copy(update={"model": protocol.model.model_copy(update={"ensemble": 1})})
            notes.append("ensemble applies to mode='full' only; head mode trains one head")
        if len(val_t) == 0:
            raise NothingUsableError("the validation split is empty; add data or raise val_fraction")
        _check_classes(train_t, val_t, cfg, notes)
        m = protocol.model
        cache = Path(cache_dir) if cache_dir else out_dir / "features"
        models: list[BackboneClassifier] = []
        runs: list[tuple[Protocol, Path]] = []  # each member's protocol (its own seed) and folder
        for k in range(m.ensemble):
            member, member_dir = protocol, out_dir
            if m.ensemble > 1:  # (full mode) same split; own seed, set before the head is drawn, and own folder
                _seed_everything(cfg.seed + k)
                member = protocol.model_copy(update={"train": cfg.model_copy(update={"seed": cfg.seed + k})})
                member_dir = out_dir / f"member{k}"
                member_dir.mkdir(parents=True, exist_ok=True)
            models.append(create_backbone(m.backbone, pretrained=m.pretrained, weights=m.weights,
                                          srm_in_model=m.srm_in_model, pool=m.pool, num_classes=1,
                                          drop_rate=m.drop_rate,
                                          drop_path_rate=m.drop_path_rate or None))  # None: bodies without it
            runs.append((member, member_dir))
        at_once = _members_at_once(protocol, info)
        member_notes: list[list[str]] = [[] for _ in models]
        if cfg.mode == "full":  # once, before the members start: side by side they would each decode the crops
            decoded = _decoded(train_t, m.input_size, cache, info), _decoded(val_t, m.input_size, cache, info)

        def fit(k: int, stop: threading.Event) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray, np.ndarray]:
            if cfg.mode == "head":
                return _train_head(models[k], train_t, val_t, protocol, cache, info.device, member_notes[k],
                                   progress if info.is_main else None)
            return _train_full(models[k], train_t, val_t, runs[k][0], runs[k][1], decoded, info, member_notes[k],
                               progress, blend_fn, threads=1 if at_once > 1 else None, stop=stop,
                               landmark_cache=cache, landmark_finder=landmark_finder)

        fitted = run_threads([partial(fit, k) for k in range(len(models))], at_once)
        if at_once > 1:
            notes.append(f"{m.ensemble} members trained side by side, {at_once} at a time, one CPU thread each")
        history: list[dict[str, float]] = []
        for k, (hist, val_y, _, va) in enumerate(fitted):
            notes += member_notes[k]
            history += [{**r, "member": k} for r in hist] if m.ensemble > 1 else hist
        members = [net.cpu().eval() for net in models]
        member_p = [f[2] for f in fitted]
        val_p = member_p[0]
        if len(members) > 1:  # the ensemble's validation scores, as it scores: the mean member logit
            val_p = torch.sigmoid(torch.logit(torch.from_numpy(np.stack(member_p)), eps=1e-12).mean(0)).numpy()
        temperature = 1.0
        if cfg.mode == "full" and cfg.calibration == "temperature" and np.unique(val_y).size > 1:
            temperature = fit_temperature(val_y, val_p)
            for net in members:  # logit / T, inside the network: ONNX export and every scorer get it too
                _scale_head(net, 1.0 / temperature)
            val_p = apply_temperature(val_p, temperature)
            notes.append(f"calibrated: temperature {temperature:.3f} fitted on validation, folded into the last layer")
        model = ensemble_of(members)
        # one class in validation (SBI on real crops alone): nothing to choose on (noted); the fixed 0.5
        threshold = choose_threshold(val_y, val_p, cfg.threshold) if np.unique(val_y).size > 1 else 0.5
        detector = Detector.from_model(model, protocol, threshold)
        if info.is_main:
            summary = {
                "threshold": threshold, "threshold_method": cfg.threshold, "temperature": temperature, "weights": model.weights_id,
                "counts": {"train": train_t.counts(), "val": val_t.counts(), "test": test_t.counts()},
                "notes": notes, "wall_s": round(time.perf_counter() - t0, 2), "world_size": info.world_size,
                "device": str(info.device),
            }
            kept = (f"the trained model is kept in {', '.join(str(d / CHECKPOINT_FILE) for _, d in runs)}: free "
                    "space and run the same command again; it resumes there and saves without training again"
                    if cfg.mode == "full" else
                    f"the features cached in {cache} are kept: free space and run again (only the head is refit)")
            for name, write in ((DETECTOR_FILE, detector.save),
                                (HISTORY_FILE, lambda p: write_json(p, history)),
                                (CONFIG_FILE, lambda p: save_config(protocol, p)),
                                ("train.json", lambda p: write_json(p, summary))):
                with _saving(out_dir / name, kept):
                    write(out_dir / name)
        return TrainResult(detector, history, np.asarray(val_y, dtype=np.int64), np.asarray(val_p),
                           [val_t.videos[i] for i in va], out_dir,
                           {"train": train_t.counts(), "val": val_t.counts(), "test": test_t.counts()}, notes)
    finally:
        cleanup(info)
        torch.set_num_threads(threads)
