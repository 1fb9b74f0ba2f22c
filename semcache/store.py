"""Compatibility module: the store interface lives in :mod:`semcache.stores`.

``EntryMeta``, ``StoredEntry``, ``CLEARED`` and the other names stay importable
from here.
"""

from __future__ import annotations

from semcache.stores import (
    CLEARED,
    URL_SCHEMES,
    ChangeBatch,
    Digests,
    EntryMeta,
    Loaded,
    Row,
    Store,
    StoredEntry,
    check_meta,
    check_vector,
    dumps_completion,
    loads_completion,
    make_store,
    vector_digest,
)

__all__ = [
    "CLEARED",
    "URL_SCHEMES",
    "ChangeBatch",
    "Digests",
    "EntryMeta",
    "Loaded",
    "Row",
    "Store",
    "StoredEntry",
    "check_meta",
    "check_vector",
    "dumps_completion",
    "loads_completion",
    "make_store",
    "vector_digest",
]
