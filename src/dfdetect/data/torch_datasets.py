"""The torch side of a crop table: crops decoded once to a disk-backed array, Datasets and samplers.

Every augmentation draws from a generator seeded by ``(seed, epoch, index)``, so a batch is the same with
or without DataLoader workers. Pseudo-fakes come from a ``blend_fn`` the trainer passes in
(:func:`dfdetect.synthetic.sbi.sbi_blend` by default), so the data layer knows nothing of how fakes are made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from dfdetect._io import atomic_path, load_cached, read_image
from dfdetect.data.crops import CropTable
from dfdetect.data.labels import Label
from dfdetect.data.preprocess_spec import PreprocessSpec, resize_bgr
from dfdetect.data.transforms import augment_crop
from dfdetect.errors import NothingUsableError
from dfdetect.parallel import ProgressCallback

BlendFn = Callable[[np.ndarray, np.random.Generator, np.ndarray | None], tuple[np.ndarray, np.ndarray]]
"""(real BGR crop, rng, its five landmarks or None) -> (real, fake): how a pseudo-fake pair is made."""

__all__ = ["BlendFn", "CropDataset", "DecodedCrops", "PairDataset", "balanced_sampler", "decode_crops", "pos_weight"]


# --------------------------------------------------------------------------- decoded crops


DECODED_SUFFIX = ".crops.npy"


@dataclass
class DecodedCrops:
    """Every crop of a table decoded and resized once: ``images`` (n, S, S, 3) BGR uint8, ``ok`` (n,) bool."""

    images: np.ndarray
    ok: np.ndarray


def decode_crops(table: CropTable, size: int, cache_dir: str | Path, *,
                 progress: ProgressCallback | None = None) -> DecodedCrops:
    """Decode and resize every crop once into a disk-backed array that training reads each epoch.

    Why: a fine-tune reads each crop 20+ times; decoding PNG/JPEG and resizing every time cost about
    4 ms per crop here, against microseconds from a memory-mapped array. The array is written to a
    temporary ``.npy`` and renamed into place when complete, keyed by the files' fingerprint and the
    size, so a killed run rebuilds it and a changed file list never reads a stale one. Memory stays
    flat: rows are appended to the file one by one.
    """
    cache_dir = Path(cache_dir)
    key = hashlib.sha256(f"{table.fingerprint()}\0{size}\0v1".encode()).hexdigest()[:20]
    path, ok_path = cache_dir / f"{key}{DECODED_SUFFIX}", cache_dir / f"{key}.ok.npy"
    n = len(table)
    hit = load_cached(path, ok_path)
    if hit is not None and hit[0].shape == (n, size, size, 3) and hit[1].shape == (n,):
        if progress is not None:
            progress(n)
        return DecodedCrops(*hit)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ok = np.zeros(n, dtype=bool)
    blank = np.zeros((size, size, 3), np.uint8)
    # Plain appends, not a writable memmap: written pages would stay in this process's resident memory.
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (n, size, size, 3)})
        for i, p in enumerate(table.paths):
            img = read_image(p)
            ok[i] = img is not None
            fh.write((resize_bgr(img, size) if img is not None else blank).tobytes())
            if progress is not None:
                progress(1)
        fh.close()
        with atomic_path(ok_path, suffix=".npy") as tmp_ok:  # ok first: images without ok count as absent
            np.save(tmp_ok, ok)
    return DecodedCrops(np.load(path, mmap_mode="r"), ok)


# --------------------------------------------------------------------------- torch datasets


class CropDataset(TorchDataset):
    """Crops as ``(x, y, ok)`` with x normalised ``(3, S, S)``; an unreadable crop gives ok=0.

    Reads from ``decoded`` (see :func:`decode_crops`) when given, else from disk. Augmentation draws
    from a generator seeded by ``(seed, epoch, index)``; call :meth:`set_epoch` so each epoch draws anew.
    """

    def __init__(self, table: CropTable, *, input_size: int, data_config: dict[str, Any], augment: bool = False,
                 erase: float = 0.0, seed: int = 0, decoded: DecodedCrops | None = None, launder: bool = False):
        self.launder = launder
        self.paths = [str(p) for p in table.paths]
        self.labels = table.labels.astype(np.float32)
        self.input_size = input_size
        self.spec = PreprocessSpec.from_data_config(data_config, input_size)
        self.augment, self.erase = augment, erase
        self.seed, self.epoch = seed, 0
        if decoded is not None and decoded.images.shape[:2] != (len(self.paths), input_size):
            raise ValueError(f"decoded crops have shape {decoded.images.shape}; want ({len(self.paths)}, "
                             f"{input_size}, {input_size}, 3)")
        self.decoded = decoded

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def _tensor(self, bgr: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        rgb = self.spec.resize(bgr)
        if self.augment:
            rgb = augment_crop(rgb, rng, erase=self.erase, launder=self.launder)
        return torch.from_numpy(self.spec.normalise(rgb[None])[0])

    def _read(self, i: int) -> np.ndarray | None:
        """BGR uint8, or None when the file cannot be decoded."""
        if self.decoded is not None:
            return np.asarray(self.decoded.images[i]) if self.decoded.ok[i] else None
        return read_image(self.paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = self._read(i)
        ok = img is not None
        if not ok:
            img = np.zeros((self.input_size, self.input_size, 3), np.uint8)
        return self._tensor(img, self._rng(i)), torch.tensor(self.labels[i]), torch.tensor(float(ok))


class PairDataset(CropDataset):
    """Each item is a real crop and a fake, so every batch is half real, half fake.

    The fake is, with probability ``sbi``, a self-blended copy of the real (:func:`dfdetect.synthetic.sbi.self_blend`,
    pseudo-fakes as SBI trains); otherwise a fake that shares a group with the real when one exists
    (``same_group``: a DFDC fake and its source video, a Celeb-DF swap and its identity), else any fake.
    """

    def __init__(self, table: CropTable, *, input_size: int, data_config: dict[str, Any], augment: bool = False,
                 erase: float = 0.0, seed: int = 0, sbi: float = 0.0, same_group: bool = True,
                 decoded: DecodedCrops | None = None,
                 blend_fn: BlendFn | None = None, launder: bool = False,
                 landmarks: np.ndarray | None = None):
        super().__init__(table, input_size=input_size, data_config=data_config, augment=augment, erase=erase,
                         seed=seed, decoded=decoded, launder=launder)
        if landmarks is not None and landmarks.shape != (len(table), 5, 2):
            raise ValueError(f"landmarks have shape {landmarks.shape}; want ({len(table)}, 5, 2), NaN where none")
        self.landmarks = landmarks  #: in the pixels of the crop as read (decoded: input_size), NaN = none
        self.real = np.flatnonzero(table.labels == Label.REAL)
        self.fake = np.flatnonzero(table.labels == Label.FAKE)
        if self.real.size == 0:
            raise NothingUsableError("paired / SBI training needs real crops in the training split; found none")
        if self.fake.size == 0 and sbi <= 0:
            raise NothingUsableError("paired training needs fake crops in the training split; found none "
                                     "(or use pseudo_fakes='sbi')")
        self.sbi = 1.0 if self.fake.size == 0 else float(sbi)
        by_group: dict[str, list[int]] = {}
        for j in self.fake:
            for g in table.groups[j]:
                by_group.setdefault(g, []).append(int(j))
        self.partners = [sorted({j for g in table.groups[r] for j in by_group.get(g, ())}) if same_group else []
                         for r in self.real]
        if self.sbi > 0 and blend_fn is None:
            raise ValueError("SBI pairs need a blend_fn (dfdetect.synthetic.sbi.sbi_blend)")
        self.blend_fn = blend_fn

    def __len__(self) -> int:
        return int(self.real.size)

    def _blend(self, face: np.ndarray, rng: np.random.Generator, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(real, fake) for one pseudo-fake pair, from the row's landmarks when it has all five."""
        lm = None if self.landmarks is None else self.landmarks[row]
        return self.blend_fn(face, rng, lm if lm is not None and np.isfinite(lm).all() else None)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rng = self._rng(i)
        real = self._read(int(self.real[i]))
        if real is None:
            z = torch.zeros((2, 3, self.input_size, self.input_size))
            return z, torch.tensor([0.0, 1.0]), torch.zeros(2)
        if rng.random() < self.sbi:
            real, fake = self._blend(real, rng, int(self.real[i]))
        else:
            pool = self.partners[i] or self.fake
            fake = self._read(int(pool[rng.integers(len(pool))]))
        xs = [self._tensor(real, rng)]
        ok_fake = fake is not None
        xs.append(self._tensor(fake, rng) if ok_fake else torch.zeros_like(xs[0]))
        return torch.stack(xs), torch.tensor([0.0, 1.0]), torch.tensor([1.0, float(ok_fake)])


def balanced_sampler(labels: np.ndarray, seed: int, num_samples: int | None = None) -> torch.utils.data.Sampler:
    """Draw real and fake equally often (with replacement), the imbalance fix for training."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    w = 1.0 / np.maximum(counts[labels], 1.0)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double),
                                                  num_samples or labels.size, replacement=True, generator=g)


def pos_weight(labels: np.ndarray) -> torch.Tensor:
    """BCE ``pos_weight`` = n_real / n_fake, the class-weighted alternative to the sampler."""
    counts = np.bincount(labels, minlength=2).astype(np.float32)
    return torch.tensor(counts[0] / max(counts[1], 1.0))
