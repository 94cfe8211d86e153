"""The web service: an upload page, a JSON API and a health check, over the same API as the CLI.

``POST /api/v1/detect`` takes one video or image as ``multipart/form-data`` (field ``file``) and answers
with :meth:`dfdetect.inference.predict.PredictResult.to_json` (the schema is in its docstring) plus, for the page:
base64 PNG face crops and Grad-CAM heatmaps (``images=True``: ``crop_png``, ``gradcam_png`` per face),
``"plot": {"index": [int], "p_fake_max": [float | null], "threshold": float}`` (the per-frame series),
``"explained": bool`` (any heatmap) and ``"elapsed_s": float``. Every error, 404 and 500 included, is
``{"detail": str, "status": int}``.

Upload limits (:class:`dfdetect.config.ServiceConfig`), because the service may face the internet:

- size: ``Content-Length`` is checked first, then the bytes are counted *while streaming*; past
  ``max_upload_bytes`` the request gets 413 and nothing more is read or written;
- type: from the first bytes (magic numbers), never from the name or the declared content type;
  mp4/mov/webm/avi/mkv and jpeg/png pass, anything else gets 415;
- disk: the body is streamed into a fresh private ``tempfile.mkdtemp`` folder (mode 0700) under a
  name we generate; the client's file name is only echoed back, sanitised; the folder is deleted after;
- time: the whole body must arrive within ``upload_timeout`` seconds, else 408 and the connection is cut;
- load: at most ``max_uploads`` bodies are received at once, and predictions run in a pool of ``workers``
  threads with at most ``max_queue`` waiting; past either, 503 with ``Retry-After`` at once, never a hang;
- bad content: an image whose header declares more than ``max_image_pixels`` (a decompression bomb) is
  refused before decoding, and a file that passes the magic check but cannot be decoded gets 422, one line.

We parse the multipart body ourselves (python-multipart's streaming parser) because Starlette's
``request.form()`` spools the whole upload to the system temp folder before the endpoint sees it, which
defeats both the streaming size limit and the private folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from dfdetect.config import ServiceConfig
from dfdetect.errors import DfdetectError
from dfdetect.model.metadata import check_threshold

__all__ = ["ACCEPTED", "create_app", "image_header_problem", "sniff_media"]

STATIC = Path(__file__).with_name("static")
#: what the magic-byte check lets through (suffix we save it under -> what it is)
ACCEPTED = {".mp4": "MP4 video", ".mov": "QuickTime video", ".webm": "WebM video", ".mkv": "Matroska video",
            ".avi": "AVI video", ".jpg": "JPEG image", ".png": "PNG image"}
_SNIFF_BYTES = 64  # enough for every signature below (EBML DocType sits in the first ~40 bytes)
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")  # QuickTime files older than 'ftyp'
_MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file part
_IMAGE_SUFFIXES = {".jpg", ".png"}


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


def _error(status: int, detail: str, *, close: bool = False, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body; ``close`` ends the connection (the rest of the body is never read)."""
    headers = {**(headers or {}), **({"Connection": "close"} if close else {})}
    return JSONResponse({"detail": detail, "status": status}, status_code=status, headers=headers)


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
        self._header_value += data[start:end]  # python-multipart caps a header's size (400 past it)

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


class _Guarded:
    """A torch detector whose scoring never overlaps Grad-CAM: Grad-CAM hooks the shared model while it runs
    (dfdetect.inference.explain holds ``_LOCK`` meanwhile), and a forward pass from another worker would feed them."""

    def __init__(self, detector: Any):
        self._detector = detector

    def predict_proba(self, crops_bgr: Any) -> Any:
        from dfdetect.inference.explain import _LOCK

        with _LOCK:
            return self._detector.predict_proba(crops_bgr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)


