"""Indexes: candidate generators over projected embeddings.

See :mod:`semcache.index.base` for the contract. :func:`make_index` builds an
index by name; the cache uses it so the choice is a configuration string.

The approximate indexes (:class:`~semcache.index.grid.GridIndex`,
:class:`~semcache.index.multigrid.MultiGridIndex`,
:class:`~semcache.index.thermal.ThermalIndex`) are imported on first use: their
numba kernels take seconds to compile on a fresh install, which ``import
semcache`` and caches that never grow past exact search should not pay.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# Before anything imports numba (nothing above does): this import points numba at a private
# temp folder when neither the install nor $HOME is writable (read-only images).
import semcache._numba_cache  # noqa: F401  (for its side effect, before any index module)
from semcache.errors import ConfigError
from semcache.index.base import Index, check_batch
from semcache.index.exact import ExactIndex

if TYPE_CHECKING:
    from semcache.index.grid import GridIndex
    from semcache.index.multigrid import MultiGridIndex
    from semcache.index.thermal import ThermalIndex

#: Where the lazily imported indexes live: attribute name -> module.
_LAZY = {
    "GridIndex": "semcache.index.grid",
    "MultiGridIndex": "semcache.index.multigrid",
    "ThermalIndex": "semcache.index.thermal",
}


def _lazy(name: str) -> Callable[..., Index]:
    def build(**params: Any) -> Index:
        cls: Callable[..., Index] = getattr(importlib.import_module(_LAZY[name]), name)
        return cls(**params)

    build.__name__ = build.__qualname__ = name
    return build


#: Index constructors by name.
INDEXES: dict[str, Callable[..., Index]] = {
    "exact": ExactIndex,
    "grid": _lazy("GridIndex"),
    "multigrid": _lazy("MultiGridIndex"),
    "thermal": _lazy("ThermalIndex"),
}


def make_index(kind: str, **params: Any) -> Index:
    """Build an empty index of the named kind.

    Raises
    ------
    ConfigError
        Unknown kind, or parameters the index rejects.
    """
    try:
        factory = INDEXES[kind]
    except KeyError:
        raise ConfigError(f"unknown index {kind!r}; choose one of {sorted(INDEXES)}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for index {kind!r}: {exc}") from exc


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "INDEXES",
    "ExactIndex",
    "GridIndex",
    "Index",
    "MultiGridIndex",
    "ThermalIndex",
    "check_batch",
    "make_index",
]
