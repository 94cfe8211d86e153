"""End to end in a real browser: headless Debian chromium uploads a video on the page and sees the verdict.

Runs uvicorn on 127.0.0.1 (a free port) in a thread with a tiny random detector, drives the page with
Playwright's sync API against /usr/bin/chromium (never ``playwright install``), and saves the page as
docs/screenshot.png for the README.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dfdetect.inference import predict as P
from dfdetect.service import create_app
from test_predict import write_video
from test_service import face_frame, haar_detector

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"
FRAMES = 12

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian chromium is not installed at {CHROMIUM} "
                                                      "(apt-get install chromium; .ci/run does this)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def detector():
    return haar_detector(threshold=0.5)


@pytest.fixture(scope="module")
def server(detector) -> Iterator[str]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(detector, max_upload_bytes=20 * 2**20, frames=FRAMES), host="127.0.0.1",
                            port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A face that moves a little for 12 frames, then 3 frames with no face (they show as x on the plot)."""
    blank = np.full_like(face_frame(), 90)
    frames = [face_frame(i % 4) for i in range(FRAMES)] + [blank] * 3
    return write_video(tmp_path_factory.mktemp("browser") / "interview.mp4", frames)


def test_upload_shows_verdict(server, video, detector):
    sync_api = pytest.importorskip("playwright.sync_api")

    [expected] = P.predict_path(video, detector, frames=FRAMES)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('health').textContent.startsWith('service ok')")
            assert page.is_disabled("#submit")
            page.set_input_files("#file", str(video))
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)

            verdict = page.text_content("#verdict").strip().lower()
            assert verdict == expected.verdict and verdict in ("fake", "real")
            assert page.get_attribute("#verdict", "data-verdict") == expected.verdict
            assert page.text_content("#p-fake") == f"{expected.p_fake:.3f}"
            assert page.text_content("#threshold") == "0.500"
            assert page.text_content("#frames-used") == f"{expected.frames_with_face} / {len(expected.frames)}"
            assert page.locator("#plot svg circle.top").count() == expected.frames_with_face
            assert page.locator(".face-card").count() == expected.n_faces
            assert page.locator(".face-card img[alt='Grad-CAM heatmap']").count() >= 1
            assert page.text_content("#status") == "Done." and errors == []

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            tmp = SCREENSHOT.with_name(".screenshot.tmp.png")
            page.screenshot(path=str(tmp), full_page=True)
            os.replace(tmp, SCREENSHOT)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


def test_page_shows_a_clear_error_for_a_bad_file(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")

    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 20)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.set_input_files("#file", str(bad))
            page.click("#submit")
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "415" in page.text_content("#status") and page.is_hidden("#result")
        finally:
            browser.close()
