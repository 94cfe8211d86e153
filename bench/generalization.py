"""Does a detector trained on DFDC work elsewhere? The seed recipe, the default recipe and the shipped model, side by side.

For each detector, in one run:
- in-domain: frame-level AUC and expected calibration error (ECE) on the DFDC test crops kept back by
  ``bench/ship.py`` (20 % of the source videos of dfdc-faces and of dfdc-faces-more; never trained or tuned on);
- cross-dataset: video AUC on ``../shared/data/ffpp-samples`` (96 FaceForensics++ videos, never trained on),
  overall, per manipulation method and per compression;
- laundering: the ffpp video AUC after JPEG quality 50, a 0.5x downscale, and H.264 re-encoding at CRF 35.

The videos go through dfdetect's own pipeline: ``frames.read_frames`` (32 evenly spaced frames), the shipped
model's face finder and crop (``faces.faces_in_frames``), then each detector's ``predict_proba``; a video's
score is the mean P(fake) of its crops. Faces are found once per video, on the original frames, and the same
boxes are cut from each laundered copy: the table measures the detectors, not the face finder.

    nice -n 5 python bench/generalization.py            # -> runs/generalization/table.json and table.md

The seed and default detectors are ``runs/quality/{seed,default}/detector.safetensors`` (``bench/quality.py``
trains them on dfdc-faces, whose test split equals this one's); a missing one is trained first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ship import SETS, held_out_table, test_crops

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = ("original", "jpeg50", "down0.5", "h264crf35")
METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
FRAMES = 32


def _auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if np.unique(y).size == 2 else float("nan")


def _acc(y, p, threshold: float) -> float:
    """Balanced accuracy (mean of the real and the fake recall) of the verdicts at ``threshold``."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(np.asarray(y), np.asarray(p) >= threshold))


def ffpp_videos(root: Path) -> list[dict]:
    """Each FF++ video with its label (1 = fake), method ('real' for originals) and compression."""
    from dfdetect.data.sources import load_ffpp

    out = []
    for item in load_ffpp(root).items:
        parts = item.rel.split("/")
        out.append({"path": item.path, "rel": item.rel, "y": int(item.label),
                    "method": parts[1] if parts[0] == "manipulated_sequences" else "real",
                    "compression": next((p for p in parts if p in ("c23", "c40", "raw")), "?")})
    return out


def reencode_h264(src: Path, dest: Path, crf: int = 35) -> Path:
    """``src`` re-encoded with libx264 at ``crf`` (PyAV: no ffmpeg binary needed), written once."""
    import av

    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or 25
        stream = out.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "ultrafast"})
        stream.width, stream.height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
        stream.pix_fmt = "yuv420p"
        for frame in inp.decode(vin):
            img = frame.to_ndarray(format="rgb24")[:stream.height, :stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(dest)
    return dest


def _jpeg(bgr: np.ndarray, q: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)


def laundered_crops(video: dict, face_cfg, finder, cache: Path) -> dict[str, list[np.ndarray]]:
    """The face crops of ``video``'s sampled frames for each laundering variant (the same boxes in each)."""
    from dfdetect.preprocess.faces import crop_face, faces_in_frames
    from dfdetect.preprocess.frames import read_frames, read_frames_at

    frames = read_frames(video["path"], FRAMES)
    found = faces_in_frames([f for _, f in frames], finder, face_cfg)
    boxes = [(i, [c.box for c in faces]) for (i, _), faces in zip(frames, found, strict=True)]

    def cut(pairs, scale: float = 1.0) -> list[np.ndarray]:
        by_index = dict(pairs)
        return [crop_face(by_index[i], b.scaled(scale), face_cfg.margin, face_cfg.output_size)
                for i, bs in boxes if i in by_index for b in bs]

    h264 = reencode_h264(video["path"], cache / "h264" / (video["rel"].replace("/", "__")))
    return {
        "original": [c.crop for faces in found for c in faces],
        "jpeg50": cut([(i, _jpeg(f, 50)) for i, f in frames]),
        "down0.5": cut([(i, cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA))
                        for i, f in frames], 0.5),
        "h264crf35": cut(read_frames_at(h264, [i for i, _ in frames])),
    }


