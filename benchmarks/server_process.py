"""`crossmodal serve` as a real process for a benchmark: on a free port, waited for until ready, stopped after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def serving(args: list[str], ready_within: float = 180.0, code: Path | None = None
            ) -> Iterator[tuple[subprocess.Popen, int]]:
    """Run ``python -m crossmodal ARGS --port PORT``; yield (process, port) once /ready answers 200. ``code``: the
    ``src`` folder of another checkout to import crossmodal from (a baseline), instead of the installed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "crossmodal", *args, "--port", str(port)],
                              env={**os.environ, "PYTHONUNBUFFERED": "1",
                                   **({"PYTHONPATH": str(code.resolve())} if code else {})})
    try:
        deadline = time.time() + ready_within
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"server did not become ready in {ready_within:.0f} s")
        yield server, port
    finally:
        server.terminate()
        server.wait(timeout=30)
