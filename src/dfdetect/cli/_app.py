"""The Typer app and the few helpers every command shares.

Commands stay thin: build a config, call one API function, render its result. User errors
(:class:`~dfdetect.errors.DfdetectError`) become one red line and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dfdetect.errors import DfdetectError
from dfdetect.parallel import ProgressCallback
from dfdetect.preprocess.stage import StageReport

app = typer.Typer(
    name="dfdetect",
    help="Find face deepfakes in videos and images. Stages: synth, frames, faces, srm, labels, train, "
    "evaluate, study, demo, predict, report, serve, export, models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])

ProtocolOpt = Annotated[str, typer.Option(
    "--protocol", "--config", help="'seed' reproduces the report, 'default' works, or a recipe YAML file (a run's "
    "config.yaml, a shipped model's protocol.yaml); the other options override it.")]
# Checked by the parser (min, choices), so a bad value is refused before any work or progress bar starts.
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", min=0, help="Processes for preprocessing (0 = serial).")]


class EngineChoice(str, Enum):
    process = "process"
    ray = "ray"


EngineOpt = Annotated[EngineChoice, typer.Option("--engine", help="'process' (local pool) or 'ray' (Ray tasks).")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (default: local).")]


def handle_errors(fn: F) -> F:
    """Turn a DfdetectError into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DfdetectError as exc:
            console.print(f"[bold red]error:[/] {shown(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # an output the disk refuses (a folder in the way, no permission, full)
            console.print(f"[bold red]error:[/] {shown(os_error_line(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # outputs are atomic, so what was finished is kept
            console.print("interrupted: finished outputs are kept; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def os_error_line(exc: OSError) -> str:
    """``file: problem`` for an OSError, the one line the CLI prints instead of a traceback."""
    where = exc.filename2 if exc.filename2 is not None else exc.filename
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {what}" if where is not None else what


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[ProgressCallback]:
    """A Rich progress bar, handed to the API as a plain ``advance(n)`` callback."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


class _RateColumn(ProgressColumn):
    """``3.2 files/s`` (Rich's own speed column counts bytes)."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- files/s" if speed is None else f"{speed:.2f} files/s", style="progress.data.speed")


@contextmanager
def rate_progress(description: str) -> Iterator[tuple[ProgressCallback, Callable[[int], None]]]:
    """A progress bar with files per second, as ``(advance(n), set_total(n))``: a scan knows its total only
    once it has listed the files and read what an earlier run finished."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield (lambda n=1: bar.advance(task, n)), (lambda n: bar.update(task, total=n))


def printable(text: str) -> str:
    """``text`` on one line, control characters escaped, and what the terminal's encoding cannot show as ``\\u``
    escapes: ``PYTHONIOENCODING=ascii`` (or a C locale) made a name like фото.jpg a UnicodeEncodeError traceback
    after the work was done."""
    import sys

    from dfdetect.errors import one_line

    text = one_line(text)
    for stream in (sys.stdout, sys.stderr):
        enc = getattr(stream, "encoding", None) or "utf-8"
        try:
            text.encode(enc)
        except LookupError:  # an encoding Python does not know: plain ASCII is safe
            text = text.encode("ascii", "backslashreplace").decode("ascii")
        except UnicodeEncodeError:
            text = text.encode(enc, "backslashreplace").decode(enc, "replace")
    return text


def shown(text: str) -> str:
    """What the terminal gets: :func:`printable`, and never read as Rich markup."""
    from rich.markup import escape

    return escape(printable(text))


def say(text: str, *, to: Console | None = None) -> None:
    """One line of plain text on stderr (or ``to``): paths in it are never read as Rich markup (a folder named
    ``[/]`` made Rich raise), nor their control characters sent to the terminal."""
    (to or console).print(printable(text), markup=False, highlight=False, soft_wrap=True)


def print_skipped(line: str) -> None:
    """One skipped input, on one line (a line break in a file name is shown as ``\\n``), never read as markup."""
    console.print(f"[yellow]skipped:[/] {shown(line)}", highlight=False, soft_wrap=True)


def check_writable(folder: Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be made or written in (``--json``, ``--save``)."""
    import os

    there = folder
    while not there.exists() and there != there.parent:  # the folders the write would make
        there = there.parent
    if not there.is_dir():
        raise DfdetectError(f"cannot write {flag} into {folder}: {there} is a file, not a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        raise DfdetectError(f"cannot write {flag} into {folder}: no permission to write in {there}")


def check_result_file(path: Path, flag: str, example: str, need: tuple[str, ...] = (), *,
                      append: bool = False) -> None:
    """Refuse, before any work, a results file that is a folder, a pipe (it would block for ever), a video or
    image (it could be one of the inputs, overwritten or appended to), or without the suffix ``need`` asks for
    (``--onnx run/detector.safetensors`` would overwrite the model).

    ``append``: the file is added to in place, not replaced, so a symlink or a second hard link (which may be an
    input under another name) and a file holding anything but JSON lines are refused too.
    """
    import os

    from dfdetect.inference.predict import MEDIA_SUFFIXES

    if path.is_dir():
        raise DfdetectError(f"{flag} names a folder; give a file such as {example}", path=path)
    if os.path.lexists(path) and not path.is_file():
        raise DfdetectError(f"{flag} names something that is not a regular file (a pipe, a socket?); give a file "
                            f"such as {example}", path=path)
    if need and path.suffix.lower() not in need:
        raise DfdetectError(f"{flag} must end in {' or '.join(need)}; give a file such as {example}", path=path)
    if path.suffix.lower() in MEDIA_SUFFIXES:
        raise DfdetectError(f"{flag} names a video or image, maybe one of the inputs; give a file such as {example}",
                            path=path)
    if append and os.path.lexists(path):
        st = os.lstat(path)
        if path.is_symlink() or st.st_nlink > 1:
            raise DfdetectError(f"{flag} is a link to another file (maybe one of the inputs), and results are "
                                f"appended to it; give a file of its own such as {example}", path=path)
        if path.is_file() and st.st_size:
            with open(path, "rb") as fh:
                head = fh.read(4096).lstrip()
            if head and not head.startswith(b"{"):
                raise DfdetectError(f"{flag} holds something other than JSON lines, and results would be appended "
                                    f"to it; give a new file such as {example}", path=path)

    check_writable(path.parent, flag)


def claim_out(out_dir: Path, *sources: Path | None, legacy: tuple[str, ...] | None = None) -> None:
    """The output folder of train or evaluate, checked before anything is written: not inside the data (refused
    before the folder is made there), and not a folder of the user's own (:meth:`dfdetect.rundir.RunDir.claim`)."""
    from dfdetect._io import check_separate
    from dfdetect.rundir import RunDir

    for src in filter(None, sources):
        check_separate(src if src.is_dir() else src.parent, out_dir, "dataset")
    if legacy is None:
        RunDir(out_dir).claim()
    else:
        RunDir(out_dir).claim(legacy)


def print_report(report: StageReport) -> None:
    """Print every skipped input, the notes and the summary; exit 1 only if nothing is usable.

    Every line, however many: no stage keeps a list of them elsewhere (a "see the manifest" pointed at no file).
    """
    for line in report.failed:
        print_skipped(line)
    for note in report.notes:
        say(f"note: {note}")
    say(report.summary())
    report.raise_if_empty()


def load_protocol_option(name: str) -> Any:
    """What ``--protocol/--config`` names: ``seed``, ``default`` or a recipe YAML file; one line if it is neither."""
    from dfdetect.config import Protocol
    from dfdetect.errors import BadInputError, DfdetectError

    if name in ("seed", "default"):
        return Protocol.named(name)  # type: ignore[arg-type]
    protocol = _load_recipe(name)
    from dfdetect.preprocess.faces import check_detector  # OpenCV: only for a recipe file

    try:
        check_detector(protocol.faces.detector)
    except DfdetectError as exc:
        raise BadInputError(f"not a dfdetect recipe: faces.detector: {exc}", path=name) from None
    return protocol


def _load_recipe(name: str) -> Any:
    import yaml
    from pydantic import ValidationError

    from dfdetect.config import load_protocol, validation_line
    from dfdetect.errors import BadInputError

    if Path(name).suffix.lower() not in (".yaml", ".yml"):
        raise BadInputError(f"unknown protocol {name!r}; use 'seed', 'default' or a recipe .yaml file")
    if not Path(name).is_file():
        raise BadInputError("protocol file not found", path=name)
    try:
        return load_protocol(name)
    except ValidationError as exc:
        raise BadInputError(f"not a dfdetect recipe: {validation_line(exc)}", path=name) from None
    except RecursionError:
        raise BadInputError("not a dfdetect recipe (nested too deep)", path=name) from None
    except (ValueError, OSError, yaml.YAMLError) as exc:
        raise BadInputError(f"not a dfdetect recipe ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]})", path=name) from None


def override(base: Any, flags: dict[str, str] | None = None, **updates: Any) -> Any:
    """``base`` (a config) with the options the user set (None = not set: keep the recipe's value), validated;
    a bad value is one line naming the option (``flags`` maps a field to its flag where they differ)."""
    from pydantic import ValidationError

    from dfdetect.config import validation_line

    data = {**base.model_dump(), **{k: v for k, v in updates.items() if v is not None}}
    names = {f: "--" + f.replace("_", "-") for f in data} | (flags or {})
    try:
        return type(base).model_validate(data)
    except ValidationError as exc:
        raise DfdetectError(validation_line(exc, names)) from None
