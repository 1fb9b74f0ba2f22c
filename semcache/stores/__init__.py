"""Store backends behind one interface (:class:`~semcache.stores.base.Store`).

``make_store`` turns the ``store=`` argument of :class:`~semcache.SemanticCache`
into a :class:`Store`: ``"memory"``, ``"disk"`` (SQLite in a directory), a
:class:`Store` instance, or a URL whose scheme is registered in
:data:`URL_SCHEMES` (the PostgreSQL backend registers ``postgresql://``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from semcache.errors import ConfigError
from semcache.stores.base import (
    CLEARED,
    COUNTER_NAMES,
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
    vector_digest,
    vector_digests,
)

__all__ = [
    "CLEARED",
    "COUNTER_NAMES",
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
    "vector_digests",
]

#: URL scheme -> factory ``(url, timeout) -> Store``. Backends living in optional
#: modules register here (e.g. ``URL_SCHEMES["postgresql"] = ...``).
URL_SCHEMES: dict[str, Callable[[str, float], Store]] = {}


def make_store(spec: object, directory: Path | None, *, timeout: float = 10.0) -> Store:
    """Build the store named by ``spec``.

    Parameters
    ----------
    spec : {"memory", "disk"}, Store or URL str
        What :class:`~semcache.SemanticCache` was given as ``store=``.
    directory : Path or None
        Absolute cache directory (required for ``"disk"``).
    timeout : float
        Seconds to wait for a lock held by another process.

    Raises
    ------
    ConfigError
        Unknown spec.
    StoreError
        The store cannot be opened.
    """
    if isinstance(spec, Store):
        return spec
    if spec == "memory":
        from semcache.stores.memory import MemoryStore

        return MemoryStore()
    if spec == "disk":
        if directory is None:
            raise ConfigError("store='disk' needs a directory")
        from semcache.stores.sqlite import SQLiteStore

        return SQLiteStore(directory, timeout=timeout)
    if isinstance(spec, str) and "://" in spec:
        scheme = spec.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme == "postgres":
            scheme = "postgresql"
        factory = URL_SCHEMES.get(scheme)
        if factory is None and scheme == "postgresql":
            try:  # the PostgreSQL backend registers itself on import
                importlib.import_module("semcache.stores.postgres")
            except ImportError as exc:
                raise ConfigError(f"store URL {scheme}:// needs the PostgreSQL backend: {exc}") from exc
            factory = URL_SCHEMES.get(scheme)
        if factory is None:
            raise ConfigError(f"no store backend for URLs of scheme {scheme!r}")
        return factory(spec, timeout)
    raise ConfigError(f"store must be 'disk', 'memory', a store URL or a Store, not {spec!r}")
