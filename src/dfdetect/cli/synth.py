"""The built-in data: ``synth``.

Examples::

    dfdetect synth --out work/celebdf-synth
    dfdetect synth --out work/lfw-synth --faces ../shared/data/lfw-faces --identities 300
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from dfdetect.cli._app import app, console, handle_errors, out, progress_bar
from dfdetect.config import SynthConfig
from dfdetect.errors import DfdetectError


def _config(**options: int | None) -> SynthConfig:
    """SynthConfig defaults with the options the user set; a bad value is one line naming the option."""
    try:
        return SynthConfig(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DfdetectError(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}") from None


@app.command("synth")
@handle_errors
def synth_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Celeb-DF-shaped dataset.")],
    faces: Annotated[Path | None, typer.Option("--faces", help="Folder of face photos, one person each "
                                                "(default: portraits shipped by scikit-image / matplotlib).")] = None,
    identities: Annotated[int | None, typer.Option("--identities", help="Celeb identities.")] = None,
    videos_per_identity: Annotated[int | None, typer.Option("--videos-per-identity",
                                                            help="Real videos per identity.")] = None,
    fakes_per_identity: Annotated[int | None, typer.Option("--fakes-per-identity",
                                                           help="Fake videos per target identity.")] = None,
    youtube: Annotated[int | None, typer.Option("--youtube", help="YouTube-real videos.")] = None,
    frames: Annotated[int | None, typer.Option("--frames", "-n", help="Frames per video.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed; same seed, same videos.")] = None,
) -> None:
    """Make a small Celeb-DF-v2-shaped dataset (real videos, face swaps and self-blends) from real photos."""
    from dfdetect.datasets import load_celebdf
    from dfdetect.synth import MANIFEST, check_inputs, make_synthetic_celebdf, plan_videos

    cfg = _config(identities=identities, videos_per_identity=videos_per_identity,
                  fakes_per_identity=fakes_per_identity, youtube_videos=youtube, frames=frames, seed=seed)
    check_inputs(out_dir, cfg, faces)  # before the bar: a bad --faces or --out is one line, nothing else
    with progress_bar("synth", len(plan_videos(cfg))) as advance:
        root = make_synthetic_celebdf(out_dir, cfg, faces_dir=faces, progress=advance)
    ds = load_celebdf(root)
    counts = ds.counts()
    skipped = json.loads((root / MANIFEST).read_text(encoding="utf-8")).get("skipped_photos", [])
    for line in skipped[:5] + ds.skipped:
        console.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)
    if len(skipped) > 5:
        console.print(f"[yellow]... {len(skipped)} photos skipped in all, listed in {root / MANIFEST}[/]")
    out.print(f"synth: {len(ds)} videos ({counts['real']} real, {counts['fake']} fake; {counts['test']} in "
              f"{root / 'List_of_testing_videos.txt'}) -> {root}", highlight=False, soft_wrap=True)
