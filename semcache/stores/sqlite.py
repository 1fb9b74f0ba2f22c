"""The local disk store: one SQLite database written with the stdlib ``sqlite3``.

There is no pickle anywhere: vectors are raw float32 BLOBs, metadata typed
columns, completions JSON text, settings JSON text, blobs opaque bytes handed
to their owner (the projection has its own non-pickle format). Every write is
one ``BEGIN IMMEDIATE`` transaction that also appends to the change log, so log
positions are commit order (SQLite has one writer at a time). See
``docs/store.md`` for the schema, the compaction rule and the validation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

from semcache._types import JSONValue
from semcache.errors import SerializationError, StoreError, StoreFormatError, StoreLockedError
from semcache.stores.base import (
    CLEARED,
    NORM_TOLERANCE,
    OP_CLEAR,
    OP_DELETE,
    OP_PUT,
    OP_UPDATE,
    ChangeBatch,
    Digests,
    EntryMeta,
    Loaded,
    Row,
    Store,
    StoredEntry,
    check_counters,
    check_meta,
    check_scope_tenants,
    check_vector,
    counter_deltas,
    dumps_completion,
    fold_log,
    loads_completion,
    majority_dim,
    vector_digest,
)

__all__ = ["DB_FILENAME", "MARKER_FILENAME", "SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")
log = logging.getLogger("semcache")

DB_FILENAME: Final = "cache.db"
#: Written next to the database when its settings are created: a directory that
#: has it but no database (deleted, truncated) is an error, never a silent empty cache.
MARKER_FILENAME: Final = "semcache-store.json"
#: ``PRAGMA user_version`` of the schema below.
SCHEMA_VERSION: Final = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    threshold REAL,
    wrong INTEGER NOT NULL DEFAULT 0,
    right INTEGER NOT NULL DEFAULT 0,
    vhash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS completions (
    id INTEGER PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id INTEGER NOT NULL,
    op INTEGER NOT NULL,
    at REAL NOT NULL
);
INSERT OR IGNORE INTO state (name, value) VALUES ('floor', 0);
"""

