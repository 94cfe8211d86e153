"""Wall time of training an ensemble on this CPU: members side by side (one thread each) vs in turn.

Baseline, measured in the same run on the same crops: ``parallel_members=False``, each member in turn on
all the threads torch is given (2 here), as every ensemble trained before. dfdetect: the members side by
side, one thread each (``dfdetect.training.trainer`` does this on a CPU with no more cores than members). Both runs
train the default protocol on the same DFDC face crops from ``../shared/data/dfdc-faces``, already decoded
(the cache is filled before either clock starts), and the script checks that both trained the same
member-epochs. The runs alternate (baseline first) when ``--repeats`` is above 1, because this machine's speed
drifts by up to 20 % from minute to minute.

    nice -n 10 python bench/train_members.py                  # 3 members, 1 epoch, 1,200 train crops
    nice -n 10 python bench/train_members.py --members 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from quality import DATA, package_table, read_labels, split_groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--groups", type=int, default=800, help="source videos kept (2 crops each: real and fake)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        print(f"SKIP: {args.data}/labels.csv not found (../shared/data is absent here)")
        return 0
    from dfdetect.config import Protocol
    from dfdetect.data.crops import split_table
    from dfdetect.data.torch_datasets import decode_crops
    from dfdetect.training.trainer import train

    rows = read_labels(args.data)
    keep = set(sorted({g for _, _, g in rows})[:args.groups])
    table = package_table(args.data, split_groups([r for r in rows if r[2] in keep]))
    base = Protocol.default()
    base = base.model_copy(update={
        "model": base.model.model_copy(update={"ensemble": args.members}),
        "train": base.train.model_copy(update={"epochs": args.epochs, "val_fraction": 0.125})})
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        train_t, val_t, _ = split_table(table, base.train)
        for part in (train_t, val_t):
            decode_crops(part, base.model.input_size, cache)
        print(f"{len(train_t)} train and {len(val_t)} validation crops, {args.members} members x {args.epochs} "
              f"epoch(s), MobileNetV2 128 px, batch 32; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
              flush=True)
        times: dict[bool, list[float]] = {False: [], True: []}
        epochs: dict[bool, set[int]] = {False: set(), True: set()}
        for r in range(args.repeats):
            for side in (False, True):
                proto = base.model_copy(update={"train": base.train.model_copy(update={"parallel_members": side})})
                t0 = time.perf_counter()
                result = train(table, proto, Path(tmp) / f"run{r}-{side}", cache_dir=cache, device="cpu")
                times[side].append(time.perf_counter() - t0)
                epochs[side].add(len(result.history))
                how = next((n for n in result.notes if "side by side" in n), f"in turn, {torch.get_num_threads()} "
                           "threads each")
                print(f"  {'dfdetect (side by side)' if side else 'baseline (in turn)     '}: "
                      f"{times[side][-1]:6.1f} s  [{how}; {len(result.history)} member-epochs]", flush=True)
                if side and how.startswith("in turn"):
                    print("  note: the members ran in turn (a busy machine gives one thread): no comparison")
    if epochs[False] != epochs[True]:
        print(f"  note: the sides trained different member-epochs ({epochs[False]} vs {epochs[True]}): not comparable")
    base_s, ours_s = min(times[False]), min(times[True])
    print(f"baseline {base_s:.1f} s, dfdetect {ours_s:.1f} s: {base_s / ours_s:.2f}x (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
