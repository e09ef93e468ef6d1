"""The search page with a video: its card shows the best moment's frame and time, and the viewer plays the video
from that moment (headless Chromium; skipped without it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from PIL import Image
from test_browser import SCREENSHOTS, browser, page, serving, wait_for_results  # noqa: F401 - fixtures

from conftest import SAMPLES
from crossmodal import Collection
from crossmodal.sources.videos import write_slideshow

DOG = "1679557684_50a206e4a9.jpg"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Four sample photos, and a VP9 video (Chromium plays it) whose second scene, from 2 s, is the dog photo."""
    root = tmp_path_factory.mktemp("browser-videos")
    photos = sorted(p for p in (SAMPLES / "photos").iterdir() if p.name != DOG)[:5]
    for p in photos[:4]:
        shutil.copy(p, root / p.name)
    scenes = [Image.open(photos[4]), Image.open(SAMPLES / "photos" / DOG)]
    write_slideshow(root / "walk.webm", scenes, hold=2.0, fps=4, size=(320, 240), codec="libvpx-vp9")
    with Collection.open(root / "col") as c:
        c.index_folder(root, progress=False)
    with serving(root / "col") as url:
        yield url


def test_a_video_card_shows_its_moment_and_the_viewer_plays_from_there(page) -> None:  # noqa: F811 - fixture
    page.goto(f"{page.url.split('?')[0]}?q=a+dog&kind=video")
    wait_for_results(page, 1)
    assert page.input_value("#kind") == "video"
    assert page.locator(".card").count() == 1  # one video, once, at its best moment
    moment = page.inner_text(".card .moment")
    assert moment.endswith("0:02")
    page.locator(".card").first.click()
    page.wait_for_selector("#viewer-video:not([hidden])")
    assert page.is_hidden("#viewer-img") and page.inner_text("#viewer-name") == "walk.webm at 0:02"
    assert "/video#t=2" in page.get_attribute("#viewer-video", "src")
    page.wait_for_function("() => document.querySelector('#viewer-video').readyState >= 1 && "
                           "document.querySelector('#viewer-video').currentTime >= 1.9")
    page.screenshot(path=str(SCREENSHOTS / "video-viewer.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")
    assert page.get_attribute("#viewer-video", "src") is None
