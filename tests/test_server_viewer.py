"""The API the web page's viewer and upload search use: a stored photo's file (only the regular file that was
indexed; converted when browsers cannot show it), and an upload search that honours filters and diversity."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import SAMPLES
from crossmodal import Collection
from crossmodal.server.app import create_app

DOG = "1679557684_50a206e4a9.jpg"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("viewer")
    photos = root / "photos"
    shutil.copytree(SAMPLES / "photos", photos)
    Image.open(photos / DOG).save(photos / "dog.tiff")
    with Collection.open(root / "col") as c:
        c.index_folder(photos, progress=False)
        c.store.db.execute("UPDATE items SET fields = json_set(fields, '$.album', 'dogs') "
                           "WHERE path LIKE '%1679557684%'")
        c.store.db.commit()
    with TestClient(create_app(root / "col")) as client:
        yield client, root


def _id(client: TestClient, root: Path, name: str) -> int:
    hits = client.post("/api/search", json={"text": "a photo", "k": 50, "path": f"*/{name}"}).json()["results"]
    return hits[0]["id"]


def test_photo_serves_the_indexed_file_as_it_is(served) -> None:
    client, root = served
    item = _id(client, root, DOG)
    answer = client.get(f"/api/items/{item}/photo")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert answer.content == (root / "photos" / DOG).read_bytes()
    tiff = client.get(f"/api/items/{_id(client, root, 'dog.tiff')}/photo")  # browsers show no TIFF: a JPEG
    assert tiff.status_code == 200 and tiff.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(tiff.content)).format == "JPEG"
    assert client.get("/api/items/999999/photo").status_code == 404


def test_photo_refuses_a_file_changed_since_it_was_indexed(served, tmp_path: Path) -> None:
    client, root = served
    name = "1178705300_c224d9a4f1.jpg"
    item = _id(client, root, name)
    path = root / "photos" / name
    saved = path.read_bytes()
    path.unlink()
    os.symlink("/etc/passwd", path)  # a link swapped in after indexing is never followed to another file
    try:
        answer = client.get(f"/api/items/{item}/photo")
        assert answer.status_code == 410 and "root:" not in answer.text
    finally:
        path.unlink()
        path.write_bytes(saved)


def test_upload_search_honours_filters_and_diversity(served) -> None:
    client, root = served
    photo = (root / "photos" / "111497985_38e9f88856.jpg").read_bytes()
    upload = {"file": ("q.jpg", photo, "image/jpeg")}
    everything = client.post("/api/search/image", files=upload, data={"k": 10}).json()["results"]
    assert len(everything) == 10
    dogs = client.post("/api/search/image", files=upload, data={"k": 10, "where": ["album=dogs"]}).json()["results"]
    assert {h["path"].rsplit("/", 1)[-1] for h in dogs} == {DOG}
    both = client.post("/api/search/image", files=upload, data={"where": ["album=dogs", "size>1"], "path": "*.tiff"})
    assert both.status_code == 200 and both.json()["results"] == []
    bad = client.post("/api/search/image", files=upload, data={"where": ["nosuch=1"]})
    assert bad.status_code == 400 and "nosuch" in bad.json()["detail"]
    diverse = client.post("/api/search/image", files=upload, data={"k": 10, "diverse": 0.3}).json()["results"]
    assert len(diverse) == 10 and diverse[0]["id"] == everything[0]["id"]
    assert client.post("/api/search/image", files=upload, data={"diverse": 2}).status_code == 422
    text = client.post("/api/search", json={"text": "a dog", "k": 5, "diverse": 1}).json()["results"]
    assert [h["id"] for h in text] == [h["id"] for h in client.post("/api/search", json={"text": "a dog", "k": 5}
                                                                     ).json()["results"]]
