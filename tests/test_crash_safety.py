"""Collections survive crashes and hostile conditions: an index save interrupted at any write, a damaged
index, leftovers of an interrupted creation, two writers, a read-only mount, a full disk."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from conftest import ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.collection.generations import FileSet
from crossmodal.collection.lock import write_lock
from crossmodal.collection.store import DiskFullError, ReadOnlyCollectionError

QUERIES = ["red green", "blue", "dark light"]


class Crash(BaseException):
    """Stands for the process dying at a write (nothing after it runs)."""


def photos(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        make_photo(folder / f"{seed}-{i:02d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)), noise=20)


def answers(c: Collection) -> list[list[int]]:
    return [[h.id for h in c.search(q, k=5)] for q in QUERIES]


@pytest.fixture
def hnsw_col(tmp_path: Path) -> Collection:
    c = Collection.open(tmp_path / "col", model=ColorEncoder(dim=16))
    photos(tmp_path / "p", 40, seed=1)
    c.index_folder(tmp_path / "p", progress=False)
    c.configure_index("hnsw")
    return c


WRITES: list[tuple[Any, str]] = [(faiss, "write_index"), (np, "save"), (Path, "write_text"), (os, "replace"),
                                 (os, "fsync"), (shutil, "rmtree")]


def crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> Callable[[], int]:
    """Make the ``n``-th file write (any of WRITES) crash; returns a counter of writes seen."""
    seen = [0]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def writer(*args: Any, **kwargs: Any) -> Any:
            seen[0] += 1
            if seen[0] == n:
                raise Crash
            return fn(*args, **kwargs)
        return writer

    for owner, name in WRITES:
        monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))
    return lambda: seen[0]


def test_an_index_save_crashed_at_any_write_leaves_a_collection_that_answers(
        hnsw_col: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = hnsw_col.folder
    photos(tmp_path / "new", 10, seed=2)
    hnsw_col.add_images(sorted((tmp_path / "new").iterdir()))  # the next search updates the index
    hnsw_col.remove(hnsw_col.store.ids_where("kind = 'image' ORDER BY id LIMIT 3"))
    hnsw_col.close()
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    with Collection.open(folder, model=ColorEncoder(dim=16)) as c, monkeypatch.context() as m:
        writes = crash_at(m, 0)
        c.refresh_indexes()  # updates and saves the HNSW index, as `index` does at its end
        total = writes()
        expected = answers(c)
    assert total >= 6
    for n in crashed_runs(folder, pristine, Collection.refresh_indexes, total, monkeypatch):
        with Collection.open(folder, model=ColorEncoder(dim=16)) as c:  # after the "crash": no manual repair
            assert answers(c) == expected, f"crash at write {n} of {total}"
            assert c.indexes.get("image").kind == "hnsw"
        current = FileSet(folder / "index", "image").current()
        assert current is not None and len(list((folder / "index").glob("image.*"))) == 2  # pointer + folder


def crashed_runs(folder: Path, pristine: Path, operation: Callable[[Collection], Any], total: int,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """For each of ``total`` writes: restore ``folder`` from ``pristine`` and run ``operation`` on it with a
    crash at that write; yields the write's number after each crash."""
    for n in range(1, total + 1):
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        with Collection.open(folder, model=ColorEncoder(dim=16)) as c, monkeypatch.context() as m:
            crash_at(m, n)
            with pytest.raises(Crash):
                operation(c)
        yield n


def test_a_damaged_index_is_rebuilt_from_the_store(hnsw_col: Collection, capsys: pytest.CaptureFixture) -> None:
    expected = answers(hnsw_col)
    folder, _ = FileSet(hnsw_col.folder / "index", "image").current()
    np.save(folder / "index.labels.npy", np.arange(3))  # the index disagrees with itself
    hnsw_col.close()
    with Collection.open(hnsw_col.folder, model=ColorEncoder(dim=16)) as c:
        assert answers(c) == expected
        assert "damaged" in capsys.readouterr().err
        again, _ = FileSet(c.folder / "index", "image").current()
        assert again != folder and np.load(again / "index.labels.npy").shape == (40,)


