"""The semantic cache: the object users hold.

A lookup runs, in order:

1. **exact fast path**: the normalised prompt's hash in the same scope hits
   without embedding anything (score 1.0);
2. **embedding** of the prompt (the bundled MiniLM by default);
3. **projection** to the index's low-dimensional space (once the cache is large
   enough for an approximate index to pay off);
4. **index**: candidates from the scope's own partition (never another scope's);
5. **verification**: exact full-dimension cosine of every candidate, best first;
   the first one at or above the threshold that passes the guards, is not
   expired and is still in the store is the hit.

Everything stored lives in a :class:`~semcache.store.RecordStore` (diskcache on
local disk by default); the in-memory index is rebuilt from it on open and kept
in step with other processes through the store's journal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import inspect
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np

from semcache._types import FloatArray, JSONValue
from semcache.embedding import Embedder, as_embedder, check_embeddings
from semcache.errors import (
    ConfigError,
    EmbeddingError,
    SemcacheError,
    SerializationError,
    StoreError,
)
from semcache.index import INDEXES, ExactIndex, Index, make_index
from semcache.projection import (
    PROJECTIONS,
    BaseProjection,
    PCAProjection,
    dump_projection,
    load_projection,
)
from semcache.prompts import normalize_prompt, prompt_key
from semcache.scope import Scope, scope_id
from semcache.store import (
    CLEARED,
    DiskKV,
    EntryMeta,
    KeyValue,
    MemoryKV,
    RecordStore,
    dumps_completion,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "MISS",
    "CacheStats",
    "Guard",
    "Hit",
    "Miss",
    "SemanticCache",
    "default_directory",
]

log = logging.getLogger("semcache")

#: Default cosine threshold. See README, "Choosing a threshold": on QQP dev pairs
#: with all-MiniLM-L6-v2 a lower threshold serves many more wrong answers.
DEFAULT_THRESHOLD: Final = 0.9

#: Store format written by this version; a directory with another one is refused.
STORE_FORMAT: Final = 1

ScopeLike: TypeAlias = Scope | Mapping[str, Any] | str | None

#: A guard sees (new prompt, stored prompt, cosine) and returns False to veto a hit.
Guard: TypeAlias = Callable[[str, str, float], bool]


class Miss:
    """Type of :data:`MISS`; falsy, so ``if hit:`` reads naturally."""

    _instance: Miss | None = None

    def __new__(cls) -> Miss:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "MISS"

    def __reduce__(self) -> str:
        return "MISS"


#: Returned by :meth:`SemanticCache.get` on a miss. A distinct sentinel (not None),
#: so a cached ``None`` completion is still a hit.
MISS: Final = Miss()


@dataclass(frozen=True, slots=True)
class Hit:
    """A served entry.

    Attributes
    ----------
    completion : JSON value
        The stored completion (a string, an OpenAI response dict, ...).
    score : float
        Cosine similarity in [-1, 1] between the new prompt and the stored one
        (1.0 for an exact match).
    prompt : str
        The stored prompt that matched.
    entry_id : int
        Id of the entry (for :meth:`SemanticCache.delete` and feedback).
    created_at : float
        Unix time the entry was stored.
    expires_at : float or None
        Unix time the entry expires, or None.
    exact : bool
        True when served by the exact fast path (no embedding computed).
    """

    completion: JSONValue
    score: float
    prompt: str
    entry_id: int
    created_at: float
    expires_at: float | None
    exact: bool

    def __bool__(self) -> Literal[True]:
        return True


_STAGES: Final = ("embed", "index", "verify", "total")


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache object was created, and its current size.

    ``latency_ms`` maps a stage (``embed``, ``index``, ``verify``, ``total``) to
    its ``(p50, p99)`` over recent lookups that reached that stage.
    """

    hits: int
    exact_hits: int
    misses: int
    puts: int
    deletes: int
    evictions: int
    expirations: int
    errors: int
    entries: int
    scopes: int
    foreign_entries: int
    index_kinds: dict[str, int]
    projection: str | None
    latency_ms: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def default_directory(name: str = "default") -> Path:
    """``$SEMCACHE_HOME/<name>``, by default ``~/.cache/semcache/<name>``."""
    root = os.environ.get("SEMCACHE_HOME") or os.path.join("~", ".cache", "semcache")
    return Path(root).expanduser() / name


def _check_threshold(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"threshold must be a number, not {type(value).__name__}")
    t = float(value)
    if not (-1.0 <= t <= 1.0):  # also rejects NaN
        raise ConfigError(f"threshold is a cosine similarity and must be in [-1, 1], got {value!r}")
    return t


def _check_ttl(value: object, what: str = "ttl") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{what} must be a positive number of seconds or None, got {value!r}")
    if math.isinf(value):
        return None
    return float(value)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


@dataclass
class _Partition:
    """One scope's index."""

    kind: str
    index: Index
    size: int = 0


