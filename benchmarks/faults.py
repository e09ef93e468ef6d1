"""Fault injection: crashes at every file write of an index save and of collection creation, and SIGKILLs
of `index` at random moments; after each, the collection must open and answer correctly with no repair.

    python benchmarks/faults.py [--photos DIR] [--limit 200] [--kills 10] [--seed 0]

A crash is a real process death (``os._exit`` in a child process just before its N-th write: a file
opened for writing, a rename, an fsync, a FAISS write, a removal). Prints one table: scenario, runs,
crash points, collections that opened, searches that answered correctly, rows lost, manual repairs.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossmodal import Collection
from crossmodal.sources.folders import iter_images

ROOT = Path(__file__).resolve().parents[1]
FLICKR_DEV = ROOT.parent / "shared/datasets/flickr8k"
QUERIES = 8  # stored vectors used as queries
CRASHED = 137


# -- the child: do one operation, dying just before its N-th write -------------------------------------------

def _crash_before(n: int) -> Callable[[], int]:
    """Patch every way this code writes a file so that the ``n``-th write kills the process (0: never)."""
    import faiss

    seen = [0]

    def wrap(fn: Callable[..., Any], writes: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            if writes(*args, **kwargs):
                seen[0] += 1
                if seen[0] == n:
                    os._exit(CRASHED)
            return fn(*args, **kwargs)
        return patched

    def opens_for_writing(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> bool:
        return any(c in mode for c in "wax+")

    builtins.open = io.open = wrap(io.open, opens_for_writing)
    for owner, name in [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "unlink"), (os, "mkdir"),
                        (shutil, "rmtree"), (faiss, "write_index"), (faiss, "write_index_binary")]:
        setattr(owner, name, wrap(getattr(owner, name)))
    return lambda: seen[0]


def child(operation: str, folder: Path, n: int, arg: str) -> None:
    """Run ``operation`` on ``folder`` with a crash before write ``n``; print the writes it made."""
    writes = _crash_before(n)
    if operation == "create":
        with Collection.open(folder, model=arg) as c:
            c.add_texts(["a dog runs on the beach"])
    elif operation == "update":  # bringing the index up to date after deletes, as `index` does at its end
        with Collection.open(folder) as c:
            c.remove(c.store.ids_where("kind = 'image' ORDER BY id LIMIT 5"))
            c.refresh_indexes()
    elif operation == "rebuild":
        with Collection.open(folder) as c:
            c.configure_index(arg)
    elif operation == "index":  # `index` ends by building the index
        with Collection.open(folder) as c:
            c.index_folder(arg, progress=False)
    print(writes())


def run_child(operation: str, folder: Path, n: int, arg: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, "--child", operation, str(folder), str(n), arg],
                          capture_output=True, text=True)


# -- checking a collection after a crash --------------------------------------------------------------------

def _rows(folder: Path, sql: str) -> list[tuple]:
    """Rows of a query on a collection's SQLite database, read directly (no crossmodal code involved)."""
    db = sqlite3.connect(folder / "items.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _vectors(folder: Path, key: str) -> dict[Any, bytes]:
    """Every stored item's vector by ``key`` (a column), read from its row of its kind's vector file."""
    files = {k[len("vectors."):]: json.loads(v) for k, v in _rows(folder, "SELECT key, value FROM meta")
             if k.startswith("vectors.")}
    dim = json.loads((folder / "manifest.json").read_text())["dim"]
    out = {}
    for value, kind, row in _rows(folder, f"SELECT {key}, kind, vector_row FROM items"):
        with open(folder / "vectors" / files[kind]["file"], "rb") as f:
            f.seek(row * (dim + 1) * 4)
            out[value] = f.read(dim * 4)
    return out


def snapshot(folder: Path) -> dict[int, bytes]:
    """Every stored item's vector, by id."""
    return _vectors(folder, "id")


def answers(folder: Path) -> list[list[int]]:
    """Top-5 image ids for the first QUERIES stored photos' vectors, as users get them (the default pipeline)."""
    with Collection.open(folder) as c:
        ids = c.store.ids_where("kind = 'image' ORDER BY id")[:QUERIES]
        return [[h.id for h in c.search_vector(c.store.vector(int(i)), k=5, modality="image")] for i in ids]


def check(folder: Path, expected_rows: dict[int, bytes] | None, expected: list[list[int]] | None
          ) -> tuple[bool, bool, int]:
    """(opened, answered correctly, rows lost) for a collection after a crash (``None``: not compared)."""
    try:
        got = answers(folder)
        db = sqlite3.connect(folder / "items.sqlite")
        ok = db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    except Exception as e:  # noqa: BLE001 - counted as not opening
        print(f"  {folder.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return False, False, 0
    rows = snapshot(folder)
    lost = 0 if expected_rows is None else sum(rows.get(i) != v for i, v in expected_rows.items())
    return ok, expected is None or got == expected, lost


# -- scenarios ----------------------------------------------------------------------------------------------

def crash_every_write(name: str, pristine: Path, work: Path, operation: str, arg: str,
                      reference: Callable[[Path], tuple[dict[int, bytes] | None, list[list[int]] | None]]
                      ) -> list[Any]:
    """Run ``operation`` once to count its writes and get the answers it should leave, then once per write
    with a crash just before it; check the collection each crash leaves."""
    def fresh() -> Path:
        shutil.rmtree(work, ignore_errors=True)
        if pristine.exists():
            shutil.copytree(pristine, work)
        return work

    done = run_child(operation, fresh(), 0, arg)
    if done.returncode:
        raise RuntimeError(f"{operation} failed without a crash: {done.stderr[-2000:]}")
    total = int(done.stdout.split()[-1])
    expected_rows, expected = reference(work)
    opened = correct = lost = crashed = 0
    for n in range(1, total + 1):
        result = run_child(operation, fresh(), n, arg)
        crashed += result.returncode == CRASHED
        if operation == "create" and not (work / "manifest.json").exists():
            result = run_child(operation, work, 0, arg)  # creating again must just work
        o, c, rows = check(work, expected_rows, expected)
        opened, correct, lost = opened + o, correct + c, lost + rows
    return [name, total, crashed, opened, correct, lost, total - correct]


def kill_indexing(photos: Path, work: Path, kills: int, seed: int, reference: Path) -> list[Any]:
    """SIGKILL `index` (which ends by building and saving the index) at random moments, rerun it to the end, and
    compare with a run that was never killed: the same (path, vector) rows and the same answers by path
    (ids differ between runs, since a killed batch uses up AUTOINCREMENT ids)."""
    rng = random.Random(seed)
    start = time.perf_counter()
    run_child("index", reference, 0, str(photos))
    full = time.perf_counter() - start
    expected_rows, expected = _by_path(reference), _answers_by_path(reference)
    opened = correct = lost = 0
    for _ in range(kills):
        shutil.rmtree(work, ignore_errors=True)
        with Collection.open(work, model="lite") as c:
            c.configure_index("hnsw")
        proc = subprocess.Popen([sys.executable, __file__, "--child", "index", str(work), "0", str(photos)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_child("index", work, 0, str(photos))  # the rerun resumes
        o, _, _ = check(work, None, None)
        lost += len(expected_rows - _by_path(work))
        opened, correct = opened + o, correct + (o and _answers_by_path(work) == expected)
    return ["SIGKILL during index + index save", kills, kills, opened, correct, lost, kills - correct]


def _by_path(folder: Path) -> set[tuple[str, bytes]]:
    return set(_vectors(folder, "path").items())


def _answers_by_path(folder: Path) -> list[list[str]]:
    """Top-5 paths for the first QUERIES photos (by path) as queries."""
    with Collection.open(folder) as c:
        queries = [c.store.vector(int(i)) for i in c.store.ids_where("kind = 'image' ORDER BY path")[:QUERIES]]
        return [[h.path for h in c.search_vector(q, k=5, modality="image")] for q in queries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="photo folder (default: Flickr8k dev, or samples/)")
    parser.add_argument("--limit", type=int, default=200, help="photos indexed")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLed index runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = args.photos or (FLICKR_DEV / "images" if (FLICKR_DEV / "images").is_dir() else ROOT / "samples/photos")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        for path in list(iter_images(source))[: args.limit]:
            (photos / path.name).symlink_to(path)
        base = tmp / "base"
        with Collection.open(base, model="lite") as c:
            c.index_folder(photos, progress=False)
        work = tmp / "work"

        rows.append(crash_every_write("crash at each write of collection creation", Path(tmp / "none"), work,
                                      "create", "lite", lambda w: (None, None)))
        more = tmp / "more"
        more.mkdir()
        for path in list(iter_images(source))[args.limit: args.limit + 20]:
            (more / path.name).symlink_to(path)
        rows.append(crash_every_write("crash at each write of adding 20 photos", base, work, "index", str(more),
                                      lambda w: (snapshot(base), None)))  # every row stored before is kept
        for kind in ("hnsw", "binary"):
            pristine = tmp / f"pristine-{kind}"
            shutil.copytree(base, pristine)
            with Collection.open(pristine) as c:
                c.configure_index(kind)
            rows.append(crash_every_write(f"crash at each write of a {kind} index update", pristine, work,
                                          "update", "", lambda w: (snapshot(w), answers(w))))
            rows.append(crash_every_write(f"crash at each write of a {kind} index build", base, work,
                                          "rebuild", kind, lambda w: (snapshot(w), answers(w))))
        reference = tmp / "reference"
        with Collection.open(reference, model="lite") as c:
            c.configure_index("hnsw")
        rows.append(kill_indexing(photos, work, args.kills, args.seed, reference))

    table = Table(title=f"Fault injection ({args.limit} photos, seed {args.seed})")
    for col in ("scenario", "runs", "crash points hit", "opened", "answered correctly", "rows lost",
                "manual repairs needed"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for row in rows:
        table.add_row(*map(str, row))
    Console(width=150).print(table)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
