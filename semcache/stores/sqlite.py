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
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

from semcache._types import JSONValue
from semcache.errors import SerializationError, StoreError, StoreFormatError, StoreLockedError
from semcache.stores.base import (
    CLEARED,
    META_KINDS,
    NORM_TOLERANCE,
    OP_CLEAR,
    OP_DELETE,
    OP_PUT,
    OP_UPDATE,
    SEAL_MOD,
    ChangeBatch,
    Digests,
    EntryMeta,
    Loaded,
    Row,
    Seal,
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
    meta_columns,
    row_digests,
    vector_digest,
    vector_digests,
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
    vhash BLOB NOT NULL,
    rhash INTEGER NOT NULL DEFAULT -1
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
CREATE TABLE IF NOT EXISTS seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    agg INTEGER NOT NULL,
    n INTEGER NOT NULL,
    dirty INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS readers (
    reader TEXT PRIMARY KEY,
    pos INTEGER NOT NULL,
    beat REAL NOT NULL
);
INSERT OR IGNORE INTO state (name, value) VALUES ('floor', 0);
INSERT OR IGNORE INTO seal (id, agg, n, dirty) VALUES (1, 0, 0, 0);
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

_M = str(SEAL_MOD)


def _rh(row: str) -> str:
    """A row's ``rhash`` as the seal counts it (an out-of-range value counts 0 and marks it dirty)."""
    return (f"(CASE WHEN typeof({row}.rhash) = 'integer' AND {row}.rhash >= 0 AND {row}.rhash < {_M} "
            f"THEN {row}.rhash ELSE 0 END)")


def _bad(row: str) -> str:
    return f"(NOT (typeof({row}.rhash) = 'integer' AND {row}.rhash >= 0 AND {row}.rhash < {_M}))"


#: Columns a row digest covers (``rhash`` must change whenever one of them does): the id,
#: every :class:`EntryMeta` field that has a column of its name, and the vector digest.
_SEALED = ["id", *META_KINDS, "vhash"]


def _triggers(columns: set[str]) -> dict[str, str]:
    """The seal's triggers for an ``entries`` table with these columns.

    The seal (sum of ``rhash`` mod 2**62, row count) is kept by triggers in plain SQL,
    so it follows every change of ``entries``, also one made without semcache (a hand
    edit, a restored table). A change the store did not make itself (a column changed
    but not its ``rhash``, a vector written or removed under a live entry) marks the
    seal dirty: it then proves nothing until :meth:`SQLiteStore.load_all` reseals.
    """
    sealed = [col for col in _SEALED if col in columns]
    return {
        "seal_ins": f"""CREATE TRIGGER seal_ins AFTER INSERT ON entries BEGIN
        UPDATE seal SET agg = (agg + {_rh("NEW")}) % {_M}, n = n + 1, dirty = dirty + {_bad("NEW")}
        WHERE id = 1;
    END""",
        "seal_del": f"""CREATE TRIGGER seal_del AFTER DELETE ON entries BEGIN
        UPDATE seal SET agg = (agg - {_rh("OLD")} + {_M}) % {_M}, n = n - 1 WHERE id = 1;
    END""",
        "seal_upd": f"""CREATE TRIGGER seal_upd AFTER UPDATE ON entries BEGIN
        UPDATE seal SET agg = ((agg - {_rh("OLD")} + {_M}) % {_M} + {_rh("NEW")}) % {_M},
            dirty = dirty + {_bad("NEW")} + (NEW.rhash IS OLD.rhash AND ({
                " OR ".join(f'NEW."{c}" IS NOT OLD."{c}"' for c in sealed)}))
        WHERE id = 1;
    END""",
        "seal_vec_ins": """CREATE TRIGGER seal_vec_ins AFTER INSERT ON vectors
        WHEN EXISTS (SELECT 1 FROM entries WHERE id = NEW.id) BEGIN
        UPDATE seal SET dirty = dirty + 1 WHERE id = 1;
    END""",
        "seal_vec_upd": """CREATE TRIGGER seal_vec_upd AFTER UPDATE ON vectors BEGIN
        UPDATE seal SET dirty = dirty + 1 WHERE id = 1;
    END""",
        "seal_vec_del": """CREATE TRIGGER seal_vec_del AFTER DELETE ON vectors
        WHEN EXISTS (SELECT 1 FROM entries WHERE id = OLD.id) BEGIN
        UPDATE seal SET dirty = dirty + 1 WHERE id = 1;
    END""",
    }


#: The trigger names (their text depends on the table's columns: :func:`_triggers`).
_TRIGGERS = tuple(_triggers(set()))

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
        A reader (a process's store handle) that has not reported its position for
        this many seconds is considered gone: compaction no longer waits for it, and
        if it comes back behind the compacted part it reloads everything
        (:meth:`changes` returns ``items=None``); it never misses a change.
    keep_log : int
        Newest change-log records always kept.
    grace : float
        Change-log records younger than this many seconds are always kept. Not needed
        for correctness: a reader registers before it loads (:meth:`load_all`), and
        one that is behind the compacted part anyway reloads.

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
                 keep_log: int = 0, grace: float = 0.0) -> None:
        super().__init__()
        self.directory = Path(directory).expanduser().absolute()
        self.path = self.directory / DB_FILENAME
        self.where = str(self.directory)
        self.timeout = float(timeout)
        self.retention = float(retention)
        self.keep_log = int(keep_log)
        self.grace = float(grace)
        #: This handle's row in the readers table, and the log position it has applied.
        self.reader_id = uuid.uuid4().hex
        self._pos: int | None = None
        self._beat_at = 0.0
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
                        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(entries)")}
                        for sql in _triggers(columns).values():
                            self._conn.execute(sql)
                        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            if tables:
                self._upgrade()

    def _seal_ready(self) -> bool:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(entries)")}
        have = dict(self._conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
                    .fetchall())
        return {"seal", "readers"} <= tables and "rhash" in columns \
            and all(have.get(k) == v for k, v in _triggers(columns).items())

    def _upgrade(self) -> None:
        """Add the seal (row digests, triggers) and the readers table to a store that lacks them.

        A store written by an older semcache has no ``rhash`` column, ``seal`` or
        ``readers``: they are added (the schema version stays 2: an older semcache
        reads and writes this database as before; its writes leave ``rhash`` at -1,
        which marks the seal dirty) and the seal is marked dirty, so the first
        :meth:`load_all` computes it. Triggers whose text differs from this version's
        (a column added since) are recreated, also marking the seal dirty.
        """
        if self._seal_ready():
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._seal_ready():  # under the write lock now: another process may have done it
                columns = {r[1] for r in self._conn.execute("PRAGMA table_info(entries)")}
                if "rhash" not in columns:
                    self._conn.execute("ALTER TABLE entries ADD COLUMN rhash INTEGER NOT NULL DEFAULT -1")
                for statement in _SCHEMA.split(";"):  # IF NOT EXISTS: adds seal and readers
                    if statement.strip():
                        self._conn.execute(statement)
                columns = {r[1] for r in self._conn.execute("PRAGMA table_info(entries)")}
                for name in _TRIGGERS:
                    self._conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                for sql in _triggers(columns).values():
                    self._conn.execute(sql)
                self._conn.execute("UPDATE seal SET dirty = dirty + 1 WHERE id = 1")
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
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
                if self._pos is not None:  # a free heartbeat: we hold the write lock anyway
                    self._beat_in(self._conn)
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

        cols = meta_columns([m for m, _, _, _ in encoded])
        vh = np.frombuffer(b"".join(v for _, _, v, _ in encoded), "<u8").astype(np.uint64)

        def run(c: sqlite3.Connection) -> list[int]:
            # The ids AUTOINCREMENT would give (we hold the write lock), known before the
            # insert so that each row is written with its digest in one statement.
            seq = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
            top = c.execute("SELECT max(id) FROM entries").fetchone()[0]
            first = max(int(seq[0]) if seq else 0, int(top or 0)) + 1
            ids = list(range(first, first + len(encoded)))
            rh = row_digests(np.array(ids, np.int64), cols, vh).tolist()
            now = time.time()
            for entry_id, r, (m, vbytes, vhash, record) in zip(ids, rh, encoded, strict=True):
                # The vector first: a vector written under an existing entry marks the seal dirty.
                c.execute("INSERT INTO vectors (id, vector) VALUES (?, ?)", (entry_id, vbytes))
                c.execute(
                    "INSERT INTO entries (id, scope, key, fingerprint, created, expires, threshold, "
                    "wrong, right, vhash, rhash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry_id, m.scope, m.key, m.fingerprint, m.created, m.expires, m.threshold,
                     m.wrong, m.right, vhash, r),
                )
                c.execute("INSERT INTO completions (id, record) VALUES (?, ?)", (entry_id, record))
                c.execute("INSERT INTO log (entry_id, op, at) VALUES (?, ?, ?)", (entry_id, OP_PUT, now))
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

        cols = meta_columns([meta])

        def run(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT vhash FROM entries WHERE id = ?", (int(entry_id),)).fetchone()
            if row is None or not isinstance(row[0], bytes) or len(row[0]) != 8:
                return False
            rh = int(row_digests(np.array([entry_id], np.int64), cols,
                                 np.frombuffer(row[0], "<u8").astype(np.uint64))[0])
            cur = c.execute(
                "UPDATE entries SET scope = ?, key = ?, fingerprint = ?, created = ?, expires = ?, "
                "threshold = ?, wrong = ?, right = ?, rhash = ? WHERE id = ?",
                (meta.scope, meta.key, meta.fingerprint, meta.created, meta.expires, meta.threshold,
                 meta.wrong, meta.right, rh, int(entry_id)),
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
            c.execute("UPDATE seal SET agg = 0, n = 0, dirty = 0 WHERE id = 1")
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
        return check_counters(rows)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(StoreError):
                # Gone for good: compaction stops waiting for this handle right away.
                self._pos = None
                self._write_raw(lambda c: c.execute("DELETE FROM readers WHERE reader = ?",
                                                    (self.reader_id,)).rowcount)
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
        batch = self._read(lambda c: self._changes(c, since))
        self._seen(since)
        return batch

    def sealed_changes(self, since: int) -> tuple[ChangeBatch, Seal]:
        """:meth:`changes` and the seal at the batch's head, read in one transaction."""
        def run(c: sqlite3.Connection) -> tuple[ChangeBatch, Seal]:
            batch = self._changes(c, since)
            agg, n, dirty = c.execute("SELECT agg, n, dirty FROM seal WHERE id = 1").fetchone()
            return batch, Seal(batch.head, int(n), int(agg), dirty == 0)

        out = self._read(run)
        self._seen(since)
        return out

    def _changes(self, c: sqlite3.Connection, since: int) -> ChangeBatch:
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

    # ------------------------------------------------------------- readers
    def _seen(self, pos: int, force: bool = False) -> None:
        """Note that this handle has applied the log up to ``pos``; report it now and then.

        The report (a row in ``readers``) is what compaction waits for. It is written at
        most every ``retention / 8`` seconds (capped at 30 s) outside writes, with no
        waiting for the write lock: a busy store just gets the report later (compaction
        then waits a little longer; nothing is ever lost).
        """
        self._pos = pos
        if not force and time.monotonic() - self._beat_at < min(30.0, self.retention / 8):
            return
        with contextlib.suppress(StoreError):
            self._write_raw(self._beat_run, wait=force)

    def _register(self, c: sqlite3.Connection) -> int:
        self._pos = self._head(c)
        self._beat_in(c)
        return 0

    def _beat_run(self, c: sqlite3.Connection) -> int:
        self._beat_in(c)
        return 0

    def _beat_in(self, c: sqlite3.Connection) -> None:
        """Write this handle's position and heartbeat (inside a write transaction)."""
        if self._pos is None:
            return
        c.execute("INSERT OR REPLACE INTO readers (reader, pos, beat) VALUES (?, ?, ?)",
                  (self.reader_id, self._pos, time.time()))
        self._beat_at = time.monotonic()

    def retain(self, name: str, pos: int | None) -> None:
        """A row in ``readers`` for ``name`` (a snapshot's head), expiring like a reader's."""
        def run(c: sqlite3.Connection) -> int:
            if pos is None:
                return c.execute("DELETE FROM readers WHERE reader = ?", (name,)).rowcount
            c.execute("INSERT OR REPLACE INTO readers (reader, pos, beat) VALUES (?, ?, ?)",
                      (name, int(pos), time.time()))
            return 1

        self._write_raw(run)

    def readers(self) -> list[tuple[str, int, float]]:
        """(reader id, applied position, last heartbeat as a Unix time) of every registered reader."""
        return [(str(r), int(p), float(b)) for r, p, b in self._read(
            lambda c: c.execute("SELECT reader, pos, beat FROM readers ORDER BY pos").fetchall())]

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
        if not self._read(lambda c: c.execute("SELECT dirty = 0 FROM seal WHERE id = 1").fetchone()[0]):
            with contextlib.suppress(StoreError):
                self.reseal()
        # Register at the current head before reading, so that compaction keeps every
        # record this load will not contain; re-registered at the load's own head after.
        with contextlib.suppress(StoreError):
            self._write_raw(self._register)

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
        self._seen(head, force=True)
        return self._assemble(head, ids, metas, blobs, skipped, dim, fingerprint)

    def reseal(self) -> int:
        """Recompute every row's vector digest and row digest, and the seal, from the rows.

        Needed after a change made without semcache (the seal is then dirty) and after
        upgrading a version-2 database. One write transaction over every row (a full
        load's cost); returns how many rows' digests changed.
        """
        def run(c: sqlite3.Connection) -> int:
            ids, metas, vh, _ = self._scan_meta(c)
            vhash = np.frombuffer(vh, "<u8").astype(np.uint64)
            pos = {i: k for k, i in enumerate(ids)}
            for vid, blob in c.execute("SELECT id, vector FROM vectors"):
                k = pos.get(vid)
                if k is not None and isinstance(blob, bytes) and blob and len(blob) % 4 == 0:
                    vhash[k] = vector_digests(np.frombuffer(blob, "<f4")[None, :])[0]
            rh = row_digests(np.array(ids, np.int64), meta_columns(metas), vhash).tolist() if ids else []
            old = dict(c.execute("SELECT id, rhash FROM entries").fetchall())
            vh_new = vhash.astype("<u8")
            fix = [(vh_new[k : k + 1].tobytes(), r, i) for k, (i, r) in enumerate(zip(ids, rh, strict=True))
                   if old.get(i) != r]
            c.executemany("UPDATE entries SET vhash = ?, rhash = ? WHERE id = ?", fix)
            old.update(zip(ids, rh, strict=True))
            agg = sum(r for r in old.values() if isinstance(r, int) and 0 <= r < SEAL_MOD) % SEAL_MOD
            c.execute("UPDATE seal SET agg = ?, n = ?, dirty = 0 WHERE id = 1", (agg, len(old)))
            return len(fix)

        n = self._write(run)
        if n:
            log.warning("semcache: %d rows of %s were changed without semcache; their digests were "
                        "recomputed", n, self.where)
        return n

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
        """Drop the change-log records every live reader has applied; return how many.

        A reader is live when its heartbeat (``readers.beat``) is younger than
        ``retention`` seconds; older rows are removed (that reader is gone: if it comes
        back behind the compacted part, :meth:`changes` makes it reload). Records among
        the newest ``keep_log`` or younger than ``grace`` seconds stay. Raises the log's
        floor to the newest dropped position, then gives free pages back to the file
        system when a quarter of the file is free.
        """
        def run(c: sqlite3.Connection) -> int:
            now = time.time()
            self._beat_in(c)  # our own position counts too
            c.execute("DELETE FROM readers WHERE beat < ?", (now - self.retention,))
            head = self._head(c)
            seen = c.execute("SELECT min(pos) FROM readers").fetchone()[0]
            limit = min(head - self.keep_log, head if seen is None else int(seen))
            row = c.execute("SELECT max(pos) FROM log WHERE pos <= ? AND at < ?",
                            (limit, now - self.grace)).fetchone()
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

    def _write_raw(self, fn: Callable[[sqlite3.Connection], int], wait: bool = True) -> int:
        """A write transaction without the compaction bookkeeping of :meth:`_write`.

        ``wait=False``: give up at once (StoreLockedError) when another process holds
        the write lock, instead of waiting up to ``timeout``.
        """
        with self._lock, self._errors():
            self._check_file()
            if not wait:
                self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            finally:
                if not wait:
                    self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
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
