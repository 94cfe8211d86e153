"""Peak memory while featurising 1,000 vs 10,000 generated face crops: it must stay flat.

Issue 5 item 4. Each size runs in a fresh subprocess that builds the crop table, loads MobileNetV2
(offline ImageNet weights) and calls ``dfdetect.training.features.extract_features``, which streams crops
in batches into a disk-backed ``.npy`` memmap, then ``dfdetect.data.torch_datasets.decode_crops``, which appends the
decoded crops a fine-tune reads to a ``.npy`` file; the child reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). A whole-dataset approach would grow ~10x from
1,000 to 10,000 crops; a streaming one stays flat.

    nice -n 10 python bench/memory.py                # 1,000 vs 10,000 crops at 128 px
    python bench/memory.py --sizes 500 5000 --input-size 64

Issue 12 item 2, ``--media``: peak RSS of one CLI command on one hostile input, each in a fresh process
(``RUSAGE_CHILDREN`` of a wrapper): ``dfdetect predict`` on a generated ~100 KB 8K video (a tiny untrained
detector, Haar faces), with the default :class:`~dfdetect.config.MediaLimits` and, as the baseline in the
same run, with the frame scaling switched off (``DFDETECT_MAX_FRAME_SIDE`` huge: what the old code did);
``faces`` and ``srm`` on PNGs declaring 100000 x 100000 and 30000 x 30000 pixels, and a PNG "video"
declaring 16000 x 16000; and ``predict`` with the shipped model, scored through its ONNX twin (the default), with
heatmaps from the twin (``--save``, which draws Grad-CAM overlays) and, as the baseline, with Grad-CAM through
torch (``--save --model`` the shipped ``.safetensors`` file). Target: under 1 GB each.

    nice -n 10 python bench/memory.py --media --frames 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from dfdetect.model.backbones import create_backbone
from dfdetect.data.crops import build_crop_table
from dfdetect.data.torch_datasets import decode_crops
from dfdetect.data.sources import discover
from dfdetect.training.features import extract_features

root, n, size, cache = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ds = discover(root)
ds.items = ds.items[:n]
table = build_crop_table(ds, None)
model = create_backbone("mobilenet_v2", pretrained=True)
t0 = time.perf_counter()
feats, ok = extract_features(model, table, cache, input_size=size, batch_size=64)
decoded = decode_crops(table, size, cache)  # what a fine-tune reads every epoch
assert decoded.ok.all()
print(json.dumps({"n": len(table), "shape": list(feats.shape), "ok": int(ok.sum()),
                  "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_crops(root: Path, n: int, side: int = 96) -> None:
    """``n`` generated crops (half real/, half fake/), JPEG, ``side`` px: the content does not matter."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (side * 4, side * 4, 3), dtype=np.uint8), (0, 0), 2)
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = rng.integers(0, side * 3, 2)
        label = "real" if i % 2 == 0 else "fake"
        cv2.imwrite(str(root / label / f"{i:06d}.jpg"), base[y:y + side, x:x + side])


def png_bomb(path: Path, w: int, h: int, rows: int = 4) -> Path:
    """A valid PNG header declaring ``w`` x ``h`` RGB pixels, then a tiny IDAT: a few hundred bytes that
    a decoder that trusts the header allocates ``3 w h`` bytes for."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(w, 4096)) * rows, 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def video_8k(path: Path, frames: int = 16, size: tuple[int, int] = (7680, 4320)) -> Path:
    """A flat-colour H.264 video at ``size`` (CRF 51, ultrafast): ~100 KB for 16 8K frames."""
    import av
    import numpy as np

    w, h = size
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "51", "preset": "ultrafast"}
        img = np.full((h, w, 3), (90, 120, 150), np.uint8)
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


MODEL_CHILD = r"""
import sys, torch
from dfdetect.model.backbones import create_backbone
from dfdetect.config import FaceConfig, ModelConfig, Protocol
from dfdetect.model.detector import Detector
torch.manual_seed(0)
proto = Protocol.default().model_copy(update={"model": ModelConfig(input_size=48, pretrained=False, ensemble=1, tta_flip=False),
                                              "faces": Protocol.seed().faces.model_copy(update={"min_size": 40})})
