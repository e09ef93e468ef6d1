"""The server under hostile requests (issue 15): bounds checked before a body is read, bounded photo
decoding, bad numbers answered with a 4xx that fails no other request, uploads written atomically and
removed with their item, browser safety (same-origin writes, Host allow-list, headers), and deadlines for
slow or idle connections."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import SAMPLES, ColorEncoder
from crossmodal import Collection
from crossmodal.collection.sync import content_hash
from crossmodal.search.filters import Condition, parse_condition
from crossmodal.server import photos
from crossmodal.server.app import MAX_FILES, create_app
from crossmodal.server.batcher import SearchBatcher, SearchJob
from crossmodal.server.limits import Guard, allowed_hosts, uvicorn_options

KEY = "s3cret"
HUGE = 2 * 1024**3


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection of a few photos of its own (tests here replace and delete files), opened by the app
    through a relative path."""
    root = tmp_path_factory.mktemp("hardening")
    (root / "photos").mkdir()
    for name in sorted(os.listdir(SAMPLES / "photos"))[:6]:
        shutil.copy(SAMPLES / "photos" / name, root / "photos" / name)
    with Collection.open(root / "col") as c:
        c.index_folder(root / "photos", progress=False)
    return root


@pytest.fixture(scope="module")
def client(root: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        app = create_app("col", api_key=KEY, max_upload_mb=0.5)  # relative, as `crossmodal serve col` gives it
    with TestClient(app) as client:
        yield client


def _asgi(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, int]:
    """Send one request to an ASGI app chunk by chunk; (status, JSON answer, body bytes the app took)."""
    taken = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal taken
        if not chunks:
            await asyncio.sleep(3600)
        chunk = chunks.pop(0)
        taken += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:8000", **headers}.items()]}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), taken


# -- 8: bounds before authentication and before the body -------------------------------------------------

def test_key_and_declared_size_are_checked_before_the_body_is_read(root: Path) -> None:
    app = create_app(root / "col", api_key=KEY, max_upload_mb=1)
    multipart = {"content-type": "multipart/form-data; boundary=x"}
    status, answer, taken = _asgi(app, "POST", "/api/items", {**multipart, "content-length": str(HUGE)}, [b"x" * 65536])
    assert (status, taken) == (401, 0) and "API key" in answer["detail"]
    keyed = {**multipart, "content-length": str(HUGE), "x-api-key": KEY}
    status, answer, taken = _asgi(app, "POST", "/api/items", keyed, [b"x" * 65536])
    assert (status, taken) == (413, 0) and "limit" in answer["detail"]
    status, answer, taken = _asgi(app, "POST", "/api/search/image", {**multipart, "content-length": str(HUGE)},
                                  [b"x" * 65536])
    assert (status, taken) == (413, 0)
    status, _, _ = _asgi(app, "POST", "/api/search", {"content-length": "12abc"}, [b""])
    assert status == 400


def test_a_body_without_length_is_cut_off_at_the_limit(root: Path) -> None:
    app = create_app(root / "col", max_upload_mb=1)
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunk = b"y" * (256 * 1024)
    status, answer, taken = _asgi(app, "POST", "/api/search/image",
                                  {"content-type": "multipart/form-data; boundary=x", "transfer-encoding": "chunked"},
                                  [head] + [chunk] * 64)  # 16 MB offered
    assert status == 413 and "limit" in answer["detail"]
    assert taken <= 2 * 1024 * 1024 + len(chunk)  # the 1 MB upload limit + 1 MB of form, then one chunk


def test_query_photos_are_capped_from_their_header(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _png((9000, 9900))  # 89 MP, about 100 KB: decoding it would take hundreds of MB
    assert len(big) < 500_000

    def never(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(photos, "load_image", never)
    answer = client.post("/api/search/image", files={"file": ("big.png", big)})
    assert answer.status_code == 413 and "over the 40 MP limit for query photos" in answer.json()["detail"]


def test_query_photos_are_decoded_reduced() -> None:
    assert photos.query_photo(_png((4200, 3100), "RGB")).size == (1400, 1034)  # reduced by 3, sides stay >= 1024
    out = io.BytesIO()
    Image.new("RGB", (6000, 4000), (10, 20, 30)).save(out, format="JPEG")
    assert photos.query_photo(out.getvalue()).size == (3000, 2000)  # JPEG: decoded at half scale (draft)


def test_thumbnails_snap_to_fixed_sizes_cached_with_bounded_decodes(client: TestClient,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    added = client.post("/api/items", files={"files": ("wide.png", _png((3000, 2000), "RGB"))},
                        headers={"X-API-Key": KEY})
    assert added.status_code == 200, added.text
    item = added.json()["ids"][0]
    calls, running, most = [], [0], [0]
    real = photos.thumbnail

    def counted(*args):
        calls.append(args[-1])
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            return real(*args)
        finally:
            running[0] -= 1

    monkeypatch.setattr(photos, "thumbnail", counted)
    sizes = [16, 64, 100, 128, 200, 256, 300, 400, 512, 600, 800, 1024] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: client.get(f"/api/items/{item}/thumbnail", params={"size": s}), sizes))
    assert all(a.status_code == 200 for a in answers)
    sides = {max(Image.open(io.BytesIO(a.content)).size) for a in answers}
    assert sides == {128, 256, 512, 1024}
    assert most[0] <= photos.DECODES
    assert len(calls) <= 8 and set(calls) == {128, 256, 512, 1024}  # a few decodes, not one per request


# -- 9: out-of-range numbers, and one bad request in a batch ----------------------------------------------

@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "message"),
    [
        ("post", "/api/search", {"json": {"text": "x", "where": ["size>99999999999999999999999"]}}, 400,
         "outside SQLite's integer range"),
        ("post", "/api/search", {"json": {"text": "x", "where": ["size>abc"]}}, 400, "size takes a number"),
        ("post", "/api/search", {"json": {"text": "x", "where": ["size>>3"]}}, 400, "the value starts with '>'"),
        ("post", "/api/search", {"json": {"image_id": 10**30}}, 422, "image_id: Input should be less than"),
        ("post", "/api/search", {"json": {"terms": [{"image_id": 10**30}]}}, 422, "image_id"),
        ("post", "/api/search", {"content": b'{"text": "x", "min_score": NaN}',
                                 "headers": {"content-type": "application/json"}}, 422, "min_score"),
        ("post", "/api/search", {"content": b'{"text": "x", "terms": [{"text": "y", "weight": Infinity}]}',
                                 "headers": {"content-type": "application/json"}}, 422, "weight"),
        ("get", "/api/items/9223372036854775808", {}, 422, "item_id"),
        ("get", "/api/items/9223372036854775808/similar", {}, 422, "item_id"),
        ("get", "/api/items/9223372036854775808/thumbnail", {}, 422, "item_id"),
        ("delete", "/api/items/9223372036854775808", {"headers": {"X-API-Key": KEY}}, 422, "item_id"),
    ],
)
def test_out_of_range_numbers_get_a_clear_4xx(client: TestClient, method: str, url: str, kwargs: dict, status: int,
                                              message: str) -> None:
    answer = getattr(client, method)(url, **kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


def test_filters_refuse_numbers_sqlite_cannot_hold() -> None:
    assert parse_condition("size>9223372036854775807").value == 2**63 - 1
    with pytest.raises(ValueError, match="outside SQLite's integer range"):
        parse_condition("size>-9223372036854775809")


def test_a_failing_job_fails_alone_in_its_batch(tmp_path: Path) -> None:
    c = Collection.open(tmp_path / "col", model=ColorEncoder(dim=32))
    c.add_texts([f"w{i} w{i + 1}" for i in range(40)])
    batcher = SearchBatcher(c, max_batch=64, max_wait=0.2)
    sizes: list[int] = []
    batcher.on_batch = sizes.append
    bad = SearchJob(texts=[(1.0, "w1")], kind="text", where=(Condition("id", ">", 10**30),))
    gone = SearchJob(texts=[(1.0, "w2")], kind="text")
    gone.future.cancel()  # its client went away before the batch ran

    async def many() -> list:
        jobs = [bad, gone] + [SearchJob(texts=[(1.0, f"w{i}")], k=3, kind="text") for i in range(30)]
        return await asyncio.gather(*(batcher.search(job) for job in jobs), return_exceptions=True)

    try:
        answers = asyncio.run(many())
    finally:
        batcher.close()
    assert sizes[0] == 32  # they were batched together
    assert isinstance(answers[0], OverflowError) and isinstance(answers[1], asyncio.CancelledError)
    assert all(isinstance(a, list) and len(a) == 3 for a in answers[2:])


# -- 10 and 7: uploads into a collection opened by a relative path; a full disk; deletion -------------

def test_upload_with_a_relative_collection_path_answers_its_ids(client: TestClient, root: Path) -> None:
    answer = client.post("/api/items", files={"files": ("red.jpg", _jpeg((220, 20, 20)))}, headers={"X-API-Key": KEY})
    assert answer.status_code == 200, answer.text
    item = client.get(f"/api/items/{answer.json()['ids'][0]}").json()
    assert Path(item["path"]).parent == root / "col" / "uploads"


def test_a_full_disk_is_507_and_leaves_no_partial_upload(client: TestClient, root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    photo = _jpeg((20, 220, 20))
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    answer = client.post("/api/items", files={"files": ("green.jpg", photo)}, headers={"X-API-Key": KEY})
    assert answer.status_code == 507 and "disk full" in answer.json()["detail"]
    uploads = root / "col" / "uploads"
    assert not (uploads / f"{content_hash(photo)}.jpg").exists() and not list(uploads.glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    again = client.post("/api/items", files={"files": ("green.jpg", photo)}, headers={"X-API-Key": KEY})
    assert again.status_code == 200, again.text


def test_a_truncated_upload_left_by_an_old_crash_is_rewritten(client: TestClient, root: Path) -> None:
    photo = _jpeg((20, 20, 220))
    (root / "col" / "uploads" / f"{content_hash(photo)}.jpg").write_bytes(photo[:100])
    answer = client.post("/api/items", files={"files": ("blue.jpg", photo)}, headers={"X-API-Key": KEY})
    assert answer.status_code == 200, answer.text


def test_deleting_an_uploaded_item_deletes_its_file(client: TestClient, root: Path) -> None:
    answer = client.post("/api/items", files={"files": ("grey.jpg", _jpeg((120, 120, 120)))},
                         headers={"X-API-Key": KEY})
    item = answer.json()["ids"][0]
    path = Path(client.get(f"/api/items/{item}").json()["path"])
    assert path.is_file()
    assert client.delete(f"/api/items/{item}", headers={"X-API-Key": KEY}).status_code == 200
    assert not path.exists()
    indexed = client.post("/api/search", json={"text": "a dog", "k": 1}).json()["results"][0]
    assert client.delete(f"/api/items/{indexed['id']}", headers={"X-API-Key": KEY}).status_code == 200
    assert Path(indexed["path"]).is_file()  # a photo of an indexed folder is the user's: never deleted


def test_upload_count_is_bounded(client: TestClient) -> None:
    files = [("files", (f"{i}.jpg", _jpeg((i, i, i)))) for i in range(MAX_FILES + 1)]
    answer = client.post("/api/items", files=files, headers={"X-API-Key": KEY})
    assert answer.status_code == 413 and f"at most {MAX_FILES}" in answer.json()["detail"]


# -- 13: thumbnails read only the file that was indexed -------------------------------------------------

def test_a_photo_replaced_by_a_symlink_after_indexing_is_not_read(client: TestClient, root: Path) -> None:
    hits = client.post("/api/search", json={"text": "a photo", "k": 3, "path": f"{root / 'photos'}/*"}).json()
    hit = hits["results"][0]
    assert client.get(f"/api/items/{hit['id']}/thumbnail", params={"size": 512}).status_code == 200
    secret = root / "secret.png"
    secret.write_bytes(_png((40, 40)))
    path = Path(hit["path"])
    path.unlink()
    path.symlink_to(secret)
    answer = client.get(f"/api/items/{hit['id']}/thumbnail", params={"size": 1024})
    assert answer.status_code == 410 and "changed since it was indexed" in answer.json()["detail"]


# -- 12: browser safety ---------------------------------------------------------------------------------

def test_cross_site_writes_are_refused_without_a_key(root: Path) -> None:
    with TestClient(create_app(root / "col")) as client:
        photo = {"files": ("x.jpg", _jpeg((1, 2, 3)))}
        evil = client.post("/api/items", files=photo, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
        fetch = client.post("/api/texts", json=["hi"], headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch.status_code == 403
        assert client.delete("/api/items/1", headers={"Origin": "null"}).status_code == 403
        same = client.post("/api/search", json={"text": "a dog"}, headers={"Origin": "http://testserver",
                                                                             "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200
        assert client.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200  # reads


def test_a_loopback_server_answers_only_loopback_host_names(root: Path) -> None:
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("0.0.0.0", ["photos.lan"]) >= {"photos.lan"}
    with TestClient(create_app(root / "col", allowed_hosts=allowed_hosts("127.0.0.1", ["photos.lan"]))) as client:
        rebound = client.get("/api/info", headers={"Host": "evil.example"})
        assert rebound.status_code == 400 and "Host" in rebound.json()["detail"]
        for host in ("localhost:8000", "127.0.0.1", "[::1]:9000", "LOCALHOST", "photos.lan:80"):
            assert client.get("/api/info", headers={"Host": host}).status_code == 200, host


def test_responses_carry_the_security_headers(client: TestClient) -> None:
    for answer in (client.get("/"), client.get("/api/info"), client.get("/static/app.js"),
                   client.post("/api/items", headers={"Origin": "http://evil.example"})):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "img-src 'self' blob:" in policy


def test_the_page_needs_nothing_its_policy_blocks() -> None:
    """No inline script, style or handler in the page (the policy allows only the server's own files)."""
    static = Path(photos.__file__).parent / "static"
    html = (static / "index.html").read_text()
    assert "<style" not in html and not re.search(r"\sstyle=|\son[a-z]+=", html)
    assert all('src="/static/' in tag for tag in re.findall(r"<script[^>]*>", html))
    script = (static / "app.js").read_text()
    assert not re.search(r"\.style\b|innerHTML|eval\(|new Function|setAttribute\(\"on", script)


# -- 13: deadlines for slow and idle connections ----------------------------------------------------------

@pytest.fixture(scope="module")
def slow_server():
    """A uvicorn server with the header deadline and the Guard's body deadline at half a second."""
    import uvicorn

    async def echo(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    app = Guard(echo, api_key=None, keyed=lambda m, p: False, max_body=lambda m, p: 1000, body_seconds=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **uvicorn_options(header_seconds=0.5)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bytes:
    """Send ``trickle`` a byte every 0.1 s (then wait) until the server closes; what it answered. Fails if
    the server keeps the connection open longer than ``seconds``."""
    sock.settimeout(0.1)
    answer = b""
    end = time.time() + seconds
    while time.time() < end:
        if trickle:
            try:
                sock.sendall(trickle[:1])
                trickle = trickle[1:]
            except (BrokenPipeError, ConnectionResetError):  # closed after answering: read what it answered
                trickle = b""
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return answer
        if not data:
            return answer
        answer += data
    raise AssertionError(f"the connection is still open after {seconds} s")


def test_idle_and_slow_header_connections_are_closed(slow_server: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_server)) as idle:
        assert _closed_within(idle, 3) == b""
    with socket.create_connection(("127.0.0.1", slow_server)) as slow:
        assert _closed_within(slow, 3, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100) == b""
    with socket.create_connection(("127.0.0.1", slow_server)) as kept:  # answered, then idle: closed
        kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _closed_within(kept, 3).endswith(b"ok")


def test_a_slow_body_gets_408(slow_server: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_server)) as slow:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        answer = _closed_within(slow, 3, b"x" * 100)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer
    assert b"connection: close" in answer  # the rest of the body is not waited for


def test_serve_starts_uvicorn_with_the_deadlines_and_host_list(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from crossmodal.cli import app as cli

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    result = CliRunner().invoke(cli, ["serve", str(root / "col"), "--allowed-host", "photos.lan"])
    assert result.exit_code == 0, result.output
    assert seen["http"].header_seconds > 0 and seen["timeout_keep_alive"] <= 5
    guard = next(m for m in seen["app"].user_middleware if m.cls is Guard)
    assert guard.kwargs["hosts"] >= {"localhost", "127.0.0.1", "::1", "photos.lan"}


def test_serve_passes_its_workers_and_batch_size_to_the_batcher(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from crossmodal.cli import app as cli
    from crossmodal.server import app as server_app

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app))
    made: list[SearchBatcher] = []
    monkeypatch.setattr(server_app, "SearchBatcher", lambda *a, **kw: made.append(SearchBatcher(*a, **kw)) or made[-1])
    result = CliRunner().invoke(cli, ["serve", str(root / "col"), "--workers", "3", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    with TestClient(seen["app"], base_url="http://127.0.0.1") as client:  # serve allows loopback names only
        assert client.post("/api/search", json={"text": "a dog", "k": 2}).status_code == 200
        assert len(made[0]._threads) == 3 and made[0].max_batch == 2
        encoder = made[0].collection.encoder
        assert encoder.threads == max(1, (os.cpu_count() or 1) // 3)  # the workers share the cores
    assert CliRunner().invoke(cli, ["serve", str(root / "col"), "--workers", "0"]).exit_code == 2
