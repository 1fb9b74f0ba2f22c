"""A store on PostgreSQL shared by many processes and hosts; each process a live replica.

PostgreSQL holds the entries, the settings, the blobs and a change log whose positions
follow commit order (see :mod:`semcache.stores.postgres_sql`). Each process keeps its
index in memory, as with the local stores, and:

- a background thread tails the log: a ``LISTEN`` connection wakes it within a
  millisecond of a commit, and it polls every ``poll_interval`` anyway, so a listener
  whose connection died silently costs at most that delay (the listener is then
  reconnected). What it reads waits in a buffer that :meth:`PostgresStore.changes`
  hands to the cache without a round trip;
- a lookup fetches only the completion of a hit, by primary key;
- a process's own writes enter its buffer at once (no wait for the notification);
- a new process loads every entry as of log position S in one REPEATABLE READ
  transaction, then reads the log from S: no gap, no duplicate.

Every call is bounded: a server-side ``statement_timeout`` per kind of call (lookups
tens of milliseconds), a bounded wait for a pooled connection, and a client-side
watchdog that shuts a connection's socket when the engine does not answer at all (a
hung host ignores ``statement_timeout``). :meth:`usable` turns False once the last
complete sync is older than ``max_staleness``; the cache then answers MISS. A change
of the store's epoch (the schema was dropped and recreated), a head behind what this
process saw (restored from an older backup) or a compacted log makes the replica
reload everything.

One janitor at a time (a transaction-level advisory lock) deletes expired entries and,
with ``max_entries``, the least recently hit ones beyond it (hit times are reported by
the nodes in batches), and compacts the log; its deletes are logged like any other.

Options come as keyword arguments or as query parameters of the URL, e.g.
``postgresql://app@db:5432/app?schema=cache1&lookup_timeout=0.05&max_staleness=5``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import re
import select
import socket
import threading
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from semcache._types import JSONValue
from semcache.errors import ConfigError, SerializationError, StoreError
from semcache.stores import URL_SCHEMES
from semcache.stores import postgres_sql as sql
from semcache.stores.base import (
    CLEARED,
    NORM_TOLERANCE,
    ChangeBatch,
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
    loads_completion,
    majority_dim,
)

try:
    import psycopg
    import psycopg_pool
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg_pool: pip install 'semcache-llm[postgres]'"
    ) from _exc

from semcache.stores.pgvector import EngineSearch, vector_text  # after psycopg: it needs it

__all__ = ["PostgresStore"]

log = logging.getLogger("semcache")

T = TypeVar("T")

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")

#: Options read from keyword arguments or URL query parameters, with their types.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "lookup_timeout": float,
    "write_timeout": float,
    "load_timeout": float,
    "max_staleness": float,
    "poll_interval": float,
    "pool_size": int,
    "max_entries": int,
    "janitor_interval": float,
    "log_retention": float,
    "completion_cache": int,
    "completion_staleness": float,
}

#: Records read per round trip when tailing the log.
_FETCH_LIMIT = 5_000
#: Characters of cached completions a process keeps at most (besides ``completion_cache``).
_RECORD_CHARS_MAX = 64 * 1024 * 1024
#: Buffered records beyond which a replica the cache does not drain reloads instead.
_BUFFER_MAX = 1_000_000


class _Watchdog:
    """Shuts the socket of a connection whose call outlives its deadline.

    ``statement_timeout`` is enforced by the server; a server that is hung, or a network
    that drops packets, never sends that error. Shutting the socket (through a duplicate
    of its descriptor) makes the blocked call fail at once with a connection error; the
    pool then discards that connection.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []
        self._live: set[int] = set()
        self._fired: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        #: When the thread wakes next (monotonic); a push with an earlier deadline wakes it.
        self._wake_at = -math.inf

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
        fd = conn.pgconn.socket
        token = next(self._ids)
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="semcache-pg-watchdog", daemon=True)
                self._thread.start()
            deadline = time.monotonic() + seconds
            heapq.heappush(self._heap, (deadline, token, fd))
            self._live.add(token)
            if deadline < self._wake_at:  # only when the thread would sleep past it (rare)
                self._cv.notify()
        try:
            yield
        finally:
            with self._cv:
                self._live.discard(token)
                fired = token in self._fired
                self._fired.discard(token)
            if fired:
                # The call may have finished just as the socket was shut: never reuse it.
                conn.close()

    def _run(self) -> None:
        with self._cv:
            while not self._stopped:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake_at = math.inf
                    self._cv.wait()
                    self._wake_at = -math.inf
                    continue
                deadline, token, fd = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._wake_at = deadline
                    self._cv.wait(deadline - now)
                    self._wake_at = -math.inf
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
                self._fired.add(token)
                # Still inside guard() (it needs this lock to leave), so fd is still its socket.
                with contextlib.suppress(OSError):
                    dup = socket.socket(fileno=os.dup(fd))
                    try:
                        dup.shutdown(socket.SHUT_RDWR)
                    finally:
                        dup.close()
                log.warning("semcache: a PostgreSQL call outlived its deadline; its connection was cut")

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class PostgresStore(Store):
    """Entries in PostgreSQL, the index replicated in every process.

    Parameters
    ----------
    url : str
        ``postgresql://user[:password]@host[:port]/dbname[?options]``; any libpq
        parameter may follow in the query string, plus the options below.
    schema : str
        Schema holding this cache's tables (created if missing, given CREATE on the
        database or the schema); several caches can share a database under different schemas.
    lookup_timeout : float
        Seconds a completion fetch on a hit may take (server- and client-side).
    write_timeout : float
        Seconds a write, a log read or a settings call may take.
    load_timeout : float
        Seconds the full load of a new replica may take.
    max_staleness : float
        Seconds after the last complete sync during which the replica is served.
    poll_interval : float
        Seconds between log polls when no notification arrives.
    pool_size : int
        Connections per pool (one pool for lookups, one for writes).
    max_entries : int, optional
        Global bound enforced by the janitor (least recently hit first).
    janitor_interval : float
        Seconds between janitor runs (expired entries, ``max_entries``, log compaction).
    log_retention : float
        Seconds a log record is kept; a replica cut off for longer reloads everything.
    connect_timeout : float
        Seconds to wait for the first connections when opening.
    completion_cache : int
        Completions kept in this process after a hit (0, the default: fetch every hit's
        completion, so a delete committed anywhere is a miss at once); see
        :meth:`get_completion` for the bounded staleness a cache brings.
    completion_staleness : float
        Seconds after the replica's last complete sync during which a cached completion
        is served (the replica then polls at least twice per this period).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "semcache",
        lookup_timeout: float = 0.05,
        write_timeout: float = 2.0,
        load_timeout: float = 120.0,
        max_staleness: float = 5.0,
        poll_interval: float = 1.0,
        pool_size: int = 4,
        max_entries: int | None = None,
        janitor_interval: float = 5.0,
        log_retention: float = 3600.0,
        connect_timeout: float = 10.0,
        completion_cache: int = 0,
        completion_staleness: float = 0.5,
    ) -> None:
        super().__init__()
        if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
            raise ConfigError(f"schema must match {_SCHEMA.pattern}, got {schema!r}")
        self.schema = schema
        self.lookup_timeout = _positive("lookup_timeout", lookup_timeout)
        self.write_timeout = _positive("write_timeout", write_timeout)
        self.load_timeout = _positive("load_timeout", load_timeout)
        self.max_staleness = _positive("max_staleness", max_staleness)
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.janitor_interval = _positive("janitor_interval", janitor_interval)
        self.log_retention = _positive("log_retention", log_retention)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be a positive int, got {pool_size!r}")
        if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, int)
                                        or max_entries < 1):
            raise ConfigError(f"max_entries must be a positive int or None, got {max_entries!r}")
        self.max_entries = max_entries
        if isinstance(completion_cache, bool) or not isinstance(completion_cache, int) \
                or completion_cache < 0:
            raise ConfigError(f"completion_cache must be an int >= 0, got {completion_cache!r}")
        self.completion_cache = completion_cache
        self.completion_staleness = _positive("completion_staleness", completion_staleness)
        self.conninfo, self.where = _split_url(url)
        self.channel = f"semcache_{schema}"
        # Advisory lock keys: per database and schema (crc32 is stable across processes).
        self._ddl_key = zlib.crc32(f"semcache-ddl:{schema}".encode())
        self._janitor_key = zlib.crc32(f"semcache-janitor:{schema}".encode())
        self._build_key = zlib.crc32(f"semcache-hnsw-build:{schema}".encode())

        #: Counters for monitoring (read with :meth:`stats`).
        self.counters = dict.fromkeys(
            ("errors", "timeouts", "resyncs", "fetches", "records", "listener_reconnects",
             "janitor_runs", "janitor_deleted", "hits_reported", "compacted", "backfilled"), 0)
        self._count_lock = threading.Lock()
        self._watchdog = _Watchdog()
        self._closed = False
        self._stop = threading.Event()

        # Replica state: records (seq, entry_id, entry) with buf_start < seq <= seen.
        self._fetch_lock = threading.Lock()
        self._buf_lock = threading.Lock()
        self._buf: deque[tuple[int, int, StoredEntry | None]] = deque()
        self._buf_start = 0
        self._seen = 0
        self._epoch = ""
        self._resync = False
        self._last_ok = -math.inf
        self._failing = False
        self._hits: dict[int, float] = {}
        self._hits_lock = threading.Lock()
        # Completion cache: entry id -> record JSON text, least recently used first.
        self._rec_lock = threading.Lock()
        self._records: OrderedDict[int, str] = OrderedDict()
        self._rec_chars = 0
        self._rec_gen = 0

        self.pool_size = pool_size
        #: Engine search per vector width (``index="pgvector"``), made by :meth:`engine_search`.
        self._engines: dict[int, EngineSearch] = {}
        #: Whether ``entries.embedding`` exists: puts then fill it (for the engine's index).
        self._embedded = False
        try:  # one plain connection first: an engine that refuses fails here at once, not
            # after the pools have retried for connect_timeout
            psycopg.connect(self.conninfo, connect_timeout=max(1, math.ceil(min(connect_timeout, 2.0))),
                            application_name="semcache").close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: {exc}") from exc
        self._lookup_pool = self._pool(self.lookup_timeout, f"semcache-lookup-{schema}")
        self._write_pool = self._pool(self.write_timeout, f"semcache-write-{schema}")
        try:
            for p in (self._write_pool, self._lookup_pool):
                p.open(wait=True, timeout=connect_timeout)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            self._close_pools()
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: {exc}") from exc
        try:
            self._ensure_schema()
            self._check_embedded()
            row = self._write(lambda c: c.execute(sql.render(sql.HEAD, schema)).fetchone())
            if row is None:
                raise StoreError(f"the store at {self.where} has no head row (tables emptied by hand?)")
            head, _, epoch = row
        except Exception:
            self._close_pools()
            raise
        self._epoch = str(epoch)
        self._seen = self._buf_start = int(head)
        self._last_ok = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        self._listener: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._replicate, name=f"semcache-pg-replica-{schema}",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def from_url(cls, url: str, timeout: float = 10.0) -> PostgresStore:
        """Build from a URL whose query string may carry this class's options."""
        parts = urlsplit(url)
        kwargs: dict[str, Any] = {}
        rest = []
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k in _OPTIONS:
                try:
                    kwargs[k] = _OPTIONS[k](v)
                except ValueError as exc:
                    raise ConfigError(f"store URL option {k}={v!r}: {exc}") from exc
            else:
                rest.append((k, v))
        clean = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(clean, connect_timeout=max(2.0, float(timeout)), **kwargs)

    # ------------------------------------------------------------------ plumbing
    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[name] += n

    def stats(self) -> dict[str, Any]:
        """Counters, the replica's position and the seconds since its last complete sync."""
        with self._count_lock:
            out: dict[str, Any] = dict(self.counters)
        out.update(seen=self._seen, buffered=len(self._buf), epoch=self._epoch,
                   staleness=time.monotonic() - self._last_ok, skipped=self.skipped)
        return out

    def _q(self, statement: str) -> str:
        return sql.render(statement, self.schema)

    def _call(self, pool: psycopg_pool.ConnectionPool[Any], timeout_s: float,
              fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on a pooled connection within ``timeout_s``; errors become StoreError."""
        if self._closed:
            raise StoreError(f"the PostgreSQL store at {self.where} is closed")
        try:
            with pool.connection(timeout=timeout_s) as conn, \
                    self._watchdog.guard(conn, 2 * timeout_s + 0.05):
                return fn(conn)
        except psycopg_pool.PoolTimeout as exc:
            self._count("timeouts")
            self._count("errors")
            raise StoreError(f"no PostgreSQL connection to {self.where} within {timeout_s}s: {exc}") from exc
        except psycopg.errors.QueryCanceled as exc:
            self._count("timeouts")
            self._count("errors")
            raise StoreError(f"PostgreSQL at {self.where} did not answer within {timeout_s}s") from exc
        except psycopg.Error as exc:
            self._count("errors")
            raise StoreError(f"PostgreSQL at {self.where} failed: {exc}") from exc

    def _pool(self, timeout_s: float, name: str, options: str = "",
              configure: Callable[[psycopg.Connection[Any]], None] | None = None,
              ) -> psycopg_pool.ConnectionPool[Any]:
        """A pool of autocommit connections whose statements time out after ``timeout_s``."""
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.conninfo,
            kwargs={"autocommit": True, "connect_timeout": 2, "application_name": "semcache",
                    "options": f"-c statement_timeout={_ms(timeout_s)} {options}".strip()},
            min_size=1, max_size=self.pool_size, open=False, timeout=timeout_s, name=name,
            num_workers=1, reconnect_timeout=3600.0, configure=configure,
        )
        return pool

    def _close_pool(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        with contextlib.suppress(Exception):
            pool.close(timeout=1.0)

    def _write(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self._call(self._write_pool, self.write_timeout, fn)

    def _ensure_schema(self) -> None:
        head = f"{self.schema}.head"

        def run(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(sql.TABLES_EXIST, {"head": f'"{self.schema}".head',
                                                  "newest": f'"{self.schema}".counters'}).fetchone()
            if row is not None and row[0]:
                return
            with conn.transaction():
                conn.execute(sql.DDL_LOCK, {"key": self._ddl_key})
                for stmt in sql.CREATE:
                    conn.execute(self._q(stmt), {"epoch": uuid.uuid4().hex} if "%(epoch)s" in stmt else None)

        try:
            self._write(run)
        except StoreError as exc:
            raise StoreError(f"cannot create the tables of {head} at {self.where} (the role needs "
                             f"CREATE on the database or the schema, or pre-created tables): {exc}") from exc

    # ------------------------------------------------------- search in the engine
    def _check_embedded(self) -> bool:
        """Read whether ``entries.embedding`` exists (another process may have added it)."""
        if not self._embedded:
            row = self._write(lambda c: c.execute(sql.HAS_EMBEDDING,
                                                  {"entries": f'"{self.schema}".entries'}).fetchone())
            self._embedded = bool(row and row[0])
        return self._embedded

    def engine_search(self, dim: int, *, m: int = 16, ef_construction: int = 64,
                      build_mem_mb: int | None = None, **params: Any) -> EngineSearch:
        """Search of ``dim``-wide vectors in the engine (``index="pgvector"``), set up once.

        Adds the ``embedding`` column and the scope b-tree when missing (one short DDL
        transaction under the schema's advisory lock), then the HNSW cosine index of this
        width with ``CREATE INDEX CONCURRENTLY`` (other nodes keep reading and writing; over
        many existing rows the build takes a while once, bounded by ``load_timeout``).
        Rows without an embedding are backfilled by this process's background thread.

        Parameters
        ----------
        dim : int
            Vector width.
        m, ef_construction : int
            HNSW build parameters (used only when this call creates the index).
        build_mem_mb : int, optional
            ``maintenance_work_mem`` for that build (a graph that fits builds much faster).
        **params
            :class:`~semcache.stores.pgvector.EngineSearch` options (``k``, ``ef_search``,
            ``max_scan_tuples``, ``iterative_scan``, ``exact_below``).

        Raises
        ------
        StoreError
            The engine failed, or the role may not create the extension/column/index.
        ConfigError
            Bad parameters.
        """
        engine = self._engines.get(dim)
        if engine is not None:
            return engine
        for name, value in (("m", m), ("ef_construction", ef_construction)):
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 1000:
                raise ConfigError(f"{name} must be an int in 2..1000, got {value!r}")
        engine = EngineSearch(self, dim, **params)
        index_sql = sql.render_dim(sql.ENGINE_INDEX, self.schema, dim)

        index_sql = index_sql.replace("%(m)s", str(m)).replace("%(efc)s", str(ef_construction))
        index_name = f'"{self.schema}".entries_hnsw_{dim}'

        def run(conn: psycopg.Connection[Any]) -> None:
            state = conn.execute(sql.ENGINE_STATE, {"entries": f'"{self.schema}".entries',
                                                    "index": index_name}).fetchone()
            has_column, valid = (bool(state[0]), state[1]) if state else (False, None)
            if not has_column:
                # Short: ADD COLUMN without a default rewrites nothing (its ACCESS EXCLUSIVE
                # lock is held for milliseconds); the b-trees are built here too.
                with conn.transaction():
                    conn.execute(f"SET LOCAL statement_timeout = {_ms(self.load_timeout)}")
                    conn.execute(sql.DDL_LOCK, {"key": self._ddl_key})
                    for stmt in sql.ENGINE_CREATE:
                        conn.execute(self._q(stmt))
            if valid is True:
                return
            # The HNSW build can take minutes on a filled table: CONCURRENTLY lets every node
            # read and write meanwhile (queries scan without it until it is valid). A build
            # that failed leaves an invalid index, which is dropped and built again.
            # One builder at a time (session-level lock): another process's build in progress
            # also reads as invalid and must not be dropped.
            got = conn.execute("SELECT pg_try_advisory_lock(%(key)s)", {"key": self._build_key}).fetchone()
            if not got or not got[0]:
                return  # another process is building it; searches scan without it meanwhile
            conn.execute(f"SET statement_timeout = {_ms(self.load_timeout)}")
            try:
                if build_mem_mb is not None:
                    conn.execute(f"SET maintenance_work_mem = '{int(build_mem_mb)}MB'")
                again = conn.execute(sql.ENGINE_STATE, {"entries": f'"{self.schema}".entries',
                                                        "index": index_name}).fetchone()
                if again is not None and again[1] is False:
                    conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index_name}")
                if again is None or again[1] is not True:
                    conn.execute(index_sql)
                    conn.execute(self._q("ANALYZE {s}.entries"))  # the planner's row estimates
            finally:
                conn.execute("RESET maintenance_work_mem")
                conn.execute(f"SET statement_timeout = {_ms(self.write_timeout)}")
                conn.execute("SELECT pg_advisory_unlock(%(key)s)", {"key": self._build_key})

        try:
            self._call(self._write_pool, self.load_timeout, run)
        except StoreError as exc:
            engine.close()
            raise StoreError(f"cannot set up search in the engine at {self.where} (the role needs the "
                             f"vector extension, or the right to create it, and CREATE on the schema): "
                             f"{exc}") from exc
        self._embedded = True
        self._engines[dim] = engine
        return engine

    def backfill(self, limit: int = 2_000) -> int:
        """Fill ``embedding`` of up to ``limit`` rows written without it; return how many."""
        def run(conn: psycopg.Connection[Any]) -> int:
            rows = conn.execute(self._q(sql.UNEMBEDDED), {"limit": limit}).fetchall()
            ids, texts = [], []
            for entry_id, raw in rows:
                raw = bytes(raw)
                if not raw or len(raw) % 4:
                    continue  # corrupt: never served (load and search validate it)
                ids.append(int(entry_id))
                texts.append(vector_text(np.frombuffer(raw, dtype="<f4")))
            if ids:
                conn.execute(self._q(sql.BACKFILL), {"ids": ids, "emb": texts})
            return len(ids)

        n = self._write(run)
        self._count("backfilled", n)
        return n

    def load_meta(self, fingerprint: str | None = None) -> Loaded:
        """:meth:`load_all` without the vectors (``vectors`` has shape (n, 0)).

        What an engine-search replica keeps. Rows are kept when their vector is as wide as
        the majority of ``fingerprint``'s rows (the same rule as :meth:`load_all`).
        """
        with self._fetch_lock:
            head_row, rows = self._snapshot_read(sql.LOAD_META)
            if head_row is None:
                raise StoreError(f"the store at {self.where} has no head row (tables emptied by hand?)")
            own = [r[9] // 4 for r in rows if r[9] and r[9] % 4 == 0 and r[3] == fingerprint]
            dim = majority_dim(own or [r[9] // 4 for r in rows if r[9] and r[9] % 4 == 0])
            ids: list[int] = []
            metas: list[EntryMeta] = []
            skipped = 0
            for r in rows:
                if r[9] != 4 * (dim or 0):
                    if fingerprint is not None and r[3] != fingerprint and r[9]:
                        continue  # another embedder's rows: foreign, not corrupt
                    self._skip(r[0], SerializationError(f"vector of {r[9]} bytes, expected {4 * (dim or 0)}"))
                    skipped += 1
                    continue
                try:
                    metas.append(check_meta(EntryMeta(scope=r[1], key=r[2], fingerprint=r[3], created=r[4],
                                                      expires=r[5], threshold=r[6], wrong=r[7], right=r[8])))
                except SerializationError as exc:
                    self._skip(r[0], exc)
                    skipped += 1
                    continue
                ids.append(int(r[0]))
            head = int(head_row[0])
            with self._buf_lock:
                self._epoch = str(head_row[2])
                self._buf.clear()
                self._buf_start = self._seen = head
                self._resync = False
                self._last_ok = time.monotonic()
            self._drop_records(None)  # a reload: deletes may have been missed
        return Loaded(head, np.array(ids, dtype=np.int64), metas, np.empty((len(ids), 0), np.float32),
                      skipped)

    # ------------------------------------------------------------ settings, blobs
    def load_settings(self) -> dict[str, Any] | None:
        row = self._write(lambda c: c.execute(self._q(sql.LOAD_SETTINGS)).fetchone())
        return None if row is None else _settings(row[0], self.where)

    def init_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(settings, sort_keys=True)

        def run(conn: psycopg.Connection[Any]) -> Any:
            conn.execute(self._q(sql.INIT_SETTINGS), {"value": text})
            return conn.execute(self._q(sql.LOAD_SETTINGS)).fetchone()

        row = self._write(run)
        if row is None:
            raise StoreError(f"settings vanished from {self.where} right after being written")
        return _settings(row[0], self.where)

    def save_settings(self, settings: dict[str, Any]) -> None:
        text = json.dumps(settings, sort_keys=True)
        self._write(lambda c: c.execute(self._q(sql.SAVE_SETTINGS), {"value": text}))

    def get_blob(self, name: str) -> bytes | None:
        row = self._write(lambda c: c.execute(self._q(sql.GET_BLOB), {"name": name}).fetchone())
        return None if row is None else bytes(row[0])

    def set_blob(self, name: str, data: bytes) -> None:
        self._write(lambda c: c.execute(self._q(sql.SET_BLOB), {"name": name, "data": bytes(data)}))

    # --------------------------------------------------------- scopes, counters
    def note_scopes(self, tenants: Mapping[str, str | None]) -> None:
        if tenants:
            params = {"scopes": list(tenants), "tenants": list(tenants.values())}
            self._write(lambda c: c.execute(self._q(sql.NOTE_SCOPES), params))

    def scope_tenants(self) -> dict[str, str | None]:
        rows = self._write(lambda c: c.execute(self._q(sql.SCOPE_TENANTS)).fetchall())
        return check_scope_tenants(rows, self.where)

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        add = counter_deltas(deltas)
        if add:
            params = {"names": list(add), "values": list(add.values())}
            self._write(lambda c: c.execute(self._q(sql.ADD_COUNTERS), params))

    def load_counters(self) -> tuple[dict[str, int], float | None]:
        rows = self._write(lambda c: c.execute(self._q(sql.LOAD_COUNTERS)).fetchall())
        return check_counters(rows)

    # ------------------------------------------------------------------- writes
    def put_many(self, rows: list[Row]) -> list[int]:
        if not rows:
            return []
        metas, vecs, records = [], [], []
        for meta, vec, prompt, completion in rows:
            metas.append(check_meta(meta))
            vecs.append(check_vector(vec))
            records.append(dumps_completion(prompt, completion))
        params = {
            "scope": [m.scope for m in metas], "key": [m.key for m in metas],
            "fp": [m.fingerprint for m in metas], "created": [m.created for m in metas],
            "expires": [m.expires for m in metas], "threshold": [m.threshold for m in metas],
            "n_wrong": [m.wrong for m in metas], "n_right": [m.right for m in metas],
            "vector": [v.astype("<f4").tobytes() for v in vecs], "record": records,
            "channel": self.channel,
        }
        statement = sql.PUT
        if self._embedded:  # engine search is on for this store: fill its column too
            statement = sql.PUT_EMBEDDED
            params["emb"] = [vector_text(v) for v in vecs]
        row = self._write(lambda c: c.execute(self._q(statement), params).fetchone())
        assert row is not None
        hi, epoch = int(row[0]), str(row[1])
        lo = hi - len(rows) + 1
        ids = list(range(lo, hi + 1))
        self._own(lo, hi, epoch,
                  [(i, StoredEntry(i, m, v)) for i, m, v in zip(ids, metas, vecs, strict=True)])
        return ids

    def delete(self, ids: Sequence[int]) -> list[int]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return []

        def run(conn: psycopg.Connection[Any]) -> tuple[int, str, list[int]]:
            with conn.transaction():
                base, epoch = conn.execute(self._q(sql.LOCK_HEAD)).fetchone() or (0, "")
                gone = sorted(r[0] for r in conn.execute(self._q(sql.DELETE_ENTRIES), {"ids": wanted}))
                if gone:
                    conn.execute(self._q(sql.APPEND_LOG), {"base": base, "ids": gone, "op": sql.OP_DELETE,
                                                           "channel": self.channel})
                return int(base), str(epoch), gone

        base, epoch, gone = self._write(run)
        if gone:
            self._own(base + 1, base + len(gone), epoch, [(i, None) for i in gone])
        return gone

    def update_meta(self, entry_id: int, meta: EntryMeta) -> bool:
        check_meta(meta)
        params = {"id": int(entry_id), "scope": meta.scope, "key": meta.key, "fp": meta.fingerprint,
                  "created": meta.created, "expires": meta.expires, "threshold": meta.threshold,
                  "n_wrong": meta.wrong, "n_right": meta.right}

        def run(conn: psycopg.Connection[Any]) -> tuple[int, str, bytes | None]:
            with conn.transaction():
                base, epoch = conn.execute(self._q(sql.LOCK_HEAD)).fetchone() or (0, "")
                row = conn.execute(self._q(sql.UPDATE_META), params).fetchone()
                if row is None:
                    return int(base), str(epoch), None
                conn.execute(self._q(sql.APPEND_LOG), {"base": base, "ids": [int(entry_id)],
                                                       "op": sql.OP_UPDATE, "channel": self.channel})
                return int(base), str(epoch), bytes(row[0])

        base, epoch, raw = self._write(run)
        if raw is None:
            return False
        try:
            entry: StoredEntry | None = StoredEntry(int(entry_id), meta, check_vector(raw))
        except SerializationError as exc:
            self._skip(entry_id, exc)
            entry = None
        self._own(base + 1, base + 1, epoch, [(int(entry_id), entry)] if entry is not None else [])
        return True

    def clear(self) -> None:
        def run(conn: psycopg.Connection[Any]) -> tuple[int, str]:
            with conn.transaction():
                base, epoch = conn.execute(self._q(sql.LOCK_HEAD)).fetchone() or (0, "")
                for stmt in sql.CLEAR_ENTRIES:
                    conn.execute(self._q(stmt))
                conn.execute(self._q(sql.APPEND_LOG), {"base": base, "ids": [CLEARED], "op": sql.OP_CLEAR,
                                                       "channel": self.channel})
                return int(base), str(epoch)

        base, epoch = self._write(run)
        self._own(base + 1, base + 1, epoch, [(CLEARED, None)])

    def _own(self, lo: int, hi: int, epoch: str, items: list[tuple[int, StoredEntry | None]]) -> None:
        """Apply this process's own committed write (positions lo..hi) to the replica now.

        When the replica has read everything up to ``lo - 1`` the records go straight into
        the buffer; otherwise other writers committed in between and the log is read up to
        ``hi`` (a round trip), so nothing before our write is skipped.
        """
        gone = [i for i, e in items if e is None]
        if gone:
            self._drop_records(None if CLEARED in gone else gone)
        with self._fetch_lock:
            with self._buf_lock:
                if self._resync or epoch != self._epoch or self._seen >= hi:
                    return
                if self._seen == lo - 1:
                    self._buf.extend((lo + k, i, e) for k, (i, e) in enumerate(items))
                    self._seen = hi
                    return
            try:
                while self._seen < hi and not self._resync:
                    if not self._fetch_locked():
                        break
            except StoreError as exc:  # the write is committed; the replica catches up later
                log.warning("semcache: could not read back own write from %s: %s", self.where, exc)

    # -------------------------------------------------------------------- reads
    def get_completion(self, entry_id: int) -> tuple[str, JSONValue] | None:
        """(prompt, completion) of an entry: from this process's completion cache, else by key.

        Entries never change their completion (feedback rewrites metadata only) and ids are
        never reused, so a cached record stays right until the entry is deleted; the replica
        drops it when its log read sees the delete (or a clear, or a reload). A cached record
        is served only while the replica's last complete sync is at most
        ``completion_staleness`` old (it polls twice per that period), so an entry deleted
        elsewhere, even while this node is cut off, is served at most that long after the
        node last heard from the engine; otherwise the record is fetched (and a cut-off
        engine makes that a MISS). ``completion_cache=0`` fetches every time: a delete is
        then seen at once, including a row deleted *behind the log's back* (by hand).
        """
        entry_id = int(entry_id)
        fresh = time.monotonic() - self._last_ok <= self.completion_staleness
        with self._rec_lock:
            text = self._records.get(entry_id) if fresh else None
            if text is not None:
                self._records.move_to_end(entry_id)
            gen = self._rec_gen
        if text is None:
            row = self._call(self._lookup_pool, self.lookup_timeout,
                             lambda c: c.execute(self._q(sql.GET_RECORD), {"id": entry_id}).fetchone())
            if row is None:
                return None
            text = str(row[0])
            out = loads_completion(text, entry_id)  # validated before it is cached
            if self.completion_cache:
                with self._rec_lock:
                    if gen == self._rec_gen:  # no delete was applied while we read it
                        self._records[entry_id] = text
                        self._rec_chars += len(text)
                        while len(self._records) > self.completion_cache or \
                                self._rec_chars > _RECORD_CHARS_MAX:
                            _, old = self._records.popitem(last=False)
                            self._rec_chars -= len(old)
        else:
            out = loads_completion(text, entry_id)  # a fresh object per caller: they may mutate it
        with self._hits_lock:
            self._hits[entry_id] = time.time()
        return out

    def _drop_records(self, ids: Sequence[int] | None) -> None:
        """Forget cached completions of ``ids`` (None: all of them)."""
        with self._rec_lock:
            self._rec_gen += 1
            if ids is None:
                self._records.clear()
                self._rec_chars = 0
                return
            for i in ids:
                old = self._records.pop(i, None)
                if old is not None:
                    self._rec_chars -= len(old)

    def note_hit(self, entry_id: int) -> None:
        """Record a hit served without :meth:`get_completion` (engine search), for the LRU."""
        with self._hits_lock:
            self._hits[int(entry_id)] = time.time()

    def head(self) -> int:
        return self._seen

    def changes(self, since: int) -> ChangeBatch:
        since = int(since)
        with self._buf_lock:
            if self._resync:
                return ChangeBatch(self._seen, None)
            if self._buf_start <= since <= self._seen:
                while self._buf and self._buf[0][0] <= since:
                    self._buf.popleft()
                self._buf_start = since
                return ChangeBatch(self._seen, _fold(self._buf))
        # Asked for a position the buffer does not hold (e.g. a snapshot older than the
        # replica's start): read the log from there, if it still reaches back.
        with self._fetch_lock:
            with self._buf_lock:
                self._buf.clear()
                self._buf_start = self._seen = since
            while True:
                got = self._fetch_locked()
                if self._resync or got < _FETCH_LIMIT:
                    break
        with self._buf_lock:
            if self._resync:
                return ChangeBatch(self._seen, None)
            return ChangeBatch(self._seen, _fold(self._buf))

    def _fetch_locked(self) -> int:
        """Read the log after ``seen`` (caller holds ``_fetch_lock``); return records read.

        Raises
        ------
        StoreError
        """
        since = self._seen
        rows = self._write(lambda c: c.execute(self._q(sql.CHANGES),
                                               {"since": since, "limit": _FETCH_LIMIT}).fetchall())
        self._count("fetches")
        if not rows:  # the head row is gone: the tables were emptied by hand
            self._drop_records(None)
            with self._buf_lock:
                self._resync = True
            return 0
        head, floor, epoch = int(rows[0][0]), int(rows[0][1]), str(rows[0][2])
        records: list[tuple[int, int, StoredEntry | None]] = []
        last = since
        for r in rows:
            if r[3] is None:
                continue
            seq, entry_id, op = int(r[3]), int(r[4]), int(r[5])
            last = seq
            if op == sql.OP_DELETE:
                records.append((seq, entry_id, None))
            elif op == sql.OP_CLEAR:
                records.append((seq, CLEARED, None))
            elif r[6] is not None:  # a put or update of an entry still present
                entry = self._entry(entry_id, r[6:14], r[14])
                if entry is not None:
                    records.append((seq, entry_id, entry))
        n_log = sum(1 for r in rows if r[3] is not None)
        complete = n_log < _FETCH_LIMIT
        # Deletes and clears drop cached completions before the replica moves past them.
        gone = [i for _, i, e in records if e is None]
        if gone:
            self._drop_records(None if CLEARED in gone else gone)
        with self._buf_lock:
            if self._seen != since:  # a load_all replaced the replica meanwhile
                return 0
            if epoch != self._epoch or head < since or floor > since:
                if not self._resync:
                    log.warning("semcache: the store at %s changed under this replica (epoch %s -> %s, "
                                "head %d, seen %d, log floor %d); reloading", self.where, self._epoch,
                                epoch, head, since, floor)
                    self._count("resyncs")
                self._resync = True
                self._buf.clear()
                self._last_ok = time.monotonic()
                self._drop_records(None)
                return 0
            self._buf.extend(records)
            self._seen = head if complete else last
            if len(self._buf) > _BUFFER_MAX:
                self._resync = True
                self._buf.clear()
                self._drop_records(None)
            if complete:
                self._last_ok = time.monotonic()
        self._count("records", n_log)
        return n_log

    def _entry(self, entry_id: int, cols: Sequence[Any], raw: Any, dim: int | None = None
               ) -> StoredEntry | None:
        try:
            meta = check_meta(EntryMeta(
                scope=cols[0], key=cols[1], fingerprint=cols[2], created=cols[3], expires=cols[4],
                threshold=cols[5], wrong=cols[6], right=cols[7]))
            return StoredEntry(entry_id, meta, check_vector(bytes(raw), dim))
        except SerializationError as exc:
            self._skip(entry_id, exc)
            return None

    def _snapshot_read(self, statement: str) -> tuple[Any, list[Any]]:
        """The head row and every row of ``statement``, read in ONE consistent snapshot.

        REPEATABLE READ, read only, bounded by ``load_timeout``: the rows are exactly the
        entries as of that head, so a reader tails the log from it with no gap.
        """
        def run(conn: psycopg.Connection[Any]) -> tuple[Any, list[Any]]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {_ms(self.load_timeout)}")
                head_row = conn.execute(self._q(sql.HEAD)).fetchone()
                with conn.cursor(binary=True) as cur:
                    rows = cur.execute(self._q(statement)).fetchall()
            return head_row, rows

        return self._call(self._write_pool, self.load_timeout, run)

    def load_all(self, dim: int | None = None, fingerprint: str | None = None) -> Loaded:
        with self._fetch_lock:
            head_row, rows = self._snapshot_read(sql.LOAD_ALL)
            if head_row is None:
                raise StoreError(f"the store at {self.where} has no head row (tables emptied by hand?)")
            loaded = self._decode_all(int(head_row[0]), rows, dim, fingerprint)
            with self._buf_lock:
                self._epoch = str(head_row[2])
                self._buf.clear()
                self._buf_start = self._seen = loaded.head
                self._resync = False
                self._last_ok = time.monotonic()
            self._drop_records(None)  # a reload: deletes may have been missed
        return loaded

    def _decode_all(self, head: int, rows: list[Any], dim: int | None,
                    fingerprint: str | None = None) -> Loaded:
        """Validate and stack what LOAD_ALL read: metadata per row, vectors all at once."""
        if dim is None:
            # The width of this embedder's rows (of all rows when it has none yet).
            own = [len(r[9]) // 4 for r in rows if len(r[9]) and len(r[9]) % 4 == 0 and r[3] == fingerprint]
            dim = majority_dim(own or [len(r[9]) // 4 for r in rows if len(r[9]) and len(r[9]) % 4 == 0])
        skipped = 0
        keep_ids: list[int] = []
        metas: list[EntryMeta] = []
        raws: list[bytes] = []
        width = 4 * (dim or 0)
        for r in rows:
            raw = r[9]
            if len(raw) != width:
                if fingerprint is not None and r[3] != fingerprint and len(raw):
                    continue  # another embedder's vector of another width: foreign, not corrupt
                self._skip(r[0], SerializationError(f"vector of {len(raw)} bytes, expected {width}"))
                skipped += 1
                continue
            try:
                meta = check_meta(EntryMeta(scope=r[1], key=r[2], fingerprint=r[3], created=r[4],
                                            expires=r[5], threshold=r[6], wrong=r[7], right=r[8]))
            except SerializationError as exc:
                self._skip(r[0], exc)
                skipped += 1
                continue
            keep_ids.append(int(r[0]))
            metas.append(meta)
            raws.append(bytes(raw))
        if not keep_ids:
            return Loaded(head, np.empty(0, np.int64), [], np.empty((0, dim or 0), np.float32), skipped)
        # One writable float32 copy; squared norms in float32 (384 terms: error ~1e-6, far below
        # the tolerance). A NaN or infinity anywhere makes the row's sum non-finite.
        vectors = np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(raws), -1).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            sq = np.einsum("ij,ij->i", vectors, vectors)
            good = np.isfinite(sq) & (np.abs(np.sqrt(sq) - 1.0) <= NORM_TOLERANCE)
        ids = np.array(keep_ids, dtype=np.int64)
        if not good.all():
            for k in np.flatnonzero(~good).tolist():
                self._skip(keep_ids[k], SerializationError("vector is not finite and unit-norm"))
            skipped += int((~good).sum())
            metas = [m for m, g in zip(metas, good.tolist(), strict=True) if g]
            ids, vectors = ids[good], vectors[good]
        return Loaded(head, ids, metas, np.ascontiguousarray(vectors), skipped)

    def usable(self) -> bool:
        return not self._closed and time.monotonic() - self._last_ok <= self.max_staleness

    def count(self) -> int:
        """Live entries in the engine (one query)."""
        row = self._write(lambda c: c.execute(self._q(sql.COUNT)).fetchone())
        return int(row[0]) if row else 0

    def compact(self) -> int:
        def run(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(self._q(sql.COMPACT), {"secs": self.log_retention, "limit": 50_000}).fetchone()
            return int(row[0]) if row else 0

        n = self._write(run)
        self._count("compacted", n)
        return n

    # -------------------------------------------------------------- the janitor
    def janitor(self, now: float | None = None) -> int | None:
        """One janitor pass; None when another process holds the janitor lock.

        Deletes expired entries and, with ``max_entries``, the least recently hit ones
        beyond it, in one transaction that logs their tombstones. Returns how many.
        """
        now = time.time() if now is None else now

        def run(conn: psycopg.Connection[Any]) -> tuple[int, str, list[int]] | None:
            with conn.transaction():
                got = conn.execute(sql.JANITOR_LOCK, {"key": self._janitor_key}).fetchone()
                if not got or not got[0]:
                    return None
                expired = [r[0] for r in conn.execute(self._q(sql.EXPIRED), {"now": now, "limit": 100_000})]
                victims: list[int] = []
                if self.max_entries is not None:
                    row = conn.execute(self._q(sql.COUNT)).fetchone()
                    excess = (int(row[0]) if row else 0) - len(expired) - self.max_entries
                    if excess > 0:
                        doomed = set(expired)
                        # Expired ones may sort first by recency; ask for enough to skip them.
                        for r in conn.execute(self._q(sql.LRU_VICTIMS), {"n": excess + len(expired)}):
                            if r[0] not in doomed and len(victims) < excess:
                                victims.append(r[0])
                if not expired and not victims:
                    return 0, "", []  # nothing to do: writers are not held up
                # Writers lock the head row first; so does the janitor before deleting.
                base, epoch = conn.execute(self._q(sql.LOCK_HEAD)).fetchone() or (0, "")
                gone = sorted(r[0] for r in conn.execute(self._q(sql.DELETE_ENTRIES),
                                                         {"ids": expired + victims}))
                if gone:
                    conn.execute(self._q(sql.APPEND_LOG), {"base": base, "ids": gone, "op": sql.OP_DELETE,
                                                           "channel": self.channel})
                return int(base), str(epoch), gone

        out = self._write(run)
        self._count("janitor_runs")
        if out is None:
            return None
        base, epoch, gone = out
        if gone:
            self._count("janitor_deleted", len(gone))
            self._own(base + 1, base + len(gone), epoch, [(i, None) for i in gone])
        return len(gone)

    def _report_hits(self) -> None:
        with self._hits_lock:
            hits, self._hits = self._hits, {}
        if not hits:
            return
        ids = list(hits)
        try:
            self._write(lambda c: c.execute(self._q(sql.REPORT_HITS),
                                            {"ids": ids, "times": [hits[i] for i in ids]}))
            self._count("hits_reported", len(ids))
        except StoreError:
            with self._hits_lock:  # keep them for the next try (newer times win)
                for i, t in hits.items():
                    self._hits[i] = max(t, self._hits.get(i, t))
            raise

    # -------------------------------------------------------------- the replica
    def _listen(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2,
                               application_name="semcache-listener",
                               options=f"-c statement_timeout={_ms(self.write_timeout)}")
        try:
            conn.execute(sql.LISTEN.format(channel=self.channel))
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None

    def _wait(self, timeout: float) -> tuple[bool, int]:
        """Wait for a notification (or a wake-up); return (notified, highest position announced)."""
        conn = self._listener
        fds: list[int] = [self._wake_r]
        if conn is not None:
            fds.append(conn.pgconn.socket)
        ready, _, _ = select.select(fds, [], [], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
        top = -1
        notified = False
        if conn is not None and conn.pgconn.socket in ready:
            conn.pgconn.consume_input()  # raises when the connection is gone
            while (n := conn.pgconn.notifies()) is not None:
                notified = True
                with contextlib.suppress(ValueError):
                    top = max(top, int(n.extra.decode()))
            if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listener connection is closed")
        return notified, top

    def _replicate(self) -> None:
        """The background thread: listen, read the log, report hits, run the janitor."""
        next_poll = 0.0
        next_flush = time.monotonic() + 1.0
        next_janitor = time.monotonic() + random.uniform(0.5, 1.0) * self.janitor_interval
        next_compact = time.monotonic() + 60.0
        backoff = 0.05
        # Polls keep the completion cache's freshness (see get_completion) when it is on.
        every = min(self.poll_interval, self.completion_staleness / 2) if self.completion_cache \
            else self.poll_interval
        unannounced = 0
        while not self._stop.is_set():
            try:
                if self._listener is None:
                    self._listener = self._listen()
                    next_poll = 0.0  # read what was committed while nobody listened
                now = time.monotonic()
                notified, top = self._wait(max(0.0, min(next_poll - now, 0.5)))
                if self._stop.is_set():
                    break
                now = time.monotonic()
                polled = now >= next_poll
                if (notified and top > self._seen) or polled:
                    with self._fetch_lock:
                        got = _FETCH_LIMIT
                        n = 0
                        while got >= _FETCH_LIMIT and not self._resync:
                            got = self._fetch_locked()
                            n += got
                    if polled and n and not notified:
                        # Twice in a row a poll found commits nobody announced (once may be a
                        # notification still on its way): the listener may be dead.
                        unannounced += 1
                        if unannounced >= 2:
                            unannounced = 0
                            self._count("listener_reconnects")
                            self._drop_listener()
                    elif notified:
                        unannounced = 0
                    next_poll = time.monotonic() + every
                if self._failing:
                    log.warning("semcache: PostgreSQL at %s reachable again; replica in sync", self.where)
                    self._failing = False
                backoff = 0.05
                if now >= next_flush:
                    next_flush = now + 1.0
                    self._report_hits()
                if now >= next_janitor:
                    next_janitor = now + random.uniform(0.8, 1.2) * self.janitor_interval
                    self.janitor()
                    self._check_embedded()  # engine search enabled by another process?
                    if self._engines:
                        self.backfill()
                if now >= next_compact:
                    next_compact = now + 60.0
                    self.compact()
            except (StoreError, psycopg.Error, OSError) as exc:
                if self._stop.is_set():
                    break
                if not self._failing:
                    log.warning("semcache: replica of %s cannot sync: %s", self.where, exc)
                    self._failing = True
                self._count("errors")
                self._drop_listener()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.poll_interval)
            except Exception:  # never let the replica thread die silently
                log.exception("semcache: unexpected error in the replica thread of %s", self.where)
                self._drop_listener()
                self._stop.wait(self.poll_interval)
        self._drop_listener()

    # ---------------------------------------------------------------- lifetime
    def _close_pools(self) -> None:
        for engine in self._engines.values():
            engine.close()
        for p in (self._lookup_pool, self._write_pool):
            self._close_pool(p)

    def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(StoreError):
            self._report_hits()
        self._closed = True
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5.0)
        self._close_pools()
        self._watchdog.stop()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _fold(records: Sequence[tuple[int, int, StoredEntry | None]]) -> list[tuple[int, StoredEntry | None]]:
    """One item per entry id, in log order: the last record of each id after the last clear.

    The cache adds what a batch put and removes what it deleted; a put and a delete of the
    same id in one batch must therefore arrive as the delete alone.
    """
    start = 0
    for k in range(len(records) - 1, -1, -1):
        if records[k][1] == CLEARED:
            start = k
            break
    tail = list(records)[start:]
    last = {entry_id: k for k, (_, entry_id, _) in enumerate(tail)}
    return [(entry_id, entry) for k, (_, entry_id, entry) in enumerate(tail) if last[entry_id] == k]


def _settings(text: object, where: str) -> dict[str, Any]:
    try:
        out = json.loads(str(text))
    except ValueError as exc:
        raise StoreError(f"settings in {where} are corrupt: {exc}") from exc
    if not isinstance(out, dict):
        raise StoreError(f"settings in {where} are not a JSON object")
    return out


def _split_url(url: str) -> tuple[str, str]:
    """(conninfo for libpq, the URL without its password for messages)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"not a PostgreSQL URL: {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    conninfo = urlunsplit(parts._replace(scheme="postgresql"))
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host
    netloc += f":{parts.port}" if parts.port else ""
    where = urlunsplit(("postgresql", netloc, parts.path, "", ""))
    return conninfo, where


def _from_url(url: str, timeout: float) -> Store:
    return PostgresStore.from_url(url, timeout)


URL_SCHEMES["postgresql"] = _from_url
