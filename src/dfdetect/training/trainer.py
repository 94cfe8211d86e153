"""Fit a detector: the seed's frozen head on cached features, or a full fine-tune (optionally DDP).

``mode='head'`` is the seed's recipe: frozen backbone, global max pooling, a 1-unit sigmoid head,
Adam (lr 1e-4), BCE, batch 32, seeded 85/15 split. Because the backbone is frozen its features are
computed once (:mod:`dfdetect.training.features`) and the head trains on them: the same maths, far faster.

``mode='full'`` fine-tunes everything with augmentation, AdamW and a cosine schedule, optionally a
moving average of the weights (``ema``), early stopping on validation AUC, the best epoch kept, and a
checkpoint written atomically every epoch so a killed run resumes. Crops are decoded once into a
disk-backed array (:func:`dfdetect.data.torch_datasets.decode_crops`) and read from it every epoch. Under
``torchrun`` it runs DistributedDataParallel (see :mod:`dfdetect.training.distributed`). An ensemble's members
train side by side, one thread each, on a CPU with no more cores than members (:func:`_members_at_once`).

Either way the decision threshold is chosen on validation scores, never on test.

Why one file: head and full mode share the split, the checks, the threshold and the saved run; the
policies, loaders, distributed context and run folder already live in modules of their own.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from dfdetect._io import atomic_path, read_image, save_config, write_json
from dfdetect.config import Protocol, validation_line
from dfdetect.data.crops import CropTable, split_table
from dfdetect.data.torch_datasets import BlendFn, DecodedCrops, balanced_sampler, decode_crops, pos_weight
from dfdetect.errors import DfdetectError, NothingUsableError
from dfdetect.model.backbones import BackboneClassifier, create_backbone, ensemble_of, new_head
from dfdetect.model.calibration import apply_temperature, choose_threshold, fit_temperature
from dfdetect.model.detector import Detector, score_logits
from dfdetect.parallel import ProgressCallback, run_threads
from dfdetect.rundir import BEST_FILE, CHECKPOINT_FILE, CONFIG_FILE, HISTORY_FILE, RunDir
from dfdetect.synthetic.sbi import sbi_blend
from dfdetect.threads import auto_threads, cpu_sample
from dfdetect.training.distributed import DistInfo, cleanup, init_distributed
from dfdetect.training.loaders import TrainLoaders, make_loaders
from dfdetect.training.policies import EMA, BestWeights, EarlyStopping
from dfdetect.training.policies import saving as _saving

__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "HISTORY_FILE", "TrainResult", "train"]



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
        return float(roc_auc_score(y, p))


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
    from dfdetect.training.features import extract_features

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
    """Per-step linear warm-up, then cosine to 0.

    Why not ``timm.scheduler.CosineLRScheduler``: it draws the same curve (``warmup_lr_init=lr / (warmup + 1)``,
    ``warmup_prefix=True``, ``t_initial=total - warmup``) but rounds some steps differently (docs/QUALITY.md,
    measurements), so the shipped model's recipe would no longer reproduce it bit for bit, and its state would
    not load into existing checkpoints. torch's own ``LambdaLR`` keeps both.
    """
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


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


_KEEP_CHECKPOINT = ("the last checkpoint written is kept: free space and run the same command again to resume "
                    "from it")


def _decoded(table: CropTable, size: int, cache_dir: Path, info: DistInfo) -> DecodedCrops:
    """The crops decoded once, read every epoch: rank 0 writes the cache, the other ranks wait and read it."""
    if not info.is_main:
        info.barrier()
    decoded = decode_crops(table, size, cache_dir)
    if info.is_main:
        info.barrier()
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
        from dfdetect.preprocess.faces import landmarks_for_crop as finder
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


def _verdict_warnings(val_y: np.ndarray, val_p: np.ndarray, threshold: float) -> list[str]:
    """What a user must hear before trusting the saved detector: a validation AUC at or below chance (a tiny or
    mislabelled set), or a threshold that calls every validation crop one class (a saved threshold of 1.0 called
    every fake real, silently)."""
    y, p = np.asarray(val_y), np.asarray(val_p, np.float64)
    auc = _auc(y, p)
    if math.isnan(auc):  # one class: nothing to judge by
        return []
    out = []
    if auc <= 0.5:
        out.append(f"validation AUC {auc:.3f} is at or below chance: the detector has learnt nothing "
                   "usable (too little data, or labels swapped?)")
    called_fake = p >= threshold
    if called_fake.all() or not called_fake.any():
        out.append(f"the threshold {threshold:.4f} calls every validation crop "
                   f"{'fake' if called_fake.all() else 'real'}")
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
    step (the step is bound by memory traffic; docs/QUALITY.md#measurements). With more cores than members
    each member keeps all of them, in turn. Dropout and stochastic depth draw from torch's one global
    generator, which threads would share in no fixed order, so they keep members in turn, where a run repeats
    exactly; so do DataLoader worker processes, which must not be forked from a process running several threads.
    """
    m, cfg, cores = protocol.model, protocol.train, torch.get_num_threads()
    if (cfg.mode != "full" or m.ensemble < 2 or not cfg.parallel_members or info.distributed
            or info.device.type != "cpu" or cfg.workers > 0 or m.drop_rate > 0 or m.drop_path_rate > 0):
        return 1
    # at most two threads per core (three members on two cores ran no faster than two)
    return min(m.ensemble, 2 * cores) if 2 <= cores <= m.ensemble else 1


