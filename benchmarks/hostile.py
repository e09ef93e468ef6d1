"""Load test of `crossmodal serve` with hostile requests mixed into normal searches (issue 15).

    python benchmarks/hostile.py [--clients 8] [--seconds 65] [--slowloris 40]

Builds (once, cached in runs/) a collection of the 1,000 Flickr8k dev photos plus one 9000x9900 PNG
(89 MP, about 100 KB), starts `crossmodal serve` with an API key in a subprocess on a free loopback
port, and for a fixed time runs ``--clients`` closed-loop clients sending text searches (distinct dev
captions) while other clients send, each in a loop: uploads declaring 2 GiB without the key, photo
searches declaring 2 GiB, chunked bodies without a length, a query PNG of 89 MP, filters and ids past
SQLite's integer range, thumbnails of the 89 MP photo (and of others) at random sizes, cross-site writes,
a foreign Host name, and slowloris connections (a header byte per second; a body byte per second).
Prints the normal requests sent and failed (must be 0), their latency, each hostile kind with its status
codes, and the server's peak RSS (VmHWM) against the documented bound.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from server_process import serving

from crossmodal import Collection
from crossmodal.sources.datasets import load_flickr_layout

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
HUGE = 2 * 1024**3
BIG_SIDE = (9000, 9900)
# The bound the server's peak RSS is held to: its RSS after start-up and warm-up, plus two decodes at once
# of the largest photo a thumbnail may read (90 MP as RGBA, 4 bytes a pixel), the 64 MB thumbnail cache,
# and 200 MB for request bodies (a 20 MB upload limit), sockets and allocator slack.
DECODE_BYTES = 2 * 90_000_000 * 4
SLACK_BYTES = (64 + 200) * 1024**2


def build_collection(data_root: Path, folder: Path) -> tuple[int, int]:
    """Index the dev photos (as links) and one 89 MP PNG into ``folder``; (photos, the PNG's item id)."""
    links = folder.parent / f"{folder.name}-photos"
    links.mkdir(parents=True, exist_ok=True)
    for p in load_flickr_layout(data_root, "dev").images:
        if not (links / p.name).exists():
            (links / p.name).symlink_to(p)
    big = links / "big-89mp.png"
    if not big.exists():
        Image.new("RGB", BIG_SIDE, (90, 120, 150)).save(big)
    with Collection.open(folder) as c:
        c.index_folder(links, progress=True)
        return c.store.count("image"), c.store.image_by_path(os.path.abspath(big)).id


async def exchange(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> int:
    """One request on a fresh connection; the answer's status (0: no answer, the connection closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split(b" ", 2)[1]) if line else 0
    except (OSError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def multipart(name: str, filename: str, data: bytes) -> tuple[dict[str, str], bytes]:
    body = (f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'.encode()
            + data + b"\r\n--b--\r\n")
    return {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(len(body))}, body


class Run:
    """What one load run saw: normal latencies and failures, hostile statuses by kind."""

    def __init__(self, seconds: float) -> None:
        self.stop_at = time.perf_counter() + seconds
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.hostile: dict[str, Counter] = defaultdict(Counter)

    def going(self) -> bool:
        return time.perf_counter() < self.stop_at


async def normal_client(run: Run, port: int, queries: list[str], k: int) -> None:
    """Closed-loop text searches on one keep-alive connection (a new one if the server closes it)."""
    reader = writer = None
    for query in queries:
        if not run.going():
            break
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"text": query, "k": k}).encode()
        start = time.perf_counter()
        writer.write(head("POST", "/api/search", {"Content-Type": "application/json",
                                                  "Content-Length": str(len(body))}) + body)
        try:
            answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(re.search(rb"(?i)content-length: *(\d+)", answer_head)[1])
            answer = await reader.readexactly(length)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, TypeError) as e:
            run.failures.append(repr(e))
            writer.close()
            reader = writer = None
            continue
        status = int(answer_head.split(b" ", 2)[1])
        if status != 200 or len(json.loads(answer)["results"]) != k:
            run.failures.append(f"{status}: {answer[:80]!r}")
        else:
            run.latencies.append(time.perf_counter() - start)
    if writer is not None:
        writer.close()


async def hostile_loop(run: Run, kind: str, send, pause: float = 0.05) -> None:
    while run.going():
        run.hostile[kind][await send()] += 1
        await asyncio.sleep(pause)


async def chunked_flood(port: int) -> int:
    """A photo search whose body has no length and never ends: sent until the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    answer = asyncio.create_task(reader.readline())
    try:
        writer.write(head("POST", "/api/search/image", {"Content-Type": "multipart/form-data; boundary=b",
                                                       "Transfer-Encoding": "chunked"}))
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        for _ in range(2048):  # up to 128 MB, unless the server answers first
            if answer.done():
                break
            writer.write(chunk)
            await writer.drain()
    except OSError:  # the server closed the connection after answering
        pass
    try:
        line = await asyncio.wait_for(answer, 30)
        return int(line.split(b" ", 2)[1]) if line else 0
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


async def slowloris(run: Run, port: int, kind: str, opening: bytes, closed_after: list[float]) -> None:
    """Open a connection, send ``opening`` then a byte a second; when the server answers or closes it, note
    how long it held out and the status (0: closed without an answer), and start again."""
    while run.going():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.perf_counter()
        writer.write(opening)
        line = None
        try:
            while run.going() and line is None:
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    writer.write(b"a")
        except OSError:
            line = b""
        finally:
            writer.close()
        if line is not None:
            closed_after.append(time.perf_counter() - start)
            run.hostile[kind][int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/") else 0] += 1


async def attack(port: int, run: Run, args: argparse.Namespace, queries: list[str], big_id: int, ids: list[int],
                 big_png: bytes, closed_after: dict[str, list[float]]) -> None:
    rng = random.Random(0)
    upload_headers, upload_body = multipart("files", "x.jpg", b"\xff\xd8" + b"x" * 1000)
    png_headers, png_body = multipart("file", "big.png", big_png)
    bad = [{"text": "a dog", "where": ["size>99999999999999999999999"]}, {"image_id": 10**30},
           {"terms": [{"image_id": -(10**30)}]}]

    def search(payload: dict) -> bytes:
        body = json.dumps(payload).encode()
        return head("POST", "/api/search", {"Content-Type": "application/json",
                                            "Content-Length": str(len(body))}) + body

    senders = {
        "upload declaring 2 GiB, no key": lambda: exchange(port, head("POST", "/api/items", {
            "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(HUGE)}), b"x" * 65536),
        "photo search declaring 2 GiB": lambda: exchange(port, head("POST", "/api/search/image", {
            "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(HUGE)}), b"x" * 65536),
        "chunked body without length": lambda: chunked_flood(port),
        "query PNG 9000x9900 (89 MP)": lambda: exchange(port, head("POST", "/api/search/image", png_headers),
                                                        png_body),
        "filter / id past int64": lambda: exchange(port, search(rng.choice(bad))),
        "item id 2**63 in the path": lambda: exchange(port, head("GET", "/api/items/9223372036854775808", {})),
        "thumbnail of the 89 MP photo, random size": lambda: exchange(port, head(
            "GET", f"/api/items/{big_id}/thumbnail?size={rng.randint(16, 1024)}", {})),
        "thumbnail of a random photo, random size": lambda: exchange(port, head(
            "GET", f"/api/items/{rng.choice(ids)}/thumbnail?size={rng.randint(16, 1024)}", {})),
        "cross-site upload (Origin: evil), with key": lambda: exchange(port, head("POST", "/api/items", {
            **upload_headers, "Origin": "http://evil.example", "X-API-Key": KEY}), upload_body),
        "Host: evil.example (DNS rebinding)": lambda: exchange(port, head("GET", "/api/info", {}).replace(
            b"Host: 127.0.0.1", b"Host: evil.example")),
    }
    shares = [queries[i::args.clients] for i in range(args.clients)]
    tasks = [normal_client(run, port, s, args.k) for s in shares]
    tasks += [hostile_loop(run, kind, send) for kind, send in senders.items()]
    for i in range(args.slowloris):
        kind, opening = (("slowloris headers (a byte/s)", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ") if i % 2 == 0
                         else ("slowloris body (a byte/s)", head("POST", "/api/search", {
                             "Content-Type": "application/json", "Content-Length": "100000"})))
        tasks.append(slowloris(run, port, kind, opening, closed_after[kind]))
    await asyncio.gather(*tasks)


async def attack_free(port: int, run: Run, args: argparse.Namespace, queries: list[str]) -> None:
    """Warm-up: normal searches only, not counted."""
    await asyncio.gather(*(normal_client(run, port, queries[i::args.clients], args.k) for i in range(args.clients)))


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/flickr8k")
    parser.add_argument("--clients", type=int, default=8, help="normal closed-loop search clients")
    parser.add_argument("--seconds", type=float, default=65.0, help="length of the hostile run (the body "
                        "deadline is 60 s, so slow bodies are answered within it)")
    parser.add_argument("--slowloris", type=int, default=40, help="slow connections held at once")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of normal searches alone first")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--collection", type=Path, default=ROOT / "runs" / "bench-hostile" / "dev")
    args = parser.parse_args()
    console = Console(width=160)

    n, big_id = build_collection(args.data, args.collection)
    queries = list(dict.fromkeys(t for s in ("dev", "test", "train") for t in load_flickr_layout(args.data, s).texts))
    with Collection.open(args.collection) as c:
        ids = [int(i) for i in c.store.ids_where("kind = 'image' AND id != ?", (big_id,))]
    out = io.BytesIO()
    Image.new("L", BIG_SIDE).save(out, format="PNG")
    big_png = out.getvalue()

    with serving(["serve", str(args.collection), "--api-key", KEY]) as (server, port):
        base = f"http://127.0.0.1:{port}"
        asyncio.run(attack_free(port, Run(5.0), args, queries[:400]))  # warm-up, not counted
        baseline = Run(args.baseline)
        asyncio.run(attack_free(port, baseline, args, queries[400:10_000]))
        before = memory(server.pid)
        run = Run(args.seconds)
        closed_after: dict[str, list[float]] = defaultdict(list)
        asyncio.run(attack(port, run, args, queries[10_000:], big_id, ids, big_png, closed_after))
        after = memory(server.pid)
        alive = server.poll() is None and httpx.get(f"{base}/health", timeout=5).status_code == 200

    bound = before["VmHWM"] + DECODE_BYTES + SLACK_BYTES
    table = Table(title=f"crossmodal serve under hostile load: {n} photos, {args.clients} normal clients, "
                        f"{args.seconds:.0f} s, {args.slowloris} slow connections")
    table.add_column("requests", justify="left")
    table.add_column("sent", justify="right")
    table.add_column("answers (status: count)", justify="left")
    for name, phase in ((f"normal text searches, alone ({args.baseline:.0f} s before)", baseline),
                        ("normal text searches, under the hostile load", run)):
        ms = np.asarray(phase.latencies) * 1000
        table.add_row(name, str(len(phase.latencies) + len(phase.failures)),
                      f"failed {len(phase.failures)}; 200: {len(phase.latencies)}; p50 {np.percentile(ms, 50):.0f} ms, "
                      f"p99 {np.percentile(ms, 99):.0f} ms, max {ms.max():.0f} ms")
    for kind, statuses in run.hostile.items():
        extra = ""
        if closed_after.get(kind):
            held = np.asarray(closed_after[kind])
            extra = f"; held {np.median(held):.1f} s median, {held.max():.1f} s max"
        table.add_row(kind, str(sum(statuses.values())),
                      ", ".join(f"{code or 'closed'}: {count}" for code, count in sorted(statuses.items())) + extra)
    console.print(table)
    mb = 1024**2
    console.print(f"server peak RSS (VmHWM): {after['VmHWM'] / mb:.0f} MB "
                  f"(after warm-up {before['VmHWM'] / mb:.0f} MB; "
                  f"bound {bound / mb:.0f} MB = warm-up + 2 decodes of 90 MP RGBA + 264 MB): "
                  f"{'within' if after['VmHWM'] <= bound else 'OVER'}; RSS at the end {after['VmRSS'] / mb:.0f} MB; "
                  f"server {'still healthy' if alive else 'NOT HEALTHY'}")
    for failure in (baseline.failures + run.failures)[:5]:
        console.print(f"normal request failed: {failure}")
    if baseline.failures or run.failures or not alive or after["VmHWM"] > bound:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
