"""Verdicts for many files, on one machine or a Ray cluster, written as they arrive and resumable.

``scan`` scores every video and image under ``paths`` (files, folders, or list files with one path per
line) and yields one JSON-ready line per file, in the order they finish:

- a result: :meth:`dfdetect.inference.predict.PredictResult.to_json` plus ``model``, ``model_sha256`` and ``crops``;
- a file that cannot be used: ``{"schema", "file", "model", "model_sha256", "frames_requested", "crops",
  "error": "one line naming the file and the problem"}``. It is counted and the scan goes on.

Where the work runs:

- ``workers=0``: in this process, the model loaded once;
- ``workers=N``: a local process pool (:class:`~concurrent.futures.ProcessPoolExecutor`, forkserver);
  each worker loads the model once and uses one thread, so N workers use N cores;
- ``engine="ray"``: a :class:`ray.util.ActorPool` of actors that each hold the model (one CPU each; N
  actors, or one per CPU of the cluster with ``workers=0``). The files must be readable at the same path
  on every node (a shared file system); only results travel back, and only the driver writes.

With ``jsonl``, each line is appended, flushed and fsynced as it arrives, so a killed run loses no
finished line. A rerun skips the files already scored in the file and tries again those with an error line (a
file missing then, a network share that failed, a limit changed since): its new line follows the old one, and the
last line for a file is its answer. It also cuts off a torn last line a kill left. A file holding lines of another
model (its sha256) or other settings (``frames``, ``crops``) is refused in one line that names the difference, as
a stage folder made with other settings is: one file, one set of settings. The file is locked while a scan writes it: two scans cannot
interleave lines.

Why one file: the three engines share the job record, the resume key and the JSON-lines writer; apart,
each would restate them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from dfdetect._io import lock_exclusive, sha256_file
from dfdetect.config import INFERENCE
from dfdetect.errors import BadInputError, DfdetectError, WeightsError, one_line
from dfdetect.parallel import ProgressCallback
from dfdetect.preprocess.stage import StageReport

__all__ = ["LIST_SUFFIXES", "SCAN_SCHEMA", "ModelRef", "expand_inputs", "expand_lists", "read_done", "scan"]

SCAN_SCHEMA = "dfdetect.scan/1"
#: A path with one of these suffixes is a list of paths (one a line; blank lines and ``#`` lines skipped).
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
Engine = Literal["process", "ray"]


# --------------------------------------------------------------------------- the model, as workers load it


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the model once: the file, and its identity for the resume key."""

    path: Path
    onnx: bool = False
    name: str | None = None  #: a catalog name, when it has one
    sha256: str = ""

    @classmethod
    def of(cls, path: str | Path, *, onnx: bool = False, name: str | None = None) -> ModelRef:
        """The model file (a run folder means its detector.safetensors) and its sha256."""
        path = Path(path)
        if path.is_dir():
            from dfdetect.model.detector import detector_file

            path = detector_file(path)
        if not path.is_file():
            raise WeightsError("no such model file", path=path)
        return cls(path=path, onnx=onnx or path.suffix.lower() == ".onnx", name=name, sha256=sha256_file(path))

    @property
    def label(self) -> str:
        return self.name or self.path.name

    def load(self) -> Any:
        if self.onnx:
            from dfdetect.model.export import OnnxDetector

            return OnnxDetector.load(self.path)
        from dfdetect.model.detector import Detector

        return Detector.load(self.path)


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, sent once (picklable)."""

    model: ModelRef
    frames: int = INFERENCE.frames
    crops: bool = False

    def stamp(self) -> dict[str, Any]:
        return {"model": self.model.label, "model_sha256": self.model.sha256, "crops": self.crops}

    def frames_for(self, file: str) -> int:
        from dfdetect.data.labels import IMAGE_SUFFIXES

        return 1 if Path(file).suffix.lower() in IMAGE_SUFFIXES else self.frames

    def key(self, file: str) -> tuple[str, str, int, bool]:
        return (file, self.model.sha256, self.frames_for(file), self.crops)

    def error_line(self, file: str, message: str) -> dict[str, Any]:
        return {"schema": SCAN_SCHEMA, "file": file, **self.stamp(), "frames_requested": self.frames_for(file),
                "error": message}


class _Worker:
    """The model and face finder of one process, loaded on first use and kept for every later file."""

    def __init__(self, job: _Job):
        from dfdetect.inference import predict as P

        self.job = job
        self.scorer = job.model.load()
        cfg, _ = P.resolve_face_config(self.scorer.protocol_.faces)
        self.face_cfg = cfg
        self.face_detector: Any = None

    def score(self, file: str) -> dict[str, Any]:
        import cv2

        from dfdetect.data.labels import IMAGE_SUFFIXES
        from dfdetect.inference import predict as P

        job = self.job
        whole = job.crops and Path(file).suffix.lower() in IMAGE_SUFFIXES
        if self.face_detector is None and not whole:
            self.face_detector = P.create_face_finder(self.face_cfg)  # as iter_predict: built once
        try:
            res = P.predict_file(file, self.scorer, frames=job.frames, face_detector=self.face_detector,
                                 crops=job.crops, name=file)
        except (DfdetectError, OSError, ValueError, RuntimeError, cv2.error) as exc:  # as iter_predict
            msg = str(exc) if isinstance(exc, DfdetectError) else f"{file}: {exc}"
            return job.error_line(file, one_line(msg) if msg else f"{file}: {type(exc).__name__}")
        return {**res.to_json(), **job.stamp()}


_WORKERS: dict[_Job, _Worker] = {}


def _score_in_worker(job: _Job, file: str) -> tuple[str, Any]:
    """``("line", dict)``, or ``("fatal", message)`` when the model cannot be loaded (every file would fail)."""
    worker = _WORKERS.get(job)
    if worker is None:
        try:
            worker = _WORKERS[job] = _Worker(job)
        except DfdetectError as exc:
            return "fatal", str(exc)
    return "line", worker.score(file)


class _RayScanner:
    """A Ray actor: holds the model for its whole life (made with ``ray.remote(num_cpus=1)``)."""

    def __init__(self, job: _Job):
        from dfdetect.parallel import _limit_threads

        _limit_threads()
        self.job = job

    def score(self, file: str) -> tuple[str, Any]:
        return _score_in_worker(self.job, file)


# --------------------------------------------------------------------------- inputs


def _read_list(list_file: Path) -> list[Path]:
    """Paths in a list file; relative ones are taken from the list file's folder."""
    try:
        # surrogateescape: a line that is not UTF-8 is a file name's own bytes, which os calls take back as they are
        text = list_file.read_text(encoding="utf-8-sig", errors="surrogateescape")  # -sig: a BOM is no path
    except OSError as exc:
        raise BadInputError(f"cannot read the list of files ({exc})", path=list_file) from None
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(p if p.is_absolute() else list_file.parent / p)
    return out


