"""Keyword search (BM25, SQLite FTS5): file names, folders, texts and fields; exact phrases; the keyword
table stays in step with the items through renames, re-fielding and deletes; old collections get it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.collection import keywords
from crossmodal.collection.store import ItemStore


def found(c: Collection, query: str, kind: str = "image") -> list[str]:
    _, ids = keywords.search(c.store.db, query, kind, 10)
    items = c.store.get(ids)
    return [Path(items[int(i)].path).name if kind == "image" else items[int(i)].text for i in ids]


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    folder = tmp_path / "photos"
    make_photo(folder / "IMG_2023_eiffel-tower.jpg", (200, 10, 10))
    make_photo(folder / "holiday" / "beach_dogs.jpg", (10, 200, 10))
    make_photo(folder / "holiday" / "sunset.png", (10, 10, 200))
    c = Collection.open(tmp_path / "c", model=ColorEncoder())
    c.index_folder(folder, fields={"album": "Summer in Brittany"}, progress=False)
    c.add_texts(["a red car parked by the road", "the car is red, the road is long", "two dogs on the beach"])
    yield c
    c.close()


def test_bm25_finds_file_names_folders_and_fields(collection: Collection) -> None:
    assert found(collection, "eiffel") == ["IMG_2023_eiffel-tower.jpg"]
    assert found(collection, "img_2023") == ["IMG_2023_eiffel-tower.jpg"]
    assert set(found(collection, "holiday")) == {"beach_dogs.jpg", "sunset.png"}
    assert found(collection, "dog")[0] == "beach_dogs.jpg"  # stemmed: "dogs" in the name
    assert len(found(collection, "brittany")) == 3  # a field's words
    assert found(collection, "the") == [] and found(collection, "   ") == []


def test_a_word_half_the_items_hold_is_left_out_when_others_remain(collection: Collection) -> None:
    db = collection.store.db
    assert db.execute("SELECT count(*) FROM keywords").fetchone()[0] == 6  # "brittany": the 3 photos' field
    with_it = db.execute("SELECT rowid, -bm25(keywords, 0, 2, 1, 1, 2) FROM keywords WHERE keywords MATCH "
                         "'\"brittany\" OR \"eiffel\"' ORDER BY 2 DESC").fetchall()
    assert len(with_it) == 3 and max(score for _, score in with_it[1:]) < 1e-5  # BM25 gives it no weight
    for generation in (None, collection.store.generation):
        scores, ids = keywords.search(db, "brittany eiffel", "image", 10, generation=generation)
        assert ids.tolist() == [with_it[0][0]] and abs(float(scores[0]) - with_it[0][1]) < 1e-5
    assert len(found(collection, "brittany")) == 3  # the only word: kept


def test_an_exact_phrase_must_appear_as_written(collection: Collection) -> None:
    assert found(collection, '"red car"', "text") == ["a red car parked by the road"]
    assert set(found(collection, "red car", "text")) == {"a red car parked by the road",
                                                         "the car is red, the road is long"}
    assert found(collection, '"car red"', "text") == []
    assert found(collection, '"red car" road', "text") == ["a red car parked by the road"]
    assert keywords.match_expression('x" OR y NEAR(') == '"x" OR "y" OR "near"'  # no FTS syntax gets through


def test_keywords_stay_in_step_after_rename_refield_and_delete(collection: Collection, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "holiday" / "sunset.png").rename(folder / "holiday" / "dusk.png")
    collection.index_folder(folder, progress=False)
    assert found(collection, "dusk") == ["dusk.png"] and found(collection, "sunset") == []
    collection.index_folder(folder, fields={"album": "Normandy"}, progress=False)
    assert len(found(collection, "normandy")) == 3 and found(collection, "brittany") == []
    (folder / "holiday" / "beach_dogs.jpg").unlink()
    collection.index_folder(folder, progress=False)
    assert found(collection, "beach") == []
    ids = collection.store.ids_where("kind = 'text'")
    collection.remove(ids[:1])
    assert found(collection, '"red car"', "text") == []
    rows = collection.store.db.execute("SELECT COUNT(*) FROM keywords").fetchone()[0]
    assert rows == collection.store.count()


def test_an_old_collection_gets_its_keyword_table_when_opened(collection: Collection) -> None:
    db = collection.store.db
    for statement in keywords.DROP:
        db.execute(statement)
    db.execute("DELETE FROM meta WHERE key = 'keywords'")
    with pytest.raises(keywords.NoKeywordIndex):
        keywords.search(db, "eiffel", "image", 5)
    store = ItemStore(collection.folder, collection.manifest.dim)
    try:
        assert keywords.search(store.db, "eiffel", "image", 5)[1].size == 1
    finally:
        store.close()
