"""The in-memory store: gone when the process ends (tests, ephemeral caches)."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from semcache._types import FloatArray, JSONValue
from semcache.stores.base import (
    CLEARED,
    COUNTER_NAMES,
    OP_CLEAR,
    OP_DELETE,
    OP_PUT,
    OP_UPDATE,
    ChangeBatch,
    EntryMeta,
    Loaded,
    Row,
    Store,
    StoredEntry,
    check_meta,
    check_vector,
    counter_deltas,
    dumps_completion,
    fold_log,
    loads_completion,
    majority_dim,
)

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Entries in dicts behind a lock; same contract and validation as the disk store."""

    def __init__(self) -> None:
        super().__init__()
        self.where = "memory"
        self._lock = threading.RLock()
        self._settings: str | None = None
        self._blobs: dict[str, bytes] = {}
        self._entries: dict[int, tuple[EntryMeta, FloatArray, str]] = {}
        self._log: list[tuple[int, int, int]] = []  # (position, entry_id, op)
        self._next_id = 1
        self._head = 0
        self._tenants: dict[str, str | None] = {}
        self._counts: dict[str, int] = {}
        self._since: float | None = None

    def load_settings(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._settings is None else dict(json.loads(self._settings))

    def init_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._settings is None:
                self._settings = json.dumps(settings, sort_keys=True)
            return dict(json.loads(self._settings))

    def save_settings(self, settings: dict[str, Any]) -> None:
        with self._lock:
            self._settings = json.dumps(settings, sort_keys=True)

    def get_blob(self, name: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(name)

    def set_blob(self, name: str, data: bytes) -> None:
        with self._lock:
            self._blobs[name] = bytes(data)

    def _append(self, entry_id: int, op: int) -> None:
        self._head += 1
        self._log.append((self._head, entry_id, op))

    def put_many(self, rows: list[Row]) -> list[int]:
        encoded = [(check_meta(m), check_vector(v), dumps_completion(p, c)) for m, v, p, c in rows]
        with self._lock:
            ids = []
            for meta, vec, text in encoded:
                entry_id = self._next_id
                self._next_id += 1
                self._entries[entry_id] = (meta, vec, text)
                self._append(entry_id, OP_PUT)
                ids.append(entry_id)
            return ids

    def delete(self, ids: Sequence[int]) -> list[int]:
        with self._lock:
            gone = []
            for entry_id in dict.fromkeys(int(i) for i in ids):
                if self._entries.pop(entry_id, None) is not None:
                    self._append(entry_id, OP_DELETE)
                    gone.append(entry_id)
            return gone

    def update_meta(self, entry_id: int, meta: EntryMeta) -> bool:
        check_meta(meta)
        with self._lock:
            old = self._entries.get(entry_id)
            if old is None:
                return False
            self._entries[entry_id] = (meta, old[1], old[2])
            self._append(entry_id, OP_UPDATE)
            return True

    def get_completion(self, entry_id: int) -> tuple[str, JSONValue] | None:
        with self._lock:
            row = self._entries.get(entry_id)
        return None if row is None else loads_completion(row[2], entry_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._blobs.clear()
            self._append(CLEARED, OP_CLEAR)

    def close(self) -> None:
        pass

    def note_scopes(self, tenants: Mapping[str, str | None]) -> None:
        with self._lock:
            for sid, tenant in tenants.items():
                self._tenants.setdefault(sid, tenant)

    def scope_tenants(self) -> dict[str, str | None]:
        with self._lock:
            return dict(self._tenants)

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        add = counter_deltas(deltas)
        with self._lock:
            if self._since is None:
                self._since = time.time()
            for k, v in add.items():
                self._counts[k] = self._counts.get(k, 0) + v

    def load_counters(self) -> tuple[dict[str, int], float | None]:
        with self._lock:
            return {k: self._counts.get(k, 0) for k in COUNTER_NAMES}, self._since

    def head(self) -> int:
        with self._lock:
            return self._head

    def changes(self, since: int) -> ChangeBatch:
        with self._lock:
            if since > self._head:
                return ChangeBatch(self._head, None)
            # Positions are 1.. consecutive here, so the records after `since` start at index `since`.
            records = [(entry_id, op) for _, entry_id, op in self._log[since:]]
            items: list[tuple[int, StoredEntry | None]] = []
            for entry_id, present in fold_log(records):
                row = self._entries.get(entry_id) if present else None
                if present and row is None:
                    continue  # put then deleted in the range: the delete record follows
                items.append((entry_id, None if row is None else
                              StoredEntry(entry_id, row[0], row[1].copy())))
            return ChangeBatch(self._head, items)

    def load_all(self, dim: int | None = None, fingerprint: str | None = None) -> Loaded:
        with self._lock:
            rows = [(i, m, v) for i, (m, v, _) in self._entries.items()]
            head = self._head
        want = dim
        if want is None:
            own = [v.shape[0] for _, m, v in rows if m.fingerprint == fingerprint]
            want = majority_dim(own or [v.shape[0] for _, _, v in rows])
        kept = [r for r in rows if r[2].shape[0] == want]
        skipped = 0
        for entry_id, m, v in rows:
            if v.shape[0] != want and (fingerprint is None or m.fingerprint == fingerprint):
                skipped += 1
                self._skip(entry_id, ValueError(f"{v.shape[0]}-d vector, expected {want}-d"))
        vectors = (np.stack([v for _, _, v in kept]).astype(np.float32) if kept
                   else np.zeros((0, want or 0), np.float32))
        return Loaded(head, np.array([i for i, _, _ in kept], dtype=np.int64),
                      [copy.copy(m) for _, m, _ in kept], vectors, skipped)
