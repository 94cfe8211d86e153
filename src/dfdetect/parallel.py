"""Run one function over many inputs: serially, in a local process pool, or as Ray tasks.

Every preprocessing stage hands its per-video jobs to :func:`map_items`. The job function does all
the work (decode, detect, write files) and returns a small result, so the three engines produce
byte-identical outputs: only *where* the function runs changes.

- ``workers=0``: serial, in this process (the default; easiest to debug).
- ``engine="process"``: a :class:`~concurrent.futures.ProcessPoolExecutor` with the ``forkserver``
  context (``spawn`` where that is missing). Never ``fork``: forking a process that has loaded torch
  (its OpenMP pool, its locks) can hang the children.
- ``engine="ray"``: Ray tasks on a local instance or on the cluster at ``ray_address``. Ray is an
  optional extra (``pip install dfdetect[ray]``). On a cluster the output folder must be on a file
  system every node can see, because the workers write the files.

:func:`run_threads` is the in-process counterpart for jobs that share big objects and spend their time in
torch or OpenCV calls, which release the GIL (an ensemble's members training side by side).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Literal, TypeVar

from dfdetect.errors import DfdetectError

ProgressCallback = Callable[[int], None]  #: called with the count of items just finished

T = TypeVar("T")
R = TypeVar("R")

Engine = Literal["process", "ray"]

#: Set in pool / Ray workers, so that libraries there use one thread each (no oversubscription).
WORKER_ENV = "DFDETECT_WORKER"


def in_worker() -> bool:
    """True inside a pool or Ray worker: code there should not start its own thread pools."""
    return os.environ.get(WORKER_ENV) == "1"


def _limit_threads() -> None:
    """One thread per library in a worker: N workers already use the N cores."""
    os.environ[WORKER_ENV] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import cv2

    cv2.setNumThreads(1)
    import sys

    if "torch" in sys.modules:  # only if already loaded; importing torch here would cost every worker ~1 s
        sys.modules["torch"].set_num_threads(1)


def _die_with(run_pid: int) -> None:
    """End this pool worker as soon as the run that started it ends, so a kill -9 of a ``-j N`` run leaves no
    workers running on and writing.

    Why a thread on a pidfd, not prctl(PR_SET_PDEATHSIG): a worker's parent is the pool's forkserver, which
    lives as long as any worker does. A pidfd becomes readable when the process exits (Linux 5.3+); elsewhere
    workers outlive a killed run, as before.
    """
    import select

    try:
        fd = os.pidfd_open(run_pid)
    except ProcessLookupError:  # the run is gone already
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd on this system
        return

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="dfdetect-run-watch", daemon=True).start()


def _worker_init(initializer: Callable[[], None] | None) -> None:
    _limit_threads()
    if initializer is not None:
        initializer()


def _pool_worker_init(run_pid: int, initializer: Callable[[], None] | None) -> None:
    _die_with(run_pid)
    _worker_init(initializer)


_RAY_INITIALIZED: set[int] = set()


def _ray_call(fn: Callable[[T], R], item: T, initializer: Callable[[], None] | None) -> R:
    # Ray reuses worker processes; run the per-process set-up once per process, as the pool does.
    if os.getpid() not in _RAY_INITIALIZED:
        _worker_init(initializer)
        _RAY_INITIALIZED.add(os.getpid())
    return fn(item)


def pool_context() -> mp.context.BaseContext:
    """``forkserver`` where available (fast, safe with torch loaded), else ``spawn``."""
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def map_items(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    initializer: Callable[[], None] | None = None,
    weight: Callable[[T], int] | None = None,
    on_error: Callable[[T, Exception], R] | None = None,
) -> list[R]:
    """Apply ``fn`` to every item and return the results in input order.

    Parameters
    ----------
    fn : picklable callable (a module-level function or a ``functools.partial`` of one)
        Does the whole job for one item, including writing its files, and returns a small result.
        It should catch per-item problems itself and report them in the result.
    workers : int, default=0
        0 runs serially in this process; N >= 1 runs N worker processes (``engine="process"``), or
        keeps at most N Ray tasks in flight (``engine="ray"``, 0 = let Ray schedule them all).
    engine : {"process", "ray"}, default="process"
    ray_address : str, optional
        Passed to ``ray.init(address=...)``; None starts or joins a local instance.
    progress : callable, optional
        ``progress(n)`` after each item, with ``n = weight(item)`` (1 without ``weight``).
    initializer : callable, optional
        Run once per worker process (and once in-process when serial), e.g. to warm a model.
    on_error : callable, optional
        ``on_error(item, exc)`` is the result of an item whose ``fn`` raised, or whose worker process died
        (a crash in a native decoder), so one bad input never stops the others; without it, the error
        propagates. Ctrl-C always propagates.
    """
    items = list(items)
    if workers < 0:
        raise DfdetectError(f"workers must be >= 0, got {workers}")
    if engine not in ("process", "ray"):
        raise DfdetectError(f"unknown engine {engine!r}; use 'process' or 'ray'")
    step = weight or (lambda _item: 1)
    if engine == "ray":
        return _map_ray(fn, items, workers, ray_address, progress, initializer, step, on_error)
    if workers == 0 or len(items) <= 1:
        if initializer is not None:
            initializer()
        results = []
        for item in items:
            try:
                results.append(fn(item))
            except Exception as exc:
                if on_error is None or _run_level(exc):
                    raise
                results.append(on_error(item, exc))
            if progress is not None:
                progress(step(item))
        return results
    return _map_pool(fn, items, workers, progress, initializer, step, on_error)


def _run_level(exc: Exception) -> bool:
    """A DfdetectError about the run itself (a detector that cannot be built, missing weights), not about one
    input: the same for every item, so it ends the run in one line instead of one line per item."""
    from dfdetect.errors import BadInputError

    return isinstance(exc, DfdetectError) and not isinstance(exc, BadInputError)


def _pool(workers: int, initializer) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(), initializer=_pool_worker_init,
                               initargs=(os.getpid(), initializer))


def _map_pool(fn, items, workers, progress, initializer, step, on_error=None) -> list:
    results: list = [None] * len(items)
    lost: list[int] = []  #: items whose worker died (all in flight when it did): retried one by one below
    with _pool(min(workers, len(items)), initializer) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except BrokenProcessPool:
                        if on_error is None:
                            raise
                        lost.append(i)
                        continue
                    except Exception as exc:
                        if on_error is None or _run_level(exc):
                            raise
                        results[i] = on_error(items[i], exc)
                    if progress is not None:
                        progress(step(items[i]))
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    # A dead worker fails every item still queued: run those one at a time, so a second crash names the very
    # item that caused it (and only that one), in a fresh worker each time one dies.
    single: ProcessPoolExecutor | None = None
    try:
        for i in sorted(lost):
            single = single or _pool(1, initializer)
            try:
                results[i] = single.submit(fn, items[i]).result()
            except BrokenProcessPool:
                results[i] = on_error(items[i], RuntimeError("its worker process died (a crash in a decoder?)"))
                single.shutdown(cancel_futures=True)
                single = None
            except Exception as exc:
                if _run_level(exc):
                    raise
                results[i] = on_error(items[i], exc)
            if progress is not None:
                progress(step(items[i]))
    finally:
        if single is not None:
            single.shutdown(cancel_futures=True)
    return results


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DfdetectError("engine 'ray' needs Ray, which is not installed: pip install dfdetect[ray]") from None
    return ray


def _map_ray(fn, items, workers, ray_address, progress, initializer, step, on_error=None) -> list:
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs = {"address": ray_address, "ignore_reinit_error": True, "log_to_driver": False}
        if ray_address is None:
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
    remote = ray.remote(num_cpus=1)(_ray_call)
    fn_ref = ray.put(fn)
    results: list = [None] * len(items)
    limit = workers if workers > 0 else len(items)
    index_of: dict = {}
    next_i = 0
    in_flight: list = []
    while next_i < len(items) or in_flight:
        while next_i < len(items) and len(in_flight) < limit:  # bounded window: memory stays flat
            ref = remote.remote(fn_ref, items[next_i], initializer)
            index_of[ref] = next_i
            in_flight.append(ref)
            next_i += 1
        done, in_flight = ray.wait(in_flight, num_returns=1)
        for ref in done:
            i = index_of.pop(ref)
            try:
                results[i] = ray.get(ref)
            except Exception as exc:
                if on_error is None or _run_level(exc):
                    raise
                results[i] = on_error(items[i], exc)
            if progress is not None:
                progress(step(items[i]))
    return results


def run_threads(jobs: Sequence[Callable[[threading.Event], R]], at_once: int) -> list[R]:
    """Run ``jobs`` in ``at_once`` threads and return their results in order.

    Each job gets a :class:`threading.Event` and should return soon after it is set. It is set when a job
    fails or the caller is interrupted (Ctrl-C), so the others stop at their next check instead of running
    on for an hour; the first real failure is raised. ``at_once <= 1`` runs them one after another here.
    """
    stop = threading.Event()
    if at_once <= 1 or len(jobs) <= 1:
        return [job(stop) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(at_once, len(jobs)), thread_name_prefix="dfdetect") as pool:
        futures = [pool.submit(job, stop) for job in jobs]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        finally:
            stop.set()
            for f in futures:
                f.cancel()
