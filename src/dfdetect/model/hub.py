"""Named detectors, as in timm + huggingface_hub: ``--model mobilenet_v2.dfdc_sbi`` finds the file.

:func:`resolve` takes what a user passes as ``--model`` and finds the detector file, in this order:

1. a local file or run folder (``Detector.load`` reads the ``detector.safetensors`` in a run folder);
2. a model shipped in the package (``dfdetect/models/<name>.safetensors``), checked by its card's sha256;
3. a download: a catalog model's ``hub``/``url``, ``hf://owner/repo/file``, ``owner/repo`` (its
   ``detector.safetensors``) or an ``https://``/``file://`` URL, into the Hugging Face cache, checked by
   sha256 when the catalog knows it. With ``HF_HUB_OFFLINE=1`` only the cache is used.

The catalog is the front matter of the cards in ``dfdetect/models/`` (:mod:`dfdetect.model.card`): one
:class:`ModelEntry` per card, the single source for ``dfdetect models`` and for resolution. A card with
no weights beside it is a model that is downloaded on first use. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from dfdetect._io import atomic_path
from dfdetect.errors import WeightsError
from dfdetect.model import card as modelcard

__all__ = ["DEFAULT_MODEL", "MODELS_DIR", "ModelEntry", "Resolved", "get_model", "list_models", "model_status",
           "resolve", "resolve_model"]

#: the detector ``predict``, ``serve``, ``evaluate`` and ``export`` use when no ``--model`` is given
DEFAULT_MODEL = "mobilenet_v2.dfdc_sbi"
#: where the shipped cards and weights are (tests point it at a temporary folder)
MODELS_DIR = modelcard.MODELS_DIR
#: what ``owner/repo`` means on the Hub: the file ``dfdetect train`` writes
HUB_FILE = "detector.safetensors"
_FILE_SUFFIXES = {".safetensors", ".onnx", ".pt", ".pth", ".bin", ".ckpt"}
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Source = Literal["local", "shipped", "cached", "downloaded"]


@dataclass(frozen=True)
class ModelEntry:
    """One known model: a card's front matter, typed."""

    name: str
    file: str
    card: Path
    sha256: str | None = None
    size_bytes: int | None = None
    hub: str | None = None  #: ``owner/repo/path/in/repo.safetensors``
    url: str | None = None
    license: str = ""
    summary: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    onnx: str | None = None  #: the same detector exported to ONNX, shipped beside it (scoring without torch)
    onnx_sha256: str | None = None
    onnx_explains: bool = False  #: the twin has the ``cam`` output, so it draws heatmaps too

    @property
    def shipped_path(self) -> Path:
        return self.card.parent / self.file

    @property
    def shipped_onnx(self) -> Path | None:
        return self.card.parent / self.onnx if self.onnx else None


@dataclass(frozen=True)
class Resolved:
    """Where ``--model`` led: the file, how it was found, and the catalog name if it has one."""

    path: Path
    source: Source
    name: str | None = None
    onnx: Path | None = None  #: a shipped model's ONNX twin (same scores to 1e-4), when it has one
    onnx_explains: bool = False  #: the twin draws heatmaps too (its ``cam`` output)

    def scorer_file(self, *, explain: bool = False) -> tuple[Path, bool]:
        """``(file, is_onnx)`` to score with: the ONNX twin unless heatmaps are asked for and it cannot draw them,
        so a verdict loads neither torch nor timm (a third of the memory, and faster on a CPU)."""
        usable = self.onnx is not None and (self.onnx_explains or not explain)
        return (self.onnx, True) if usable else (self.path, False)

    def describe(self) -> str:
        """``shipped model mobilenet_v2.dfdc_sbi``: the line commands print, so a user knows what scored."""
        if self.source == "local":
            return f"model file {self.path}"
        what = {"shipped": "shipped model", "cached": "cached model", "downloaded": "downloaded model"}[self.source]
        return f"{what} {self.name}" if self.name else f"{what} {self.path}"


# --------------------------------------------------------------------------- catalog


def _entry(card: Path) -> ModelEntry:
    front, _ = modelcard.read_card(card)
    name = str(front.get("name") or card.stem)
    figures = front.get("figures") or {}
    if not isinstance(figures, dict):
        raise WeightsError("model card: 'figures' is not a mapping", path=card)
    try:
        return ModelEntry(name=name, file=str(front.get("file") or f"{name}.safetensors"), card=card,
                          sha256=front.get("sha256"), size_bytes=front.get("size_bytes"), hub=front.get("hub"),
                          url=front.get("url"), license=str(front.get("license") or ""),
                          summary=str(front.get("summary") or ""),
                          figures={str(k): float(v) for k, v in figures.items()},
                          onnx=front.get("onnx"), onnx_sha256=front.get("onnx_sha256"),
                          onnx_explains=front.get("onnx_explains") is True)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"model card front matter is damaged ({exc})", path=card) from None


