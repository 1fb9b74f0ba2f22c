"""Indexes: candidate generators over projected embeddings.

See :mod:`semcache.index.base` for the contract. :func:`make_index` builds an
index by name; the cache uses it so the choice is a configuration string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from semcache.errors import ConfigError
from semcache.index.base import Index, check_batch
from semcache.index.exact import ExactIndex

#: Index constructors by name. Approximate indexes register here too.
INDEXES: dict[str, Callable[..., Index]] = {
    "exact": ExactIndex,
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


__all__ = ["INDEXES", "ExactIndex", "Index", "check_batch", "make_index"]