def ffpp_table(videos: list[dict], scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Video AUCs: overall, per method (its fakes against every real) and per compression."""
    y = np.array([v["y"] for v in videos])
    out = {"overall": _auc(y, scores["original"])}
    for m in METHODS:
        keep = np.array([v["method"] in (m, "real") for v in videos])
        out[m] = _auc(y[keep], scores["original"][keep])
    for c in ("c23", "c40"):
        keep = np.array([v["compression"] == c for v in videos])
        out[c] = _auc(y[keep], scores["original"][keep])
    for var in VARIANTS[1:]:
        out[var] = _auc(y, scores[var])
    return out


def _run_name(path: Path) -> str:
    """``runs/ship_e12/mobilenet_v2.dfdc_sbi/detector.safetensors`` -> ``ship_e12``: the folder bench/ship.py's
    ``--out`` named."""
    parts = path.parts
    return parts[-3] if len(parts) >= 3 and path.name == "detector.safetensors" else path.stem


def ensure_trained(name: str, out: Path) -> Path:
    path = out / name / "detector.safetensors"
    if not path.is_file():
        print(f"{path} is missing: training it with bench/quality.py --only {name}", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("quality.py")), "--only", name,
                        "--out", str(out)], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/generalization"))
    ap.add_argument("--quality-runs", type=Path, default=Path("runs/quality"))
    ap.add_argument("--shipped", default=None, help="a model name or file (default: dfdetect's default model)")
    ap.add_argument("--faces", default=None, help="whose face finder and framing cut the ffpp crops (a model name "
                    "or file; default: the shipped model's), so detectors compared in two runs see the same crops")
    ap.add_argument("--only", nargs="*", default=None, help="detectors to run: seed default shipped")
    ap.add_argument("--candidate", type=Path, nargs="*", default=[], help="more detector files, scored beside the "
                    "others (recipes being weighed against the shipped model, on the same crops): one is "
                    "'candidate', several are named by their run folder (runs/ship_e12/... -> ship_e12)")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: this many ffpp videos")
    args = ap.parse_args(argv)
    need = [*SETS, "ffpp-samples"]
    if missing := [s for s in need if not (args.data / s).is_dir()]:
        print(f"skip: {', '.join(missing)} not under {args.data} (see ../shared/data/README.md)")
        return 0

    from dfdetect.evaluation.metrics import expected_calibration_error
    from dfdetect.inference.predict import resolve_face_config
    from dfdetect.model.detector import Detector
    from dfdetect.model.hub import DEFAULT_MODEL, resolve_model
    from dfdetect.preprocess.faces import create_detector

    names = args.only or ["seed", "default", "shipped"]
    paths = {n: ensure_trained(n, args.quality_runs) for n in names if n != "shipped"}
    if "shipped" in names:
        paths["shipped"] = resolve_model(args.shipped or DEFAULT_MODEL)
    for c in args.candidate:
        paths["candidate" if len(args.candidate) == 1 else _run_name(c)] = c
    detectors = {n: Detector.load(p) for n, p in paths.items()}
    for n, p in paths.items():
        print(f"{n}: {p}", flush=True)

    t0 = time.perf_counter()
    table = held_out_table(args.data)
    y_test, crops = test_crops(table)
    results: dict[str, dict] = {}
    for n, det in detectors.items():
        p = det.predict_proba(crops)
        results[n] = {"dfdc_auc": _auc(y_test, p), "dfdc_ece": expected_calibration_error(y_test, p),
                      "threshold": det.threshold_, "dfdc_acc": _acc(y_test, p, det.threshold_),
                      "dfdc_acc_0.5": _acc(y_test, p, 0.5)}
    print(f"DFDC test: {len(crops)} crops ({time.perf_counter() - t0:.0f} s)", flush=True)

    # one face finder and framing for every detector: the shipped model's (falls back as predict does)
    faces_from = Detector.load(resolve_model(args.faces or DEFAULT_MODEL)).protocol_.faces
    face_cfg, _ = resolve_face_config(faces_from)
    finder = create_detector(face_cfg)
    videos = ffpp_videos(args.data / "ffpp-samples")[: args.limit]
    scores = {n: {v: np.full(len(videos), np.nan) for v in VARIANTS} for n in detectors}
    no_face = 0
    t1 = time.perf_counter()
    for k, video in enumerate(videos):
        variant_crops = laundered_crops(video, face_cfg, finder, args.out / "cache")
        if not variant_crops["original"]:
            no_face += 1
        for n, det in detectors.items():
            for var, cs in variant_crops.items():
                scores[n][var][k] = float(np.mean(det.predict_proba(cs))) if cs else 0.5  # no face: undecided
        print(f"  [{k + 1}/{len(videos)}] {video['rel']}: " + ", ".join(
            f"{n} {scores[n]['original'][k]:.2f}" for n in detectors), flush=True)
    for n, det in detectors.items():
        results[n]["ffpp"] = ffpp_table(videos, scores[n])
        results[n]["ffpp_ece"] = expected_calibration_error([v["y"] for v in videos], scores[n]["original"])
        y = [v["y"] for v in videos]
        results[n]["ffpp_acc"] = _acc(y, scores[n]["original"], det.threshold_)
        results[n]["ffpp_acc_0.5"] = _acc(y, scores[n]["original"], 0.5)
        jp = results[n]["ffpp"]["jpeg50"]
        results[n]["jpeg50_drop"] = results[n]["ffpp"]["overall"] - jp
    counts = {m: sum(v["method"] == m for v in videos) for m in ("real", *METHODS)}
    meta = {"dfdc_test_crops": len(crops), "ffpp_videos": len(videos), "ffpp_counts": counts,
            "ffpp_no_face": no_face, "face_finder": face_cfg.detector, "frames_per_video": FRAMES,
            "ffpp_wall_s": round(time.perf_counter() - t1, 1), "paths": {n: str(p) for n, p in paths.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = markdown_table(results, meta)
    (args.out / "table.md").write_text(md)
    print(md)
    return 0


def markdown_table(results: dict[str, dict], meta: dict) -> str:
    cols = list(results)
    rows = [("DFDC test AUC (frames)", lambda r: r["dfdc_auc"]), ("DFDC test ECE", lambda r: r["dfdc_ece"]),
            ("ffpp video AUC", lambda r: r["ffpp"]["overall"])]
    rows += [(f"  {m}", lambda r, m=m: r["ffpp"][m]) for m in METHODS]
    rows += [(f"  {c}", lambda r, c=c: r["ffpp"][c]) for c in ("c23", "c40")]
    rows += [("ffpp AUC, JPEG q50", lambda r: r["ffpp"]["jpeg50"]),
             ("ffpp AUC, 0.5x downscale", lambda r: r["ffpp"]["down0.5"]),
             ("ffpp AUC, H.264 CRF 35", lambda r: r["ffpp"]["h264crf35"]),
             ("drop under JPEG q50", lambda r: r["jpeg50_drop"]), ("ffpp video ECE", lambda r: r["ffpp_ece"]),
             ("threshold (chosen on DFDC validation)", lambda r: r["threshold"]),
             ("DFDC balanced accuracy at it", lambda r: r["dfdc_acc"]),
             ("ffpp balanced accuracy at it", lambda r: r["ffpp_acc"]),
             ("DFDC balanced accuracy at P = 0.5", lambda r: r["dfdc_acc_0.5"]),
             ("ffpp balanced accuracy at P = 0.5", lambda r: r["ffpp_acc_0.5"])]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {label} | " + " | ".join(f"{get(results[c]):.3f}" for c in cols) + " |" for label, get in rows]
    c = meta["ffpp_counts"]
    lines.append("")
    lines.append(f"DFDC: {meta['dfdc_test_crops']} held-out crops. ffpp-samples: {meta['ffpp_videos']} videos "
                 f"({c['real']} real, " + ", ".join(f"{c[m]} {m}" for m in METHODS) + f"), {meta['frames_per_video']} "
                 f"frames each, faces by {meta['face_finder']}; {meta['ffpp_no_face']} with no face scored 0.5.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
