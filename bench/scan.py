"""Videos per minute of ``dfdetect.inference.scan`` at ``--workers 0``, ``1`` and ``2`` and on Ray with 2 local workers.

Issue 14 item 3 (target: 2 workers >= 1.7x 1 worker on 2 cores). All four run in one process, one after
another, on the same copies of the same videos with the same model file, each into its own fresh jsonl
(nothing is skipped as done). The wall time of each includes starting its workers (each imports torch
and loads the model once), as a user's scan does; the time to the first result is printed beside it.

    nice -n 15 python bench/scan.py --frames 8           # ../shared/data/videos copied 3 times (9 videos)
    python bench/scan.py --copies 8 --frames 32 --protocol seed
    python bench/scan.py --model shipped                 # the shipped detector, as 'dfdetect predict DIR' runs it

The videos are ``../shared/data/videos`` (a 1080p multi-face clip, a DFDC clip, a 640x360 clip) copied
into a temp folder, or, without them, generated 10 s 720p H.264 clips (bench/predict.py's). The model is
bench/predict.py's: MobileNetV2 with offline ImageNet weights, as many members as the protocol trains.
Workers use one thread each; ``--workers 0`` uses torch's default threads in this process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def load() -> str:
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load {a:.1f}/{b:.1f}/{c:.1f}"


def videos_into(folder: Path, copies: int) -> list[Path]:
    sources = sorted(SHARED_VIDEOS.glob("*.mp4")) if SHARED_VIDEOS.is_dir() else []
    if not sources:
        from predict import make_video

        sources = [make_video(folder / f"gen{i}.mp4") for i in range(3)]
        folder = folder / "copies"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(copies):
        for s in sources:
            out.append(Path(shutil.copy(s, folder / f"{s.stem}-{i}{s.suffix}")))
    return out


def run(name: str, videos: Path, model: Path, out: Path, frames: int, **kwargs) -> dict:
    """One scan into a fresh jsonl: videos/min end to end (workers started inside), and once running
    (from the k-th result to the last, k = workers: what a scan of 100,000 files sees)."""
    from dfdetect.inference.scan import scan

    t0 = time.perf_counter()
    stamps, lines = [], []
    for line in scan([videos], model, jsonl=out / f"{name}.jsonl", frames=frames, **kwargs):
        stamps.append(time.perf_counter() - t0)
        lines.append(line)
    wall = time.perf_counter() - t0
    errors = [ln["error"] for ln in lines if "error" in ln]
    if errors:
        print(f"  {name}: {len(errors)} errors, e.g. {errors[0]}")
    n = len(lines)
    k = max(1, kwargs.get("workers", 0))  # from the k-th result on, every worker is running
    steady = (60 * (n - k) / (stamps[-1] - stamps[k - 1]) if n > k and stamps[-1] > stamps[k - 1]
              else float("nan"))
    print(f"{name:>10}: {n} videos in {wall:6.1f} s = {60 * n / wall:5.1f} videos/min end to end, "
          f"{steady:5.1f} once running (first result after {stamps[0] if stamps else 0:.1f} s; {load()})",
          flush=True)
    return {"wall": wall, "n": n, "rate": 60 * n / wall, "steady": steady, "lines": {ln["file"]: ln for ln in lines}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=3, help="copies of each source video")
    ap.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    ap.add_argument("--protocol", choices=["seed", "default"], default="default")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    ap.add_argument("--model", default=None,
                    help="'shipped' (or a model name): scan with it as 'dfdetect predict DIR' does (its ONNX twin); "
                    "default: an untrained MobileNetV2 at --protocol's settings, torch")
    args = ap.parse_args()

    had_omp = "OMP_NUM_THREADS" in os.environ
    from predict import make_detector  # bench/predict.py sets OMP_NUM_THREADS=2: workers would inherit it

    if not had_omp:
        os.environ.pop("OMP_NUM_THREADS", None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="dfdetect-bench-scan-") as tmp:
        tmp_p = Path(tmp)
        files = videos_into(tmp_p / "videos", args.copies)
        if args.model is not None:  # as the CLI does: the shipped model scores through its ONNX twin
            from dfdetect.inference.scan import ModelRef
            from dfdetect.model.detector import Detector
            from dfdetect.model.hub import resolve

            used = resolve(None if args.model == "shipped" else args.model)
            path, twin = used.scorer_file()
            model = ModelRef.of(path, onnx=twin, name=used.name)
            det = Detector.load(used.path)
            args.protocol = f"{used.describe()}{' via its ONNX twin' if twin else ''}"
        else:
            det = make_detector(args.protocol, None)
            model = det.save(tmp_p / "model" / "detector.safetensors")
        print(f"{len(files)} videos, {args.frames} frames each, protocol {args.protocol} "
              f"(faces: {det.protocol_.faces.detector}, {det.protocol_.model.ensemble} member(s)); "
              f"{cores} cores, {load()}", flush=True)
        out = tmp_p / "out"
        res = {
            "workers 0": run("workers0", tmp_p / "videos", model, out, args.frames, workers=0),
            "workers 1": run("workers1", tmp_p / "videos", model, out, args.frames, workers=1),
            "workers 2": run("workers2", tmp_p / "videos", model, out, args.frames, workers=2),
        }
        if not args.no_ray:
            try:
                import ray
            except ImportError:
                print("ray: not installed (pip install dfdetect[ray]); skipped")
            else:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                try:
                    res["ray 2"] = run("ray2", tmp_p / "videos", model, out, args.frames, engine="ray", workers=2)
                finally:
                    ray.shutdown()
    base = res["workers 0"]["lines"]
    for name, r in res.items():  # every engine gave the same verdict on every file
        same = all(r["lines"][f].get("verdict") == base[f].get("verdict") for f in base)
        if not same or set(r["lines"]) != set(base):
            print(f"MISMATCH: {name} gave other verdicts or files than workers 0")
    for key, what in (("steady", "once running"), ("rate", "end to end")):
        r = {k: v[key] for k, v in res.items()}
        print(f"RATIO 2 workers / 1 worker, {what}: {r['workers 2'] / r['workers 1']:.2f}x "
              "(target >= 1.7x on 2 cores)")
        print(f"RATIO 1 worker / in process, {what}: {r['workers 1'] / r['workers 0']:.2f}x")
        if "ray 2" in r:
            print(f"RATIO Ray 2 workers / pool 2 workers, {what}: {r['ray 2'] / r['workers 2']:.2f}x")
    print(f"PER CORE: {res['workers 2']['steady'] / 2:.1f} videos/min per core once running with 2 workers "
          f"({args.frames} frames, protocol {args.protocol}; {load()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
