"""parallel: results in input order, and byte-identical stage outputs serial vs process pool (vs Ray)."""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfdetect import parallel as P
from dfdetect.config import FaceConfig, FrameConfig, SRMConfig
from dfdetect.data.labels import Label
from dfdetect.data.sources import MediaItem
from dfdetect.errors import DfdetectError
from dfdetect.preprocess.faces import extract_faces
from dfdetect.preprocess.frames import extract_frames
from dfdetect.preprocess.srm import make_srm_copy

sys.path.insert(0, str(Path(__file__).parent))
from test_faces import face_frame
from test_frames import make_video

# Pool tests use builtins: a worker unpickling a function from this module would import the whole
# test module (and torch with it) in every worker.
_square = partial(pow, exp=2)


def test_map_items_serial_and_pool_keep_order():
    done = []
    assert P.map_items(_square, range(6), progress=done.append, weight=lambda x: x + 1) == [0, 1, 4, 9, 16, 25]
    assert done == [1, 2, 3, 4, 5, 6]
    done.clear()
    got = P.map_items(_square, list(range(40)), workers=2, progress=done.append)
    assert got == [x * x for x in range(40)] and sum(done) == 40
    assert P.pool_context().get_start_method() in ("forkserver", "spawn")


def test_map_items_errors(monkeypatch):
    with pytest.raises(ValueError, match="math domain error"):
        P.map_items(math.sqrt, [4.0, -1.0], workers=2)
    with pytest.raises(DfdetectError, match="workers"):
        P.map_items(_square, [1], workers=-1)
    with pytest.raises(DfdetectError, match="unknown engine"):
        P.map_items(_square, [1], engine="dask")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(DfdetectError, match=r"pip install dfdetect\[ray\]"):
        P.map_items(_square, [1], engine="ray")


def test_run_threads_keeps_order_and_a_failure_stops_the_others():
    """Results come back in job order; one job's error is raised, and a job still running is told to stop."""
    import threading
    import time

    assert P.run_threads([lambda stop, k=k: (k, threading.current_thread().name) for k in range(3)], 1) == [
        (k, threading.current_thread().name) for k in range(3)]  # at_once=1: in turn, in this thread
    got = P.run_threads([lambda stop, k=k: (k, threading.current_thread().name) for k in range(3)], 3)
    assert [k for k, _ in got] == [0, 1, 2] and all(name.startswith("dfdetect") for _, name in got)

    stopped = threading.Event()

    def slow(stop: threading.Event) -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set():
            assert time.monotonic() < deadline, "never told to stop"
            time.sleep(0.01)
        stopped.set()
        raise RuntimeError("stopped")  # what a stopped member raises; the caller must not see it

    def broken(stop: threading.Event) -> None:
        time.sleep(0.05)
        raise ValueError("member 1: no readable crops")

    with pytest.raises(ValueError, match="member 1"):
        P.run_threads([slow, broken], 2)
    assert stopped.is_set()


def _tree(root: Path) -> dict[str, bytes]:
    """Every output file (done-markers included) by relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> list[MediaItem]:
    root = tmp_path_factory.mktemp("media")
    items = []
    for k in range(3):
        path = make_video(root / f"v{k}.mp4", n=20, size=(64, 48), seed=k)
        items.append(MediaItem(path, f"real/v{k}.mp4", Label.REAL, (f"v{k}",)))
    img = root / "face.png"
    cv2.imwrite(str(img), face_frame())
    items.append(MediaItem(img, "real/face.png", Label.REAL, ("face",)))
    bad = root / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    items.append(MediaItem(bad, "real/bad.mp4", Label.REAL, ("bad",)))
    return items


def _run_all(media: list[MediaItem], out: Path, **kw) -> dict[str, dict[str, bytes]]:
    fr = extract_frames(media, out / "frames", FrameConfig(num_frames=5), **kw)
    fa = extract_faces(out / "frames", out / "faces", FaceConfig(detector="haar"), **kw)
    sr = make_srm_copy(out / "faces", out / "srm", SRMConfig(), **kw)
    assert (fr.written, len(fr.failed), fa.written, sr.written) == (16, 1, 1, 1)
    return {stage: _tree(out / stage) for stage in ("frames", "faces", "srm")}


@pytest.fixture(scope="module")
def pool_outputs(media, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    return _run_all(media, tmp_path_factory.mktemp("pool"), workers=2)


def test_pool_outputs_identical_to_serial(media, pool_outputs, tmp_path):
    serial = _run_all(media, tmp_path / "serial")
    assert serial == pool_outputs
    assert sum(len(v) for v in serial.values()) > 20


@pytest.mark.slow  # starting a local Ray instance takes ~10 s
def test_ray_outputs_identical_to_pool(media, pool_outputs, tmp_path):
    """A local Ray instance runs the same stages as Ray tasks; every output byte matches the pool's."""
    ray = pytest.importorskip("ray")
    try:
        got = _run_all(media, tmp_path / "ray", workers=2, engine="ray")
    finally:
        ray.shutdown()
    assert got == pool_outputs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent through prctl")
def test_pool_workers_die_when_their_parent_is_killed(tmp_path):
    """Regression: kill -9 of a ``-j N`` run left its workers running (and writing) for as long as their jobs took."""
    import os
    import signal
    import subprocess
    import time

    (tmp_path / "job.py").write_text(
        "import os, time\n"
        "def mark(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(300)\n")
    marks = [tmp_path / f"worker{k}.pid" for k in range(2)]
    script = ("import job\nfrom dfdetect.parallel import map_items\n"
              f"map_items(job.mark, {[str(m) for m in marks]!r}, workers=2)\n")
    src = Path(P.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(src)])}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)

    def alive(pid: int) -> bool:  # a zombie waiting for a reaper is dead too
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not all(m.is_file() and m.read_text() for m in marks):
            assert time.monotonic() < deadline and parent.poll() is None, "the workers never started"
            time.sleep(0.1)
        pids = [int(m.read_text()) for m in marks]
        assert all(alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30  # a generous bound, not a timing: before the fix they lived 300 s
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in pids), "workers outlived their killed parent"
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if parent.poll() is None:
            parent.kill()
