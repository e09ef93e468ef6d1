"""Scale-out on Ray (an optional extra: ``pip install "crossmodal[ray]"``): actors that encode photos
(encode_pool.py) and actors that serve a sharded collection's shards (shards.py).

Nothing here imports Ray until a pool or a shard actor is made, so the rest of crossmodal works without it.
"""

from .cluster import INSTALL, RayMissingError, connect, require_ray
from .encode_pool import EncodePool, EncodeWorkersError

__all__ = ["INSTALL", "EncodePool", "EncodeWorkersError", "RayMissingError", "connect", "require_ray"]
