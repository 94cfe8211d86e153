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

from dfdetect.cli._app import (
    app,
    console,
    handle_errors,
    out,
    override,
    print_skipped,
    progress_bar,
    say,
    shown,
)
from dfdetect.config import SynthConfig

_D = SynthConfig()  # defaults, shown in --help


def _config(**options: int | None) -> SynthConfig:
    """SynthConfig defaults with the options the user set; a bad value is one line naming the option."""
    return override(SynthConfig(), {"youtube_videos": "--youtube", "videos_per_identity": "--videos-per-identity"},
                    **options)


def _int_opt(flag: str, what: str, default: int) -> typer.models.OptionInfo:
    return typer.Option(flag, help=f"{what} (default {default}).")


FacesOpt = Annotated[Path | None, typer.Option(
    "--faces", help="Folder of face photos, one person each (default: portraits shipped by scikit-image "
    "and matplotlib).")]


@app.command("synth")
@handle_errors
def synth_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Celeb-DF-shaped dataset.")],
    faces: FacesOpt = None,
    identities: Annotated[int | None, _int_opt("--identities", "Celeb identities", _D.identities)] = None,
    videos_per_identity: Annotated[int | None, _int_opt(
        "--videos-per-identity", "Real videos per identity", _D.videos_per_identity)] = None,
    fakes_per_identity: Annotated[int | None, _int_opt(
        "--fakes-per-identity", "Fake videos per target identity", _D.fakes_per_identity)] = None,
    youtube: Annotated[int | None, _int_opt("--youtube", "YouTube-real videos", _D.youtube_videos)] = None,
    frames: Annotated[int | None, _int_opt("--frames", "Frames per video", _D.frames)] = None,
    seed: Annotated[int | None, _int_opt("--seed", "Random seed; same seed, same videos", _D.seed)] = None,
) -> None:
    """Make a small Celeb-DF-v2-shaped dataset (real videos, face swaps and self-blends) from real photos."""
    from dfdetect.data.sources import load_celebdf
    from dfdetect.synthetic.synth import MANIFEST, check_inputs, make_synthetic_celebdf, plan_videos

    cfg = _config(identities=identities, videos_per_identity=videos_per_identity,
                  fakes_per_identity=fakes_per_identity, youtube_videos=youtube, frames=frames, seed=seed)
    check_inputs(out_dir, cfg, faces)  # before the bar: a bad --faces or --out is one line, nothing else
    with progress_bar("synth", len(plan_videos(cfg))) as advance:
        root = make_synthetic_celebdf(out_dir, cfg, faces_dir=faces, progress=advance)
    ds = load_celebdf(root)
    counts = ds.counts()
    skipped = json.loads((root / MANIFEST).read_text(encoding="utf-8")).get("skipped_photos", [])
    for line in skipped[:5] + ds.skipped:
        print_skipped(line)
    if len(skipped) > 5:
        console.print(f"[yellow]... {len(skipped)} photos skipped in all, listed in[/] {shown(str(root / MANIFEST))}",
                      highlight=False, soft_wrap=True)
    say(f"synth: {len(ds)} videos ({counts['real']} real, {counts['fake']} fake; {counts['test']} in "
        f"{root / 'List_of_testing_videos.txt'}) -> {root}", to=out)
