"""The query towers' int8 graphs before and after smoothing (encoders/onnx_smooth.py), side by side in one process.

    python benchmarks/int8_smoothing.py [--only english|multilingual] [--repeats 3]

For lite's English text tower and the multilingual query tower, three graphs each:
- float32;
- int8 as exported before smoothing (the down-projections of the first half of e5's layers, or all six of lite's,
  float32);
- int8 as exported now (inputs smoothed; every product int8 for the tower, the later half's down-projections too
  for lite).

Each graph encodes the queries in batches of 8 on one thread, as a server worker does (ms a query: best of
``--repeats``, the graphs taking turns). Quality, on dev only:
- English: Flickr8k dev dual-encoder RSUM;
- multilingual: Multi30K dev task 1 text->image R@10 per language, normalised by the tower's bank.

Also each query's cosine to the float32 graph's vector (minimum and mean) and, for the tower, the lowest cosine
between a query encoded alone and in its batch of 8 (int8 activation scales are set per call).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from crossmodal.encoders import e5_model, load_encoder
from crossmodal.encoders.multilingual import TowerWeights, run_graph
from crossmodal.encoders.multilingual_student import export_tower
from crossmodal.encoders.onnx import OnnxEncoder, _session
from crossmodal.encoders.onnx_export import export_onnx, quantize_text_tower
from crossmodal.evaluation.metrics import recall_metrics
from crossmodal.search.normalise import SHARE
from crossmodal.sources.datasets import load_flickr_layout
from crossmodal.sources.images import load_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BATCH = 8


def timed(encoders: dict[str, Callable[[list[str]], np.ndarray]], texts: list[str], repeats: int
          ) -> dict[str, float]:
    """Best ms a query of each encoder over ``texts`` in batches of ``BATCH``, the encoders taking turns."""
    best = dict.fromkeys(encoders, np.inf)
    for _ in range(repeats):
        for name, encode in encoders.items():
            start = time.perf_counter()
            for i in range(0, len(texts), BATCH):
                encode(texts[i:i + BATCH])
            best[name] = min(best[name], (time.perf_counter() - start) / len(texts) * 1000)
    return best


def cosines(vectors: np.ndarray, reference: np.ndarray) -> str:
    row = (vectors * reference).sum(1)
    return f"{row.min():.4f} / {row.mean():.5f}"


def english(folder: Path, args: argparse.Namespace, console: Console) -> None:
    source = load_encoder("lite", backend="torch", multilingual=False)
    float32 = export_onnx(source, folder / "float32")
    before = folder / "before"
    shutil.copytree(float32, before)
    quantize_text_tower(before / "text.onnx")
    graphs = {"float32": float32, "int8 before": before, "int8 smoothed (shipped)": export_onnx(source, folder / "now",
                                                                                              int8=True)}
    data = load_flickr_layout(args.flickr, "dev")
    photos = OnnxEncoder(float32).encode_images([load_image(p) for p in data.images])
    encoders = {name: OnnxEncoder(path, threads=1, batch_size=BATCH) for name, path in graphs.items()}
    vectors = {name: batched(e.encode_texts, list(data.texts)) for name, e in encoders.items()}
    ms = timed({name: e.encode_texts for name, e in encoders.items()}, list(data.texts[:1600]), args.repeats)
    table = Table(title=f"lite's English text tower: Flickr8k dev ({len(photos)} photos, {len(data.texts)} captions), "
                        f"batches of {BATCH}, one thread")
    for col in ("graph", "ms a query", "x float32", "dual RSUM", "cosine to float32 (min / mean)"):
        table.add_column(col, justify="left" if col == "graph" else "right")
    for name in graphs:
        rsum = recall_metrics(photos, vectors[name], np.asarray(data.text_image))["rsum"]
        table.add_row(name, f"{ms[name]:.2f}", f"{ms['float32'] / ms[name]:.2f}", f"{rsum:.2f}",
                      cosines(vectors[name], vectors["float32"]))
    console.print(table)


def multilingual(folder: Path, args: argparse.Namespace, console: Console) -> None:
    encoder = load_encoder("lite", int8_text=True)
    tower = encoder.multilingual
    weights: TowerWeights = tower.weights
    export_tower(weights, folder / "float32.onnx", int8=False)
    shutil.copy(folder / "float32.onnx", folder / "before.onnx")
    quantize_text_tower(folder / "before.onnx", fused=True, down_from_layer=6)
    export_tower(weights, folder / "now.onnx")
    graphs = {"float32": "float32", "int8 before": "before", "int8 smoothed (shipped)": "now"}
    sessions = {name: _session(folder / f"{stem}.onnx", 1) for name, stem in graphs.items()}
    tokenizer = e5_model.tokenizer(e5_model.read())
    encoders = {name: partial(run_graph, s, tokenizer, weights) for name, s in sessions.items()}
    with args.table.open(newline="") as f:
        dev = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
               if r["split"] == "dev" and r["source"] == "task1"]
    names = sorted({r["image"] for r in dev})
    where = {n: i for i, n in enumerate(names)}
    photos = encoder.encode_images([load_image(args.flickr / "images" / n) for n in names])
    bias = tower.bank.biases("image", photos)
    queries = {lang: ([r["caption"] for r in dev if r["lang"] == lang],
                      np.array([where[r["image"]] for r in dev if r["lang"] == lang])) for lang in ("de", "fr", "cs")}
    table = Table(title=f"The multilingual query tower: Multi30K dev task 1 ({len(names)} photos), batches of {BATCH}, "
                        "one thread; text->image R@10 normalised by the tower's bank")
    for col in ("graph", "ms a query", "x float32", "de", "fr", "cs", "mean", "cosine to float32 (min / mean)",
                "alone vs in a batch (min cosine)"):
        table.add_column(col, justify="left" if col == "graph" else "right")
    texts = [t for lang in queries for t in queries[lang][0]]
    ms = timed(encoders, texts[:800], args.repeats)
    reference = {lang: batched(encoders["float32"], q) for lang, (q, _) in queries.items()}
    for name, encode in encoders.items():
        cells, vectors = [], {}
        for lang, (q, gold) in queries.items():
            vectors[lang] = batched(encode, q)
            scores = vectors[lang] @ photos.T - SHARE * bias[None]
            rank = (scores > scores[np.arange(len(q)), gold][:, None]).sum(1)
            cells.append(100 * float(np.mean(rank < 10)))
        alone = np.concatenate([encode([t]) for t in texts[:200]])
        batch = (alone * batched(encode, texts[:200])).sum(1).min()
        fidelity = cosines(np.concatenate(list(vectors.values())), np.concatenate(list(reference.values())))
        table.add_row(name, f"{ms[name]:.2f}", f"{ms['float32'] / ms[name]:.2f}", *(f"{c:.1f}" for c in cells),
                      f"{np.mean(cells):.2f}", fidelity, f"{batch:.4f}")
    console.print(table)


def batched(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    return np.concatenate([encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flickr", type=Path, default=SHARED / "flickr8k")
    parser.add_argument("--table", type=Path, default=SHARED / "multi30k-flickr8k" / "captions.tsv")
    parser.add_argument("--only", choices=("english", "multilingual"), default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=200)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "english"):
            english(Path(tmp), args, console)
        if args.only in (None, "multilingual"):
            multilingual(Path(tmp), args, console)


if __name__ == "__main__":
    main()
