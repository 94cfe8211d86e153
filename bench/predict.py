"""Wall time of ``predict`` on one 10 s 720p H.264 video, 32 frames: dfdetect against two pipelines in one run.

Issue 14 item 2. Every pipeline scores its faces with the same scorer (the protocol's MobileNetV2 members
with its flip TTA: torch, and with ``--onnx`` also the exported ONNX model on onnxruntime):

- **seed-style:** ``cv2.VideoCapture`` reads *every* frame in order (the seed's way to reach a frame), keeps
  the same 32 frames, Haar (seed settings: minSize 128, 1.1, 5) on each full greyscale frame, the
  protocol's crops (margin, output size) of every face, then the scorer. Target: dfdetect >= 3x faster.
- **MTCNN pipeline:** ``predict_path`` with the protocol's faces found by MTCNN (the previous default
  detector, also on a <=640 px copy). Target: dfdetect >= 4x faster.
- **dfdetect:** ``predict_path`` as users run it: PyAV seeking reader (only the 32 wanted frames
  converted), the protocol's detector (default: YuNet on a <=640 px copy), batched scoring.

Then a breakdown of where dfdetect's and the baselines' time goes: each stage timed on its own (wall and
CPU seconds), and the ceiling that fixed scoring leaves (the ratio with zero decode and detection time).

    nice -n 15 python bench/predict.py                        # default protocol, torch + onnx scorers
    nice -n 15 python bench/predict.py --protocol seed        # the seed protocol (Haar, one member)
    nice -n 15 python bench/predict.py --threads 1 2          # torch/OpenCV threads to time
    nice -n 15 python bench/predict.py --model shipped        # the shipped detector and its ONNX twin

Wall time depends on what else runs: on a shared 2-core machine, two OpenMP threads that must wait for a
core are slower than one, so the script prints the load average and the CPU time of each side too.

The generated video shows a real face (scikit-image's astronaut photo) moving over a textured 1280x720
background, encoded by libx264 (keyframe every 2 s, as phones and web video commonly are). The network is
MobileNetV2 with its offline ImageNet weights and an untrained head: the head does not change the time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np

FRAMES = 32
SEED_HAAR = {"detector": "haar", "min_size": 128, "scale_factor": 1.1, "min_neighbors": 5, "detect_max_side": None}


def make_video(path: Path, seconds: int = 10, fps: int = 30, size: tuple[int, int] = (1280, 720)) -> Path:
    import av
    from skimage.data import astronaut

    w, h = size
    face = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)[0:300, 110:350]  # the head, ~240x300
    face = cv2.resize(face, (face.shape[1] * 3 // 2, face.shape[0] * 3 // 2))
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 6)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps)}
        for i in range(seconds * fps):
            img = background.copy()
            x = int(200 + 500 * (0.5 + 0.5 * np.sin(i / 40)))
            y = int(150 + 60 * np.sin(i / 25))
            img[y:y + face.shape[0], x:x + face.shape[1]] = face
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def make_detector(protocol_name: str, detect_max_side: int | None):
    from dfdetect.config import Protocol
    from dfdetect.model.backbones import create_backbone, ensemble_of
    from dfdetect.model.detector import Detector

    protocol = Protocol.named(protocol_name)  # type: ignore[arg-type]
    protocol = protocol.model_copy(update={"model": protocol.model.model_copy(update={"backbone": "mobilenet_v2"})})
    if detect_max_side is not None:
        protocol = protocol.model_copy(update={"faces": protocol.faces.model_copy(
            update={"detect_max_side": detect_max_side})})
    m = protocol.model
    # as many members as the protocol trains (the default's ensemble): scoring costs grow with them
    members = [create_backbone("mobilenet_v2", pretrained=True, pool=m.pool, num_classes=1) for _ in range(m.ensemble)]
    model = ensemble_of(members)
    return Detector.from_model(model, protocol, threshold=0.5)


class Clock:
    """Wall and CPU seconds of a block (CPU: this process, all its threads)."""

    def __enter__(self) -> Self:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def seed_style(video: Path, scorer) -> tuple[float, float, list[float]]:
    """cv2 reads every frame in order, keeps the sampled ones; Haar (seed settings) on each full frame;
    the protocol's crops of every face; the same scorer."""
    from dfdetect.config import FaceConfig
    from dfdetect.preprocess.faces import HaarDetector, crop_face
    from dfdetect.preprocess.frames import sample_indices

    faces = scorer.protocol_.faces
    haar = HaarDetector(FaceConfig(**SEED_HAAR))
    with Clock() as c:
        cap = cv2.VideoCapture(str(video))
        wanted = set(sample_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), FRAMES))
        frames, i = [], 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            if i in wanted:
                frames.append(img)
            i += 1
        cap.release()
        per_frame, crops = [], []
        for img in frames:
            boxes = haar(img)
            per_frame.append(len(boxes))
            crops += [crop_face(img, b, faces.margin, faces.output_size) for b in boxes]
        scores = scorer.predict_proba(crops) if crops else np.zeros(0)
    tops, k = [], 0
    for n in per_frame:
        if n:
            tops.append(float(np.max(scores[k:k + n])))
        k += n
    return c.wall, c.cpu, tops


