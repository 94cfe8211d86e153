"""Should the torch-installed decode path use torchcodec? Measured against dfdetect's seeking PyAV decoder.

For each video: 32 evenly spaced frames (what ``predict`` takes), decoded by
- ``pyav-seek``: :func:`dfdetect.preprocess.frames.read_frames` (the current decoder, BGR numpy);
- ``torchcodec``: ``VideoDecoder(...).get_frames_at(indices)`` in ``exact`` and ``approximate`` seek modes,
  converted to the same BGR numpy frames the stages need.
It prints the median wall time of 5 runs, the ratio to pyav-seek, and whether the frames are the same pixels.

torchcodec is optional and not a dependency: ``pip install torchcodec`` and a system FFmpeg (4 to 7) are needed.

    python bench/decode.py [--videos ../shared/data/videos/*.mp4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from predict import make_video  # the 10 s 720p H.264 bench clip

from dfdetect.preprocess.frames import count_frames, read_frames, sample_indices

FRAMES = 32
RUNS = 5


def _median_s(fn) -> tuple[float, object]:
    out = fn()  # warm-up (file cache, codec set-up)
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _torchcodec(path: Path, mode: str):
    from torchcodec.decoders import VideoDecoder

    def run() -> list[tuple[int, np.ndarray]]:
        dec = VideoDecoder(str(path), seek_mode=mode, dimension_order="NHWC")
        idx = sample_indices(dec.metadata.num_frames, FRAMES)
        batch = dec.get_frames_at(idx).data.numpy()
        return [(i, np.ascontiguousarray(f[..., ::-1])) for i, f in zip(idx, batch, strict=True)]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", nargs="*", type=Path, default=[])
    args = ap.parse_args()
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads its FFmpeg libraries)
    except (ImportError, OSError, RuntimeError) as exc:
        sys.exit(f"torchcodec is not usable here ({type(exc).__name__}); pip install torchcodec, and a system FFmpeg")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; torchcodec {torchcodec.__version__}; "
          f"{FRAMES} frames per video, median of {RUNS} runs")
    with tempfile.TemporaryDirectory() as tmp:
        videos = [make_video(Path(tmp) / "bench_720p_10s.mp4"), *args.videos]
        for video in videos:
            total = count_frames(video)
            base_s, ours = _median_s(lambda v=video: read_frames(v, FRAMES))
            print(f"\n{video.name}: {total} frames; pyav-seek {base_s * 1000:.0f} ms (1.00x)")
            for mode in ("exact", "approximate"):
                try:
                    s, theirs = _median_s(_torchcodec(video, mode))
                except Exception as exc:  # noqa: BLE001 - a bench line, not a crash
                    print(f"  torchcodec {mode}: failed ({type(exc).__name__}: {exc})")
                    continue
                same_idx = [i for i, _ in theirs] == [i for i, _ in ours]
                diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for (_, a), (_, b) in zip(
                    ours, theirs, strict=False)) if same_idx else -1
                print(f"  torchcodec {mode}: {s * 1000:.0f} ms ({base_s / s:.2f}x pyav-seek); same indices: "
                      f"{same_idx}; max pixel difference {diff}")


if __name__ == "__main__":
    main()
