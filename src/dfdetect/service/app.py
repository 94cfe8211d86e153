"""The web service: an upload page, a JSON API and a health check, over the same API as the CLI.

``POST /api/v1/detect`` takes one video or image as ``multipart/form-data`` (field ``file``) and answers
with :meth:`dfdetect.predict.PredictResult.to_json` (the schema is in its docstring) plus, for the page:
base64 PNG face crops and Grad-CAM heatmaps (``images=True``: ``crop_png``, ``gradcam_png`` per face),
``"plot": {"index": [int], "p_fake_max": [float | null], "threshold": float}`` (the per-frame series),
``"explained": bool`` (any heatmap) and ``"elapsed_s": float``. Errors are ``{"detail": str, "status": int}``.

Upload limits, because the service may face the internet:

- size: ``Content-Length`` is checked first, then the bytes are counted *while streaming*; past
  ``max_upload_bytes`` the request gets 413 and nothing more is read or written;
- type: from the first bytes (magic numbers), never from the name or the declared content type;
  mp4/mov/webm/avi/mkv and jpeg/png pass, anything else gets 415;
- disk: the body is streamed into a fresh private ``tempfile.TemporaryDirectory`` (mode 0700) under a
  name we generate; the client's file name is only echoed back, sanitised; the folder is deleted after;
- bad content: a file that passes the magic check but cannot be decoded gets 422, one line of JSON.

We parse the multipart body ourselves (python-multipart's streaming parser) because Starlette's
``request.form()`` spools the whole upload to the system temp folder before the endpoint sees it, which
defeats both the streaming size limit and the private folder.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from dfdetect.errors import DfdetectError

__all__ = ["ACCEPTED", "create_app", "sniff_media"]

STATIC = Path(__file__).with_name("static")
#: what the magic-byte check lets through (suffix we save it under -> what it is)
ACCEPTED = {".mp4": "MP4 video", ".mov": "QuickTime video", ".webm": "WebM video", ".mkv": "Matroska video",
            ".avi": "AVI video", ".jpg": "JPEG image", ".png": "PNG image"}
_SNIFF_BYTES = 64  # enough for every signature below (EBML DocType sits in the first ~40 bytes)
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")  # QuickTime files older than 'ftyp'
_MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file part


def sniff_media(head: bytes) -> str | None:
    """The suffix for an accepted media type recognised from the first bytes, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head[4:8] == b"ftyp":
        return ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head[4:8] in _MOV_ATOMS:
        return ".mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska or its WebM profile
        return ".webm" if b"webm" in head[:_SNIFF_BYTES] else ".mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    return None


def _display_name(raw: str | None) -> str:
    """The client's file name, for display only: base name, printable, short."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = re.sub(r"[^\w.\- ()\[\]]+", "_", name).strip() or "upload"
    return name[:100]


class _Reject(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "status": status}, status_code=status)


class _UploadSink:
    """python-multipart callbacks: the first file part goes to ``folder/upload<ext>``, counted and sniffed."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.size = 0
        self.path: Path | None = None
        self.filename: str | None = None
        self.done = False
        self._head = b""
        self._fh: Any = None
        self._header_field = b""
        self._header_value = b""
        self._is_file = False
        self._headers: dict[bytes, bytes] = {}

    # -- header callbacks
    def on_part_begin(self) -> None:
        self._headers, self._is_file = {}, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._is_file = not self.done and b"filename" in opts
        if self._is_file:
            self.filename = opts[b"filename"].decode("utf-8", "replace")

    # -- data callbacks
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _Reject(413, f"upload larger than the limit of {self.max_bytes / 2**20:.1f} MB")
        if self._fh is None:
            self._head += chunk
            if len(self._head) < _SNIFF_BYTES:
                return
            self._open()
        else:
            self._fh.write(chunk)

    def _open(self) -> None:
        suffix = sniff_media(self._head)
        if suffix is None:
            raise _Reject(415, "unsupported file type (by its content); send an mp4, mov, webm, avi or mkv video "
                               "or a jpeg or png image")
        self.path = self.folder / f"upload{suffix}"  # a name we generate, never the client's
        self._fh = self.path.open("wb")
        self._fh.write(self._head)
        self._head = b""

    def on_part_end(self) -> None:
        if not self._is_file:
            return
        if self._fh is None:
            if not self._head:
                raise _Reject(422, "the uploaded file is empty")
            self._open()
        self._fh.close()
        self._is_file, self.done = False, True

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()

    def callbacks(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
            "on_part_data", "on_part_end")}


