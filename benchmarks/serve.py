"""Load test of `crossmodal serve` on 127.0.0.1: concurrent clients sending text queries.

    python benchmarks/serve.py [--clients 16] [--seconds 30] [--split all]
        [--only torch|onnx|plain|int8|dense|rerank32|both-towers|multilingual] [--workers N ...] [--max-batch N ...]
        [--rounds N] [--baseline OTHER_CHECKOUT/src]

Builds (once, cached in runs/) a collection of the Flickr8k photos with the default model, then for
each query encoder in turn (PyTorch eager, ONNX Runtime float32, ONNX Runtime with the int8 text
tower = the default; with and without the ranking pipeline's normalisation and reranking; English queries
through both text towers) starts
`crossmodal serve` in a subprocess on a free loopback port and runs a bounded
closed-loop load: each client sends its next query as soon as the previous answer arrives, for a fixed
time. Queries are distinct Flickr8k `dev` captions (no query repeats, so no cache can help); for
`multilingual`, distinct Multi30K German, French and Czech captions (through the multilingual query tower).
Prints throughput, latency percentiles and errors, one row per encoder; with ``--workers``/``--max-batch``
(repeatable), one row per encoder and server setting, the settings taking turns within each encoder; with
``--rounds N``, every configuration N times in turn, then each one's medians; with ``--baseline``, every
configuration also served by another checkout's code (e.g. ``git worktree add /tmp/base COMMIT``), taking turns,
and the ratios of this checkout's medians to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from server_process import serving

from crossmodal import Collection
from crossmodal.sources.datasets import load_flickr_layout

ROOT = Path(__file__).resolve().parents[1]
BASELINE = " (baseline code)"  # marks the rows of the baseline checkout's code (rich reads [...] as markup)


def build_collection(data_root: Path, split: str, folder: Path) -> int:
    """Index the split's photos (all photos for 'all') into ``folder``; reuses a finished one."""
    splits = ("train", "dev", "test") if split == "all" else (split,)
    photos = [p for s in splits for p in load_flickr_layout(data_root, s).images]
    links = folder.parent / f"{folder.name}-photos"
    links.mkdir(parents=True, exist_ok=True)
    for p in photos:
        link = links / p.name
        if not link.exists():
            link.symlink_to(p)
    with Collection.open(folder) as c:
        c.index_folder(links, progress=True)
        return c.store.count("image")


async def client(host: str, port: int, queries: list[str], stop_at: float, latencies: list[float],
                 errors: list[str], k: int) -> None:
    """One closed-loop client on one keep-alive connection. Plain HTTP/1.1 over asyncio streams: the
    load generator shares the server's cores, so it must cost as little as possible per request."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for query in queries:
            if time.perf_counter() >= stop_at:
                return
            body = json.dumps({"text": query, "k": k}).encode()
            start = time.perf_counter()
            writer.write(b"POST /api/search HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
                answer = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, TypeError) as e:
                errors.append(repr(e))
                return
            status = int(head.split(b" ", 2)[1])
            if status != 200 or len(json.loads(answer)["results"]) != k:
                errors.append(f"{status}: {answer[:80]!r}")
                continue
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def load(port: int, queries: list[str], clients: int, seconds: float, k: int) -> tuple[list[float], list[str],
                                                                                             float]:
    latencies: list[float] = []
    errors: list[str] = []
    shares = [queries[i::clients] for i in range(clients)]
    start = time.perf_counter()
    await asyncio.gather(*(client("127.0.0.1", port, s, start + seconds, latencies, errors, k) for s in shares))
    return latencies, errors, time.perf_counter() - start


def batch_stats(base: str) -> tuple[float, float]:
    """(queries encoded, model calls) so far, from the server's Prometheus metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("crossmodal_encode_batch_size_")}
    return values.get("crossmodal_encode_batch_size_sum", 0.0), values.get("crossmodal_encode_batch_size_count", 0.0)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_server(folder: Path, backend: str, flags: list[str], queries: list[str], args: argparse.Namespace,
               code: Path | None = None) -> tuple[list[float], list[str], float, float, float]:
    """Start `crossmodal serve` with one backend (imported from ``code``, a checkout's ``src``, when given), warm it
    up, run the load; (latencies, errors, wall, mean queries per model call, the server's CPU use in cores)."""
    with serving(["--backend", backend, "serve", str(folder), *flags], ready_within=120, code=code) as (server,
                                                                                                       port):
        base = f"http://127.0.0.1:{port}"
        asyncio.run(load(port, queries[:64], args.clients, 3.0, args.k))  # warm-up, not counted
        before = batch_stats(base)
        cpu = _cpu_seconds(server.pid)
        latencies, errors, wall = asyncio.run(load(port, queries[64:], args.clients, args.seconds, args.k))
        cpu = _cpu_seconds(server.pid) - cpu
        after = batch_stats(base)
    return latencies, errors, wall, (after[0] - before[0]) / max(after[1] - before[1], 1), cpu / wall


