"""Frozen-backbone features, computed once and cached on disk.

With a frozen backbone the seed recomputed identical features every epoch. Here they are computed
once, streamed batch by batch into a disk-backed ``.npy`` (``np.lib.format.open_memmap``) that is
renamed into place only when complete, and reused while the key (backbone, weights, input size,
SRM, pooling, file list) is unchanged. Memory stays flat in the number of crops. On CPU the forward
pass runs on onnxruntime (:func:`onnx_featuriser`), elsewhere in PyTorch with BatchNorm folded.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from dfdetect._io import atomic_path, load_cached
from dfdetect.data.crops import CropTable
from dfdetect.data.torch_datasets import CropDataset
from dfdetect.errors import NothingUsableError
from dfdetect.model.backbones import BackboneClassifier
from dfdetect.parallel import ProgressCallback
from dfdetect.threads import cpu_threads

__all__ = ["FEATURES_SUFFIX", "OK_SUFFIX", "extract_features", "feature_key", "fold_batchnorm", "onnx_featuriser"]

T = TypeVar("T")

FEATURES_SUFFIX = ".features.npy"
OK_SUFFIX = ".ok.npy"  #: 1 per readable crop, 0 where the file could not be decoded


def feature_key(model: BackboneClassifier, table: CropTable, input_size: int) -> str:
    """Everything the pooled features depend on, hashed; a change in any part means a new cache file."""
    spec = {"backbone": model.backbone_name, "weights": model.weights_id, "input_size": input_size,
            "srm": model.srm is not None, "pool": model.pool, "mean": list(model.data_config["mean"]),
            "std": list(model.data_config["std"]), "files": table.fingerprint(), "v": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def fold_batchnorm(model: BackboneClassifier) -> BackboneClassifier:
    """An eval-only copy with each BatchNorm folded into the convolution just before it.

    Why: a frozen backbone's BatchNorm is a fixed affine map, so folding it into the conv weights gives
    the same features for about a third less CPU time (docs/QUALITY.md#measurements). Conv/BN pairs are found as adjacent siblings (timm's layout); the copy is checked
    against the original on a random batch and discarded if the outputs differ.
    """
    from timm.layers import BatchNormAct2d
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            if not isinstance(conv, nn.Conv2d) or type(bn) not in (nn.BatchNorm2d, BatchNormAct2d):
                continue
            if bn.running_mean is None or conv.out_channels != bn.num_features:
                continue
            parent._modules[a] = fuse_conv_bn_eval(conv, bn)
            parent._modules[b] = nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = x.to(next(model.parameters()).device)
    with torch.no_grad():
        want = model.eval().pool_features(model.forward_features(x))
        got = folded.pool_features(folded.forward_features(x))
    tol = 1e-3 * float(want.abs().max()) + 1e-5
    return folded if torch.allclose(want, got, rtol=1e-3, atol=tol) else model


@torch.no_grad()
def extract_features(model: BackboneClassifier, table: CropTable, cache_dir: str | Path, *, input_size: int,
                     batch_size: int = 64, workers: int = 0, device: str | torch.device = "cpu",
                     progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features for every crop: ``(features (n, C) memmap, ok (n,) bool)``.

    The features are ``model.pool_features(model.forward_features(x))``: exactly what the head
    sees in the seed's frozen model. A valid cache under ``cache_dir`` is reused without a forward pass.
    """
    cache_dir = Path(cache_dir)
    key = feature_key(model, table, input_size)
    path, ok_path = cache_dir / f"{key}{FEATURES_SUFFIX}", cache_dir / f"{key}{OK_SUFFIX}"
    n = len(table)
    if n == 0:
        raise NothingUsableError("no crops to featurise", path=cache_dir)
    hit = load_cached(path, ok_path)
    if hit is not None and hit[0].ndim == 2 and hit[0].shape[0] == n and hit[1].shape == (n,):
        if progress is not None:
            progress(n)
        return hit

    with cpu_threads() if torch.device(device).type == "cpu" else contextlib.nullcontext():
        return _extract(model, table, path, ok_path, input_size=input_size, batch_size=batch_size,
                        workers=workers, device=device, progress=progress)


class _Pooled(torch.nn.Module):
    """The frozen model up to the head's input, as one module the ONNX exporter can trace."""

    def __init__(self, model: BackboneClassifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.pool_features(self.model.forward_features(x))


def onnx_featuriser(model: BackboneClassifier, input_size: int) -> Callable[[torch.Tensor], np.ndarray] | None:
    """onnxruntime computing the pooled features on CPU, or None where it cannot be built or disagrees.

    Why: on CPU it is about twice as fast as eager PyTorch with BatchNorm folded, and the in-memory export
    is cheap (bench/frozen_study.py; docs/QUALITY.md#measurements). Its features are checked against
    torch's on a random batch before use.
    """
    from dfdetect.model.export import onnx_session

    pooled = _Pooled(model).eval()
    x = torch.randn(4, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        session = onnx_session(pooled, x[:1], threads=torch.get_num_threads(), spin=False)
        got = session.run(None, {"input": x.numpy()})[0]
    except Exception:  # noqa: BLE001 - a network the exporter cannot take is featurised by torch instead
        return None
    with torch.no_grad():
        want = pooled(x).numpy()
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max())):
        return None
    return lambda batch: session.run(None, {"input": batch.contiguous().numpy()})[0]


def _read_ahead(batches: Iterable[T]) -> Iterator[T]:
    """Yield each batch while a thread reads the next one.

    Why: decoding a crop costs about half its onnxruntime forward, and both release the GIL, so one reader
    thread hides most of it without the start-up of DataLoader worker processes (docs/QUALITY.md#measurements).
    """
    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, it, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, it, None)
            yield batch


@torch.no_grad()
def _extract(model: BackboneClassifier, table: CropTable, path: Path, ok_path: Path, *, input_size: int,
             batch_size: int, workers: int, device: str | torch.device,
             progress: ProgressCallback | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(table)
    model = model.eval().to(device)
    run = onnx_featuriser(model, input_size) if torch.device(device).type == "cpu" else None
    if run is None:
        folded = fold_batchnorm(model).to(memory_format=torch.channels_last)  # ~2x on CPU vs a contiguous model

        def run(x: torch.Tensor) -> np.ndarray:
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            return folded.pool_features(folded.forward_features(x)).float().cpu().numpy()

    ds = CropDataset(table, input_size=input_size, data_config=model.data_config, augment=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    ok = np.zeros(n, dtype=np.uint8)
    with atomic_path(path, suffix=".npy") as tmp:
        out = None
        start = 0
        for x, _, good in (loader if workers else _read_ahead(loader)):
            f = run(x)
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, f.shape[1]))
            out[start:start + len(f)] = f
            ok[start:start + len(f)] = good.numpy().astype(np.uint8)
            start += len(f)
            if progress is not None:
                progress(len(f))
        assert out is not None and start == n
        out.flush()
        del out
        # ok first: a features file without its ok file is treated as absent, so order keeps it valid.
        with atomic_path(ok_path, suffix=".npy") as tmp_ok:
            np.save(tmp_ok, ok)
    return np.load(path, mmap_mode="r"), ok.astype(bool)