class SemanticCache:
    """A semantic cache of LLM completions on one machine.

    Parameters
    ----------
    directory : str or Path, optional
        Where the disk store lives. Default: :func:`default_directory` of ``name``.
    name : str
        Name of the default directory (ignored when ``directory`` is given).
    embedder : Embedder or callable, optional
        Default: the bundled all-MiniLM-L6-v2. A callable ``list[str] -> (n, d)``
        is wrapped by :class:`~semcache.embedding.FunctionEmbedder`.
    threshold : float, optional
        Cosine similarity in [-1, 1] a stored prompt needs to be served; default
        :data:`DEFAULT_THRESHOLD`.
    target_wrong_hit_rate : float, optional
        Instead of a threshold: the share of hits allowed to be wrong. The
        threshold comes from the calibration shipped for the embedder
        (:func:`semcache.calibration.threshold_for`; the bundled model is
        calibrated for 0.05 to 0.2). :class:`ConfigError` for an uncalibrated
        embedder or target.
    ttl : float, optional
        Seconds an entry lives unless :meth:`put` says otherwise. None: forever.
    max_entries : int, optional
        Size bound; the least recently used entries are evicted beyond it.
    store : {"disk", "memory"} or KeyValue
        ``"memory"`` keeps nothing after the process ends (tests, ephemeral use).
    index : {"auto", "exact", "multigrid", "grid", "thermal"}
        ``"auto"`` searches small scopes exactly and switches a scope to the
        approximate index once it holds ``approx_min_entries`` entries: the
        two-table grid (:class:`~semcache.index.multigrid.MultiGridIndex`, the
        fastest at equal recall in ``benchmarks/index_bench.py``), or the thermal
        index when ``projection_dims <= 3``.
    projection : {"learned", "pca", "identity"} or BaseProjection
        Projection fitted on the cache's own embeddings for approximate indexes.
        ``"learned"`` keeps paraphrases close (it falls back to PCA when the cache
        holds too few near-duplicates to learn from).
    projection_dims : int
        Output width of the projection (each grid table hashes a block of it; the filter uses all).
    approx_min_entries : int
        Scope size at which ``index="auto"`` switches to the approximate index.
        Measured on real QQP embeddings (single thread): exact search takes 0.12 ms
        at 5k entries, 0.35 ms at 10k, 2.0 ms at 20k; the two-table grid 0.03-0.05 ms at
        10k and 0.08-0.10 ms at 92k, re-rank included (``benchmarks/index_bench.py``).
    guards : sequence of callables, optional
        Each gets ``(new_prompt, stored_prompt, score)`` and may veto a hit (the
        next-best candidate above the threshold may still be served). None (the
        default) uses :func:`semcache.guards.default_guards`, the guards that paid
        off on the dev data (mismatched numbers, swapped roles); ``()`` turns them off.
    fail_open : bool
        When True (default) a failing store or embedder makes :meth:`get` return
        :data:`MISS` and :meth:`put` return None, with the error logged, so the
        caller's LLM call still happens. Bad input raises either way.
    timeout : float
        Seconds to wait for a store lock held by another process.
    index_params : mapping, optional
        Extra keyword arguments for the approximate index constructor.
    max_wrong : int
        :meth:`feedback` deletes an entry reported wrong this many times.
    feedback_margin : float
        How far above a wrong hit's score :meth:`feedback` raises the entry's bar.
    snapshot_min_entries : int
        :meth:`close` writes an index snapshot (so the next open skips replaying the
        journal) when the cache holds at least this many entries.

    Examples
    --------
    >>> cache = SemanticCache(store="memory")                      # doctest: +SKIP
    >>> cache.put("What is the capital of France?", "Paris")        # doctest: +SKIP
    >>> hit = cache.get("what's France's capital city?")            # doctest: +SKIP
    >>> hit.completion, round(hit.score, 2)                         # doctest: +SKIP
    ('Paris', 0.93)
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        name: str = "default",
        embedder: Embedder | Callable[[list[str]], Any] | None = None,
        threshold: float | None = None,
        target_wrong_hit_rate: float | None = None,
        ttl: float | None = None,
        max_entries: int | None = None,
        store: Literal["disk", "memory"] | KeyValue = "disk",
        index: str = "auto",
        projection: str | BaseProjection = "learned",
        projection_dims: int = 32,
        approx_min_entries: int = 5_000,
        projection_min_entries: int = 2_048,
        guards: Sequence[Guard] | None = None,
        fail_open: bool = True,
        timeout: float = 10.0,
        index_params: Mapping[str, Any] | None = None,
        max_wrong: int = 2,
        feedback_margin: float = 1e-3,
        snapshot_min_entries: int = 10_000,
    ) -> None:
        if threshold is not None and target_wrong_hit_rate is not None:
            raise ConfigError("pass threshold or target_wrong_hit_rate, not both")
        self.threshold = _check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
        self.ttl = _check_ttl(ttl)
        self.max_entries = None if max_entries is None else _positive_int(max_entries, "max_entries")
        if index != "auto" and index not in INDEXES:
            raise ConfigError(f"unknown index {index!r}; choose 'auto' or one of {sorted(INDEXES)}")
        self.index_kind = index
        self.index_params = dict(index_params or {})
        self.projection_dims = _positive_int(projection_dims, "projection_dims")
        self.approx_min_entries = _positive_int(approx_min_entries, "approx_min_entries")
        self.projection_min_entries = _positive_int(projection_min_entries, "projection_min_entries")
        if isinstance(projection, str) and projection not in PROJECTIONS and projection != "learned":
            raise ConfigError(f"unknown projection {projection!r}; choose one of {sorted(PROJECTIONS)}")
        self._projection_spec = projection
        if guards is None:
            from semcache.guards import default_guards

            guards = default_guards()
        self.guards = tuple(guards)
        for g in self.guards:
            if not callable(g):
                raise ConfigError("every guard must be callable(new_prompt, stored_prompt, score)")
        self.fail_open = bool(fail_open)
        self.max_wrong = _positive_int(max_wrong, "max_wrong")
        if not (0.0 <= feedback_margin < 1.0):
            raise ConfigError(f"feedback_margin must be in [0, 1), got {feedback_margin!r}")
        self.feedback_margin = float(feedback_margin)
        self.snapshot_min_entries = _positive_int(snapshot_min_entries, "snapshot_min_entries")
        self.embedder = as_embedder(embedder)
        if target_wrong_hit_rate is not None:
            from semcache.calibration import threshold_for

            self.threshold = threshold_for(self.fingerprint, target_wrong_hit_rate)

        if isinstance(store, str):
            if store == "memory":
                self.directory: Path | None = None
                kv: KeyValue = MemoryKV()
            elif store == "disk":
                # Absolute: the removed-directory check must not depend on the current directory.
                where = Path(directory) if directory is not None else default_directory(name)
                self.directory = where.expanduser().absolute()
                kv = DiskKV(self.directory, timeout=timeout)
            else:
                raise ConfigError(f"store must be 'disk', 'memory' or a KeyValue, not {store!r}")
        else:
            self.directory = Path(directory).expanduser().absolute() if directory is not None else None
            kv = store
        self._store = RecordStore(kv, str(self.directory or "memory"))

        self._lock = threading.RLock()
        self._closed = False
        self._reset_state()
        self._counters = dict.fromkeys(
            ("hits", "exact_hits", "misses", "puts", "deletes", "evictions", "expirations", "errors"), 0
        )
        self._latency: dict[str, deque[float]] = {s: deque(maxlen=50_000) for s in _STAGES}
        self._memo: OrderedDict[str, FloatArray] = OrderedDict()

        try:
            self._check_settings()
            self._load_projection()
            self._load_snapshot()
            self._sync()
        except Exception:
            self._store.close()
            raise
        if self._foreign:
            log.warning(
                "semcache: %d entries in %s were written with another embedder and will not be "
                "served (this cache uses %s); purge them with cache.purge(foreign=True)",
                self._foreign, self._store.where, self.fingerprint,
            )

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self._seq = 0
        self._snapshot_seq = -1
        self._meta: dict[int, EntryMeta] = {}
        self._table = ExactIndex()
        self._parts: dict[str, _Partition] = {}
        self._exact: dict[tuple[str, str], int] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._expiry: list[tuple[float, int]] = []
        self._foreign = 0
        self._foreign_ids: set[int] = set()
        self._projection: BaseProjection | None = None
        self._proj_fit_n = 0
        self._proj_check_n = 0
        self._proj_residual = 0.0

    @property
    def fingerprint(self) -> str:
        """The embedder's fingerprint; part of every scope id."""
        return self.embedder.fingerprint

    def _check_settings(self) -> None:
        settings = self._store.load_settings()
        if settings is None:
            settings = {"format": STORE_FORMAT, "created": time.time(), "store_id": uuid.uuid4().hex}
            self._store.save_settings(settings)
        fmt = settings.get("format")
        if fmt != STORE_FORMAT:
            raise ConfigError(
                f"{self._store.where} holds a semcache store of format {fmt!r}; this version "
                f"reads format {STORE_FORMAT}. Use another directory or clear this one."
            )
        self._store_id = str(settings.get("store_id", ""))

    def _load_snapshot(self) -> None:
        if self.directory is None or not self._store_id:
            return
        from semcache.snapshot import load_snapshot

        snap = load_snapshot(self.directory, self._store_id)
        if snap is None or snap.seq > self._store.seq():
            return
        self._add_local([(int(i), m, snap.vectors[k]) for k, (i, m) in enumerate(
            zip(snap.ids.tolist(), snap.metas, strict=True))])
        self._seq = self._snapshot_seq = snap.seq

    def _save_snapshot(self) -> None:
        """Write a snapshot on close when the cache is large and changed since the last one."""
        if (self.directory is None or not self._store_id or self._seq == self._snapshot_seq
                or len(self._meta) + self._foreign < self.snapshot_min_entries):
            return
        from semcache.snapshot import save_snapshot

        ids = np.array(list(self._meta), dtype=np.int64)
        try:
            save_snapshot(self.directory, self._store_id, self._seq, ids, self._table.take(ids),
                          [self._meta[i] for i in ids.tolist()])
        except OSError as exc:  # derived data: the journal still has everything
            log.warning("semcache: could not write the index snapshot: %s", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("the cache is closed")

    # ------------------------------------------------------------- journal sync
    def _sync(self) -> None:
        """Apply what the store's journal holds beyond what this process has seen."""
        if self.directory is not None and not (self.directory / "cache.db").is_file():
            # SQLite keeps a deleted database open and would go on "storing" into a
            # file nobody can reopen; say so instead of losing writes silently.
            raise StoreError(f"the cache directory {self.directory} was removed or replaced")
        head = self._store.seq()
        if head == self._seq:
            return
        if head < self._seq:
            # The store went backwards: replaced or wiped behind our back. Start over.
            self._reset_state()
            self._load_projection()
        added: list[tuple[int, EntryMeta, FloatArray]] = []
        for entry_id, entry in self._store.changes(self._seq, head):
            if entry is None:
                if entry_id == CLEARED:
                    self._reset_state()
                    added.clear()
                else:
                    added = [a for a in added if a[0] != entry_id]
                    self._remove_local([entry_id])
            else:
                added.append((entry_id, entry.meta, entry.vector))
        self._seq = head
        if added:
            self._add_local(added)

    def _add_local(self, rows: list[tuple[int, EntryMeta, FloatArray]]) -> None:
        """Index entries already in the store (grouped per scope, in bulk)."""
        fp = self.fingerprint
        by_scope: dict[str, list[tuple[int, FloatArray]]] = {}
        replaced: list[int] = []
        # The width the table holds, else the first row's: an embedder whose fingerprint
        # hides its width must not make one batch of mixed widths (untyped ValueError).
        dim = self._table.dim
        for entry_id, meta, vec in rows:
            if meta.fingerprint != fp:
                self._foreign += 1
                self._foreign_ids.add(entry_id)
                continue
            if entry_id in self._meta:
                # A journalled metadata update (feedback): same vector, new meta.
                self._meta[entry_id] = meta
                continue
            dim = vec.shape[0] if dim is None else dim
            if vec.shape[0] != dim:
                log.error("semcache: entry %d has a %d-d vector, expected %d-d; skipped",
                          entry_id, vec.shape[0], dim)
                continue
            self._meta[entry_id] = meta
            old = self._exact.get((meta.scope, meta.key))
            if old is None or old < entry_id:
                self._exact[(meta.scope, meta.key)] = entry_id
            self._lru[entry_id] = None
            if meta.expires is not None:
                heapq.heappush(self._expiry, (meta.expires, entry_id))
            by_scope.setdefault(meta.scope, []).append((entry_id, vec))
            if old is not None and old != entry_id:
                replaced.append(min(old, entry_id))
        if not by_scope:
            return
        all_ids = np.array([i for rows_ in by_scope.values() for i, _ in rows_], dtype=np.int64)
        all_vecs = np.stack([v for rows_ in by_scope.values() for _, v in rows_]).astype(np.float32)
        self._table.add(all_ids, all_vecs, all_vecs)
        largest = 0
        for sid, items in by_scope.items():
            ids = np.array([i for i, _ in items], dtype=np.int64)
            vecs = np.stack([v for _, v in items]).astype(np.float32)
            part = self._parts.get(sid)
            if part is None:
                kind = self._wanted_kind(len(ids))
                part = self._parts[sid] = _Partition(kind, self._make_index(kind))
            elif self._wanted_kind(part.size + len(ids)) != part.kind:
                self._rebuild_partition(sid)
                largest = max(largest, self._parts[sid].size)
                continue
            part.index.add(ids, self._project(vecs) if part.kind != "exact" else vecs, vecs)
            part.size += len(ids)
            largest = max(largest, part.size)
        self._maybe_fit_projection(largest)
        if replaced:
            # A newer put of the same prompt in the same scope supersedes the older one.
            self._delete_ids([i for i in replaced if i in self._meta], counter="deletes")

    def _remove_local(self, ids: Iterable[int]) -> list[int]:
        """Forget entries in memory (store untouched). Returns those that were known."""
        gone: dict[str, list[int]] = {}
        for entry_id in ids:
            if entry_id in self._foreign_ids:
                self._foreign_ids.discard(entry_id)
                self._foreign -= 1
            meta = self._meta.pop(entry_id, None)
            if meta is None:
                continue
            gone.setdefault(meta.scope, []).append(entry_id)
            if self._exact.get((meta.scope, meta.key)) == entry_id:
                del self._exact[(meta.scope, meta.key)]
            self._lru.pop(entry_id, None)
        removed: list[int] = []
        for sid, id_list in gone.items():
            arr = np.array(id_list, dtype=np.int64)
            self._table.remove(arr)
            part = self._parts.get(sid)
            if part is not None:
                part.index.remove(arr)
                part.size -= len(id_list)
                if part.size <= 0:
                    del self._parts[sid]
            removed.extend(id_list)
        return removed

    # --------------------------------------------------- projection / partitions
    def _new_projection(self) -> BaseProjection:
        spec = self._projection_spec
        if isinstance(spec, BaseProjection):
            return type(spec)(**spec.get_params())
        cls = PROJECTIONS.get(spec)
        if cls is None:
            raise ConfigError(f"projection {spec!r} is not available in this installation")
        if "n_components" in inspect.signature(cls).parameters:
            return cls(n_components=self.projection_dims)  # type: ignore[call-arg]
        return cls()

    def _needs_projection(self) -> bool:
        return self.index_kind != "exact" and self._approx_kind() is not None

    def _approx_kind(self) -> str | None:
        """The approximate index to use: forced by ``index=``, else by projection width."""
        if self.index_kind not in ("auto", "exact"):
            return self.index_kind
        if self.index_kind == "exact":
            return None
        kind = "thermal" if self.projection_dims <= 3 else "multigrid"
        return kind if kind in INDEXES else None

    def _wanted_kind(self, n: int) -> str:
        approx = self._approx_kind()
        if approx is None or self._projection is None:
            return "exact"
        if self.index_kind == "auto" and n < self.approx_min_entries:
            return "exact"
        return approx

    def _project(self, vecs: FloatArray) -> FloatArray:
        if self._projection is None:
            return vecs
        return self._projection.transform(vecs)

    def _make_index(self, kind: str) -> Index:
        return make_index(kind, **(self.index_params if kind != "exact" else {}))

    def _rebuild_partition(self, sid: str) -> None:
        ids = np.array([i for i, m in self._meta.items() if m.scope == sid], dtype=np.int64)
        kind = self._wanted_kind(len(ids))
        index = self._make_index(kind)
        if len(ids):
            vecs = self._table.take(ids)
            index.add(ids, self._project(vecs) if kind != "exact" else vecs, vecs)
        self._parts[sid] = _Partition(kind, index, len(ids))

    def _maybe_fit_projection(self, largest: int) -> None:
        """Fit (or refit on drift) the projection once an approximate index needs it.

        ``largest`` is the size of the largest partition just written to: with
        ``index="auto"`` nothing needs a projection before some scope reaches
        ``approx_min_entries``.
        """
        if not self._needs_projection():
            return
        n = len(self._table)
        if self._projection is None:
            wanted = self.index_kind != "auto" or largest >= self.approx_min_entries
            if wanted and n >= self.projection_min_entries:
                self._fit_projection()
            return
        grown = n >= 4 * self._proj_fit_n
        if not grown and isinstance(self._projection, PCAProjection) and n >= 2 * self._proj_check_n:
            # PCA: refit early when new entries reconstruct worse (the data drifted to
            # topics the first fit squashed together, which costs index recall).
            _, vecs = self._table.vectors()
            residual = self._projection.residual(vecs[-min(len(vecs), 4096):])
            if residual > 1.2 * self._proj_residual:
                log.info("semcache: data drifted (residual %.4f -> %.4f); refitting the projection",
                         self._proj_residual, residual)
                grown = True
            self._proj_check_n = n
        if grown:
            # Any projection: refit each time the cache has grown 4x, which keeps the
            # amortised cost of refitting and rebuilding O(1) per insert.
            self._fit_projection()

    def _fit_projection(self) -> None:
        _, vecs = self._table.vectors()
        proj = self._new_projection().fit(vecs)
        self._projection = proj
        self._proj_fit_n = self._proj_check_n = len(vecs)
        # Only PCA reconstructs its input, so only PCA has a drift residual to compare.
        self._proj_residual = (
            proj.residual(vecs[-min(len(vecs), 4096):]) if isinstance(proj, PCAProjection) else 0.0
        )
        try:
            self._store.set_blob("projection", dump_projection(proj))
            self._store.set_blob(
                "projection_meta", f"{self._proj_fit_n} {self._proj_residual!r}".encode()
            )
        except StoreError as exc:  # the projection is derived data; keep serving
            log.warning("semcache: could not save the projection: %s", exc)
        for sid in list(self._parts):
            self._rebuild_partition(sid)

    def _load_projection(self) -> None:
        if not self._needs_projection():
            return
        blob = self._store.get_blob("projection")
        meta = self._store.get_blob("projection_meta")
        if blob is None or meta is None:
            return
        try:
            proj = load_projection(blob)
            fit_n, residual = meta.decode().split()
        except (SemcacheError, ValueError) as exc:
            log.warning("semcache: stored projection ignored (%s); it will be refitted", exc)
            return
        self._projection = proj
        self._proj_fit_n = self._proj_check_n = int(fit_n)
        self._proj_residual = float(residual)

    # --------------------------------------------------------------- embedding
    def _embed(self, texts: list[str], keys: list[str]) -> FloatArray:
        """Embed normalised texts, reusing recent vectors (a miss then put embeds once)."""
        out: list[FloatArray | None] = [self._memo.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            # Any Embedder may be plugged in: validate its output (and the width the
            # table already holds) at this boundary.
            vecs = check_embeddings(self.embedder.encode([texts[i] for i in todo]), len(todo),
                                    self._table.dim)
            for j, i in enumerate(todo):
                out[i] = vecs[j]
                self._memo[keys[i]] = vecs[j]
        for k in keys:
            if k in self._memo:
                self._memo.move_to_end(k)
        while len(self._memo) > 1024:
            self._memo.popitem(last=False)
        return np.stack([v for v in out if v is not None]).astype(np.float32, copy=False)

    def scope_id(self, scope: ScopeLike = None) -> str:
        """The id of ``scope`` under this cache's embedder (what partitions entries)."""
        return scope_id(Scope.from_value(scope), self.fingerprint)

    # ----------------------------------------------------------------- lookups
    def get(
        self, prompt: str, *, scope: ScopeLike = None, threshold: float | None = None
    ) -> Hit | Miss:
        """Look a prompt up.

        Parameters
        ----------
        prompt : str
            The new prompt.
        scope : Scope, mapping, str or None
            Only entries stored under the same scope can be served.
        threshold : float, optional
            Override of the cache's cosine threshold for this lookup.

        Returns
        -------
        Hit or MISS

        Raises
        ------
        InvalidPromptError, ConfigError
            Bad prompt, scope or threshold.
        StoreError, EmbeddingError
            Only when ``fail_open=False``; otherwise logged and a MISS is returned.
        """
        self._check_open()
        t0 = time.perf_counter()
        norm = normalize_prompt(prompt)
        key = prompt_key(norm)
        sid = self.scope_id(scope)
        thr = self.threshold if threshold is None else _check_threshold(threshold)
        try:
            hit = self._get(norm, key, sid, thr, t0)
        except (StoreError, EmbeddingError, SerializationError) as exc:
            return self._failed("get", exc)
        with self._lock:
            self._counters["hits" if hit else "misses"] += 1
            if isinstance(hit, Hit) and hit.exact:
                self._counters["exact_hits"] += 1
            self._latency["total"].append(time.perf_counter() - t0)
        return hit

    def _failed(self, op: str, exc: Exception) -> Miss:
        with self._lock:
            self._counters["errors"] += 1
        if not self.fail_open:
            raise exc
        log.warning("semcache: %s failed, treated as a miss: %s", op, exc)
        return MISS

    def _get(self, norm: str, key: str, sid: str, thr: float, t0: float) -> Hit | Miss:
        now = time.time()
        with self._lock:
            self._sync()
            self._reclaim(now)
            eid = self._exact.get((sid, key))
            if eid is not None:
                exact = self._serve(eid, 1.0, exact=True, now=now, query=None)
                if exact:
                    return exact
            if sid not in self._parts:
                return MISS
        t_embed = time.perf_counter()
        vec = self._embed([norm], [key])[0]
        t_index = time.perf_counter()
        with self._lock:
            self._latency["embed"].append(t_index - t_embed)
            part = self._parts.get(sid)
            if part is None:
                return MISS
            low = self._project(vec[None, :])[0] if part.kind != "exact" else vec
            cand = part.index.candidates(low, vec, thr)
            t_verify = time.perf_counter()
            self._latency["index"].append(t_verify - t_index)
            hit: Hit | Miss = MISS
            if len(cand):
                scores = self._table.take(cand) @ vec
                order = np.argsort(-scores, kind="stable")
                for j in order:
                    score = float(scores[j])
                    if score < thr:
                        break
                    entry_id = int(cand[j])
                    own = self._meta[entry_id].threshold if entry_id in self._meta else None
                    if own is not None and score < own:
                        continue  # feedback raised this entry's bar
                    hit = self._serve(entry_id, score, exact=False, now=now, query=norm)
                    if hit:
                        break
            self._latency["verify"].append(time.perf_counter() - t_verify)
            return hit

    def _serve(self, entry_id: int, score: float, *, exact: bool, now: float, query: str | None
               ) -> Hit | Miss:
        """Load an entry for a hit, unless expired, vetoed by a guard, or gone."""
        meta = self._meta.get(entry_id)
        if meta is None:
            return MISS
        if meta.expires is not None and meta.expires <= now:
            self._delete_ids([entry_id], counter="expirations")
            return MISS
        try:
            stored = self._store.get_completion(entry_id)
        except SerializationError as exc:
            log.error("semcache: entry %d is unreadable and is skipped: %s", entry_id, exc)
            return MISS
        if stored is None:  # deleted by another process since our last sync
            self._remove_local([entry_id])
            return MISS
        stored_prompt, completion = stored
        if query is not None and self.guards:
            for guard in self.guards:
                if not guard(query, stored_prompt, score):
                    return MISS
        self._lru.move_to_end(entry_id)
        return Hit(
            completion=completion,
            score=min(score, 1.0),
            prompt=stored_prompt,
            entry_id=entry_id,
            created_at=meta.created,
            expires_at=meta.expires,
            exact=exact,
        )

    # ------------------------------------------------------------------ writes
    def put(
        self,
        prompt: str,
        completion: JSONValue,
        *,
        scope: ScopeLike = None,
        ttl: float | None = None,
    ) -> int | None:
        """Store a completion for a prompt; returns the new entry id.

        A put of a prompt already stored in the same scope (same normalised text)
        replaces the old entry.

        Parameters
        ----------
        prompt : str
        completion : JSON-serialisable value
            Stored as JSON and returned as decoded JSON (tuples come back as lists).
        scope : Scope, mapping, str or None
        ttl : float, optional
            Seconds this entry lives; default: the cache's ``ttl``.

        Returns
        -------
        int or None
            The entry id; None when the store failed and ``fail_open`` is True.

        Raises
        ------
        InvalidPromptError, ConfigError, SerializationError
            Bad prompt, scope or ttl, or a completion that is not JSON.
        """
        ids = self.put_many([prompt], [completion], scope=scope, ttl=ttl)
        return ids[0] if ids else None

    def put_many(
        self,
        prompts: Sequence[str],
        completions: Sequence[JSONValue],
        *,
        scope: ScopeLike = None,
        ttl: float | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> list[int]:
        """Store many completions at once (embedded in batches); returns their ids.

        ``progress=True`` shows a progress bar (bulk imports of thousands of prompts).
        Returns an empty list when the store failed and ``fail_open`` is True.
        """
        self._check_open()
        if isinstance(prompts, str) or len(prompts) != len(completions):
            raise ConfigError("prompts and completions must be sequences of the same length")
        norms = [normalize_prompt(p) for p in prompts]
        keys = [prompt_key(n) for n in norms]
        sid = self.scope_id(scope)
        entry_ttl = self.ttl if ttl is None else _check_ttl(ttl)
        for p, c in zip(prompts, completions, strict=True):
            dumps_completion(p, c)  # raise on a bad completion before anything is written
        ids: list[int] = []
        starts: Iterable[int] = range(0, len(prompts), batch_size)
        if progress:
            from semcache.progress import progress as bar

            starts = bar(starts, desc="storing", unit="batch")
        try:
            for s in starts:
                vecs = self._embed(norms[s : s + batch_size], keys[s : s + batch_size])
                now = time.time()
                expires = None if entry_ttl is None else now + entry_ttl
                rows = [
                    (EntryMeta(sid, keys[i], self.fingerprint, now, expires), vecs[i - s],
                     prompts[i], completions[i])
                    for i in range(s, min(s + batch_size, len(prompts)))
                ]
                with self._lock:
                    ids.extend(self._store.put_many(rows))
                    self._sync()
                    self._counters["puts"] += len(rows)
                    self._reclaim(now)
                    self._evict()
        except (StoreError, EmbeddingError) as exc:
            self._failed("put", exc)
            return ids
        return ids

    def _delete_ids(self, ids: list[int], counter: str) -> int:
        """Delete entries from the store and the index together."""
        if not ids:
            return 0
        gone = self._store.delete(ids)
        self._remove_local(ids)
        # Our own deletes advanced the journal: replay it now (a no-op for what we just
        # removed) so it also brings in whatever other processes did in between.
        self._sync()
        self._counters[counter] += len(gone)
        return len(gone)

    def _reclaim(self, now: float) -> None:
        """Delete entries whose TTL has passed."""
        due: list[int] = []
        while self._expiry and self._expiry[0][0] <= now:
            _, entry_id = heapq.heappop(self._expiry)
            if entry_id in self._meta:
                due.append(entry_id)
        if due:
            self._delete_ids(due, counter="expirations")

    def _evict(self) -> None:
        if self.max_entries is None or len(self._meta) <= self.max_entries:
            return
        excess = len(self._meta) - self.max_entries
        victims = [entry_id for entry_id, _ in zip(self._lru, range(excess), strict=False)]
        self._delete_ids(victims, counter="evictions")

    def feedback(self, hit: Hit, correct: bool) -> None:
        """Report whether a served hit answered the prompt correctly.

        A wrong semantic hit raises that entry's own threshold just above the
        score it was served at, so the same near-miss is not served again while
        closer paraphrases still are; an entry reported wrong ``max_wrong`` times
        is deleted. A wrong *exact* hit deletes the entry (the answer itself is
        bad). Feedback is stored with the entry, so it survives reopening and is
        seen by other processes.

        Parameters
        ----------
        hit : Hit
            A hit returned by :meth:`get`.
        correct : bool
        """
        self._check_open()
        if not isinstance(hit, Hit):
            raise ConfigError("feedback() takes a Hit returned by get()")
        with self._lock:
            self._sync()
            meta = self._meta.get(hit.entry_id)
            if meta is None:
                return
            if correct:
                new = dataclasses.replace(meta, right=meta.right + 1)
            else:
                wrong = meta.wrong + 1
                if hit.exact or wrong >= self.max_wrong:
                    self._delete_ids([hit.entry_id], counter="deletes")
                    return
                raised = min(1.0, max(meta.threshold or self.threshold, hit.score + self.feedback_margin))
                new = dataclasses.replace(meta, wrong=wrong, threshold=raised)
            if self._store.update_meta(hit.entry_id, new):
                self._sync()

    def delete(self, entry_id: int) -> bool:
        """Delete one entry (from the store and the index). Returns whether it existed."""
        self._check_open()
        with self._lock:
            self._sync()
            return self._delete_ids([int(entry_id)], counter="deletes") == 1

    def purge(
        self,
        scope: ScopeLike = None,
        *,
        predicate: Callable[[int, EntryMeta], bool] | None = None,
        foreign: bool = False,
        expired: bool = False,
    ) -> int:
        """Delete every entry matching a condition; returns how many were deleted.

        Parameters
        ----------
        scope : Scope, mapping or str
            Delete the entries of this scope.
        predicate : callable, optional
            ``predicate(entry_id, meta)``: delete where it returns True.
        foreign : bool
            Delete entries written with another embedder (never served here).
        expired : bool
            Delete entries whose TTL has passed now (normally reclaimed lazily).
        """
        self._check_open()
        if scope is None and predicate is None and not foreign and not expired:
            raise ConfigError("purge() needs a scope, a predicate, foreign=True or expired=True")
        with self._lock:
            self._sync()
            now = time.time()
            sid = self.scope_id(scope) if scope is not None else None
            victims = [
                i
                for i, m in self._meta.items()
                if (sid is not None and m.scope == sid)
                or (predicate is not None and predicate(i, m))
                or (expired and m.expires is not None and m.expires <= now)
            ]
            if foreign:
                victims.extend(self._foreign_ids)
            return self._delete_ids(victims, counter="deletes")

    def clear(self) -> None:
        """Delete every entry (settings stay)."""
        self._check_open()
        with self._lock:
            self._store.clear()
            self._reset_state()
            self._memo.clear()
            self._sync()

    def expire(self) -> int:
        """Reclaim expired entries now; returns how many were deleted."""
        return self.purge(expired=True)

    # -------------------------------------------------------------- inspection
    def __len__(self) -> int:
        with self._lock:
            if not self._closed:
                try:
                    self._sync()
                except StoreError as exc:
                    log.warning("semcache: sync failed: %s", exc)
            return len(self._meta)

    def stats(self) -> CacheStats:
        """Counters, size and lookup latency percentiles (see :class:`CacheStats`)."""
        with self._lock:
            kinds: dict[str, int] = {}
            for p in self._parts.values():
                kinds[p.kind] = kinds.get(p.kind, 0) + 1
            lat = {
                s: (float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 99)) * 1e3)
                for s, v in self._latency.items()
                if v
            }
            return CacheStats(
                **self._counters,
                entries=len(self._meta),
                scopes=len(self._parts),
                foreign_entries=self._foreign,
                index_kinds=kinds,
                projection=None if self._projection is None else repr(self._projection),
                latency_ms=lat,
            )

    def reset_stats(self) -> None:
        """Zero the counters and latency samples."""
        with self._lock:
            for k in self._counters:
                self._counters[k] = 0
            for v in self._latency.values():
                v.clear()

    def __repr__(self) -> str:
        where = self.directory or "memory"
        return f"SemanticCache({str(where)!r}, threshold={self.threshold}, entries={len(self._meta)})"

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the store. Further calls raise :class:`ConfigError`; closing twice is fine."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sync()
                self._save_snapshot()
            except SemcacheError as exc:
                log.warning("semcache: no snapshot written at close: %s", exc)
            self._store.close()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- async
    async def aget(
        self, prompt: str, *, scope: ScopeLike = None, threshold: float | None = None
    ) -> Hit | Miss:
        """:meth:`get` in a worker thread, so the event loop never blocks on embedding or disk."""
        return await asyncio.to_thread(self.get, prompt, scope=scope, threshold=threshold)

    async def aput(
        self, prompt: str, completion: JSONValue, *, scope: ScopeLike = None,
        ttl: float | None = None,
    ) -> int | None:
        """:meth:`put` in a worker thread."""
        return await asyncio.to_thread(self.put, prompt, completion, scope=scope, ttl=ttl)

