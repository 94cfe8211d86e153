"""Model cards: what a shipped detector was trained on, how to rebuild it, and how well it works.

A card is ``<name>.md`` beside ``<name>.safetensors``, in the Hugging Face model-card format: YAML front
matter (the machine-read part: file, sha256, hub/url, licence, headline figures) between ``---`` lines,
then a markdown body for people. The front matter of the cards in ``dfdetect/models/`` is the model
catalog (:mod:`dfdetect.model.hub`), so a figure is written once and read by ``dfdetect models`` and the card.

:func:`ship_model` is the one call that puts a trained detector in the package: it saves it in float16,
checks the size limit, and writes its card and protocol YAML from the measured figures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dfdetect._io import sha256_file, write_text
from dfdetect.errors import WeightsError

if TYPE_CHECKING:
    from dfdetect.model.detector import Detector

__all__ = [
    "MAX_SHIPPED_BYTES",
    "MODELS_DIR",
    "NAME_RE",
    "ModelCard",
    "ModelFigures",
    "read_card",
    "render_card",
    "sha256_file",
    "ship_model",
    "write_model_card",
]

#: where shipped detectors and their cards live (package data)
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  #: the shipped weights, beside the code packages
#: the issue's limit for a file inside the package
MAX_SHIPPED_BYTES = 12 * 2**20
#: timm-style ``architecture.tag``: lower-case snake_case, one dot
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")

DFDC_TERMS = ("Trained on crops of the DeepFake Detection Challenge (DFDC) dataset, whose terms allow "
              "research use only, not commercial use; the weights carry those terms.")
DLIB_TERMS = ("Its blend masks came from dlib's 68-point landmark model, which was trained on iBUG 300-W: "
              "research use only.")
DEFAULT_USE = ("A first look at whether a face video or image was manipulated (face swap, face reenactment, "
               "self-blended fakes), for research, teaching and triage by a person. It is not proof: a "
               "verdict should never be the only reason to accuse anyone or to act against anyone.")
DEFAULT_LIMITS = [
    "It scores faces only: a fake background, voice or whole-frame generation is not what it looks for.",
    ("Scores drop on data unlike its training data (other datasets, strong compression, small faces); "
    "the cross-dataset and laundering figures above say by how much."),
    "No face found means no verdict (`no_face`), not 'real'.",
    "Fakes made to fool detectors (adversarial noise) were not measured.",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelFigures(_Model):
    """Held-out figures for one model, as measured (``None`` or empty: not measured)."""

    in_domain_auc: float | None = Field(None, description="DFDC test split (never trained on), frame AUC")
    ffpp_video_auc: float | None = Field(None, description="ffpp-samples video AUC through predict's pipeline")
    ffpp_per_method: dict[str, float] = Field(default_factory=dict, description="method -> video AUC")
    ffpp_per_compression: dict[str, float] = Field(default_factory=dict, description="c23/c40 -> video AUC")
    laundering: dict[str, float] = Field(default_factory=dict, description="condition -> AUC, e.g. 'JPEG q50'")
    ece_before: float | None = Field(None, description="expected calibration error before calibration")
    ece_after: float | None = Field(None, description="ECE after calibration (the shipped scores)")
    calibration: str | None = Field(None, description="how P(fake) was calibrated, e.g. 'temperature, T=1.4'")
    seconds_per_video: float | None = Field(None, description="predict, 32 frames, faces + network, 2 CPU cores")
    extra: dict[str, float | str] = Field(default_factory=dict, description="any other figure worth showing")

    def headline(self) -> dict[str, float]:
        """The figures ``dfdetect models`` lists (front matter ``figures:``)."""
        h = {"in_domain_auc": self.in_domain_auc, "ffpp_video_auc": self.ffpp_video_auc, "ece": self.ece_after,
             "seconds_per_video": self.seconds_per_video}
        return {k: float(v) for k, v in h.items() if v is not None}


class ModelCard(_Model):
    """What a person writes about a model; the figures and file facts are filled in by :func:`render_card`."""

    name: str = Field(description="timm-style architecture.tag, e.g. mobilenet_v2.dfdc_sbi")
    summary: str = Field(description="one sentence: what the model is")
    training_data: str = Field(description="which data, how many videos/crops, how it was split")
    recipe_command: str = Field(description="the one command that reproduces the model from its protocol YAML")
    figures: ModelFigures = Field(default_factory=ModelFigures)
    terms: str = DFDC_TERMS
    license: str = "weights: research use only, not commercial (DFDC terms); code: MIT"
    dlib_landmarks: bool = Field(False, description="blend masks from dlib's 68-point model (research use only)")
    intended_use: str = DEFAULT_USE
    limits: list[str] = Field(default_factory=lambda: list(DEFAULT_LIMITS))
    bench_table: str | None = Field(None, description="the markdown table bench/generalization.py prints")
    hub: str | None = Field(None, description="Hugging Face copy: 'owner/repo/file.safetensors'")
    url: str | None = Field(None, description="plain download URL of the same file")

    @field_validator("name")
    @classmethod
    def _timm_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"model name {v!r} is not architecture.tag (e.g. mobilenet_v2.dfdc_sbi)")
        return v


def _detector_meta(weights: Path) -> dict[str, str]:
    """The detector file's metadata, read without building the network."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any reader error means "not a detector file"
        raise WeightsError(f"not a readable .safetensors file ({type(exc).__name__})", path=weights) from None


