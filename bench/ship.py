"""Train the shipped detector, ``mobilenet_v2.dfdc_sbi``, on every DFDC crop we have, with a test split kept back.

Data: ``../shared/data/dfdc-faces`` + ``../shared/data/dfdc-faces-more`` (16,000 crops, 8,000 source videos).
Each set is split by ``original_video`` with ``bench/quality.split_groups`` (seed 0, 20 % test), so a fake
and its source never straddle; the test rows are marked ``is_test`` and never trained or tuned on (the
package draws its validation split, for early stopping, the threshold and the temperature, from the rest).

    nice -n 5 python bench/ship.py                 # -> runs/ship/mobilenet_v2.dfdc_sbi/ and runs/ship/ship.json
    nice -n 5 python bench/ship.py --ship          # then: into src/dfdetect/models/ with its card; the card's
                                                   # figures come from runs/generalization/table.json when present

The recipe is :func:`recipe`: the default protocol with one member, SBI pseudo-fakes (landmark-shaped masks)
mixed with the real fakes, laundering augmentations and temperature calibration. ``--sbi-mask ellipse
--out runs/ship_ellipse`` trains the ellipse-mask lever it was chosen against, and ``--sbi-only --out
runs/ship_sbionly`` the one that trains on no DFDC fake at all (docs/QUALITY.md).
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


def recipe(sbi_mask: str = "landmarks", input_size: int = 160, epochs: int = 8,
           sbi_mix: bool = True, backbone: str = "mobilenet_v2"):  # -> dfdetect.config.Protocol
    """The shipped model's protocol: what each lever was, in one place (docs/QUALITY.md has the figures)."""
    from dfdetect.config import Protocol

    p = Protocol.default()
    return p.model_copy(update={
        "model": p.model.model_copy(update={"ensemble": 1, "input_size": input_size, "backbone": backbone}),
        "train": p.train.model_copy(update={"pseudo_fakes": "sbi", "sbi_mix": sbi_mix, "launder": True,
                                            "calibration": "temperature", "epochs": epochs, "patience": 4,
                                            "sbi_mask": sbi_mask}),
    })


def held_out_table(data: Path):  # -> dfdetect.data.crops.CropTable
    """Both DFDC sets as one table, each set's test split (by original_video) marked ``is_test``."""
    from dfdetect.data.crops import CropTable

    tables = []
    for name in SETS:
        root = data / name
        split = split_groups(read_labels(root), test=0.2, val=0.0, seed=0)
        tables.append(package_table(root, split))
    return CropTable.concat(*tables)


def test_crops(table) -> tuple[np.ndarray, list[np.ndarray]]:
    """(labels, BGR crops) of the held-out test rows, decoded once for every detector scored on them."""
    test = table.subset(np.flatnonzero(table.is_test))
    return test.labels, [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in test.paths]


