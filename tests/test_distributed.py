"""DDP on CPU: two gloo processes fine-tune on a tiny set and finish with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dfdetect.training.distributed import DistInfo, init_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "HF_HUB_OFFLINE": "1"})
    from safetensors.torch import save_file

    from dfdetect.config import ModelConfig, Protocol
    from dfdetect.data.crops import build_crop_table
    from dfdetect.data.sources import discover
    from dfdetect.training.trainer import train

    base = Protocol.default()
    p = base.model_copy(update={
        "model": ModelConfig(pretrained=False, input_size=32, pool="avg", tta_flip=False, ensemble=1),
        "train": base.train.model_copy(update={"epochs": 1, "batch_size": 4, "split": "random", "augment": True}),
    })
    r = train(build_crop_table(discover(root), None), p, Path(out) / "run", device="cpu")
    state = {k: v.contiguous() for k, v in r.detector.model_.state_dict().items()}
    save_file(state, str(Path(out) / f"rank{rank}.safetensors"), metadata={"world": str(r.history and world)})


def test_single_process_is_the_default(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(device=torch.device("cpu")) and info.is_main and not info.distributed


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    from safetensors.torch import load_file

    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(8):
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data" / label / f"{i}.png"), img)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "data"), str(tmp_path)), nprocs=2, join=True)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from dfdetect.model.backbones import create_backbone

    torch.manual_seed(0)  # train() seeds with TrainConfig.seed (0) before building: the same init
    start = create_backbone("mobilenet_v2", pretrained=False).state_dict()
    assert not torch.equal(a["fc.weight"], start["fc.weight"])  # it trained, and both ranks moved alike
    assert (tmp_path / "run" / "detector.safetensors").is_file()  # written once, by rank 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
def test_cuda_full_and_head_mode_then_cpu_inference(tmp_path):
    """device='auto' picks the GPU; the saved detector (the default's two-member ensemble, the seed's single
    head) scores the same crops on the CPU."""
    import json

    from dfdetect.config import ModelConfig, Protocol
    from dfdetect.data.crops import build_crop_table
    from dfdetect.data.sources import discover
    from dfdetect.training.trainer import train

    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(16):
            img = rng.integers(0, 120, (48, 48, 3), dtype=np.uint8)
            if label == "fake":
                img[:, :16] = 250
            cv2.imwrite(str(tmp_path / "data" / label / f"{i}.png"), img)
    table = build_crop_table(discover(tmp_path / "data"), None)
    for base, mode in ((Protocol.default(), "full"), (Protocol.seed(), "head")):
        p = base.model_copy(update={"model": ModelConfig(pretrained=False, input_size=64, pool=base.model.pool,
                                                         ensemble=base.model.ensemble, tta_flip=False),
                                    "train": base.train.model_copy(update={"epochs": 2, "batch_size": 8,
                                                                           "split": "random"})})
        r = train(table, p, tmp_path / mode)
        assert json.loads((tmp_path / mode / "train.json").read_text())["device"].startswith("cuda")
        assert next(r.detector.model_.parameters()).device.type == "cpu"
        assert len(getattr(r.detector.model_, "members", [None])) == base.model.ensemble
        assert not any("side by side" in n for n in r.notes)  # one GPU: members in turn, each with all of it
        crops = [cv2.imread(str(table.paths[table.videos.index(v)])) for v in r.val_videos]
        # the GPU ran in bf16 autocast (full mode) or fp32 (head); the CPU reruns in fp32
        np.testing.assert_allclose(r.detector.predict_proba(crops), r.val_p, atol=0.05)


@pytest.mark.parametrize("load, running, want", [
    (0.1, 1, 2),   # idle machine, this process just starting: both cores
    (1.9, 1, 1),   # another process keeps a core busy: one thread
    (2.0, 2, 2),   # this process's own 2 threads are the whole load: keep both (no 2 -> 1 -> 2 flapping)
    (3.0, 2, 1),   # its 2 threads plus another busy process: back to one
    (9.0, 1, 1),   # a crowded machine: never fewer than one
])
def test_auto_threads_counts_only_other_processes_load(monkeypatch, load, running, want):
    from dfdetect import threads as D

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(D, "_cores", lambda: 2)
    monkeypatch.setattr(D.os, "getloadavg", lambda: (load, load, load))
    assert D.auto_threads(running=running) == want


def test_auto_threads_measures_other_processes_since_a_sample(monkeypatch):
    """/proc/stat, not the lagging load average: an idle machine gets both cores back whatever the load says."""
    from dfdetect import threads as D

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(D, "_cores", lambda: 2)
    monkeypatch.setattr(D.os, "getloadavg", lambda: (2.0, 2.0, 2.0))  # stale: says someone else is busy
    before = D.CpuSample(wall=0.0, machine=100.0, own=50.0)
    for machine, own, want in ((110.0, 59.0, 2),    # 10 s: 10 busy core-s, 9 of them ours -> others 0.1 core
                               (118.0, 59.0, 1),    # others kept 0.9 core busy -> one thread
                               (100.0, 50.0, 2)):   # nothing at all happened: idle
        monkeypatch.setattr(D, "cpu_sample", lambda m=machine, o=own: D.CpuSample(10.0, m, o))
        assert D.auto_threads(running=1, since=before) == want
    # without a sample the load average decides (a stale 2.0: someone else is busy)
    assert D.auto_threads(running=1) == 1


def test_cpu_sample_reads_this_machine():
    from dfdetect import threads as D

    s = D.cpu_sample()
    if not Path("/proc/stat").is_file():
        assert s is None
        return
    assert s is not None and s.machine > 0 and s.own > 0 and s.wall > 0


def test_tune_sets_the_threads_once_for_the_process(monkeypatch):
    import torch

    from dfdetect import threads as D

    before = torch.get_num_threads()
    monkeypatch.setattr(D, "auto_threads", lambda world_size=1: 1)
    try:
        assert D.tune() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_limits_the_blas_pools_too_and_restores_them(monkeypatch):
    """numpy's OpenBLAS keeps its own threads, which torch.set_num_threads never reaches."""
    from threadpoolctl import threadpool_info

    from dfdetect import threads as D

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(D, "auto_threads", lambda world_size=1: 1)
    blas = lambda: [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    before, torch_before = blas(), torch.get_num_threads()
    with D.cpu_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert all(t == 1 for t in blas())
    assert blas() == before and torch.get_num_threads() == torch_before
