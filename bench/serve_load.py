"""``dfdetect serve`` under load: 1, 4 and 16 concurrent clients on loopback (issue 14 item 4).

Starts ``dfdetect serve`` in its own process (its default limits: a pool of one worker per core, 8
queued, 16 uploads at once), then drives ``POST /api/v1/detect`` with N client threads, each sending the
same files in turn, for at most ``--seconds`` and ``--requests`` per level. A client that gets 503 waits
``Retry-After`` seconds, as a well-behaved client does. Prints per level: requests/s (answered 200 only),
p50 and p95 latency of the 200s, the count of each status code (``error:<type>`` for a connection that
failed) and the server's peak RSS (VmHWM) and the largest RSS sampled during the level.

Baseline, measured in the same run on the same files: ``dfdetect predict --workers 2`` where predict has
``--workers`` (its wall time, process start and model load included); otherwise sequential predict of the
same files through the Python API (``predict_file`` with the work the service does per upload: Grad-CAM
and images kept), in this process. The line says which. Targets: at 4 clients, throughput within 20 % of
the baseline (ratio >= 0.8); at 16 clients no status other than 200 and 503, memory bounded.

Model: the shipped default model when this install has it; else MobileNetV2 (random weights, the default
protocol: MTCNN, two members, mirror TTA) saved to a temporary file. The weights do not change the time.

    nice -n 15 python bench/serve_load.py                     # ~5 min on a loaded 2-core machine
    python bench/serve_load.py --clients 1 4 --seconds 30 --frames 8
    python bench/serve_load.py --no-explain                   # scores only, no heatmaps
    python bench/serve_load.py --torch                        # the .safetensors file: torch and its Grad-CAM
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def pick_files(n_videos: int, n_images: int, tmp: Path) -> list[Path]:
    """Shared videos and LFW photos when present; else a generated face video and photo."""
    vids = sorted((SHARED / "videos").glob("*.mp4"), key=lambda v: v.stat().st_size)  # small first
    imgs = sorted((SHARED / "lfw-faces").glob("*.jpg"))
    files = vids[:n_videos] + imgs[:n_images]
    if files:
        return files
    import cv2
    from skimage.data import astronaut

    face = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp / "face.png"), face)
    wr = cv2.VideoWriter(str(tmp / "face.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (512, 512))
    for i in range(40):
        wr.write(face[i % 8:i % 8 + 512, :512])
    wr.release()
    return [tmp / "face.mp4", tmp / "face.png"]


def model_path(tmp: Path, torch: bool = False) -> tuple[str, str]:
    """What ``--model`` gets: the shipped model's name (so ``serve`` and ``predict`` find its ONNX twin, as a
    user's commands do; ``torch``: its .safetensors file itself, scored and explained through torch), else a
    random-weights file."""
    from dfdetect.model import hub

    entry = hub.get_model(hub.DEFAULT_MODEL)
    if entry is not None and entry.shipped_path.is_file():
        if torch:
            return str(entry.shipped_path), f"shipped {entry.name}, its .safetensors through torch"
        return entry.name, f"shipped {entry.name}"
    from dfdetect.config import Protocol
    from dfdetect.model.backbones import create_backbone, ensemble_of
    from dfdetect.model.detector import Detector

    p = Protocol.default()
    nets = [create_backbone(p.model.backbone, pretrained=False, pool=p.model.pool, num_classes=1)
            for _ in range(p.model.ensemble)]
    path = Detector.from_model(ensemble_of(nets), p, threshold=0.5).save(tmp / "detector.safetensors")
    return str(path), (f"{p.model.backbone} x{p.model.ensemble}, random weights, default protocol "
                  f"({p.faces.detector} faces, tta_flip={p.model.tta_flip})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_level(url: str, pid: int, bodies: list[tuple[str, bytes]], clients: int, seconds: float,
              max_requests: int) -> dict:
    lat: list[float] = []
    codes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + seconds
    peak_rss = [rss_kb(pid, "VmRSS")]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak_rss[0] = max(peak_rss[0], rss_kb(pid, "VmRSS"))

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            i = k
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                name, data = bodies[i % len(bodies)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/api/v1/detect", files={"file": (name, data)})
                    code = str(r.status_code)
                    if r.status_code != 200 and not r.headers.get("content-type", "").startswith("application/json"):
                        code += "(not JSON)"
                except httpx.HTTPError as exc:
                    code, r = f"error:{type(exc).__name__}", None
                dt = time.perf_counter() - t0
                with lock:
                    codes[code] += 1
                    if code == "200":
                        lat.append(dt)
                if r is not None and r.status_code == 503:
                    time.sleep(min(float(r.headers.get("retry-after", "1")), max(0.0, deadline - time.monotonic())))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    lat.sort()
    return {"clients": clients, "wall": wall, "ok": len(lat), "rps": len(lat) / wall, "codes": dict(codes),
            "p50": statistics.median(lat) if lat else float("nan"),
            "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
            "rss_mb": peak_rss[0] / 1024, "hwm_mb": rss_kb(pid, "VmHWM") / 1024}


def baseline(files: list[Path], model: str, frames: int, seconds: float, max_requests: int) -> tuple[float, str]:
    """Files per second of predict on the same files: ``--workers 2`` if predict has it, else the API in turn."""
    cli = [sys.executable, "-m", "dfdetect"]
    help_text = subprocess.run([*cli, "predict", "--help"], capture_output=True, text=True, check=False).stdout
    if "--workers" in help_text:
        reps = max(1, min(max_requests, 24) // len(files))
        with tempfile.TemporaryDirectory() as tmp:
            links = []
            for r in range(reps):  # distinct names, so no run treats a file as done already
                for f in files:
                    links.append(Path(tmp) / f"{r}_{f.name}")
                    links[-1].symlink_to(f.resolve())
            t0 = time.perf_counter()
            proc = subprocess.run([*cli, "predict", *map(str, links), "--model", str(model), "--frames",
                                   str(frames), "--workers", "2"], capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
        if proc.returncode == 0:
            return len(links) / wall, (f"`dfdetect predict --workers 2` on {len(links)} files ({wall:.1f} s wall, "
                                       "process start and model load included)")
        print(f"predict --workers failed ({proc.stderr.strip().splitlines()[-1:]}); using the API in turn")
    code = f"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dfdetect.inference import predict as P
from dfdetect.cli.use import load_scorer
from dfdetect.model.hub import resolve
files = [Path(f) for f in {[str(f) for f in files]!r}]
det = load_scorer(resolve({model!r}).path)
fd = P.create_face_finder(P.resolve_face_config(det.protocol_.faces)[0])
def one(f):  # the work the service does per upload
    P.predict_file(f, det, frames={frames}, face_detector=fd, explain=True, keep_images=True).to_json(images=True)
def loop():
    one(files[0])  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < {max_requests} and time.perf_counter() - t0 < {seconds}:
        one(files[done % len(files)])
        done += 1
    return done, time.perf_counter() - t0
with ThreadPoolExecutor(1) as ex:  # a worker thread, as in the service (torch threads behave alike)
    print(json.dumps(ex.submit(loop).result()))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit("baseline failed: " + proc.stderr[-2000:])
    done, wall = json.loads(proc.stdout.strip().splitlines()[-1])
    return done / wall, (f"sequential predict through the API, one file after another in one worker thread, as "
                         f"the service runs it ({done} files, {wall:.1f} s; predict has no --workers in this "
                         "checkout, so this baseline uses one core where the service may use all)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=60.0, help="time bound per level")
    ap.add_argument("--requests", type=int, default=64, help="request bound per level")
    ap.add_argument("--frames", type=int, default=8, help="frames per video (the server's --frames)")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--no-explain", action="store_true",
                    help="serve --no-explain: scores only, no heatmaps")
    ap.add_argument("--torch", action="store_true",
                    help="serve the shipped model's .safetensors file: scores and Grad-CAM through torch, not its "
                         "ONNX twin (the memory baseline)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dfdetect-serve-load-"))
    try:
        files = pick_files(args.videos, args.images, tmp)
        model, what = model_path(tmp, torch=args.torch)
        bodies = [(f.name, f.read_bytes()) for f in files]
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; model: {what}; "
              f"{len(files)} files ({sum(len(b) for _, b in bodies) / 1e6:.1f} MB: "
              f"{', '.join(f.name for f in files)}), {args.frames} frames per video", flush=True)
        base_fps, base_what = baseline(files, model, args.frames, args.seconds, args.requests)
        print(f"baseline: {base_fps:.2f} files/s, {base_what}; load average {os.getloadavg()[0]:.1f}", flush=True)

        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        server = subprocess.Popen([sys.executable, "-m", "dfdetect", "serve", "--model", str(model), "--port",
                                   str(port), "--frames", str(args.frames),
                                   *(["--no-explain"] if args.no_explain else [])], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))  # noqa: SIM115
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    health = httpx.get(url + "/healthz", timeout=2).json()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None:
                        raise SystemExit("server exited: " + (tmp / "server.log").read_text()[-2000:]) from None
                    time.sleep(0.5)
            else:
                raise SystemExit("server did not start in 5 min")
            print(f"server: pid {server.pid}, {health['workers']} workers, {health['max_queue']} queued, "
                  f"{health['max_uploads']} uploads at once, faces {health['face_detector']}; "
                  f"RSS at start {rss_kb(server.pid, 'VmRSS') / 1024:.0f} MB", flush=True)
            rows = []
            for n in args.clients:
                row = run_level(url, server.pid, bodies, n, args.seconds, args.requests)
                rows.append(row)
                print(f"clients {n:2d}: {row['rps']:.2f} req/s ({row['ok']} OK in {row['wall']:.1f} s), "
                      f"p50 {row['p50']:.2f} s, p95 {row['p95']:.2f} s, status {row['codes']}, "
                      f"server RSS max {row['rss_mb']:.0f} MB (peak since start {row['hwm_mb']:.0f} MB); "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        by = {r["clients"]: r for r in rows}
        if 4 in by:
            ratio = by[4]["rps"] / base_fps
            print(f"RATIO serve at 4 clients / baseline: {ratio:.2f}x ({by[4]['rps']:.2f} vs {base_fps:.2f} files/s; "
                  f"target >= 0.8) [{'met' if ratio >= 0.8 else 'NOT met'}]")
        if 16 in by:
            bad = {c: k for c, k in by[16]["codes"].items() if c not in ("200", "503")}
            grew = by[16]["rss_mb"] / max(1.0, by[4]["rss_mb"]) if 4 in by else float("nan")
            print(f"16 clients: statuses other than 200/503: {bad or 'none'} "
                  f"[{'met' if not bad else 'NOT met'}]; server RSS at 16 / at 4 clients: {grew:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