class _Stopped(Exception):
    """Another member failed, or the run was interrupted: this one stops at its next batch."""


def _sbi_landmarks(train_t: CropTable, protocol: Protocol, cache: Path, finder: Any,
                   notes: list[str]) -> np.ndarray | None:
    """SBI's five face points per real crop when its masks follow landmarks (else None: the ellipse)."""
    cfg = protocol.train
    if cfg.mode != "full" or cfg.pseudo_fakes != "sbi" or cfg.sbi_mask != "landmarks":
        return None
    landmarks = crop_landmarks(train_t, protocol.model.input_size, cache, finder=finder)
    notes.append(f"SBI masks from landmarks on {int(np.isfinite(landmarks[:, 0, 0]).sum())} of "
                 f"{int((train_t.labels == 0).sum())} real training crops (the rest: the ellipse)")
    return landmarks


def _resume(run: RunDir, key: str, parts: dict[str, Any], policies: list[Any],
            notes: list[str]) -> tuple[list[dict[str, float]], int]:
    """Load the checkpoint into ``parts`` (model, optimizer, scheduler) and ``policies`` when it is of this
    recipe and data; returns the history so far and the first epoch to run."""
    state: dict[str, Any] = {}
    if run.checkpoint.is_file():
        try:
            state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs the resume
            notes.append(f"{run.checkpoint}: unreadable ({type(exc).__name__}); starting afresh")
    if not state:
        return [], 1
    if state.get("key") != key:
        notes.append(f"{run.checkpoint}: from another configuration or data; starting afresh")
        return [], 1
    for name, part in parts.items():
        part.load_state_dict(state[name])
    for policy in policies:
        policy.load_state_dict(state)
    notes.append(f"resumed from {run.checkpoint} after epoch {int(state['epoch'])}")
    return list(state["history"]), int(state["epoch"]) + 1


def _train_epoch(net: nn.Module, model: nn.Module, data: TrainLoaders, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None, device: torch.device,
                 stop: threading.Event | None, progress: ProgressCallback | None) -> tuple[float, float, float]:
    """One pass over the training loader: (mean loss, accuracy, readable rows seen)."""
    net.train()
    tot_loss = tot_ok = n_seen = 0.0
    for x, y, ok in data.train:
        if stop is not None and stop.is_set():
            raise _Stopped
        if x.ndim == 5:  # pairs: (B, 2, 3, S, S) -> (2B, 3, S, S), half real half fake
            x, y, ok = x.flatten(0, 1), y.flatten(), ok.flatten()
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y, ok = y.to(device), ok.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(x).float().squeeze(1)
        loss = _bce(logits, y, ok, data.pos_weight)
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
        if progress is not None:
            progress(len(x))
    return tot_loss / max(n_seen, 1), tot_ok / max(n_seen, 1), n_seen


