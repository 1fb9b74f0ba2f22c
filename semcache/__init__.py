"""semcache: a semantic cache for LLM applications.

Serve a stored completion when a new prompt means the same as one seen before,
and never across scopes (model, parameters, system prompt, conversation,
tenant, embedding model). Similarity is cosine in [-1, 1] everywhere.

>>> from semcache import SemanticCache, MISS        # doctest: +SKIP
>>> cache = SemanticCache("/tmp/my-cache")           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from semcache.errors import (
    ConfigError,
    EmbeddingError,
    IndexStateError,
    InvalidPromptError,
    NotFittedError,
    ProjectionError,
    SemcacheError,
    SerializationError,
    StoreError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from semcache.cache import (
        DEFAULT_THRESHOLD,
        MISS,
        CacheEntry,
        CacheStats,
        Guard,
        Hit,
        Miss,
        SemanticCache,
        default_directory,
    )
    from semcache.decorator import semantic_cache
    from semcache.embedding import (
        Embedder,
        FunctionEmbedder,
        SentenceTransformerEmbedder,
        default_embedder,
    )
    from semcache.messages import MessageKey, split_messages
    from semcache.scope import Scope

#: Public name -> the module defining it. Imported on first use (PEP 562), so
#: ``import semcache`` (and ``semcache --help``, ``semcache serve`` until it
#: needs the cache) does not wait for numpy, the index kernels or the model.
_LAZY = {
    **dict.fromkeys(("DEFAULT_THRESHOLD", "MISS", "CacheEntry", "CacheStats", "Guard", "Hit", "Miss",
                     "SemanticCache", "default_directory"), "semcache.cache"),
    "semantic_cache": "semcache.decorator",
    **dict.fromkeys(("Embedder", "FunctionEmbedder", "SentenceTransformerEmbedder",
                     "default_embedder"), "semcache.embedding"),
    **dict.fromkeys(("MessageKey", "split_messages"), "semcache.messages"),
    "Scope": "semcache.scope",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'semcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLD",
    "MISS",
    "CacheEntry",
    "CacheStats",
    "ConfigError",
    "Embedder",
    "EmbeddingError",
    "FunctionEmbedder",
    "Guard",
    "Hit",
    "IndexStateError",
    "InvalidPromptError",
    "MessageKey",
    "Miss",
    "NotFittedError",
    "ProjectionError",
    "Scope",
    "SemanticCache",
    "SemcacheError",
    "SentenceTransformerEmbedder",
    "SerializationError",
    "StoreError",
    "StoreLockedError",
    "default_directory",
    "default_embedder",
    "semantic_cache",
    "split_messages",
]
