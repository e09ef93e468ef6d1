"""The search page in headless Chromium: type a query, see thumbnails, click one, see similar photos."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from conftest import ROOT, SAMPLES
from crossmodal import Collection

SCREENSHOTS = ROOT / "test-artifacts"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (scripts/install-test-browser.sh installs it)")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def search_and_wait(page, query: str, thumbnails: int) -> None:
    """Type a query, submit it, and wait until the first thumbnails have loaded."""
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_selector(".card img")
    page.wait_for_function(f"[...document.querySelectorAll('.card img')].slice(0, {thumbnails})"
                           ".every(i => i.complete && i.naturalWidth > 0)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import uvicorn

    from crossmodal.server.app import create_app

    root = tmp_path_factory.mktemp("browser")
    with Collection.open(root / "col") as c:
        c.index_folder(SAMPLES / "photos", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(root / "col"), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_search_click_and_more_like_this(server: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server)
        search_and_wait(page, "a dog running on the grass", 4)
        cards = page.locator(".card")
        assert cards.count() == 24
        assert "Results 1–24" in page.inner_text("#status")
        first_name = page.inner_text(".card .name")
        page.screenshot(path=str(SCREENSHOTS / "search-results.png"))

        cards.first.click()
        page.wait_for_selector("#query-card:not([hidden])")
        assert "More like #" in page.inner_text("#query-card")
        page.wait_for_function(f"!document.querySelector('.card .name') || "
                               f"document.querySelector('.card .name').textContent !== {first_name!r}")
        similar = [page.locator(".card .name").nth(i).inner_text() for i in range(5)]
        assert first_name not in similar  # the clicked photo is not its own neighbour
        page.screenshot(path=str(SCREENSHOTS / "more-like-this.png"))

        page.click("#next")
        page.wait_for_function("document.querySelector('#status').textContent.includes('Results 25')")
        mobile = browser.new_page(viewport={"width": 390, "height": 844})
        mobile.goto(server)
        search_and_wait(mobile, "children playing in the water", 6)
        mobile.screenshot(path=str(SCREENSHOTS / "search-phone.png"))
        browser.close()
    assert (SCREENSHOTS / "search-results.png").stat().st_size > 10_000
