"""semcache: a semantic cache for LLM applications.

Serve a stored completion when a new prompt means the same as one seen before,
and never across scopes (model, parameters, system prompt, conversation,
tenant, embedding model). Similarity is cosine in [-1, 1] everywhere.

>>> from semcache import SemanticCache, MISS        # doctest: +SKIP
>>> cache = SemanticCache("/tmp/my-cache")           # doctest: +SKIP
"""

from __future__ import annotations

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
from semcache.messages import MessageKey, split_messages
from semcache.scope import Scope

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
