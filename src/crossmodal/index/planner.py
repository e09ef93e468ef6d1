"""Choosing an index kind and its parameters from collection size, memory budget and a target,
in the spirit of autofaiss: the cheapest kind that meets the target within the budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Below this many vectors exact search answers in a few milliseconds: no approximation needed.
EXACT_UNTIL = 50_000
# IVF-PQ learns 256 centroids per sub-vector and nlist cells: below this it cannot train well.
IVFPQ_MIN = 2_000
# ef_search for a recall@10 target; measured at 1M x 512 clustered vectors (benchmarks/search.py).
EF_FOR_RECALL = ((0.90, 48), (0.95, 96), (0.98, 128), (0.99, 256))
HNSW_M = 32


@dataclass
class IndexPlan:
    """A chosen kind with its parameters, the estimated memory, and why."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    bytes: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hnsw_bytes(n: int, dim: int, storage: str = "fp32", m: int = HNSW_M) -> int:
    per_code = {"fp32": dim * 4, "fp16": dim * 2, "int8": dim}[storage]
    return int(n * (per_code + m * 2 * 4 * 1.05 + 17))


def ivfpq_bytes(n: int, dim: int, m: int, nlist: int) -> int:
    return n * (m + 8) + nlist * dim * 4 + 256 * dim * 4


def _ef(recall: float) -> int:
    for target, ef in EF_FOR_RECALL:
        if recall <= target:
            return ef
    return EF_FOR_RECALL[-1][1]


def plan_index(n: int, dim: int, memory: int | None = None, recall: float = 0.95,
               kind: str | None = None) -> IndexPlan:
    """Pick an index for ``n`` vectors of ``dim`` within ``memory`` bytes (None: no limit) reaching
    recall@10 >= ``recall``. ``kind`` forces the kind and only the parameters are planned."""
    flat = n * dim * 4
    nlist = min(65536, 1 << max(4, round(2 * n ** 0.5).bit_length() - 1))  # a power of two near 2 sqrt(n)
    if kind is None and n <= EXACT_UNTIL:
        return IndexPlan("flat", {"storage": "fp32"}, flat, f"{n} vectors: exact search is fast enough")
    ef = _ef(recall)
    hnsw = {s: hnsw_bytes(n, dim, s) for s in ("fp32", "int8")}
    if kind in (None, "hnsw") and (memory is None or hnsw["fp32"] <= memory):
        return IndexPlan("hnsw", {"m": HNSW_M, "ef_search": ef, "storage": "fp32"}, hnsw["fp32"],
                         f"HNSW with float32 vectors fits{' the budget' if memory else ''}; ef_search {ef} "
                         f"for recall@10 >= {recall}")
    if kind in (None, "hnsw") and (memory is None or hnsw["int8"] <= memory or kind == "hnsw"):
        return IndexPlan("hnsw", {"m": HNSW_M, "ef_search": ef, "storage": "int8"}, hnsw["int8"],
                         "HNSW with int8 vectors (rescored exactly) to fit the memory budget")
    if kind == "flat":
        storage = "fp32" if memory is None or flat <= memory else ("fp16" if flat // 2 <= memory else "int8")
        per = {"fp32": 4, "fp16": 2, "int8": 1}[storage]
        return IndexPlan("flat", {"storage": storage}, n * dim * per, f"exact search, {storage} storage")
    if kind == "ivfpq" and n < IVFPQ_MIN:
        return IndexPlan("flat", {"storage": "fp32"}, flat,
                         f"{n} vectors are too few to train IVF-PQ; exact search until {IVFPQ_MIN}")
    if kind == "binary":
        return IndexPlan("binary", {"rescore": 20}, n * (dim // 8 + 8), "sign codes, rescored exactly")
    for m in (64, 32, 16, 8):  # each divides the index width (search/normalise.py: index_dim)
        if dim % m == 0 and m <= dim and (memory is None or ivfpq_bytes(n, dim, m, nlist) <= memory):
            return IndexPlan("ivfpq", {"nlist": nlist, "m": m, "nprobe": 32, "rescore": 10},
                             ivfpq_bytes(n, dim, m, nlist),
                             f"IVF-PQ ({m} bytes per vector) with exact rescoring fits the memory budget")
    raise ValueError(f"no index kind fits {n} x {dim} vectors in {memory} bytes; raise --memory")
