"""Photo indexing on a two-node Ray cluster made in the test (``ray_cluster`` in conftest: a head and a second node of
one CPU each): the same items and vectors as a local run, nothing lost when an encode actor is killed mid-run, and a
clear line without Ray."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_photo
from crossmodal import Collection
from crossmodal.cli import app

BATCH = 4  # several batches per run, so both actors work and one can die with batches queued


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixteen photos, a copy of one and a corrupt file."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    for i in range(16):
        make_photo(root / ("a" if i < 8 else "b") / f"p{i:02}.jpg", (15 * i, 250 - 13 * i, (90 * i) % 256), noise=6)
    shutil.copy(root / "a" / "p03.jpg", root / "b" / "copy.jpg")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


@pytest.fixture(scope="module")
def local(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    """The folder indexed without Ray: what a distributed run must equal."""
    with Collection.open(tmp_path_factory.mktemp("local") / "col", "lite") as c:
        c.index_folder(folder, progress=False, batch_size=BATCH)
        yield c


def photos_of(c: Collection) -> dict[str, tuple[int, str, dict[str, Any], np.ndarray]]:
    """Each stored photo's id, content hash, fields and vector, by path."""
    return {it.path: (it.id, it.hash, it.fields, c.store.vector(it.id)) for it in c.store.select("kind = 'image'")}


def assert_same(c: Collection, local: Collection, folder: Path) -> None:
    """The same photos (paths, ids, hashes, fields), vectors equal to float precision, the same failures."""
    mine, theirs = photos_of(c), photos_of(local)
    assert mine.keys() == theirs.keys()
    assert sorted(v[0] for v in mine.values()) == sorted(v[0] for v in theirs.values())
    for path, (_, digest, fields, vector) in mine.items():
        assert (digest, fields) == theirs[path][1:3], path
        assert np.allclose(vector, theirs[path][3], atol=1e-5), path
    assert c.store.failures_under(str(folder)).keys() == local.store.failures_under(str(folder)).keys()


def test_distributed_index_equals_local(ray_cluster: Any, folder: Path, local: Collection, tmp_path: Path) -> None:
    from crossmodal.distributed import EncodePool

    with EncodePool("lite", 2) as pool, Collection.open(tmp_path / "col", "lite") as c:
        nodes = {ray_cluster.get(a.__ray_call__.remote(lambda _: ray_cluster.get_runtime_context().get_node_id()))
                 for a in pool.actors}
        assert len(nodes) == 2  # one actor on each node
        report = c.index_folder(folder, progress=False, batch_size=BATCH, pool=pool)
        assert (report.added, report.reused, len(report.failed)) == (16, 1, 1)
        assert "broken.jpg" in report.failed[0][0]
        assert_same(c, local, folder)
        assert not c.store.missing_tokens()  # the actors computed the reranker's photo tokens too
        again = c.index_folder(folder, progress=False, batch_size=BATCH, pool=pool)
        assert (again.added, again.unchanged, again.skipped_known_bad) == (0, 17, 1)
        with Collection.open(tmp_path / "mirror", "lite+mirror") as m:
            with pytest.raises(ValueError, match="same name"):  # the workers would read photos the other way
                m.index_folder(folder, progress=False, pool=pool)
            assert m.store.count("image") == 0


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "gone"])
def test_killed_actor_loses_nothing(ray_cluster: Any, folder: Path, local: Collection, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, restart: bool) -> None:
    from crossmodal.distributed import EncodePool

    with EncodePool("lite", 2) as pool, Collection.open(tmp_path / "col", "lite") as c:
        victim, load = pool.actors[0], pool.load

        def load_then_kill(*args: Any) -> Iterator[Any]:
            """The pool's results; one actor is killed when the first batch is in (later ones queued on both)."""
            for i, loaded in enumerate(load(*args)):
                if i == 0:
                    ray_cluster.kill(victim, no_restart=not restart)
                yield loaded

        monkeypatch.setattr(pool, "load", load_then_kill)
        report = c.index_folder(folder, progress=False, batch_size=BATCH, pool=pool)
        assert (report.added, report.reused, len(report.failed)) == (16, 1, 1)
        assert len(pool.actors) == (2 if restart else 1)
        assert_same(c, local, folder)
        again = c.index_folder(folder, progress=False, batch_size=BATCH, pool=pool)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 17)


def test_cli_with_ray(ray_cluster: Any, folder: Path, local: Collection, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(folder), "-c", str(tmp_path / "col"), "--ray", "--workers", "2",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "1 unreadable" in result.stderr
    with Collection.open(tmp_path / "col") as c:
        assert_same(c, local, folder)


def test_cli_without_ray(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    result = CliRunner().invoke(app, ["index", str(folder), "-c", str(tmp_path / "col"), "--ray"])
    assert result.exit_code != 0
    assert 'pip install "crossmodal[ray]"' in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "col").exists()  # refused before anything was made
