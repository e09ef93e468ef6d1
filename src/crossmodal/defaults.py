"""Defaults that commands show in their help, in a module light enough for `crossmodal --help` to read."""

# Rerank the top N by default; chosen within the serving budget (docs/benchmarks.md): 32 scored 0.9 dev RSUM more
# but its p99 reached 152 ms.
DEFAULT_RERANK = 16
DEFAULT_MAX_PIXELS = 90_000_000  # the decompression-bomb cap: Pillow's own warning threshold, rounded
DEFAULT_DIVERSITY = 0.5  # MMR's lambda for a bare --diverse: an even trade-off, the usual default (search/diversity.py)
# Cosine at which two photos count as copies: best F1 on half of Flickr8k dev with synthetic copies among 3,500
# other photos (benchmarks/duplicates.py; docs/benchmarks.md).
DUPLICATE_THRESHOLD = 0.86
# Where candidates come from by default (search/hybrid.py); hybrid scored 2.4 points higher on dev caption search
# but adds a keyword query to each search (docs/ranking.md).
DEFAULT_RETRIEVER = "dense"
# Seconds a search of a sharded collection waits for each shard before answering without it (marked partial):
# far above a loaded shard's p99 (docs/benchmarks.md), so only a stopped or stuck shard is left out.
DEFAULT_SHARD_TIMEOUT = 10.0
