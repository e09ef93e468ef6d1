"""The search page in headless Chromium: searching, the address keeping the query (Back and Forward), the photo
viewer with its keys, an upload search with a filter, the duplicates view, and the phone layout. Screenshots go
to $CROSSMODAL_SCREENSHOTS (default test-artifacts/)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from conftest import ROOT, SAMPLES
from crossmodal import Collection

SCREENSHOTS = Path(os.environ.get("CROSSMODAL_SCREENSHOTS", ROOT / "test-artifacts"))
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (scripts/install-test-browser.sh installs it)")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOG = "1679557684_50a206e4a9.jpg"


# Predicates are functions: Playwright evaluates a bare expression with eval, which the page's CSP refuses.


def search_and_wait(page, query: str, thumbnails: int) -> None:
    """Type a query, submit it, and wait until the first thumbnails have loaded."""
    page.fill("#q", query)
    page.press("#q", "Enter")
    wait_for_results(page, thumbnails)


def wait_for_results(page, thumbnails: int, first: int = 1) -> None:
    page.wait_for_function(f"() => document.querySelector('#status').textContent.startsWith('Results {first}–')")
    page.wait_for_function(f"() => [...document.querySelectorAll('.card img')].slice(0, {thumbnails})"
                           ".every(i => i.complete && i.naturalWidth > 0)")


def names(page) -> list[str]:
    return page.eval_on_selector_all(".card .name", "nodes => nodes.map(n => n.textContent)")


def query_of(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The sample photos, and in a folder of their own (album "extra") an exact copy and a smaller copy of one."""
    root = tmp_path_factory.mktemp("browser")
    extra = root / "extra"
    extra.mkdir()
    shutil.copy(SAMPLES / "photos" / DOG, extra / "dog-copy.jpg")
    with Image.open(SAMPLES / "photos" / DOG) as im:
        im.resize((180, 180), Image.LANCZOS).save(extra / "dog-small.jpg", quality=90)
    with Collection.open(root / "col") as c:
        c.index_folder(SAMPLES / "photos", progress=False)
        c.index_folder(extra, progress=False, fields={"album": "extra"})
    with serving(root / "col") as url:
        yield url


@contextmanager
def serving(collection: Path) -> Iterator[str]:
    """The server of ``collection`` on a free local port, in a thread, for as long as the block runs; its URL."""
    import uvicorn

    from crossmodal.server.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(collection), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: str):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text else None)
    page.goto(server)
    yield page
    page.close()
    assert not errors, errors  # no script error, no refused resource (CSP), no failed request but a bad query


def test_search_viewer_and_more_like_this(page) -> None:
    search_and_wait(page, "a dog running on the grass", 4)
    cards = page.locator(".card")
    assert cards.count() == 24
    first_name = names(page)[0]
    assert cards.first.get_attribute("title") == first_name  # the file name on hover
    page.screenshot(path=str(SCREENSHOTS / "search-results.png"))

    cards.first.click()
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_function("() => document.querySelector('#viewer-img').complete && "
                           "document.querySelector('#viewer-img').naturalWidth > 0")
    assert page.inner_text("#viewer-name") == first_name and page.inner_text("#viewer-path").endswith(first_name)
    page.screenshot(path=str(SCREENSHOTS / "viewer.png"))
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => document.querySelector('#viewer-name').textContent === {names(page)[1]!r}")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"() => document.querySelector('#viewer-name').textContent === {first_name!r}")
    assert page.is_disabled("#viewer-prev")
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")

    cards.first.click()
    page.click("#viewer-similar")
    page.wait_for_selector("#viewer", state="hidden")
    page.wait_for_function(f"() => document.querySelector('#query-card').textContent === 'More like {first_name}'")
    assert "like" in query_of(page) and page.input_value("#q") == ""  # a new kind of search clears the old query
    wait_for_results(page, 4)
    assert first_name not in names(page)[:5]  # the photo is not its own neighbour
    page.screenshot(path=str(SCREENSHOTS / "more-like-this.png"))


def test_the_address_keeps_the_search(page, server: str) -> None:
    search_and_wait(page, "a dog in the snow", 2)
    dogs = names(page)
    search_and_wait(page, "people on a beach", 2)
    beach = names(page)
    assert query_of(page)["q"] == ["people on a beach"]
    page.click("#next")
    wait_for_results(page, 2, first=25)
    assert query_of(page)["page"] == ["2"]

    page.go_back()
    wait_for_results(page, 2)
    assert names(page) == beach and "page" not in query_of(page)
    page.go_back()
    page.wait_for_function("() => document.querySelector('#q').value === 'a dog in the snow'")
    wait_for_results(page, 2)
    assert names(page) == dogs
    page.go_forward()
    page.wait_for_function("() => document.querySelector('#q').value === 'people on a beach'")
    wait_for_results(page, 2)
    assert names(page) == beach
    assert page.evaluate("window.scrollY") == 0

    page.goto(f"{server}/?q=children+playing&k=12&page=2")  # a bookmark or a shared link
    wait_for_results(page, 2, first=13)
    assert page.input_value("#q") == "children playing" and page.input_value("#k") == "12"
    assert page.locator(".card").count() == 12

    page.click("#filters summary")
    page.fill("#where", "nosuch=1")  # an error replaces the results it would leave standing
    page.press("#where", "Enter")
    page.wait_for_selector("#status.error")
    assert "nosuch" in page.inner_text("#status") and page.locator(".card").count() == 0
    assert page.is_hidden("#pager")


