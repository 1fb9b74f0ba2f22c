"""Persistent storage of cache entries: diskcache on local disk, or memory.

Layout (keys of one key-value store, all values raw bytes, str or int, so
nothing is ever unpickled):

``seq``
    a counter, incremented atomically by every put and delete. A put's entry id
    *is* the counter value it took, which makes the store its own change journal.
``m:<id>``
    entry metadata (JSON header) followed by its float32 embedding.
``c:<id>``
    the matched prompt and the completion, as JSON. Kept apart from ``m:`` so
    rebuilding the index never reads completions.
``o:<seq>``
    tombstone: the id deleted by the operation that took ``seq``.
``u:<seq>``
    the id whose metadata the operation that took ``seq`` rewrote (feedback).
``settings``, ``blob:<name>``
    cache settings (checked on reopen) and opaque blobs (the fitted projection).

A process keeps the last ``seq`` it has seen; :meth:`RecordStore.changes` replays
``(seen, seq]`` to learn what other processes put and deleted, so several
processes can share one directory. A put writes ``seq``, ``m:`` and ``c:`` in
one transaction, so a reader that sees the new ``seq`` also sees the entry, and
a writer killed mid-put leaves either all of it or none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from semcache._types import FloatArray, JSONValue
from semcache.errors import SerializationError, StoreError, StoreLockedError

__all__ = ["CLEARED", "DiskKV", "EntryMeta", "KeyValue", "MemoryKV", "RecordStore", "StoredEntry"]

log = logging.getLogger("semcache")

T = TypeVar("T")
_HEADER = struct.Struct("<I")

#: Tombstone id journalled by :meth:`RecordStore.clear`: every entry is gone.
CLEARED = -1


class KeyValue(Protocol):
    """The few key-value operations the record store needs (diskcache's names)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> bool: ...

    def delete(self, key: str) -> bool: ...

    def incr(self, key: str, delta: int = 1, default: int = 0) -> int: ...

    def transact(self) -> contextlib.AbstractContextManager[Any]: ...

    def clear(self) -> int: ...

    def close(self) -> None: ...


class MemoryKV:
    """A dict behind a lock, with diskcache's interface. Gone when the process ends."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.RLock()

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> bool:
        with self._lock:
            self._data[key] = value
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def incr(self, key: str, delta: int = 1, default: int = 0) -> int:
        with self._lock:
            value = int(self._data.get(key, default)) + delta
            self._data[key] = value
            return value

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        with self._lock:
            yield

    def clear(self) -> int:
        with self._lock:
            n = len(self._data)
            self._data.clear()
            return n

    def close(self) -> None:
        pass


def DiskKV(directory: str | Path, timeout: float = 10.0) -> KeyValue:
    """Open (creating if needed) a diskcache ``Cache`` as the key-value store.

    Parameters
    ----------
    directory : path
        Folder of the SQLite database and large-value files.
    timeout : float
        Seconds to wait for a lock held by another process before giving up.

    Raises
    ------
    StoreError
        The folder cannot be created or holds something that is not a cache.
    """
    import diskcache

    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # eviction_policy="none": semcache evicts by itself (LRU over entries, never
        # over its journal); size_limit is then ignored by diskcache.
        kv: KeyValue = diskcache.Cache(
            str(path), timeout=timeout, eviction_policy="none", statistics=False
        )
    except (OSError, sqlite3.Error) as exc:
        if "locked" in str(exc):
            raise StoreLockedError(f"the cache directory {path} is locked: {exc}") from exc
        raise StoreError(f"cannot open the cache directory {path}: {exc}") from exc
    return kv


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What the index needs about an entry (no completion)."""

    scope: str
    key: str
    fingerprint: str
    created: float
    expires: float | None
    #: Per-entry cosine threshold learned from feedback (None: the cache's own).
    threshold: float | None = None
    #: How many times a hit on this entry was reported wrong.
    wrong: int = 0
    #: How many times a hit on this entry was reported right.
    right: int = 0


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as read back from the store."""

    entry_id: int
    meta: EntryMeta
    vector: FloatArray


def encode_meta(meta: EntryMeta, vector: FloatArray) -> bytes:
    """``m:`` record: 4-byte header length, JSON header, float32 vector bytes."""
    head = json.dumps(
        {
            "scope": meta.scope,
            "key": meta.key,
            "fp": meta.fingerprint,
            "created": meta.created,
            "expires": meta.expires,
            "thr": meta.threshold,
            "wrong": meta.wrong,
            "right": meta.right,
        },
        separators=(",", ":"),
    ).encode()
    return _HEADER.pack(len(head)) + head + np.ascontiguousarray(vector, np.float32).tobytes()


def decode_meta(raw: bytes) -> tuple[EntryMeta, FloatArray]:
    """Inverse of :func:`encode_meta`.

    Raises
    ------
    SerializationError
        The record is truncated or not ours.
    """
    try:
        (n,) = _HEADER.unpack_from(raw, 0)
        head = json.loads(raw[4 : 4 + n])
        vec = np.frombuffer(raw[4 + n :], dtype=np.float32).copy()
        meta = EntryMeta(
            scope=str(head["scope"]),
            key=str(head["key"]),
            fingerprint=str(head["fp"]),
            created=float(head["created"]),
            expires=None if head["expires"] is None else float(head["expires"]),
            threshold=None if head.get("thr") is None else float(head["thr"]),
            wrong=int(head.get("wrong", 0)),
            right=int(head.get("right", 0)),
        )
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise SerializationError(f"corrupt entry record: {exc}") from exc
    return meta, vec


def dumps_completion(prompt: str, completion: JSONValue) -> str:
    """``c:`` record text.

    Raises
    ------
    SerializationError
        ``completion`` is not JSON-serialisable (or holds NaN/infinity).
    """
    try:
        return json.dumps({"prompt": prompt, "completion": completion}, allow_nan=False,
                          ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"completion is not JSON-serialisable: {exc}") from exc


class RecordStore:
    """Entries, their embeddings and completions, in a :class:`KeyValue`.

    Every method turns backend failures into :class:`StoreError` (or
    :class:`StoreLockedError` when another process holds the lock too long).
    """

    def __init__(self, kv: KeyValue, where: str = "memory") -> None:
        self.kv = kv
        self.where = where

    def _call(self, fn: Callable[[], T]) -> T:
        import diskcache

        try:
            return fn()
        except diskcache.Timeout as exc:
            raise StoreLockedError(f"the cache store at {self.where} is locked: {exc}") from exc
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cache store at {self.where} failed: {exc}") from exc

    # -- settings and blobs -------------------------------------------------
    def load_settings(self) -> dict[str, Any] | None:
        raw = self._call(lambda: self.kv.get("settings"))
        if raw is None:
            return None
        try:
            out: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"settings in {self.where} are corrupt: {exc}") from exc
        return out

    def save_settings(self, settings: dict[str, Any]) -> None:
        text = json.dumps(settings, sort_keys=True)
        self._call(lambda: self.kv.set("settings", text))

    def get_blob(self, name: str) -> bytes | None:
        raw = self._call(lambda: self.kv.get(f"blob:{name}"))
        return None if raw is None else bytes(raw)

    def set_blob(self, name: str, data: bytes) -> None:
        self._call(lambda: self.kv.set(f"blob:{name}", data))

    # -- entries -------------------------------------------------------------
    def seq(self) -> int:
        """The journal position: the number of puts and deletes ever made."""
        return int(self._call(lambda: self.kv.get("seq", 0)))

    def put(self, meta: EntryMeta, vector: FloatArray, prompt: str, completion: JSONValue) -> int:
        """Write one entry atomically; returns its new id."""
        return self.put_many([(meta, vector, prompt, completion)])[0]

    def put_many(self, rows: list[tuple[EntryMeta, FloatArray, str, JSONValue]]) -> list[int]:
        """Write entries in one transaction; returns their ids (in order)."""
        # Serialise first: a bad completion must fail before anything is written.
        encoded = [(encode_meta(m, v), dumps_completion(p, c)) for m, v, p, c in rows]

        def run() -> list[int]:
            ids = []
            with self.kv.transact():
                for meta_raw, comp in encoded:
                    entry_id = self.kv.incr("seq")
                    self.kv.set(f"m:{entry_id}", meta_raw)
                    self.kv.set(f"c:{entry_id}", comp)
                    ids.append(entry_id)
            return ids

        return self._call(run)

    def get_completion(self, entry_id: int) -> tuple[str, JSONValue] | None:
        """(prompt, completion) of an entry, or None when it is gone."""
        raw = self._call(lambda: self.kv.get(f"c:{entry_id}"))
        if raw is None:
            return None
        try:
            obj = json.loads(raw)
            return str(obj["prompt"]), obj["completion"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SerializationError(f"stored completion {entry_id} is corrupt: {exc}") from exc

    def get_entry(self, entry_id: int) -> StoredEntry | None:
        raw = self._call(lambda: self.kv.get(f"m:{entry_id}"))
        if raw is None:
            return None
        meta, vec = decode_meta(bytes(raw))
        return StoredEntry(entry_id, meta, vec)

    def delete(self, ids: list[int]) -> list[int]:
        """Delete entries; returns the ids that existed. Each deletion is journalled."""

        def run() -> list[int]:
            gone = []
            with self.kv.transact():
                for entry_id in ids:
                    if self.kv.get(f"m:{entry_id}") is None:
                        continue
                    self.kv.delete(f"m:{entry_id}")
                    self.kv.delete(f"c:{entry_id}")
                    op = self.kv.incr("seq")
                    self.kv.set(f"o:{op}", entry_id)
                    gone.append(entry_id)
            return gone

        return self._call(run) if ids else []

    def update_meta(self, entry_id: int, meta: EntryMeta) -> bool:
        """Rewrite an entry's metadata (vector unchanged) and journal it; False if it is gone."""

        def run() -> bool:
            with self.kv.transact():
                raw = self.kv.get(f"m:{entry_id}")
                if raw is None:
                    return False
                _, vec = decode_meta(bytes(raw))
                self.kv.set(f"m:{entry_id}", encode_meta(meta, vec))
                op = self.kv.incr("seq")
                self.kv.set(f"u:{op}", entry_id)
                return True

        return self._call(run)

    def changes(self, since: int, until: int) -> Iterator[tuple[int, StoredEntry | None]]:
        """Replay the journal over ``(since, until]``.

        Yields ``(entry_id, entry)`` for entries put or updated in that range and
        still present, and ``(entry_id, None)`` for entries deleted in it. Records that
        cannot be decoded are logged and skipped rather than stopping the replay.
        """
        for op in range(since + 1, until + 1):
            try:
                entry = self.get_entry(op)
            except SerializationError as exc:
                log.error("semcache: skipping unreadable entry %d in %s: %s", op, self.where, exc)
                continue
            if entry is not None:
                yield op, entry
                continue
            deleted = self._call(lambda op=op: self.kv.get(f"o:{op}"))  # type: ignore[misc]
            if deleted is not None:
                yield int(deleted), None
                continue
            updated = self._call(lambda op=op: self.kv.get(f"u:{op}"))  # type: ignore[misc]
            if updated is not None:
                try:
                    entry = self.get_entry(int(updated))
                except SerializationError as exc:
                    log.error("semcache: skipping unreadable entry %s: %s", updated, exc)
                    continue
                if entry is not None:
                    yield int(updated), entry

    def clear(self) -> None:
        """Remove every entry and blob; settings stay.

        The journal position is kept and a clear-all tombstone (id ``-1``) is
        journalled, so other processes see the clear on their next sync.
        """

        def run() -> None:
            with self.kv.transact():
                seq = int(self.kv.get("seq", 0))
                settings = self.kv.get("settings")
                self.kv.clear()
                if settings is not None:
                    self.kv.set("settings", settings)
                self.kv.set("seq", seq + 1)
                self.kv.set(f"o:{seq + 1}", CLEARED)

        self._call(run)

    def close(self) -> None:
        self._call(self.kv.close)
