"""The query towers with and without ONNX Runtime's SkipLayerNormalization fusion, in one process.

    python benchmarks/skip_layer_norm.py [--queries 400] [--batches 1 8]

ONNX Runtime fuses each residual add and the layer norm after it into one SkipLayerNormalization node when it opens
a BERT graph (and the transformers optimizer writes them into a graph). On this CPU that kernel is several times
slower than Add + LayerNormalization, so crossmodal's sessions leave the fusion out (encoders/onnx.py
``SLOW_FUSIONS``). This opens the same graph file both ways, for lite's int8 English text tower and the int8
multilingual tower, and runs the same queries (Flickr8k dev captions; Multi30K dev German, French and Czech ones)
through both, taking turns batch by batch. Prints ms per query, the ratio, and how close the two graphs' vectors are;
first, one such operator against the plain ones it replaces.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from crossmodal.encoders import e5_model, load_encoder
from crossmodal.encoders.multilingual import _exported
from crossmodal.encoders.onnx import SLOW_FUSIONS, _session
from crossmodal.sources.datasets import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def one_thread(model: str | bytes, disabled: Sequence[str] = ()) -> ort.InferenceSession:
    """A one-thread session of ``model`` with ONNX Runtime's optimizations but ``disabled`` (by default all of them:
    residual adds and layer norms fused, as ONNX Runtime opens a graph unless told otherwise)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


def one_operator(shape: tuple[int, ...], repeats: int = 2000) -> tuple[float, float]:
    """(us) one SkipLayerNormalization against Add, Add, LayerNormalization of the same sum, one thread each."""
    from onnx import TensorProto, helper, numpy_helper

    width = shape[-1]
    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(rng.random(width, dtype=np.float32), n) for n in ("gamma", "beta", "bias")]
    fused = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                              domain="com.microsoft", epsilon=1e-12)]
    apart = [helper.make_node("Add", ["x", "skip"], ["sum"]), helper.make_node("Add", ["sum", "bias"], ["biased"]),
             helper.make_node("LayerNormalization", ["biased", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    x = rng.standard_normal(shape, dtype=np.float32)
    feeds = {"x": x, "skip": x[::-1].copy()}
    out = []
    for nodes in (fused, apart):
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None, width]) for n in feeds]
        graph = helper.make_graph(nodes, "one", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  params)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        session = one_thread(model.SerializeToString(), SLOW_FUSIONS)
        session.run(None, feeds)
        start = time.perf_counter()
        for _ in range(repeats):
            session.run(None, feeds)
        out.append(1e6 * (time.perf_counter() - start) / repeats)
    return out[0], out[1]


def english_feeds(encoder, texts: list[str], batch: int) -> list[dict[str, np.ndarray]]:
    """lite's text tower inputs, batches of similar lengths, each cut to its longest."""
    texts = sorted(texts, key=len)
    feeds = []
    for start in range(0, len(texts), batch):
        one = encoder.inputs.texts(texts[start:start + batch])
        longest = int(one["attention_mask"].sum(1).max())
        feeds.append({k: v[:, :longest] for k, v in one.items()})
    return feeds


def tower_feeds(tower, texts: list[str], batch: int) -> list[dict[str, np.ndarray]]:
    """The multilingual tower's inputs, batches of similar token lengths."""
    image = e5_model.read()
    ids = e5_model.token_ids(image, e5_model.tokenizer(image), texts, prefix=tower.weights.prefix)
    return [dict(zip(("inputs_embeds", "attention_mask"), e5_model.embedded(image, [ids[i] for i in rows]),
                     strict=True)) for rows in e5_model.length_batches(ids, batch)]


def compare(path: Path, feeds: list[dict[str, np.ndarray]], queries: int) -> tuple[float, float, float, float]:
    """(fused ms/query, unfused ms/query, min and mean cosine of their vectors), the two sessions taking turns."""
    sessions = {"fused": one_thread(str(path)), "unfused": _session(path, 1)}
    names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    seconds = dict.fromkeys(sessions, 0.0)
    vectors: dict[str, list[np.ndarray]] = {k: [] for k in sessions}

    def run(k: str, f: dict[str, np.ndarray]) -> np.ndarray:
        return sessions[k].run(["embedding"], {n: f[n] for n in names[k]})[0]

    for f in feeds[:3]:
        for k in sessions:
            run(k, f)
    for f in feeds:
        for k in sessions:
            start = time.perf_counter()
            vectors[k].append(run(k, f))
            seconds[k] += time.perf_counter() - start
    a, b = (np.concatenate(vectors[k]) for k in sessions)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return 1000 * seconds["fused"] / queries, 1000 * seconds["unfused"] / queries, float(cos.min()), float(cos.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    english = load_encoder("lite", int8_text=True)
    tower = english.multilingual
    captions = list(dict.fromkeys(load_dataset(SHARED / "flickr8k", "dev").texts))[:args.queries]
    with (SHARED / "multi30k-flickr8k" / "captions.tsv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if r["split"] == "dev" and r["lang"] in ("de", "fr", "cs")]
    foreign = [r["caption"] for r in rows][::max(1, len(rows) // args.queries)][:args.queries]
    print("| input | SkipLayerNormalization us | Add, Add, LayerNormalization us | ratio |\n|---|---|---|---|")
    for shape in ((1, 21, 384), (8, 25, 384)):
        fused, apart = one_operator(shape)
        print(f"| {' x '.join(map(str, shape))} | {fused:.1f} | {apart:.1f} | {fused / apart:.1f}x |", flush=True)
    print("\n| tower | queries | batch | fused ms/query | unfused ms/query | speed-up | vectors' cosine min / mean |")
    print("|---|---|---|---|---|---|---|")
    towers = (("lite int8 English", english.folder / "text.onnx", captions, partial(english_feeds, english)),
              ("multilingual int8", _exported(tower.weights) / "tower.onnx", foreign, partial(tower_feeds, tower)))
    for name, path, texts, feeds in towers:
        for batch in args.batches:
            fused, unfused, low, mean = compare(path, feeds(texts, batch), len(texts))
            print(f"| {name} | {len(texts)} | {batch} | {fused:.2f} | {unfused:.2f} | {fused / unfused:.2f}x "
                  f"| {low:.4f} / {mean:.5f} |", flush=True)


if __name__ == "__main__":
    main()
