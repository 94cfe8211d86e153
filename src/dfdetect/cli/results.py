"""Commands: see dfdetect.cli."""
from dfdetect.cli._app import app  # noqa: F401
