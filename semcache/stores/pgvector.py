"""Search in the engine: ``SemanticCache(store="postgresql://…", index="pgvector")``.

For caches larger than a node's memory. The replica of each process keeps the entries'
metadata (what scopes, TTL, purge, feedback and the exact fast path need: a few hundred
bytes per entry) but **no vectors and no index**; a semantic lookup asks PostgreSQL for
the nearest live entries of its scope and re-ranks them exactly in the cache, as every
other index does:

1. :meth:`EngineSearch.search` runs one statement on its own connection pool: the ``k``
   nearest rows of the scope by the pgvector HNSW cosine index (``hnsw.iterative_scan``
   keeps scanning until ``k`` rows pass the scope filter, up to ``hnsw.max_scan_tuples``,
   so a small scope in a large table is not starved: pgvector#751), or, for a scope the
   replica counts fewer than ``exact_below`` rows in, all of them by the scope's b-tree
   (exact). Each row comes with its float32 vector, metadata and completion (one round
   trip, no second primary-key fetch).
2. The cache scores the candidates exactly (``vector @ query``, cosine in [-1, 1]) and
   serves the best one at or above the threshold that passes the per-entry threshold,
   the TTL, the guards and the long-prompt check
   (:meth:`semcache.cache.SemanticCache._engine_get`).

A failed or slow search (``lookup_timeout``, the store's watchdog) raises
:class:`~semcache.errors.StoreError`, which the cache turns into a MISS (``fail_open``).
The first use on a store adds the ``embedding vector`` column and the HNSW index of that
width (``CREATE EXTENSION vector`` needs a role allowed to create it, or the extension
installed beforehand); from then on every process's puts fill it, and rows written
before (or by a process that had not seen the column yet) are backfilled by the
background thread of the processes that search.

A distance-sensitive filter can sit in front of the engine: it would wrap
:meth:`EngineSearch.search` (same arguments; return ``[]`` to skip the round trip).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import psycopg
import psycopg_pool
from psycopg.adapt import Dumper
from psycopg.pq import Format

from semcache._types import FloatArray, IdArray, JSONValue
from semcache.errors import ConfigError, SerializationError, StoreError
from semcache.stores import postgres_sql as sql
from semcache.stores.base import EntryMeta, check_meta, check_vector, loads_completion

T = TypeVar("T")


class PostgresStore(Protocol):
    """What :class:`EngineSearch` uses of :class:`semcache.stores.postgres.PostgresStore`.

    A protocol, not an import: ``postgres`` imports this module, and a circle is refused
    (``tests/test_layout.py``).
    """

    schema: str
    where: str
    lookup_timeout: float
    write_timeout: float

    def _pool(self, timeout_s: float, name: str, options: str = "",
              configure: Callable[[psycopg.Connection[Any]], None] | None = None,
              ) -> psycopg_pool.ConnectionPool[Any]: ...

    def _close_pool(self, pool: psycopg_pool.ConnectionPool[Any]) -> None: ...

    def _call(self, pool: psycopg_pool.ConnectionPool[Any], timeout_s: float,
              fn: Callable[[psycopg.Connection[Any]], T]) -> T: ...

    def _skip(self, entry_id: object, exc: Exception) -> None: ...

__all__ = ["EngineCandidate", "EngineIndex", "EngineSearch", "vector_text"]


@dataclass(frozen=True, slots=True)
class EngineCandidate:
    """One row the engine returned for a lookup (validated)."""

    entry_id: int
    meta: EntryMeta
    #: float32, shape (d,), unit norm: the stored vector, for the exact re-rank.
    vector: FloatArray
    prompt: str
    completion: JSONValue


class _QueryVector:
    """A query vector already in pgvector's binary wire format."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _QueryVectorDumper(Dumper):
    # oid 0: the server takes the type from the statement's ``::vector(d)`` cast, so
    # the vector type's oid (which differs per database) need not be looked up.
    format = Format.BINARY
    oid = 0

    def dump(self, obj: Any) -> bytes:
        return bytes(obj.data)


def vector_text(vector: FloatArray) -> str:
    """pgvector text of a float32 vector, exact: each float32 is printed as the double it
    equals (shortest repr), which pgvector parses back to the same float32."""
    return "[" + ",".join(map(repr, np.asarray(vector, np.float32).tolist())) + "]"


def _wire(vector: FloatArray) -> bytes:
    v = np.asarray(vector, dtype=">f4")
    return struct.pack(">HH", v.shape[0], 0) + v.tobytes()


def _unwire(raw: Any, dim: int) -> FloatArray:
    """A pgvector binary value (int16 width, int16 unused, big-endian float32s) as float32 (d,)."""
    data = bytes(raw)
    if len(data) != 4 + 4 * dim or struct.unpack(">H", data[:2])[0] != dim:
        raise SerializationError(f"an engine vector of {len(data)} bytes is not {dim}-d")
    return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


class EngineIndex:
    """The per-scope index slot of an engine-search cache: holds nothing.

    The cache's partitions keep counting their entries (which picks the exact scan for
    small scopes); the vectors live only in the engine.
    """

    def __init__(self) -> None:
        self._n = 0

    def add(self, ids: IdArray | int, low: FloatArray, full: FloatArray) -> None:
        self._n += 1 if isinstance(ids, int) else len(ids)

    def remove(self, ids: IdArray) -> None:
        self._n = max(0, self._n - len(ids))

    def candidates(self, q_low: FloatArray, q_full: FloatArray, threshold: float) -> IdArray:
        raise ConfigError("an engine-search partition is searched by EngineSearch.search, not locally")

    def __len__(self) -> int:
        return self._n


