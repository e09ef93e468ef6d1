"""crossmodal: cross-modal retrieval. Find photos by describing them, captions for a photo, similar photos."""

__version__ = "0.1.0"

from .collection.collection import Collection, Hit  # noqa: E402
from .encoders import load_encoder  # noqa: E402

__all__ = ["Collection", "Hit", "load_encoder", "__version__"]