def test_an_index_in_the_flat_layout_is_replaced(hnsw_col: Collection) -> None:
    index_dir = hnsw_col.folder / "index"
    expected = answers(hnsw_col)
    for path in index_dir.iterdir():  # the layout before generations: files directly in index/
        if path.is_dir():
            shutil.rmtree(path)
    (index_dir / "image.faiss").write_bytes(b"not an index")
    (index_dir / "image.state.json").write_text('{"kind": "hnsw", "generation": 1}')
    hnsw_col.close()
    with Collection.open(hnsw_col.folder, model=ColorEncoder(dim=16)) as c:
        assert answers(c) == expected
    assert not (index_dir / "image.faiss").exists() and FileSet(index_dir, "image").current() is not None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_an_interrupted_creation_do_not_block_it(tmp_path: Path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    leftover = folder / f".manifest.json.{dead_pid()}.tmp"
    leftover.write_text('{"format": "crossm')
    with Collection.open(folder, model=ColorEncoder(dim=16)) as c:
        c.add_texts(["a red car"])
        assert len(c) == 1
    assert not leftover.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):  # someone else's files still stop it
        Collection.open(tmp_path / "other", model=ColorEncoder(dim=16))


def index_in_thread(tmp_path: Path, errors: list[BaseException]) -> threading.Thread:
    """An index run of tmp_path/p into tmp_path/col in a thread of its own; what it raises goes to ``errors``."""
    def run() -> None:
        try:
            with Collection.open(tmp_path / "col", model=ColorEncoder(dim=16)) as c:
                c.index_folder(tmp_path / "p", progress=False)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_second_index_run_waits_for_the_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos(tmp_path / "p", 12, seed=3)
    c = Collection.open(tmp_path / "col", model=ColorEncoder(dim=16))
    errors: list[BaseException] = []
    with write_lock(c.folder):  # the first run
        thread = index_in_thread(tmp_path, errors)
        time.sleep(0.5)
        assert thread.is_alive() and c.store.count("image") == 0
    thread.join(30)
    assert not thread.is_alive() and not errors
    assert "waiting for it to finish" in capsys.readouterr().err
    assert c.store.count("image") == 12