def create_app(
    detector: Any,
    *,
    max_upload_bytes: int = 200 * 2**20,
    frames: int = 32,
    explain: bool = True,
    max_explain: int = 8,
) -> FastAPI:
    """The FastAPI app for a loaded ``Detector`` or ``OnnxDetector`` (see :class:`dfdetect.predict.Scorer`)."""
    from dfdetect import predict as P

    app = FastAPI(title="dfdetect", version="1", docs_url="/docs", redoc_url=None)
    face_cfg, notes = P.resolve_face_config(detector.protocol_.faces)
    if explain and hasattr(detector, "model_"):
        import pytorch_grad_cam  # noqa: F401  (its imports take seconds; pay them at start, not on the first upload)
    state: dict[str, Any] = {"face_detector": None}
    # one prediction at a time: the face detector and Grad-CAM hooks are shared, and the work is CPU-bound
    lock = threading.Lock()

    def run_predict(path: Path, name: str) -> dict[str, Any]:
        with lock:
            if state["face_detector"] is None:
                state["face_detector"] = P._create_face_detector(face_cfg)
            start = time.perf_counter()
            res = P.predict_file(path, detector, frames=frames, face_cfg=detector.protocol_.faces,
                                 face_detector=state["face_detector"], explain=explain, max_explain=max_explain,
                                 keep_images=True, name=name)
            doc = res.to_json(images=True)
            doc["plot"] = {"index": [fr.index for fr in res.frames],
                           "p_fake_max": [fr.p_fake_max for fr in res.frames], "threshold": res.threshold}
            doc["explained"] = any(f.heatmap is not None for _, f in res.all_faces())
            doc["elapsed_s"] = round(time.perf_counter() - start, 3)
            return doc

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": type(detector).__name__, "threshold": float(detector.threshold_),
                "face_detector": face_cfg.detector, "frames": frames, "max_upload_bytes": max_upload_bytes,
                "notes": notes}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post("/api/v1/detect")
    async def detect(request: Request) -> JSONResponse:
        from python_multipart.multipart import MultipartParser, parse_options_header

        ctype, opts = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
            return _error(400, "send the video or image as multipart/form-data, field 'file'")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + _MULTIPART_SLACK:
            return _error(413, f"upload larger than the limit of {max_upload_bytes / 2**20:.1f} MB")
        with tempfile.TemporaryDirectory(prefix="dfdetect-upload-") as tmp:
            sink = _UploadSink(Path(tmp), max_upload_bytes)
            parser = MultipartParser(opts[b"boundary"], sink.callbacks())
            try:
                async for chunk in request.stream():
                    parser.write(chunk)
                    if sink.done:
                        break  # one file per request; the rest is not read
                else:
                    parser.finalize()
            except _Reject as exc:
                return _error(exc.status, exc.detail)
            except ValueError as exc:  # python-multipart's errors for a malformed body subclass ValueError
                return _error(400, f"malformed multipart body ({exc})")
            finally:
                sink.close()
            if sink.path is None:
                return _error(400, "no file in the request; send it as multipart/form-data, field 'file'")
            name = _display_name(sink.filename)
            try:
                doc = await run_in_threadpool(run_predict, sink.path, name)
            except (DfdetectError, OSError, ValueError, RuntimeError) as exc:
                # DfdetectError is what frames/faces raise for undecodable media; the others are decoder
                # errors they did not wrap. Either way the file is bad: 422, one line.
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if isinstance(exc, DfdetectError) and exc.path is not None:
                    msg = msg.removeprefix(f"{exc.path}: ")
                return _error(422, f"{name}: {msg}".replace(str(tmp), "upload"))
        return JSONResponse(doc)

    return app
