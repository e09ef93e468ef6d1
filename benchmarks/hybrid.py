"""Keyword, dense and hybrid retrieval of captions by a caption on Flickr8k, through the search pipeline.

    python benchmarks/hybrid.py [--splits dev test] [--model lite] [--photos]

Captions are the indexed texts (a collection of one split's 5,000 captions); each caption is a query and
the other captions of its photo are its positives (the query itself is left out). R@K: a positive in the
top K; "sum" adds R@1, R@5 and R@10. Keyword evidence cannot enter Flickr8k's image<->text RSUM: a photo
query has no words and the photos carry none but numeric file names, so there hybrid ranks as dense.
Fusion settings are compared on the split given first (dev); ms/query is the pipeline's time for one
query at a time (vectors given, so encoding is left out). ``--photos``: the first 500 captions ranking the
split's photos in a collection of them, where hybrid adds the caption words each photo stores: recall and
search's cost of dense and hybrid, with and without reranking.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from crossmodal import Collection
from crossmodal.search import hybrid
from crossmodal.search.pipeline import Query, Ranking
from crossmodal.sources.datasets import load_dataset

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
WEIGHTS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
K = 10


def recalls(lists: list[np.ndarray], positives: list[set[int]]) -> dict[str, float]:
    """R@1/5/10 (percent) and their sum."""
    out = {f"R@{k}": 100 * float(np.mean([bool(set(ids[:k].tolist()) & pos) for ids, pos in
                                          zip(lists, positives, strict=True)])) for k in (1, 5, 10)}
    return {**out, "sum": sum(out.values())}


def ranked(c: Collection, queries: list[Query], retriever: str, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    ranking = Ranking(retriever=retriever)
    out = []
    for start in range(0, len(queries), 256):
        hits = c.search_queries(queries[start:start + 256], k=k, kind="text", ranking=ranking)
        out += [(np.array([h.score for h in row], np.float32), np.array([h.id for h in row], np.int64))
                for row in hits]
    return out


def per_query_ms(c: Collection, queries: list[Query], retriever: str, n: int = 200) -> float:
    ranking = Ranking(retriever=retriever)
    started = time.perf_counter()
    for q in queries[:n]:
        c.search_queries([q], k=K, kind="text", ranking=ranking)
    return 1000 * (time.perf_counter() - started) / n


def split_figures(model: str, dataset: str, split: str, sweep: bool) -> None:
    data = load_dataset(dataset, split)
    with tempfile.TemporaryDirectory() as folder, Collection.open(Path(folder) / "c", model=model) as c:
        started = time.perf_counter()
        c.add_texts(data.texts)
        print(f"\n{split}: {len(data.texts)} captions indexed in {time.perf_counter() - started:.0f} s")
        ids = c.store.ids_where("kind = 'text' ORDER BY id")
        _, matrix = c.store.matrix("text")
        queries = [Query(np.asarray(matrix[i]), "text", source=t, exclude=[int(ids[i])])
                   for i, t in enumerate(data.texts)]
        photo = data.text_image
        positives = [set(ids[(photo == photo[i]) & (np.arange(len(ids)) != i)].tolist()) for i in range(len(ids))]
        rows = {name: recalls([r[1] for r in ranked(c, queries, name, K)], positives)
                for name in hybrid.RETRIEVERS}
        if sweep:
            depth = K + 8  # the pipeline's own depth at k=10: max(k, rerank 16) + the excluded query, +1
            dense = ranked(c, queries, "dense", depth)
            words = ranked(c, queries, "keyword", depth)
            snapshot = hybrid.Snapshot.of(c, "text")
            unions = [hybrid.union(d, w, snapshot.dense_scores(w[1], q.vector, 0.0))
                      for q, d, w in zip(queries, dense, words, strict=True)]
            for weight in WEIGHTS:
                lists = [u[0][np.lexsort((np.arange(len(u[0])), -hybrid.weighted(u[1], u[2], weight)))]
                         for u in unions]
                rows[f"weighted {weight}"] = recalls(lists, positives)
            lists = [u[0][np.lexsort((np.arange(len(u[0])), -hybrid.reciprocal_rank(u[1], u[2])))] for u in unions]
            rows[f"RRF k={hybrid.RRF_K}"] = recalls(lists, positives)
        print(f"{'retriever':<16} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'sum':>7} {'ms/query':>9}")
        for name, m in rows.items():
            ms = f"{per_query_ms(c, queries, name):9.2f}" if name in hybrid.RETRIEVERS else ""
            print(f"{name:<16} {m['R@1']:6.2f} {m['R@5']:6.2f} {m['R@10']:6.2f} {m['sum']:7.2f} {ms}")


def photo_figures(model: str, dataset: str, split: str, n: int = 500) -> None:
    """Captions ranking the split's photos through a collection (stored words, BM25, the reranker's tokens): t2i
    recall and search's ms/query of dense and hybrid, with and without the rerank stage (the query's vector
    given, so encoding is left out)."""
    data = load_dataset(dataset, split)
    with tempfile.TemporaryDirectory() as folder:
        photos = Path(folder) / "photos"
        photos.mkdir()
        for path in data.images:
            (photos / path.name).symlink_to(path)
        with Collection.open(Path(folder) / "c", model=model) as c:
            started = time.perf_counter()
            c.index_folder(photos, progress=False)
            print(f"\n{split}: {len(data.images)} photos indexed in {time.perf_counter() - started:.0f} s "
                  f"(vectors, reranker tokens and words)")
            by_name = {Path(it.path).name: it.id for it in c.store.select("kind = 'image'")}
            texts = data.texts[:n]
            vectors = c.encoder.encode_texts(texts)
            queries = [Query(v, "text", source=t) for v, t in zip(vectors, texts, strict=True)]
            positives = [{by_name[data.images[data.text_image[i]].name]} for i in range(len(texts))]
            print(f"{'pipeline':<24} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'sum':>7} {'ms/query':>9}")
            for retriever in ("dense", "hybrid"):
                for rerank in (0, 16):
                    ranking = Ranking(retriever=retriever, rerank=rerank)
                    c.search_queries(queries[:5], k=K, ranking=ranking)  # warm: the word index loaded
                    started = time.perf_counter()
                    lists = [np.array([h.id for h in c.search_queries([q], k=K, ranking=ranking)[0]])
                             for q in queries]
                    ms = 1000 * (time.perf_counter() - started) / len(queries)
                    m = recalls(lists, positives)
                    print(f"{retriever + f', rerank {rerank}':<24} {m['R@1']:6.2f} {m['R@5']:6.2f} {m['R@10']:6.2f} "
                          f"{m['sum']:7.2f} {ms:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite")
    parser.add_argument("--splits", nargs="+", default=["dev", "test"])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--photos", action="store_true",
                        help="Captions ranking the photos instead, through a collection of them (dense vs hybrid).")
    args = parser.parse_args()
    if args.photos:
        print(f"hybrid: BM25 share {hybrid.WEIGHT}, caption-word share {hybrid.SPARSE_WEIGHT}")
        for split in args.splits:
            photo_figures(args.model, args.dataset, split)
        return
    print(f"pipeline hybrid weight {hybrid.WEIGHT}; sweep on {args.splits[0]}")
    for i, split in enumerate(args.splits):
        split_figures(args.model, args.dataset, split, sweep=i == 0)


if __name__ == "__main__":
    main()
