"""Videos as moments: slideshows of Flickr8k photos are indexed, found by a caption at the right moment, and
synced by the photos' rules (broken ones reported once, a changed one re-embedded alone, renames keep ids)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import FLICKR, ColorEncoder, make_photo, needs_flickr
from crossmodal.collection.collection import Collection
from crossmodal.collection.duplicates import find_duplicates
from crossmodal.collection.sync import IndexReport
from crossmodal.server.app import create_app
from crossmodal.sources.folders import iter_media
from crossmodal.sources.videos import VideoError, frame_at, sample, write_slideshow

HOLD = 2.0  # seconds each photo is shown: scene i spans [i * HOLD, (i + 1) * HOLD)
pytestmark = needs_flickr


def _test_photos(n: int) -> list[str]:
    names = (FLICKR / "splits" / "test.txt").read_text().split()
    return names[:n]


def _captions() -> dict[str, str]:
    """The first caption of each Flickr8k photo."""
    out: dict[str, str] = {}
    with open(FLICKR / "captions.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            out.setdefault(row["image"], row["caption"])
    return out


def _video(path: Path, names: list[str], hold: float = HOLD) -> Path:
    write_slideshow(path, [Image.open(FLICKR / "images" / n) for n in names], hold=hold, fps=2)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """Three 3-scene videos, one photo, a truncated video and a text file named .mp4."""
    folder = tmp_path_factory.mktemp("library")
    names = _test_photos(10)
    scenes = [names[0:3], names[3:6], names[6:9]]
    for i, group in enumerate(scenes):
        _video(folder / f"clip{i}.mp4", group)
    shutil.copy(FLICKR / "images" / names[9], folder / "photo.jpg")
    data = (folder / "clip0.mp4").read_bytes()
    (folder / "broken.mp4").write_bytes(data[: len(data) // 2])
    (folder / "notes.mp4").write_text("not a video at all\n")
    return folder, scenes


def test_sampling_covers_each_scene_and_refuses_bad_files(library: tuple[Path, list[list[str]]]) -> None:
    folder, _ = library
    moments = sample(str(folder / "clip0.mp4"))
    assert [m.t for m in moments] == [0.0, 2.0, 4.0]
    assert moments[-1].end == pytest.approx(6.0)
    assert frame_at(str(folder / "clip0.mp4"), 3.0).size == (160, 120)
    for bad in ("broken.mp4", "notes.mp4"):
        with pytest.raises(VideoError, match="video"):
            sample(str(folder / bad))
    assert {p.name for p in iter_media(folder)} >= {"clip0.mp4", "photo.jpg", "notes.mp4"}


@pytest.fixture(scope="module")
def indexed(library: tuple[Path, list[list[str]]], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Collection, IndexReport]:
    """The library indexed with the default model."""
    c = Collection.open(tmp_path_factory.mktemp("lite") / "col", model="lite")
    return c, c.index_folder(library[0], progress=False)


def test_caption_finds_the_video_and_the_moment(library: tuple[Path, list[list[str]]],
                                                indexed: tuple[Collection, IndexReport]) -> None:
    _, scenes = library
    c, report = indexed
    assert report.added == 4 and {Path(p).name for p, _ in report.failed} == {"broken.mp4", "notes.mp4"}
    captions = _captions()
    for video, scene in ((0, 0), (1, 1), (2, 2)):  # scenes whose first caption the lite model places first
        hits = c.search(captions[scenes[video][scene]], k=5, kind="video")
        best = hits[0]
        assert Path(best.path).name == f"clip{video}.mp4"
        assert scene * HOLD <= best.t < (scene + 1) * HOLD
        assert len({h.path for h in hits}) == len(hits) == 3  # each video once, photos left out
    assert [Path(h.path).name for h in c.search("a dog", kind="video", path="*/clip1.mp4")] == ["clip1.mp4"]
    mixed = c.search(captions[scenes[1][1]], k=10)
    assert sorted(Path(h.path).name for h in mixed) == ["clip0.mp4", "clip1.mp4", "clip2.mp4", "photo.jpg"]
    assert c.store.count("image") == 10 and c.info()["videos"].startswith("3 (9 moments")  # and the photo


def test_a_sharded_collection_finds_the_same_moments(library: tuple[Path, list[list[str]]],
                                                     indexed: tuple[Collection, IndexReport], tmp_path: Path) -> None:
    from crossmodal.collection.sharded import ShardedCollection

    c, _ = indexed
    captions, (_, scenes) = _captions(), library
    with ShardedCollection.create(tmp_path / "sharded", 2, model=c.encoder) as sharded:
        sharded.index_folder(library[0], progress=False)
        for query in (captions[scenes[0][0]], captions[scenes[2][2]]):
            for kind in ("video", "image"):
                mine, theirs = sharded.search(query, k=5, kind=kind), c.search(query, k=5, kind=kind)
                assert [(h.path, h.t) for h in mine] == [(h.path, h.t) for h in theirs]
                assert [h.score for h in mine] == pytest.approx([h.score for h in theirs], abs=1e-6)


def test_sync_rules_for_videos(library: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    source, _ = library
    folder = tmp_path / "videos"
    shutil.copytree(source, folder)
    make_photo(folder / "red.jpg", (200, 10, 10))
    encoder = ColorEncoder()
    c = Collection.open(tmp_path / "col", model=encoder)
    warned: list[str] = []
    first = c.index_folder(folder, progress=False, report=warned.append)
    assert first.added == 5 and len(first.failed) == 2
    assert sum("broken.mp4" in w for w in warned) == 1 and sum("notes.mp4" in w for w in warned) == 1
    ids = {p: [h.id for h in c.store.select("path LIKE ? ORDER BY id", (f"%{p}.mp4#t=%",))]
           for p in ("clip0", "clip1", "clip2")}

    encoded = encoder.images_encoded
    again = c.index_folder(folder, progress=False, report=warned.append)
    assert (again.unchanged, again.skipped_known_bad, again.failed) == (5, 2, [])
    assert encoder.images_encoded == encoded and len(warned) == 2  # broken files are not retried while unchanged

    _video(folder / "clip1.mp4", _test_photos(12)[9:12], hold=1.0)  # changed: 3 scenes of 1 s
    changed = c.index_folder(folder, progress=False)
    assert (changed.updated, changed.unchanged) == (1, 4)
    assert encoder.images_encoded - encoded == 3  # only the changed video's moments were embedded
    clip1 = sorted(c.store.select("path LIKE ?", ("%clip1.mp4#t=%",)), key=lambda it: it.fields["t"])
    assert len(ids["clip1"]) == 3 and [m.id for m in clip1] == ids["clip1"]  # the changed video's ids are kept
    assert [m.fields["t"] for m in clip1] == [0.0, 1.0, 2.0]

    os.rename(folder / "clip2.mp4", folder / "renamed.mp4")
    (folder / "clip0.mp4").unlink()
    moved = c.index_folder(folder, progress=False)
    assert (moved.moved, moved.removed) == (1, 1)
    renamed = c.store.select("path LIKE ?", ("%renamed.mp4#t=%",))
    assert sorted(m.id for m in renamed) == sorted(ids["clip2"])
    assert all(m.fields["video"] == str(folder / "renamed.mp4") for m in renamed)
    assert not c.store.select("path LIKE ?", ("%clip0.mp4#t=%",))
    assert encoder.images_encoded - encoded == 3
    shutil.copy(folder / "renamed.mp4", folder / "copy.mp4")
    copied = c.index_folder(folder, progress=False)
    assert copied.reused == 1 and encoder.images_encoded - encoded == 3  # a copy reuses its twin's vectors
    assert not find_duplicates(c, threshold=0.99, read_sizes=False)  # moments alike are not copies to clean up


def test_api_serves_moments_frames_and_the_video(library: tuple[Path, list[list[str]]],
                                                 indexed: tuple[Collection, IndexReport]) -> None:
    _, scenes = library
    c, _ = indexed
    query = _captions()[scenes[2][2]]
    with TestClient(create_app(c.folder)) as client:
        hits = client.post("/api/search", json={"text": query, "kind": "video", "k": 5}).json()["results"]
        best = hits[0]
        assert Path(best["path"]).name == "clip2.mp4" and 4.0 <= best["t"] < 6.0
        assert best["thumbnail"] == f"/api/items/{best['id']}/thumbnail"
        frame = client.get(best["thumbnail"])
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        part = client.get(f"/api/items/{best['id']}/video", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100 and part.headers["content-type"] == "video/mp4"
        like = client.get(f"/api/items/{best['id']}/similar", params={"k": 5, "kind": "video"}).json()["results"]
        assert like and all(h["t"] is not None for h in like)
        photo = client.post("/api/search", json={"text": query, "k": 10}).json()["results"]
        plain = next(h for h in photo if h["t"] is None)
        assert client.get(f"/api/items/{plain['id']}/video").status_code == 404
