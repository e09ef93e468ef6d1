"""The ``crossmodal`` command: index photos and texts, search them, describe a collection."""

# No `from __future__ import annotations` here: Typer would evaluate each command's annotations from strings
# at every start (80 ms of a cold search); as objects they cost almost nothing.
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from . import __version__, defaults
from .cli_help import TidyGroup
from .cli_options import optional_values
from .defaults import (
    BANK_SHARE,
    BANK_TOP_K,
    DEFAULT_DIVERSITY,
    DEFAULT_MAX_PIXELS,
    DEFAULT_RERANK,
    DEFAULT_SHARD_TIMEOUT,
    DUPLICATE_THRESHOLD,
)

if TYPE_CHECKING:
    from .collection.collection import Collection

# Commands import the rest (numpy, the collection, the models) when they run, so that `--help`, `--version` and a
# search start fast; tests/test_cold_start.py checks that a text search imports neither torch nor transformers.

app = typer.Typer(
    cls=TidyGroup,
    help="Cross-modal retrieval: find photos by describing them, captions for a photo, similar photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LazyConsole:
    """A rich Console made when first used: a search that prints only its results never imports rich (40 ms)."""

    def __init__(self, **options: Any) -> None:
        self._options, self._console = options, None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


err = LazyConsole(stderr=True, soft_wrap=True)


def show_version(value: bool) -> None:
    """``--version``: print the version and stop."""
    if value:
        print(f"crossmodal {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    backend: Annotated[str, typer.Option(envvar="CROSSMODAL_BACKEND", help="How the lite model runs on the CPU: "
                                         "auto (ONNX Runtime when installed, else PyTorch), torch or onnx.")] = "auto",
    device: Annotated[str, typer.Option(envvar="CROSSMODAL_DEVICE", help="Where PyTorch models run: cpu, cuda or "
                                        "cuda:N.")] = "cpu",
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Cross-modal retrieval: find photos by describing them, captions for a photo, similar photos."""
    from .encoders import BACKENDS

    if not sys.warnoptions:  # third-party notes (deprecations, tracer hints) are not for users; -W shows them
        warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # transformers logs through logging, not warnings

    if backend not in BACKENDS:
        raise typer.BadParameter(f"use one of {', '.join(BACKENDS)}", param_hint="--backend")
    # read by load_encoder, here and in child processes
    os.environ["CROSSMODAL_BACKEND"], os.environ["CROSSMODAL_DEVICE"] = backend, device


def default_collection() -> Path:
    """$CROSSMODAL_COLLECTION, else a per-user data folder."""
    from platformdirs import user_data_dir

    env = os.environ.get("CROSSMODAL_COLLECTION")
    return Path(env) if env else Path(user_data_dir("crossmodal")) / "default"


def open_collection(folder: Path | None, **kwargs: Any) -> "Collection":
    """``Collection.open`` of ``folder``, else of the default collection."""
    from .collection.collection import Collection

    return Collection.open(folder or default_collection(), **kwargs)


CollectionOpt = Annotated[
    Path | None,
    typer.Option("--collection", "-c", help="Collection folder (default: $CROSSMODAL_COLLECTION, else a "
                 "per-user data folder).", show_default=False),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model: 'lite' (offline default), a transformers id or folder; add "
                 "'+mirror' ('lite+mirror') to read each photo twice, as it is and mirrored: better ranking for twice "
                 "the photo work. A new collection is built with it; an existing one keeps its own model and refuses "
                 "another."),
]


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and a non-zero exit, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished batches are saved; run the same command again to resume.")
            raise typer.Exit(130) from None
        except expected_errors() as e:
            err.print(f"[red]error[/]: {escape(str(e))}", highlight=False)  # e.g. crossmodal[ray] is no markup
            raise typer.Exit(2) from None
        except ImportError as e:
            err.print(f"[red]error[/]: this needs the optional package {e.name!r}: pip install "
                      "'crossmodal[onnx]' (ONNX) or 'crossmodal[heic]' (HEIC photos)", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def expected_errors() -> tuple[type[Exception], ...]:
    """The failures that get one line instead of a traceback (imported when one happens)."""
    from .collection.manifest import ModelMismatchError
    from .collection.store import DiskFullError
    from .collection.upgrade import UnreadableError
    from .sources.captions import CaptionFileError
    from .sources.images import ImageError

    return (FileNotFoundError, FileExistsError, PermissionError, DiskFullError, ValueError, ModelMismatchError,
            ImageError, CaptionFileError, KeyError, UnreadableError)


def parse_size(text: str | None) -> int | None:
    """'2GB', '512MB', '1.5G', '1000000' -> bytes (powers of 1024); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError(f"bad size {text!r}: use e.g. 2GB, 512MB or a number of bytes")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2] or " "))


IndexKindOpt = Annotated[str | None, typer.Option("--index", help="Index kind: auto (the planner picks from size, "
                                                  "--memory and --recall), flat, hnsw, ivfpq or binary.")]
MemoryOpt = Annotated[str | None, typer.Option("--memory", help="Memory budget for the index, e.g. 2GB.")]
RecallOpt = Annotated[float | None, typer.Option("--recall", help="Recall@10 target for approximate kinds.")]


QUERY_CHUNK = 512  # queries of a --queries file encoded and ranked together (bounds the token states held)
RerankOpt = Annotated[int, typer.Option("--rerank", min=0, help="Re-score the top N results with the model's "
                                       "reranker (0: off).")]
NormOpt = Annotated[bool, typer.Option("--norm/--no-norm", help="Nearest-neighbour score normalisation (less "
                                       "hubness; needs a bank: the model's own or `crossmodal bank`).")]
MinScoreOpt = Annotated[float | None, typer.Option("--min-score", help="Drop results scoring under this "
                                                   "(normalised, fused score; see docs/ranking.md).")]
RetrieverOpt = Annotated[str, typer.Option("--retriever", help="Where candidates come from: dense (the model's "
                                           "vectors), keyword (BM25 over file names, folders, texts and fields), "
                                           "sparse (learned word weights, inverted index) or hybrid (dense plus "
                                           "keyword evidence and the photos' predicted caption words; "
                                           "docs/ranking.md).")]
BothTowersOpt = Annotated[bool, typer.Option("--both-towers", help="Encode English text queries through both of the "
                                             "model's text towers (its own and its multilingual one), blended as "
                                             "stored captions are: better answers for about twice the query's "
                                             "encoding time (docs/ranking.md).")]


WhereOpt = Annotated[list[str] | None, typer.Option("--where", help="Only items with KEY=VALUE (also !=, <, <=, >, "
                                                   ">=); KEY is a field or size/mtime/added/id/path. != also keeps "
                                                   "items without the field.")]


def _fields(specs: list[str] | None) -> dict[str, Any]:
    out = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --field {spec!r}: expected KEY=VALUE")
        out[key] = value
    return out