def _train_full(model: BackboneClassifier, train_t: CropTable, val_t: CropTable, protocol: Protocol,
                out_dir: Path, decoded: tuple[DecodedCrops, DecodedCrops], info: DistInfo, notes: list[str],
                progress: ProgressCallback | None, blend_fn: BlendFn, *, threads: int | None = None,
                stop: threading.Event | None = None, landmark_cache: Path | None = None,
                landmark_finder: Any = None) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray, np.ndarray]:
    """``decoded``: the train and validation crops, decoded once for every member. ``threads``: a fixed torch
    thread count (members side by side), else chosen again every epoch."""
    from torch.nn.parallel import DistributedDataParallel

    cfg, device, run = protocol.train, info.device, RunDir(out_dir)
    if threads is not None:
        torch.set_num_threads(threads)
    landmarks = _sbi_landmarks(train_t, protocol, landmark_cache or run.features, landmark_finder, notes)
    data = make_loaders(train_t, val_t, protocol, model.data_config, decoded, info, blend_fn=blend_fn,
                        landmarks=landmarks)

    model = model.to(device).to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    scored = ema.module if ema is not None else model  # what is validated, kept and saved
    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps = max(1, len(data.train)) * cfg.epochs
    sched = _cosine(opt, steps, warmup=round(cfg.warmup * steps))
    stopping = EarlyStopping(cfg.patience, agree=info.agree)
    best = BestWeights(run.best, writes=info.is_main, kept=_KEEP_CHECKPOINT)
    policies: list[Any] = [stopping, best, *([ema] if ema is not None else [])]  # checkpoint keys in this order

    key = _protocol_hash(protocol, train_t.fingerprint() + val_t.fingerprint())
    history, start_epoch = _resume(run, key, {"model": model, "optimizer": opt, "scheduler": sched}, policies,
                                   notes)
    if not history:
        best.clear()
    info.barrier()
    okv: np.ndarray | None = None
    cpu_then = cpu_sample()
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopping.stopped:
            break
        started = time.perf_counter()
        # Every draw of this epoch follows from (seed, epoch), so a resumed epoch equals the uninterrupted one:
        # the sampler's order, and dropout / stochastic depth from the global generators.
        _seed_everything(_epoch_seed(cfg.seed, epoch))
        data.set_epoch(epoch, _epoch_seed(cfg.seed, epoch))
        if device.type == "cpu" and epoch > start_epoch and threads is None:
            # A long run keeps looking at what other processes used during the last epoch.
            torch.set_num_threads(auto_threads(info.world_size, running=torch.get_num_threads(), since=cpu_then))
        cpu_then = cpu_sample()
        tr_loss, tr_acc, n_seen = _train_epoch(net, model, data, opt, sched, ema, device, stop,
                                               progress if info.is_main else None)
        # Unreadable rows are masked, so an all-unreadable split would otherwise "train" on nothing and save
        # a detector (rank 0 decides, so all ranks stop together).
        if bool(info.agree(n_seen == 0)):
            raise NothingUsableError("no readable training crops (every one failed to decode)")
        # Every rank scores the whole (small) validation set with identical weights. Epochs are compared
        # without flip-TTA (half the cost); the kept epoch is scored as the detector scores, below.
        p, yv, okv = _predict(scored, data.val, device)
        if not okv.any():
            raise NothingUsableError("no readable validation crops (every one failed to decode)")
        p, yv = p[okv], yv[okv]
        rec = _epoch_record(epoch, tr_loss, tr_acc, yv, p, started)
        history.append(rec)
        auc = rec["val_auc"]
        if stopping.update(-rec["val_loss"] if math.isnan(auc) else auc):  # one-class validation: the loss
            best.update(scored, p)
        if info.is_main:
            state = {"key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "history": history}
            for policy in policies:
                state.update(policy.state_dict())
            with _saving(run.checkpoint, _KEEP_CHECKPOINT):
                _save_state(run.checkpoint, state)
        info.barrier()
    best.restore(model)
    tta, best_p = protocol.model.tta_flip, best.scores
    if tta or okv is None or best_p.size != int(okv.sum()):  # TTA, or a finished run resumed: score again
        best_p, _, okv = _predict(model, data.val, device, tta)
        best_p = best_p[okv]
    okv_idx = np.flatnonzero(okv)
    return history, val_t.labels[okv_idx], np.asarray(best_p, dtype=np.float64), okv_idx


# --------------------------------------------------------------------------- entry point


def train(table: CropTable, protocol: Protocol, out_dir: str | Path, *, progress: ProgressCallback | None = None,
          cache_dir: str | Path | None = None, device: str = "auto", blend_fn: BlendFn = sbi_blend,
          landmark_finder: Any = None) -> TrainResult:
    """Split ``table``, fit ``protocol``'s model, choose the threshold on validation, save the run.

    Writes ``detector.safetensors``, ``history.json`` and ``config.yaml`` to ``out_dir`` (rank 0 only
    under torchrun). ``cache_dir`` holds frozen features and decoded crops (default
    ``out_dir/features``); share it between runs over the same crops to reuse them. ``blend_fn``
    makes the pseudo-fake pairs (:func:`dfdetect.synthetic.sbi.sbi_blend`; tests pass a cheap one) and ``landmark_finder`` YuNet's five points (tests).
    """
    try:  # model_copy skips validation: check the recipe once, here, before any work
        protocol = type(protocol).model_validate(protocol.model_dump())
    except ValidationError as exc:
        raise DfdetectError(f"invalid protocol: {validation_line(exc)}") from None
    out_dir = Path(out_dir)
    run = RunDir(out_dir)
    run.claim()
    cfg = protocol.train
    t0 = time.perf_counter()
    _seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    info = init_distributed(device)  # also sets this process's CPU threads (distributed.auto_threads)
    try:
        train_t, val_t, test_t = split_table(table, cfg)
        notes = list(train_t.notes)
        if len(val_t) == 0:
            raise NothingUsableError("the validation split is empty; add data or raise val_fraction")
        _check_classes(train_t, val_t, cfg, notes)
        m = protocol.model
        cache = Path(cache_dir) if cache_dir else run.features
        models: list[BackboneClassifier] = []
        runs: list[tuple[Protocol, Path]] = []  # each member's protocol (its own seed) and folder
        for k in range(m.ensemble):
            member, member_dir = protocol, out_dir
            if m.ensemble > 1:  # (full mode) same split; own seed, set before the head is drawn, and own folder
                _seed_everything(cfg.seed + k)
                member = protocol.model_copy(update={"train": cfg.model_copy(update={"seed": cfg.seed + k})})
                member_dir = run.member(k).path
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
        notes += _verdict_warnings(val_y, val_p, threshold)
        detector = Detector.from_model(model, protocol, threshold)
        if info.is_main:
            summary = {
                "threshold": threshold, "threshold_method": cfg.threshold, "temperature": temperature, "weights": model.weights_id,
                "counts": {"train": train_t.counts(), "val": val_t.counts(), "test": test_t.counts()},
                "notes": notes, "wall_s": round(time.perf_counter() - t0, 2), "world_size": info.world_size,
                "device": str(info.device),
            }
            kept = (f"the trained model is kept in {', '.join(str(RunDir(d).checkpoint) for _, d in runs)}: free "
                    "space and run the same command again; it resumes there and saves without training again"
                    if cfg.mode == "full" else
                    f"the features cached in {cache} are kept: free space and run again (only the head is refit)")
            for path, write in ((run.detector, detector.save),
                                (run.history, lambda p: write_json(p, history)),
                                (run.config, lambda p: save_config(protocol, p)),
                                (run.summary, lambda p: write_json(p, summary))):
                with _saving(path, kept):
                    write(path)
        return TrainResult(detector, history, np.asarray(val_y, dtype=np.int64), np.asarray(val_p),
                           [val_t.videos[i] for i in va], out_dir,
                           {"train": train_t.counts(), "val": val_t.counts(), "test": test_t.counts()}, notes)
    finally:
        cleanup(info)
        torch.set_num_threads(threads)
