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

Everything stored lives in a :class:`~semcache.stores.Store` (SQLite on local
disk by default); the in-memory index is loaded from it in bulk on open
(:meth:`~semcache.stores.Store.load_all`, or a verified snapshot) and kept in
step with other processes through the store's change log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import heapq
import inspect
import itertools
import logging
import math
import os
import threading
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np

from semcache._deadline import Deadline, DeadlineExceeded
from semcache._types import FloatArray, IdArray, JSONValue
from semcache.batching import BatchingEmbedder
from semcache.embedding import Embedder, SentenceTransformerEmbedder, as_embedder, check_embeddings
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
from semcache.prompts import Window, differing_spans, normalize_prompt, prompt_key
from semcache.scope import Scope, scope_id
from semcache.stores import (
    CLEARED,
    COUNTER_NAMES,
    EntryMeta,
    Loaded,
    Row,
    Store,
    dumps_completion,
    make_store,
    vector_digests,
)
from semcache.stores.base import (
    StoredEntry,
    check_columns,
    meta_columns,
    metas_from_columns,
    row_digests,
    seal_of,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "MISS",
    "CacheEntry",
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
STORE_FORMAT: Final = 2

ScopeLike: TypeAlias = Scope | Mapping[str, Any] | str | None

#: Namespace (prefix) of the scopes holding conversation contexts (``context_match="semantic"``).
_CONTEXT_NAMESPACE: Final = "semcache:contexts"

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
    bound : float or None
        With ``target_wrong_hit_rate``: the certified upper bound on the wrong
        rate of semantic hits served at this score (see :mod:`semcache.guarantee`);
        None for exact hits and caches without a target.
    """

    completion: JSONValue
    score: float
    prompt: str
    entry_id: int
    created_at: float
    expires_at: float | None
    exact: bool
    bound: float | None = None

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
    #: Would-be hits not served (counted as misses too) so the caller's fresh answer
    #: could label them (:mod:`semcache.guarantee`).
    probes: int = 0

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
    """One scope's index, and the evidence of how well its approximate index finds hits.

    ``found`` counts lookups the approximate index served; ``missed`` those it missed
    while an exact search of the scope found a hit. While the evidence is too thin to
    bound its recall (see :meth:`SemanticCache._audit_due`) every approximate miss is
    checked by exact search; once it is, a sample of them still is.
    """

    kind: str
    index: Index
    size: int = 0
    found: int = 0
    missed: int = 0
    trusted: bool = False
    audits: int = 0


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
        Instead of a threshold: the share of semantic hits allowed to be wrong,
        kept *online* (:mod:`semcache.guarantee`, ``docs/guarantee.md``). A
        would-be hit is served only when the evidence gathered in this cache (per
        scope) bounds the wrong rate at its score by this value with probability
        ``confidence``; otherwise it is *probed*: :meth:`get` returns MISS, and the
        caller's :meth:`put` of the same prompt and scope (the decorator and
        adapters do it after every miss) compares the fresh answer with the
        stored one to label the pair. ``threshold`` is then the static calibrated
        threshold for the target (:func:`semcache.thresholds.threshold_for`, the
        prior; nearest calibrated target, or :data:`DEFAULT_THRESHOLD` for an
        uncalibrated embedder), informational only.
    confidence : float
        Probability that every cut the guarantee serves at meets the target.
    answers_match : callable, optional
        ``answers_match(cached, fresh) -> bool`` labels a probe. Default:
        :class:`semcache.guarantee.AnswerMatcher` (exact after normalisation for
        short answers, embedding cosine >= 0.9 for long free text).
    ttl : float, optional
        Seconds an entry lives unless :meth:`put` says otherwise. None: forever.
    max_entries : int, optional
        Size bound; the least recently used entries are evicted beyond it.
    store : {"disk", "memory"}, store URL or Store
        ``"disk"``: SQLite in ``directory``; ``"memory"`` keeps nothing after the
        process ends (tests, ephemeral use); a URL whose scheme a backend registered
        (see :func:`semcache.stores.make_store`); or any :class:`~semcache.stores.Store`.
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
    context_match : {"exact", "semantic"}
        How a scope's ``context`` (the earlier turns of a conversation) is matched.
        ``"exact"`` (default): only the very same context. ``"semantic"``: the
        context is text (``Scope(context="user: ...\nassistant: ...")``, what
        :meth:`semcache.messages.MessageKey.scope` gives with ``semantic=True``) and a
        paraphrased conversation shares its follow-up answers: a context is looked
        up among the contexts stored before in the same model, tenant, system prompt
        and namespace, with the same checks as a prompt (guards, long-text spans) at
        ``context_threshold``; a match lends its canonical id to the scope, otherwise
        the context gets its own id (and registers it when something is stored).
    context_threshold : float, optional
        Cosine a context needs to match an earlier one (``context_match="semantic"``).
        Default: the threshold calibrated for a 5% wrong-hit rate on the dev data for
        this embedder (0.961 for the bundled model), at least ``threshold``; 0.95 for
        an uncalibrated embedder.
    embed_timeout : float, optional
        Seconds one call to the embedder may take. A call that takes longer is an
        :class:`~semcache.errors.EmbeddingError` (a MISS under ``fail_open``); it
        runs on in a daemon thread, and once 4 such calls are still stuck further
        lookups fail at once instead of starting more threads. None (default): the
        embedder runs in the caller's thread with no limit.

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
        store: str | Store = "disk",
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
        embed_timeout: float | None = None,
        confidence: float = 0.95,
        answers_match: Callable[[JSONValue, JSONValue], bool] | None = None,
        context_match: str = "exact",
        context_threshold: float | None = None,
    ) -> None:
        if threshold is not None and target_wrong_hit_rate is not None:
            raise ConfigError("pass threshold or target_wrong_hit_rate, not both")
        self.threshold = _check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
        self.ttl = _check_ttl(ttl)
        self.max_entries = None if max_entries is None else _positive_int(max_entries, "max_entries")
        if index not in ("auto", "pgvector") and index not in INDEXES:
            raise ConfigError(f"unknown index {index!r}; choose 'auto', 'pgvector' (a PostgreSQL store) "
                              f"or one of {sorted(INDEXES)}")
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
        #: What the embedder reads of a text; decides how long prompts are embedded and matched.
        # A BatchingEmbedder reads what its inner model reads (a sentence-transformers
        # model is asked for its tokenizer), so the window is the inner embedder's.
        self._window = Window(getattr(self.embedder, "inner", self.embedder)
                              if isinstance(self.embedder, BatchingEmbedder) else self.embedder)
        self._deadline: Deadline | None = None
        if embed_timeout is not None:
            if isinstance(embed_timeout, bool) or not isinstance(embed_timeout, int | float) or not (
                    0 < embed_timeout < math.inf):
                raise ConfigError(f"embed_timeout must be a positive number of seconds or None, "
                                  f"got {embed_timeout!r}")
            self._deadline = Deadline(float(embed_timeout))
        self.target_wrong_hit_rate: float | None = None
        if target_wrong_hit_rate is not None:
            self._guarantee_setup(target_wrong_hit_rate, confidence, answers_match)
        if context_match not in ("exact", "semantic"):
            raise ConfigError(f"context_match must be 'exact' or 'semantic', got {context_match!r}")
        self.context_match = context_match
        self.context_threshold = (self._default_context_threshold() if context_threshold is None
                                  else _check_threshold(context_threshold))

        self.directory: Path | None
        if store == "disk":
            # Absolute: the removed-database check must not depend on the current directory.
            where = Path(directory) if directory is not None else default_directory(name)
            self.directory = where.expanduser().absolute()
        elif store == "memory":
            self.directory = None
        else:
            # Another backend: a directory, if given, holds only the local snapshot.
            self.directory = Path(directory).expanduser().absolute() if directory is not None else None
        # A remote store connects and loads in the background (see _warm_up): the caller
        # is not held up, and the cache answers MISS until it is ready.
        background = self.fail_open and isinstance(store, str) and "://" in store
        if background:
            from semcache.stores.warming import WarmingStore

            self._store: Store = WarmingStore(str(store))
        else:
            self._store = make_store(store, self.directory, timeout=timeout)
        if index == "pgvector" and not background and not hasattr(self._store, "engine_search"):
            self._store.close()
            raise ConfigError("index='pgvector' searches in PostgreSQL: it needs store='postgresql://...'")

        self._lock = threading.RLock()
        self._closed = False
        self._reset_state()
        self._counters = dict.fromkeys(
            ("hits", "exact_hits", "misses", "puts", "deletes", "evictions", "expirations", "errors",
             "probes"), 0
        )
        self._latency: dict[str, deque[float]] = {s: deque(maxlen=50_000) for s in _STAGES}
        self._memo: OrderedDict[str, FloatArray] = OrderedDict()
        self._memo_lock = threading.Lock()
        # Scope ids whose tenant this process has told the store (once each).
        self._noted: set[str] = set()
        # Counter values last added to the store's totals, and when.
        self._flushed = dict.fromkeys(COUNTER_NAMES, 0)
        self._flushed_at = time.monotonic()

        self._skipped_base = 0
        #: True while a remote store connects/loads in the background: lookups MISS at once.
        self._warming = background
        self._warm_stop = threading.Event()
        if background:
            self._warm_up(str(store), timeout)
            return
        try:
            self._check_settings()
            self._reload()
        except Exception:
            self._store.close()
            raise
        self._warn_foreign()

    def _warm_up(self, spec: str, timeout: float) -> None:
        """Connect, check the settings and load in a daemon thread, retrying with backoff.

        The constructor waits for the first attempt at most ``timeout`` seconds: a store
        that answers in time is ready when it returns; a bad URL, option or store format
        (:class:`ConfigError`) raises here; an engine that is down or slow leaves the cache
        answering MISS (``put`` returns None) until a later attempt succeeds.
        """
        first = threading.Event()
        errors: list[ConfigError] = []
        placeholder = self._store

        def run() -> None:
            backoff = 0.1
            warned = False
            while not self._warm_stop.is_set():
                store: Store | None = None
                try:
                    store = make_store(spec, self.directory, timeout=timeout)
                    if self.index_kind == "pgvector" and not hasattr(store, "engine_search"):
                        raise ConfigError("index='pgvector' searches in PostgreSQL: it needs "
                                          "store='postgresql://...'")
                    with self._lock:
                        if self._closed:
                            store.close()
                            return
                        self._store = store
                        self._check_settings()
                        self._reload()
                        self._warming = False
                    if warned:
                        log.warning("semcache: the store at %s is connected and loaded", store.where)
                    self._warn_foreign()
                    first.set()
                    return
                except ConfigError as exc:
                    errors.append(exc)
                    log.error("semcache: cannot open the store at %s: %s", placeholder.where, exc)
                    self._drop_store(store, placeholder)
                    first.set()
                    return
                except Exception as exc:  # StoreError and the like: retry
                    self._drop_store(store, placeholder)
                    if not warned:
                        log.warning("semcache: the store at %s is not reachable yet (%s); answering "
                                    "MISS while connecting in the background", placeholder.where, exc)
                        warned = True
                    first.set()
                self._warm_stop.wait(backoff)
                backoff = min(2 * backoff, 5.0)

        threading.Thread(target=run, name="semcache-warm-up", daemon=True).start()
        first.wait(timeout)
        if errors:
            raise errors[0]

    def _warming_miss(self, counter: str | None = None) -> Miss:
        """Count a call answered while warming up (the warm-up thread logs the cause once).

        Without the cache lock, which the warm-up holds while it indexes what it loaded:
        the counts may be off by a few under concurrent calls, never the answer.
        """
        self._counters["errors"] += 1
        if counter is not None:
            self._counters[counter] += 1
        return MISS

    def _drop_store(self, store: Store | None, placeholder: Store) -> None:
        with self._lock:
            if self._store is store:
                self._store = placeholder
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def _warn_foreign(self) -> None:
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
        settings = self._store.init_settings(
            {"format": STORE_FORMAT, "created": time.time(), "store_id": uuid.uuid4().hex})
        fmt = settings.get("format")
        if fmt != STORE_FORMAT:
            raise ConfigError(
                f"{self._store.where} holds a semcache store of format {fmt!r}; this version "
                f"reads format {STORE_FORMAT}. Use another directory or clear this one."
            )
        store_id = settings.get("store_id")
        if not isinstance(store_id, str) or len(store_id) != 32 or not store_id.isalnum():
            raise StoreError(f"the settings in {self._store.where} hold no valid store id")
        self._store_id = store_id

    def _reload(self) -> None:
        """Forget everything in memory and load every live entry from the store in bulk."""
        self._reset_state()
        self._load_projection()
        # Loading creates a few objects per entry and keeps them all: the cyclic GC's
        # repeated full passes over them would make a large open superlinear.
        paused = gc.isenabled()
        gc.disable()
        try:
            if self.index_kind == "pgvector":  # search in the engine: metadata only, no vectors
                loaded = self._store.load_meta(fingerprint=self.fingerprint)  # type: ignore[attr-defined]
            else:
                loaded = self._load_snapshot() or self._store.load_all(
                    dim=self._known_dim(), fingerprint=self.fingerprint)
            self._seq = loaded.head
            self._add_bulk(loaded)
        finally:
            if paused:
                gc.enable()

    def _load_snapshot(self) -> Loaded | None:
        """The entries from a verified snapshot plus the changes logged after it, or None.

        With a store that keeps a seal, the snapshot's own rows (metadata included),
        updated by the change log, must sum to the store's seal; otherwise metadata
        come from the store and each vector must match the store's digest of it. A
        mismatch deletes the snapshot (rewritten at close) and the caller loads the
        store. See :mod:`semcache.snapshot`.
        """
        if self.directory is None:
            return None
        from semcache.snapshot import delete_snapshot, load_snapshot

        snap = load_snapshot(self.directory, self._store_id)
        if snap is None:
            return None
        dim = self._known_dim()
        if dim is not None and snap.vectors.shape[1] != dim and len(snap.ids):
            return None
        sealed = self._store.sealed_changes(snap.head)
        if sealed is None:
            return self._verify_by_digests(snap)
        later, seal = sealed
        if later.items is None or not seal.clean or any(i == CLEARED for i, _ in later.items):
            log.info("semcache: snapshot of %s is too old for the change log (or the store was edited "
                     "directly); loading the store", self._store.where)
            return None
        try:
            check_columns(snap.columns, len(snap.ids))
            ids, vectors, cols = _apply_changes(snap.ids, snap.vectors, snap.columns, later.items)
            with np.errstate(over="ignore", invalid="ignore"):
                norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            # Every row's digest (id, every metadata field, vector) recomputed from what the
            # snapshot holds must sum to the store's seal: this catches swapped columns,
            # shifted ids, other widths, damaged values and a store changed behind it.
            if len(ids) != seal.rows or seal_of(row_digests(ids, cols, vector_digests(vectors))) \
                    != seal.value or not (np.abs(norms - 1.0) <= 1e-3).all():
                raise SerializationError("it disagrees with the store's seal")
            metas = metas_from_columns(cols, len(ids))
        except SerializationError as exc:
            log.warning("semcache: snapshot in %s is not usable (%s); deleting it and loading the store",
                        self.directory, exc)
            delete_snapshot(self.directory)
            return None
        self._snapshot_seq = later.head
        return Loaded(later.head, ids, metas, vectors, 0)

    def _verify_by_digests(self, snap: Any) -> Loaded | None:
        """A store without a seal: metadata from the store, each snapshot vector checked by digest."""
        assert self.directory is not None
        from semcache.snapshot import delete_snapshot

        digests = self._store.load_digests()
        later = self._store.changes(snap.head) if snap.head <= digests.head else None
        if later is None or later.items is None or any(i == CLEARED for i, _ in later.items):
            log.info("semcache: snapshot of %s is too old for the change log; loading the store",
                     self._store.where)
            return None
        n, dim = len(digests.ids), snap.vectors.shape[1]
        vectors = np.empty((n, dim), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        if len(snap.ids) and n:
            pos = np.minimum(np.searchsorted(snap.ids, digests.ids), len(snap.ids) - 1)
            found = snap.ids[pos] == digests.ids
            vectors[found] = snap.vectors[pos[found]]
        # Rows put (or re-put) since the snapshot come from the change log.
        row_of = {int(i): k for k, i in enumerate(digests.ids.tolist())} if later.items else {}
        for entry_id, entry in later.items:
            k = row_of.get(entry_id)
            if entry is not None and k is not None and entry.vector.shape[0] == dim:
                vectors[k] = entry.vector
                found[k] = True
        # Every row must match the digest the store keeps for that id: this catches swapped
        # rows, shifted ids, other widths and damaged values, whatever the checksum said.
        ok = found & (vector_digests(vectors) == digests.vhash) if n else found
        if not ok.all():
            bad = int(digests.ids[int(np.flatnonzero(~ok)[0])])
            log.warning("semcache: snapshot in %s disagrees with the store (entry %d); deleting it "
                        "and loading the store", self.directory, bad)
            delete_snapshot(self.directory)
            return None
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        if n and not (np.abs(norms - 1.0) <= 1e-3).all():
            delete_snapshot(self.directory)
            return None
        self._snapshot_seq = digests.head
        return Loaded(digests.head, digests.ids, digests.metas, vectors, digests.skipped)

    def _save_snapshot(self) -> None:
        """On close: write a snapshot when the cache is large and changed, remove a stale one."""
        if self.directory is None or self._seq == self._snapshot_seq or self.index_kind == "pgvector":
            return
        from semcache.snapshot import delete_snapshot, save_snapshot

        hold = f"snapshot:{self.directory}"
        if len(self._meta) + self._foreign < self.snapshot_min_entries:
            delete_snapshot(self.directory)  # stale after a purge or clear
            self._store.retain(hold, None)
            return
        ids = np.array(sorted(self._meta), dtype=np.int64)
        foreign = np.array(sorted(self._foreign_ids), dtype=np.int64)
        try:
            if len(foreign):
                # Foreign entries are not in the table (never served), so the snapshot
                # cannot cover them: their vectors would have to be loaded anyway.
                delete_snapshot(self.directory)
                self._store.retain(hold, None)
                return
            metas = [self._meta[i] for i in ids.tolist()]
            save_snapshot(self.directory, self._store_id, self._seq, ids, self._table.take(ids),
                          meta_columns(metas))
            # The snapshot is usable while the log reaches back to its head: keep it so.
            self._store.retain(hold, self._seq)
        except OSError as exc:  # derived data: the store still has everything
            log.warning("semcache: could not write the index snapshot: %s", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("the cache is closed")

    # ------------------------------------------------------------- journal sync
    def _sync(self) -> None:
        """Apply what the store's change log holds beyond what this process has seen."""
        if not self._store.usable():  # e.g. a remote store not synced within its staleness bound
            raise StoreError(f"the store at {self._store.where} is not usable right now")
        batch = self._store.changes(self._seq)
        if batch.items is None:
            # The log no longer reaches back to our position (compacted while we were
            # idle), or the store went backwards (wiped/restored): start over.
            self._reload()
            return
        added: list[tuple[int, EntryMeta, FloatArray]] = []
        for entry_id, entry in batch.items:  # folded by the store: one item per id
            if entry is None:
                if entry_id == CLEARED:
                    self._reset_state()
                    added.clear()
                else:
                    self._remove_local([entry_id])
            else:
                added.append((entry_id, entry.meta, entry.vector))
        self._seq = batch.head
        if added:
            self._add_local(added)

    def _add_bulk(self, loaded: Loaded) -> None:
        """Index a whole :class:`Loaded` at once (open/reload): linear, no per-entry Python work
        beyond building the dicts with C-level calls, grouped by scope in numpy."""
        fp = self.fingerprint
        own = np.fromiter((m.fingerprint == fp for m in loaded.metas), dtype=bool, count=len(loaded.metas))
        if own.all():
            ids, metas = loaded.ids, loaded.metas
            vecs = np.ascontiguousarray(loaded.vectors, dtype=np.float32)
        else:
            foreign = loaded.ids[~own]
            self._foreign += len(foreign)
            self._foreign_ids.update(foreign.tolist())
            keep = np.flatnonzero(own)
            ids = loaded.ids[keep]
            metas = [loaded.metas[k] for k in keep.tolist()]
            vecs = np.ascontiguousarray(loaded.vectors[keep], dtype=np.float32)
        n = len(ids)
        if not n:
            return
        if len(ids) > 1 and not (np.diff(ids) > 0).all():  # a snapshot plus changes: sort by id
            order = np.argsort(ids, kind="stable")
            ids, vecs = ids[order], vecs[order]
            metas = [metas[k] for k in order.tolist()]
        id_list = ids.tolist()
        self._meta.update(zip(id_list, metas, strict=True))
        self._lru.update(dict.fromkeys(id_list))
        # Ascending ids: the newest put of a (scope, prompt) is the one the exact map keeps;
        # the older ones are superseded.
        pairs = [(m.scope, m.key) for m in metas]
        newest = dict(zip(pairs, id_list, strict=True))
        replaced = [i for p, i in zip(pairs, id_list, strict=True) if newest[p] != i] \
            if len(newest) < n else []
        for p, i in newest.items():
            old = self._exact.get(p)
            if old is None or old < i:
                self._exact[p] = i
            if old is not None and old != i:
                replaced.append(min(old, i))
        self._expiry.extend((m.expires, i) for i, m in zip(id_list, metas, strict=True)
                            if m.expires is not None)
        heapq.heapify(self._expiry)
        codes: dict[str, int] = {}
        inverse = np.fromiter((codes.setdefault(m.scope, len(codes)) for m in metas), dtype=np.int64,
                              count=n)
        order = np.argsort(inverse, kind="stable")
        # One copy grouped by scope: each exact partition adopts its slice (no copy of its
        # own), the table adopts the loaded array. Memory traffic, not arithmetic, is what
        # a 200k-entry open costs (each 300 MB copy ~0.2-0.5 s on a shared machine).
        by_scope, ids_by_scope = vecs[order], ids[order]
        if self.index_kind == "pgvector":
            pass  # engine search keeps no vectors here
        elif len(self._table):
            self._table.add(ids, vecs, vecs)
        else:
            self._table = ExactIndex.adopt(ids, vecs)
        bounds = [0, *(np.flatnonzero(np.diff(inverse[order])) + 1).tolist(), n]
        largest = 0
        for a, b in itertools.pairwise(bounds):
            sid = metas[int(order[a])].scope
            kind = self._wanted_kind(b - a)
            g_ids, g_vecs = ids_by_scope[a:b], by_scope[a:b]
            if kind == "exact":
                index: Index = ExactIndex.adopt(g_ids, g_vecs)
            else:
                index = self._make_index(kind)
                index.add(g_ids, self._project(g_vecs), g_vecs)
            self._parts[sid] = _Partition(kind, index, b - a)
            largest = max(largest, b - a)
        self._maybe_fit_projection(largest)
        if replaced:
            # A newer put of the same prompt in the same scope supersedes the older one.
            self._delete_ids([i for i in replaced if i in self._meta], counter="deletes")

    def _known_dim(self) -> int | None:
        """The embedder's output width when it can tell without embedding anything.

        Rows of another width are another embedder's, whatever their fingerprint says
        (a custom embedder may not put its width in it); a directory holding two widths
        loads the rows this embedder can compare with. The bundled torch model is left
        to the store's rule (its fingerprint hashes the model, width included), so that
        opening a cache does not load the model.
        """
        if isinstance(self.embedder, SentenceTransformerEmbedder):
            return None
        dim = getattr(self.embedder, "dim", None)
        return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None

    def _add_local(self, rows: list[tuple[int, EntryMeta, FloatArray]]) -> None:
        """Index entries already in the store (grouped per scope, in bulk)."""
        fp = self.fingerprint
        by_scope: dict[str, list[tuple[int, FloatArray]]] = {}
        replaced: list[int] = []
        # The width the table holds, else the first row's: an embedder whose fingerprint
        # hides its width must not make one batch of mixed widths (untyped ValueError).
        dim = self._table.dim if self._table.dim is not None else self._known_dim()
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
        if self.index_kind != "pgvector":  # engine search keeps no vectors here
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
        return self.index_kind not in ("exact", "pgvector") and self._approx_kind() is not None

    def _approx_kind(self) -> str | None:
        """The approximate index to use: forced by ``index=``, else by projection width."""
        if self.index_kind not in ("auto", "exact"):
            return self.index_kind
        if self.index_kind == "exact":
            return None
        kind = "thermal" if self.projection_dims <= 3 else "multigrid"
        return kind if kind in INDEXES else None

    def _wanted_kind(self, n: int) -> str:
        if self.index_kind == "pgvector":
            return "pgvector"
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
        if kind == "pgvector":
            from semcache.stores.pgvector import EngineIndex

            return EngineIndex()
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
        # The memo is shared by every thread of the cache (the async API and the adapters
        # call get from worker threads) while the embedding itself runs outside any lock.
        with self._memo_lock:
            out: list[FloatArray | None] = [self._memo.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            # A long prompt is embedded by its end, where RAG and chat prompts put the
            # question; _long_prompt_score decides what the embedder did not read.
            vecs = self._encode([self._window.view(texts[i]) for i in todo])
            for j, i in enumerate(todo):
                out[i] = vecs[j]
        with self._memo_lock:
            for j, i in enumerate(todo):
                self._memo[keys[i]] = vecs[j]
            for k in keys:
                if k in self._memo:
                    self._memo.move_to_end(k)
            while len(self._memo) > 1024:
                self._memo.popitem(last=False)
        return np.stack([v for v in out if v is not None]).astype(np.float32, copy=False)

    def embed(self, prompts: Sequence[str]) -> FloatArray:
        """Unit vectors of prompts as lookups see them.

        The path :meth:`get` takes: normalisation, the long-prompt window, the memo
        of recent vectors (a vector a lookup has just computed is reused, not
        embedded again) and the checks of the embedder's output.

        Returns
        -------
        ndarray of float32, shape (n, d)

        Raises
        ------
        InvalidPromptError
            A prompt that is not a valid prompt.
        EmbeddingError
            The embedder failed or returned something unusable.
        """
        self._check_open()
        norms = [normalize_prompt(p) for p in prompts]
        if not norms:
            return np.zeros((0, self._table.dim or 0), dtype=np.float32)
        return self._embed(norms, [prompt_key(n) for n in norms])

    def reads_whole(self, prompt: str) -> bool:
        """Whether the embedder reads all of ``prompt`` (after normalisation).

        A longer prompt is embedded by its end, so its vector alone does not
        decide a hit (see :meth:`get`); callers comparing vectors themselves
        (the adapters' paraphrase coalescing) leave such prompts out.
        """
        return self._window.fits(normalize_prompt(prompt))

    def _encode(self, texts: list[str]) -> FloatArray:
        """The embedder's vectors for ``texts``, validated; any failure is an EmbeddingError.

        Any Embedder may be plugged in, so this is a trust boundary: whatever it
        raises (a RuntimeError from torch, a MemoryError, a bug), returns (NaN, the
        wrong shape or width, not an array) or how long it hangs (``embed_timeout``)
        becomes one typed error, which ``fail_open`` turns into a miss.
        """
        def run() -> FloatArray:
            return check_embeddings(self.embedder.encode(texts), len(texts), self._table.dim)

        try:
            return run() if self._deadline is None else self._deadline.call(run)
        except EmbeddingError:
            raise
        except DeadlineExceeded as exc:
            raise EmbeddingError(f"the embedder timed out: {exc}") from exc
        except Exception as exc:
            raise EmbeddingError(f"the embedder failed: {type(exc).__name__}: {exc}") from exc

    def _long_prompt_score(self, query: str, stored_prompt: str) -> float | None:
        """For prompts longer than the embedder reads: the cosine of what differs.

        None when both prompts fit the embedder's window (their own cosine decides).
        Otherwise the two prompts must be identical outside one span each (widened
        to whole sentences, :func:`~semcache.prompts.differing_spans`), those spans
        must fit the window, and their cosine is the score: two RAG prompts with
        the same context and paraphrased questions hit, with different contexts or
        different questions they do not, whatever their windows' cosine was.
        -1.0 when the spans do not fit (the embedder cannot judge them).
        """
        stored = normalize_prompt(stored_prompt)
        if self._window.fits(query) and self._window.fits(stored):
            return None
        a, b = differing_spans(query, stored)
        if not a.strip() and not b.strip():
            return 1.0  # equal after normalisation
        if not a.strip() or not b.strip():
            return -1.0  # one prompt is the other plus text: not the same request
        if not (self._window.fits(a) and self._window.fits(b)):
            return -1.0
        va, vb = self._encode([a, b])
        return float(np.clip(va @ vb, -1.0, 1.0))

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
        if self._warming:  # a remote store still connecting/loading: MISS without waiting
            return self._warming_miss("misses")
        key = prompt_key(norm)
        scope_obj = Scope.from_value(scope)
        sid = scope_id(scope_obj, self.fingerprint)
        if threshold is not None:
            thr = _check_threshold(threshold)
        else:
            thr = self.threshold if self.target_wrong_hit_rate is None else self._g_floor
        try:
            if self._semantic_context(scope_obj):
                sid = scope_id(self._resolve_context(scope_obj, register=False), self.fingerprint)
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

    def _semantic_context(self, scope: Scope) -> bool:
        return self.context_match == "semantic" and scope.context is not None

    def _default_context_threshold(self) -> float:
        try:
            from semcache.thresholds import calibrated_targets

            calibrated = calibrated_targets(self.embedder.fingerprint)[0][1]
        except ConfigError:
            calibrated = 0.95
        return max(self.threshold, calibrated)

    def _resolve_context(self, scope: Scope, *, register: bool) -> Scope:
        """``scope`` with its context text replaced by the id of an equivalent earlier context.

        The contexts live as entries of their own scope (``scope`` without its context,
        in a reserved namespace): prompt = the context text, completion = its id. A
        lookup at :attr:`context_threshold` (guards, long-text checks, no guarantee
        probe) finds an earlier equivalent; without one the context's own id (a hash
        of its text) is used, and ``register=True`` (a put) stores it, so later
        paraphrases of this conversation resolve to it. Only a direct match to a
        stored context lends its id: resolution never chains paraphrase to paraphrase.
        """
        text = scope.context
        assert text is not None
        norm = normalize_prompt(text)
        key = prompt_key(norm)
        own = f"ctx:{key}"
        ns = _CONTEXT_NAMESPACE if scope.namespace is None else f"{_CONTEXT_NAMESPACE}|{scope.namespace}"
        group = scope.replace(context=None, namespace=ns)
        gsid = scope_id(group, self.fingerprint)
        found = self._get(norm, key, gsid, self.context_threshold, time.perf_counter(), gate=False)
        if found and isinstance(found.completion, str) and found.completion.startswith("ctx:"):
            return scope.replace(context=found.completion)
        if register:
            vec = self._embed([norm], [key])[0]
            row = (EntryMeta(gsid, key, self.fingerprint, time.time(), None), vec, text, own)
            with self._lock:
                self._write([row], {gsid: scope.tenant})
                self._sync()
        return scope.replace(context=own)

    def _get(self, norm: str, key: str, sid: str, thr: float, t0: float, *, gate: bool = True) -> Hit | Miss:
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
        if self.index_kind == "pgvector":
            return self._engine_get(sid, vec, thr, norm, key, now, t_embed, t_index)
        with self._lock:
            self._latency["embed"].append(t_index - t_embed)
            part = self._parts.get(sid)
            if part is None:
                return MISS
            low = self._project(vec[None, :])[0] if part.kind != "exact" else vec
            cand = part.index.candidates(low, vec, thr)
            t_verify = time.perf_counter()
            self._latency["index"].append(t_verify - t_index)
            hit = self._verify(cand, vec, thr, norm, now)
            if part.kind != "exact":
                hit = self._audit(sid, part, hit, vec, thr, norm, now)
            if hit and gate and self.target_wrong_hit_rate is not None:
                hit = self._guarantee_gate(sid, key, hit)
            self._latency["verify"].append(time.perf_counter() - t_verify)
            return hit

    def _engine_get(self, sid: str, vec: FloatArray, thr: float, norm: str, key: str, now: float,
                    t_embed: float, t_index: float) -> Hit | Miss:
        """``index="pgvector"``: candidates from the engine, re-ranked and verified here.

        The engine query runs outside the cache lock (a round trip); the scope's size as
        this replica counts it picks the exact scan for small scopes. Candidates come with
        their stored vector and completion, so a hit costs no second fetch.
        """
        with self._lock:
            self._latency["embed"].append(t_index - t_embed)
            part = self._parts.get(sid)
            if part is None:
                return MISS
            size = part.size
        engine = self._store.engine_search(  # type: ignore[attr-defined]
            vec.shape[0], **self.index_params)
        cands = [c for c in engine.search(sid, vec, now, size)
                 if c.meta.scope == sid and c.meta.fingerprint == self.fingerprint]
        t_verify = time.perf_counter()
        with self._lock:
            self._latency["index"].append(t_verify - t_index)
            hit: Hit | Miss = MISS
            if cands:
                scores = np.clip(np.stack([c.vector for c in cands]) @ vec, -1.0, 1.0)
                for j in np.argsort(-scores, kind="stable").tolist():
                    score = float(scores[j])
                    if score < thr:
                        break
                    own = cands[j].meta.threshold
                    if own is not None and score < own:
                        continue  # feedback raised this entry's bar
                    hit = self._serve(cands[j].entry_id, score, exact=False, now=now, query=norm,
                                      threshold=thr, row=cands[j])
                    if hit:
                        engine.store.note_hit(cands[j].entry_id)
                        break
            if hit and self.target_wrong_hit_rate is not None:
                hit = self._guarantee_gate(sid, key, hit)
            self._latency["verify"].append(time.perf_counter() - t_verify)
            return hit

    def _verify(self, cand: Any, vec: FloatArray, thr: float, norm: str, now: float) -> Hit | Miss:
        """The best candidate at or above ``thr`` that passes every check, or MISS."""
        if not len(cand):
            return MISS
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
            hit = self._serve(entry_id, score, exact=False, now=now, query=norm, threshold=thr)
            if hit:
                return hit
        return MISS

    #: Audit evidence needed to trust an approximate index: with ``missed`` misses
    #: seen, ``_AUDIT_PER_MISS * (missed + 3)`` audited hits, the one-sided 95% Poisson
    #: bound ("rule of three") putting the miss rate under 1 / _AUDIT_PER_MISS = 0.5%.
    _AUDIT_PER_MISS: Final = 200
    #: Once trusted, one approximate miss in this many is still checked exactly.
    _AUDIT_SAMPLE: Final = 32

    def _audit(self, sid: str, part: _Partition, hit: Hit | Miss, vec: FloatArray, thr: float,
               norm: str, now: float) -> Hit | Miss:
        """Check an approximate partition's answer against exact search, as evidence allows.

        An approximate index is calibrated from the entries it holds, and a cache
        holds mostly *distinct* prompts (paraphrases hit rather than being stored),
        which are not the pairs its lookups must find. So its recall is measured on
        the lookups themselves: until ``found`` and ``missed`` bound the miss rate
        under 0.5%, every approximate miss is searched exactly (the lookup is then
        answered as exact search would); after that one in ``_AUDIT_SAMPLE``, and a
        sampled miss that exact search finds withdraws the trust.
        """
        if hit:
            part.found += 1
            self._audit_due(part)
            return hit
        if part.trusted:
            part.audits += 1
            if part.audits % self._AUDIT_SAMPLE:
                return MISS
        ids, scores = self._table.scores(vec)
        above = ids[scores >= thr]
        cand = np.array([i for i in above.tolist() if self._meta.get(i) is not None
                         and self._meta[i].scope == sid], dtype=np.int64)
        found = self._verify(cand, vec, thr, norm, now)
        if not found:
            return MISS
        if part.trusted:
            part.trusted = False
            part.found = part.missed = 0
            log.info("semcache: the approximate index of scope %s missed a hit; checking its "
                     "misses exactly again", sid[:8])
        part.missed += 1
        return found

    def _audit_due(self, part: _Partition) -> None:
        """Trust ``part`` once its audited hits bound the miss rate (see ``_AUDIT_PER_MISS``)."""
        if not part.trusted and part.found + part.missed >= self._AUDIT_PER_MISS * (part.missed + 3):
            part.trusted = True

    def _serve(self, entry_id: int, score: float, *, exact: bool, now: float, query: str | None,
               threshold: float = -1.0, row: Any = None) -> Hit | Miss:
        """Load an entry for a hit, unless expired, vetoed by a guard or the long-prompt check, or gone.

        ``row``: an :class:`~semcache.stores.pgvector.EngineCandidate` the engine just read
        (its metadata and completion are used as they are: no second fetch).
        """
        meta = self._meta.get(entry_id) if row is None else row.meta
        if meta is None:
            return MISS
        if meta.expires is not None and meta.expires <= now:
            self._delete_ids([entry_id], counter="expirations")
            return MISS
        try:
            stored = self._store.get_completion(entry_id) if row is None else (row.prompt, row.completion)
        except SerializationError as exc:
            # A corrupt record is never served; it counts as an error and, failing open,
            # the next candidate may still be served.
            if not self.fail_open:
                raise  # get() counts it
            self._counters["errors"] += 1
            log.error("semcache: entry %d is unreadable and is skipped: %s", entry_id, exc)
            self._remove_local([entry_id])  # not retried by later lookups of this process
            return MISS
        if stored is None:  # deleted by another process since our last sync
            self._remove_local([entry_id])
            return MISS
        stored_prompt, completion = stored
        if query is not None:
            span = self._long_prompt_score(query, stored_prompt)
            if span is not None:
                if span < threshold:
                    return MISS
                score = min(score, span)
        if query is not None and self.guards:
            for guard in self.guards:
                if not guard(query, stored_prompt, score):
                    return MISS
        if entry_id in self._lru:  # an engine row this replica has not read yet is not in it
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

    # ------------------------------------------------- online guarantee (issue 24)
    # Kept in one block so it merges apart from other work on this file; the learner
    # itself (pure) is semcache.guarantee.WrongRateLearner.
    _G_PENDING_MAX: Final = 4096  # probes awaiting the caller's put
    _G_PENDING_TTL: Final = 900.0  # seconds a probe waits for its put
    _G_REFRESH: Final = 1.0  # seconds between re-reads of the shared evidence

    def _guarantee_setup(self, target: float, confidence: float,
                         answers_match: Callable[[JSONValue, JSONValue], bool] | None) -> None:
        """Validate the target and set up the per-scope learners (no I/O)."""
        from semcache.guarantee import DEFAULT_FLOOR, AnswerMatcher, WrongRateLearner, prior_cuts

        WrongRateLearner(target, confidence=confidence)  # raises ConfigError on bad values
        if answers_match is not None and not callable(answers_match):
            raise ConfigError("answers_match must be callable(cached, fresh) -> bool")
        self.target_wrong_hit_rate = float(target)
        self.confidence = float(confidence)
        prior = self._guarantee_prior(float(target))
        self.threshold = prior[0] if prior else DEFAULT_THRESHOLD
        self._g_floor = DEFAULT_FLOOR
        self._g_cuts = prior_cuts(prior, DEFAULT_FLOOR)
        self.answers_match: Callable[[JSONValue, JSONValue], bool] = (
            answers_match if answers_match is not None else AnswerMatcher(self._embed_answers))
        self._g_learners: dict[str, tuple[WrongRateLearner, float]] = {}
        self._g_pending: OrderedDict[tuple[str, str], tuple[int, float, JSONValue, float]] = (
            OrderedDict())

    def _guarantee_prior(self, target: float) -> list[float]:
        """Static calibrated thresholds for ``target`` (profile "all" first); [] if uncalibrated.

        They are the prior: grid points the learner tests (chosen before any evidence),
        never served on their own. A target outside a profile's calibrated range takes
        that profile's nearest end.
        """
        from semcache.thresholds import calibrated_targets

        out: list[float] = []
        for profile in ("all", "qqp_dev", "clinc150_val"):
            try:
                pts = calibrated_targets(self.fingerprint, profile=profile)
            except ConfigError:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            out.append(float(np.interp(target, xs, ys)))
        return out

    def _embed_answers(self, texts: list[str]) -> FloatArray:
        """Unit embeddings of answers (the default :class:`AnswerMatcher` for free text)."""
        return self._encode(list(texts))

    @staticmethod
    def _guarantee_blob(sid: str) -> str:
        # The evidence does not depend on the target or confidence: caches with other
        # targets on the same store share it.
        return f"guarantee:{sid}"

    def _guarantee_learner(self, sid: str) -> Any:
        """The scope's learner, re-read from the store at most every ``_G_REFRESH`` s."""
        from semcache.guarantee import WrongRateLearner

        now = time.monotonic()
        got = self._g_learners.get(sid)
        if got is not None and now - got[1] < self._G_REFRESH:
            return got[0]
        learner = got[0] if got is not None else WrongRateLearner(
            self.target_wrong_hit_rate or 0.05, confidence=self.confidence, cuts=self._g_cuts,
            floor=self._g_floor, seed=zlib.crc32(sid.encode()))
        raw = self._store.get_blob(self._guarantee_blob(sid))
        counts = (None if raw is None else
                  WrongRateLearner.counts_from_bytes(raw, learner.floor, learner.bin_width))
        if counts is not None and counts[0].shape == (learner.n_bins,):
            learner.load_counts(*counts)
        self._g_learners[sid] = (learner, now)
        return learner

    def _guarantee_gate(self, sid: str, key: str, hit: Hit) -> Hit | Miss:
        """Serve a would-be semantic hit with its bound, or probe it (MISS, remembered)."""
        decision = self._guarantee_learner(sid).decide(hit.score)
        if decision.action == "serve":
            return dataclasses.replace(hit, bound=decision.bound)
        pend = self._g_pending
        pend[(sid, key)] = (hit.entry_id, hit.score, hit.completion, time.monotonic())
        pend.move_to_end((sid, key))
        while len(pend) > self._G_PENDING_MAX:
            pend.popitem(last=False)
        self._counters["probes"] += 1
        return MISS

    def _guarantee_resolve(self, sid: str, keys: Sequence[str],
                           completions: Sequence[JSONValue]) -> None:
        """A put answering a probed prompt: compare the answers and label the pair."""
        now = time.monotonic()
        todo: list[tuple[int, float, JSONValue, JSONValue]] = []
        with self._lock:
            for key, fresh in zip(keys, completions, strict=True):
                p = self._g_pending.pop((sid, key), None)
                if p is not None and now - p[3] <= self._G_PENDING_TTL:
                    todo.append((p[0], p[1], p[2], fresh))
        for entry_id, score, cached, fresh in todo:
            try:  # a user comparator must never break a put
                match = bool(self.answers_match(cached, fresh))
            except Exception as exc:
                log.warning("semcache: answers_match failed; probe left unlabelled: %s", exc)
                continue
            try:
                self._guarantee_label(sid, score, match, entry_id=None if match else entry_id)
            except (StoreError, EmbeddingError) as exc:
                log.warning("semcache: could not record a probe label: %s", exc)

    def _guarantee_label(self, sid: str, score: float, correct: bool, *,
                         entry_id: int | None = None) -> None:
        """Add one label to the scope's shared evidence (read-add-write of its blob).

        ``entry_id``: a stored entry that gave a wrong answer at ``score``; its own bar
        is raised above that score, as :meth:`feedback` does (per-entry evidence).
        """
        from semcache.guarantee import WrongRateLearner

        with self._lock:
            learner = self._guarantee_learner(sid)
            if not score >= learner.floor:
                return
            name = self._guarantee_blob(sid)
            raw = self._store.get_blob(name)
            counts = (None if raw is None else
                      WrongRateLearner.counts_from_bytes(raw, learner.floor, learner.bin_width))
            if counts is None or counts[0].shape != (learner.n_bins,):
                counts = (np.zeros(learner.n_bins, np.int64), np.zeros(learner.n_bins, np.int64))
            right, wrong = counts
            (right if correct else wrong)[learner.bin_of(score)] += 1
            learner.load_counts(right, wrong)
            self._store.set_blob(name, learner.to_bytes())
            self._g_learners[sid] = (learner, time.monotonic())
            meta = self._meta.get(entry_id) if entry_id is not None else None
            if entry_id is not None and meta is not None:
                raised = min(1.0, max(meta.threshold or -1.0, score + self.feedback_margin))
                if self._store.update_meta(entry_id, dataclasses.replace(meta, threshold=raised)):
                    self._sync()

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
        scope_obj = Scope.from_value(scope)
        sid = scope_id(scope_obj, self.fingerprint)
        entry_ttl = self.ttl if ttl is None else _check_ttl(ttl)
        for p, c in zip(prompts, completions, strict=True):
            dumps_completion(p, c)  # raise on a bad completion before anything is written
        if self._warming:  # a remote store still connecting/loading: None without waiting
            self._warming_miss()
            return []
        if self._semantic_context(scope_obj):
            try:
                scope_obj = self._resolve_context(scope_obj, register=True)
            except (StoreError, EmbeddingError) as exc:
                self._failed("put", exc)
                return []
            sid = scope_id(scope_obj, self.fingerprint)
        if self.target_wrong_hit_rate is not None:
            self._guarantee_resolve(sid, keys, completions)
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
                    ids.extend(self._write(rows, {sid: scope_obj.tenant}))
                    self._sync()
                    self._counters["puts"] += len(rows)
                    self._reclaim(now)
                    self._evict()
                    self._flush_counters()
        except (StoreError, EmbeddingError) as exc:
            self._failed("put", exc)
            return ids
        return ids

    def _write(self, rows: list[Row], tenants: Mapping[str, str | None]) -> list[int]:
        """Write ``rows`` in one store transaction; return their ids (the caller holds the lock).

        ``tenants`` maps the rows' scope ids to their tenants; the store is told the ones
        this process has not told it yet, so ``purge(tenant=...)`` finds them. The caller
        then syncs: the ids are committed (acknowledged) even if that sync fails.

        Raises
        ------
        StoreError
            The store is not usable now (a remote store past ``max_staleness``) or failed.
        """
        if not self._store.usable():
            raise StoreError(f"the store at {self._store.where} is not usable right now")
        if self.index_kind == "pgvector":  # the engine's column and index exist first
            self._store.engine_search(rows[0][1].shape[0], **self.index_params)  # type: ignore[attr-defined]
        self._note_scopes(tenants)
        return self._store.put_many(rows)

    def _note_scopes(self, tenants: Mapping[str, str | None]) -> None:
        """Tell the store whose scopes these are (each once per process)."""
        new = {sid: tenant for sid, tenant in tenants.items() if sid not in self._noted}
        if new:
            self._store.note_scopes(new)
            self._noted.update(new)

    #: Seconds between two additions of this process's counters to the store's totals.
    counter_flush_interval: float = 10.0

    def _flush_counters(self, force: bool = False) -> None:
        """Add what was counted since the last flush to the store's totals (best effort).

        Called after writes (never on the lookup path) and at close, so ``semcache
        stats`` shows a hit rate over every process that used the store.
        """
        if not force and time.monotonic() - self._flushed_at < self.counter_flush_interval:
            return
        if not self._store.usable():
            return  # a store cut off would only make this wait for its timeout
        now = {k: self._counters[k] for k in COUNTER_NAMES}
        deltas = {k: now[k] - self._flushed[k] for k in COUNTER_NAMES}
        self._flushed_at = time.monotonic()
        if not any(v > 0 for v in deltas.values()):
            return
        try:
            self._store.add_counters(deltas)
        except StoreError as exc:
            log.warning("semcache: counters not saved to the store: %s", exc)
            return
        self._flushed = now

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
            if self.target_wrong_hit_rate is not None and not hit.exact:
                self._guarantee_label(meta.scope, hit.score, bool(correct))
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
        tenant: str | Callable[[str], bool] | None = None,
        foreign: bool = False,
        expired: bool = False,
    ) -> int:
        """Delete every entry matching a condition; returns how many were deleted.

        Parameters
        ----------
        scope : Scope, mapping or str
            Delete the entries of this scope.
        tenant : str or callable, optional
            Delete the entries of every scope of this tenant (``Scope.tenant`` equal
            to it, or for which ``tenant(name)`` returns True), whatever their model,
            parameters or conversation. Entries stored by semcache before it kept
            each scope's tenant (0.2) cannot be found by tenant.
        predicate : callable, optional
            ``predicate(entry_id, meta)``: delete where it returns True.
        foreign : bool
            Delete entries written with another embedder (never served here).
        expired : bool
            Delete entries whose TTL has passed now (normally reclaimed lazily).
        """
        self._check_open()
        if scope is None and predicate is None and tenant is None and not foreign and not expired:
            raise ConfigError("purge() needs a scope, a tenant, a predicate, foreign=True or expired=True")
        if tenant is not None and not callable(tenant) and (not isinstance(tenant, str) or not tenant):
            raise ConfigError(f"tenant must be a non-empty str or a callable, not {tenant!r}")
        with self._lock:
            self._sync()
            now = time.time()
            sid = self.scope_id(scope) if scope is not None else None
            owned: set[str] = set()
            if tenant is not None:
                match = tenant if callable(tenant) else tenant.__eq__
                owned = {s for s, t in self._store.scope_tenants().items() if t is not None and match(t)}
            victims = [
                i
                for i, m in self._meta.items()
                if (sid is not None and m.scope == sid)
                or m.scope in owned
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
            if self.target_wrong_hit_rate is not None:
                self._g_learners.clear()
                self._g_pending.clear()
            with self._memo_lock:
                self._memo.clear()
            if self.directory is not None:
                from semcache.snapshot import delete_snapshot

                delete_snapshot(self.directory)
                with contextlib.suppress(StoreError):
                    self._store.retain(f"snapshot:{self.directory}", None)
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
            counters = dict(self._counters)
            # Records the store skipped as invalid (never served) are errors too.
            counters["errors"] += self._store.skipped - self._skipped_base
            return CacheStats(
                **counters,
                entries=len(self._meta),
                scopes=len(self._parts),
                foreign_entries=self._foreign,
                index_kinds=kinds,
                projection=None if self._projection is None else repr(self._projection),
                latency_ms=lat,
            )

    def store_counters(self) -> tuple[dict[str, int], float | None]:
        """Counts over every process that used this store, and since when (Unix time).

        Each process adds its own (``hits``, ``exact_hits``, ``misses``, ``probes``,
        ``puts``) every :attr:`counter_flush_interval` seconds when it writes, and when
        it closes; :meth:`stats` counts only this object's lookups.
        """
        self._check_open()
        with self._lock:
            self._flush_counters(force=True)
            return self._store.load_counters()

    def scope_tenants(self) -> dict[str, str | None]:
        """Scope id -> tenant of every scope the store has seen (None: no tenant or unknown)."""
        self._check_open()
        return self._store.scope_tenants()

    def reset_stats(self) -> None:
        """Zero the counters and latency samples (the store's totals keep what was counted)."""
        with self._lock:
            self._flush_counters(force=True)
            self._flushed = dict.fromkeys(COUNTER_NAMES, 0)
            for k in self._counters:
                self._counters[k] = 0
            self._skipped_base = self._store.skipped
            for v in self._latency.values():
                v.clear()

    def __repr__(self) -> str:
        where = self.directory or "memory"
        return f"SemanticCache({str(where)!r}, threshold={self.threshold}, entries={len(self._meta)})"

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the store. Further calls raise :class:`ConfigError`; closing twice is fine."""
        self._warm_stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._flush_counters(force=True)
            try:
                if not self._warming:
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


    # ------------------------------------------------------- export / import
    # Self-contained on purpose (the store's internals may change): they read
    # ``self._meta`` under ``self._lock``, completions through
    # ``self._store.get_completion`` and write through ``self._store.put_many``.
    def entries(self, scope: ScopeLike = None) -> Iterator[CacheEntry]:
        """Iterate over the live entries (what ``semcache export`` writes).

        Parameters
        ----------
        scope : Scope, mapping or str, optional
            Only this scope's entries. Unlike :meth:`get`, None means *every* scope,
            not the default one.

        Yields
        ------
        CacheEntry
            In the order they were stored; expired entries and entries of another
            embedder are left out. Entries deleted while iterating are skipped.
        """
        self._check_open()
        with self._lock:
            self._sync()
            sid = None if scope is None else self.scope_id(scope)
            now = time.time()
            live = [(i, m) for i, m in sorted(self._meta.items())
                    if (sid is None or m.scope == sid) and (m.expires is None or m.expires > now)]
            tenants = self._store.scope_tenants()
        for entry_id, meta in live:
            with self._lock:
                got = self._store.get_completion(entry_id)
            if got is not None:
                yield CacheEntry(entry_id, got[0], got[1], meta.scope, meta.created, meta.expires,
                                 meta.scope in tenants, tenants.get(meta.scope))

    def add_entries(self, entries: Iterable[CacheEntry], *, fingerprint: str,
                    batch_size: int = 256) -> list[int]:
        """Store exported entries (``semcache import``): re-embedded here, scope ids kept.

        Parameters
        ----------
        entries : iterable of CacheEntry
            E.g. read back from ``semcache export``; ``entry_id`` is ignored (new ids
            are given), ``scope_id``, ``created`` and ``expires`` are kept. Entries
            already expired are skipped.
        fingerprint : str
            The fingerprint of the embedder the entries were stored with. A scope id
            hashes it, so entries of another embedder could never be served here:
            they are refused rather than stored as dead weight.
        batch_size : int
            Prompts embedded per batch.

        Returns
        -------
        list of int
            The new entry ids.

        Raises
        ------
        ConfigError
            ``fingerprint`` is not this cache's.
        InvalidPromptError, SerializationError
            A bad prompt or a completion that is not JSON (nothing of its batch is written).
        """
        self._check_open()
        if fingerprint != self.fingerprint:
            raise ConfigError(
                f"these entries were stored with embedder {fingerprint!r} and this cache uses "
                f"{self.fingerprint!r}: their scope ids would never match here. Import them into a "
                "cache with the same embedder (or store the prompts again with put_many)"
            )
        size = _positive_int(batch_size, "batch_size")
        ids: list[int] = []

        def flush(batch: list[CacheEntry]) -> None:
            norms = [normalize_prompt(e.prompt) for e in batch]
            keys = [prompt_key(n) for n in norms]
            vecs = self._embed(norms, keys)
            rows = [(EntryMeta(e.scope_id, k, self.fingerprint, e.created, e.expires), v, e.prompt,
                     e.completion) for e, k, v in zip(batch, keys, vecs, strict=True)]
            with self._lock:
                self._note_scopes({e.scope_id: e.tenant for e in batch if e.tenant_known})
                ids.extend(self._store.put_many(rows))
                self._sync()
                self._counters["puts"] += len(rows)
                self._reclaim(time.time())
                self._evict()

        batch: list[CacheEntry] = []
        for entry in entries:
            if entry.expires is not None and entry.expires <= time.time():
                continue
            batch.append(entry)
            if len(batch) == size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        return ids


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored entry, as :meth:`SemanticCache.entries` yields it.

    Attributes
    ----------
    entry_id : int
        Id in the cache it was read from.
    prompt : str
        The prompt as stored.
    completion : JSON value
    scope_id : str
        32 hex chars: the hash of the scope and the embedder's fingerprint
        (:func:`semcache.scope.scope_id`); the scope itself is not stored.
    created : float
        Unix time it was stored.
    expires : float or None
        Unix time it expires, or None.
    tenant_known : bool
        Whether the store knows the tenant of the entry's scope (entries stored
        before semcache kept it do not).
    tenant : str or None
        The scope's tenant (None: no tenant, or not known).
    """

    entry_id: int
    prompt: str
    completion: JSONValue
    scope_id: str
    created: float
    expires: float | None
    tenant_known: bool = False
    tenant: str | None = None


def _apply_changes(ids: IdArray, vectors: FloatArray, cols: dict[str, np.ndarray],
                   items: list[tuple[int, StoredEntry | None]]
                   ) -> tuple[IdArray, FloatArray, dict[str, np.ndarray]]:
    """A snapshot's rows updated by the changes logged after it (deletes, puts, updates).

    Parameters
    ----------
    ids : int64 (n,); vectors : float32 (n, d); cols : meta columns of the n rows
    items : folded changes (no clear), each ``(id, entry)`` or ``(id, None)`` for a delete

    Returns
    -------
    The surviving rows followed by the changed ones: ids (m,), vectors (m, d), columns.

    Raises
    ------
    SerializationError
        A changed row's vector is not ``d`` wide.
    """
    if not items:
        return ids, vectors, cols
    touched = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
    keep = ~np.isin(ids, touched)
    new = [e for _, e in items if e is not None]
    dim = vectors.shape[1]
    if any(e.vector.shape[0] != dim for e in new):
        raise SerializationError("a change after it has vectors of another width")
    new_ids = np.array([e.entry_id for e in new], dtype=np.int64)
    new_vecs = np.stack([e.vector for e in new]).astype(np.float32) if new else np.zeros((0, dim), np.float32)
    new_cols = meta_columns([e.meta for e in new])
    out: dict[str, np.ndarray] = {}
    for name, col in cols.items():
        if name.endswith("/u"):
            out[name] = np.concatenate([col, new_cols[name]]) if len(new_cols[name]) else col
        elif name.endswith("/c"):
            shifted = np.where(new_cols[name] < 0, -1, new_cols[name] + len(cols[name[:-2] + "/u"]))
            out[name] = np.concatenate([col[keep], shifted.astype(np.int32)])
        else:
            out[name] = np.concatenate([col[keep], new_cols[name]])
    return (np.concatenate([ids[keep], new_ids]), np.concatenate([vectors[keep], new_vecs]), out)
