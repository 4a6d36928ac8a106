"""Serving ppfr: a durable gallery store, vectorised matching, and (elsewhere) the HTTP API.

- :func:`open_store` opens a :class:`GalleryStore` (SQLite file or PostgreSQL database)
  holding enrolled templates, their SlerpFace keys (kept apart) and API-key hashes.
- :class:`Matcher` identifies and verifies queries against a gallery, applying its writes in place.
"""

from ppfr.serve.matching import Matcher
from ppfr.serve.store import (
    ApiKeyRecord,
    GalleryMatrix,
    GalleryStats,
    GalleryStore,
    open_store,
)

__all__ = [
    "ApiKeyRecord",
    "GalleryMatrix",
    "GalleryStats",
    "GalleryStore",
    "Matcher",
    "open_store",
]
