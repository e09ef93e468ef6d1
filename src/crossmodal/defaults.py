"""Defaults that commands show in their help, in a module light enough for `crossmodal --help` to read."""

# Rerank the top N by default; chosen within the serving budget (docs/benchmarks.md): 32 scored 0.9 dev RSUM more
# but its p99 reached 152 ms.
DEFAULT_RERANK = 16
DEFAULT_MAX_PIXELS = 90_000_000  # the decompression-bomb cap: Pillow's own warning threshold, rounded
