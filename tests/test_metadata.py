"""Photo metadata as fields: EXIF date, camera, lens, orientation and GPS, XMP keywords and title, a place
name from coordinates; merged into stored fields (the user's win) and filled in for photos stored before."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from conftest import ColorEncoder
from crossmodal import Collection
from crossmodal.sources.metadata import exif_date, read_metadata
from crossmodal.sources.places import place_of

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>beach</rdf:li>'
       b'<rdf:li>dog</rdf:li></rdf:Bag></dc:subject><dc:title><rdf:Alt><rdf:li xml:lang="x-default">Rex at the sea'
       b'</rdf:li></rdf:Alt></dc:title></rdf:Description></rdf:RDF></x:xmpmeta>')


def exif_photo(path: Path, color: tuple[int, int, int] = (200, 30, 30), taken: str | None = "2023:06:14 10:22:00",
               gps: tuple[float, float] | None = (48.8566, 2.3522), camera: str = "EOS 5D", xmp: bytes | None = None
               ) -> Path:
    """A small JPEG whose EXIF (and XMP) the test writes itself."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", camera, 6
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    if taken:
        sub[0x9003] = taken
    sub[0xA434] = "EF 24-70mm f/2.8L"
    if gps:
        ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
        for (ref_tag, tag), value, refs in (((1, 2), gps[0], "NS"), ((3, 4), gps[1], "EW")):
            degrees = abs(value)
            minutes = (degrees % 1) * 60
            ifd[ref_tag] = refs[value < 0]
            ifd[tag] = (float(int(degrees)), float(int(minutes)), round((minutes % 1) * 60, 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((24, 32, 3), color, dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG", exif=exif, **({"xmp": xmp} if xmp else {}))
    return path


def test_exif_date_camera_lens_orientation_and_gps(tmp_path: Path) -> None:
    fields = read_metadata(exif_photo(tmp_path / "a.jpg", gps=(-33.8688, 151.2093)))
    assert fields["taken"] == "2023-06-14T10:22:00"
    assert (fields["make"], fields["camera"], fields["lens"], fields["orientation"]) == (
        "Canon", "EOS 5D", "EF 24-70mm f/2.8L", 6)
    assert abs(fields["lat"] + 33.8688) < 1e-4 and abs(fields["lon"] - 151.2093) < 1e-4
    assert fields["country"] == "Australia" and fields["region"] == "New South Wales"
    bare = read_metadata(exif_photo(tmp_path / "b.jpg", taken=None, gps=None))
    assert "taken" not in bare and "lat" not in bare and bare["camera"] == "EOS 5D"
    assert read_metadata(b"not a photo") == {}


def test_xmp_keywords_and_title(tmp_path: Path) -> None:
    fields = read_metadata(exif_photo(tmp_path / "x.jpg", xmp=XMP).read_bytes())
    assert fields["keywords"] == "beach, dog" and fields["title"] == "Rex at the sea"


def iptc_jpeg(records: list[tuple[int, str]]) -> bytes:
    """A small JPEG with an IPTC block (Photoshop APP13, resource 0x0404) of (dataset, text) records."""
    data = b"".join(bytes([0x1C, 2, dataset]) + struct.pack(">H", len(text.encode())) + text.encode()
                    for dataset, text in records)
    block = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(data)) + data
    payload = b"Photoshop 3.0\x00" + block + b"\x00" * (len(data) % 2)
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(out, "JPEG")
    return out.getvalue()[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + out.getvalue()[2:]


def test_iptc_title_keywords_and_place() -> None:
    fields = read_metadata(iptc_jpeg([(5, "Harbour at dawn"), (25, "boat"), (25, "sea"), (90, "Brest"),
                                      (101, "France")]))
    assert fields == {"title": "Harbour at dawn", "keywords": "boat, sea", "city": "Brest", "country": "France"}


def test_place_name_from_coordinates() -> None:
    assert place_of(48.8566, 2.3522) == {"city": "Paris", "region": "Île-de-France", "country": "France"}
    assert place_of(0.0, -30.0) == {}  # mid-Atlantic: no town within reach, so no name rather than a wrong one


def test_exif_dates() -> None:
    assert exif_date("2021:12:31 23:59:58") == "2021-12-31T23:59:58"
    assert exif_date(b"2021:12:31 23:59:58\x00") == "2021-12-31T23:59:58"
    assert exif_date("0000:00:00 00:00:00") is None and exif_date("2021:13:40 00:00:00") is None
    assert exif_date(None) is None and exif_date("yesterday") is None


def test_indexing_stores_metadata_fields_and_user_fields_win(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    exif_photo(folder / "paris.jpg")
    exif_photo(folder / "old.jpg", color=(20, 200, 20), taken="2019:01:02 03:04:05", gps=None, camera="EOS 7D")
    with Collection.open(tmp_path / "c", model=ColorEncoder()) as c:
        c.index_folder(folder, fields={"camera": "mine"}, progress=False)
        by_name = {Path(it.path).name: it.fields for it in c.store.select("kind = 'image'")}
    assert by_name["paris.jpg"]["taken"] == "2023-06-14T10:22:00" and by_name["paris.jpg"]["city"] == "Paris"
    assert by_name["paris.jpg"]["camera"] == "mine" and by_name["old.jpg"]["camera"] == "mine"
    assert by_name["old.jpg"]["taken"] == "2019-01-02T03:04:05" and "lat" not in by_name["old.jpg"]


def test_a_changed_photo_gets_its_new_metadata_and_keeps_user_fields(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photo = exif_photo(folder / "p.jpg")
    with Collection.open(tmp_path / "c", model=ColorEncoder()) as c:
        c.index_folder(folder, fields={"album": "trip"}, progress=False)
        exif_photo(photo, color=(10, 10, 200), taken="2024:02:03 04:05:06", gps=None, camera="R5")
        c.index_folder(folder, progress=False)
        (item,) = c.store.select("kind = 'image'")
    assert item.fields["taken"] == "2024-02-03T04:05:06" and item.fields["camera"] == "R5"
    assert item.fields["album"] == "trip" and "lat" not in item.fields and "city" not in item.fields


def test_photos_stored_before_get_their_metadata_without_encoding_again(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    exif_photo(folder / "p.jpg")
    encoder = ColorEncoder()
    with Collection.open(tmp_path / "c", model=encoder) as c:
        c.index_folder(folder, fields={"album": "trip"}, progress=False)
        # as a collection indexed before metadata was read looks
        c.store.db.execute("DROP TABLE photo_meta")
        c.store.db.execute("UPDATE items SET fields = ?", (json.dumps({"album": "trip"}),))
        encoded = encoder.images_encoded
        report = c.index_folder(folder, progress=False)
        (item,) = c.store.select("kind = 'image'")
    assert report.unchanged == 1 and encoder.images_encoded == encoded
    assert item.fields["album"] == "trip" and item.fields["taken"] == "2023-06-14T10:22:00"


@pytest.fixture
def paris_and_london(tmp_path: Path) -> Iterator[Collection]:
    """A collection of two photos: Paris, June 2023, and London, January 2019."""
    folder = tmp_path / "photos"
    exif_photo(folder / "paris.jpg")
    exif_photo(folder / "london.jpg", color=(20, 200, 20), taken="2019:01:02 03:04:05", gps=(51.5072, -0.1276))
    with Collection.open(tmp_path / "c", model=ColorEncoder()) as c:
        c.index_folder(folder, progress=False)
        yield c


def test_where_filters_on_photo_dates_and_places(paris_and_london: Collection) -> None:
    def names(*where: str) -> set[str]:
        return {Path(h.path).name for h in paris_and_london.search("photo", k=10, where=list(where))}

    assert names("taken>=2023-06") == {"paris.jpg"} and names("taken<=2019") == {"london.jpg"}
    assert names("country=France") == {"paris.jpg"} and names("near=51.5,-0.12,10") == {"london.jpg"}
    assert names("camera=EOS 5D", "taken=2023-06-14") == {"paris.jpg"}


def test_dates_and_places_in_query_words_become_filters(paris_and_london: Collection) -> None:
    c = paris_and_london
    u = c.understand("dog beach 2023 france")
    assert u.text == "dog beach" and [(n["words"], n["field"], n["as"]) for n in u.notes] == [
        ("2023", "taken", "filter"), ("france", "country", "filter")]
    assert [Path(h.path).name for h in c.search(u.text, where=u.conditions)] == ["paris.jpg"]
    none = c.understand("party 2021 in London")  # nothing taken in 2021: the year stays a word
    assert none.text == "party 2021 in" and none.notes[0]["as"] == "ignored" and len(none.conditions) == 1
    assert c.understand("a london bus").conditions == []  # a city only as written with a capital
    assert c.understand("2023").conditions == []  # nothing left to search for: read as words


def test_the_api_and_the_command_line_say_what_they_read(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from crossmodal.cli import app
    from crossmodal.server.app import create_app

    folder = tmp_path / "photos"
    exif_photo(folder / "paris.jpg")
    exif_photo(folder / "old.jpg", color=(20, 200, 20), taken="2019:01:02 03:04:05", gps=None)
    col = str(tmp_path / "c")
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(folder), "--collection", col, "-q"]).exit_code == 0
    cli = runner.invoke(app, ["search", "a red photo 2019", "--collection", col])
    assert cli.exit_code == 0 and "old.jpg" in cli.stdout and "paris.jpg" not in cli.stdout
    assert "'2019': taken 2019 (filter)" in cli.stderr
    literal = runner.invoke(app, ["search", "a red photo 2019", "--collection", col, "--literal"])
    assert "paris.jpg" in literal.stdout and "old.jpg" in literal.stdout
    with TestClient(create_app(col)) as client:
        got = client.post("/api/search", json={"text": "a red photo in 2023 France"}).json()
        assert [Path(h["path"]).name for h in got["results"]] == ["paris.jpg"]
        assert [(u["words"], u["field"], u["value"], u["as"]) for u in got["understood"]] == [
            ("2023", "taken", "2023", "filter"), ("France", "country", "France", "filter")]
        plain = client.post("/api/search", json={"text": "a red photo 2023", "understand": False}).json()
        assert len(plain["results"]) == 2 and plain["understood"] == []
