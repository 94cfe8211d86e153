"""Command line: ``dfdetect STAGE ...``. Importing the command modules registers their commands."""

from dfdetect.cli import data as _data  # noqa: F401  (frames, faces, srm, labels)
from dfdetect.cli import model as _model  # noqa: F401  (train)
from dfdetect.cli import models as _models  # noqa: F401  (models)
from dfdetect.cli import results as _results  # noqa: F401  (evaluate, study, demo, report)
from dfdetect.cli import synth as _synth  # noqa: F401  (synth)
from dfdetect.cli import use as _use  # noqa: F401  (predict, serve, export)
from dfdetect.cli._app import app

__all__ = ["app"]