def dfdetect_predict(video: Path, scorer, face_cfg=None, detector=None):
    from dfdetect.inference.predict import predict_file

    with Clock() as c:
        res = predict_file(video, scorer, frames=FRAMES, face_cfg=face_cfg, face_detector=detector)
    return c.wall, c.cpu, res


def breakdown(video: Path, scorer, face_detector, face_cfg) -> dict[str, Clock]:
    """Each stage of both pipelines on its own, in the order predict runs them."""
    from dfdetect.config import FaceConfig
    from dfdetect.inference.predict import resolve_face_config
    from dfdetect.preprocess.faces import HaarDetector, crop_face
    from dfdetect.preprocess.frames import read_frames

    cfg, _ = resolve_face_config(face_cfg)
    out: dict[str, Clock] = {}
    with Clock() as out["dfdetect: decode 32 frames (PyAV seeking)"]:
        frames = [f for _, f in read_frames(video, FRAMES)]
    inner = getattr(face_detector, "inner", face_detector)
    side = cfg.detect_max_side
    with Clock() as out[f"dfdetect: resize to <= {side} px (INTER_AREA)"]:
        small = [f if side is None or max(f.shape[:2]) <= side else
                 cv2.resize(f, None, fx=side / max(f.shape[:2]), fy=side / max(f.shape[:2]),
                            interpolation=cv2.INTER_AREA) for f in frames]
    with Clock() as out[f"dfdetect: {cfg.detector} on the copies"]:
        inner.detect_batch(small, max(1, round(cfg.min_size * (side or 1) / max(frames[0].shape[:2]))))
    boxes = face_detector.detect_batch(frames)
    with Clock() as out["dfdetect: crops (margin, resize)"]:
        crops = [crop_face(f, b, cfg.margin, cfg.output_size) for f, bs in zip(frames, boxes) for b in bs]
    with Clock() as out[f"scoring {len(crops)} crops (both pipelines)"]:
        scorer.predict_proba(crops)
    with Clock() as out["seed-style: cv2 reads all frames"]:
        cap = cv2.VideoCapture(str(video))
        while cap.read()[0]:
            pass
        cap.release()
    haar = HaarDetector(FaceConfig(**SEED_HAAR))
    with Clock() as out["seed-style: Haar on 32 full frames"]:
        for f in frames:
            haar(f)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=["seed", "default"], default="default")
    ap.add_argument("--threads", type=int, nargs="+", default=[0],
                    help="torch/OpenCV thread counts to time; 0 = as predict runs (Detector.predict_proba picks "
                    "torch threads from the cores other processes leave free)")
    ap.add_argument("--detect-max-side", type=int, default=None,
                    help="find faces on a copy this long (FaceConfig.detect_max_side); default: the protocol's")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline; the median is reported")
    ap.add_argument("--no-onnx", action="store_true", help="time the torch scorer only")
    ap.add_argument("--model", default=None,
                    help="'shipped' (or a model name or file): time that detector, its ONNX twin as the onnx scorer; "
                    "default: an untrained MobileNetV2 at --protocol's settings")
    args = ap.parse_args()

    import torch

    from dfdetect.inference.predict import create_face_finder, resolve_face_config

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        video = make_video(Path(tmp) / "bench_720p_10s.mp4")
        print(f"video: 1280x720, 10 s, 30 fps, H.264 (keyframe every 60), {video.stat().st_size / 1e6:.1f} MB, "
              f"made in {time.perf_counter() - t:.1f} s; {FRAMES} frames; machine: {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}, nice {os.nice(0)}; torch {torch.__version__}, "
              f"opencv {cv2.__version__}", flush=True)
        from dfdetect.model.export import OnnxDetector, export_onnx

        onnx_path = None
        if args.model is not None:
            from dfdetect.model.detector import Detector
            from dfdetect.model.hub import resolve

            found = resolve(None if args.model == "shipped" else args.model)
            det = Detector.load(found.path)
            onnx_path = found.onnx
            args.protocol = found.describe()
        else:
            det = make_detector(args.protocol, args.detect_max_side)
        faces = det.protocol_.faces
        mtcnn_cfg = faces.model_copy(update={"detector": "mtcnn"})
        if not args.no_onnx and onnx_path is None:
            onnx_path = export_onnx(det, Path(tmp) / "det.onnx").path
        cores, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
        for threads in args.threads:
            if threads:  # fixed: OMP_NUM_THREADS makes predict_proba keep the count set here
                os.environ["OMP_NUM_THREADS"] = str(threads)
            else:
                os.environ.pop("OMP_NUM_THREADS", None)
            torch.set_num_threads(threads or cores)
            cv2.setNumThreads(threads or cv2_threads)
            scorers = [("torch", det)]
            if onnx_path is not None:
                scorers.append(("onnx", OnnxDetector.load(onnx_path, threads=threads)))
            ours = create_face_finder(resolve_face_config(faces)[0])  # built once, as iter_predict does
            mtcnn = create_face_finder(resolve_face_config(mtcnn_cfg)[0])
            for kind, scorer in scorers:
                tag = (f"[{args.protocol}: {faces.detector} faces (detect_max_side={faces.detect_max_side}), "
                       f"{det.protocol_.model.input_size} px MobileNetV2 x{det.protocol_.model.ensemble}"
                       f"{' + flip TTA' if det.protocol_.model.tta_flip else ''}, {kind} scorer, "
                       f"{threads or 'auto'} thread(s)]")
                # warm-up: first-use costs of model, face finders, decoders
                seed_style(video, scorer)
                dfdetect_predict(video, scorer, detector=ours)
                dfdetect_predict(video, scorer, mtcnn_cfg, detector=mtcnn)
                runs = []
                for _ in range(args.repeats):
                    b, b_cpu, tops = seed_style(video, scorer)
                    m, m_cpu, _ = dfdetect_predict(video, scorer, mtcnn_cfg, detector=mtcnn)
                    o, o_cpu, res = dfdetect_predict(video, scorer, detector=ours)
                    runs.append((b, b_cpu, m, m_cpu, o, o_cpu))
                b, b_cpu, m, m_cpu, o, o_cpu = (statistics.median(r[i] for r in runs) for i in range(6))
                print(f"{tag}\n  seed-style (cv2 reads every frame, Haar on the full frame, same scoring) "
                      f"{b:.2f} s (cpu {b_cpu:.2f} s), {len(tops)} frames with a face\n"
                      f"  MTCNN pipeline (dfdetect predict, MTCNN <= {faces.detect_max_side} px) {m:.2f} s "
                      f"(cpu {m_cpu:.2f} s)\n"
                      f"  dfdetect predict ({faces.detector}) {o:.2f} s (cpu {o_cpu:.2f} s), "
                      f"{res.frames_with_face}/{len(res.frames)} frames with a face, {res.n_faces} faces\n"
                      f"  RATIO vs seed-style {b / o:.2f}x wall, {b_cpu / o_cpu:.2f}x cpu (target >= 3x: "
                      f"{'met' if b / o >= 3 else 'NOT met'}) | RATIO vs MTCNN pipeline {m / o:.2f}x wall, "
                      f"{m_cpu / o_cpu:.2f}x cpu (target >= 4x: {'met' if m / o >= 4 else 'NOT met'}) | "
                      f"load average now {os.getloadavg()[0]:.1f}", flush=True)
                parts = breakdown(video, scorer, ours, faces)
                total_w = sum(c.wall for k, c in parts.items() if not k.startswith("seed-style"))
                print("  where the time goes (each stage alone):")
                for k, c in parts.items():
                    print(f"    {k:48} {c.wall:6.3f} s wall  {c.cpu:6.3f} s cpu")
                score = next(c for k, c in parts.items() if k.startswith("scoring"))
                seed_w = score.wall + sum(c.wall for k, c in parts.items() if k.startswith("seed-style"))
                print(f"    dfdetect stages add up to {total_w:.2f} s, scoring {score.wall / total_w:.0%} of it; "
                      f"CEILING vs seed-style with zero decode and detection time: {seed_w / score.wall:.2f}x",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
