"""Shards served by Ray actors: each shard's collection lives in an actor that Ray may place on any node, and
the router (``crossmodal serve --ray``, or ``ShardedCollection.open(..., fanout=RayShards(...))``) calls them
all at once with the same calls the local threads make (collection/sharded.py). A shard that does not answer
within the search's timeout, or whose actor is gone, is left out of that answer, which is marked partial.

The shard folders must be readable where the actors run: a shared file system, or a copy at the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..collection.collection import Collection
from ..collection.sharded import (
    Answers,
    Args,
    ShardedCollection,
    is_sharded,
    shard_count,
    shard_folders,
)
from ..defaults import DEFAULT_SHARD_TIMEOUT
from ..encoders.base import Encoder
from .cluster import connect

RESTARTS = 3  # Ray restarts a shard actor that crashed (on another node if its own is gone) this many times
READY_TIMEOUT = 300.0  # seconds the router waits for every shard to open at start


class ShardActor:
    """One shard: its collection, opened where the actor runs; ``run`` answers one of the router's calls."""

    def __init__(self, folder: str) -> None:
        self.collection = Collection.open(folder, create=False)

    def ready(self) -> int:
        """How many items the shard holds, once it is open."""
        return len(self.collection)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.collection, *args)


class RayShards:
    """The ``Fanout`` of a sharded collection whose shards are Ray actors, one per shard, spread over the nodes."""

    def __init__(self, folders: Sequence[Path], address: str | None = None, cpus: float = 1.0) -> None:
        """Connect to the Ray cluster at ``address`` (else start a local one) and open one actor per shard folder,
        each holding ``cpus`` CPUs."""
        ray, self._own = connect(address)
        self._ray = ray
        actor = ray.remote(ShardActor).options(num_cpus=cpus, max_restarts=RESTARTS, scheduling_strategy="SPREAD")
        self.actors = [actor.remote(str(Path(f).absolute())) for f in folders]
        self.n = len(self.actors)
        ray.get([a.ready.remote() for a in self.actors], timeout=READY_TIMEOUT)

    def call(self, fn: Callable[..., Any], args: Args, timeout: float | None = None) -> Answers:
        """Results by shard and the shards that did not answer within ``timeout`` or whose actor is gone; an
        error the call itself raised in a shard (a bad filter, say) is raised here."""
        ray = self._ray
        refs = {s: self.actors[s].run.remote(fn, *a) for s, a in args.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        done = set(ready)
        results, missing = {}, []
        for s, ref in refs.items():
            try:
                if ref not in done:
                    raise TimeoutError
                results[s] = ray.get(ref)
            except (TimeoutError, ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                missing.append(s)
        return results, missing

    def close(self) -> None:
        """Stop the shard actors, and the local Ray this router started."""
        for a in self.actors:
            self._ray.kill(a)
        if self._own:
            self._ray.shutdown()


def sharded_folder(folder: str | Path) -> Path:
    """``folder``, refused unless it holds a sharded collection (what Ray serves)."""
    folder = Path(folder).expanduser()
    if not is_sharded(folder):
        raise ValueError(f"{folder} is not a sharded collection: --ray serves the shards of one made with "
                         "`crossmodal index --shards N`")
    return folder


def open_on_ray(folder: str | Path, model: str | Encoder | None = None, address: str | None = None,
                timeout: float | None = DEFAULT_SHARD_TIMEOUT) -> ShardedCollection:
    """A sharded collection whose shards are served by Ray actors (``crossmodal serve --ray``); this process
    routes queries to them and encodes queries with ``model`` (default: the collection's)."""
    folder = sharded_folder(folder)
    return ShardedCollection.open(folder, model=model, timeout=timeout,
                                  fanout=RayShards(shard_folders(folder, shard_count(folder)), address))
