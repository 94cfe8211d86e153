"""Command line: ``dfdetect STAGE ...``. Importing the command modules registers their commands."""

from dfdetect.cli._app import app
from dfdetect.cli import data as _data  # noqa: F401  (frames, faces, srm, labels)
from dfdetect.cli import synth as _synth  # noqa: F401  (synth)
from dfdetect.cli import model as _model  # noqa: F401  (train, evaluate, study, demo)
from dfdetect.cli import use as _use  # noqa: F401  (predict, report, serve, export)

__all__ = ["app"]
