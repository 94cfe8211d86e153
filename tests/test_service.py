"""The web service: the API answer, the page, and every upload limit (size, type, temp folder, bad file).

Uses the real frame reader and Haar face finder on a small video of a real face (scikit-image's
astronaut photo), with a tiny random torch model.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dfdetect.config import FaceConfig, Protocol
from dfdetect.service import app as service_app
from dfdetect.service import create_app, sniff_media
from test_explain import TinyTorchDetector, tiny_cnn
from test_predict import write_video


def face_frame(shift: int = 0) -> np.ndarray:
    from skimage.data import astronaut  # a real face photo inside scikit-image

    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(img[10 + shift:266 + shift, 100:356])  # 256x256 around the face (~100 px)


def face_video(path: Path, n: int = 8) -> Path:
    return write_video(path, [face_frame(i % 4) for i in range(n)])


def haar_detector(threshold: float = 0.5) -> TinyTorchDetector:
    protocol = Protocol.seed().model_copy(update={"faces": FaceConfig(detector="haar", min_size=40)})
    return TinyTorchDetector(tiny_cnn(), size=48, threshold=threshold, protocol=protocol,
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(haar_detector(), max_upload_bytes=600_000, frames=4))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    return face_video(tmp_path_factory.mktemp("v") / "v.mp4").read_bytes()


def png_bytes(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def test_health_and_page(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["threshold"] == 0.5 and h["face_detector"] == "haar"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="verdict"' in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    # nothing is loaded from elsewhere: the only absolute URL is the SVG namespace name
    text = page.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert set(re.findall(r"https?://[^\s\"'`)]+", text)) <= {"http://www.w3.org/2000/svg"}


def test_detect_video(client, video):
    r = client.post("/api/v1/detect", files={"file": ("clip.mp4", video, "video/mp4")})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["schema"] == "dfdetect.predict/1" and doc["kind"] == "video" and doc["file"] == "clip.mp4"
    assert doc["verdict"] in ("fake", "real") and doc["frames_sampled"] == 4 and doc["faces"] >= 3
    assert doc["verdict"] == ("fake" if doc["p_fake"] >= doc["threshold"] else "real")
    face = next(f for fr in doc["frames"] for f in fr["faces"])
    crop = cv2.imdecode(np.frombuffer(base64.b64decode(face["crop_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert crop.ndim == 3 and max(crop.shape[:2]) <= 128
    assert any(f["gradcam_png"] for fr in doc["frames"] for f in fr["faces"])
    assert doc["plot"]["index"] == [fr["index"] for fr in doc["frames"]] and doc["plot"]["threshold"] == 0.5


def test_type_is_checked_by_content_not_name(client):
    png = png_bytes(face_frame())
    r = client.post("/api/v1/detect", files={"file": ("notes.txt", png, "text/plain")})
    assert r.status_code == 200 and r.json()["kind"] == "image"
    r = client.post("/api/v1/detect", files={"file": ("clip.mp4", b"#!/bin/sh\necho hi\n" * 10, "video/mp4")})
    assert r.status_code == 415 and "unsupported file type" in r.json()["detail"]
    gif = b"GIF89a" + bytes(100)
    assert client.post("/api/v1/detect", files={"file": ("a.png", gif, "image/png")}).status_code == 415


def test_size_limit_by_header_and_while_streaming(client, monkeypatch):
    big = png_bytes(face_frame())[:16] + bytes(700_000)
    r = client.post("/api/v1/detect", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # no Content-Length (chunked): the limit must hold while the body streams in
    boundary = "xXx"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode()
    counted = []

    class Spy(service_app._UploadSink):
        def on_part_data(self, data, start, end):
            counted.append((self.size, self._fh.tell() if self._fh else 0))
            super().on_part_data(data, start, end)

    monkeypatch.setattr(service_app, "_UploadSink", Spy)

    def body():
        yield head + b"\x00\x00\x00\x18ftypmp42" + bytes(100)
        for _ in range(100):  # 100 x 64 kB = 6.4 MB offered, limit 0.6 MB
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/api/v1/detect", content=body(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    # it stopped once over the limit: counted < 1 MB of the 6.4 MB, and never wrote more than the limit
    assert counted[-1][0] < 1_000_000 and max(w for _, w in counted) <= 600_000


def test_undecodable_upload_is_422_without_server_paths(client):
    fake_mp4 = b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000)
    r = client.post("/api/v1/detect", files={"file": ("broken.mp4", fake_mp4, "video/mp4")})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("broken.mp4: ") and "\n" not in detail and "/tmp" not in detail
    assert "dfdetect-upload" not in detail
    r = client.post("/api/v1/detect", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_bad_requests_are_400(client):
    assert client.post("/api/v1/detect", content=b"hello", headers={"content-type": "text/plain"}).status_code == 400
    r = client.post("/api/v1/detect", data={"note": "no file"}, files={"other": ("", b"", "text/plain")})
    assert r.status_code == 400


def test_upload_lives_only_in_a_private_temp_folder(client, monkeypatch):
    from dfdetect.inference import predict as P

    seen = {}
    real = P.predict_file

    def spy(path, *a, **kw):
        p = Path(path)
        seen.update(path=p, mode=stat.S_IMODE(p.parent.stat().st_mode), files=sorted(os.listdir(p.parent)))
        return real(path, *a, **kw)

    monkeypatch.setattr(P, "predict_file", spy)
    r = client.post("/api/v1/detect", files={"file": ("../../etc/evil name.png", png_bytes(face_frame()), "image/png")})
    assert r.status_code == 200
    assert seen["path"].name == "upload.png" and seen["files"] == ["upload.png"]
    assert seen["path"].parent.name.startswith("dfdetect-upload-") and seen["mode"] == 0o700
    assert not seen["path"].parent.exists()  # deleted after the request
    assert r.json()["file"] == "evil name.png"


@pytest.mark.parametrize("head, suffix", [
    (b"\xff\xd8\xff\xe0" + bytes(60), ".jpg"),
    (b"\x89PNG\r\n\x1a\n" + bytes(56), ".png"),
    (b"\x00\x00\x00\x20ftypisom" + bytes(52), ".mp4"),
    (b"\x00\x00\x00\x14ftypqt  " + bytes(52), ".mov"),
    (b"\x00\x00\x00\x08wide" + bytes(56), ".mov"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(48), ".webm"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x82\x88matroska" + bytes(48), ".mkv"),
    (b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(48), ".avi"),
    (b"RIFF\x00\x10\x00\x00WAVEfmt " + bytes(48), None),
    (b"GIF89a" + bytes(58), None),
    (b"<html>" + bytes(58), None),
])
def test_sniff_media(head, suffix):
    assert sniff_media(head) == suffix


def test_sniffs_a_real_encoded_video(tmp_path):
    assert sniff_media(face_video(tmp_path / "v.mp4", n=2).read_bytes()[:64]) == ".mp4"
    assert service_app._display_name("C:\\Users\\x\\clip<script>.mp4") == "clip_script_.mp4"
