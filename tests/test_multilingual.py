"""The multilingual query tower: language routing, the head's numpy form, training, and German, French and
Spanish queries finding what their English originals find in a lite collection built before (no re-index)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import SAMPLES, ColorEncoder
from crossmodal.cli import app
from crossmodal.collection.collection import Collection
from crossmodal.encoders import load_encoder
from crossmodal.encoders.languages import likely_english
from crossmodal.encoders.multilingual import (
    HEAD_FILE,
    MultilingualHead,
    MultilingualTower,
    find_multilingual,
    source_vectors,
)
from crossmodal.training.train_multilingual import Head, MultilingualConfig, Pairs, export, fit_head, save_head

# Sample photos with one of their English captions and translations of it (German, French, and Spanish: a
# language the tower was not trained on).
TRANSLATED = {
    "1178705300_c224d9a4f1.jpg": ("A dog jumps into a backyard pool .", "Ein Hund springt in einen Pool im Garten.",
                                  "Un chien saute dans une piscine.", "Un perro salta a una piscina."),
    "3287969199_08e775d896.jpg": ("A bird flying over the water .", "Ein Vogel fliegt über das Wasser.",
                                  "Un oiseau vole au-dessus de l'eau.", "Un pájaro vuela sobre el agua."),
    "3419634480_c390f62a6e.jpg": ("A black dog running across green grass .",
                                  "Ein schwarzer Hund rennt über grünes Gras.",
                                  "Un chien noir court sur l'herbe verte.",
                                  "Un perro negro corre por la hierba verde."),
    "3730011701_5352e02286.jpg": ("A little girl buried in the sand .", "Ein kleines Mädchen ist im Sand vergraben.",
                                  "Une petite fille enterrée dans le sable.", "Una niña enterrada en la arena."),
    "3079073247_97e88e2eb7.jpg": ("A man in a black and red jacket and helmet does a stunt on a motorbike .",
                                  "Ein Mann in schwarz-roter Jacke und Helm macht einen Stunt auf einem Motorrad.",
                                  "Un homme en veste noire et rouge et casque fait une cascade à moto.",
                                  "Un hombre con chaqueta negra y roja y casco hace una acrobacia en una moto."),
    "3370308329_7f2de5bb58.jpg": ("A group of girls climb up a snowy hill .",
                                  "Eine Gruppe Mädchen klettert einen verschneiten Hügel hinauf.",
                                  "Un groupe de filles gravit une colline enneigée.",
                                  "Un grupo de chicas sube una colina nevada."),
}


def test_the_shipped_tower_keeps_english_and_maps_other_languages() -> None:
    """Every English caption keeps lite's own vector, one that fastText takes for Polish included (own and
    mapped vectors agree); every translation is mapped."""
    tower = load_encoder("lite").multilingual
    if tower is None:
        pytest.skip("lite ships no multilingual tower here")
    english = [en for en, *_ in TRANSLATED.values()]
    others = [t for _, *rest in TRANSLATED.values() for t in rest]
    assert not likely_english(english).all()  # lid.176 takes the snowy hill for Polish
    texts = english + others
    own = load_encoder("lite", multilingual=False).encode_texts(texts)
    kept = np.isclose(tower.route(texts, own), own).all(axis=1)
    assert kept[:len(english)].all() and not kept[len(english):].any()


def test_the_numpy_head_equals_the_trained_one() -> None:
    torch.manual_seed(0)
    head = Head(dim=8, hidden=16, dropout=0.1).eval()
    x = np.random.default_rng(0).normal(size=(5, head.lin.in_features)).astype(np.float32)
    exported = export(head, "fp", MultilingualConfig())
    with torch.no_grad():
        expected = head(torch.from_numpy(x)).numpy()
    assert np.allclose(exported(x), expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(exported(x), axis=1), 1.0, atol=1e-5)


def test_a_head_saved_beside_a_model_is_found(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = export(Head(dim=8, hidden=16, dropout=0.0), "the-fingerprint", MultilingualConfig(agreement=0.6))
    save_head(head, tmp_path / HEAD_FILE)
    loaded = MultilingualHead.load(tmp_path / HEAD_FILE)
    assert loaded.agreement == pytest.approx(0.6)
    assert find_multilingual("the-fingerprint", tmp_path) is not None
    assert find_multilingual("another-model", tmp_path) is None


class _Tower:
    """Foreign texts (those that start with '!') -> a fixed vector."""

    fingerprint = "color-test"

    def route(self, texts: Sequence[str], own: np.ndarray) -> np.ndarray:
        out = own.copy()
        out[[t.startswith("!") for t in texts]] = np.eye(16)[0]
        return out


def test_only_texts_in_other_languages_take_the_multilingual_tower() -> None:
    plain = ColorEncoder()
    routed = ColorEncoder()
    routed.multilingual = _Tower()  # type: ignore[assignment]
    texts = ["red", "!rot", "blue", "!blau"]
    base, mixed = plain.encode_texts(texts), routed.encode_texts(texts)
    assert np.allclose(mixed[[0, 2]], base[[0, 2]])
    assert np.allclose(mixed[[1, 3]], np.eye(16)[[0, 0]])


def test_routing_keeps_english_and_maps_other_languages() -> None:
    torch.manual_seed(0)
    texts = ["a dog runs on the beach", "ein Hund rennt am Strand"]
    own = np.eye(8, dtype=np.float32)[:2]
    head = export(Head(dim=8, hidden=16, dropout=0.0), "fp", MultilingualConfig())
    routed = MultilingualTower(head).route(texts, own)
    assert np.allclose(routed[0], own[0])
    assert np.allclose(routed[1], head(source_vectors(texts[1:], head.sources))[0], atol=1e-5)
    # a text whose own vector agrees with its mapped one keeps its own, whatever its language looks like
    always = export(Head(dim=8, hidden=16, dropout=0.0), "fp", MultilingualConfig(agreement=-1.0))
    assert np.allclose(MultilingualTower(always).route(texts, own), own)


def test_training_learns_to_map_into_the_photo_space() -> None:
    """Source vectors that are a hidden rotation of the photo vectors, plus noise: after training the mapped
    captions find their photos."""
    rng = np.random.default_rng(0)
    photos = rng.normal(size=(64, 32)).astype(np.float32)
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)
    owner = np.repeat(np.arange(64), 4)
    width = 96
    hidden = np.linalg.qr(rng.normal(size=(width, width)))[0][:, :32].astype(np.float32)
    source = photos[owner] @ hidden.T + 0.01 * rng.normal(size=(len(owner), width)).astype(np.float32)
    pairs = Pairs(source, owner, photos, photos[owner], np.ones(len(owner), dtype=bool))

    def t2i_r1(head: MultilingualHead) -> float:
        return float(((head(source) @ photos.T).argmax(1) == owner).mean())

    config = MultilingualConfig(epochs=30, batch_size=64, hidden=64, lr=3e-3)
    untrained = export(Head(32, 64, 0.0, width).eval(), "fp", config)
    trained = export(fit_head(pairs, config), "fp", config)
    assert t2i_r1(untrained) < 0.2
    assert t2i_r1(trained) > 0.9


@pytest.fixture(scope="module")
def english_collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """The sample photos indexed by English-only lite: a collection from before the multilingual tower."""
    c = Collection.open(tmp_path_factory.mktemp("ml") / "col", model=load_encoder("lite", multilingual=False))
    c.index_folder(SAMPLES / "photos", progress=False)
    return c


def test_an_existing_collection_answers_queries_in_other_languages(english_collection: Collection) -> None:
    encoder = load_encoder("lite")
    if encoder.multilingual is None:
        pytest.skip("lite ships no multilingual tower here")
    assert encoder.fingerprint == english_collection.manifest.fingerprint
    c = Collection.open(english_collection.folder, model=encoder)
    same_top, found_in_3 = 0, 0
    for name, (english, *translations) in TRANSLATED.items():
        top_english = Path(c.search(english, k=1)[0].path).name
        for text in translations:
            hits = [Path(h.path).name for h in c.search(text, k=3)]
            same_top += hits[0] == top_english
            found_in_3 += name in hits
    total = 3 * len(TRANSLATED)
    assert same_top >= total - 4 and found_in_3 >= total - 1


def test_queries_in_other_languages_are_not_reranked(english_collection: Collection) -> None:
    """The reranker reads English token states: a German query keeps the dual-encoder order, an English one
    is reranked (search and eval alike: both ask ``reads_natively``)."""
    from crossmodal.search.pipeline import Ranking
    from crossmodal.search.rerank import find_reranker

    encoder = load_encoder("lite")
    if encoder.multilingual is None or find_reranker(encoder.fingerprint) is None:
        pytest.skip("lite ships no multilingual tower or reranker here")
    c = Collection.open(english_collection.folder, model=encoder)
    c.index_folder(SAMPLES / "photos", progress=False)  # stores the reranker's photo tokens
    english, german = TRANSLATED["3419634480_c390f62a6e.jpg"][:2]

    def ranked(text: str, rerank: int) -> list[tuple[int, float]]:
        return [(h.id, round(h.score, 5)) for h in c.search(text, k=8, ranking=Ranking(rerank=rerank))]

    assert encoder.reads_natively(english) and not encoder.reads_natively(german)
    assert ranked(german, 8) == ranked(german, 0)
    assert ranked(english, 8) != ranked(english, 0)


def test_train_multilingual_command_writes_a_head_the_model_loads(tmp_path: Path) -> None:
    rows = []
    for name, texts in TRANSLATED.items():
        for i, (lang, text) in enumerate(zip(("en", "de", "fr", "es"), texts, strict=True)):
            rows.append({"image": f"photos/{name}", "caption": text, "lang": lang, "group": name,
                         "split": "train" if i < 2 else "dev"})
    table = tmp_path / "captions.tsv"
    (tmp_path / "photos").symlink_to(SAMPLES / "photos")
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "tower"
    result = CliRunner().invoke(app, ["train", "--multilingual", "--data", str(table), "--out", str(out),
                                      "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "dev es: RSUM" in result.output
    head = MultilingualHead.load(out / HEAD_FILE)
    assert head.model_fingerprint == load_encoder("lite").fingerprint