def test_concurrent_index_runs_both_finish(tmp_path: Path) -> None:
    photos(tmp_path / "p", 24, seed=4)
    Collection.open(tmp_path / "col", model=ColorEncoder(dim=16)).close()
    errors: list[BaseException] = []
    threads = [index_in_thread(tmp_path, errors) for _ in range(2)]
    for t in threads:
        t.join(60)
    assert not errors
    with Collection.open(tmp_path / "col") as c:
        assert c.store.count("image") == 24


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Make a folder read-only as a mount would (a read-only bind mount as root, permissions otherwise)."""
    mounts: list[Path] = []
    chmodded: list[Path] = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            chmodded.append(folder)
            return folder
        view = tmp_path / "ro-view"
        view.mkdir()
        bind = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
        if bind.returncode:
            pytest.skip(f"cannot make a read-only mount here: {bind.stderr.decode().strip()}")
        mounts.append(view)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        return view

    yield make
    for view in mounts:  # lazily: a file the collection mapped may still be open, and a busy mount would stay
        subprocess.run(["umount", "--lazy", str(view)], check=False)
    for folder in chmodded:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_read_only_collection_is_searched(hnsw_col: Collection, tmp_path: Path,
                                            read_only: Callable[[Path], Path]) -> None:
    photos(tmp_path / "p", 5, seed=5)
    hnsw_col.index_folder(tmp_path / "p", progress=False)  # the saved index is now one generation behind
    expected = answers(hnsw_col)
    hnsw_col.close()
    view = read_only(hnsw_col.folder)
    with pytest.raises(OSError):
        (view / "probe").write_text("x")
    with Collection.open(view, model=ColorEncoder(dim=16)) as c:
        assert c.store.read_only
        assert answers(c) == expected
        assert c.info()["images"] == 45
        with pytest.raises(ReadOnlyCollectionError, match="read-only"):
            c.add_texts(["a dog"])
        with pytest.raises(ReadOnlyCollectionError, match="read-only"):
            c.index_folder(tmp_path / "p", progress=False)


def test_a_full_disk_says_so_and_keeps_the_store(tmp_path: Path) -> None:
    c = Collection.open(tmp_path / "col", model=ColorEncoder(dim=16))
    c.add_texts(["a red car"])
    pages = c.store.db.execute("PRAGMA page_count").fetchone()[0]
    c.store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite then fails as on a full disk
    with pytest.raises(DiskFullError, match="disk .* is full"):
        c.add_texts([f"caption number {i} " * 40 for i in range(200)])
    c.store.db.execute("PRAGMA max_page_count = 1073741823")
    assert len(c) == 1 and c.store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.add_texts(["a blue bus"])
    assert len(c) == 2
    with pytest.raises(sqlite3.OperationalError), c.store.transaction() as db:  # not mistaken for a full disk
        db.execute("SELECT * FROM no_such_table")


def to_old_layout(c: Collection) -> dict[int, np.ndarray]:
    """Close ``c`` and write it as versions before vector files did (each vector in its SQLite row, search
    snapshots in cache/); returns every stored vector by id."""
    vectors = {int(i): c.store.vector(int(i)) for i in c.store.ids_where("1")}
    folder = c.folder
    c.close()
    db = sqlite3.connect(folder / "items.sqlite")
    db.execute("ALTER TABLE items ADD COLUMN vector BLOB NOT NULL DEFAULT x''")
    db.executemany("UPDATE items SET vector = ? WHERE id = ?", [(v.tobytes(), i) for i, v in vectors.items()])
    db.execute("ALTER TABLE items DROP COLUMN vector_row")
    db.execute("DELETE FROM meta WHERE key LIKE 'vectors.%'")
    db.commit()
    db.close()
    shutil.rmtree(folder / "vectors")
    (folder / "cache").mkdir()
    (folder / "cache" / "image.json").write_text('{"generation": 1, "count": 0}')
    return vectors


def test_a_collection_from_before_vector_files_is_migrated_on_open(hnsw_col: Collection) -> None:
    hnsw_col.add_texts(["a red car", "a blue bus"])
    hnsw_col.refresh_indexes()
    expected, texts = answers(hnsw_col), [h.id for h in hnsw_col.search("a red car", k=2, kind="text")]
    folder = hnsw_col.folder
    vectors = to_old_layout(hnsw_col)
    with Collection.open(folder, model=ColorEncoder(dim=16)) as c:
        assert "vector" not in c.store._columns() and not (folder / "cache").exists()
        assert {i: c.store.vector(i).tobytes() for i in vectors} == {i: v.tobytes() for i, v in vectors.items()}
        assert answers(c) == expected and [h.id for h in c.search("a red car", k=2, kind="text")] == texts
        c.add_texts(["a green tram"])
        assert len(c) == len(vectors) + 1


def test_a_read_only_collection_from_before_vector_files_is_searched(
        hnsw_col: Collection, read_only: Callable[[Path], Path]) -> None:
    expected = answers(hnsw_col)
    folder = hnsw_col.folder
    vectors = to_old_layout(hnsw_col)
    with Collection.open(read_only(folder), model=ColorEncoder(dim=16)) as c:
        assert "vector" in c.store._columns()
        assert answers(c) == expected
        assert all(np.array_equal(c.store.vector(i), v) for i, v in vectors.items())


def test_adding_crashed_at_any_write_keeps_what_was_stored(hnsw_col: Collection, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    photos(tmp_path / "new", 6, seed=6)
    new = sorted((tmp_path / "new").iterdir())
    folder = hnsw_col.folder
    hnsw_col.close()
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    with Collection.open(folder, model=ColorEncoder(dim=16)) as c:
        before, stored = answers(c), {int(i): c.store.vector(int(i)) for i in c.store.ids_where("1")}
        with monkeypatch.context() as m:
            writes = crash_at(m, 0)
            c.add_images(new)
            total = writes()
        after = answers(c)
    assert total >= 1
    for n in crashed_runs(folder, pristine, lambda c: c.add_images(new), total, monkeypatch):
        with Collection.open(folder, model=ColorEncoder(dim=16)) as c:
            assert all(np.array_equal(c.store.vector(i), v) for i, v in stored.items())
            assert answers(c) in (before, after), f"crash at write {n} of {total}"
            c.add_images(new)  # running again completes the add
            assert answers(c) == after


def test_a_vector_file_with_many_unused_rows_is_compacted(hnsw_col: Collection) -> None:
    name, rows = hnsw_col.store.vector_file("image")
    hnsw_col.remove(hnsw_col.store.ids_where("kind = 'image' ORDER BY id LIMIT 15"))
    expected = answers(hnsw_col)
    hnsw_col.refresh_indexes()
    new, compacted = hnsw_col.store.vector_file("image")
    assert new != name and compacted == 25 == hnsw_col.store.count("image") and rows == 40
    assert not (hnsw_col.folder / "vectors" / name).exists()
    assert answers(hnsw_col) == expected


def test_a_vector_file_being_written_by_another_process_is_kept(hnsw_col: Collection) -> None:
    vectors = hnsw_col.folder / "vectors"
    writing, crashed = vectors / f"image.99.{os.getppid()}.f32", vectors / f"image.98.{dead_pid()}.f32"
    for path in (writing, crashed):
        path.write_bytes(b"\0" * 68)
    hnsw_col.remove(hnsw_col.store.ids_where("kind = 'image' ORDER BY id LIMIT 1"))
    hnsw_col.refresh_indexes()  # saves the index, then removes vector files nothing uses
    assert writing.exists() and not crashed.exists()
    assert (vectors / hnsw_col.store.vector_file("image")[0]).exists()
