"""A cold `crossmodal search "text"` on the default model: ONNX Runtime, tokenizers and numpy only (no torch,
no transformers), the text graph alone opened, and the same results as the transformers tokenizer gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import sample_photos
from crossmodal import Collection
from crossmodal.encoders import load_encoder
from crossmodal.encoders.onnx import TextInputs
from crossmodal.encoders.tokenizer import FastTokenizer

pytest.importorskip("onnxruntime")
QUERIES = ["a dog", "two children playing in the water", "a man riding a bike down a dirt road"]
TEXTS = [*QUERIES, "", "x", "Ünïcödé café, naïve — 東京 🙂", "  spaces   and\ttabs\n", "UPPER lower MiXeD 123,456.78",
         "a man " * 200, "don't stop-believing (really!) #1 @home"]

# Runs the CLI in a fresh interpreter, then reports which heavy modules it imported (a text search needs only
# tokenizers, onnxruntime and numpy; a small collection is searched exactly, without FAISS) and which graphs it
# opened.
PROBE = """
import json, sys
HEAVY = ("torch", "transformers", "faiss", "scipy", "sklearn")
from crossmodal.cli import app
app(sys.argv[1:], standalone_mode=False)
from crossmodal.encoders import load_encoder
encoder = load_encoder("lite")
print(json.dumps({"modules": sorted(m for m in HEAVY if m in sys.modules),
                  "sessions": sorted(encoder._sessions)}))
"""


@pytest.fixture(scope="module")
def lite():
    encoder = load_encoder("lite")
    if not hasattr(encoder, "inputs"):
        pytest.skip("lite does not run on ONNX Runtime here")
    return encoder


@pytest.fixture(scope="module")
def collection(lite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cold")
    with Collection.open(folder / "col", model=lite) as c:
        c.index_folder(sample_photos(folder / "photos", 12), progress=False)  # as `crossmodal index` does
    return folder / "col"


def test_fast_tokenizer_gives_the_tokens_transformers_gives(lite) -> None:
    kwargs = lite.config["text"]["kwargs"]
    fast = FastTokenizer(lite.folder, **kwargs)(TEXTS)
    slow = TextInputs(lite.folder, lite.config).tokenize(TEXTS)  # transformers' tokenizer
    assert fast["input_ids"].shape[1] == kwargs["max_length"]  # the long text is cut at the model's limit
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(fast[name], np.asarray(slow[name]), err_msg=name)


def test_a_text_search_imports_neither_torch_nor_transformers_and_opens_the_text_graph_only(
        collection: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, "search", "a dog", "--collection", str(collection),
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    *hits, probe = result.stdout.strip().splitlines()
    assert json.loads("\n".join(hits))  # it found photos
    seen = json.loads(probe)
    assert seen["modules"] == [], f"a cold text search imported {seen['modules']}: import them where they are used"
    assert seen["sessions"] == ["text"]


def test_results_are_those_of_the_transformers_tokenizer(lite, collection: Path) -> None:
    """The same top 10 and scores (to 1e-5) as the ONNX path gave when transformers tokenized (and imported
    torch)."""
    result = subprocess.run([sys.executable, "-m", "crossmodal", "search", "--queries", "-", "--collection",
                             str(collection)], input="\n".join(QUERIES), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fast = [json.loads(line) for line in result.stdout.splitlines()]
    tokenize, lite.inputs.tokenize = lite.inputs.tokenize, TextInputs(lite.folder, lite.config).tokenize
    try:
        with Collection.open(collection, model=lite) as c:
            slow = [c.search(q) for q in QUERIES]
    finally:
        lite.inputs.tokenize = tokenize
    assert [line["query"] for line in fast] == QUERIES
    for line, hits in zip(fast, slow, strict=True):
        assert [h["id"] for h in line["hits"]] == [h.id for h in hits]
        np.testing.assert_allclose([h["score"] for h in line["hits"]], [h.score for h in hits], atol=1e-5)
