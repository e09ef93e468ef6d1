"""`crossmodal upgrade`: a collection encoded again with a newer version of its model, atomically and resumably."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SAMPLES, ColorEncoder, make_photo
from crossmodal.cli import app
from crossmodal.collection import upgrade as upgrade_module
from crossmodal.collection.collection import Collection
from crossmodal.collection.manifest import Manifest, ModelMismatchError
from crossmodal.collection.upgrade import UnreadableError
from crossmodal.encoders import model_fingerprint
from crossmodal.encoders.lite_spec import WEIGHTS


class NewerColor(ColorEncoder):
    """The same model name with other weights: every vector reversed (a newer version of "color-test")."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(fail_after=fail_after)
        self.fingerprint = "newer0000color00"

    def _encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return super()._encode_images(images)[:, ::-1].copy()

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return super()._encode_texts(texts)[:, ::-1].copy()


CAPTIONS = ["a red photo", "a green photo", "a blue photo"]


def _ranked(c: Collection, photos: Path) -> list[tuple[str, float]]:
    """The photos most like p0 (itself left out), as (name, score): reversing every vector keeps every score."""
    return [(Path(h.path).name, round(h.score, 5)) for h in c.search(image=photos / "a" / "p0.jpg", k=5)]


def _collection(folder: Path, photos: Path) -> Collection:
    c = Collection.open(folder, model=ColorEncoder())
    c.index_folder(photos, progress=False)
    c.add_texts(CAPTIONS)
    return c