def foreign_queries(table: Path) -> list[str]:
    """Distinct Multi30K captions in German, French and Czech, the languages interleaved."""
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    by_lang = [list(dict.fromkeys(r["caption"] for r in rows if r["lang"] == lang)) for lang in ("de", "fr", "cs")]
    return [q for group in zip(*by_lang, strict=False) for q in group]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/flickr8k")
    parser.add_argument("--split", default="all", help="photos to serve: train, dev, test or all")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--collection", type=Path, default=ROOT / "runs" / "bench-serve")
    parser.add_argument("--multi30k", type=Path, default=ROOT.parent / "shared/datasets/multi30k-flickr8k/captions.tsv")
    parser.add_argument("--only", choices=("torch", "onnx", "plain", "int8", "dense", "rerank32", "both-towers",
                                           "multilingual"),
                        action="append",
                        help="run only these configurations (repeatable; default: all)")
    parser.add_argument("--workers", type=int, action="append", help="server worker threads to compare "
                        "(repeatable; default: the server's own)")
    parser.add_argument("--max-batch", type=int, action="append", help="most queries per model call to compare "
                        "(repeatable; default: the server's own)")
    parser.add_argument("--baseline", type=Path, help="the src folder of another checkout: serve every "
                        "configuration with its code too, taking turns, and print the ratios to it")
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, taking "
                        "turns, and also print each one's medians: the machine's speed drifts within minutes")
    args = parser.parse_args()
    console = Console(width=160)

    n = build_collection(args.data, args.split, args.collection / args.split)
    # distinct captions, dev first: enough that no client runs out within the time
    queries = list(dict.fromkeys(t for split in ("dev", "test", "train") for t in load_flickr_layout(args.data,
                                                                                                     split).texts))
    encoders = {"torch": ("lite, PyTorch eager", "torch", ["--fp32-queries"]),
                "onnx": ("lite, ONNX Runtime fp32", "auto", ["--fp32-queries"]),
                "plain": ("lite, int8 text tower, dual scores only (--no-norm --rerank 0 --retriever dense)", "auto",
                          ["--no-norm", "--rerank", "0", "--retriever", "dense"]),
                "int8": ("lite, int8 text tower, default pipeline (hybrid, normalised, rerank top 16)", "auto", []),
                "dense": ("lite, int8 text tower, dense retriever (normalised, rerank top 16)", "auto",
                          ["--retriever", "dense"]),
                "rerank32": ("lite, int8 text tower, normalised, rerank top 32", "auto", ["--rerank", "32"]),
                "both-towers": ("lite, default pipeline, queries through both text towers (--both-towers)", "auto",
                                ["--both-towers"]),
                "multilingual": ("lite, default pipeline, queries in German, French, Czech (multilingual tower)",
                                 "auto", [])}
    table = Table(title=f"crossmodal serve: {n} Flickr8k photos, {args.clients} closed-loop clients, "
                        f"{args.seconds:.0f} s each, distinct dev captions, k={args.k}")
    for col in ("query encoder", "requests", "errors", "requests/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
                "queries/encode", "server cores busy"):
        table.add_column(col, justify="left" if col == "query encoder" else "right")
    settings = [(w, b) for w in args.workers or [None] for b in args.max_batch or [None]]
    # name -> (requests/s, p50, p99, the server's CPU ms per request) a round
    rounds: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    codes = [None, args.baseline] if args.baseline else [None]
    for turn, key, (workers, max_batch), code in itertools.product(range(args.rounds), args.only or list(encoders),
                                                                   settings, codes):
        name, backend, flags = encoders[key]
        flags = [*flags, *(["--workers", str(workers)] if workers else []),
                 *(["--max-batch", str(max_batch)] if max_batch else [])]
        if len(settings) > 1:
            name += f"; workers {workers or 'default'}, max batch {max_batch or 'default'}"
        name += BASELINE if code else ""
        latencies, errors, wall, mean_batch, cores = run_server(
            args.collection / args.split, backend, flags,
            foreign_queries(args.multi30k) if key == "multilingual" else queries, args, code)
        ms = np.asarray(latencies) * 1000
        rounds[name].append((len(ms) / wall, np.percentile(ms, 50), np.percentile(ms, 99),
                             1000 * cores * wall / len(ms)))
        table.add_row(name + (f" (round {turn + 1})" if args.rounds > 1 else ""), str(len(ms)), str(len(errors)),
                      f"{len(ms) / wall:.1f}", f"{np.percentile(ms, 50):.1f}", f"{np.percentile(ms, 90):.1f}",
                      f"{np.percentile(ms, 99):.1f}", f"{ms.max():.1f}", f"{mean_batch:.1f}", f"{cores:.2f}")
        for e in errors[:5]:
            console.print(f"{name}: error: {e}")
    console.print(table)
    median = {name: np.median(np.asarray(runs), axis=0) for name, runs in rounds.items()}
    if args.rounds > 1:
        medians = Table(title=f"medians over {args.rounds} rounds")
        for col in ("query encoder", "requests/s", "p50 ms", "p99 ms", "p99 ms by round"):
            medians.add_column(col, justify="left" if col == "query encoder" else "right")
        for name, runs in rounds.items():
            rate, p50, p99, _ = median[name]
            medians.add_row(name, f"{rate:.1f}", f"{p50:.1f}", f"{p99:.1f}", " / ".join(f"{r[2]:.1f}" for r in runs))
        console.print(medians)
    if args.baseline:
        ratios = Table(title=f"this checkout / the baseline ({args.baseline}), medians")
        for col in ("query encoder", "requests/s", "p50 ms", "p99 ms", "server CPU ms a request"):
            ratios.add_column(col, justify="left" if col == "query encoder" else "right")
        for name, figures in median.items():
            if not name.endswith(BASELINE):
                ratios.add_row(name, *(f"{a / b:.2f}x ({a:.1f} / {b:.1f})"
                                       for a, b in zip(figures, median[name + BASELINE], strict=True)))
        console.print(ratios)


if __name__ == "__main__":
    main()