def image_header_problem(path: Path, max_pixels: int) -> str | None:
    """Why an image must not be decoded (its header declares more than ``max_pixels``), or None.

    Reads the header only (:func:`dfdetect._io.image_size`, the loaders' own check), so a decompression bomb
    is refused before it costs memory.
    """
    from dfdetect._io import image_size
    from dfdetect.errors import BadInputError, TooManyPixelsError

    try:
        w, h, _ = image_size(path)
    except TooManyPixelsError:  # over twice Pillow's own limit (~179 MP) before we even see the size
        return f"the image declares more than {max_pixels / 1e6:g} megapixels, the limit"
    except BadInputError:
        return "cannot read the image header (a damaged or truncated file)"
    if w * h > max_pixels:
        return f"the image declares {w}x{h} pixels, more than the limit of {max_pixels / 1e6:g} megapixels"
    return None


def create_app(detector: Any, config: ServiceConfig | None = None, **overrides: Any) -> FastAPI:
    """The FastAPI app for a loaded ``Detector`` or ``OnnxDetector`` (see :class:`dfdetect.model.scoring.Scorer`).

    ``config`` holds the limits and pool sizes; ``overrides`` are ServiceConfig fields by name
    (``max_upload_bytes=...``, ``frames=...``), validated like the config itself.
    """
    from dfdetect.inference import predict as P

    cfg = ServiceConfig.model_validate({**(config or ServiceConfig()).model_dump(), **overrides})
    try:
        check_threshold(detector.threshold_)
    except ValueError as exc:  # a hand-made scorer; files are checked when they are loaded
        raise DfdetectError(f"the detector's threshold {exc}; every verdict would be wrong") from None
    workers = cfg.pool_size()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfdetect-predict")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="dfdetect", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    _json_errors(app)
    face_cfg, notes = P.resolve_face_config(detector.protocol_.faces)
    from dfdetect.preprocess.faces import check_detector

    check_detector(face_cfg.detector)  # at start, in one line: not a 500 on every upload
    from dfdetect.inference.explain import can_explain

    torch_model = hasattr(detector, "model_")
    explain = cfg.explain and can_explain(detector)
    if explain and torch_model:
        import pytorch_grad_cam  # noqa: F401  (its imports take seconds; pay them at start, not on the first upload)
    scorer = _Guarded(detector) if torch_model else detector  # onnxruntime sessions are thread-safe
    local = threading.local()  # one face detector per worker thread: OpenCV's cascades are not thread-safe
    load = {"uploads": 0, "jobs": 0}  # event-loop state: uploads being received, predictions queued or running
    capacity = workers + cfg.max_queue

    def run_predict(path: Path, name: str) -> dict[str, Any]:
        if getattr(local, "face_detector", None) is None:
            local.face_detector = P.create_face_finder(face_cfg)
        start = time.perf_counter()
        res = P.predict_file(path, scorer, frames=cfg.frames, face_cfg=detector.protocol_.faces,
                             face_detector=local.face_detector, explain=explain, max_explain=cfg.max_explain,
                             keep_images=True, name=name)
        doc = res.to_json(images=True)
        doc["plot"] = {"index": [fr.index for fr in res.frames],
                       "p_fake_max": [fr.p_fake_max for fr in res.frames], "threshold": res.threshold}
        doc["explained"] = any(f.heatmap is not None for _, f in res.all_faces())
        doc["elapsed_s"] = round(time.perf_counter() - start, 3)
        return doc

    def busy(what: str) -> JSONResponse:
        return _error(503, f"{what}; try again in {cfg.retry_after} s",
                      headers={"Retry-After": str(cfg.retry_after), "Connection": "close"})

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: what uptime checks send (it was a 405)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": type(detector).__name__, "threshold": float(detector.threshold_),
                "face_detector": face_cfg.detector, "frames": cfg.frames, "max_upload_bytes": cfg.max_upload_bytes,
                "upload_timeout": cfg.upload_timeout, "head_timeout": cfg.head_timeout, "max_uploads": cfg.max_uploads,
                "workers": workers, "max_queue": cfg.max_queue, "max_image_pixels": cfg.max_image_pixels,
                "uploads": load["uploads"], "jobs": load["jobs"], "notes": notes}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def receive(request: Request, sink: _UploadSink, boundary: bytes) -> None:
        from python_multipart.multipart import MultipartParser

        parser = MultipartParser(boundary, sink.callbacks())
        total, limit = 0, cfg.max_upload_bytes + _MULTIPART_SLACK
        async for chunk in request.stream():
            parser.write(chunk)  # the file part's own limit fires in here, as its bytes come
            total += len(chunk)
            if total > limit:  # every byte counts, not only the file's: other parts cost too
                raise _Reject(413, f"upload larger than the limit of {cfg.max_upload_bytes / 2**20:.1f} MB")
            if sink.done:
                return  # one file per request; the rest is not read
        parser.finalize()

    @app.post("/api/v1/detect")
    async def detect(request: Request) -> JSONResponse:
        from python_multipart.multipart import parse_options_header

        ctype, opts = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
            return _error(400, "send the video or image as multipart/form-data, field 'file'", close=True)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes + _MULTIPART_SLACK:
            return _error(413, f"upload larger than the limit of {cfg.max_upload_bytes / 2**20:.1f} MB", close=True)
        if load["uploads"] >= cfg.max_uploads:
            return busy(f"{cfg.max_uploads} uploads are already being received")
        if load["jobs"] >= capacity:  # shed now rather than after the client has sent the whole file
            return busy("every worker is busy and the queue is full")
        tmp = Path(tempfile.mkdtemp(prefix="dfdetect-upload-"))  # mode 0700, a name we generate
        handed_over = False
        try:
            sink = _UploadSink(tmp, cfg.max_upload_bytes)
            load["uploads"] += 1
            try:
                async with asyncio.timeout(cfg.upload_timeout):
                    await receive(request, sink, opts[b"boundary"])
            except TimeoutError:
                return _error(408, f"the upload did not arrive within {cfg.upload_timeout:g} s; it was cut",
                              close=True)
            except _Reject as exc:
                return _error(exc.status, exc.detail, close=True)
            except ClientDisconnect:
                return _error(400, "the client went away during the upload", close=True)
            except ValueError as exc:  # python-multipart's errors for a malformed body subclass ValueError
                return _error(400, f"malformed multipart body ({' '.join(str(exc).split())[:200]})", close=True)
            finally:
                load["uploads"] -= 1
                sink.close()
            if sink.path is None:
                return _error(400, "no file in the request; send it as multipart/form-data, field 'file'",
                              close=True)
            name = _display_name(sink.filename)
            if sink.path.suffix in _IMAGE_SUFFIXES:
                problem = image_header_problem(sink.path, cfg.max_image_pixels)
                if problem:
                    return _error(422, f"{name}: {problem}", close=True)
            if load["jobs"] >= capacity:
                return busy("every worker is busy and the queue is full")
            load["jobs"] += 1
            loop = asyncio.get_running_loop()
            job = pool.submit(run_predict, sink.path, name)

            def finished(_: Any) -> None:  # in the worker (or here, if cancelled): the job owns the folder
                shutil.rmtree(tmp, ignore_errors=True)
                with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                    loop.call_soon_threadsafe(_release)

            def _release() -> None:
                load["jobs"] -= 1

            job.add_done_callback(finished)  # before wrap_future's: the folder is gone when the answer is sent
            handed_over = True
            try:
                doc = await asyncio.wrap_future(job)
            except (DfdetectError, OSError, ValueError, RuntimeError, cv2.error) as exc:
                # DfdetectError is what frames/faces raise for undecodable media; the others are decoder (and
                # OpenCV) errors they did not wrap. Either way the file is bad: 422, one line.
                text = exc.message if isinstance(exc, DfdetectError) else str(exc)
                msg = text.splitlines()[0] if text else type(exc).__name__
                return _error(422, f"{name}: {msg}".replace(str(tmp), "upload"))
        finally:
            if not handed_over:
                shutil.rmtree(tmp, ignore_errors=True)
        return JSONResponse(doc)

    return app


def _json_errors(app: FastAPI) -> None:
    """Every error answers ``{"detail": str, "status": int}``: 404/405 and validation errors, and 500s."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request: " + "; ".join(str(e.get("msg")) for e in exc.errors())[:300])

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises it after this answer, so the server log keeps the traceback
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")