@app.command()
@friendly
def index(
    paths: Annotated[list[Path], typer.Argument(help="Photo folders or files; with --texts, caption files.")],
    texts: Annotated[bool, typer.Option("--texts", help="PATHS are caption files (TSV/CSV/JSONL/TXT).")] = False,
    collection: CollectionOpt = None,
    model: ModelOpt = None,
    prune: Annotated[bool, typer.Option(help="Drop stored items whose files were deleted.")] = True,
    prune_all: Annotated[bool, typer.Option("--prune-all", help="Also drop the stored photos of a folder that "
                                            "has no photos now or is gone (kept otherwise, as an unmounted "
                                            "disk looks the same).")] = False,
    field: Annotated[list[str] | None, typer.Option("--field", help="KEY=VALUE stored with each photo.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Skip images larger than this many pixels.")] = DEFAULT_MAX_PIXELS,
    hidden: Annotated[bool, typer.Option("--hidden", help="Also index hidden files and folders.")] = False,
    index_kind: IndexKindOpt = None,
    memory: MemoryOpt = None,
    recall: RecallOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    shards: Annotated[int | None, typer.Option("--shards", min=1, help="Make the collection as N shards (folders "
                                               "assigned by a hash of each item, searched as one: "
                                               "docs/scaling.md); only when it is made.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Read, decode and encode the photos on a Ray cluster's actors "
                                      "(the optional Ray extra); this process still writes the collection.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="The Ray cluster to use ('auto': the one "
                                                    "`ray start` runs here); implies --ray. Default: a local Ray.",
                                                    show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="With --ray: encode actors, one CPU "
                                                "each (default: one per CPU, or per GPU, of the cluster).",
                                                show_default=False)] = None,
) -> None:
    """Embed every photo below the given folders (or the captions in the given files) into the collection.

    Running it again adds new files, re-embeds changed ones, drops deleted ones and resumes an
    interrupted run. Unreadable files are reported once and skipped.

    Examples:
      crossmodal index ~/Pictures
      crossmodal index ~/Pictures/paris --field album=paris
      crossmodal index captions.tsv --texts
      crossmodal index /shared/photos --ray --ray-address auto
    """
    for path in paths:
        if not path.expanduser().exists() and (texts or not prune_all):
            raise FileNotFoundError(f"{path}: no such file or folder" + ("" if texts else "; nothing was removed "
                                    "(--prune-all drops the stored photos of a folder gone for good)"))
    from .sources.images import IMAGE_SUFFIXES

    extra = _fields(field)
    budget = parse_size(memory)
    use_ray = (ray or ray_address is not None) and not texts
    if use_ray:
        from .distributed import EncodePool, require_ray

        require_ray()  # before the collection is made
    if shards is not None:
        make_shards(collection or default_collection(), shards, model)
    with open_collection(collection, model=model) as c, ExitStack() as stack:
        pool = stack.enter_context(EncodePool(c.manifest.model, workers, address=ray_address)) if use_ray else None
        for path in paths:
            if texts:
                report, problems = c.index_captions(path, prune=prune, progress=not quiet)
                for line in problems:
                    err.print(line, highlight=False)
                err.print(f"{path}: {report.summary()}", highlight=False)
            else:
                report = c.index_folder(path, prune=prune, prune_all=prune_all, include_hidden=hidden, fields=extra,
                                        max_pixels=max_pixels, progress=not quiet, pool=pool)
                err.print(f"{path}: {report.summary()}", highlight=False)
                if not report.seen:
                    err.print(f"[yellow]warning[/]: {path} holds no photos ({', '.join(sorted(IMAGE_SUFFIXES))}; "
                              "hidden files and folders only with --hidden)", highlight=False)
        if index_kind is not None or memory is not None or recall is not None:
            settings = c.manifest.index
            c.configure_index(index_kind or settings.get("kind", "auto"), budget if memory else settings.get("memory"),
                              recall or settings.get("recall", 0.95))
        else:
            c.refresh_indexes()
        err.print(f"collection {c.folder}: {c.store.count('image')} photos, {c.store.count('text')} texts; "
                  f"index: {_plan_line(c)}", highlight=False)


def one_folder(c: Any, command: str) -> None:
    """Refuse, on a sharded collection, a command that works on one collection folder, saying how to run it."""
    from .collection.sharded import ShardedCollection

    if isinstance(c, ShardedCollection):
        raise ValueError(f"`crossmodal {command}` works on one collection folder at a time: run it on each shard "
                         f"of {c.folder} (-c {c.folder}/shard-000, ...; ids there are the shard's own)")


def make_shards(folder: Path, shards: int, model: str | None) -> None:
    """Make a sharded collection of ``shards`` shards in ``folder``, unless it is one already (of as many)."""
    from .collection.sharded import ShardedCollection, is_sharded, shard_count

    folder = folder.expanduser()
    if is_sharded(folder):
        if shard_count(folder) != shards:
            raise ValueError(f"{folder} has {shard_count(folder)} shards, not {shards}: shards are chosen when a "
                             "collection is made (index into a new collection to change them)")
    elif folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not a sharded collection: shards are chosen when a collection is made "
                         "(index into a new collection with --shards)")
    else:
        ShardedCollection.create(folder, shards, model).close()


def _plan_line(c: "Collection") -> str:
    return plan_text(c.manifest.index.get("image") or {})


def plan_text(plan: dict[str, Any]) -> str:
    """An index plan in words: ``flat (storage fp32)``, ``hnsw (m 32, ef_search 96, storage int8)``."""
    params = ", ".join(f"{key} {value}" for key, value in plan.get("params", {}).items())
    return f"{plan.get('kind', 'flat')} ({params})" if params else plan.get("kind", "flat")


@app.command()
@friendly
def reindex(
    index_kind: Annotated[str, typer.Option("--index", help="auto, flat, hnsw, ivfpq or binary.")] = "auto",
    memory: MemoryOpt = None,
    recall: Annotated[float, typer.Option("--recall", help="Recall@10 target for approximate kinds.")] = 0.95,
    collection: CollectionOpt = None,
) -> None:
    """Rebuild the collection's vector indexes with another kind, memory budget or recall target.

    Examples:
      crossmodal reindex --index hnsw
      crossmodal reindex --index ivfpq --memory 2GB --recall 0.9
    """
    with open_collection(collection, create=False) as c:
        c.configure_index(index_kind, parse_size(memory), recall)
        for kind in ("image", "text"):
            plan = c.manifest.index.get(kind)
            if plan:
                err.print(f"{kind}: {plan_text(plan)}: {plan['reason']}", highlight=False)