def _is_list(p: Path) -> bool:
    return p.suffix.lower() in LIST_SUFFIXES and p.is_file()


def expand_lists(paths: Iterable[str | Path], notes: list[str] | None = None) -> list[Path]:
    """``paths`` with each list file replaced by the paths it lists (what one-process ``predict`` takes), each
    path once: a list naming one image 3,000 times scored it 3,000 times. ``notes`` gets how many repeats went."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(_read_list(p) if _is_list(p) else [p])
    unique = list(dict.fromkeys(out))
    if len(unique) < len(out) and notes is not None:
        notes.append(f"{len(out) - len(unique)} repeated inputs left out: each file is scored once")
    return unique


def expand_inputs(paths: Iterable[str | Path], report: StageReport | None = None) -> list[str]:
    """Every media file under ``paths`` (files, folders, list files), once each, in order; a path that is
    missing or not media becomes a line in ``report.failed`` and is also returned, so it gets an error line."""
    from dfdetect.inference import predict as P

    seen: set[str] = set()
    out: list[str] = []
    repeats = 0

    def add(name: str) -> None:
        nonlocal repeats
        if name in seen:
            repeats += 1
        else:
            seen.add(name)
            out.append(name)

    for root in map(Path, paths):
        if _is_list(root):
            listed = _read_list(root)
            for p in listed:  # a folder in a list is expanded; a list in a list is not
                if p.is_dir():
                    for f in P.media_files(p, report.failed if report is not None else None):
                        add(str(f))
                else:
                    add(str(p))
            continue
        if root.is_dir():
            files = P.media_files(root, report.failed if report is not None else None)
            if not files and report is not None:
                report.failed.append(f"{root}: no videos or images in the folder")
            for f in files:
                add(str(f))
        else:
            add(str(root))  # a missing or non-media file: predict_file names the problem in its error line
    if repeats and report is not None:
        report.notes.append(f"{repeats} repeated inputs left out: each file is scored once")
    return out


# --------------------------------------------------------------------------- the jsonl file


def _line_key(obj: dict[str, Any]) -> tuple[Any, ...]:
    return (obj.get("file"), obj.get("model_sha256"), obj.get("frames_requested"), bool(obj.get("crops")))


def read_done(jsonl: str | Path, *, repair: bool = False, failed: set[tuple[Any, ...]] | None = None
              ) -> tuple[set[tuple[Any, ...]], int]:
    """The keys (file, model sha256, frames, crops) of the results an earlier scan wrote, and how many lines
    were unreadable. Only the keys are kept: 100,000 lines of per-frame results are hundreds of MB. A file
    whose lines are all errors is not done: its key goes into ``failed``, to be tried again.

    A kill can leave a torn last line (no newline): it is left out, and with ``repair=True`` cut off
    the file, so the next append starts on a fresh line.
    """
    path = Path(jsonl)
    done: set[tuple[Any, ...]] = set()
    errors: set[tuple[Any, ...]] = set()
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return done, 0
    bad, good_end = 0, 0
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):  # the torn tail of a killed run
                bad += 1
                break
            good_end += len(raw)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("file"), str):
                bad += 1
            elif "error" in obj:
                errors.add(_line_key(obj))
            else:
                done.add(_line_key(obj))
    if failed is not None:
        failed.update(errors - done)
    if repair and good_end < path.stat().st_size:
        os.truncate(path, good_end)
    return done, bad


def _check_same_settings(job: _Job, done: set[tuple[Any, ...]], jsonl: Path) -> None:
    """Refuse a results file whose lines were made with another model or settings: appending would mix them."""
    names = ("model sha256", "frames", "crops")
    for key in done:
        ours = job.key(key[0])
        diff = [f"{n} {theirs!r} (now {mine!r})" for n, theirs, mine in zip(names, key[1:], ours[1:], strict=True)
                if theirs != mine]
        if diff:
            raise DfdetectError(f"holds results made with other settings: {', '.join(diff)}, for {key[0]}; give "
                                "another --jsonl file, or the same model and settings to resume", path=jsonl)


class _Appender:
    """Append one line at a time: written in one call, flushed and fsynced before the next."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh: BinaryIO = path.open("ab")
        if not lock_exclusive(self.fh):
            self.fh.close()
            raise DfdetectError("another scan is writing this file; wait for it or choose another --jsonl",
                                path=path)

    def write(self, obj: dict[str, Any]) -> None:
        try:
            line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8 (Python holds its bytes as lone surrogates)
            line = json.dumps(obj, separators=(",", ":")).encode("ascii")  # \udcff escapes: read back the same
        self.fh.write(line + b"\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------------- engines


def _run_here(job: _Job, files: list[str]) -> Iterator[tuple[str, Any]]:
    for f in files:
        yield _score_in_worker(job, f)


def _run_pool(job: _Job, files: list[str], workers: int) -> Iterator[tuple[str, Any]]:
    from dfdetect.parallel import _pool

    window = 2 * workers  # a few queued per worker: no idle gaps, and memory stays flat for 100,000 files
    pending: set = set()
    it = iter(files)
    with _pool(min(workers, len(files)), None) as pool:
        try:
            for f in it:
                pending.add(pool.submit(_score_in_worker, job, f))
                if len(pending) >= window:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(pool.submit(_score_in_worker, job, nxt))
        except BrokenProcessPool:
            raise DfdetectError("a worker process died (out of memory, or a crash in a decoder); the lines "
                                "written so far are kept, run the same command again to resume") from None
        finally:
            for fut in pending:
                fut.cancel()


def _run_ray(job: _Job, files: list[str], workers: int, address: str | None) -> Iterator[tuple[str, Any]]:
    from dfdetect.parallel import _import_ray

    ray = _import_ray()
    from ray.util import ActorPool

    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
        if address is None:
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
    actors = []
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor_cls = ray.remote(num_cpus=1)(_RayScanner)
        actors = [actor_cls.remote(job) for _ in range(min(n, len(files)))]
        yield from ActorPool(actors).map_unordered(lambda a, f: a.score.remote(f), files)
    except ray.exceptions.RayError as exc:  # an actor died (out of memory, a node lost) or raised
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DfdetectError(f"a Ray worker failed ({first[:300]}); the lines written so far are kept, run "
                            "the same command again to resume") from None
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- the API


def scan(
    paths: Iterable[str | Path],
    model: str | Path | ModelRef,
    *,
    jsonl: str | Path | None = None,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    frames: int = INFERENCE.frames,
    crops: bool = False,
    onnx: bool = False,
    report: StageReport | None = None,
    progress: ProgressCallback | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one JSON-ready line per media file under ``paths``, as each finishes (see the module doc).

    Parameters
    ----------
    paths : files, folders (searched recursively) and list files (``.txt``/``.lst``/``.list``).
    model : a detector file (.safetensors, a run folder, .onnx) or a :class:`ModelRef`.
    jsonl : append each line here as it arrives, and skip the files it already holds for this model.
    workers : 0 = in this process; N = N pool processes, or N Ray actors (0 with Ray: one per cluster CPU).
    engine : "process" (local pool) or "ray" (``ray_address``: a cluster, e.g. "auto"; None: a local Ray).
    report : ``written`` (new lines), ``reused`` (files done by an earlier run), ``failed`` (error lines).
    on_total : called once with the number of files left to do, before any work (for a progress bar).

    Raises :class:`~dfdetect.errors.WeightsError` when the model cannot be loaded.
    """
    if workers < 0:
        raise DfdetectError(f"workers must be >= 0, got {workers}")
    if engine not in ("process", "ray"):
        raise DfdetectError(f"unknown engine {engine!r}; use 'process' or 'ray'")
    if report is None:
        report = StageReport("scan", None if jsonl is None else Path(jsonl), done_as="scored")
    ref = model if isinstance(model, ModelRef) else ModelRef.of(model, onnx=onnx)
    job = _Job(ref, frames=frames, crops=crops)
    files = expand_inputs(paths, report)
    writer = None
    if jsonl is not None:
        jsonl = Path(jsonl)
        if jsonl.is_dir():
            raise DfdetectError("--jsonl names a folder; give a file such as scan.jsonl", path=jsonl)
        writer = _Appender(jsonl)  # locked before the file is read: no other scan appends meanwhile
    try:
        if writer is not None:
            retry: set[tuple[Any, ...]] = set()
            done, bad = read_done(jsonl, repair=True, failed=retry)
            if bad:
                report.notes.append(f"{bad} unreadable line(s) in {jsonl} left out (a torn last line is cut off); "
                                    "those files are scored again")
            retried = len({k[0] for k in retry} & set(files))
            if retried:
                report.notes.append(f"{retried} file(s) with an error line in {jsonl} are tried again; the last "
                                    "line for a file is its answer")
            _check_same_settings(job, done | retry, jsonl)
            todo = [f for f in files if job.key(f) not in done]
            report.reused += len(files) - len(todo)
        else:
            todo = files
        if on_total is not None:
            on_total(len(todo))
        if not todo:
            return
        if engine == "ray":
            stream = _run_ray(job, todo, workers, ray_address)
        elif workers == 0 or len(todo) == 1:
            stream = _run_here(job, todo)
        else:
            stream = _run_pool(job, todo, workers)
        with contextlib.closing(stream):
            for kind, payload in stream:
                if kind == "fatal":
                    raise WeightsError(payload)
                if writer is not None:
                    writer.write(payload)
                if "error" in payload:
                    report.failed.append(payload["error"])
                else:
                    report.written += 1
                if progress is not None:
                    progress(1)
                yield payload
    finally:
        if writer is not None:
            writer.close()
