"""Scale-out on Ray (an optional extra: ``pip install "crossmodal[ray]"``): a pool of actors that encode photos.

Nothing here imports Ray until a pool is made, so the rest of crossmodal works without it.
"""

from .encode_pool import EncodePool, EncodeWorkersError, RayMissingError, require_ray

__all__ = ["EncodePool", "EncodeWorkersError", "RayMissingError", "require_ray"]