def _stored(c: Collection, kind: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    items = c.store.select("kind = ?", (kind,))
    ids = np.array([it.id for it in items])
    vectors = c.vectors(kind, ids)
    return {(it.path or it.text or ""): vectors[i] for i, it in enumerate(items)}, ids


def _expected(encoder: ColorEncoder, keys: list[str], kind: str) -> np.ndarray:
    return (encoder.encode_images([Image.open(k) for k in keys]) if kind == "image"
            else encoder.encode_captions(keys))


def test_upgrade_encodes_every_item_again_and_switches_the_collection_over(tmp_path: Path, photos: Path) -> None:
    folder = tmp_path / "c"
    with _collection(folder, photos) as c:
        before = _ranked(c, photos)
    with pytest.raises(ModelMismatchError, match="another version of it.*crossmodal upgrade"):
        Collection.open(folder, model=NewerColor())
    newer = NewerColor()
    with Collection.open(folder) as c:
        c._encoder = ColorEncoder()  # the name "color-test" is not a loadable model: hand the old one over
        report = c.upgrade(newer, progress=False)
    assert report.encoded == {"image": 10, "text": 3} and report.dropped == 0 and not report.failed
    assert Manifest.read(folder).fingerprint == newer.fingerprint
    with Collection.open(folder, model=NewerColor()) as c:
        for kind in ("image", "text"):
            stored, _ = _stored(c, kind)
            assert np.allclose(np.stack(list(stored.values())), _expected(newer, list(stored), kind), atol=1e-6)
        assert _ranked(c, photos) == before and len(before) == 5
        assert c.upgrade(NewerColor(), progress=False).encoded == {}  # already done: nothing to do


def test_an_interrupted_upgrade_leaves_the_old_model_answering_and_resumes(tmp_path: Path, photos: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "c"
    with _collection(folder, photos) as c:
        before = _ranked(c, photos)
    monkeypatch.setattr(upgrade_module, "CHUNK", 4)
    with Collection.open(folder, model=ColorEncoder()) as c, pytest.raises(KeyboardInterrupt):
        c.upgrade(NewerColor(fail_after=1), progress=False)  # dies in the second chunk of photos
    with Collection.open(folder, model=ColorEncoder()) as c:  # unchanged: the old model's vectors answer
        stored, _ = _stored(c, "image")
        assert np.allclose(np.stack(list(stored.values())), _expected(ColorEncoder(), list(stored), "image"))
        assert _ranked(c, photos) == before
        newer = NewerColor()
        report = c.upgrade(newer, progress=False)
    assert newer.images_encoded == 6 and report.encoded["image"] == 10  # the first chunk of 4 was kept
    with Collection.open(folder, model=NewerColor()) as c:
        stored, _ = _stored(c, "image")
        assert np.allclose(np.stack(list(stored.values())), _expected(NewerColor(), list(stored), "image"))


def test_a_crash_between_the_switch_and_the_manifest_opens_as_the_new_model(tmp_path: Path, photos: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "c"
    with _collection(folder, photos) as c:
        before = _ranked(c, photos)

    def crash(self: Manifest, folder: Path) -> None:
        raise KeyboardInterrupt

    with Collection.open(folder, model=ColorEncoder()) as c:
        monkeypatch.setattr(Manifest, "write", crash)
        with pytest.raises(KeyboardInterrupt):
            c.upgrade(NewerColor(), progress=False)
        monkeypatch.undo()
    assert Manifest.read(folder).fingerprint == ColorEncoder().fingerprint  # the store was switched, not it
    with Collection.open(folder, model=NewerColor()) as c:  # mended on open
        assert _ranked(c, photos) == before
        stored, _ = _stored(c, "image")
        assert np.allclose(np.stack(list(stored.values())), _expected(NewerColor(), list(stored), "image"))
    assert Manifest.read(folder).fingerprint == NewerColor().fingerprint


def test_unreadable_photos_stop_the_upgrade_unless_dropped(tmp_path: Path, photos: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(photos, copy)
    folder = tmp_path / "c"
    _collection(folder, copy).close()
    (copy / "a" / "p2.jpg").unlink()
    make_photo(copy / "b" / "p7.jpg", (0, 0, 0))  # another photo in its place
    (copy / "b" / "p5.jpg").write_bytes(b"not a photo any more")
    messages: list[str] = []
    with Collection.open(folder, model=ColorEncoder()) as c:
        with pytest.raises(UnreadableError, match="3 stored photos could not be read again"):
            upgrade_module.upgrade(c.store, NewerColor(), progress=False, report=messages.append)
        assert any("p2.jpg" in m and "cannot read" in m for m in messages)
        assert any("p7.jpg" in m and "changed since it was indexed" in m for m in messages)
        assert sum("p5.jpg" in m for m in messages) == 1
        assert c.store.count("image") == 10 and Manifest.read(folder).fingerprint == ColorEncoder().fingerprint
        shutil.copy(photos / "a" / "p2.jpg", copy / "a" / "p2.jpg")  # back: the next run retries the three alone
        newer = NewerColor()
        report = c.upgrade(newer, drop_unreadable=True, progress=False)
    assert newer.images_encoded == 1 and report.dropped == 2 and report.encoded["image"] == 8
    with Collection.open(folder, model=NewerColor()) as c:
        assert c.store.count("image") == 8 and c.store.count("text") == 3


def test_upgrade_refuses_a_model_of_another_size(tmp_path: Path, photos: Path) -> None:
    with _collection(tmp_path / "c", photos) as c, pytest.raises(ValueError, match="index into a new collection"):
        c.upgrade(ColorEncoder(name="wide", dim=32), progress=False)


def test_upgrade_command_moves_a_collection_of_an_older_lite_to_this_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection whose manifest names lite with other weights (an earlier version): searching or serving it
    says what to run (serve before it starts), and `crossmodal upgrade` encodes it again with this lite."""
    import uvicorn

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    folder = tmp_path / "c"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in (SAMPLES / "photos").iterdir())[:3]:
        shutil.copy(SAMPLES / "photos" / name, photos / name)
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(photos), "-c", str(folder), "-q"]).exit_code == 0
    manifest = Manifest.read(folder)
    current, manifest.fingerprint = manifest.fingerprint, "0123456789abcdef"
    manifest.write(folder)
    result = runner.invoke(app, ["search", "a dog", "-c", str(folder)])
    assert result.exit_code != 0 and "crossmodal upgrade" in result.output
    result = runner.invoke(app, ["serve", str(folder)])
    assert result.exit_code == 2 and "another version of it" in result.output and not served
    assert model_fingerprint("lite") == model_fingerprint(str(WEIGHTS)) == current  # what serve checks, unloaded
    result = runner.invoke(app, ["upgrade", "-c", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert f"3 photos and 0 captions encoded again with lite (weights 0123456789abcdef -> {current})" in result.output
    assert runner.invoke(app, ["search", "a dog", "-c", str(folder)]).exit_code == 0
    assert runner.invoke(app, ["serve", str(folder)]).exit_code == 0 and len(served) == 1
    assert "nothing to do" in runner.invoke(app, ["upgrade", "-c", str(folder), "-q"]).output