def figures(ship: dict, table: dict | None, seconds_per_video: float | None):  # -> dfdetect.model.card.ModelFigures
    """The card's figures: ship.json (DFDC test, calibration) and bench/generalization.py's table, if run."""
    from dfdetect.model.card import ModelFigures

    g = (table or {}).get("results", {}).get("shipped")
    f = g["ffpp"] if g else {}
    return ModelFigures(
        in_domain_auc=ship["test_auc"], ece_before=ship["test_ece_uncalibrated"], ece_after=ship["test_ece"],
        calibration=f"temperature scaling on validation, T = {ship['temperature']:.3f}",
        ffpp_video_auc=f.get("overall"),
        ffpp_per_method={m: f[m] for m in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures") if m in f},
        ffpp_per_compression={c: f[c] for c in ("c23", "c40") if c in f},
        laundering={label: f[k] for k, label in (("jpeg50", "ffpp, JPEG q50"), ("down0.5", "ffpp, 0.5x downscale"),
                                                 ("h264crf35", "ffpp, H.264 CRF 35")) if k in f},
        seconds_per_video=seconds_per_video,
        extra={"DFDC test crops": str(ship["counts"]["test"]["crops"]),
               "training wall time, 2 shared CPU cores": f"{ship['train_s'] / 60:.1f} min",
               **({"ffpp video ECE": f"{g['ffpp_ece']:.3f}",
                   "ffpp balanced accuracy at the threshold": f"{g['ffpp_acc']:.3f}"} if g else {})},
    )


def seconds_per_video(det, video: Path) -> float | None:
    """Wall time of predict's whole path (frames, faces, network) on one video, the second of two runs."""
    from dfdetect.inference.predict import predict_file

    if not video.is_file():
        return None
    predict_file(video, det)  # warm: the face finder and the network are built once per process
    t0 = time.perf_counter()
    predict_file(video, det)
    return time.perf_counter() - t0


def training_crop_margin(face_cfg, data: Path, n: int = 200) -> float:
    """The margin at which the training crops were cut, as ``face_cfg``'s finder sees them.

    ``crop side / max(box width, box height)`` of the largest face found on ``n`` real training crops
    (every 25th), median. The DFDC crops are far tighter than predict's default framing, so predict must
    cut faces the same way or it scores a framing the model never saw.
    """
    from dfdetect.preprocess.faces import create_detector

    finder = create_detector(face_cfg.model_copy(update={"keep": "all"}))
    ratios = []
    paths = sorted((data / SETS[1] / "real").glob("*.jpg"))[::25][:n]
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        boxes = finder(img) if img is not None else []
        if boxes:
            b = max(boxes, key=lambda x: x.area)
            ratios.append(img.shape[1] / max(b.width, b.height))
    if not ratios:
        raise SystemExit(f"no face found on {len(paths)} training crops: cannot measure their margin")
    return max(1.0, round(float(np.median(ratios)), 2))  # FaceConfig's floor: never tighter than the box


def real_video_limit(det, videos: Path) -> str | None:
    """A known limit, measured: the verdicts on the shared real videos (none of them DFDC crops it trained on)."""
    from dfdetect.inference.predict import predict_file

    files = sorted(videos.glob("*.mp4"))
    if not files:
        return None
    rs = [predict_file(f, det) for f in files]
    fakes = [r for r in rs if r.verdict == "fake"]
    scores = ", ".join(f"{Path(r.file).stem} {r.p_fake_max_face:.2f}" for r in rs)
    return (f"Real videos unlike its training data are often called fake: of the {len(rs)} real videos in "
            f"`../shared/data/videos` it called {len(fakes)} fake (P(fake) {scores}; threshold "
            f"{det.threshold_:.2f}). Treat a score near the threshold as undecided, and never act on a verdict alone.")


def ship(args: argparse.Namespace) -> int:
    """Put the trained run into the package with its card.

    The face finder is today's default protocol's, cutting faces at the training crops' measured margin.
    """
    from dfdetect.config import Protocol
    from dfdetect.model.card import DEFAULT_LIMITS, ModelCard, ship_model
    from dfdetect.model.detector import Detector

    ship_json = json.loads((args.out / "ship.json").read_text())
    det = Detector.load(args.out / NAME / "detector.safetensors")
    faces = Protocol.default().faces
    faces = type(faces).model_validate({**faces.model_dump(), "margin": training_crop_margin(faces, args.data)})
    print(f"faces: {faces.detector}, margin {faces.margin} (the training crops' framing)")
    det.protocol_ = det.protocol_.model_copy(update={"faces": faces})
    table_path = Path("runs/generalization/table.json")
    table = json.loads(table_path.read_text()) if table_path.is_file() else None
    bench_md = Path("runs/generalization/table.md")
    card = ModelCard(
        name=NAME,
        summary=(f"MobileNetV2 (ImageNet start, {det.protocol_.model.input_size} px) fine-tuned on DFDC face crops with self-blended "
                 "pseudo-fakes (blend masks shaped by YuNet's five landmarks) mixed with the real fakes, "
                 "laundering augmentations and a calibrated P(fake)."),
        training_data=(f"dfdc-faces + dfdc-faces-more: 16,000 DFDC face crops (224 px, upscaled from about 155 px) "
                       f"from 8,000 source videos. 20 % of the source videos of each set were kept back as the "
                       f"test split ({ship_json['counts']['test']['crops']} crops); validation (early stopping, "
                       f"threshold, temperature) came from the rest, split by source video. "
                       f"{ship_json['counts']['train']['crops']} training crops. Nothing from FaceForensics++ "
                       "or Celeb-DF was trained or tuned on."),
        recipe_command="python bench/ship.py   # needs ../shared/data/dfdc-faces and dfdc-faces-more",
        figures=figures(ship_json, table, seconds_per_video(det, args.data / "videos" / "hamilton_640x360.mp4")),
        bench_table=bench_md.read_text() if bench_md.is_file() else None,
        limits=[*DEFAULT_LIMITS, *filter(None, [real_video_limit(det, args.data / "videos")])],
    )
    print(ship_model(det, card))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/ship"))
    ap.add_argument("--sbi-mask", choices=("ellipse", "landmarks"), default="landmarks",
                    help="the SBI blend region: a centred ellipse, or the face outline from YuNet's five points")
    ap.add_argument("--input-size", type=int, default=160, help="the network's input side, in pixels")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--backbone", default="mobilenet_v2", help="a backbone with offline ImageNet weights "
                    "(`dfdetect backbones`): mobilenet_v2 or efficientnet_lite0")
    ap.add_argument("--sbi-only", action="store_true",
                    help="the SBI paper's way: every fake a self-blend of a real crop, no DFDC fake trained on")
    ap.add_argument("--ship", action="store_true", help="write the trained model and its card into src/dfdetect/models/")
    args = ap.parse_args(argv)
    if args.ship:
        return ship(args)
    missing = [s for s in SETS if not (args.data / s / "labels.csv").is_file()]
    if missing:
        print(f"skip: {', '.join(missing)} not under {args.data} (see ../shared/data/README.md)")
        return 0

    from sklearn.metrics import roc_auc_score

    from dfdetect.evaluation.metrics import expected_calibration_error
    from dfdetect.model.calibration import apply_temperature
    from dfdetect.model.detector import Detector
    from dfdetect.training.trainer import train

    table = held_out_table(args.data)
    run_dir = args.out / NAME
    t0 = time.perf_counter()
    result = train(table, recipe(args.sbi_mask, args.input_size, args.epochs, sbi_mix=not args.sbi_only,
                                 backbone=args.backbone), run_dir)
    train_s = time.perf_counter() - t0
    summary = json.loads((run_dir / "train.json").read_text())
    y, crops = test_crops(table)
    p = Detector.load(run_dir / "detector.safetensors").predict_proba(crops)
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