@app.command(cls=optional_values({"--diverse": str(DEFAULT_DIVERSITY)}))
@friendly
def search(
    query: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Find items like this photo.")] = None,
    plus: Annotated[list[str] | None, typer.Option("--plus", help="[WEIGHT:]TEXT or photo path to add.")] = None,
    minus: Annotated[list[str] | None, typer.Option("--minus", help="[WEIGHT:]TEXT or photo path to "
                                                    "steer away from.")] = None,
    top: Annotated[int, typer.Option("--top", "-k", help="How many results.", min=1)] = 10,
    texts: Annotated[bool, typer.Option("--texts", help="Return texts instead of photos.")] = False,
    kind: Annotated[str, typer.Option("--kind", help="image: photos and videos (each video once, at its best "
                                      "moment); video: videos only; text: texts (as --texts).")] = "image",
    path: Annotated[str | None, typer.Option("--path", help="Only items whose path matches this glob.")] = None,
    where: WhereOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    queries: Annotated[Path | None, typer.Option("--queries", help="Run every text query of this file (one a "
                                                 "line; '-': standard input) with one model load; prints a JSON "
                                                 "line per query: {\"query\", \"hits\"}.")] = None,
    rerank: RerankOpt = DEFAULT_RERANK,
    norm: NormOpt = True,
    min_score: MinScoreOpt = None,
    retriever: RetrieverOpt = defaults.DEFAULT_RETRIEVER,
    both_towers: BothTowersOpt = False,
    understand: Annotated[bool, typer.Option("--understand/--literal", help="Read a year or date in QUERY as a "
                                             "filter on the date taken, and a place the photos know (country, "
                                             "region, city) as a filter on it; stderr says what was read. "
                                             "--literal: every word goes to the model.")] = True,
    diverse: Annotated[float | None, typer.Option("--diverse", metavar="[LAMBDA]", min=0.0, max=1.0, help=(
        f"Spread the page over different photos (maximal marginal relevance; alone: {DEFAULT_DIVERSITY}); 1 "
        "changes nothing, lower is more diverse."), show_default=False)] = None,
    collection: CollectionOpt = None,
    model: ModelOpt = None,
) -> None:
    """Search the collection by text, by photo, or by a weighted mix: prints score <TAB> path, best first (a video:
    score <TAB> path <TAB> t=SECONDS, its best moment).

    Examples:
      crossmodal search "a dog running on a beach" --top 5
      crossmodal search "a dog jumps into a pool" --kind video
      crossmodal search --image ./query.jpg --where album=paris
      crossmodal search "beach" --minus people --plus 0.5:sunset --json
      crossmodal search --queries queries.txt > results.jsonl
    """
    from .collection.paths import shown
    from .search.pipeline import Ranking
    from .search.query import Term, parse_term

    ranking = Ranking(norm=norm, rerank=rerank, min_score=min_score, diversity=diverse, retriever=retriever,
                      both_towers=both_towers)
    if kind not in ("image", "video", "text"):
        raise ValueError(f"--kind {kind!r}: use image (photos and videos), video or text")
    kind = "text" if texts else kind
    terms: list[Term] = [parse_term(s) for s in plus or []] + [parse_term(s, -1.0) for s in minus or []]
    if queries is not None:
        if query is not None or image is not None or terms:
            raise ValueError("--queries FILE takes the place of QUERY, --image, --plus and --minus: give one or the "
                             "other")
        search_file(queries, collection, model, k=top, kind=kind, path=path,
                    where=where or [], ranking=ranking)
        return
    if query is None and image is None and not terms:
        raise ValueError("nothing to search for: give a QUERY, --image PATH, --plus or --queries FILE")
    if image is not None and not image.expanduser().is_file():
        raise FileNotFoundError(f"{image}: no such file")
    with open_collection(collection, model=model, create=False) as c:
        if query is not None and understand:
            read = c.understand(query, "text" if kind == "text" else "image")
            for note in read.notes:
                err.print(f"{note['words']!r}: {note['field']} {note['value']} ({note['as']}"
                          f"{', ' + note['why'] if 'why' in note else ''})", highlight=False)
            query, where = read.text, [*(where or []), *read.conditions]
        hits = c.search(query, image=image.expanduser() if image else None, terms=terms, k=top,
                        kind=kind, path=path, where=where or [], ranking=ranking)
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
        return
    if not hits:
        err.print("no results (is the collection empty, or do the filters match nothing?)")
    if hits.partial:
        err.print(f"[yellow]warning[/]: partial results: shards {list(hits.missing_shards)} did not answer in time",
                  highlight=False)
    for h in hits:
        print(f"{h.score:.4f}\t{shown(h.path) if h.kind == 'image' else h.text}" + (
            f"\tt={h.t:.1f}" if h.t is not None else ""))


