"""The quality search: many recipes of bench/quality.py on one GPU, each at a CPU-feasible budget.

Every config's epochs are set so that its training costs BUDGET_MIN minutes at the train throughput measured
on the 2-core CPU (cpu_speed.py), so a GPU winner is a recipe the CPU bench can afford. Phase 1 changes one
thing at a time from BASE; phase 2 combines the phase-1 winners, chosen by *validation* AUC (test AUC is
only reported). Several trainer processes share the GPU (small models at batch 32 are launch-bound).

    python bench/_quality_lab/grid.py --data .lab_data/dfdc-faces --weights .lab_data/weights --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import queue
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality as q

cv2.setNumThreads(1)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
# train images/s, fwd+bwd+AdamW, channels_last, batch 32, this 2-core CPU (cpu_speed.py, shared machine)
CPU_IMG_S = {("mobilenet_v2", 128): 78, ("mobilenet_v2", 160): 39, ("mobilenet_v2", 192): 27,
             ("mobilenet_v2", 224): 16, ("efficientnet_lite0", 128): 45, ("efficientnet_lite0", 160): 33,
             ("efficientnet_lite0", 192): 19, ("efficientnet_lite0", 224): 14}
BUDGET_MIN = 20.0
N_TRAIN = 4200
BASE = q.Recipe(name="base")


def at_budget(r: q.Recipe, minutes: float = BUDGET_MIN) -> q.Recipe:
    if r.mode == "head":
        return r
    ep = minutes * 60 * CPU_IMG_S[(r.backbone, r.size)] / N_TRAIN
    return dataclasses.replace(r, epochs=round(ep, 1))


def v(name: str, **kw) -> q.Recipe:
    return at_budget(dataclasses.replace(BASE, name=name, **kw))


def phase1() -> tuple[list[tuple[str, q.Recipe, int]], list[tuple[str, q.Recipe, int]]]:
    """(core, extras): (dimension, recipe, seed) in priority order. Core decides phase 2; extras inform."""
    core = [
        ("seed", q.SEED, 0),
        ("base", at_budget(BASE), 0),
        ("arch", v("lite0@160", backbone="efficientnet_lite0"), 0),
        ("arch", v("mbv2@128", size=128), 0),
        ("arch", v("mbv2@192", size=192), 0),
        ("sbi", v("sbi.25", sbi=0.25), 0),
        ("lr", v("lr1e-3", lr=1e-3), 0),
        ("lr", v("lr2e-4", lr=2e-4), 0),
        ("aug", v("aug-none", aug=()), 0),
        ("aug", v("aug+crop", aug=("flip", "jpeg", "color", "blur", "crop")), 0),
        ("arch", v("lite0@128", backbone="efficientnet_lite0", size=128), 0),
        ("arch", v("lite0@192", backbone="efficientnet_lite0", size=192), 0),
        ("arch", v("mbv2@224", size=224), 0),
        ("sbi", v("sbi.5", sbi=0.5), 0),
        ("pairs", v("no-pairs", pairs=False), 0),
        ("ls", v("ls.1", label_smoothing=0.1), 0),
        ("pool", v("maxpool", pool="max"), 0),
        ("drop", v("drop.2", drop_rate=0.2), 0),
    ]
    extras = [
        ("ceiling", dataclasses.replace(at_budget(dataclasses.replace(
            BASE, backbone="efficientnet_lite0", size=224), 70), name="CEIL-lite0@224-70min"), 0),
        ("noise", dataclasses.replace(at_budget(BASE), name="base-s1"), 1),
        ("budget", dataclasses.replace(at_budget(BASE, 10), name="base-10min"), 0),
        ("budget", dataclasses.replace(at_budget(BASE, 30), name="base-30min"), 0),
        ("opt", v("adam-const", optimizer="adam", lr=1e-4, weight_decay=0.0, warmup=0.0, schedule="const"), 0),
        ("mode", dataclasses.replace(BASE, name="head-avg160", mode="head", pool="avg", epochs=10,
                                     optimizer="adam", lr=1e-3, aug=()), 0),
        ("lr", v("lr2e-3", lr=2e-3), 0),
        ("aug", v("aug-flip", aug=("flip",)), 0),
        ("noise", dataclasses.replace(at_budget(BASE), name="base-s2"), 2),
    ]
    return core, extras


def phase2(done: list[dict]) -> list[tuple[str, q.Recipe, int]]:
    """Combine, on top of the best (backbone, size), every phase-1 change that beat base on val AUC."""
    by = {d["name"]: d for d in done}
    if "base" not in by:
        return []
    base_val = by["base"]["val_auc"]
    arch = max((d for d in done if d["dim"] in ("arch", "base")), key=lambda d: d["val_auc"])
    kw = {"backbone": arch["recipe"]["backbone"], "size": arch["recipe"]["size"]}
    gains = {}
    for dim in ("lr", "aug", "sbi", "ls", "pairs", "pool", "drop"):
        best = max((d for d in done if d["dim"] == dim), key=lambda d: d["val_auc"], default=None)
        if best and best["val_auc"] > base_val:
            field = {"lr": "lr", "aug": "aug", "sbi": "sbi", "ls": "label_smoothing", "pairs": "pairs",
                     "pool": "pool", "drop": "drop_rate"}[dim]
            gains[field] = best["recipe"][field]
    if "aug" in gains:
        gains["aug"] = tuple(gains["aug"])
    combo = at_budget(dataclasses.replace(BASE, name="combo", **kw, **gains))
    out = [("combo", combo, 0), ("combo", dataclasses.replace(combo, name="combo-s1"), 1)]
    arch_only = at_budget(dataclasses.replace(BASE, name="combo-arch+sbi.25", **kw, sbi=0.25))
    out.append(("combo", arch_only, 0))
    out.append(("combo", dataclasses.replace(at_budget(combo, 25), name="combo-25min"), 0))
    return out


def _load(args_data: Path, rows: list, size: int, path: Path) -> None:
    if not path.exists():
        np.save(path, q.load_faces(args_data, rows, size).images)


def worker(jobs: mp.Queue, results: mp.Queue, data: str, weights: str, cache: str, split: dict, workers: int,
           deadline: float) -> None:
    import torch

    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    while True:
        job = jobs.get()
        if job is None:
            return
        dim, rd, seed = job
        r = q.Recipe(**{**rd, "aug": tuple(rd["aug"])})
        if time.time() > deadline:
            results.put({"name": r.name, "dim": dim, "skipped": "deadline"})
            continue
        t0 = time.time()
        try:
            faces = {}
            for s in ("train", "val", "test"):
                labels = np.array([x[1] for x in split[s]])
                faces[s] = q.Faces(np.load(f"{cache}/{s}_{r.size}.npy", mmap_mode="r"), labels,
                                   np.array([x[2] for x in split[s]]))
            w = Path(weights) / f"{r.backbone}.pt"
            test = faces["test"]
            if r.mode == "head":
                model, hist = q.train_head(r, faces["train"], device, w, seed), []
            else:
                model, hist = q.train_full(r, faces["train"], faces["val"], device, weights=w, seed=seed,
                                           workers=workers, on_epoch=lambda e, m, t=test: {"test_auc": q.auc(
                                               t.labels, q.predict_logits(m, t.images, device, flip=False))})
            z = q.predict_logits(model, test.images, device, flip=True)
            z0 = q.predict_logits(model, test.images, device, flip=False)
            zv = q.predict_logits(model, faces["val"].images, device, flip=True)
            n_img = round(r.epochs * (len(split["train"]) // r.batch)) * r.batch if r.mode == "full" else 0
            results.put({
                "name": r.name, "dim": dim, "seed": seed, "recipe": dataclasses.asdict(r),
                "test_auc": q.auc(test.labels, z), "test_auc_noflip": q.auc(test.labels, z0),
                "test_auc_last": hist[-1]["test_auc"] if hist else None,
                "val_auc": q.auc(faces["val"].labels, zv), "images": n_img,
                "cpu_min": n_img / CPU_IMG_S[(r.backbone, r.size)] / 60 if n_img else None,
                "gpu_s": time.time() - t0, "history": hist})
        except Exception as e:  # noqa: BLE001 - keep the grid going; the error is in the table
            results.put({"name": r.name, "dim": dim, "error": f"{type(e).__name__}: {e}"})


def fmt(d: dict) -> str:
    if "error" in d or "skipped" in d:
        return f"{d['name']:<22} {d['dim']:<8} {d.get('error') or 'skipped: ' + d['skipped']}"
    r = d["recipe"]
    last = f"{d['test_auc_last']:.4f}" if d["test_auc_last"] is not None else "  -   "
    cpu = f"{d['cpu_min']:5.1f}" if d["cpu_min"] else "  -  "
    return (f"{d['name']:<22} {d['dim']:<8} {r['backbone'][:6]}@{r['size']:<4} ep {r['epochs']:>5} "
            f"val {d['val_auc']:.4f} test {d['test_auc']:.4f} noTTA {d['test_auc_noflip']:.4f} last {last} "
            f"cpu_min {cpu} gpu_s {d['gpu_s']:5.1f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/grid_out"))
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=370, help="start no config after this")
    ap.add_argument("--hard", type=float, default=400, help="print the table and stop after this")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU check of the plumbing")
    args = ap.parse_args()
    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = q.read_labels(args.data)
    split = q.split_groups(rows)
    core, extras = phase1()
    if args.smoke:
        keep = {g for s_ in split.values() for _, _, g in s_[::100]}
        split = {s: [x for x in v_ if x[2] in keep] for s, v_ in split.items()}
        core = [(d, dataclasses.replace(r, epochs=0.5 if r.mode == "full" else 1), s)
                for d, r, s in core[:3] + [core[5]]]
        extras = extras[1:2]
    jobs_list = core + extras
    cache = Path("/tmp/lab_faces_smoke" if args.smoke else "/tmp/lab_faces")
    cache.mkdir(exist_ok=True)
    sizes = sorted({r.size for _, r, _ in jobs_list} | {160, 192})
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda a: _load(args.data, split[a[0]], a[1], cache / f"{a[0]}_{a[1]}.npy"),
                    [(s, z) for z in sizes for s in ("train", "val", "test")]))
    try:
        import torch
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    except Exception as e:  # noqa: BLE001
        print(e)
    print(f"decoded {sizes} in {time.time() - t_start:.0f}s; n={ {s: len(v_) for s, v_ in split.items()} }",
          flush=True)
    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    deadline = t_start + args.seconds
    procs = [ctx.Process(target=worker, args=(jobs, results, str(args.data), str(args.weights), str(cache),
                                              split, args.workers, deadline)) for _ in range(args.procs)]
    for p in procs:
        p.start()
    backlog, outstanding, done, combos_sent = list(core), 0, [], False
    core_names = {r.name for _, r, _ in core}
    extras = list(extras)
    while True:
        while outstanding < args.procs and (backlog or extras):
            d, r, s = (backlog or extras).pop(0)
            jobs.put((d, dataclasses.asdict(r), s))
            outstanding += 1
        if outstanding == 0:
            break
        try:
            d = results.get(timeout=max(1.0, t_start + args.hard - time.time()))
        except queue.Empty:
            print(f"hard stop at {args.hard}s with {outstanding} configs running", flush=True)
            break
        outstanding -= 1
        done.append(d)
        print(f"[{time.time() - t_start:5.0f}s] {fmt(d)}", flush=True)
        (args.out / "grid.json").write_text(json.dumps(done, indent=1, default=str))
        if not combos_sent and core_names <= {x["name"] for x in done}:
            combos_sent = True
            combos = [] if args.smoke else phase2([x for x in done if "val_auc" in x])
            for _, r2, _ in combos:
                print(f"phase 2: {r2}", flush=True)
            backlog = combos + backlog
    for _ in procs:
        jobs.put(None)
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    print("\n=== sorted by val AUC ===")
    for d in sorted([x for x in done if "val_auc" in x], key=lambda x: -x["val_auc"]):
        print(fmt(d))
    print(f"total {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