def _table(rows: dict[str, Any], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def _fig(v: float | None, fmt: str = ".3f") -> str:
    return "not measured" if v is None else format(v, fmt)


def _protocol_yaml(meta: dict[str, str]) -> str:
    return yaml.safe_dump(json.loads(meta["protocol"]), sort_keys=False) if "protocol" in meta else ""


def render_card(card: ModelCard, weights: str | Path) -> str:
    """The card's text: front matter from the weights file and ``card.figures``, then the body."""
    weights = Path(weights)
    meta = _detector_meta(weights)
    data_config = json.loads(meta.get("data_config", "{}"))
    front = {
        "name": card.name,
        "file": weights.name,
        "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size,
        "dtype": meta.get("dtype", "float32"),
        "backbone": meta.get("backbone"),
        "input_size": (data_config.get("input_size") or [None])[-1],
        "threshold": float(meta["threshold"]) if "threshold" in meta else None,
        **({"onnx": onnx.name, "onnx_sha256": sha256_file(onnx), "onnx_explains": _explains(onnx)}
           if (onnx := weights.with_suffix(".onnx")).is_file() else {}),
        "hub": card.hub,
        "url": card.url,
        "license": card.license,
        "figures": card.figures.headline(),
        "summary": card.summary,
    }
    f = card.figures
    terms = card.terms + (" " + DLIB_TERMS if card.dlib_landmarks else "")
    parts = [
        f"# {card.name}", "", card.summary, "",
        "## Training data and terms", "", card.training_data, "", f"**Terms.** {terms}", "",
        f"**Licence.** {card.license}", "",
        "## Recipe", "", "Reproduce it with one command:", "", "```bash", card.recipe_command, "```", "",
        f"The protocol (also in `{card.name}.protocol.yaml` beside this card):", "",
        "```yaml", _protocol_yaml(meta).rstrip(), "```", "",
        "## Held-out figures", "",
        f"- In-domain (DFDC test split, frame AUC): **{_fig(f.in_domain_auc)}**",
        f"- Cross-dataset (ffpp-samples, video AUC, never trained on): **{_fig(f.ffpp_video_auc)}**", "",
    ]
    for title, rows, head in (("Per manipulation method (ffpp-samples)", f.ffpp_per_method, ("method", "video AUC")),
                              ("Per compression (ffpp-samples)", f.ffpp_per_compression, ("compression", "video AUC")),
                              ("Under laundering", f.laundering, ("condition", "AUC")),
                              ("Other figures", f.extra, ("figure", "value"))):
        if rows:
            parts += [f"### {title}", "", _table(rows, head), ""]
    if card.bench_table:
        parts += ["### Side by side (`python bench/generalization.py`)", "", card.bench_table.strip(), ""]
    parts += [
        "## Calibration", "",
        f"- Expected calibration error before: {_fig(f.ece_before)}, after: **{_fig(f.ece_after)}**"
        + (f" ({f.calibration})" if f.calibration else ""),
        f"- Decision threshold (chosen on validation): {_fig(front['threshold'], '.4f')}", "",
        "## Speed", "",
        ("- `dfdetect predict` on one video, 32 frames, faces + network, 2 CPU cores: "
         + ("not measured" if f.seconds_per_video is None else f"{f.seconds_per_video:.2f} s")), "",
        "## Intended use", "", card.intended_use, "",
        "## Known limits", "", *[f"- {line}" for line in card.limits], "",
    ]
    if card.dlib_landmarks:
        parts += ["Landmarks from dlib's 68-point model were used: research use only.", ""]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(parts)


def write_model_card(card: ModelCard, weights: str | Path) -> Path:
    """Write ``<name>.md`` and ``<name>.protocol.yaml`` beside ``weights``, atomically; returns the card."""
    weights = Path(weights)
    meta = _detector_meta(weights)
    write_text(weights.parent / f"{card.name}.protocol.yaml", _protocol_yaml(meta))
    return write_text(weights.parent / f"{card.name}.md", render_card(card, weights))


def _explains(onnx: Path) -> bool:
    """Whether the twin draws heatmaps itself (its ``cam`` output), so predict and serve need no torch for them."""
    from dfdetect.model.export import OnnxDetector

    return OnnxDetector.load(onnx).explainable


def ship_model(detector: Detector, card: ModelCard, models_dir: str | Path = MODELS_DIR, *,
               half: bool = True) -> Path:
    """Save ``detector`` as ``models_dir/<name>.safetensors`` (float16), its ONNX twin and its card; returns the card.

    The twin is exported from the saved file (what predict loads) and checked to score as it does; predict
    uses it, heatmaps included when it has their output. Refuses a file over :data:`MAX_SHIPPED_BYTES` (and removes it),
    so the package stays small.
    """
    from dfdetect.model.detector import Detector
    from dfdetect.model.export import export_onnx

    weights = Path(models_dir) / f"{card.name}.safetensors"
    detector.save(weights, half=half)
    try:  # what predict will load: never ship a file that does not (e.g. a protocol changed by hand)
        Detector.load(weights)
    except WeightsError:
        weights.unlink()
        raise
    twin = weights.with_suffix(".onnx")
    export_onnx(Detector.load(weights), twin)
    for f in (weights, twin):
        size = f.stat().st_size
        if size > MAX_SHIPPED_BYTES:
            weights.unlink()
            twin.unlink(missing_ok=True)
            raise WeightsError(f"{size / 2**20:.1f} MiB is over the {MAX_SHIPPED_BYTES / 2**20:.0f} MiB limit for a "
                               "shipped model file; use a smaller backbone or half=True", path=f)
    return write_model_card(card, weights)


def read_card(path: str | Path) -> tuple[dict[str, Any], str]:
    """``(front matter, markdown body)`` of a card; a card without front matter -> ``({}, text)``."""
    text = Path(path).read_text(encoding="utf-8")
    m = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n?(.*)$", text, flags=re.DOTALL)
    if not m:
        return {}, text
    try:
        front = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise WeightsError(f"model card front matter is not YAML ({type(exc).__name__})", path=path) from None
    if not isinstance(front, dict):
        raise WeightsError("model card front matter is not a mapping", path=path)
    return front, m.group(2)
