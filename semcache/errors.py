"""The one exception tree of semcache.

Every error semcache raises on purpose derives from :class:`SemcacheError`, so
``except semcache.SemcacheError`` is enough to catch them all. Subclasses also
derive from the closest built-in exception (``ValueError``, ``TypeError``,
``OSError``) so code written against the built-ins keeps working.

::

    SemcacheError
    ├── ConfigError          bad constructor argument, threshold out of range,
    │                        settings that disagree with a reopened directory
    ├── InvalidPromptError   empty / non-string prompt, malformed messages
    ├── EmbeddingError       the embedder failed, or returned NaN, zero or
    │                        wrongly shaped vectors
    ├── ProjectionError      projection used before ``fit``, or on the wrong width
    │   └── NotFittedError
    ├── IndexStateError      an index given inconsistent ids or shapes
    ├── StoreError           the store directory is missing, corrupt or locked
    │   ├── StoreLockedError
    │   └── StoreFormatError a directory written by another store format
    │                        (e.g. the old diskcache layout); never read
    └── SerializationError   a completion that is not JSON-serialisable
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmbeddingError",
    "IndexStateError",
    "InvalidPromptError",
    "NotFittedError",
    "ProjectionError",
    "SemcacheError",
    "SerializationError",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
]


class SemcacheError(Exception):
    """Base class of every error semcache raises on purpose."""


class ConfigError(SemcacheError, ValueError):
    """A setting is invalid, or disagrees with the settings saved in a cache directory."""


class InvalidPromptError(SemcacheError, ValueError):
    """A prompt (or a list of chat messages) that cannot be cached: empty, not a string, malformed."""


class EmbeddingError(SemcacheError, RuntimeError):
    """The embedder failed or returned unusable vectors (NaN, all-zero, wrong shape)."""


class ProjectionError(SemcacheError, ValueError):
    """A projection was given input of the wrong width, or could not be fitted."""


class NotFittedError(ProjectionError):
    """A projection was used before :meth:`fit` was called."""


class IndexStateError(SemcacheError, ValueError):
    """An index was given ids or arrays that do not fit its state (duplicate id, wrong width)."""


class StoreError(SemcacheError, OSError):
    """The store could not be opened, read or written (missing, corrupt, unwritable directory)."""


class StoreLockedError(StoreError):
    """The store is locked by another process for longer than the configured timeout."""


class StoreFormatError(StoreError):
    """The directory holds a store of another format (e.g. semcache's old diskcache layout).

    Nothing in it is read: delete the directory (or use another one) and let the cache refill.
    """


class SerializationError(SemcacheError, TypeError):
    """A completion is not JSON-serialisable, or a stored record could not be decoded."""