def list_models() -> list[ModelEntry]:
    """Every model with a card in :data:`MODELS_DIR`, by name."""
    cards = sorted(MODELS_DIR.glob("*.md")) if MODELS_DIR.is_dir() else []
    return sorted((_entry(c) for c in cards if c.name.lower() != "readme.md"), key=lambda e: e.name)


def get_model(name: str) -> ModelEntry | None:
    return next((e for e in list_models() if e.name == name), None)


def cache_dir() -> Path:
    """The Hugging Face cache (``HF_HUB_CACHE``), read now so a test or a user can point it elsewhere."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().lower() in ("1", "true", "yes", "on")


def _url_cache_path(url: str) -> Path:
    name = Path(unquote(urlparse(url).path)).name or HUB_FILE
    return cache_dir() / "dfdetect-urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _split_hub(spec: str) -> tuple[str, str]:
    """``owner/repo/dir/file`` (or ``hf://...``) -> ``(owner/repo, dir/file)``; ``owner/repo`` -> its HUB_FILE."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = spec.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise WeightsError(f"{spec!r} is not a Hugging Face reference; expected hf://owner/repo/file.safetensors")
    repo = "/".join(parts[:2])
    try:  # the hub's own rule, checked here: its cache lookup raises it with a 17-frame traceback
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise WeightsError(f"{spec!r} is not a Hugging Face reference: {str(exc).splitlines()[0][:160]}") from None
    if any(p in (".", "..") for p in parts[2:]):
        raise WeightsError(f"{spec!r} is not a Hugging Face reference: a file in a repo has no '.' or '..' part")
    return repo, "/".join(parts[2:]) or HUB_FILE


def model_status(entry: ModelEntry) -> Literal["shipped", "cached", "remote", "missing"]:
    """Where the model's file is now: in the package, in the cache, only remote, or nowhere."""
    if entry.shipped_path.is_file():
        return "shipped"
    if entry.hub:
        from huggingface_hub import try_to_load_from_cache

        repo, file = _split_hub(entry.hub)
        if isinstance(try_to_load_from_cache(repo, file, cache_dir=cache_dir()), str):
            return "cached"
    if entry.url and _url_cache_path(entry.url).is_file():
        return "cached"
    return "remote" if entry.hub or entry.url else "missing"


# --------------------------------------------------------------------------- checks and downloads


def _check_sha256(path: Path, want: str | None, what: str) -> None:
    if not want:
        return
    got = modelcard.sha256_file(path)
    if got.lower() != want.lower():
        raise WeightsError(f"sha256 mismatch for {what}: expected {want[:12]}..., got {got[:12]}...; the file is "
                           "damaged or changed upstream, so it is not loaded (delete it and try again)", path=path)


def _hf_download(spec: str, sha256: str | None) -> tuple[Path, Source]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from dfdetect import __version__

    repo, file = _split_hub(spec)
    cached = try_to_load_from_cache(repo, file, cache_dir=cache_dir())
    offline = _offline()
    try:
        path = Path(hf_hub_download(repo, file, cache_dir=cache_dir(), local_files_only=offline,
                                    library_name="dfdetect", library_version=__version__))
    except Exception as exc:  # noqa: BLE001 - hub, network or cache: every failure is one line
        why = (f"it is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1 forbids downloading; "
               "unset HF_HUB_OFFLINE (with a network) to fetch it once, or pass a local file with --model"
               if offline else f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        raise WeightsError(f"hf://{repo}/{file}: {why}") from None
    _check_sha256(path, sha256, f"hf://{repo}/{file}")
    return path, ("cached" if isinstance(cached, str) else "downloaded")


#: The largest model file a download may be: a file:// URL to /dev/zero must not fill the disk.
MAX_MODEL_BYTES = 2 * 2**30


def _local_source(url: str) -> Path:
    """The file a file:// URL names: a regular file no larger than any model (not /dev/zero, a pipe, a folder)."""
    src = Path(url2pathname(urlparse(url).path))
    if not src.is_file():
        raise WeightsError(f"{url}: no such regular file (a device, a pipe or a folder is not a model)")
    if src.stat().st_size > MAX_MODEL_BYTES:
        raise WeightsError(f"{url}: {src.stat().st_size / 2**30:.1f} GiB, larger than any model "
                           f"({MAX_MODEL_BYTES / 2**30:g} GiB)")
    return src


def _url_download(url: str, sha256: str | None) -> tuple[Path, Source]:
    scheme = urlparse(url).scheme
    if scheme == "file" and sha256 is None:  # nothing to check a copy against: the file itself, never a stale copy
        return _local_source(url), "local"
    dest = _url_cache_path(url)
    if dest.is_file():
        _check_sha256(dest, sha256, url)
        return dest, "cached"
    if scheme == "file":
        _local_source(url)
    if _offline() and scheme != "file":
        raise WeightsError(f"{url}: not in the cache ({dest.parent}) and HF_HUB_OFFLINE=1 forbids downloading; "
                           "unset HF_HUB_OFFLINE (with a network) to fetch it once, or pass a local file with --model")
    try:
        with atomic_path(dest) as tmp:  # a failed or damaged download never lands in the cache
            if scheme == "file":
                shutil.copyfile(url2pathname(urlparse(url).path), tmp)
            else:
                from huggingface_hub.file_download import http_get

                with open(tmp, "wb") as fh:
                    http_get(url, fh, displayed_filename=dest.name)
            _check_sha256(tmp, sha256, url)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, disk or a missing file: one line
        raise WeightsError(f"{url}: download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from None
    return dest, "downloaded"


def _download(entry: ModelEntry) -> tuple[Path, Source]:
    if entry.hub:
        return _hf_download(entry.hub, entry.sha256)
    if entry.url:
        return _url_download(entry.url, entry.sha256)
    raise WeightsError(f"model {entry.name} is known, but its file {entry.file} is not in this install and the "
                       "card names no download (hub or url)", path=entry.shipped_path)


# --------------------------------------------------------------------------- resolution


def _is_url(s: str) -> bool:
    return s.startswith(("hf://", "http://", "https://", "file://"))


def resolve(name_or_path: str | Path | None = None) -> Resolved:
    """What ``--model`` names -> the detector file (see the module docstring); ``None`` -> :data:`DEFAULT_MODEL`.

    Problems are one-line :class:`~dfdetect.errors.WeightsError`; a path that is not a known model and
    does not exist is returned as it is, so the loader reports "not found" with its own advice.
    """
    s = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if not _is_url(s) and Path(s).expanduser().exists():
        return Resolved(Path(s).expanduser(), "local")
    entry = get_model(s)
    if entry is None and name_or_path is None:
        raise WeightsError(f"no --model given, and the default model {DEFAULT_MODEL} is not shipped in this "
                           f"install (no {MODELS_DIR / (DEFAULT_MODEL + '.safetensors')})")
    if entry is not None:
        if entry.shipped_path.is_file():
            _check_sha256(entry.shipped_path, entry.sha256, f"shipped model {entry.name}")
            twin = entry.shipped_onnx
            if twin is not None and twin.is_file():
                _check_sha256(twin, entry.onnx_sha256, f"shipped model {entry.name} (ONNX)")
            has_twin = twin is not None and twin.is_file()
            return Resolved(entry.shipped_path, "shipped", entry.name, twin if has_twin else None,
                            onnx_explains=has_twin and entry.onnx_explains)
        path, source = _download(entry)
        return Resolved(path, source, entry.name)
    by_url = {e.hub: e for e in list_models() if e.hub} | {e.url: e for e in list_models() if e.url}
    known = by_url.get(s.removeprefix("hf://"), by_url.get(s))
    sha = known.sha256 if known else None
    if s.startswith("hf://"):
        return Resolved(*_hf_download(s, sha), known.name if known else None)
    if _is_url(s):
        return Resolved(*_url_download(s, sha), known.name if known else None)
    if Path(s).suffix.lower() in _FILE_SUFFIXES or "\\" in s:
        return Resolved(Path(s), "local")  # a missing file: the loader says so
    if modelcard.NAME_RE.match(s):
        names = ", ".join(e.name for e in list_models()) or "none in this install"
        raise WeightsError(f"unknown model {s!r} (known: {names}; `dfdetect models` lists them), and no such "
                           "local file or folder")
    if _REPO_RE.match(s):
        try:
            return Resolved(*_hf_download(s, sha), None)
        except WeightsError as exc:
            raise WeightsError(f"{s}: no such local file or folder, and as a Hugging Face repo: {exc}") from None
    return Resolved(Path(s), "local")


def resolve_model(name_or_path: str | Path | None = None) -> Path:
    """The detector file for a path, run folder, shipped name, Hub reference or URL (see :func:`resolve`)."""
    return resolve(name_or_path).path
