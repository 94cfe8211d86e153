"""Command: models.

Examples::

    dfdetect models                                # known detectors, where they are, headline figures
    dfdetect models --info mobilenet_v2.dfdc_sbi   # its model card
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table

from dfdetect.cli._app import app, handle_errors, out, say
from dfdetect.errors import BadInputError

_COLUMNS = (("in_domain_auc", "in-domain AUC"), ("ffpp_video_auc", "FF++ video AUC"), ("ece", "ECE"),
            ("seconds_per_video", "s / video"))


def _fig(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@app.command()
@handle_errors
def models(
    info: Annotated[str | None, typer.Option("--info", metavar="NAME", help="Print the model card of NAME.")]
    = None,
) -> None:
    """Known detectors (shipped, cached or downloadable) with their cards' headline figures."""
    from dfdetect.model import hub
    from dfdetect.model.card import read_card

    entries = hub.list_models()
    if info is not None:
        entry = next((e for e in entries if e.name == info), None)
        if entry is None:
            names = ", ".join(e.name for e in entries) or "none in this install"
            raise BadInputError(f"unknown model {info!r}; known: {names}")
        _, body = read_card(entry.card)
        where = entry.shipped_path if entry.shipped_path.is_file() else entry.hub or entry.url or "no file"
        say(f"{entry.name}: {hub.model_status(entry)} ({where})", to=out)
        out.print(Markdown(body))
        return
    if not entries:
        say(f"no models in this install ({hub.MODELS_DIR} has no model cards); the default "
            f"{hub.DEFAULT_MODEL} is not shipped yet")
        return
    table = Table(title="dfdetect models (figures from each model card; `--info NAME` prints one)")
    table.add_column("name", overflow="fold")
    table.add_column("where")
    for _, title in _COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("size MiB", justify="right")
    for e in entries:
        name = f"{e.name} (default)" if e.name == hub.DEFAULT_MODEL else e.name
        size = "-" if e.size_bytes is None else f"{e.size_bytes / 2**20:.1f}"
        table.add_row(name, hub.model_status(e), *(_fig(e.figures.get(k)) for k, _ in _COLUMNS), size)
    out.print(table)
