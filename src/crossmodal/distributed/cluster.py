"""Reaching Ray: the module when it is installed (else one line saying what to install), and a connection to
a cluster or a new local Ray, shared by the encode pool and the shard actors."""

from __future__ import annotations

import logging
from typing import Any

INSTALL = 'pip install "crossmodal[ray]"'


class RayMissingError(ImportError, ValueError):
    """Ray is not installed (a ValueError too, so the command line prints it as one line, not a traceback)."""


def require_ray() -> Any:
    """The ``ray`` module, or a RayMissingError that says what to install."""
    try:
        import ray
    except ImportError as e:
        raise RayMissingError(f"--ray needs Ray, which is not installed here: {INSTALL}") from e
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> tuple[Any, bool]:
    """The ``ray`` module connected to the cluster at ``address`` (``auto``: the one `ray start` runs here), else
    to a new local Ray of ``num_cpus`` CPUs (never to one that happens to run here); and whether this call made
    the connection (its owner then shuts it down). A process already connected keeps its connection."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    local = {} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING, **local)
    return ray, True
