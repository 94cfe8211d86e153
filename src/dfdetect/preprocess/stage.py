"""What every preprocessing stage returns, and how it reports progress.

Stages are pure-ish functions over a list of inputs. They never print: they call an optional
``progress`` callback and return a :class:`StageReport`, which the CLI renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dfdetect.errors import NothingUsableError

#: ``progress(advance)``: called with the number of inputs just finished.


@dataclass
class StageReport:
    """Counts of what a stage did; ``failed`` holds one line per skipped input, naming file and problem."""

    stage: str
    out_dir: Path
    written: int = 0
    reused: int = 0  #: valid outputs found from an earlier (possibly killed) run
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def remove_stale_temps(self) -> None:
        """Delete the temp files a killed run left under ``out_dir`` (stages call this before any work)."""
        from dfdetect._io import remove_stale_temps

        if n := remove_stale_temps(self.out_dir):
            self.notes.append(f"removed {n} temp file(s) an interrupted run left under {self.out_dir}")

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
                                     path=self.out_dir)

    def summary(self) -> str:
        return (f"{self.stage}: {self.written} written, {self.reused} reused, {len(self.failed)} skipped "
                f"-> {self.out_dir}")


@dataclass
class JobResult:
    """What one job did; summed into the :class:`StageReport` by the parent process."""

    written: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