def search_file(file: Path, collection: Path | None, model: str | None, where: list[str], **options: Any) -> None:
    """Print a JSON line {"query", "hits"} for each text query of ``file`` (one a line, blank lines skipped;
    '-': standard input), ranked together by the search pipeline a chunk of queries at a time."""
    from .search.filters import parse_condition
    from .search.query import text_queries

    lines = sys.stdin.read() if str(file) == "-" else file.expanduser().read_text(encoding="utf-8")
    texts = [line.strip() for line in lines.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{file}: no queries in it (one query per line)")
    conditions = [parse_condition(spec) for spec in where]
    with open_collection(collection, model=model, create=False) as c:
        # the reranker reads text queries' token states when they rank photos: take them from the same pass
        states = (options["kind"] in ("image", "video") and bool(options["ranking"].rerank)
                  and c.reranker("image") is not None)
        for start in range(0, len(texts), QUERY_CHUNK):
            chunk = texts[start:start + QUERY_CHUNK]
            results = c.search_queries(text_queries(c.encoder, chunk, states, options["ranking"].both_towers),
                                       where=conditions, **options)
            for text, hits in zip(chunk, results, strict=True):
                print(json.dumps({"query": text, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))


@app.command()
@friendly
def duplicates(
    threshold: Annotated[float, typer.Option("--threshold", "-t", min=0.01, max=1.0, help="How alike two photos "
                                             "must be to count as copies (cosine; higher: only closer copies).")
                         ] = DUPLICATE_THRESHOLD,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of groups.")] = False,
    collection: CollectionOpt = None,
) -> None:
    """Group the photos that are copies of each other: exact copies (same content) and near-copies (crops,
    re-encodes, resizes, bursts). Each group lists its largest photo first; a line per photo: cosine to it
    ("exact": same content) <TAB> width x height <TAB> size <TAB> path.

    Examples:
      crossmodal duplicates
      crossmodal duplicates --threshold 0.9 --json > groups.json
    """
    from .collection.duplicates import find_duplicates
    from .collection.paths import shown

    with open_collection(collection, create=False) as c:
        one_folder(c, "duplicates")
        groups = find_duplicates(c, threshold)
    if as_json:
        print(json.dumps([g.to_dict() for g in groups], ensure_ascii=False, indent=2))
        return
    for n, group in enumerate(groups, 1):
        print(f"group {n}: {len(group.photos)} photos")
        for i, p in enumerate(group.photos):
            shape = f"{p.width}x{p.height}" if p.width else "?x?"
            alike = "exact" if p.exact and i else f"{p.similarity:.3f}"
            print(f"  {alike}\t{shape}\t{(p.bytes or 0) / 1e6:.2f} MB\t{shown(p.path)}")
    err.print(f"{len(groups)} groups, {sum(len(g.photos) for g in groups)} photos at threshold {threshold}"
              + ("" if groups else " (a lower --threshold finds looser copies)"), highlight=False)


INFO_LABELS = {"images": "photos", "dim": "dimensions", "fingerprint": "model fingerprint",
               "unreadable": "unreadable files"}


def fact_text(value: Any) -> str:
    """A fact of ``info`` as words: a mapping as ``key value, ...``, a list as ``item; item``, anything else as
    itself."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {fact_text(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "; ".join(fact_text(v) for v in value) or "none"
    return str(value)


@app.command()
@friendly
def info(
    collection: CollectionOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    errors: Annotated[bool, typer.Option("--errors", help="List the unreadable files.")] = False,
) -> None:
    """What is in the collection: model, counts, size on disk, unreadable files.

    Examples:
      crossmodal info
      crossmodal info --errors --collection ~/photos.cm
    """
    with open_collection(collection, create=False) as c:
        facts = c.info()
        failures = c.store.failures() if errors else []
    if as_json:
        print(json.dumps({**facts, **({"errors": dict(failures)} if errors else {})}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        if key == "index":
            for kind, label in (("image", "photo index"), ("text", "text index")):
                if value.get(kind):
                    table.add_row(label, plan_text(value[kind]))
        elif key == "bytes_on_disk":
            table.add_row("size on disk", f"{value / 1e6:.1f} MB")
        else:
            table.add_row(INFO_LABELS.get(key, key.replace("_", " ")), fact_text(value))
    Console().print(table)
    for path, reason in failures:
        print(f"{path}\t{reason}")


def item_line(item: Any) -> str:
    """id <TAB> kind <TAB> path (a text: the text) <TAB> fields as key=value, for people and for cut/awk."""
    from .collection.paths import shown

    shown_as = item.text if item.kind == "text" else shown(item.path or "")
    return "\t".join([str(item.id), item.kind, shown_as, ", ".join(f"{k}={v}" for k, v in item.fields.items())])


def item_json(item: Any) -> dict[str, Any]:
    """An item as JSON-ready values (a file name that is not UTF-8 shows its odd bytes as \\xNN)."""
    from .collection.paths import shown

    out = {"id": item.id, "kind": item.kind, "path": shown(item.path) if item.path else None, "text": item.text,
           "size": item.size, "mtime": item.mtime, "added": item.added, "fields": item.fields}
    return {k: v for k, v in out.items() if v is not None}


@app.command("list")
@friendly
def list_items(
    kind: Annotated[str | None, typer.Option("--kind", help="Only photos (image) or only texts (text).")] = None,
    path: Annotated[str | None, typer.Option("--path", help="Only items whose stored path matches this glob.")]
    = None,
    where: WhereOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many (the first by id).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    collection: CollectionOpt = None,
) -> None:
    """List what is stored, by id: id <TAB> kind <TAB> path (or text) <TAB> fields.

    Examples:
      crossmodal list --limit 20
      crossmodal list --where album=paris --path "*/2023/*"
      crossmodal list --kind text --json
    """
    from .collection.selection import list_items as select
    from .search.filters import parse_condition

    if kind not in (None, "image", "text"):
        raise ValueError(f"--kind {kind!r}: use image (photos) or text")
    conditions = [parse_condition(spec) for spec in where or []]
    with open_collection(collection, create=False) as c:
        one_folder(c, "list")
        items = select(c.store, kind, path, conditions, limit)
    if as_json:
        print(json.dumps([item_json(it) for it in items], ensure_ascii=False, indent=2))
        return
    if not items:
        err.print("nothing stored matches the filters" if kind or path or where else "the collection is empty")
    for it in items:
        print(item_line(it))


@app.command()
@friendly
def remove(
    targets: Annotated[list[str], typer.Argument(help="Item ids, stored paths (a photo; a caption file: its "
                                                 "captions; a folder: everything below it) or globs on stored "
                                                 "paths ('*/2019/*.jpg').")],
    collection: CollectionOpt = None,
) -> None:
    """Remove items from the collection (never the files) and print each one removed; asks nothing.

    Nothing is removed unless every target names something stored. A photo that is still in an indexed
    folder comes back with the next `crossmodal index` of that folder.

    Examples:
      crossmodal remove 12 15
      crossmodal remove ~/Pictures/screenshots
      crossmodal remove "*/2019/*.png"
    """
    from .collection.selection import select_targets

    with open_collection(collection, create=False) as c:
        one_folder(c, "remove")
        try:
            items = select_targets(c.store, targets)
        except ValueError as e:
            raise ValueError(f"{e}; nothing was removed") from None
        removed = c.remove([it.id for it in items])
    for it in items:
        print(item_line(it))
    err.print(f"removed {removed} item{'s' if removed != 1 else ''} from {c.folder}", highlight=False)


@app.command()
@friendly
def upgrade(
    collection: CollectionOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model to encode with (default: the one the "
                                              "collection names, as this crossmodal has it).")] = None,
    drop_unreadable: Annotated[bool, typer.Option("--drop-unreadable", help="Leave out the stored photos that "
                                                  "cannot be read again, rather than stop.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Skip images larger than this many pixels.")] = DEFAULT_MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Encode the collection again with a newer version of its model (or another model of the same size).

    Every photo is read again and every caption encoded again; the collection switches over in one step
    at the end and answers with its old model until then. An interrupted run resumes; a photo that cannot
    be read stops the run with nothing changed, unless --drop-unreadable.

    Examples:
      crossmodal upgrade
      crossmodal upgrade -c ~/photos.cm --model runs/my-lite
    """
    with open_collection(collection, create=False) as c:
        one_folder(c, "upgrade")
        was = (c.manifest.model, c.manifest.fingerprint)
        report = c.upgrade(model, drop_unreadable=drop_unreadable, max_pixels=max_pixels, progress=not quiet)
    if not report.encoded:
        err.print(f"{c.folder} already holds {was[0]}'s vectors (weights {was[1]}); nothing to do", highlight=False)
        return
    err.print(f"{c.folder}: {report.encoded.get('image', 0)} photos and {report.encoded.get('text', 0)} captions "
              f"encoded again with {c.manifest.model} (weights {was[1]} -> {c.manifest.fingerprint})"
              + (f"; {report.dropped} unreadable left out" if report.dropped else ""), highlight=False)


@app.command()
@friendly
def bank(
    texts: Annotated[Path | None, typer.Option("--texts", help="Caption file (TSV/CSV/JSONL/TXT) of typical "
                                               "queries for photos.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Folder of typical photos.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Or: a dataset eval reads (its --split "
                                                "gives both captions and photos).")] = None,
    split: Annotated[str, typer.Option(help="Split of --dataset to use (train: never the split you report).")]
    = "train",
    limit: Annotated[int | None, typer.Option(help="At most this many captions and photos (drawn at random).")]
    = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the bank to this file (for `eval --bank`) "
                                             "instead of into the collection.")] = None,
    share: Annotated[float, typer.Option(help="Share of each item's bias taken off its score (lite's: 1.0).")]
    = BANK_SHARE,
    top_k: Annotated[int, typer.Option("--top-k", help="A bias is the mean of an item's top K similarities to "
                                       "the bank's queries.")] = BANK_TOP_K,
    collection: CollectionOpt = None,
    model: ModelOpt = None,
) -> None:
    """Build the reference bank that score normalisation needs, for models that ship none.

    A bank is the vectors of typical queries: captions (they rank photos) and photos (they rank
    captions). Written into the collection, every item's bias is computed at once and kept up to date.

    Examples:
      crossmodal bank --dataset my-data --split train
      crossmodal bank --texts queries.txt --images ~/Pictures/sample --limit 5000
    """
    from .encoders import load_encoder
    from .search.normalise import BANK_FILE, build_bank
    from .sources.captions import read_captions
    from .sources.datasets import load_dataset
    from .sources.folders import iter_images

    if dataset is not None:
        data = load_dataset(dataset, split)
        caption_list, image_list = list(data.texts), [Path(p) for p in data.images]
    elif texts is not None and images is not None:
        caption_list = [r.text for r in read_captions(texts.expanduser())[0]]
        image_list = list(iter_images(images.expanduser()))
    else:
        raise ValueError("give --dataset, or both --texts and --images")
    if out is not None:
        built = build_bank(load_encoder(model or "lite"), caption_list, image_list, limit=limit, top_k=top_k,
                           share=share)
        err.print(f"wrote {built.save(out)}: {len(built.vectors('texts'))} captions, "
                  f"{len(built.vectors('images'))} photos", highlight=False)
        return
    with open_collection(collection, model=model, create=False) as c:
        one_folder(c, "bank")
        built = build_bank(c.encoder, caption_list, image_list, limit=limit, top_k=top_k, share=share)
        built.save(c.folder / BANK_FILE)
        c.store.bank = built
        c.store.fill_biases()
        c.refresh_indexes()
        err.print(f"{c.folder}: bank of {len(built.vectors('texts'))} captions and {len(built.vectors('images'))} "
                  "photos; scores are normalised", highlight=False)


