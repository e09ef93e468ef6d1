"""The `crossmodal` command end to end, with the real default model on the sample photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SAMPLES
from crossmodal import Collection
from crossmodal.cli import app
from crossmodal.search.normalise import Bank

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    col = tmp_path_factory.mktemp("demo") / "col"
    result = runner.invoke(app, ["index", str(SAMPLES / "photos"), "--collection", str(col), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", str(SAMPLES / "captions.tsv"), "--texts", "-c", str(col), "-q"])
    assert result.exit_code == 0, result.output
    return col


def _captions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (SAMPLES / "captions.tsv").read_text().splitlines()[1:]:
        image, caption = line.split("\t")
        out.setdefault(image, []).append(caption.lower())
    return out


def test_search_by_text_finds_the_described_photos(demo: Path) -> None:
    captions = _captions()
    for options, dogs in ((["--no-norm", "--rerank", "0"], 2), ([], 1)):
        result = runner.invoke(app, ["search", "a dog", "-c", str(demo), "--top", "3", *options])
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 3
        scores = [float(line.split("\t")[0]) for line in lines]
        assert scores == sorted(scores, reverse=True)
        dog_hits = [line for line in lines if any("dog" in c for c in captions[Path(line.split("\t")[1]).name])]
        # normalisation lowers dog photos, which lite's Flickr8k bank holds many captions like (docs/ranking.md)
        assert len(dog_hits) >= dogs, (options, lines)


def test_json_output_and_mixed_query(demo: Path) -> None:
    result = runner.invoke(app, ["search", "beach", "--minus", "people", "--plus", "0.5:sunset", "--top", "20",
                                 "--json", "-c", str(demo)])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 20 and {"path", "id", "score"} <= set(hits[0])
    assert len({h["id"] for h in hits}) == 20


def test_image_query_leaves_itself_out_and_finds_texts(demo: Path) -> None:
    photo = SAMPLES / "photos" / "1679557684_50a206e4a9.jpg"  # a black dog catching a ball
    result = runner.invoke(app, ["search", "--image", str(photo), "--json", "-c", str(demo)])
    hits = json.loads(result.stdout)
    assert hits and all(Path(h["path"]).name != photo.name for h in hits)
    result = runner.invoke(app, ["search", "--image", str(photo), "--texts", "--top", "5", "--json",
                                 "-c", str(demo)])
    texts = [h["text"].lower() for h in json.loads(result.stdout)]
    assert len(texts) == 5 and sum("dog" in t for t in texts) >= 3, texts


def test_info(demo: Path) -> None:
    result = runner.invoke(app, ["info", "--json", "-c", str(demo)])
    facts = json.loads(result.stdout)
    assert facts["model"] == "lite" and facts["images"] == 35 and facts["texts"] == 175
    assert facts["dim"] == 512 and facts["bytes_on_disk"] > 35 * 512 * 4


def test_env_variable_selects_the_collection(demo: Path) -> None:
    result = runner.invoke(app, ["info", "--json"], env={"CROSSMODAL_COLLECTION": str(demo)})
    assert json.loads(result.stdout)["images"] == 35


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "/no/such/folder"], "no such file or folder"),
        (["search"], "nothing to search for"),
        (["search", "x", "--image", "/no/such.jpg"], "no such file"),
        (["search", "x", "--where", "oops"], "expected KEY=VALUE"),
        (["search", "   "], "empty text"),
    ],
)
def test_bad_arguments_give_one_clear_line(demo: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "-c", str(demo)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_missing_collection_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "dog", "-c", str(tmp_path / "none")])
    assert result.exit_code == 2 and "run `crossmodal index` first" in result.output


def test_model_mismatch_message(demo: Path, tmp_path: Path) -> None:
    heads = tmp_path / "other.safetensors"
    from crossmodal.encoders.lite import LiteHeads

    LiteHeads().save(heads, {})
    result = runner.invoke(app, ["search", "dog", "--model", str(heads), "-c", str(demo)])
    assert result.exit_code == 2 and "built with model 'lite'" in result.output


def test_reindex_changes_the_index_and_keeps_the_answers(demo: Path) -> None:
    before = json.loads(runner.invoke(app, ["search", "a dog", "--json", "-c", str(demo)]).stdout)
    result = runner.invoke(app, ["reindex", "--index", "hnsw", "-c", str(demo)])
    assert result.exit_code == 0 and "image: hnsw" in result.output, result.output
    info = json.loads(runner.invoke(app, ["info", "--json", "-c", str(demo)]).stdout)
    assert info["index"]["image"]["kind"] == "hnsw" and info["index"]["kind"] == "hnsw"
    after = json.loads(runner.invoke(app, ["search", "a dog", "--json", "-c", str(demo)]).stdout)
    assert [h["id"] for h in after] == [h["id"] for h in before]
    result = runner.invoke(app, ["reindex", "--index", "auto", "-c", str(demo)])
    assert result.exit_code == 0 and "image: flat" in result.output
    bad = runner.invoke(app, ["reindex", "--memory", "lots", "-c", str(demo)])
    assert bad.exit_code == 2 and "bad size" in bad.output
    bad = runner.invoke(app, ["reindex", "--index", "annoy", "-c", str(demo)])
    assert bad.exit_code == 2 and "unknown index kind" in bad.output


def test_bank_command_normalises_a_collection_and_eval_options(tmp_path: Path) -> None:
    col = tmp_path / "col"
    assert runner.invoke(app, ["index", str(SAMPLES / "photos"), "-c", str(col), "-q"]).exit_code == 0
    result = runner.invoke(app, ["bank", "--texts", str(SAMPLES / "captions.tsv"), "--images", str(SAMPLES / "photos"),
                                 "-c", str(col)])
    assert result.exit_code == 0, result.output
    assert (col / "bank.npz").is_file() and "scores are normalised" in result.output
    with Collection.open(col) as c:
        assert c.store.bank.path == col / "bank.npz"
        expected = Bank.open(col / "bank.npz").biases("image", c.store.matrix("image")[1])
        assert np.allclose(c.store.biases("image"), expected, atol=1e-5)
    out = tmp_path / "bank.npz"
    result = runner.invoke(app, ["bank", "--texts", str(SAMPLES / "captions.tsv"), "--images", str(SAMPLES / "photos"),
                                 "--out", str(out), "--limit", "20", "--share", "0.9", "--top-k", "8"])
    assert result.exit_code == 0 and Bank.open(out).vectors("texts").shape[0] == 20
    assert (Bank.open(out).share, Bank.open(out).top_k) == (0.9, 8)
    result = runner.invoke(app, ["bank", "--texts", str(SAMPLES / "captions.tsv"), "--images", str(SAMPLES / "photos"),
                                 "--out", str(out), "--share", "3"])
    assert result.exit_code != 0 and "a share from 0 to 2" in result.output
    result = runner.invoke(app, ["bank", "-c", str(col)])
    assert result.exit_code != 0 and "give --dataset" in result.output


def test_train_reranker_refuses_models_it_cannot_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--reranker", "--model", "openai/clip-vit-base-patch32", "--data",
                                 str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "trains for lite models" in result.output
