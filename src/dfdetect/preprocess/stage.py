"""One way to run a preprocessing stage: plan the jobs, do each one anywhere, sum what they did.

A stage (frames, faces, srm, synth) says only how to plan its jobs and how to do one job. :func:`run_stage`
owns the rest, the same way for every stage:

- the output folder is kept apart from the inputs (neither at nor under the other);
- one run at a time per output folder (a lock), and the temp files a killed run left are removed before any work;
- a stamp (``.dfdetect-stage.json``) records the settings that shape the outputs; a folder made with other
  settings, with a stamp that cannot be read, or with files but no stamp is refused in one line rather than
  mixed or written into (resuming with the same settings reuses its files);
- jobs run serially, in a process pool or as Ray tasks (:func:`~dfdetect.parallel.map_items`), and a job
  that crashes is one line naming its input;
- what each job did is summed into one :class:`StageReport`.

Stages never print: they call an optional ``progress`` callback and return the report, which the CLI renders.
"""

from __future__ import annotations

import contextlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from dfdetect._io import check_separate, lock_exclusive, remove_stale_temps, write_json
from dfdetect.errors import BadInputError, NothingUsableError, failure_line
from dfdetect.parallel import Engine, ProgressCallback, map_items

__all__ = ["STAMP", "JobResult", "Stage", "StageReport", "check_folder", "check_stamp", "run_stage"]

#: The settings a stage's output folder was made with (JSON), written before its first job.
STAMP = ".dfdetect-stage.json"


@dataclass
class JobResult:
    """What one job did; summed into the :class:`StageReport` by the parent process."""

    written: int = 0
    reused: int = 0  #: valid outputs found from an earlier (possibly killed) run
    failed: list[str] = field(default_factory=list)  #: one line per skipped input, naming file and problem
    rows: list[dict] = field(default_factory=list)  #: records the stage gathers at the end (the faces manifest)


@dataclass
class StageReport:
    """Counts of what a stage did; ``failed`` holds one line per skipped input, naming file and problem."""

    stage: str
    out_dir: Path | None  #: where the outputs went; None for a run that writes no file (predict, no --save)
    written: int = 0
    reused: int = 0  #: valid outputs found from an earlier (possibly killed) run
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    done_as: str = "written"  #: what ``written`` counts, in the summary: "scored" for predict
    source: Path | None = None  #: the one input a run that writes nothing read, named in its summary and error

    def add(self, result: JobResult) -> None:
        """Count one job's outcome (the parent sums what its workers did)."""
        self.written += result.written
        self.reused += result.reused
        self.failed += result.failed

    @property
    def usable(self) -> int:
        return self.written + self.reused

    def raise_if_empty(self) -> None:
        """Non-zero exit only when nothing usable is left."""
        if self.usable == 0:
            raise NothingUsableError(f"{self.stage}: nothing usable was produced ({len(self.failed)} inputs failed)",
                                     path=self.out_dir or self.source)

    def summary(self) -> str:
        reused = f"{self.reused} reused, " if self.reused or self.done_as == "written" else ""
        where = (f" -> {self.out_dir}" if self.out_dir is not None
                 else f" from {self.source}" if self.source is not None else "")
        return f"{self.stage}: {self.written} {self.done_as}, {reused}{len(self.failed)} skipped{where}"


J = TypeVar("J")


class Stage(ABC, Generic[J]):
    """What a stage says about itself, as a dataclass of plain data (paths as the user gave them, configs).
    Jobs run on :meth:`for_workers`' copy, which travels to pool and Ray workers with every job; heavy objects
    (a face detector) are built inside :meth:`run_job`."""

    name: ClassVar[str]
    out_dir: Path
    cfg: BaseModel

    def settings(self) -> dict[str, Any]:
        """What shapes the outputs (JSON-able): a folder made with other settings is refused. By default the
        stage's config; a stage whose outputs depend on more says so here."""
        return self.cfg.model_dump(mode="json")

    @abstractmethod
    def inputs(self) -> Sequence[Path]:
        """The folders or files the stage reads: the output folder may be neither at, under nor above one."""

    @abstractmethod
    def plan(self) -> list[J]:
        """The jobs, in the order their results are reported. Runs in the parent, before any job."""

    @abstractmethod
    def run_job(self, job: J) -> JobResult:
        """Do one job, writing its files atomically; a problem with one input is a line in ``failed``."""

    @abstractmethod
    def source(self, job: J) -> Path:
        """The input a job reads, named in the one line when the job crashes."""

    def weight(self, job: J) -> int:
        """How far ``progress`` advances when the job is done (frames, crops or videos, not jobs)."""
        return 1

    def finish(self, report: StageReport, jobs: list[J], results: list[JobResult]) -> None:
        """Write what sums over all jobs (a manifest) and add notes; the default does nothing."""

    def for_workers(self) -> Stage[J]:
        """The copy jobs run on: every path absolute (a worker's working directory may differ: Ray nodes, a
        forkserver started elsewhere). A stage drops here what only planning needs, since the copy is pickled
        with every job."""
        return replace(self, **{f.name: Path(os.path.abspath(v)) for f in fields(self)  # type: ignore[arg-type]
                                if isinstance(v := getattr(self, f.name), Path)})


