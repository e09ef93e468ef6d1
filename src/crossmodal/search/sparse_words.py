"""The caption-word classifier (rerank/words.py) as a learned sparse model, LexLIP's lexical side: a photo is its
likeliest words (stored with its reranker tokens when it is encoded), a text is its idf-weighted words.

It reads the photo tower's pooled features, which the 512-d vector dense search scores partly loses, so its
evidence adds to the dense score (docs/benchmarks.md, "Caption words predicted from the photo tower"), where
sparse heads on that vector (search/sparse.py's ``SparseHeads``) add nothing. Alone it ranks worse than those
heads (it scores the words a caption holds, not how well they describe the photo), so it is the hybrid
retriever's sparse evidence, and the heads stay the sparse retriever. The same interface as ``SparseHeads``:
``item_rows`` for a collection's items, ``query_row`` for a query, ``dataset_rows`` for eval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .sparse import Row

if TYPE_CHECKING:
    from scipy import sparse

    from ..collection.store import ItemStore
    from ..encoders.base import Encoder
    from ..evaluation.runner import Embedded
    from ..rerank.runtime import Reranker
    from .pipeline import Query


class WordSparse:
    """Sparse rows over the word classifier's vocabulary, for the photos and texts of one model."""

    def __init__(self, reranker: Reranker, encoder: Callable[[], Encoder]) -> None:
        self.reranker, self.words, self._encoder = reranker, reranker.words, encoder
        self.vocab = self.words.vocab

    @property
    def id(self) -> str:
        """Names the classifier (its file, which holds its cut too), so a sparse index built with another is
        rebuilt."""
        return f"words-{self.reranker.words_fingerprint}"

    def _native(self, texts: list[str]) -> list[str]:
        """The texts, each one the model's English tower does not read (one the multilingual tower encodes) left
        empty: it has no words of this vocabulary, as the reranker leaves such a query alone."""
        encoder = self._encoder()
        return [t if encoder.reads_natively(t) else "" for t in texts]

    def text_rows(self, texts: list[str]) -> sparse.csr_matrix:
        """Texts' rows (``_native``: an empty one for a text of another language)."""
        return self.words.text_rows(self._native(texts))

    def item_rows(self, kind: str, store: ItemStore, ids: np.ndarray, vectors: np.ndarray) -> sparse.csr_matrix:
        """Stored items' rows: a photo's stored words (an empty row until the next ``index`` stores them for a
        photo stored before the classifier), a text's own words."""
        if kind == "image":
            return self.words.photo_rows(store.photo_words(ids))
        items = store.get(ids)
        return self.text_rows([items[int(i)].text or "" for i in ids])

    def query_row(self, query: Query) -> Row | None:
        """A text or photo query's row (a photo's from its own encoding, shared with the rerank stage), as the
        stored rows hold them; a mixed query has none, nor a photo when the model cannot give its spatial features
        (an older ONNX export). No SciPy: this is a cold text search's path."""
        if query.modality == "text" and isinstance(query.source, str):
            found = self.words.words_of(self._native([query.source]))[0]
            return Row(found, self.words.idf[found].astype(np.float32))
        encoder = self._encoder()
        if query.modality == "image" and query.source is not None and encoder.rerank_inputs:
            from .rerank import photo_query_inputs

            _, probabilities = photo_query_inputs(encoder, self.reranker, query)
            kept = self.words.records(probabilities)[0]
            return Row(kept["word"].astype(np.int64), kept["p"].astype(np.float32))
        return None

    def dataset_rows(self, emb: Embedded) -> dict[str, sparse.csr_matrix]:
        """Rows of a dataset held in memory (eval), as a collection stores them: ``emb.photo_words`` are its photos'
        word probabilities."""
        if emb.photo_words is None:
            raise ValueError("the dataset was embedded without the reranker, so its photos have no words")
        texts = self.text_rows(emb.data.texts)
        return {"image": self.words.photo_rows(list(self.words.records(emb.photo_words))), "text": texts,
                "caption": texts}


def find_words(reranker: Reranker | None, encoder: Callable[[], Encoder]) -> WordSparse | None:
    """The word classifier of a model's ``reranker`` as a sparse model, if it has one (``encoder`` gives the
    model, to read a text query or encode a photo query)."""
    return None if reranker is None or reranker.words is None else WordSparse(reranker, encoder)