#: Side tables added after schema version 2 was released: created in an existing
#: store too (an older semcache never reads them, so the version stays 2).
_SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS scopes (
    scope TEXT PRIMARY KEY,
    tenant TEXT
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
)
"""

_META_COLS = "id, scope, key, fingerprint, created, expires, threshold, wrong, right"
#: check_meta's rules as an SQL expression (1: valid), evaluated by SQLite for every row.
_VALID = """(
    typeof(scope) = 'text' AND length(scope) = 32 AND scope NOT GLOB '*[^0-9a-f]*'
    AND typeof(key) = 'text' AND length(key) = 32 AND key NOT GLOB '*[^0-9a-f]*'
    AND typeof(fingerprint) = 'text' AND length(fingerprint) BETWEEN 1 AND 512
    AND typeof(created) IN ('real', 'integer') AND abs(created) < 1e300
    AND (expires IS NULL OR (typeof(expires) IN ('real', 'integer') AND abs(expires) < 1e300))
    AND (threshold IS NULL OR (typeof(threshold) IN ('real', 'integer') AND threshold BETWEEN -1 AND 1))
    AND typeof(wrong) = 'integer' AND wrong >= 0 AND typeof(right) = 'integer' AND right >= 0
    AND typeof(vhash) = 'blob' AND length(vhash) = 8
)"""
_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit


def _text(raw: bytes) -> str:
    # Invalid UTF-8 in a TEXT column must not make a whole scan raise: keep the
    # bad bytes as lone surrogates, which validation then rejects for that row only.
    return raw.decode("utf-8", "surrogateescape")


class SQLiteStore(Store):
    """Entries in ``<directory>/cache.db`` (WAL mode, shared by processes).

    Parameters
    ----------
    directory : path
        Created if needed.
    timeout : float
        Seconds to wait for another process's write lock (``busy_timeout``).
    retention : float
        Change-log records older than this many seconds (and not among the newest
        ``keep_log``) are compacted; a process that has not synced for longer
        reloads everything (:meth:`changes` returns ``items=None``).
    keep_log : int
        Newest change-log records always kept.

    Raises
    ------
    StoreFormatError
        The directory holds a store of an older format (the diskcache layout of
        semcache < 0.2, whose rows could be pickles); it is never read.
    StoreError
        The directory cannot be created, the database is corrupt, or it is
        missing/truncated while the directory says a store existed.
    """

    def __init__(self, directory: str | Path, *, timeout: float = 10.0, retention: float = 600.0,
                 keep_log: int = 10_000) -> None:
        super().__init__()
        self.directory = Path(directory).expanduser().absolute()
        self.path = self.directory / DB_FILENAME
        self.where = str(self.directory)
        self.timeout = float(timeout)
        self.retention = float(retention)
        self.keep_log = int(keep_log)
        self._lock = threading.RLock()
        self._closed = False
        self._writes = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the cache directory {self.directory}: {exc}") from exc
        marker = self.directory / MARKER_FILENAME
        existed = self.path.is_file() and self.path.stat().st_size > 0
        if marker.is_file() and not existed:
            raise StoreError(
                f"the database {self.path} is missing or empty, but {marker} says this directory held "
                "a semcache store: it was deleted or truncated. Restore it from a backup, or delete "
                f"{marker} to start an empty cache here."
            )
        try:
            self._conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._setup(existed, marker)
        except BaseException:
            self._conn.close()
            raise
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    # ------------------------------------------------------------- plumbing
    def _setup(self, existed: bool, marker: Path) -> None:
        with self._errors():
            tables = {r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "Cache" in tables or "Settings" in tables:
                raise StoreFormatError(
                    f"{self.directory} holds a cache written by an older semcache (diskcache format, "
                    "whose rows can be pickles and are therefore never read). Delete the directory "
                    "(or point the cache at another one) and let it refill."
                )
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if existed and tables and version != SCHEMA_VERSION:
                raise StoreFormatError(
                    f"{self.path} has schema version {version}; this semcache reads {SCHEMA_VERSION}. "
                    "Use another directory or delete this one."
                )
            if existed and not tables and marker.is_file():
                raise StoreError(f"the database {self.path} lost its tables (truncated or replaced)")
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if not tables:
                # Must precede the first table: lets compact() give freed pages back to the OS.
                self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            # NORMAL in WAL mode: a killed process loses nothing committed; only an OS crash
            # or power loss can roll back the last transactions.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            if tables:
                missing = {"settings", "blobs", "state", "entries", "vectors", "completions",
                           "log"} - tables
                if missing:
                    raise StoreError(f"{self.path} lacks tables {sorted(missing)}: not a semcache store")
            if not tables or not {"scopes", "counters"} <= tables:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    # Statement by statement: executescript() would commit early.
                    for statement in (_SCHEMA if not tables else "").split(";") + _SIDE_SCHEMA.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    if not tables:
                        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn backend failures into StoreError / StoreLockedError."""
        try:
            yield
        except StoreError:
            raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLockedError(f"the cache store at {self.where} is locked: {exc}") from exc
            raise StoreError(f"cache store at {self.where} failed: {exc}") from exc
        except (sqlite3.Error, OSError, MemoryError) as exc:
            raise StoreError(f"cache store at {self.where} failed: {exc}") from exc

    def _check_file(self) -> None:
        """The database file must still be the one we opened.

        SQLite keeps a deleted database open and would go on "storing" into a file
        nobody can reopen; say so instead of acknowledging writes that are lost.
        """
        if self._closed:
            raise StoreError(f"the cache store at {self.where} is closed")
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise StoreError(f"the database {self.path} was removed: {exc}") from exc
        if (st.st_dev, st.st_ino) != self._identity or st.st_size == 0:
            raise StoreError(f"the database {self.path} was removed, replaced or truncated")

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot of the database)."""
        with self._lock, self._errors():
            self._check_file()
            self._conn.execute("BEGIN")
            try:
                return fn(self._conn)
            finally:
                self._conn.execute("COMMIT")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (``BEGIN IMMEDIATE``: takes the write lock first)."""
        with self._lock, self._errors():
            self._check_file()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
                self._check_file()
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._writes += 1
        if self._writes % 1000 == 0:
            with contextlib.suppress(StoreError):
                self.compact()
        return out

    # ---------------------------------------------------- settings and blobs
    @staticmethod
    def _parse_settings(raw: object, where: str) -> dict[str, Any]:
        try:
            if not isinstance(raw, str):
                raise TypeError(type(raw).__name__)
            out = json.loads(raw)
            if not isinstance(out, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError, RecursionError) as exc:
            raise StoreError(f"settings in {where} are corrupt: {exc}") from exc
        return out

    def load_settings(self) -> dict[str, Any] | None:
        row = self._read(lambda c: c.execute("SELECT json FROM settings WHERE id = 1").fetchone())
        return None if row is None else self._parse_settings(row[0], self.where)

    def init_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(settings, sort_keys=True)

        def run(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO settings (id, json) VALUES (1, ?)", (text,))
            return str(c.execute("SELECT json FROM settings WHERE id = 1").fetchone()[0])

        stored = self._parse_settings(self._write(run), self.where)
        self._write_marker(stored)
        return stored

    def _write_marker(self, settings: dict[str, Any]) -> None:
        marker = self.directory / MARKER_FILENAME
        if marker.is_file():
            return
        tmp = marker.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"store_id": settings.get("store_id"), "database": DB_FILENAME}))
            os.replace(tmp, marker)
        except OSError as exc:
            raise StoreError(f"cannot write {marker}: {exc}") from exc

    def save_settings(self, settings: dict[str, Any]) -> None:
        text = json.dumps(settings, sort_keys=True)
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO settings (id, json) VALUES (1, ?)",
                                        (text,)))

    def get_blob(self, name: str) -> bytes | None:
        row = self._read(lambda c: c.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone())
        if row is None:
            return None
        if not isinstance(row[0], bytes):
            raise SerializationError(f"blob {name!r} in {self.where} is not bytes")
        return row[0]

    def set_blob(self, name: str, data: bytes) -> None:
        blob = bytes(data)
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO blobs (name, data) VALUES (?, ?)",
                                        (name, blob)))

    # --------------------------------------------------------------- entries
    def put_many(self, rows: list[Row]) -> list[int]:
        # Validate and encode everything first: a bad row fails before anything is written.
        encoded = []
        for meta, vec, prompt, completion in rows:
            check_meta(meta)
            v = check_vector(vec)
            encoded.append((meta, v.astype("<f4").tobytes(), vector_digest(v),
                            dumps_completion(prompt, completion)))
        if not encoded:
            return []

        def run(c: sqlite3.Connection) -> list[int]:
            ids = []
            now = time.time()
            for m, vbytes, vhash, record in encoded:
                cur = c.execute(
                    "INSERT INTO entries (scope, key, fingerprint, created, expires, threshold, wrong, "
                    "right, vhash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (m.scope, m.key, m.fingerprint, m.created, m.expires, m.threshold, m.wrong,
                     m.right, vhash),
                )
                entry_id = int(cur.lastrowid or 0)
                c.execute("INSERT INTO vectors (id, vector) VALUES (?, ?)", (entry_id, vbytes))
                c.execute("INSERT INTO completions (id, record) VALUES (?, ?)", (entry_id, record))
                c.execute("INSERT INTO log (entry_id, op, at) VALUES (?, ?, ?)", (entry_id, OP_PUT, now))
                ids.append(entry_id)
            return ids

        return self._write(run)

    def delete(self, ids: Sequence[int]) -> list[int]:
        wanted = list(dict.fromkeys(int(i) for i in ids))
        if not wanted:
            return []

        def run(c: sqlite3.Connection) -> list[int]:
            gone: list[int] = []
            now = time.time()
            for s in range(0, len(wanted), _CHUNK):
                chunk = wanted[s : s + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found = [r[0] for r in c.execute(f"SELECT id FROM entries WHERE id IN ({marks})", chunk)]
                if not found:
                    continue
                marks = ",".join("?" * len(found))
                for table in ("entries", "vectors", "completions"):
                    c.execute(f"DELETE FROM {table} WHERE id IN ({marks})", found)
                c.executemany("INSERT INTO log (entry_id, op, at) VALUES (?, ?, ?)",
                              [(i, OP_DELETE, now) for i in found])
                gone.extend(found)
            return gone

        return self._write(run)

    def update_meta(self, entry_id: int, meta: EntryMeta) -> bool:
        check_meta(meta)

        def run(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE entries SET scope = ?, key = ?, fingerprint = ?, created = ?, expires = ?, "
                "threshold = ?, wrong = ?, right = ? WHERE id = ?",
                (meta.scope, meta.key, meta.fingerprint, meta.created, meta.expires, meta.threshold,
                 meta.wrong, meta.right, int(entry_id)),
            )
            if cur.rowcount != 1:
                return False
            c.execute("INSERT INTO log (entry_id, op, at) VALUES (?, ?, ?)",
                      (int(entry_id), OP_UPDATE, time.time()))
            return True

        return self._write(run)

    def get_completion(self, entry_id: int) -> tuple[str, JSONValue] | None:
        # CAST AS BLOB: decode ourselves, so a bad byte is a SerializationError, not sqlite's.
        row = self._read(lambda c: c.execute(
            "SELECT CAST(record AS BLOB) FROM completions WHERE id = ?", (int(entry_id),)).fetchone())
        if row is None:
            return None
        return loads_completion(row[0], int(entry_id))

    def clear(self) -> None:
        def run(c: sqlite3.Connection) -> None:
            for table in ("entries", "vectors", "completions", "blobs"):
                c.execute(f"DELETE FROM {table}")
            cur = c.execute("INSERT INTO log (entry_id, op, at) VALUES (?, ?, ?)",
                            (CLEARED, OP_CLEAR, time.time()))
            # Nothing before a clear matters to any reader: drop it (readers older than the
            # floor reload, which after a clear is cheap).
            pos = int(cur.lastrowid or 0)
            c.execute("DELETE FROM log WHERE pos < ?", (pos,))
            c.execute("UPDATE state SET value = ? WHERE name = 'floor'", (pos - 1,))

        self._write(run)
        with contextlib.suppress(StoreError):
            self._vacuum(force=True)

    # ------------------------------------------------ scopes and counters
    def note_scopes(self, tenants: Mapping[str, str | None]) -> None:
        rows = list(tenants.items())
        if rows:
            self._write(lambda c: c.executemany(
                "INSERT OR IGNORE INTO scopes (scope, tenant) VALUES (?, ?)", rows))

    def scope_tenants(self) -> dict[str, str | None]:
        # CAST AS BLOB: a bad byte in a crafted row makes that row unknown, not the scan fail.
        rows = self._read(lambda c: c.execute(
            "SELECT CAST(scope AS BLOB), CAST(tenant AS BLOB) FROM scopes").fetchall())
        return check_scope_tenants([(_text(s) if isinstance(s, bytes) else s,
                                     _text(t) if isinstance(t, bytes) else t) for s, t in rows], self.where)

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        add = counter_deltas(deltas)
        if not add:
            return

        def run(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO counters (name, value) VALUES ('since', ?)", (int(time.time()),))
            c.executemany("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) "
                          "DO UPDATE SET value = value + excluded.value", list(add.items()))

        self._write(run)

    def load_counters(self) -> tuple[dict[str, int], float | None]:
        rows = self._read(lambda c: c.execute("SELECT CAST(name AS BLOB), value FROM counters").fetchall())
        rows = [(_text(k) if isinstance(k, bytes) else k, v) for k, v in rows]
        since = next((v for k, v in rows if k == "since" and isinstance(v, int) and v > 0), None)
        return check_counters(rows), None if since is None else float(since)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(StoreError):
                self.compact()
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    # ------------------------------------------------------------ change log
    @staticmethod
    def _head(c: sqlite3.Connection) -> int:
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        return 0 if row is None else int(row[0])

    def head(self) -> int:
        return self._read(self._head)

    def changes(self, since: int) -> ChangeBatch:
        def run(c: sqlite3.Connection) -> ChangeBatch:
            head = self._head(c)
            if since == head:
                return ChangeBatch(head, [])
            floor = int(c.execute("SELECT value FROM state WHERE name = 'floor'").fetchone()[0])
            if since > head or since < floor:
                return ChangeBatch(head, None)
            records = [(int(e), int(o)) for e, o in c.execute(
                "SELECT entry_id, op FROM log WHERE pos > ? AND pos <= ? ORDER BY pos", (since, head))]
            folded = fold_log(records)
            wanted = [i for i, present in folded if present]
            found: dict[int, StoredEntry] = {}
            bad: set[int] = set()
            for s in range(0, len(wanted), _CHUNK):
                chunk = wanted[s : s + _CHUNK]
                marks = ",".join("?" * len(chunk))
                query = (f"SELECT e.id, e.scope, e.key, e.fingerprint, e.created, e.expires, e.threshold, "
                         f"e.wrong, e.right, v.vector FROM entries e JOIN vectors v ON v.id = e.id "
                         f"WHERE e.id IN ({marks})")
                try:
                    rows = c.execute(query, chunk).fetchall()
                except sqlite3.OperationalError as exc:
                    if "decode" not in str(exc).lower():
                        raise
                    # Text that is not UTF-8: decode leniently; validation then rejects that row.
                    c.text_factory = _text
                    try:
                        rows = c.execute(query, chunk).fetchall()
                    finally:
                        c.text_factory = str
                for r in rows:
                    try:
                        meta = check_meta(EntryMeta(*r[1:9]))
                        found[int(r[0])] = StoredEntry(int(r[0]), meta, check_vector(r[9]))
                    except SerializationError as exc:
                        self._skip(r[0], exc)
                        bad.add(int(r[0]))
            items: list[tuple[int, StoredEntry | None]] = []
            for entry_id, present in folded:
                if not present:
                    items.append((entry_id, None))
                elif entry_id in found:
                    items.append((entry_id, found[entry_id]))
                elif entry_id in bad:
                    # An invalid record must not stay served under an older valid state.
                    items.append((entry_id, None))
                # else: put then deleted within the range; its delete record comes later
            return ChangeBatch(head, items)

        return self._read(run)

    def _scan_meta(self, c: sqlite3.Connection) -> tuple[list[int], list[EntryMeta], bytes, int]:
        """Every entry's validated metadata and 8-byte vector digest (concatenated), ascending id.

        The per-field checks of :func:`check_meta` run inside SQLite (``_VALID``), so the
        Python loop only builds the records; fingerprints (few distinct values) are
        checked in Python once each. Text that is not UTF-8 makes the default decoder
        fail the whole scan, so the scan is then retried with a lenient decoder.
        """
        try:
            return self._scan_meta_once(c)
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc).lower():
                raise
            c.text_factory = _text
            try:
                return self._scan_meta_once(c)
            finally:
                c.text_factory = str

    def _scan_meta_once(self, c: sqlite3.Connection) -> tuple[list[int], list[EntryMeta], bytes, int]:
        ids: list[int] = []
        metas: list[EntryMeta] = []
        vhash: list[bytes] = []
        skipped = 0
        fps: dict[str, bool] = {}
        cur = c.execute(f"SELECT {_META_COLS}, vhash, {_VALID} FROM entries ORDER BY id")
        while True:
            rows = cur.fetchmany(20_000)
            if not rows:
                break
            for r in rows:
                fp = r[3]
                ok = fps.get(fp)
                if ok is None:
                    ok = fps[fp] = _fingerprint_ok(fp)
                if not (r[10] and ok):
                    try:
                        check_meta(EntryMeta(*r[1:9]))
                        raise SerializationError("vector digest or a field of the wrong type")
                    except SerializationError as exc:
                        self._skip(r[0], exc)
                    skipped += 1
                    continue
                ids.append(r[0])
                metas.append(EntryMeta(*r[1:9]))
                vhash.append(r[9])
        return ids, metas, b"".join(vhash), skipped

    def load_digests(self) -> Digests:
        def run(c: sqlite3.Connection) -> Digests:
            head = self._head(c)
            ids, metas, vhash, skipped = self._scan_meta(c)
            return Digests(head, np.array(ids, dtype=np.int64), metas,
                           np.frombuffer(vhash, dtype="<u8").astype(np.uint64), skipped)

        return self._read(run)

    def load_all(self, dim: int | None = None, fingerprint: str | None = None) -> Loaded:
        def run(c: sqlite3.Connection) -> tuple[int, list[int], list[EntryMeta], list[object], int]:
            head = self._head(c)
            ids, metas, _, skipped = self._scan_meta(c)
            # Second scan, same transaction: the vectors, by id (a merge, both ascending).
            vec_of: list[object] = []
            cur = c.execute("SELECT id, vector FROM vectors ORDER BY id")
            k = 0
            n = len(ids)
            while True:
                rows = cur.fetchmany(10_000)
                if not rows:
                    break
                for vid, blob in rows:
                    while k < n and ids[k] < vid:
                        vec_of.append(None)  # entry without a vector row
                        k += 1
                    if k < n and ids[k] == vid:
                        vec_of.append(blob)
                        k += 1
            vec_of.extend([None] * (n - k))
            return head, ids, metas, vec_of, skipped

        head, ids, metas, blobs, skipped = self._read(run)
        return self._assemble(head, ids, metas, blobs, skipped, dim, fingerprint)

    def _assemble(self, head: int, ids: list[int], metas: list[EntryMeta], blobs: list[object],
                  skipped: int, dim: int | None, fingerprint: str | None) -> Loaded:
        """Validate vectors in bulk and build the (n, d) table."""
        lengths = [len(b) if isinstance(b, bytes) else -1 for b in blobs]
        want = dim
        if want is None:
            own = [x // 4 for x, m in zip(lengths, metas, strict=True)
                   if x > 0 and x % 4 == 0 and m.fingerprint == fingerprint]
            want = majority_dim(own or [x // 4 for x in lengths if x > 0 and x % 4 == 0])
        nbytes = -2 if want is None else 4 * want
        keep = np.fromiter((x == nbytes for x in lengths), dtype=bool, count=len(lengths))
        kept_idx = np.flatnonzero(keep)
        if len(kept_idx):
            flat = b"".join(blobs[i] for i in kept_idx.tolist())  # type: ignore[misc]
            table = np.frombuffer(flat, dtype="<f4").reshape(len(kept_idx), -1)
            # NaN rows give a NaN norm and infinite ones an infinite norm: both fail the test.
            with np.errstate(over="ignore", invalid="ignore"):
                norms = np.sqrt(np.einsum("ij,ij->i", table, table))
            good = np.asarray(np.abs(norms - 1.0) <= NORM_TOLERANCE, dtype=bool)
        else:
            table = np.zeros((0, want or 0), np.float32)
            good = np.zeros(0, dtype=bool)
        bad_rows = set(np.flatnonzero(~keep).tolist()) | set(kept_idx[~good].tolist())
        # Another embedder's rows of another width are foreign, not corrupt: left out uncounted.
        foreign = {i for i in np.flatnonzero(~keep).tolist()
                   if fingerprint is not None and metas[i].fingerprint != fingerprint and lengths[i] > 0}
        if foreign:
            log.info("semcache: %d entries in %s have vectors of another width from another embedder; "
                     "not loaded", len(foreign), self.where)
        bad_rows -= foreign
        for i in sorted(bad_rows):
            self._skip(ids[i], SerializationError("vector missing, of the wrong width, non-finite "
                                                  "or not of unit norm"))
        final = kept_idx[good]
        return Loaded(
            head=head,
            ids=np.array(ids, dtype=np.int64)[final] if len(ids) else np.zeros(0, np.int64),
            metas=[metas[i] for i in final.tolist()],
            vectors=np.ascontiguousarray(table[good], dtype=np.float32),
            skipped=skipped + len(bad_rows),
        )

    # ------------------------------------------------------------ upkeep
    def compact(self) -> int:
        """Drop change-log records older than ``retention`` s, keeping the newest ``keep_log``.

        Raises the log's floor to the newest dropped position: a reader still behind
        it gets ``items=None`` from :meth:`changes` and reloads. Then gives free pages
        back to the file system when a quarter of the file is free.
        """
        cutoff = time.time() - self.retention

        def run(c: sqlite3.Connection) -> int:
            head = self._head(c)
            row = c.execute("SELECT max(pos) FROM log WHERE at < ? AND pos <= ?",
                            (cutoff, head - self.keep_log)).fetchone()
            if row is None or row[0] is None:
                return 0
            upto = int(row[0])
            n = c.execute("DELETE FROM log WHERE pos <= ?", (upto,)).rowcount
            c.execute("UPDATE state SET value = max(value, ?) WHERE name = 'floor'", (upto,))
            return int(n)

        with self._lock:
            if self._closed:
                return 0
            n = self._write_raw(run)
        self._vacuum()
        return n

    def _write_raw(self, fn: Callable[[sqlite3.Connection], int]) -> int:
        with self._lock, self._errors():
            self._check_file()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            return out

    def _vacuum(self, force: bool = False) -> None:
        with self._lock, self._errors():
            if self._closed:
                return
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            if free and (force or free * 4 >= pages):
                # executescript runs the pragma to completion; execute() would step it
                # once, freeing a single page.
                self._conn.executescript("PRAGMA incremental_vacuum;")

    def file_size(self) -> int:
        """Bytes of the database and its WAL (for tests and ``semcache info``)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(str(self.path) + suffix)
        return total


def _fingerprint_ok(fp: object) -> bool:
    """check_meta's fingerprint rule (the rest is checked in SQL)."""
    return isinstance(fp, str) and 0 < len(fp) <= 512 and fp.isprintable()
