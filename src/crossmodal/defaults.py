"""Defaults that commands show in their help, in a module light enough for `crossmodal --help` to read."""

# Rerank the top N by default: the best on Flickr8k dev within the serving budget (docs/benchmarks.md). With lite v5
# and its bank's share 1.0, 32 scored 378.46 against 377.96 at 16 and 378.34 at 64, at a serve p99 of 120 ms (16:
# 114 ms); with v4 it had reached 152 ms, and 16 was the default until then.
DEFAULT_RERANK = 32
DEFAULT_MAX_PIXELS = 90_000_000  # the decompression-bomb cap: Pillow's own warning threshold, rounded
DEFAULT_DIVERSITY = 0.5  # MMR's lambda for a bare --diverse: an even trade-off, the usual default (search/diversity.py)
# Cosine at which two photos count as copies: best F1 on half of Flickr8k dev with synthetic copies among 3,500
# other photos (benchmarks/duplicates.py; docs/benchmarks.md).
DUPLICATE_THRESHOLD = 0.86
# Where candidates come from by default (search/hybrid.py): hybrid (dense + BM25 + the caption words stored per
# photo) with rerank 16 scored 362.3 Flickr8k dev RSUM against dense's 361.6, and 2.4 points more on dev caption
# search; it adds a keyword and a word-index query to each search (docs/benchmarks.md).
DEFAULT_RETRIEVER = "hybrid"
# Seconds a search of a sharded collection waits for each shard before answering without it (marked partial):
# far above a loaded shard's p99 (docs/benchmarks.md), so only a stopped or stuck shard is left out.
DEFAULT_SHARD_TIMEOUT = 10.0
# A new bank's normalisation (search/normalise.py): each item's bias is the mean of its 64 best scores against the
# bank's queries, and 0.75 of it comes off its score; chosen on Flickr8k dev with lite v4. lite v5's own bank
# takes all of it (share 1.0, chosen on dev with benchmarks/tune_pipeline.py); each bank file records its own.
BANK_TOP_K = 64
BANK_SHARE = 0.75