def check_stamp(out_dir: str | Path, name: str, settings: dict[str, Any]) -> None:
    """Refuse, before any work, a folder ``name`` cannot vouch for: made with other settings or by another stage,
    with a stamp it cannot read, or holding files but no stamp (an older dfdetect's output, or a folder that
    is not dfdetect's at all): reusing any of those would mix outputs, or write among a user's own files."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInputError("is a file, not a folder; give a folder for the outputs", path=out)
    stamp = out / STAMP
    if not os.path.lexists(stamp):
        try:
            names = os.listdir(out)
        except OSError as exc:
            raise BadInputError(f"cannot list the output folder ({exc.strerror or exc})", path=out) from None
        if any(not n.startswith(".") for n in names):
            raise BadInputError(f"holds files but no {STAMP} (not made by this dfdetect's '{name}' stage); use a "
                                "new --out folder or delete this one", path=out)
        return
    try:
        if not stamp.is_file():
            raise ValueError("not a regular file")
        old = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise BadInputError(f"its {STAMP} cannot be read ({type(exc).__name__}), so what made this folder is "
                            "unknown; use a new --out folder or delete this one", path=out) from None
    new = _jsonable(settings)
    if not isinstance(old, dict) or old.get("stage") != name:
        made = f"the '{old.get('stage')}' stage" if isinstance(old, dict) else "another tool"
        raise BadInputError(f"was made by {made}, not '{name}'; use a new --out folder", path=out_dir)
    if old.get("settings") != new:
        raise BadInputError(f"was made with other {name} settings ({_differences(old.get('settings'), new)}); "
                            "use a new --out folder or delete this one", path=out_dir)


def _differences(old: Any, new: dict[str, Any]) -> str:
    """``key: old -> new`` for the first settings that differ (nested ones flattened with dots)."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix.rstrip("."): d}
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}

    a, b = flat(old), flat(new)
    diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")


def check_folder(stage: Stage[Any]) -> None:
    """:func:`check_stamp` for ``stage``'s output folder: a pipeline calls it for every stage before the first."""
    check_stamp(stage.out_dir, stage.name, stage.settings())


def _jsonable(settings: dict[str, Any]) -> Any:
    return json.loads(json.dumps(settings, default=str))


def _keep_apart(stage: Stage[Any]) -> None:
    out = Path(os.path.realpath(stage.out_dir))
    for src in stage.inputs():
        check_separate(src, stage.out_dir, stage.name + " input")
        # realpath, not resolve(): a symlink loop among the inputs is that input's problem, not the stage's
        if out in Path(os.path.realpath(src)).parents:
            raise BadInputError(f"the output folder holds the input {src}; choose a separate folder",
                                path=stage.out_dir)


def _do(stage: Stage[J], job: J) -> JobResult:
    return stage.run_job(job)


#: Held (``flock``) by the run that writes a stage folder: a second run at once would delete the first's temp files.
LOCK = ".dfdetect-lock"


@contextlib.contextmanager
def _only_run(out: Path) -> Iterator[None]:
    """This run alone in ``out``: a second one is refused in one line. Why a lock and not the stamp: two runs can
    both find the stamp they want, and each one's clean-up of interrupted temp files removes the other's
    in-flight ones. Where the lock cannot be made (a read-only disk: nothing will be written), none is taken."""
    try:
        fh = (out / LOCK).open("a")
    except OSError:
        yield
        return
    with fh:
        if not lock_exclusive(fh):
            raise BadInputError("another dfdetect run is writing this folder; wait for it to finish, or use "
                                "another --out folder", path=out)
        yield


def run_stage(
    stage: Stage[J],
    *,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
) -> StageReport:
    """Plan ``stage``'s jobs, run them (see the module docstring for what this owns) and sum the report."""
    out = Path(stage.out_dir)
    _keep_apart(stage)
    jobs = stage.plan()  # validates the inputs first: a missing folder or unknown detector is the line to see
    settings = stage.settings()
    check_stamp(out, stage.name, settings)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot use as the output folder ({exc.strerror or exc})", path=out) from None
    with _only_run(out):
        return _run_locked(stage, jobs, settings, out, workers=workers, engine=engine, ray_address=ray_address,
                           progress=progress)


def _run_locked(stage: Stage[J], jobs: list[J], settings: dict[str, Any], out: Path, **run: Any) -> StageReport:
    try:
        if not (out / STAMP).is_file():  # written once: a finished folder on a read-only disk still resumes
            write_json(out / STAMP, {"stage": stage.name, "settings": _jsonable(settings)})
    except OSError as exc:
        raise BadInputError(f"cannot use as the output folder ({exc.strerror or exc})", path=out) from None
    report = StageReport(stage.name, out)
    if n := remove_stale_temps(out):
        report.notes.append(f"removed {n} temp file(s) an interrupted run left under {out}")
    worker_stage = stage.for_workers()

    def crashed(job: J, exc: Exception) -> JobResult:
        return JobResult(failed=[failure_line(stage.source(job), exc)])

    results = map_items(partial(_do, worker_stage), jobs, weight=stage.weight, on_error=crashed, **run)
    for r in results:
        report.add(r)
    stage.finish(report, jobs, results)
    return report

