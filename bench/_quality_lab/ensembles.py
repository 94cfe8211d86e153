"""How test AUC grows with ensemble size, from members already trained by ``bench/quality.py``.

Scores every member of each saved ``default`` detector (an ensemble's members one by one) on the bench's
validation and test crops, then every combination of 2, 3 and 4 members by their mean logit, as
``EnsembleClassifier`` scores. All runs must share the bench's split (split seed 0, training seed 0 for the
package's train/val draw), so that the validation crops are the same for every member.

    python bench/_quality_lab/ensembles.py r8=runs/quality-run8 ep10=runs/quality-ep10 px112=runs/quality-112

Why: single models spread 0.91-0.925 test AUC over seeds, more than any recipe change moved them; this shows
how many members it takes for the worst combination to clear a target, without training new ones.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality as q

from dfdetect.data import CropTable, split_table
from dfdetect.detector import Detector


def bench_splits(root: Path) -> tuple[CropTable, CropTable]:
    """(validation, test) exactly as ``quality.run_dfdetect`` hands them to ``dfdetect.train.train``."""
    table = q.package_table(root, q.split_groups(q.read_labels(root)))
    _, val, test_t = split_table(table, q.protocol_for(q.DEFAULT).train)
    return val, test_t


def member_logits(detector_path: Path, crops: dict[str, list[np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Each member's flip-TTA logits on each split (the detector's own preprocessing and input size)."""
    det = Detector.load(detector_path)
    out = []
    for member in getattr(det.model_, "members", [det.model_]):
        det.model_ = member
        p = {name: np.clip(det.predict_proba(c), 1e-7, 1 - 1e-7) for name, c in crops.items()}
        out.append({name: np.log(v / (1 - v)) for name, v in p.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="TAG=DIR, DIR being a bench --out folder with default/detector.safetensors")
    ap.add_argument("--data", type=Path, default=q.DATA)
    ap.add_argument("--max-size", type=int, default=4)
    ap.add_argument("--save", type=Path, default=None, help="write every member's logits and the labels (.npz)")
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        print(f"SKIP: {args.data}/labels.csv not found (../shared/data is absent here)")
        return 0
    torch.set_num_threads(q.cpu_threads())
    val, test = bench_splits(args.data)
    y = {"val": val.labels, "test": test.labels}
    crops = {"val": [cv2.imread(str(p)) for p in val.paths], "test": [cv2.imread(str(p)) for p in test.paths]}
    print(f"validation {len(val)} crops, test {len(test)} crops")
    logits: dict[str, dict[str, np.ndarray]] = {}
    for spec in args.runs:
        tag, _, folder = spec.partition("=")
        members = member_logits(Path(folder) / "default" / "detector.safetensors", crops)
        for k, m in enumerate(members):
            name = f"{tag}.m{k}" if len(members) > 1 else tag
            logits[name] = m
            print(f"{name:<12} val {roc_auc_score(y['val'], m['val']):.4f}  test {roc_auc_score(y['test'], m['test']):.4f}")
    if args.save:
        np.savez(args.save, **{f"y.{s}": v for s, v in y.items()},
                 **{f"{n}.{s}": v for n, m in logits.items() for s, v in m.items()})
    for size in range(2, min(args.max_size, len(logits)) + 1):
        scores = [{s: roc_auc_score(y[s], np.mean([logits[n][s] for n in combo], axis=0)) for s in y}
                  for combo in itertools.combinations(logits, size)]
        v, t = np.array([a["val"] for a in scores]), np.array([a["test"] for a in scores])
        print(f"{size} members: {len(scores)} combinations; val mean {v.mean():.4f} (min {v.min():.4f}); "
              f"test mean {t.mean():.4f}, min {t.min():.4f}, max {t.max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