class EngineSearch:
    """Nearest-neighbour search of one vector width in PostgreSQL (pgvector HNSW, cosine).

    Made by :meth:`PostgresStore.engine_search`; see the module docstring.

    Parameters
    ----------
    store : PostgresStore
    dim : int
        Vector width.
    k : int
        Candidates returned per lookup (re-ranked exactly by the cache).
    ef_search : int
        ``hnsw.ef_search``: the graph's candidate list per scan step.
    max_scan_tuples : int
        ``hnsw.max_scan_tuples``: how far an iterative scan may go to find ``k`` rows of
        the scope before it gives up.
    iterative_scan : {"relaxed_order", "strict_order"}
        ``hnsw.iterative_scan``. Relaxed is faster and enough: the cache re-ranks.
    exact_below : int
        Scopes with fewer entries (as counted by the replica) are scanned exactly.
    """

    def __init__(self, store: PostgresStore, dim: int, *, k: int = 10, ef_search: int = 64,
                 max_scan_tuples: int = 50_000, iterative_scan: str = "relaxed_order",
                 exact_below: int = 1_000) -> None:
        for name, value in (("k", k), ("ef_search", ef_search), ("max_scan_tuples", max_scan_tuples),
                            ("exact_below", exact_below)):
            low = 0 if name == "exact_below" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if iterative_scan not in ("relaxed_order", "strict_order"):
            raise ConfigError(f"iterative_scan must be 'relaxed_order' or 'strict_order', "
                              f"got {iterative_scan!r}")
        self.store = store
        self.dim = dim
        self.k = k
        self.exact_below = exact_below
        self.ef_search = max(ef_search, k)
        self._search = sql.render_dim(sql.SEARCH, store.schema, dim)
        self._search_exact = sql.render_dim(sql.SEARCH_EXACT, store.schema, dim)
        self._pool = store._pool(
            store.lookup_timeout, f"semcache-search-{store.schema}-{dim}",
            f"-c hnsw.ef_search={self.ef_search} -c hnsw.iterative_scan={iterative_scan} "
            f"-c hnsw.max_scan_tuples={max_scan_tuples} "
            # The graph query must walk the graph, and the exact scan of a small scope must
            # read it through the (scope, key) b-tree: with stale statistics (right after a
            # bulk load) the planner would rather sort, or scan, the whole table, which at
            # 100k rows takes longer than a lookup may. Both settings only penalise a plan,
            # so a query with no other plan still runs.
            "-c enable_sort=off -c enable_seqscan=off",
            configure=_configure)
        try:
            self._pool.open(wait=True, timeout=store.write_timeout)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            store._close_pool(self._pool)
            raise StoreError(f"cannot connect to PostgreSQL at {store.where} for search: {exc}") from exc
        #: Lookups answered by the graph / by the exact scan of a small scope.
        self.counters = {"graph": 0, "exact": 0, "rows": 0}

    def search(self, scope: str, vector: FloatArray, now: float, scope_size: int | None = None,
               ) -> list[EngineCandidate]:
        """The ``k`` nearest live entries of ``scope`` (approximately, or exactly when small).

        Parameters
        ----------
        scope : str
            Scope id (32 hex chars).
        vector : float32 array, shape (d,)
            The query, unit norm.
        now : float
            Entries with ``expires <= now`` are left out.
        scope_size : int, optional
            Entries of the scope as far as the caller knows; below ``exact_below`` the
            scope is scanned exactly.

        Returns
        -------
        list of EngineCandidate
            At most ``k``, roughly nearest first (re-rank them); rows that fail validation
            are skipped and counted by the store.

        Raises
        ------
        StoreError
            The engine failed or did not answer within the store's ``lookup_timeout``.
        """
        exact = scope_size is not None and scope_size < self.exact_below
        statement = self._search_exact if exact else self._search
        params = {"sid": scope, "q": _QueryVector(_wire(vector)), "now": now, "k": self.k}

        def run(conn: psycopg.Connection[Any]) -> list[Any]:
            with conn.cursor(binary=True) as cur:
                return cur.execute(statement, params).fetchall()

        rows = self.store._call(self._pool, self.store.lookup_timeout, run)
        self.counters["exact" if exact else "graph"] += 1
        self.counters["rows"] += len(rows)
        out: list[EngineCandidate] = []
        for r in rows:
            entry_id = int(r[0])
            try:
                meta = check_meta(EntryMeta(scope=r[1], key=r[2], fingerprint=r[3], created=r[4],
                                            expires=r[5], threshold=r[6], wrong=r[7], right=r[8]))
                vec = check_vector(_unwire(r[9], self.dim), self.dim)
                prompt, completion = loads_completion(r[10], entry_id)
            except SerializationError as exc:
                self.store._skip(entry_id, exc)
                continue
            out.append(EngineCandidate(entry_id, meta, vec, prompt, completion))
        return out

    def close(self) -> None:
        self.store._close_pool(self._pool)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_dumper(_QueryVector, _QueryVectorDumper)
