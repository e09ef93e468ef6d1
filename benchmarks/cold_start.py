"""Cold start: `crossmodal search "a dog"` as a fresh process, next to a floor script doing only the work.

    python benchmarks/cold_start.py [--photos 1000] [--runs 5] [--work runs/cold-start]

Builds (once, then reuses) a collection of ``--photos`` photos with the default model: Flickr8k photos from
../shared/datasets/flickr8k when present, else copies of samples/photos. Then times, each as a fresh process
and the median of ``--runs`` runs (interleaved, so a busy machine slows them alike): `crossmodal search
"a dog"` (the default ranking, the dense retriever, and the dual encoder's plain scores, which open no
reranker), the floor (import onnxruntime, tokenizers and numpy, open the text graph of the cached ONNX export,
tokenize, run, dot with the
memory-mapped vector file, the top 10 ids from SQLite, print), `crossmodal --help`, `info` and `--version`.
Python runs with its bytecode cache (in a temporary PYTHONPYCACHEPREFIX, one warm-up run first), as a pip
install has it, even where PYTHONDONTWRITEBYTECODE is set. Wall time moves with the machine's load; CPU time
(user + system) much less, so both are shown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "datasets" / "flickr8k" / "images"
SAMPLES = ROOT / "samples" / "photos"
QUERY = "a dog"

FLOOR = '''
import json
import sqlite3
import sys
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model, folder = sys.argv[1], sys.argv[2]
tokenizer = Tokenizer.from_file(model + "/tokenizer.json")
tokenizer.enable_truncation(128)
tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
options = ort.SessionOptions()
session = ort.InferenceSession(model + "/text.onnx", options, providers=["CPUExecutionProvider"])
tokens = tokenizer.encode_batch([sys.argv[3]])
feeds = {"input_ids": np.array([t.ids for t in tokens], dtype=np.int64),
         "attention_mask": np.array([t.attention_mask for t in tokens], dtype=np.int64),
         "token_type_ids": np.array([t.type_ids for t in tokens], dtype=np.int64)}
query = session.run(["embedding"], feeds)[0][0]
query /= np.linalg.norm(query)
db = sqlite3.connect(folder + "/items.sqlite")
state = json.loads(db.execute("SELECT value FROM meta WHERE key = 'vectors.image'").fetchone()[0])
rows = np.memmap(folder + "/vectors/" + state["file"], dtype=np.float32, mode="r",
                 shape=(state["rows"], len(query) + 1))
scores = rows[:, :-1] @ query
top = np.argsort(-scores)[:10]
ids = dict(db.execute("SELECT vector_row, id FROM items WHERE kind = 'image' AND vector_row IN (%s)"
                      % ",".join(map(str, top))))
for row in top:
    print(f"{scores[row]:.4f}\\t{ids.get(int(row))}")
'''


def photos(n: int) -> list[Path]:
    """``n`` photo files: Flickr8k's first ``n`` (sorted) when present, else the samples repeated."""
    if FLICKR.is_dir():
        found = sorted(FLICKR.glob("*.jpg"))[:n]
        if len(found) == n:
            return found
    samples = sorted(SAMPLES.glob("*.jpg"))
    return [samples[i % len(samples)] for i in range(n)]


def build(work: Path, n: int, cli: list[str]) -> Path:
    """The benchmark collection in ``work`` (copies of ``n`` photos, indexed), built once."""
    collection, folder = work / f"collection-{n}", work / f"photos-{n}"
    if (collection / "manifest.json").is_file():
        return collection
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(photos(n)):
        dst = folder / f"{i:05d}-{src.name}"
        if not dst.exists():
            shutil.copyfile(src, dst)
            os.utime(dst, ns=(i * 1_000_000_000 + 1, i * 1_000_000_000 + 1))  # copies differ in mtime only
    subprocess.run([*cli, "index", str(folder), "--collection", str(collection), "--quiet"], check=True)
    return collection


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh process running ``command``; its output is
    discarded and a failure stops the run. CPU time hardly moves with the machine's load, wall time does."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cold-start")
    args = parser.parse_args()

    from crossmodal.encoders.lite_spec import WEIGHTS
    from crossmodal.encoders.onnx_cache import cache_folder

    cli = [str(Path(sys.executable).with_name("crossmodal"))]
    collection = build(args.work, args.photos, cli)
    model = cache_folder(WEIGHTS)
    with tempfile.TemporaryDirectory() as tmp:
        floor = Path(tmp) / "floor.py"
        floor.write_text(FLOOR)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        commands = {
            f'search "{QUERY}"': [*cli, "search", QUERY, "--collection", str(collection)],
            "  --retriever dense": [*cli, "search", QUERY, "--collection", str(collection), "--retriever",
                                    "dense"],
            "  --no-norm --rerank 0 --retriever dense": [*cli, "search", QUERY, "--collection", str(collection),
                                                         "--no-norm", "--rerank", "0", "--retriever", "dense"],
            "floor script": [sys.executable, str(floor), str(model), str(collection), QUERY],
            "--help": [*cli, "--help"],
            "info": [*cli, "info", "--collection", str(collection)],
            "--version": [*cli, "--version"],
        }
        for command in commands.values():  # warm-up: bytecode cache, page cache
            timed(command, env)
        load = os.getloadavg()[0]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command, env))
    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    table = Table(title=f"Cold start, {args.photos} photos, median of {args.runs} fresh processes ({os.cpu_count()} "
                        f"cores, load average {load:.1f} -> {os.getloadavg()[0]:.1f})")
    for column in ("command", "wall s", "min wall s", "x floor", "CPU s", "CPU x floor"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, values in times.items():
        table.add_row(name, f"{wall[name]:.3f}", f"{min(w for w, _ in values):.3f}",
                      f"{wall[name] / wall['floor script']:.2f}", f"{cpu[name]:.3f}",
                      f"{cpu[name] / cpu['floor script']:.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
