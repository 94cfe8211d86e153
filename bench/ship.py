"""Train the shipped detector, ``mobilenet_v2.dfdc_sbi``, on every DFDC crop we have, with a test split kept back.

Data: ``../shared/data/dfdc-faces`` + ``../shared/data/dfdc-faces-more`` (16,000 crops, 8,000 source videos).
Each set is split by ``original_video`` with ``bench/quality.split_groups`` (seed 0, 20 % test), so a fake
and its source never straddle; the test rows are marked ``is_test`` and never trained or tuned on (the
package draws its validation split, for early stopping, the threshold and the temperature, from the rest).

    nice -n 5 python bench/ship.py                 # -> runs/ship/mobilenet_v2.dfdc_sbi/ and runs/ship/ship.json

The recipe is :func:`recipe`: the default protocol with one member, SBI pseudo-fakes mixed with the real
fakes, laundering augmentations and temperature calibration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import package_table, read_labels, split_groups

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("dfdc-faces", "dfdc-faces-more")
NAME = "mobilenet_v2.dfdc_sbi"


def recipe():  # -> dfdetect.config.Protocol
    """The shipped model's protocol: what each lever was, in one place (docs/QUALITY.md has the figures)."""
    from dfdetect.config import Protocol

    p = Protocol.default()
    return p.model_copy(update={
        "model": p.model.model_copy(update={"ensemble": 1}),
        "train": p.train.model_copy(update={"pseudo_fakes": "sbi", "sbi_mix": True, "launder": True,
                                            "calibration": "temperature", "epochs": 7, "patience": 4}),
    })


def held_out_table(data: Path):  # -> dfdetect.data.CropTable
    """Both DFDC sets as one table, each set's test split (by original_video) marked ``is_test``."""
    from dfdetect.data import CropTable

    tables = []
    for name in SETS:
        root = data / name
        split = split_groups(read_labels(root), test=0.2, val=0.0, seed=0)
        tables.append(package_table(root, split))
    return CropTable.concat(*tables)


def test_scores(detector_path: Path, table) -> tuple[np.ndarray, np.ndarray]:  # (labels, P(fake)) of the test rows
    from dfdetect.detector import Detector

    det = Detector.load(detector_path)
    test = table.subset(np.flatnonzero(table.is_test))
    return test.labels, det.predict_proba([cv2.imread(str(p), cv2.IMREAD_COLOR) for p in test.paths])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/ship"))
    args = ap.parse_args(argv)
    missing = [s for s in SETS if not (args.data / s / "labels.csv").is_file()]
    if missing:
        print(f"skip: {', '.join(missing)} not under {args.data} (see ../shared/data/README.md)")
        return 0

    from sklearn.metrics import roc_auc_score

    from dfdetect.metrics import apply_temperature, expected_calibration_error
    from dfdetect.train import train

    table = held_out_table(args.data)
    run_dir = args.out / NAME
    t0 = time.perf_counter()
    result = train(table, recipe(), run_dir)
    train_s = time.perf_counter() - t0
    summary = json.loads((run_dir / "train.json").read_text())
    y, p = test_scores(run_dir / "detector.safetensors", table)
    t = float(summary.get("temperature", 1.0))
    report = {
        "name": NAME, "train_s": round(train_s, 1), "counts": result.counts, "temperature": t,
        "threshold": summary["threshold"], "test_auc": float(roc_auc_score(y, p)),
        "test_ece": expected_calibration_error(y, p),
        "test_ece_uncalibrated": expected_calibration_error(y, apply_temperature(p, 1.0 / t)),
        "val_auc": float(roc_auc_score(result.val_y, result.val_p)), "epochs": len(result.history),
    }
    (args.out / "ship.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
