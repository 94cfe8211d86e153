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

from dfdetect.distributed import DistInfo, init_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "HF_HUB_OFFLINE": "1"})
    from safetensors.torch import save_file

    from dfdetect.config import ModelConfig, Protocol
    from dfdetect.data import build_crop_table
    from dfdetect.datasets import discover
    from dfdetect.train import train

    base = Protocol.default()
    p = base.model_copy(update={
        "model": ModelConfig(pretrained=False, input_size=32, pool="avg"),
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
    from dfdetect.backbones import create_backbone

    torch.manual_seed(0)  # train() seeds with TrainConfig.seed (0) before building: the same init
    start = create_backbone("mobilenet_v2", pretrained=False).state_dict()
    assert not torch.equal(a["fc.weight"], start["fc.weight"])  # it trained, and both ranks moved alike
    assert (tmp_path / "run" / "detector.safetensors").is_file()  # written once, by rank 0
