"""The HTTP API and web page (FastAPI): search by text, photo upload, item id or weighted mixes;
add and delete items; health, readiness and Prometheus metrics.

Every bad request gets a 4xx whose ``detail`` says what to fix; the server keeps serving.
"""

import asyncio
import errno
import gc
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from starlette.concurrency import run_in_threadpool
from threadpoolctl import threadpool_limits

from .. import __version__
from ..collection.atomic import atomic_write
from ..collection.collection import Collection, Hit
from ..collection.duplicates import find_duplicates
from ..collection.moments import is_moment
from ..collection.paths import shown
from ..collection.searching import hit_of
from ..collection.sharded import ShardedCollection, is_sharded, read_manifest
from ..collection.sync import content_hash
from ..defaults import DEFAULT_SHARD_TIMEOUT, DUPLICATE_THRESHOLD
from ..encoders import Encoder, load_encoder
from ..encoders.onnx import OnnxEncoder
from ..search.filters import BUILT_IN, INT64, parse_condition
from ..search.pipeline import Ranking
from ..search.understand import Understood
from ..sources.images import ImageError, is_image_path, load_image
from ..sources.photo_files import open_indexed
from . import photos
from .batcher import SearchBatcher, SearchJob
from .limits import Guard
from .metrics import Metrics, MetricsMiddleware

STATIC = Path(__file__).parent / "static"
MAX_K = 200
MAX_OFFSET = 10_000
MAX_RERANK = 200
MAX_FILES = 16  # photos per upload request
MAX_GROUPS = 1000  # duplicate groups per answer
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo"}
JSON_BODY = 1024 * 1024  # the largest body of a request that carries no photo
# Item ids are SQLite integers: a larger number can never name an item and cannot even be looked up.
ItemId = Annotated[int, Field(ge=0, le=INT64[1], description="A stored item's id.")]


class TermIn(BaseModel):
    """One weighted part of a query: a text or a stored item (by id)."""

    text: str | None = Field(None, max_length=2000)
    image_id: ItemId | None = None
    weight: float = Field(1.0, ge=-10, le=10, allow_inf_nan=False)

    @model_validator(mode="after")
    def one_of(self) -> "TermIn":
        if (self.text is None) == (self.image_id is None):
            raise ValueError("each term needs exactly one of 'text' or 'image_id'")
        return self


class SearchIn(BaseModel):
    """A search: a text, an item id ("more like this"), extra weighted terms, filters and a page."""

    text: str | None = Field(None, max_length=2000, description="What to look for, in words.")
    image_id: ItemId | None = Field(None, description="Find items like this stored item.")
    terms: list[TermIn] = Field(default_factory=list, max_length=16)
    k: int = Field(20, ge=1, le=MAX_K, description="Results per page.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Results to skip (paging).")
    kind: Literal["image", "text", "video"] = "image"
    path: str | None = Field(None, max_length=1000, description="Glob on stored paths.")
    where: list[str] = Field(default_factory=list, max_length=16, description='Conditions like "album=paris".')
    norm: bool | None = Field(None, description="Nearest-neighbour score normalisation (false: the plain score); "
                              "default: the server's.")
    rerank: int | None = Field(None, ge=0, le=MAX_RERANK, description="Re-score the top N with the reranker "
                               "(0: off); default: the server's.")
    min_score: float | None = Field(None, allow_inf_nan=False,
                                    description="Drop results scoring under this; default: the server's.")
    retriever: Literal["dense", "keyword", "sparse", "hybrid"] | None = Field(
        None, description="Where candidates come from: dense (vectors), keyword (BM25 over file names, folders, "
        "texts and fields), sparse (learned word weights) or hybrid (dense plus keyword evidence and the photos' "
        "predicted caption words); default: the server's.")
    both_towers: bool | None = Field(None, description="Encode an English text through both of the model's text "
                                     "towers, blended as stored captions are: better answers for about twice the "
                                     "encoding time; default: the server's.")
    understand: bool = Field(True, description="Read a year or date in text as a filter on the date taken, and a "
                             "place the photos know (country, region, city) as a filter on it; the answer's "
                             "'understood' says what was read. false: every word goes to the model.")
    diverse: float | None = Field(None, ge=0, le=1, description="Spread the page over different items: maximal "
                                  "marginal relevance at this lambda (1: off, lower: more diverse); default: the "
                                  "server's.")

    def ranking(self, default: Ranking) -> Ranking:
        """The request's ranking options, the server's where it sets none."""
        return Ranking(norm=default.norm if self.norm is None else self.norm,
                       rerank=default.rerank if self.rerank is None else self.rerank,
                       min_score=default.min_score if self.min_score is None else self.min_score,
                       diversity=default.diversity if self.diverse is None else self.diverse,
                       retriever=default.retriever if self.retriever is None else self.retriever,
                       both_towers=default.both_towers if self.both_towers is None else self.both_towers)