Detector.from_model(create_backbone("mobilenet_v2", pretrained=False), proto, 0.5).save(sys.argv[1])
"""

PEAK = r"""
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, repr((r.stderr or r.stdout)[-300:]))
"""


def peak_mb(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """(exit code, peak RSS in MB, the output's tail) of ``cmd`` run alone in a fresh wrapper process."""
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    rc, kb, tail = out.stdout.strip().split(" ", 2)
    return int(rc), int(kb) / 1024, tail


def shipped_file() -> Path:
    """The shipped model's own .safetensors: given as a file, predict scores through torch, not the twin."""
    from dfdetect.model import hub

    return hub.get_model(hub.DEFAULT_MODEL).shipped_path


def media(frames: int) -> int:
    cli = [sys.executable, "-m", "dfdetect"]
    unlimited = {"DFDETECT_MAX_FRAME_SIDE": "100000"}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        t0 = time.perf_counter()
        video = video_8k(t / "8k.mp4")
        small = video_8k(t / "small.mp4", size=(640, 360))
        subprocess.run([sys.executable, "-c", MODEL_CHILD, str(t / "tiny.safetensors")], check=True)
        png_bomb(t / "bombs" / "v" / "00000.png", 100_000, 100_000)
        png_bomb(t / "bombs" / "v" / "00001.png", 30_000, 30_000)
        png_bomb(t / "pngvideo.mp4", 16_000, 16_000)
        ds = t / "ds"  # a real/ + fake/ dataset for frames: the bombs, the PNG 'video' and the 8K video
        png_bomb(ds / "real" / "bomb.png", 100_000, 100_000)
        png_bomb(ds / "real" / "pngvideo.mp4", 16_000, 16_000)
        (ds / "fake").mkdir()
        (ds / "fake" / "8k.mp4").write_bytes(video.read_bytes())
        print(f"inputs: {video.stat().st_size / 1e3:.0f} KB 8K video (16 frames), PNG bombs of "
              f"{(t / 'bombs/v/00000.png').stat().st_size} and {(t / 'bombs/v/00001.png').stat().st_size} bytes, "
              f"made in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        predict = [*cli, "predict", str(video), "--model", str(t / "tiny.safetensors"), "--frames", str(frames)]
        rows = [
            (f"predict 8K video, {frames} frames, frames scaled to 1920 (default)", predict, None),
            (f"predict 8K video, {frames} frames, no scaling (baseline)", predict, unlimited),
            ("predict PNG 'video' declaring 16000 x 16000", [*predict[:4], str(t / "pngvideo.mp4"), *predict[5:]], None),
            (f"predict 640 x 360 video, {frames} frames (torch and the model alone)",
             [*predict[:4], str(small), *predict[5:]], None),
            (f"predict 8K video, {frames} frames, the shipped model (its ONNX twin: no torch)",
             [*cli, "predict", str(video), "--frames", str(frames)], None),
            (f"predict 8K video, {frames} frames, the shipped model with heatmaps (--save: the twin's maps)",
             [*cli, "predict", str(video), "--frames", str(frames), "--save", str(t / "visuals")], None),
            (f"predict 8K video, {frames} frames, the shipped .safetensors with heatmaps (--save: torch Grad-CAM)",
             [*cli, "predict", str(video), "--frames", str(frames), "--save", str(t / "visuals_torch"),
              "--model", str(shipped_file())], None),
            ("faces on PNGs declaring 100000^2 and 30000^2", [*cli, "faces", str(t / "bombs"), "--out",
                                                             str(t / "faces"), "--protocol", "seed"], None),
            ("srm on the same PNGs", [*cli, "srm", str(t / "bombs"), "--out", str(t / "srm")], None),
            ("frames (8 per video) on a bomb, the PNG 'video' and the 8K video", [
                *cli, "frames", str(ds), "--out", str(t / "frames"), "--frames", "8"], None),
        ]
        figures = {}
        for name, cmd, env in rows:
            rc, mb, tail = peak_mb(cmd, env)
            figures[name] = mb
            print(f"{mb:8.0f} MB peak RSS  exit {rc}  {name}" + (f"\n         {tail}" if rc not in (0, 1) else ""))
        base = figures[rows[1][0]]
        print(f"predict on the 8K video: {figures[rows[0][0]]:.0f} MB vs {base:.0f} MB without scaling "
              f"({figures[rows[0][0]] / base:.2f}x)")
    return 0


def run(root: Path, n: int, size: int, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(n), str(size), str(cache)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000])
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--media", action="store_true", help="peak RSS of CLI commands on hostile media (issue 12)")
    ap.add_argument("--frames", type=int, default=8, help="--media: frames predict samples from the 8K video")
    args = ap.parse_args(argv)
    if args.media:
        return media(args.frames)
    small, large = args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "crops"
        t0 = time.perf_counter()
        make_crops(root, large)
        print(f"generated {large} crops (96 px JPEG) in {time.perf_counter() - t0:.1f} s; featurising and decoding at "
              f"{args.input_size} px with MobileNetV2, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        results = [run(root, n, args.input_size, Path(tmp) / f"cache{n}") for n in (small, large)]
    for r in results:
        print(f"{r['n']:>6} crops: peak RSS {r['peak_rss_mb']:7.1f} MB, features {r['shape']} on disk, "
              f"{r['seconds']:.1f} s")
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(f"peak RSS ratio {large}/{small} crops: {ratio:.2f}x for {large / small:.0f}x the crops "
          f"(flat = ~1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