def test_the_both_towers_box_ranks_as_the_api_does(page, server: str) -> None:
    """The box sends an English query through both text towers (the API's ``both_towers``), the address keeps
    it, and unticked the page ranks as before."""
    import httpx

    query = "a dog running through the grass"

    def api(both: bool) -> list[str]:
        answer = httpx.post(f"{server}/api/search", json={"text": query, "k": 24, "both_towers": both}, timeout=60)
        return [Path(h["path"]).name for h in answer.json()["results"]]

    one, both = api(False), api(True)
    assert one != both  # the sample photos rank a little differently read by both towers
    search_and_wait(page, query, 2)
    assert names(page) == one
    page.click("#filters summary")
    page.check("#both")
    wait_for_results(page, 2)
    assert query_of(page)["both"] == ["1"] and names(page) == both
    page.reload()  # a bookmark keeps it
    wait_for_results(page, 2)
    assert page.is_checked("#both") and names(page) == both
    page.uncheck("#both")
    wait_for_results(page, 2)
    assert "both" not in query_of(page) and names(page) == one


def test_upload_search_honours_the_filters(page) -> None:
    search_and_wait(page, "a dog", 2)
    page.click("#filters summary")
    page.fill("#where", "album=extra")
    page.press("#where", "Enter")
    wait_for_results(page, 2)
    page.set_input_files("#file", str(SAMPLES / "photos" / DOG))
    page.wait_for_function("() => document.querySelector('#query-card').textContent.startsWith('Photos like')")
    wait_for_results(page, 2)
    # Only the album, though other photos look alike; its exact copy of the query photo is the query, left out.
    assert names(page) == ["dog-small.jpg"]
    params = query_of(page)
    assert params["where"] == ["album=extra"] and "photo" in params and "q" not in params
    assert page.input_value("#q") == ""  # the old text query went with the old kind of search
    page.screenshot(path=str(SCREENSHOTS / "upload-filtered.png"))


def test_duplicates_view(page) -> None:
    page.click("#duplicates-link")
    page.wait_for_selector(".group .tile img")
    assert query_of(page)["view"] == ["duplicates"]
    group = page.locator(".group").filter(has=page.locator("img[alt='dog-copy.jpg']"))
    assert sorted(group.locator(".tile .name").all_inner_texts()) == sorted(["dog-copy.jpg", "dog-small.jpg", DOG])
    assert "exact copy" in group.inner_text() and "180×180" in group.inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('.tile img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(SCREENSHOTS / "duplicates.png"))

    group.locator("img[alt='dog-small.jpg']").click()  # reviewed in the viewer
    page.wait_for_selector("#viewer:not([hidden])")
    assert page.inner_text("#viewer-name") == "dog-small.jpg"
    page.keyboard.press("Escape")
    page.once("dialog", lambda dialog: dialog.accept())
    group.locator(".tile", has=page.locator("img[alt='dog-small.jpg']")).locator(".remove").click()
    page.wait_for_function("() => document.querySelector('#status').textContent === 'Removed dog-small.jpg.'")
    assert group.locator(".tile").count() == 2

    page.fill("#threshold", "0.999")  # only exact copies are that close
    page.click("#duplicates-form button")
    page.wait_for_function("() => new URLSearchParams(location.search).get('threshold') === '0.999'")
    page.wait_for_selector(".group .tile img")
    assert page.locator(".group").count() == 1 and page.locator(".tile").count() == 2


def test_phone_layout(browser, server: str) -> None:
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    phone.goto(server)
    room = phone.evaluate("""() => {
        const q = document.querySelector('#q'), style = getComputedStyle(q);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = `${style.fontSize} ${style.fontFamily}`;
        const inner = q.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return [ctx.measureText(q.placeholder).width, inner];
    }""")
    assert room[0] <= room[1], f"the placeholder needs {room[0]:.0f} px, the field has {room[1]:.0f}"
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    phone.screenshot(path=str(SCREENSHOTS / "home-phone.png"))
    phone.click("#filters summary")
    bar = phone.locator("header").bounding_box()
    assert bar["height"] < 300, bar  # the open filter bar stays compact
    search_and_wait(phone, "children playing in the water", 6)
    phone.screenshot(path=str(SCREENSHOTS / "search-phone.png"))
    phone.locator(".card").first.click()
    phone.wait_for_function("() => document.querySelector('#viewer-img').complete && "
                            "document.querySelector('#viewer-img').naturalWidth > 0")
    phone.screenshot(path=str(SCREENSHOTS / "viewer-phone.png"))
    phone.close()
