"""The search page shows each photo's date and place under it, and what was read from the query's words
(headless Chromium; skipped without it)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from test_metadata import exif_photo

from crossmodal import Collection

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (scripts/install-test-browser.sh installs it)")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def test_cards_show_date_and_place_and_the_status_what_was_read(tmp_path: Path) -> None:
    import uvicorn

    from crossmodal.server.app import create_app

    exif_photo(tmp_path / "photos" / "paris.jpg")
    exif_photo(tmp_path / "photos" / "old.jpg", color=(20, 200, 20), taken="2019:01:02 03:04:05", gps=None)
    with Collection.open(tmp_path / "col") as c:
        c.index_folder(tmp_path / "photos", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tmp_path / "col"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}")
            page.fill("#q", "a red photo")
            page.press("#q", "Enter")
            page.wait_for_function("() => document.querySelectorAll('.card').length === 2")
            about = page.eval_on_selector_all(".card .about", "nodes => nodes.map(n => n.textContent)")
            assert sorted(about) == ["2019-01-02", "2023-06-14 · Paris, France"]
            page.fill("#q", "a red photo 2023")
            page.press("#q", "Enter")
            page.wait_for_function("() => document.querySelector('#status').textContent.includes('read:')")
            assert "2023 → taken 2023 (filter)" in page.text_content("#status")
            assert page.eval_on_selector_all(".card", "nodes => nodes.length") == 1
            browser.close()
            assert not errors, errors
    finally:
        server.should_exit = True
        thread.join(timeout=10)
