"""Peak memory while featurising 1,000 vs 10,000 generated face crops: it must stay flat.

Issue 5 item 4. Each size runs in a fresh subprocess that builds the crop table, loads MobileNetV2
(offline ImageNet weights) and calls ``dfdetect.features.extract_features``, which streams crops
in batches into a disk-backed ``.npy`` memmap, then ``dfdetect.data.decode_crops``, which appends the
decoded crops a fine-tune reads to a ``.npy`` file; the child reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). A whole-dataset approach would grow ~10x from
1,000 to 10,000 crops; a streaming one stays flat.

    nice -n 10 python bench/memory.py                # 1,000 vs 10,000 crops at 128 px
    python bench/memory.py --sizes 500 5000 --input-size 64
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
from dfdetect.backbones import create_backbone
from dfdetect.data import build_crop_table, decode_crops
from dfdetect.datasets import discover
from dfdetect.features import extract_features

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


def run(root: Path, n: int, size: int, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(n), str(size), str(cache)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000])
    ap.add_argument("--input-size", type=int, default=128)
    args = ap.parse_args(argv)
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
