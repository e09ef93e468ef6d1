"""Photo indexing on Ray: a pool of actors that each load the model once and turn batches of photo files into
what the store keeps (content hash, header metadata, vector, reranker tokens, or why a file is unusable).

The actors do what the local prefetch threads and the encoder do (``sync._load`` and ``sync.encode_loaded``, the
same code), so the vectors equal a local run's; the calling process still owns the store and writes every batch
(collection/sync.py), so ids, moves, duplicates, failures and resuming behave exactly as without Ray. Workers only
read the photo files: on a cluster the photos must be on a shared file system or at the same paths on every node.

Faults: an actor that crashes is restarted by Ray and its batches are retried there (``max_restarts``,
``max_task_retries``); one that is gone for good leaves the pool and its batches go to the others. Ray is imported
here only, when a pool is made; without it ``require_ray`` says what to install.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..collection.sync import _load, _Loaded, _Pending, encode_loaded
from .cluster import connect

if TYPE_CHECKING:
    from ..encoders.base import Encoder
    from ..rerank.runtime import Reranker

RETRIES = 3  # Ray's own restarts and retries of one actor, then as many moves of a batch to another actor
RerankerSpec = tuple[str, str] | None  # (folder, fingerprint of what a photo stores) of the collection's reranker


class EncodeWorkersError(RuntimeError, ValueError):
    """The encode actors could not start or all failed (a ValueError too: the command line prints one line)."""


def _cause(error: Exception) -> str:
    """The last line of a Ray error, where it names what went wrong in the actor (not its remote traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class EncodeWorker:
    """One actor's state and work: the model, loaded once, and the batches it reads, decodes and encodes."""

    def __init__(self, model: str, threads: int, device: str | None) -> None:
        import torch

        from ..encoders import load_encoder

        torch.set_num_threads(threads)
        self.encoder: Encoder = load_encoder(model, device=device, multilingual=False)
        if hasattr(self.encoder, "use_threads"):  # ONNX Runtime sessions: as many threads as the actor's CPUs
            self.encoder.use_threads(threads)
        self._known: tuple[str, frozenset[str]] = ("", frozenset())
        self._rerankers: dict[RerankerSpec, Reranker | None] = {}

    def fingerprint(self) -> str:
        """The loaded model's fingerprint and photo reading (the pool checks it against the collection's)."""
        return self.encoder.photo_reading

    def encode(self, entries: list[_Pending], known: list[Any], max_pixels: int, reranker: RerankerSpec
               ) -> list[_Loaded]:
        """Read, hash and, for content not in ``known`` (a one-item list holding its object ref), decode and encode
        each photo; the decoded pixels stay here."""
        stored = self._stored(known[0])
        loaded = [_load(entry, stored, max_pixels, self.encoder.prepare_image) for entry in entries]
        encode_loaded(self._reranker(reranker), self.encoder, loaded)
        return loaded

    def _stored(self, ref: Any) -> frozenset[str]:
        """The run's stored content hashes, fetched once per run (the set can hold millions)."""
        import ray

        if self._known[0] != ref.hex():
            self._known = (ref.hex(), ray.get(ref))
        return self._known[1]

    def _reranker(self, spec: RerankerSpec) -> Reranker | None:
        """The collection's reranker, found here by folder or, when that folder is not on this node, among the
        shipped ones; None when this node has no reranker with the same photo tokens (the caller's collection then
        computes the missing tokens itself after the run)."""
        if spec not in self._rerankers:
            from ..search.rerank import find_reranker

            found = find_reranker(self.encoder.fingerprint, Path(spec[0])) if spec else None
            self._rerankers[spec] = found if found is not None and found.stored_fingerprint == spec[1] else None
        return self._rerankers[spec]


@dataclass
class _Slot:
    actor: Any
    busy: int = 0


@dataclass
class _Job:
    entries: list[_Pending]
    slot: _Slot
    ref: Any
    moves: int = 0


class EncodePool(AbstractContextManager["EncodePool"]):
    """Ray actors holding the collection's model; ``load`` streams photos through them, in order."""

    def __init__(self, model: str, workers: int | None = None, *, address: str | None = None, threads: int = 1,
                 gpus: bool | None = None, in_flight: int = 2) -> None:
        """Connect to the Ray cluster at ``address`` (else start a local Ray for ``workers`` actors) and start
        ``workers`` actors (default: one per ``threads`` CPUs of the cluster, or one per GPU), spread over its
        nodes, each running the model ``model`` on ``threads`` threads; each keeps ``in_flight`` batches queued."""
        ray, self._own = connect(address, workers * threads if workers else None)
        self._ray, self._slots = ray, []
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) >= 1 if gpus is None else gpus
        room = int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 1)) // threads
        workers = workers or max(1, room)
        if workers > room:
            self.close()
            raise ValueError(f"the Ray cluster has room for {room} workers of {threads} CPU(s)"
                             f"{' and one GPU' if gpus else ''} each, not {workers}: use --workers {max(1, room)}")
        actor = ray.remote(EncodeWorker).options(
            num_cpus=threads, num_gpus=1 if gpus else 0, max_restarts=RETRIES, max_task_retries=RETRIES,
            scheduling_strategy="SPREAD")
        self.model, self.threads, self.in_flight = model, threads, in_flight
        self._slots = [_Slot(actor.remote(model, threads, "cuda" if gpus else None)) for _ in range(workers)]
        try:
            self.fingerprints = set(ray.get([s.actor.fingerprint.remote() for s in self._slots]))
        except ray.exceptions.RayError as e:
            self.close()
            raise EncodeWorkersError(f"the Ray encode workers could not load the model {model!r}: {_cause(e)}") from e

    @property
    def actors(self) -> list[Any]:
        """The live actors' handles."""
        return [s.actor for s in self._slots]

    def check(self, encoder: Encoder) -> None:
        """Refuse to index when the workers' model is not the collection's (its vectors would not compare)."""
        if self.fingerprints != {encoder.photo_reading}:
            raise ValueError(f"the Ray workers loaded {self.model!r} with fingerprint {', '.join(self.fingerprints)}, "
                             f"the collection's model is {encoder.photo_reading}: give them the same model files "
                             "(and the same name, e.g. lite+mirror)")

    def load(self, entries: list[_Pending], known: frozenset[str], max_pixels: int, reranker: Reranker | None,
             batch_size: int) -> Iterator[_Loaded]:
        """Each entry read, hashed and (new content) decoded and encoded by the actors, in order; ``known``
        holds the stored content hashes, whose photos are not decoded again."""
        ray = self._ray
        spec = (str(reranker.folder), reranker.stored_fingerprint) if reranker is not None else None
        stored = [ray.put(known)]  # nested in a list: each actor fetches it once, not with every batch
        todo = deque(entries[i:i + batch_size] for i in range(0, len(entries), batch_size))
        jobs: deque[_Job] = deque()

        def submit(job_entries: list[_Pending], moves: int = 0) -> _Job:
            slot = min(self._slots, key=lambda s: s.busy)
            slot.busy += 1
            return _Job(job_entries, slot, slot.actor.encode.remote(job_entries, stored, max_pixels, spec), moves)

        try:
            while todo or jobs:
                while todo and len(jobs) < self.in_flight * len(self._slots):
                    jobs.append(submit(todo.popleft()))
                try:
                    done = ray.get(jobs[0].ref)
                except ray.exceptions.RayActorError as e:
                    self._lost(jobs, e, submit)
                    continue
                jobs.popleft().slot.busy -= 1
                yield from done
        finally:
            for job in jobs:
                ray.cancel(job.ref)
                job.slot.busy -= 1

    def load_one(self, entry: _Pending, max_pixels: int, reranker: Reranker | None) -> _Loaded:
        """One photo read, decoded and encoded by an actor, whatever is stored."""
        return next(self.load([entry], frozenset(), max_pixels, reranker, 1))

    def _lost(self, jobs: deque[_Job], error: Exception, submit: Any) -> None:
        """The first job's actor failed after Ray's retries: drop it when it is dead and move its jobs to the
        others, in place (the order of results stays)."""
        slot = jobs[0].slot
        if isinstance(error, self._ray.exceptions.ActorDiedError) and slot in self._slots:
            self._slots.remove(slot)
        for i, job in enumerate(jobs):
            if job.slot is not slot:
                continue
            slot.busy -= 1
            if not self._slots or job.moves >= RETRIES:
                raise EncodeWorkersError(f"the Ray encode workers failed: {_cause(error)}") from error
            jobs[i] = submit(job.entries, job.moves + 1)

    def close(self) -> None:
        """Stop the actors, and the local Ray this pool started."""
        for slot in self._slots:
            self._ray.kill(slot.actor)
        self._slots = []
        if self._own:
            self._ray.shutdown()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EncodePool({self.model!r}, workers={len(self._slots)}, threads={self.threads})"
