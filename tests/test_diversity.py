"""The diversify stage (maximal marginal relevance): a page of near-copies becomes diverse, lambda 1 changes
nothing, pages of one search agree, and eval diversifies the way search does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ColorEncoder, make_photo
from crossmodal.collection.collection import Collection
from crossmodal.search.diversity import mmr
from crossmodal.search.pipeline import Ranking, SetScores


def burst(rng: np.random.Generator, n: int, dim: int, spread: float) -> np.ndarray:
    """``n`` unit vectors within about ``spread`` of one random direction (a burst of near-copies)."""
    centre = rng.normal(size=dim)
    x = centre / np.linalg.norm(centre) + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_mmr_spreads_a_page_of_near_copies() -> None:
    rng = np.random.default_rng(0)
    copies, others = burst(rng, 10, 32, 0.05), np.concatenate([burst(rng, 1, 32, 0.0) for _ in range(50)])
    vectors = np.concatenate([copies, others])  # the burst ranks first, then 20 good and 30 weak others
    scores = np.concatenate([np.linspace(0.9, 0.85, 10), np.linspace(0.84, 0.75, 20), np.linspace(0.5, 0.3, 30)])
    page = mmr(scores, vectors, 0.5, 10)
    assert page[0] == 0  # the best result stays first
    assert (page < 10).sum() == 1  # one of the burst, then the others
    assert len(set(page.tolist())) == 10
    assert mmr(scores, vectors, 1.0, 10).tolist() == list(range(10))  # lambda 1: the ranked order
    assert (mmr(scores, vectors, 0.9, 10) < 10).sum() > (page < 10).sum()  # higher lambda: less diverse


class CentredColours(ColorEncoder):
    """ColorEncoder's features less their typical value, so unrelated photos point apart (cosines near 0),
    as a real model's do, and only near-copies are close."""

    def _encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        typical = np.concatenate([[0.5] * 3, [0.05] * 3, [1 / (self.dim - 6)] * (self.dim - 6)]) + 0.01
        return super()._encode_images(images) - typical.astype(np.float32)


@pytest.fixture
def bursty(tmp_path: Path) -> Collection:
    """Eight near-identical shots of one red scene and 24 photos of other colours."""
    rng = np.random.default_rng(4)
    for i in range(8):
        make_photo(tmp_path / "p" / f"burst{i}.png", (200, 30, 30), noise=6 + i)
    for i in range(24):
        make_photo(tmp_path / "p" / f"other{i:02d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)), noise=20)
    c = Collection.open(tmp_path / "col", model=CentredColours("centred", dim=16))
    c.index_folder(tmp_path / "p", progress=False)
    return c


def _burst_ids(c: Collection) -> set[int]:
    return {it.id for it in c.store.select("path LIKE '%burst%'")}


def test_a_page_of_near_copies_becomes_diverse(bursty: Collection) -> None:
    query = make_photo(bursty.folder.parent / "q.png", (205, 25, 35), noise=5)
    shots = _burst_ids(bursty)
    plain = [h.id for h in bursty.search(image=query, k=8)]
    diverse = bursty.search(image=query, k=8, ranking=Ranking(diversity=0.5))
    assert set(plain) == shots  # the burst fills the plain page
    assert diverse[0].id == plain[0]
    assert len(shots & {h.id for h in diverse}) <= 2 and len(diverse) == 8
    by_id = {h.id: h.score for h in bursty.search(image=query, k=32)}
    assert all(h.score == pytest.approx(by_id[h.id]) for h in diverse)  # scores stay the pipeline's


def test_lambda_one_changes_nothing_and_pages_agree(bursty: Collection) -> None:
    query = make_photo(bursty.folder.parent / "q.png", (205, 25, 35), noise=5)
    plain = bursty.search(image=query, k=10)
    assert [(h.id, h.score) for h in bursty.search(image=query, k=10, ranking=Ranking(diversity=1.0))] == \
        [(h.id, h.score) for h in plain]
    long = [h.id for h in bursty.search(image=query, k=12, ranking=Ranking(diversity=0.3))]
    assert [h.id for h in bursty.search(image=query, k=6, ranking=Ranking(diversity=0.3))] == long[:6]
    with pytest.raises(ValueError, match="between 0"):
        Ranking(diversity=1.5)


def test_eval_diversifies_like_search(bursty: Collection) -> None:
    ids, images = bursty.store.matrix("image")
    ranking = Ranking(norm=False, rerank=0, diversity=0.5)
    score = SetScores(np.asarray(images), np.asarray(images), ranking)
    for row in range(0, len(ids), 7):
        searched = [h.id for h in bursty.search_vector(images[row], k=8, modality="text", ranking=ranking)]
        positions = score.ranked("t2i", np.array([row]), np.arange(len(ids)), 8)[0][1]
        assert ids[positions].tolist() == searched
        matrix = score("t2i", np.array([row]), np.arange(len(ids)))[0]
        assert ids[np.lexsort((np.arange(len(ids)), -matrix))[:8]].tolist() == searched


def test_diverse_option_takes_an_optional_lambda(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conftest import SAMPLES
    from crossmodal.cli import app
    from crossmodal.cli_options import with_optional_values

    fill = {"--diverse": "0.5"}
    assert with_optional_values(["a dog", "--diverse"], fill) == ["a dog", "--diverse", "0.5"]
    assert with_optional_values(["--diverse", "a dog"], fill) == ["--diverse", "0.5", "a dog"]
    assert with_optional_values(["--diverse", "0.2", "a dog"], fill) == ["--diverse", "0.2", "a dog"]
    assert with_optional_values(["--diverse", "--json"], fill) == ["--diverse", "0.5", "--json"]
    for photo in sorted((SAMPLES / "photos").iterdir())[:8]:
        (tmp_path / "p").mkdir(exist_ok=True)
        (tmp_path / "p" / photo.name).write_bytes(photo.read_bytes())
    with Collection.open(tmp_path / "col") as c:
        c.index_folder(tmp_path / "p", progress=False)
    runner = CliRunner()
    ask = ["search", "a dog", "-c", str(tmp_path / "col"), "--top", "5"]
    plain = runner.invoke(app, ask)
    assert plain.exit_code == 0, plain.output
    for extra in (["--diverse"], ["--diverse", "0.3"], ["--diverse", "1"]):
        result = runner.invoke(app, [*ask, *extra])
        assert result.exit_code == 0 and len(result.stdout.splitlines()) == 5, result.output
    assert runner.invoke(app, [*ask, "--diverse", "1"]).stdout == plain.stdout  # lambda 1 changes nothing
    assert runner.invoke(app, [*ask, "--diverse", "1.5"]).exit_code == 2
