"""Held-out AUC on real DFDC faces: the seed recipe (a) against the default recipe (b), in one run.

Trains both through the package's one trainer (``dfdetect.training.trainer.train`` with ``Protocol.seed()`` and
``Protocol.default()``) on ``../shared/data/dfdc-faces`` (6,000 labelled 224 px crops), with the test crops
split off by ``original_video`` (a fake and its source never straddle sets; asserted), and prints the test
AUC of each side by side with wall times. Budget: under 40 minutes on 2 idle CPU cores.

    nice -n 10 python bench/quality.py                        # saves runs/quality/{seed,default}/detector.safetensors
    nice -n 10 python bench/quality.py --only default --lr 2e-3   # a probe: one change to (b)
    nice -n 10 python bench/quality.py --only default --protocol runs/x/config.yaml   # (b) from a recipe file
    dfdetect evaluate runs/quality/default/detector.safetensors <labelled folder>

How the default recipe was chosen, and every run of this bench: docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dfdc-faces"
VAL_FRACTION = 0.125  #: of the non-test crops: 600 validation crops here
# recipe probes on the command line -> (Protocol section, its field); they change (b) only
PROBES = {"epochs": ("train", "epochs"), "lr": ("train", "lr"), "erase": ("train", "erase"),
          "size": ("model", "input_size"), "drop_rate": ("model", "drop_rate"),
          "drop_path": ("model", "drop_path_rate"), "pool": ("model", "pool"), "ensemble": ("model", "ensemble"),
          "seed": ("train", "seed")}


# ----------------------------------------------------------------------------------------------- data
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


def package_table(root: Path, split: dict):  # -> dfdetect.data.crops.CropTable
    """The bench's crops as a dfdetect table: this split's rows only, its test rows marked ``is_test`` (the
    package draws train/validation from the rest)."""
    from dfdetect.data.crops import CropTable, build_crop_table
    from dfdetect.data.sources import discover

    table = build_crop_table(discover(root), None)
    keep = {str((root / p).resolve()) for s in split.values() for p, _, _ in s}
    test = {str((root / p).resolve()) for p, _, _ in split["test"]}
    table = table.subset([i for i, p in enumerate(table.paths) if str(Path(p).resolve()) in keep])
    return CropTable(table.paths, table.labels, table.videos, table.groups,
                     np.array([str(Path(p).resolve()) in test for p in table.paths]))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if np.unique(y).size > 1 else math.nan


# ------------------------------------------------------------------------------------------ recipes
def recipe(name: str, *, protocol_file: Path | None = None, updates: dict[str, dict[str, Any]] | None = None):
    """``Protocol.seed()`` or ``Protocol.default()`` (or, for (b), a protocol YAML file), validation 1/8 of
    the non-test crops, with the probes' ``updates`` applied."""
    from dfdetect.config import Protocol, load_protocol

    if name == "default" and protocol_file is not None:
        p = load_protocol(protocol_file)
    else:
        p = Protocol.seed() if name == "seed" else Protocol.default()
    updates = {"train": {"val_fraction": VAL_FRACTION}} | {k: dict(v) for k, v in (updates or {}).items()}
    updates["train"].setdefault("val_fraction", VAL_FRACTION)
    return p.model_copy(update={section: getattr(p, section).model_copy(update=fields)
                                for section, fields in updates.items()})


def run(name: str, protocol, root: Path, split: dict, out_dir: Path) -> dict:
    """Train through ``dfdetect.training.trainer.train`` on the non-test crops, score the held-out test crops with the
    saved Detector (the file ``dfdetect evaluate`` loads)."""
    import cv2

    from dfdetect.model.detector import Detector
    from dfdetect.training.trainer import train

    t0 = time.perf_counter()
    table = package_table(root, split)
    run_dir = out_dir / name
    result = train(table, protocol, run_dir)
    t_train = time.perf_counter() - t0
    det = Detector.load(run_dir / "detector.safetensors")
    test_t = table.subset(np.flatnonzero(table.is_test))
    p = det.predict_proba([cv2.imread(str(x), cv2.IMREAD_COLOR) for x in test_t.paths])
    return {"recipe": name, "protocol": protocol.recipe().model_dump(mode="json"),
            "test_auc": auc(test_t.labels, p), "val_auc": auc(result.val_y, result.val_p),
            "n": {"train": result.counts["train"]["crops"], "val": result.counts["val"]["crops"], "test": len(test_t)},
            "train_s": t_train, "wall_s": time.perf_counter() - t0, "history": result.history,
            "detector": str(run_dir / "detector.safetensors"), "threshold": det.threshold_}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("runs/quality"), help="metrics.json and one run folder per recipe")
    ap.add_argument("--only", choices=("seed", "default"), default=None)
    ap.add_argument("--protocol", type=Path, default=None,
                    help="(b) from this protocol YAML (a run's config.yaml) instead of Protocol.default()")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: keep about this many groups")
    ap.add_argument("--epochs", type=int, default=None, help="override the (b) epochs (per member)")
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
    rows = read_labels(args.data)
    if args.limit:
        groups = sorted({g for _, _, g in rows})[:: max(1, len({g for _, _, g in rows}) // args.limit)]
        rows = [r for r in rows if r[2] in set(groups)]
    split = split_groups(rows)
    print(f"dfdc-faces: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])} crops; "
          "split by original_video, no group on two sides; trainer dfdetect.training.trainer.train", flush=True)
    results: dict[str, dict] = {}
    log: Callable[[str], None] = lambda m: print(m, flush=True)
    for name in ("seed", "default"):
        if args.only and name != args.only:
            continue
        probes = {a: getattr(args, a) for a in PROBES if getattr(args, a) is not None} if name == "default" else {}
        updates: dict[str, dict[str, Any]] = {}
        for a, v in probes.items():
            updates.setdefault(PROBES[a][0], {})[PROBES[a][1]] = v
        protocol = recipe(name, protocol_file=args.protocol, updates=updates)
        log(f"training ({'a' if name == 'seed' else 'b'}) {name} [{time.strftime('%H:%M:%S')}]: "
            f"{protocol.recipe_json()}")
        r = results[name] = run(name, protocol, args.data, split, args.out)
        log(f"  -> test AUC {r['test_auc']:.4f}  (val {r['val_auc']:.4f})  wall {r['wall_s'] / 60:.1f} min")
    print("\nrecipe                                        test AUC   wall min")
    for name, r in results.items():
        m, t = r["protocol"]["model"], r["protocol"]["train"]
        tag = "(a) seed: frozen MobileNetV2 128px max-pool" if name == "seed" else \
            f"(b) default: {m['backbone']} {m['input_size']}px {t['mode']} {m['ensemble']}x{t['epochs']}ep"
        print(f"{tag:<46}{r['test_auc']:>8.4f}{r['wall_s'] / 60:>11.1f}")
    print(f"total wall: {sum(r['wall_s'] for r in results.values()) / 60:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if "default" in results:
        print(f"(b) Detector: {results['default']['detector']}\n"
              f"  score another labelled folder: dfdetect evaluate {results['default']['detector']} <folder>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