# Its help is evaluate's docstring; `eval` runs by itself, so the subcommand is shown as optional.
eval_app = typer.Typer(subcommand_metavar="[compare REPORT_A REPORT_B]")
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
@friendly
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="A Flickr-layout folder, karpathy:FILE.json, or a .csv/.tsv/.jsonl image,caption table."
    )] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="'lite', a trained lite folder, or a transformers "
                                       "id or folder.")] = "lite",
    split: Annotated[str, typer.Option(help="Split to evaluate (dev is Karpathy's val).")] = "test",
    images: Annotated[Path | None, typer.Option(help="Image root for Karpathy JSON or tables.")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Extra K for R@K (1, 5, 10 always).")] = None,
    folds: Annotated[int | None, typer.Option(help="Also average over N equal folds (COCO 1K: 5).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write report.json, report.md and "
                                                "recall_curves.png into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    rerank: RerankOpt = DEFAULT_RERANK,
    norm: NormOpt = True,
    retriever: RetrieverOpt = defaults.DEFAULT_RETRIEVER,
    both_towers: BothTowersOpt = False,
    bank: Annotated[Path | None, typer.Option("--bank", help="Normalisation bank file (`crossmodal bank --out`); "
                                              "default: the one the model ships with, if any.")] = None,
    reranker: Annotated[Path | None, typer.Option("--reranker", help="Reranker folder (`crossmodal train "
                                                  "--reranker`); default: the one the model ships with, if any.")]
    = None,
) -> None:
    """Measure retrieval quality on an image-caption dataset with the published protocol (CLIP_benchmark
    definitions): R@K both ways, RSUM, mAP@R, R-Precision, ranks.

    It ranks with the search pipeline and the same defaults as `crossmodal search` (normalisation,
    --rerank), so its numbers are what users get; --no-norm --rerank 0 gives the plain dual encoder.
    `crossmodal eval compare A B` prints the change between two reports.

    Examples:
      crossmodal eval --dataset ../shared/datasets/flickr8k --split test --report out/
      crossmodal eval --dataset karpathy:dataset_coco.json --images coco/ --folds 5
      crossmodal eval compare runs/a/report.json runs/b/report.json
    """
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        raise ValueError("give --dataset (a Flickr-layout folder, karpathy:FILE.json or a table)")
    from .encoders import load_encoder, model_folder
    from .evaluation.report import finish_report, write_report
    from .evaluation.runner import evaluate as run
    from .search.normalise import BANK_FILE, find_bank
    from .search.pipeline import Ranking
    from .search.rerank import RERANKER_DIR, find_reranker
    from .sources.datasets import load_dataset

    data = load_dataset(dataset, split, images)
    command = ["crossmodal", "eval", "--dataset", dataset, "--model", model, "--split", split]
    command += ["--images", str(images)] if images else []
    command += [a for x in k or () for a in ("--k", str(x))] + (["--folds", str(folds)] if folds else [])
    command += ["--rerank", str(rerank)] + ([] if norm else ["--no-norm"]) + (["--bank", str(bank)] if bank else [])
    command += ["--reranker", str(reranker)] if reranker else []
    command += ["--retriever", retriever] + (["--both-towers"] if both_towers else [])
    encoder = load_encoder(model)
    own = model_folder(model)  # a trained model's own bank and reranker, when `crossmodal train` wrote them there
    found = find_bank(encoder.fingerprint, *([bank] if bank else [own / BANK_FILE] if own else []))
    if bank is not None and (found is None or found.path != bank):
        raise ValueError(f"{bank} is not a normalisation bank for {encoder.name!r} (built for other weights?)")
    scorer = find_reranker(encoder.fingerprint, *([reranker] if reranker else [own / RERANKER_DIR] if own else []))
    if reranker is not None and (scorer is None or scorer.folder.resolve() != reranker.resolve()):
        raise ValueError(f"{reranker} is not a reranker for {encoder.name!r} (trained for other weights?)")
    result = finish_report(run(encoder, data, tuple(k or ()), folds, progress=not quiet,
                               ranking=Ranking(norm=norm, rerank=rerank, retriever=retriever,
                                               both_towers=both_towers), bank=found,
                               reranker=scorer), split, command)
    if report is not None:
        for path in write_report(result, report):
            err.print(f"wrote {path}", highlight=False)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    m = result["metrics"]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']['name']} on {result['dataset']['name']} "
                        f"({result['dataset']['images']} photos, {result['dataset']['texts']} captions)")
    for col in ("direction", *(f"R@{x}" for x in sorted({1, 5, 10, *(k or ())})), "mAP@R", "MedR"):
        table.add_column(col, justify="right" if col != "direction" else "left")
    for d, label in (("i2t", "image->text"), ("t2i", "text->image")):
        table.add_row(label, *(f"{m[f'{d}_R@{x}']:.2f}" for x in sorted({1, 5, 10, *(k or ())})),
                      f"{m[f'{d}_mAP@R']:.2f}", f"{m[f'{d}_medr']:.0f}")
    Console().print(table)
    pipe = result["pipeline"]
    stages = ", ".join(f"{stage} {ms:.2f}" for stage, ms in pipe["stage_ms_per_query"].items())
    print(f"RSUM {m['rsum']:.2f}")
    print(f"ranking: normalisation {'on' if pipe['bank'] else 'off'}, rerank top "
          f"{pipe['rerank'] if pipe['reranker'] else 0}, retriever {pipe['retriever']}"
          f"{', text queries through both towers' if pipe.get('both_towers') else ''}; ms per query: {stages}")


@eval_app.command("compare")
@friendly
def compare_reports(
    a: Annotated[Path, typer.Argument(help="First report.json (or its folder).")],
    b: Annotated[Path, typer.Argument(help="Second report.json (or its folder).")],
) -> None:
    """Print every metric of two reports side by side with the change from A to B.

    Example:
      crossmodal eval compare runs/a/report.json runs/b/report.json
    """
    from rich.console import Console
    from rich.table import Table

    from .evaluation.report import compare, load_report

    ra, rb = load_report(a), load_report(b)
    table = Table(title=f"A: {ra['model']['name']} on {ra['dataset']['name']}   "
                        f"B: {rb['model']['name']} on {rb['dataset']['name']}")
    for col in ("metric", "A", "B", "B - A"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for name, va, vb, delta in compare(ra, rb):
        table.add_row(name, f"{va:.2f}", f"{vb:.2f}", f"{delta:+.2f}")
    Console(width=120).print(table)


@app.command()
@friendly
def serve(
    collection: Annotated[Path | None, typer.Argument(help="Collection folder (default: as for the other "
                                                      "commands).", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] =
    "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="CROSSMODAL_API_KEY", help="Key that write endpoints "
                                                "(upload, delete) require [env: CROSSMODAL_API_KEY].")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload.")] = 20.0,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Encode queries with this backend of the "
                                              "collection's model, e.g. its `crossmodal export` folder.")] = None,
    int8_queries: Annotated[bool, typer.Option("--int8-queries/--fp32-queries", help="Encode queries with the int8 "
                                               "text tower of a lite model (1.5x faster; dev RSUM -1.6 through the "
                                               "default pipeline).")] = True,
    rerank: RerankOpt = DEFAULT_RERANK,
    norm: NormOpt = True,
    min_score: MinScoreOpt = None,
    retriever: RetrieverOpt = defaults.DEFAULT_RETRIEVER,
    both_towers: BothTowersOpt = False,
    allowed_host: Annotated[list[str] | None, typer.Option(help="Also answer requests for this Host name "
                                                           "(repeatable); bound to loopback, the server answers "
                                                           "only localhost names by default.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Serve a sharded collection's shards from Ray actors (any "
                                      "node of the cluster); this process routes the queries.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="The Ray cluster to use (e.g. auto, "
                                                    "HOST:6379); implies --ray. Default: a local Ray.")] = None,
    shard_timeout: Annotated[float, typer.Option("--shard-timeout", min=0.01, help="Seconds a search waits for each "
                                                 "shard; later shards are left out and the answer is marked "
                                                 "partial.")] = DEFAULT_SHARD_TIMEOUT,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Threads that encode and search batches "
                                                "of queries (default: one per core for an ONNX model, each on "
                                                "one thread; one for PyTorch).", show_default=False)] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", min=1, help="Most queries a worker encodes in "
                                                  "one model call (default: 8 with several workers, 32 with "
                                                  "one).", show_default=False)] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) and the search page at http://HOST:PORT/.

    --rerank, --norm, --min-score, --retriever and --both-towers are the defaults of requests that do not set them.

    Examples:
      crossmodal serve ./my-collection --port 8000
      crossmodal serve --host 0.0.0.0 --api-key "$KEY"
      crossmodal serve ./sharded-collection --ray --ray-address auto
    """
    import uvicorn

    from .search.pipeline import Ranking
    from .server.app import create_app
    from .server.limits import allowed_hosts, uvicorn_options

    folder = collection or default_collection()
    if ray or ray_address:
        from .distributed import require_ray
        from .distributed.shards import sharded_folder

        require_ray()
        sharded_folder(folder)
    with open_collection(folder, model=model, create=False) as c:  # fail fast and clearly on a wrong folder/model
        if model is None:  # or on a collection of another version of its model (`crossmodal upgrade`)
            from .encoders import model_fingerprint

            fingerprint = model_fingerprint(c.manifest.model)
            if fingerprint is not None:
                c.manifest.check(c.manifest.model, fingerprint)
    err.print(f"serving {folder} on http://{host}:{port}/  (API docs: /docs)", highlight=False)
    uvicorn.run(create_app(folder, api_key=api_key, max_upload_mb=max_upload_mb, model=model,
                           int8_queries=int8_queries, ranking=Ranking(norm=norm, rerank=rerank, min_score=min_score,
                                                                       retriever=retriever, both_towers=both_towers),
                           allowed_hosts=allowed_hosts(host, allowed_host or ()), ray=ray or bool(ray_address),
                           ray_address=ray_address, shard_timeout=shard_timeout, workers=workers,
                           max_batch=max_batch),
                host=host, port=port, log_level="warning", **uvicorn_options())


@app.command()
@friendly
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the ONNX model into.")],
    model: Annotated[str, typer.Option("--model", "-m", help="'lite', a trained lite folder, or a transformers "
                                       "id or folder.")] = "lite",
    int8: Annotated[bool, typer.Option("--int8", help="Quantize the text tower's weights to int8 (faster queries; "
                                       "the photo tower stays float32, so the vectors stay compatible).")] = False,
) -> None:
    """Export a model's photo and text towers to ONNX; `--model OUT` then loads it anywhere.

    Examples:
      crossmodal export --int8 --out lite-int8
      crossmodal export --model ./clip-folder --out clip-onnx
    """
    from .encoders import load_encoder
    from .encoders.onnx_export import export_onnx

    folder = export_onnx(load_encoder(model, backend="torch"), out, int8=int8)
    err.print(f"wrote {folder} (load it with --model {folder})", highlight=False)


def parse_lora(spec: str) -> int:
    """``lora:R`` -> R (at least 1); anything else -> 0."""
    if not spec.startswith("lora:"):
        return 0
    rank = spec.removeprefix("lora:")
    if not rank.isdigit() or int(rank) < 1:
        raise ValueError(f"--unfreeze {spec!r}: use lora:R with a rank R of at least 1")
    return int(rank)


def parse_unfreeze(spec: str) -> tuple[int, int]:
    """``heads`` -> (0, 0); ``last:N`` -> (N, N); ``image:N,text:M`` -> (N, M): photo blocks, text layers."""
    if spec == "heads":
        return 0, 0
    parts = dict(p.split(":", 1) for p in spec.split(",") if ":" in p)
    try:
        if set(parts) == {"last"}:
            return int(parts["last"]), int(parts["last"])
        if parts and set(parts) <= {"image", "text"}:
            return int(parts.get("image", 0)), int(parts.get("text", 0))
    except ValueError:
        pass
    raise ValueError(f"--unfreeze {spec!r}: use heads, last:N or image:N,text:M")


@app.command()
@friendly
def train(
    data: Annotated[str, typer.Option("--data", "-d", help="A Flickr-layout folder, karpathy:FILE.json, or a "
                                      ".csv/.tsv/.jsonl image,caption table with a split column.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the trained model, checkpoint and report; "
                                      "rerunning the same command resumes from it.")],
    model: Annotated[str, typer.Option("--model", "-m", help="'lite' or a transformers id or folder.")] = "lite",
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    dev_split: Annotated[str, typer.Option(help="Split to choose epochs on (early stopping).")] = "dev",
    loss: Annotated[str, typer.Option(help="infonce, siglip or vsepp.")] = "infonce",
    unfreeze: Annotated[str, typer.Option(help="What trains besides the heads: heads, last:N, "
                                          "image:N,text:M (lite: photo blocks, caption layers) or lora:R "
                                          "(transformers models: rank-R LoRA on attention, needs peft).")] = "heads",
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the data (default 10; 3 with "
                                               "--multilingual, whose epochs are long; 2 with --reranker).")] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Photos per step.")] = 128,
    captions_per_image: Annotated[int, typer.Option(min=1, help="Captions of each photo per step (never each "
                                                    "other's negatives).")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the heads.")] = 1e-3,
    tower_lr: Annotated[float, typer.Option(help="Peak learning rate of unfrozen tower layers.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option()] = 0.1,
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many epochs without a better dev RSUM.")] = 3,
    seed: Annotated[int, typer.Option()] = 0,
    views: Annotated[int, typer.Option(min=1, help="lite: augmented views cached per training photo.")] = 4,
    cache: Annotated[Path, typer.Option(help="lite: where frozen-tower features are cached.")] = Path("runs/cache"),
    reranker: Annotated[bool, typer.Option("--reranker", help="Train a reranker for the (lite) model instead, on "
                                           "hard negatives the model mines; --out COLLECTION/reranker puts it to "
                                           "use in that collection, `eval --reranker OUT` measures it.")] = False,
    sparse: Annotated[bool, typer.Option("--sparse", help="Train sparse heads for the (lite) model instead: its "
                                         "vectors to weights over WordPiece words, for --retriever sparse and "
                                         "hybrid; --out COLLECTION/sparse.npz puts them to use in that "
                                         "collection.")] = False,
    distill: Annotated[bool, typer.Option("--distill", help="Distil the (lite) model's own default pipeline (bank, "
                                          "caption words, reranker) into its towers: how lite v5 was made from v4. "
                                          "--tower-lr is every layer's peak lr.")] = False,
    multilingual: Annotated[bool, typer.Option("--multilingual", help="Train the model's multilingual query tower "
                                               "instead, from a table with lang and group columns (e.g. Multi30K); "
                                               "--out MODEL_FOLDER (or any folder) holds multilingual.safetensors, "
                                               "which loading that model picks up. --unfreeze text:N trains e5's "
                                               "last N layers (default 4; the shipped tower all 12, on a GPU), "
                                               "--tower-lr and --lr are theirs and the projection's.")] = False,
    layers: Annotated[int | None, typer.Option(
        "--layers", min=1, max=12, help="With --multilingual: distil the model's current tower into one of N "
        "layers (all trained, starting from every other lower layer and its top ones; its vector of each caption "
        "the teacher): about twice as fast a query at 6, for a few points of R@10 (more in languages it did not "
        "train on: docs/benchmarks.md).")] = None,
    distil_texts: Annotated[Path | None, typer.Option(
        "--distil-texts", exists=True, dir_okay=False, help="With --layers: a file of texts in any languages, one a "
        "line, that the student learns only to encode as the tower does (no photos): what keeps the languages the "
        "captions lack (benchmarks/distil_texts.py writes one).")] = None,
    from_tower: Annotated[Path | None, typer.Option(
        "--from-tower", exists=True, dir_okay=False, help="With --multilingual: start from this tower (e.g. the one "
        "an earlier version of the model shipped with) rather than from e5: all its layers are kept, its projection "
        "is rotated onto the model's space, then trained, with the layers --unfreeze names (--unfreeze heads: the "
        "projection alone, minutes on a CPU).")] = None,
    extra_data: Annotated[list[str] | None, typer.Option(
        "--extra-data", help="With --multilingual: more caption data to learn from, in any layout --data takes "
        "(e.g. the model's own training set); its captions without a lang column count as English.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Where a table's or Karpathy JSON's photo paths "
                                                "start (default: its own folder).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Fine-tune a dual encoder on image-caption data; `--model OUT` then loads the result anywhere.

    With --reranker, train the cross-encoder that re-scores the model's top results (docs/ranking.md); with
    --distill, teach the model's towers what its whole ranking pipeline knows.

    Examples:
      crossmodal train --data ../shared/datasets/flickr8k --out runs/my-lite --unfreeze image:5,text:6
      crossmodal train --model ./clip-folder --data my.tsv --loss siglip --unfreeze last:2 --out runs/my-clip
      crossmodal train --reranker --data ../shared/datasets/flickr8k --out my-collection/reranker
      crossmodal train --distill --data ../shared/datasets/flickr8k --out runs/lite-distilled
      crossmodal train --multilingual --data ../shared/datasets/multi30k-flickr8k/captions.tsv \\
          --images ../shared/datasets/flickr8k/images --out runs/my-lite
    """
    if sum((reranker, sparse, distill, multilingual)) > 1:
        raise ValueError("choose one of --reranker, --sparse, --distill and --multilingual")
    if (extra_data or layers or from_tower) and not multilingual:
        raise ValueError("--extra-data, --layers and --from-tower go with --multilingual")
    if distil_texts and not layers:
        raise ValueError("--distil-texts goes with --multilingual --layers N (the texts are distilled from the tower)")
    if multilingual:
        from .encoders import load_encoder, resolve_device
        from .encoders.multilingual import TowerWeights
        from .sources.datasets import load_dataset, merge_datasets
        from .training.train_multilingual import DISTIL_FROM_TOWER, MultilingualConfig, train_multilingual

        e5_layers = MultilingualConfig.layers
        carry = TowerWeights.load(from_tower) if from_tower else None
        if unfreeze == "heads":
            trained = 0 if carry else e5_layers - MultilingualConfig.frozen
        else:
            trained = parse_unfreeze(unfreeze)[1]
        least = 0 if carry else 1
        if not least <= trained <= e5_layers:
            raise ValueError(f"--unfreeze {unfreeze!r}: with --multilingual, text:N trains e5's last N of its "
                             f"{e5_layers} layers ({least} to {e5_layers})")
        teacher = None
        if layers is not None:
            teacher = load_encoder(model).multilingual
            if teacher is None:
                raise ValueError(f"--layers distils {model}'s multilingual tower, and it has none: train one first")
        encoder = load_encoder(model, multilingual=False)
        dev_data = load_dataset(data, dev_split, images)
        train_data = [load_dataset(spec, train_split, images if spec == data else None)
                      for spec in (data, *(extra_data or ()))]
        train_multilingual(encoder, merge_datasets(train_data) if extra_data else train_data[0],
                           dev_data if dev_data.texts else None, out,
                           MultilingualConfig(**({} if epochs is None else {"epochs": epochs}), seed=seed,
                                              frozen=e5_layers - trained, lr=tower_lr, head_lr=lr,
                                              **({} if layers is None else {"layers": layers,
                                                                            "distill": DISTIL_FROM_TOWER})),
                           log=lambda line: err.print(line, highlight=False), device=resolve_device(),
                           teacher=teacher, carry=carry,
                           distil_texts=distil_texts.read_text(encoding="utf-8").splitlines() if distil_texts else None)
        err.print(f"wrote {out / 'multilingual.safetensors'}", highlight=False)
        return
    epochs = (2 if reranker else 3 if distill else 10) if epochs is None else epochs
    if distill:
        from .sources.datasets import load_dataset
        from .training.distill_lite import DistilConfig, distil_lite, pipeline_of
        from .training.train_lite import readable

        pipeline_of(model)  # before reading the data: a model without its bank or reranker cannot teach
        warn = lambda line: err.print(line, highlight=False, markup=False)  # noqa: E731
        history = distil_lite(model, readable(load_dataset(data, train_split, images), warn),
                              readable(load_dataset(data, dev_split, images), warn), out,
                              DistilConfig(epochs=epochs, lr=tower_lr, batch_size=batch_size, views=views, seed=seed),
                              cache, log=warn)
        best = max(history, key=lambda h: h["dev_rsum"])
        err.print(f"wrote {out / 'lite.safetensors'}: dual encoder dev RSUM {best['dev_rsum']:.2f} (epoch "
                  f"{best['epoch']}; before: {history[0]['dev_rsum']:.2f}). Its pipeline needs a bank and reranker "
                  f"of its own, found in its folder: `crossmodal bank --model {out} --out {out}/bank.npz ...`, "
                  f"`crossmodal train --reranker --model {out} --out {out}/reranker ...`", highlight=False)
        return
    if sparse:
        from .training.train_sparse import SparseConfig, train_lite_sparse

        if model != "lite" and not Path(model).expanduser().is_dir():
            raise ValueError("--sparse trains for lite models: --model lite or a folder `crossmodal train` wrote")
        history = train_lite_sparse(model, data, out, cache, SparseConfig(epochs=epochs, seed=seed),
                                    log=lambda line: err.print(line, highlight=False), images=images)
        best = max(history, key=lambda h: h["rsum"])
        err.print(f"wrote {out}: dev RSUM {best['rsum']:.2f} (sparse scores alone, epoch {best['epoch']})",
                  highlight=False)
        return
    if reranker:
        from .encoders.lite import WEIGHTS
        from .training.train_reranker import train_reranker

        weights = Path(model).expanduser()
        weights = weights / "lite.safetensors" if weights.is_dir() else weights
        if model != "lite" and weights.suffix != ".safetensors":
            raise ValueError("--reranker trains for lite models: --model lite or a folder `crossmodal train` wrote")
        figures = train_reranker(WEIGHTS if model == "lite" else weights, data, out, epochs=epochs, seed=seed,
                                 cache=cache / "reranker", images=images,
                                 log=lambda line: err.print(line, highlight=False))
        err.print(f"wrote {out}: dev RSUM {figures['history'][figures['best_epoch']]['rsum']:.2f} "
                  f"(rerank top {figures['eval_depth']}, fusion weight {figures['weight']})", highlight=False)
        return
    from .allocator import reuse_large_blocks
    from .encoders import load_encoder, resolve_device
    from .evaluation.report import finish_report, write_report
    from .evaluation.runner import evaluate as run
    from .sources.datasets import load_dataset
    from .training.loop import TrainConfig, fit
    from .training.train_lite import readable, train_lite, write_curve

    lora = parse_lora(unfreeze)
    image_blocks, text_layers = (0, 0) if lora else parse_unfreeze(unfreeze)
    if lora and model == "lite":
        raise ValueError("--unfreeze lora:R is for transformers models; lite takes image:N,text:M")
    warn = lambda line: err.print(line, highlight=False, markup=False)  # noqa: E731
    train_data = readable(load_dataset(data, train_split, images), warn)
    dev_data = readable(load_dataset(data, dev_split, images), warn)
    config = TrainConfig(loss=loss, epochs=epochs, batch_size=batch_size, captions_per_image=captions_per_image,
                         lr=lr, tower_lr=tower_lr, weight_decay=weight_decay, patience=patience, seed=seed)
    device = resolve_device()
    if device == "cpu":
        reuse_large_blocks()
    if model == "lite":
        history = train_lite(train_data, dev_data, out, config, image_blocks, text_layers, views, cache=cache,
                             progress=not quiet, device=device)
    else:
        from .encoders.hf import HFDualEncoder
        from .training.hf_task import HFTask

        if image_blocks != text_layers:
            raise ValueError("transformers models take --unfreeze heads, last:N or lora:R")
        import torch

        torch.manual_seed(seed)  # LoRA's initial weights
        history = fit(HFTask(HFDualEncoder(model, device), train_data, dev_data, image_blocks, lora), config, out,
                      not quiet)
    write_curve(history, out / "training_curve.png")
    report = finish_report(run(load_encoder(str(out)), dev_data, progress=not quiet), dev_split)
    write_report(report, out / "report")
    m = report["metrics"]
    err.print(f"best dev RSUM {m['rsum']:.2f} (R@1 {m['i2t_R@1']:.1f} / {m['t2i_R@1']:.1f}); model in {out}, "
              f"load it with --model {out}", highlight=False)
