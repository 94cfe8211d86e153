"""Wall time of ``predict`` on one 10 s 720p H.264 video, 32 frames, MobileNetV2, 2 CPU threads.

Issue 5 item 3 (target: <= 2 s). The baseline, measured in the same run on the same video: read *every*
frame in order with ``cv2.VideoCapture`` (the seed's way to reach a frame), keep the same 32 frames, then
find faces frame by frame and score them as predict does. dfdetect: ``predict_path`` (PyAV seeking reader,
the same face finder run on the frames in batches, same scorer). Both give the same verdict on the same frames; the script checks that.

    nice -n 10 python bench/predict.py                   # seed protocol: Haar faces, 128 px MobileNetV2
    python bench/predict.py --protocol default --detect-max-side 640 --onnx   # MTCNN on a 640 px copy, 224 px
    python bench/predict.py --threads 1 2                # torch/OpenCV threads; 1 is faster on a busy machine

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import cv2
import numpy as np

FRAMES = 32


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
    from dfdetect.backbones import create_backbone, ensemble_of
    from dfdetect.config import Protocol
    from dfdetect.detector import Detector

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


def baseline(video: Path, detector) -> tuple[float, float, list[float]]:
    """Sequential cv2 read of every frame, keep the sampled ones, then the same faces (one frame at a time)
    and the same scoring."""
    from dfdetect import predict as P
    from dfdetect.faces import faces_in_image
    from dfdetect.frames import sample_indices

    start, cpu = time.perf_counter(), time.process_time()
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(sample_indices(total, FRAMES))
    frames, i = [], 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if i in wanted:
            frames.append(img)
        i += 1
    cap.release()
    cfg, _ = P.resolve_face_config(detector.protocol_.faces)
    finder = P._create_face_detector(cfg)
    crops, per_frame = [], []
    for img in frames:
        faces = faces_in_image(img, finder, cfg)
        per_frame.append(len(faces))
        crops.extend(f.crop for f in faces)
    scores = detector.predict_proba(crops)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    tops, k = [], 0
    for n in per_frame:
        if n:
            tops.append(float(scores[k:k + n].max()))
        k += n
    return elapsed, cpu, tops


def dfdetect_predict(video: Path, detector):
    from dfdetect.predict import predict_path

    start, cpu = time.perf_counter(), time.process_time()
    [res] = predict_path(video, detector, frames=FRAMES)
    return time.perf_counter() - start, time.process_time() - cpu, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=["seed", "default", "both"], default="seed")
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="torch/OpenCV thread counts to time")
    ap.add_argument("--detect-max-side", type=int, default=None,
                    help="find faces on a copy this long (FaceConfig.detect_max_side); default: the protocol's")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    ap.add_argument("--onnx", action="store_true", help="also time the exported ONNX model on onnxruntime")
    args = ap.parse_args()

    import torch

    names = ["seed", "default"] if args.protocol == "both" else [args.protocol]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        video = make_video(Path(tmp) / "bench_720p_10s.mp4")
        print(f"video: 1280x720, 10 s, 30 fps, H.264 (keyframe every 60), {video.stat().st_size / 1e6:.1f} MB, "
              f"made in {time.perf_counter() - t:.1f} s; {FRAMES} frames; machine: {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        for name in names:
            det = make_detector(name, args.detect_max_side)
            scorers = [("torch", det)]
            if args.onnx:
                from dfdetect.export import OnnxDetector, export_onnx

                onnx_path = export_onnx(det, Path(tmp) / f"{name}.onnx").path
            for threads in args.threads:
                torch.set_num_threads(threads)
                cv2.setNumThreads(threads)
                if args.onnx:
                    scorers = [("torch", det), ("onnx", OnnxDetector.load(onnx_path, threads=threads))]
                for kind, scorer in scorers:
                    dfdetect_predict(video, scorer)  # warm-up: first-use costs of model, face finder, decoder
                    baseline(video, scorer)
                    runs = []
                    for _ in range(args.repeats):
                        b, b_cpu, tops = baseline(video, scorer)
                        o, o_cpu, res = dfdetect_predict(video, scorer)
                        runs.append((b, b_cpu, o, o_cpu))
                    mine = [fr.p_fake_max for fr in res.frames if fr.faces]
                    same = len(mine) == len(tops) and np.allclose(mine, tops, atol=1e-5)
                    b, b_cpu, o, o_cpu = (statistics.median(r[i] for r in runs) for i in range(4))
                    faces = scorer.protocol_.faces
                    print(f"[{name}: {faces.detector} faces (detect_max_side={faces.detect_max_side}), "
                          f"{scorer.protocol_.model.input_size} px MobileNetV2 x{scorer.protocol_.model.ensemble}, {kind}, "
                          f"{threads} thread(s)] "
                          f"baseline (cv2 reads every frame, same faces + scoring) {b:.2f} s (cpu {b_cpu:.2f} s) | "
                          f"dfdetect predict {o:.2f} s (cpu {o_cpu:.2f} s) | ratio {b / o:.2f}x | "
                          f"target <= 2 s: {'met' if o <= 2 else 'NOT met'} | {res.frames_with_face}/{len(res.frames)} "
                          f"frames with a face, {res.n_faces} faces, same scores as baseline: {same} | "
                          f"load average now {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