@pydantic_dataclass
class HitOut(Hit):
    """A search result as the API returns it: the collection's ``Hit`` plus its thumbnail URL."""

    thumbnail: str | None = None


class SearchOut(BaseModel):
    results: list[HitOut]
    understood: list[dict[str, Any]] = Field(default_factory=list, description="Dates and places read from the "
                                             "text: words, field, value, and as (filter, or ignored and why).")
    k: int
    offset: int
    took_ms: float
    partial: bool = Field(False, description="Some shards of a sharded collection did not answer in time: these "
                          "are the best results of the others.")
    missing_shards: list[int] = Field(default_factory=list, description="The shards that did not answer.")


def create_app(collection: str | Path, api_key: str | None = None, max_upload_mb: float = 20.0,
               max_batch: int | None = None, model: str | None = None, workers: int | None = None,
               int8_queries: bool = False, ranking: Ranking | None = None,
               allowed_hosts: Iterable[str] | None = None, ray_address: str | None = None, ray: bool = False,
               shard_timeout: float | None = DEFAULT_SHARD_TIMEOUT) -> FastAPI:
    """Build the app over one collection; the model loads once, at start. ``model`` may name another
    backend of the collection's model (e.g. its ONNX export); a different model is refused. ``workers``
    batcher threads encode and search (default: one per core, each on one-thread ONNX Runtime sessions,
    or one for a PyTorch model, whose own thread pool already uses every core; an ONNX model's sessions share
    the cores among the workers), each batch at most
    ``max_batch`` queries (default 8 with several workers, 32 with one). ``int8_queries`` encodes queries
    with a lite model's int8 text tower when no ``model`` is given (see ``load_encoder``). ``ranking`` holds
    the defaults of requests that set no ranking options. ``allowed_hosts``: the Host names it answers
    (default: any; ``crossmodal serve`` bound to loopback allows only loopback names, see ``limits.py``).
    A sharded collection's search waits ``shard_timeout`` seconds for each shard and answers without the late
    ones (``partial`` in the response); with ``ray`` its shards are Ray actors (on the cluster at ``ray_address``)."""
    ranking = ranking or Ranking()
    # Absolute, as indexing stores paths: an upload's stored path must compare equal to the one it wrote.
    collection = Path(os.path.abspath(Path(collection).expanduser()))
    state: dict[str, Any] = {}
    lock = threading.RLock()  # one SQLite connection, shared by the worker threads
    metrics = Metrics()
    max_upload = int(max_upload_mb * 1024 * 1024)
    decodes = asyncio.Semaphore(photos.DECODES)
    thumbnails = photos.ThumbnailCache()
    upload_lock = threading.Lock()  # two uploads of one photo write the same file

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        blas = threadpool_limits(1, user_api="blas")  # see batcher.py: no BLAS pool spinning against the model's
        switch = sys.getswitchinterval()
        # The batcher's threads hand each request back to the event loop; with the default 5 ms GIL switch
        # interval every hand-off could wait that long behind the loop's own Python work.
        sys.setswitchinterval(0.0005)
        chosen: str | Encoder | None = model
        if int8_queries and model is None:
            chosen = load_encoder(read_manifest(Path(collection)).model, int8_text=True)
        if ray:
            from ..distributed.shards import open_on_ray

            c = await run_in_threadpool(open_on_ray, collection, chosen, ray_address, shard_timeout)
        elif is_sharded(collection):
            c = ShardedCollection.open(collection, model=chosen, timeout=shard_timeout)
        else:
            c = Collection.open(collection, model=chosen, create=False)
        c.lock = lock  # searches take it only around the store, so model calls of several workers overlap
        state["collection"] = c
        encoder = c.encoder  # load the model now, not on the first request
        n = workers or 1
        if isinstance(encoder, OnnxEncoder):  # by default a batch per core, one thread each
            n = workers or os.cpu_count() or 1
            encoder.use_threads(max(1, (os.cpu_count() or 1) // n))  # its multilingual tower's too
        if encoder.multilingual is not None:
            await run_in_threadpool(encoder.multilingual.warm)
        # With several workers a small batch bounds how long a request waits behind another one
        # (16 clients, int8 text: p99 106 -> 86 ms); one PyTorch worker gains more from large batches.
        # Decodes run on threads of their own: each thread's malloc arena keeps what a large decode freed, so
        # a few threads reuse that memory where the shared pool's 40 would each keep some.
        state["decoder"] = ThreadPoolExecutor(photos.DECODES, thread_name_prefix="decode")
        state["batcher"] = SearchBatcher(c, max_batch=max_batch or (8 if n > 1 else 32),
                                         on_batch=metrics.batch_size.observe, workers=n)
        await run_in_threadpool(_locked, c.refresh_indexes)
        gc.freeze()  # the model and index stay for the process's life: keep them out of every GC pass
        state["ready"] = True
        yield
        state["ready"] = False
        state["batcher"].close()
        state["decoder"].shutdown()
        c.close()
        blas.restore_original_limits()
        sys.setswitchinterval(switch)

    def _locked(fn: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return fn(*args, **kwargs)

    app = FastAPI(title="crossmodal", version=__version__, lifespan=lifespan,
                  description="Cross-modal search over one collection: photos by text, by photo, by example.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def keyed(method: str, path: str) -> bool:  # every write but a search needs the key
        return method not in ("GET", "HEAD", "OPTIONS") and not path.startswith("/api/search")

    def max_body(method: str, path: str) -> int:
        if path == "/api/items" and method == "POST":
            return MAX_FILES * max_upload + JSON_BODY
        return max_upload + JSON_BODY if path in ("/api/search/image", "/api/texts") else JSON_BODY

    app.add_middleware(Guard, api_key=api_key, keyed=keyed, max_body=max_body,
                       hosts=None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                    for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    async def col() -> Collection:  # async: FastAPI runs a plain def dependency on a thread, per request
        if not state.get("ready"):
            raise HTTPException(503, "starting up: the model is loading")
        return state["collection"]

    def known_fields(c: Collection) -> set[str]:
        return _field_names(c, c.store.generation)

    @lru_cache(maxsize=4)
    def _field_names(c: Collection, generation: int) -> set[str]:
        return _locked(c.store.field_names)

    def check_filters(c: Collection, where: list[str]) -> list[Any]:
        conditions = []
        for spec in where:
            try:
                cond = parse_condition(spec)
            except ValueError as e:
                raise HTTPException(400, str(e)) from None
            if cond.key not in BUILT_IN and cond.key not in known_fields(c):
                known = sorted(known_fields(c) | BUILT_IN)
                raise HTTPException(400, f"unknown filter field {cond.key!r}; known: {', '.join(known)}")
            conditions.append(cond)
        return conditions

    def stored_vector(c: Collection, item_id: int) -> tuple[np.ndarray, str]:
        """A stored item's vector and kind (a 404 for an unknown id)."""
        try:
            return _locked(c.store.vector, item_id), _locked(c.store.get, [item_id])[item_id].kind
        except KeyError:
            raise HTTPException(404, f"no item with id {item_id}") from None

    async def run_search(job: SearchJob, body: SearchIn, read: Understood | None = None) -> JSONResponse:
        start = time.perf_counter()
        job.k, job.kind, job.path, job.ranking = body.k + body.offset, body.kind, body.path, body.ranking(ranking)
        job.where = tuple(check_filters(state["collection"], body.where)) + tuple(read.conditions if read else ())
        try:
            hits = await state["batcher"].search(job)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        # Built as plain JSON (the shape of SearchOut): validating 20 result models per request took as much
        # of the event loop as all the rest of a search.
        partial = {"partial": True, "missing_shards": list(hits.missing_shards)} if hits.partial else {}
        return JSONResponse({"results": [_hit_json(h) for h in hits[body.offset:]], "k": body.k, **partial,
                             "understood": read.notes if read else [],
                             "offset": body.offset, "took_ms": (time.perf_counter() - start) * 1000})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", summary="Liveness: the process answers.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded and collection open.")
    async def ready() -> JSONResponse:
        if not state.get("ready"):
            return JSONResponse({"status": "starting"}, status_code=503)
        c = state["collection"]
        return JSONResponse({"status": "ready", "model": c.manifest.model,
                             "images": _locked(c.store.count, "image"), "texts": _locked(c.store.count, "text")})

    @app.get("/metrics", summary="Prometheus metrics.", include_in_schema=False)
    async def prometheus() -> Response:
        if state.get("ready"):
            c = state["collection"]
            for kind in ("image", "text"):
                metrics.items.labels(kind).set(_locked(c.store.count, kind))
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/api/info", summary="The collection: model, counts, index.")
    async def info(c: Annotated[Collection, Depends(col)]) -> dict[str, Any]:
        facts = await run_in_threadpool(_locked, c.info)
        facts["fields"] = sorted(known_fields(c))
        return facts

    @app.post("/api/search", response_model=SearchOut, summary="Search by text, item id and weighted terms.")
    async def search(body: SearchIn, c: Annotated[Collection, Depends(col)]) -> JSONResponse:
        job, read = SearchJob(), None
        if body.text is not None:
            if not body.text.strip():
                raise HTTPException(400, "text is empty: type something to search for")
            if body.understand:
                read = await run_in_threadpool(c.understand, body.text, "text" if body.kind == "text" else "image")
            job.texts.append((1.0, read.text if read else body.text))
        if body.image_id is not None:
            job.vectors.append((1.0, *stored_vector(c, body.image_id)))
            job.exclude.append(body.image_id)
        for term in body.terms:
            if term.text is not None:
                if not term.text.strip():
                    raise HTTPException(400, "a term's text is empty")
                job.texts.append((term.weight, term.text))
            else:
                job.vectors.append((term.weight, *stored_vector(c, term.image_id)))
                if term.weight > 0:
                    job.exclude.append(term.image_id)
        if not (job.texts or job.vectors):
            raise HTTPException(400, "nothing to search for: give text, image_id or terms")
        return await run_search(job, body, read)

    @app.post("/api/search/image", response_model=SearchOut, summary="Search by an uploaded photo.")
    async def search_image(c: Annotated[Collection, Depends(col)], file: Annotated[UploadFile, File()],
                           k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
                           offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
                           kind: Annotated[Literal["image", "text", "video"], Form()] = "image",
                           path: Annotated[str | None, Form(max_length=1000)] = None,
                           where: Annotated[list[str] | None, Form(max_length=16)] = None,
                           norm: Annotated[bool | None, Form()] = None,
                           rerank: Annotated[int | None, Form(ge=0, le=MAX_RERANK)] = None,
                           min_score: Annotated[float | None, Form()] = None,
                           diverse: Annotated[float | None, Form(ge=0, le=1)] = None) -> JSONResponse:
        """The form's fields mean what they mean in ``/api/search``; ``where`` may be given several times."""
        body = SearchIn(k=k, offset=offset, kind=kind, path=path, where=where or [], norm=norm, rerank=rerank,
                        min_score=min_score, diverse=diverse)
        data = await read_upload(file)
        same = await run_in_threadpool(_locked, c.store.by_hash, content_hash(data), "image")
        image = await decoded(photos.query_photo, data)
        job = SearchJob(images=[(1.0, image)], exclude=[it.id for it in same])
        return await run_search(job, body)

    @app.get("/api/items/{item_id}/similar", response_model=SearchOut, summary="More like this item.")
    async def similar(item_id: Annotated[int, PathParam(ge=0, le=INT64[1])], c: Annotated[Collection, Depends(col)],
                      k: int = 20, offset: int = 0, kind: Literal["image", "text", "video"] = "image") -> JSONResponse:
        if not 1 <= k <= MAX_K or not 0 <= offset <= MAX_OFFSET:
            raise HTTPException(422, f"k must be 1..{MAX_K} and offset 0..{MAX_OFFSET}")
        job = SearchJob(vectors=[(1.0, *stored_vector(c, item_id))], exclude=[item_id])
        return await run_search(job, SearchIn(k=k, offset=offset, kind=kind))

    @app.get("/api/items/{item_id}", response_model=HitOut, summary="One item's metadata.")
    async def item(item_id: Annotated[int, PathParam(ge=0, le=INT64[1])], c: Annotated[Collection, Depends(col)]
                   ) -> HitOut:
        found = _locked(c.store.get, [item_id]).get(item_id)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return _hit(hit_of(found, 1.0, found.kind))

    @app.get("/api/items/{item_id}/thumbnail", summary="A JPEG thumbnail of a stored photo.")
    async def thumbnail(item_id: Annotated[int, PathParam(ge=0, le=INT64[1])], c: Annotated[Collection, Depends(col)],
                        size: int = 256) -> Response:
        """``size`` is snapped up to the next of a few fixed sizes (128, 256, 512, 1024), each cached, so
        requests at many sizes of one large photo cost a few decodes, not one each."""
        if not 16 <= size <= 1024:
            raise HTTPException(422, "size must be 16..1024")
        data = await rendered(stored_photo(c, item_id), photos.snap(size))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    def stored_photo(c: Collection, item_id: int) -> Any:
        """A stored photo's item (a 404 for an unknown id or a text)."""
        found = _locked(c.store.get, [item_id]).get(item_id)
        if found is None or found.kind != "image":
            raise HTTPException(404, f"no photo with id {item_id}")
        return found

    async def rendered(found: Any, side: int) -> bytes:
        """A stored photo as a JPEG of at most ``side`` pixels, from the cache or decoded (a 410 when unreadable)."""
        key = (found.path, found.hash, side)

        def render() -> bytes:  # the cache is read again here: a request that waited for a decode may find it done
            data = thumbnails.get(key)
            if data is None and is_moment(found):
                data = photos.moment_thumbnail(found.fields["video"], found.size, found.mtime, found.fields["t"], side)
            elif data is None:
                data = photos.thumbnail(found.path, found.size, found.mtime, side)
                thumbnails.put(key, data)
            return data

        return thumbnails.get(key) or await decoded(render, status=410, message="the photo can no longer be read")

    @app.get("/api/items/{item_id}/photo", summary="A stored photo's file, for viewing.")
    async def photo(item_id: Annotated[int, PathParam(ge=0, le=INT64[1])], c: Annotated[Collection, Depends(col)]
                    ) -> Response:
        """The file that was indexed, as it is, when browsers show its format and it is at most
        ``photos.MAX_ORIGINAL`` bytes; otherwise (HEIC, TIFF, a huge file) a JPEG of at most 1024 pixels."""
        found = stored_photo(c, item_id)
        try:
            original = await run_in_threadpool(photos.original, found.path, found.size, found.mtime)
        except ImageError as e:
            raise HTTPException(410, f"the photo can no longer be read: {e}") from None
        headers = {"Cache-Control": "private, max-age=3600"}
        if original is None:
            data = await rendered(found, photos.THUMBNAIL_SIDES[-1])
            return Response(data, media_type="image/jpeg", headers=headers)
        file, media_type = original
        return StreamingResponse(photos.chunks(file, found.size), media_type=media_type,
                                 headers={**headers, "Content-Length": str(found.size)})

    @app.get("/api/items/{item_id}/video", summary="The video file of a stored moment, for playing (Range requests).")
    async def video(item_id: Annotated[int, PathParam(ge=0, le=INT64[1])], c: Annotated[Collection, Depends(col)]
                    ) -> Response:
        """The indexed video file a moment comes from, served in ranges so that a player can seek to the moment
        (a 404 for a photo or text, a 410 when the file changed or is gone since it was indexed)."""
        found = stored_photo(c, item_id)
        if not is_moment(found):
            raise HTTPException(404, f"item {item_id} is not a moment of a video")
        path = found.fields["video"]
        try:
            await run_in_threadpool(lambda: open_indexed(path, found.size, found.mtime).close())
        except ImageError as e:
            raise HTTPException(410, f"the video can no longer be read: {e}") from None
        media_type = VIDEO_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/duplicates", summary="Groups of photos that are copies of each other (exact or near).")
    async def duplicates(c: Annotated[Collection, Depends(col)],
                         threshold: Annotated[float, Query(gt=0, le=1)] = DUPLICATE_THRESHOLD,
                         limit: Annotated[int, Query(ge=1, le=MAX_GROUPS)] = 100) -> dict[str, Any]:
        """Groups, largest first, each with its largest photo first (see ``crossmodal duplicates``); at most
        ``limit`` groups, ``total`` says how many there are. Computed once per threshold and collection state."""
        if isinstance(c, ShardedCollection):
            raise HTTPException(501, "copies are found per collection folder: not across the shards of a sharded one")
        start = time.perf_counter()
        generation = await run_in_threadpool(_locked, lambda: c.store.generation)
        groups = await run_in_threadpool(_duplicate_groups, c, generation, threshold)
        out = [g.to_dict() for g in groups[:limit]]
        for group in out:
            for p in group["photos"]:
                p["thumbnail"] = f"/api/items/{p['id']}/thumbnail"
        return {"threshold": threshold, "total": len(groups), "groups": out,
                "took_ms": (time.perf_counter() - start) * 1000}

    @lru_cache(maxsize=8)
    def _duplicate_groups(c: Collection, generation: int, threshold: float) -> list[Any]:
        return find_duplicates(c, threshold)  # cached per store generation: recomputed once the collection changes

    @app.post("/api/items", summary="Upload photos into the collection (API key).")
    async def upload(c: Annotated[Collection, Depends(col)], files: Annotated[list[UploadFile], File()]
                     ) -> dict[str, Any]:
        if len(files) > MAX_FILES:
            raise HTTPException(413, f"at most {MAX_FILES} photos per upload")
        uploads = c.folder / "uploads"
        named = []
        for f in files:
            data = await read_upload(f)
            await decoded(load_image, data)
            suffix = Path(f.filename or "").suffix.lower()
            named.append((uploads / f"{content_hash(data)}{suffix if is_image_path(Path('x' + suffix)) else '.jpg'}",
                          data))
        try:
            return await run_in_threadpool(_store_uploads, c, named)
        except (OSError, sqlite3.OperationalError) as e:
            if _disk_full(e):
                raise HTTPException(507, "disk full: the server has no space left to store the photo") from None
            raise

    def _store_uploads(c: Collection, named: list[tuple[Path, bytes]]) -> dict[str, Any]:
        """Write each photo (atomically: a full disk leaves no partial file behind) and index them."""
        with upload_lock:
            for target, data in named:
                if not (target.is_file() and target.stat().st_size == len(data)):
                    atomic_write(target, lambda out, data=data: out.write(data))
            with lock:
                report = c.add_images([t for t, _ in named])
                stored = [c.store.image_by_path(str(t)) for t, _ in named]
        if None in stored:
            problems = "; ".join(f"{Path(p).name}: {why}" for p, why in report.failed)
            raise HTTPException(400, f"could not index: {problems}")
        return {"ids": [it.id for it in stored], "added": report.added, "reused": report.reused + report.unchanged}

    @app.post("/api/texts", summary="Add texts (API key).")
    async def add_texts(texts: Annotated[list[str], Field(min_length=1, max_length=1000)],
                        c: Annotated[Collection, Depends(col)]) -> dict[str, Any]:
        if any(not t.strip() for t in texts):
            raise HTTPException(400, "empty text: every text needs a non-space character")
        report = await run_in_threadpool(_locked, c.add_texts, texts)
        return {"added": report.added}

    @app.delete("/api/items/{item_id}", summary="Delete an item (API key).")
    async def delete(item_id: Annotated[int, PathParam(ge=0, le=INT64[1])], c: Annotated[Collection, Depends(col)]
                     ) -> dict[str, Any]:
        if not await run_in_threadpool(_remove, c, item_id):
            raise HTTPException(404, f"no item with id {item_id}")
        return {"deleted": item_id}

    def _remove(c: Collection, item_id: int) -> bool:
        """Delete an item, and its file when it was uploaded here and no other item is stored from it."""
        uploads = c.folder / "uploads"
        with upload_lock, lock:
            found = c.store.get([item_id]).get(item_id)
            if found is None or not c.remove([item_id]):
                return False
            path = Path(found.path) if found.path else None
            if path is not None and path.parent == uploads and not c.store.select("path = ?", (str(path),)):
                path.unlink(missing_ok=True)
        return True

    async def decoded(fn: Any, *args: Any, status: int = 400, message: str = "the upload is not a usable image"
                      ) -> Any:
        """``fn(*args)`` on a worker thread, at most ``photos.DECODES`` at once; an ImageError becomes ``status``
        (413 for a photo refused for its pixel count)."""
        async with decodes:
            try:
                return await asyncio.get_running_loop().run_in_executor(state["decoder"], fn, *args)
            except photos.TooLarge as e:
                raise HTTPException(413, f"{message}: {e}") from None
            except ImageError as e:
                raise HTTPException(status, f"{message}: {e}") from None

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(max_upload + 1)
        if len(data) > max_upload:
            raise HTTPException(413, f"upload over the {max_upload_mb:g} MB limit")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        return data

    return app


def _disk_full(e: Exception) -> bool:
    """Whether a write failed for want of space (the file system's ENOSPC, or SQLite's "disk is full")."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)


def _thumbnail_url(h: Hit) -> str | None:
    return f"/api/items/{h.id}/thumbnail" if h.kind == "image" else None


def _hit_json(h: Hit) -> dict[str, Any]:
    """A hit as the API returns it (a non-UTF-8 file name with ``\\xNN`` escapes, as JSON needs text)."""
    return {**vars(h), "path": shown(h.path) if h.path is not None else None, "thumbnail": _thumbnail_url(h)}


def _hit(h: Hit) -> HitOut:
    return HitOut(**_hit_json(h))
