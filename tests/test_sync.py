"""Index runs: incremental updates, renames, duplicates, bad files, interruption and resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.collection.manifest import ModelMismatchError
from crossmodal.collection.store import NewItem


def _ids_by_name(c: Collection) -> dict[str, int]:
    return {Path(it.path).name: it.id for it in c.store.select("kind = 'image'")}


def test_first_run_indexes_photos_and_skips_hidden_and_junk(tmp_path: Path, photos: Path,
                                                            encoder: ColorEncoder) -> None:
    c = Collection.open(tmp_path / "col", model=encoder)
    report = c.index_folder(photos, progress=False)
    assert report.added == 10 and not report.failed
    assert sorted(_ids_by_name(c)) == [f"p{i}.jpg" for i in range(10)]
    assert encoder.images_encoded == 10
    item = c.store.select("kind = 'image' LIMIT 1")[0]
    assert item.size == os.path.getsize(item.path) and item.mtime == os.stat(item.path).st_mtime
    assert len(item.hash) == 32


def test_second_run_reads_nothing_and_changes_nothing(tmp_path: Path, photos: Path, encoder: ColorEncoder) -> None:
    c = Collection.open(tmp_path / "col", model=encoder)
    c.index_folder(photos, progress=False)
    ids = _ids_by_name(c)
    report = c.index_folder(photos, progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, 10)
    assert encoder.images_encoded == 10
    assert _ids_by_name(c) == ids


def test_modify_delete_rename_duplicate_touch(tmp_path: Path, photos: Path, encoder: ColorEncoder) -> None:
    c = Collection.open(tmp_path / "col", model=encoder)
    c.index_folder(photos, progress=False)
    ids = _ids_by_name(c)
    before = {name: c.store.vector(i) for name, i in ids.items()}

    make_photo(photos / "a" / "p0.jpg", (0, 0, 0), noise=3)                     # modified content
    (photos / "a" / "p1.jpg").unlink()                                           # deleted
    (photos / "b" / "p5.jpg").rename(photos / "b" / "renamed.jpg")               # renamed
    shutil.copy(photos / "b" / "p6.jpg", photos / "a" / "copy-of-p6.jpg")        # duplicated
    os.utime(photos / "b" / "p7.jpg", (1_000_000, 1_000_000))                     # touched only
    make_photo(photos / "b" / "new.png", (90, 10, 160))                          # new

    report = c.index_folder(photos, progress=False)
    after = _ids_by_name(c)
    assert report.updated == 1 and report.removed == 1 and report.moved == 1 and report.reused == 1
    assert report.added == 1
    assert encoder.images_encoded == 10 + 2  # only the modified and the new photo were encoded
    assert after["p0.jpg"] == ids["p0.jpg"]
    assert not np.allclose(c.store.vector(after["p0.jpg"]), before["p0.jpg"])
    assert "p1.jpg" not in after and ids["p1.jpg"] not in c.store.get([ids["p1.jpg"]])
    assert after["renamed.jpg"] == ids["p5.jpg"] and "p5.jpg" not in after
    assert after["copy-of-p6.jpg"] != ids["p6.jpg"]
    assert np.allclose(c.store.vector(after["copy-of-p6.jpg"]), before["p6.jpg"])
    assert after["p7.jpg"] == ids["p7.jpg"]
    assert c.store.get([ids["p7.jpg"]])[ids["p7.jpg"]].mtime == 1_000_000
    assert len(after) == 11


def test_interrupted_run_resumes_without_redoing_work(tmp_path: Path, photos: Path) -> None:
    crashing = ColorEncoder(fail_after=1)  # first batch of 4 lands, the second raises KeyboardInterrupt
    c = Collection.open(tmp_path / "col", model=crashing)
    with pytest.raises(KeyboardInterrupt):
        c.index_folder(photos, progress=False)
    assert c.store.count("image") == 4
    c.close()

    resumed = ColorEncoder()
    c = Collection.open(tmp_path / "col", model=resumed)
    report = c.index_folder(photos, progress=False)
    assert report.unchanged == 4 and report.added == 6 and report.removed == 0
    assert resumed.images_encoded == 6
    assert c.store.count("image") == 10


def test_bad_files_are_reported_once_and_good_ones_indexed(tmp_path: Path, encoder: ColorEncoder) -> None:
    root = tmp_path / "mixed"
    make_photo(root / "good1.jpg", (200, 0, 0))
    make_photo(root / "good2.png", (0, 200, 0))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage " * 50)
    (root / "zero.jpg").write_bytes(b"")
    full = (root / "good1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    Image.new("L", (10_000, 10_000)).save(root / "huge.png")  # 100 megapixels
    lines: list[str] = []
    c = Collection.open(tmp_path / "col", model=encoder)
    report = c.index_folder(root, progress=False, report=lines.append)
    assert report.added == 2
    failed = dict((Path(p).name, why) for p, why in report.failed)
    assert set(failed) == {"corrupt.jpg", "zero.jpg", "truncated.jpg", "huge.png"}
    assert "empty" in failed["zero.jpg"] and "megapixels" in failed["huge.png"]
    assert "cannot decode" in failed["truncated.jpg"]
    assert len(lines) == 4 and all(line.startswith("skipped ") for line in lines)
    assert len(c.store.failures()) == 4

    lines.clear()
    again = c.index_folder(root, progress=False, report=lines.append)
    assert again.skipped_known_bad == 4 and not again.failed and not lines

    make_photo(root / "zero.jpg", (0, 0, 200))  # fixed file is picked up next run
    third = c.index_folder(root, progress=False, report=lines.append)
    assert third.added == 1 and len(c.store.failures()) == 3


def test_a_stored_photo_that_becomes_corrupt_is_dropped(tmp_path: Path, photos: Path, encoder: ColorEncoder) -> None:
    c = Collection.open(tmp_path / "col", model=encoder)
    c.index_folder(photos, progress=False)
    (photos / "a" / "p2.jpg").write_bytes(b"broken")
    report = c.index_folder(photos, progress=False, report=lambda _: None)
    assert len(report.failed) == 1 and c.store.count("image") == 9


def test_model_mismatch_is_refused(tmp_path: Path, photos: Path) -> None:
    c = Collection.open(tmp_path / "col", model=ColorEncoder("model-a"))
    c.index_folder(photos, progress=False)
    c.close()
    with pytest.raises(ModelMismatchError, match="model-a"):
        Collection.open(tmp_path / "col", model=ColorEncoder("model-b"))
    reopened = Collection.open(tmp_path / "col", model=ColorEncoder("model-a"))
    with pytest.raises(ModelMismatchError):
        reopened.search_vector(np.ones(8, dtype=np.float32))


def test_failed_transaction_changes_nothing(tmp_path: Path, photos: Path, encoder: ColorEncoder) -> None:
    c = Collection.open(tmp_path / "col", model=encoder)
    c.index_folder(photos, progress=False)
    generation = c.store.generation
    good = NewItem(kind="image", vector=np.ones(encoder.dim), hash="x", path="/x.jpg")
    bad = NewItem(kind="image", vector=np.ones(3), hash="y", path="/y.jpg")
    with pytest.raises(ValueError), c.store.transaction() as db:
        c.store.put(db, good)
        c.store.put(db, bad)
    assert c.store.count() == 10 and c.store.generation == generation


def test_texts_sync_from_a_caption_file(tmp_path: Path, encoder: ColorEncoder) -> None:
    captions = tmp_path / "caps.tsv"
    captions.write_text("image\tcaption\na.jpg\tA red car\nb.jpg\ta dog\nb.jpg\t  \nc.jpg\ta dog\n")
    c = Collection.open(tmp_path / "col", model=encoder)
    report, problems = c.index_captions(captions, progress=False)
    assert report.added == 3 and len(problems) == 1 and "empty caption" in problems[0]
    assert encoder.texts_encoded == 2  # "a dog" twice is encoded once
    texts = c.store.select("kind = 'text'")
    assert {(t.text, t.fields["image"]) for t in texts} == {("A red car", "a.jpg"), ("a dog", "b.jpg"),
                                                             ("a dog", "c.jpg")}
    captions.write_text("image\tcaption\nb.jpg\ta dog\nc.jpg\ta dog\nd.jpg\ta cat\n")
    report, _ = c.index_captions(captions, progress=False)
    assert (report.added, report.removed, report.unchanged) == (1, 1, 2)
    with pytest.raises(ValueError, match="empty"):
        c.add_texts(["fine", " "])


def _small_folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        make_photo(root / f"s{i}.jpg", (40 * i + 20, 200 - 50 * i, 90))
    return root


def test_an_emptied_folder_keeps_its_photos_unless_prune_all(tmp_path: Path, encoder: ColorEncoder) -> None:
    root = _small_folder(tmp_path / "disk")
    c = Collection.open(tmp_path / "col", model=encoder)
    c.index_folder(root, progress=False, fields={"album": "trip"})
    ids = _ids_by_name(c)
    aside = tmp_path / "aside"
    root.rename(aside)
    root.mkdir()  # an unmounted disk: its mount point is an empty folder
    lines: list[str] = []
    report = c.index_folder(root, progress=False, report=lines.append)
    assert (report.removed, report.kept) == (0, 3) and "3 kept" in report.summary()
    assert len(lines) == 1 and "kept the 3 stored photos" in lines[0] and "--prune-all" in lines[0]
    assert _ids_by_name(c) == ids

    root.rmdir()  # not even the mount point: a clear error, and still nothing removed
    with pytest.raises(FileNotFoundError, match="3 stored photos are kept"):
        c.index_folder(root, progress=False)
    with pytest.raises(FileNotFoundError, match="no such file or folder$"):
        c.index_folder(tmp_path / "typo", progress=False, prune_all=True)
    assert _ids_by_name(c) == ids

    aside.rename(root)  # mounted again: the same ids and fields, nothing read
    back = c.index_folder(root, progress=False)
    assert (back.unchanged, back.added, back.removed) == (3, 0, 0) and encoder.images_encoded == 3
    assert _ids_by_name(c) == ids and {it.fields["album"] for it in c.store.select("kind = 'image'")} == {"trip"}


def test_pruned_photos_that_come_back_keep_their_ids_and_fields(tmp_path: Path, encoder: ColorEncoder) -> None:
    root = _small_folder(tmp_path / "disk")
    c = Collection.open(tmp_path / "col", model=encoder)
    c.index_folder(root, progress=False, fields={"album": "trip"})
    ids = _ids_by_name(c)
    aside = tmp_path / "aside"
    shutil.copytree(root, aside)
    shutil.rmtree(root)
    gone = c.index_folder(root, progress=False, prune_all=True)  # a folder deleted on purpose
    assert gone.removed == 3 and c.store.count("image") == 0

    shutil.copytree(aside, root)  # ... and restored from a backup (new mtimes)
    make_photo(root / "new.jpg", (1, 2, 3))
    back = c.index_folder(root, progress=False, fields={"seen": "yes"})
    assert (back.restored, back.added) == (3, 1) and "3 restored" in back.summary()
    after = _ids_by_name(c)
    assert {name: after[name] for name in ids} == ids and after["new.jpg"] > max(ids.values())
    items = {Path(it.path).name: it for it in c.store.select("kind = 'image'")}
    assert all(items[name].fields == {"album": "trip", "seen": "yes"} for name in ids)
    assert [h.id for h in c.search_vector(c.store.vector(ids["s1.jpg"]), k=1)] == [ids["s1.jpg"]]

    (root / "s2.jpg").unlink()  # one photo pruned while others stay, then put back under another name
    assert c.index_folder(root, progress=False).removed == 1
    shutil.copy(aside / "s2.jpg", root / "s2-again.jpg")
    again = c.index_folder(root, progress=False)
    assert again.restored == 1 and _ids_by_name(c)["s2-again.jpg"] == ids["s2.jpg"]
    assert c.index_folder(root, progress=False).unchanged == 4


def test_the_index_command_keeps_an_emptied_folder_unless_prune_all(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crossmodal.cli import app

    root = _small_folder(tmp_path / "disk", n=2)
    col = ["-c", str(tmp_path / "col"), "-q"]
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(root), *col]).exit_code == 0
    for photo in root.iterdir():
        photo.unlink()
    kept = runner.invoke(app, ["index", str(root), *col])
    assert kept.exit_code == 0 and "kept the 2 stored photos" in kept.output and "2 photos" in kept.output
    root.rmdir()
    missing = runner.invoke(app, ["index", str(root), *col])
    assert missing.exit_code == 2 and "nothing was removed" in missing.output
    pruned = runner.invoke(app, ["index", str(root), "--prune-all", *col])
    assert pruned.exit_code == 0 and "2 removed" in pruned.output and "0 photos" in pruned.output
