"""A progress bar with an ETA for one long FAISS HNSW add (building a graph of a million vectors takes minutes).

FAISS reports an add's progress only by printing a line per graph level when the index is ``verbose``
("Adding N elements at level L"), and about 97% of the vectors are on level 0, the last one. While the add
runs, the process's standard output goes into a pipe that a thread reads: the levels above 0 give the rate
at which this machine links vectors, and level 0's progress is estimated from it and the time since it
began (a level-0 vector costs 0.7-1.05x an upper one: 50k-300k x 512, efConstruction 80), so the bar moves
and its ETA holds to within about a third; it ends when the add does. Anything else printed meanwhile is
passed on to the real standard output.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

LEVEL = re.compile(rb"Adding (\d+) elements at level (\d+)")
LEVEL0_COST = 0.85  # seconds per level-0 vector / seconds per upper-level vector (measured: 0.72-1.05)
TICK = 0.5  # seconds between the bar's moves while level 0 is linked
FAISS_LINES = (b"hnsw_add_vertices", b"max_level", b"Done in")  # FAISS's other lines, not passed on


@contextmanager
def hnsw_progress(index: Any, total: int, desc: str, enabled: bool = True) -> Iterator[None]:
    """Show a bar for the FAISS HNSW add of ``total`` vectors run inside the block."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to read FAISS's lines from (a daemon): no bar
        yield
        return
    bar = tqdm(total=total, desc=desc, unit="vector", file=sys.stderr, mininterval=1.0)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    reader = threading.Thread(target=_follow, args=(read_end, saved, bar), daemon=True)
    reader.start()
    index.verbose = True
    try:
        yield
    finally:
        index.verbose = False
        ctypes.CDLL(None).fflush(None)  # C's buffered standard output, into the pipe before it closes
        os.dup2(saved, 1)  # the pipe's last writer goes: the reader sees its end
        reader.join()
        os.close(saved)
        bar.update(total - bar.n)
        bar.close()


def _follow(read_end: int, out: int, bar: tqdm) -> None:
    """Move ``bar`` by FAISS's lines from the pipe, and by the estimate while level 0 is linked, until the pipe
    closes; other output goes on to ``out``."""
    started = level0 = rate = None  # when the first level began, when level 0 began, upper vectors per second
    done = current = 0  # vectors of the finished levels, of the current one
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            if select.select([pipe], [], [], TICK)[0]:
                if not (chunk := pipe.read(4096)):
                    return
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for line in lines:
                    if match := LEVEL.search(line):
                        now = time.perf_counter()
                        started, done, current = started or now, done + current, int(match.group(1))
                        if match.group(2) == b"0" and done:
                            level0, rate = now, done / max(now - started, 1e-6) / LEVEL0_COST
                        bar.update(done - bar.n)
                    elif line.strip() and not line.lstrip().startswith(FAISS_LINES):
                        os.write(out, line + b"\n")
            if level0 is not None and rate is not None:
                estimate = done + min(current - 1, int((time.perf_counter() - level0) * rate))
                bar.update(max(0, estimate - bar.n))
