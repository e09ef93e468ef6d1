"""Shared fixtures: a fast deterministic encoder for store/search logic, photo makers, dataset paths."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crossmodal.encoders.base import Encoder

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "datasets" / "flickr8k"
SAMPLES = ROOT / "samples"

needs_flickr = pytest.mark.skipif(not (FLICKR / "captions.tsv").is_file(), reason="../shared/datasets/flickr8k absent")


class ColorEncoder(Encoder):
    """Photos -> mean colour and a coarse histogram; texts -> hashed words. Fast, deterministic, and
    counts what it encodes, so tests can check what an index run re-used instead of re-encoding."""

    def __init__(self, name: str = "color-test", dim: int = 16, fail_after: int | None = None) -> None:
        self.name = name
        self.fingerprint = hashlib.sha256(name.encode()).hexdigest()[:16]
        self.dim = dim
        self.batch_size = 4
        self.images_encoded = 0
        self.texts_encoded = 0
        self.fail_after = fail_after  # raise KeyboardInterrupt on this image batch (simulated Ctrl-C)
        self.image_batches = 0

    def _encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.image_batches += 1
        if self.fail_after is not None and self.image_batches > self.fail_after:
            raise KeyboardInterrupt
        self.images_encoded += len(images)
        out = []
        for im in images:
            arr = np.asarray(im.resize((8, 8)), dtype=np.float32).reshape(-1, 3) / 255.0
            hist = np.concatenate([arr.mean(0), arr.std(0), np.histogram(arr.mean(1), bins=self.dim - 6,
                                                                         range=(0, 1))[0] / 64.0])
            out.append(hist + 0.01)
        return np.asarray(out, dtype=np.float32)

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_encoded += len(texts)
        out = np.full((len(texts), self.dim), 0.01, dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out


def make_photo(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48), noise: int = 0,
               fmt: str | None = None) -> Path:
    """Write a small solid (optionally noisy) photo; different colours give different vectors."""
    rng = np.random.default_rng(sum(color) + noise)
    arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = color
    if noise:
        arr = np.clip(arr.astype(int) + rng.integers(-noise, noise + 1, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def encoder() -> ColorEncoder:
    return ColorEncoder()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of 10 distinct photos in two subfolders, plus hidden and junk folders to be skipped."""
    root = tmp_path / "photos"
    colors = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250),
              (250, 10, 250), (128, 128, 128), (30, 30, 30), (220, 220, 220), (200, 120, 40)]
    for i, color in enumerate(colors):
        make_photo(root / ("a" if i < 5 else "b") / f"p{i}.jpg", color, noise=8)
    make_photo(root / ".hidden" / "h.jpg", (1, 2, 3))
    make_photo(root / "@eaDir" / "thumb.jpg", (1, 2, 3))
    make_photo(root / "a" / ".dot.jpg", (1, 2, 3))
    (root / "a" / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local two-node Ray cluster (a head and a second node, one CPU each), this process connected to it."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield ray
    ray.shutdown()
    cluster.shutdown()


def album_photos(root: Path, n: int, seed: int) -> Path:
    """``n`` noisy photos of random colours, alternately in the albums ``paris`` and ``rome`` of ``root/photos``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        make_photo(root / "photos" / ("paris" if i % 2 else "rome") / f"p{i:02d}.jpg", color, size=(96, 72),
                   noise=int(rng.integers(5, 60)))
    return root / "photos"


def sample_photos(folder: Path, n: int) -> Path:
    """A folder holding copies of the first ``n`` sample photos (by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted((SAMPLES / "photos").glob("*.jpg"))[:n]:
        shutil.copy(photo, folder / photo.name)
    return folder
