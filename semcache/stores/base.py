"""The store interface every backend implements, and the validation they share.

One abstraction, several implementations (memory, local SQLite, PostgreSQL):
:class:`~semcache.cache.SemanticCache` talks only to :class:`Store` and never
knows which one it has. See ``docs/store.md`` for the design.

Nothing read from a store is deserialised by anything that can execute code:
vectors are raw float32 bytes, metadata are typed columns (or JSON), completions
are JSON text. Everything read is validated here (:func:`check_meta`,
:func:`check_vector`, :func:`loads_completion`) before the cache sees it; a
record that fails is skipped, counted (:attr:`Store.skipped`) and logged, never
served.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from semcache._types import FloatArray, IdArray, JSONValue
from semcache.errors import InvalidPromptError, SerializationError

__all__ = [
    "CLEARED",
    "COUNTER_NAMES",
    "MAX_JSON_DEPTH",
    "NORM_TOLERANCE",
    "ChangeBatch",
    "Digests",
    "EntryMeta",
    "Loaded",
    "Row",
    "Store",
    "StoredEntry",
    "check_counters",
    "check_meta",
    "check_scope_tenants",
    "check_vector",
    "counter_deltas",
    "dumps_completion",
    "loads_completion",
    "vector_digest",
    "vector_digests",
]

log = logging.getLogger("semcache")

#: Change-log id of a clear: every entry is gone.
CLEARED = -1

#: Deepest JSON nesting a completion may have (written or read). Deeper input
#: would overflow Python's recursion in ``json`` (an untyped ``RecursionError``).
MAX_JSON_DEPTH = 256

#: A stored vector must have unit L2 norm within this tolerance (float32
#: round-off is ~1e-6); a vector scaled x1000 would otherwise score 1.0 against
#: everything.
NORM_TOLERANCE = 1e-3

_HEX32 = re.compile(r"[0-9a-f]{32}")
_MAX_FINGERPRINT = 512
#: Longest tenant name a store keeps for a scope (a longer one is kept as unknown).
MAX_TENANT = 1024

#: Counters every process adds to its store (:meth:`Store.add_counters`): lookups
#: served and not served, over the life of the store, so ``semcache stats`` can tell
#: a hit rate across processes and restarts.
COUNTER_NAMES: tuple[str, ...] = ("exact_hits", "hits", "misses", "probes", "puts")


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What the index needs about an entry (no completion)."""

    #: Scope id: 32 lowercase hex chars (see :func:`semcache.scope.scope_id`).
    scope: str
    #: Exact-match key of the normalised prompt: 32 lowercase hex chars.
    key: str
    #: Fingerprint of the embedder that produced the vector.
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
    """An entry as read back from the store (validated)."""

    entry_id: int
    meta: EntryMeta
    #: float32, shape (d,), unit norm.
    vector: FloatArray


#: One entry to write: metadata, float32 vector (d,), the stored prompt, the completion.
Row = tuple[EntryMeta, FloatArray, str, JSONValue]


@dataclass(frozen=True)
class ChangeBatch:
    """What changed after a position (see :meth:`Store.changes`).

    ``items`` holds ``(entry_id, entry)`` for a put or update still present,
    ``(entry_id, None)`` for a delete and ``(CLEARED, None)`` for a clear, in log
    order. ``items is None`` means the log no longer reaches back to the position
    asked for (compacted, or the store was wiped/restored): reload with
    :meth:`Store.load_all`.
    """

    head: int
    items: list[tuple[int, StoredEntry | None]] | None


@dataclass(frozen=True)
class Loaded:
    """Every live, valid entry as of log position ``head`` (one consistent read).

    Attributes
    ----------
    head : int
    ids : int64 array, shape (n,)
    metas : list of EntryMeta, length n
    vectors : float32 array, shape (n, d), unit rows (d = 0 when n = 0)
    skipped : int
        Records that failed validation and were left out.
    """

    head: int
    ids: IdArray
    metas: list[EntryMeta]
    vectors: FloatArray
    skipped: int = 0


@dataclass(frozen=True)
class Digests:
    """Every live entry's metadata and vector digest, without the vectors.

    Used to verify a snapshot row by row cheaply: ``ids`` int64 (n,) ascending,
    ``metas`` and ``vhash`` (uint64 (n,), :func:`vector_digests` of each stored
    vector) aligned with it. Records that failed validation are left out (``skipped``).
    """

    head: int
    ids: IdArray
    metas: list[EntryMeta]
    vhash: npt.NDArray[np.uint64]
    skipped: int = 0


_DIGEST_MUL: dict[int, npt.NDArray[np.uint32]] = {}


def vector_digests(vectors: FloatArray) -> npt.NDArray[np.uint64]:
    """64-bit digest of each float32 row, vectorised (what :class:`Digests` compares).

    A position-dependent multiply-sum of the row's 32-bit words, then a mixing step:
    any change of a value, a swap of rows or a shift of ids changes it. It is not a
    cryptographic hash: whoever can forge a snapshot can write the database itself,
    so it guards against damage and confusion, not against the directory's owner.

    Parameters
    ----------
    vectors : float32 array, shape (n, d)

    Returns
    -------
    uint64 array, shape (n,)
    """
    arr = np.ascontiguousarray(vectors, dtype="<f4")
    n, d = arr.shape
    if d not in _DIGEST_MUL:
        odd = np.random.default_rng(0x5E3C).integers(1, 2**32, size=d, dtype=np.uint64) | np.uint64(1)
        _DIGEST_MUL[d] = np.asarray(odd, dtype=np.uint32)
    mul = _DIGEST_MUL[d]
    # 32-bit products (wrapping) summed in 64 bits: no (n, d) uint64 temporary.
    words = arr.view("<u4")
    with np.errstate(over="ignore"):
        h = (words * mul).sum(axis=1, dtype=np.uint64) + np.uint64(d)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return np.asarray(h, dtype=np.uint64).reshape(n)


def vector_digest(vector: FloatArray) -> bytes:
    """:func:`vector_digests` of one vector, as 8 little-endian bytes (the stored ``vhash``)."""
    return vector_digests(np.asarray(vector, np.float32)[None, :]).astype("<u8").tobytes()


# ------------------------------------------------------------------ validation
def _finite(x: object, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise SerializationError(f"{what} is {type(x).__name__}, not a number")
    v = float(x)
    if not math.isfinite(v):
        raise SerializationError(f"{what} is not finite")
    return v


def _count(x: object, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**62:
        raise SerializationError(f"{what} is not a non-negative int: {x!r}")
    return x


def check_meta(meta: EntryMeta) -> EntryMeta:
    """Validate an :class:`EntryMeta` (read from a store or about to be written).

    Raises
    ------
    SerializationError
        A field of the wrong type, a scope id or key that is not 32 lowercase hex
        chars, a non-finite time, a threshold outside [-1, 1], a negative count.
    """
    if not isinstance(meta, EntryMeta):
        raise SerializationError(f"entry metadata is {type(meta).__name__}, not EntryMeta")
    for what, value in (("scope id", meta.scope), ("key", meta.key)):
        if not isinstance(value, str) or not _HEX32.fullmatch(value):
            raise SerializationError(f"{what} {str(value)[:40]!r} is not 32 lowercase hex chars")
    fp = meta.fingerprint
    if not isinstance(fp, str) or not fp or len(fp) > _MAX_FINGERPRINT or not fp.isprintable():
        raise SerializationError("embedder fingerprint is not a short printable string")
    _finite(meta.created, "created")
    if meta.expires is not None:
        _finite(meta.expires, "expires")
    if meta.threshold is not None and not -1.0 <= _finite(meta.threshold, "threshold") <= 1.0:
        raise SerializationError(f"threshold {meta.threshold!r} is not in [-1, 1]")
    _count(meta.wrong, "wrong")
    _count(meta.right, "right")
    return meta


def check_scope_tenants(rows: Sequence[tuple[object, object]], where: str) -> dict[str, str | None]:
    """Validate ``(scope id, tenant)`` rows read from a store; bad rows are left out (logged).

    A scope whose tenant is unknown (written by an older semcache, or a tenant name
    too long or not text) maps to None: it is never selected by a tenant.
    """
    out: dict[str, str | None] = {}
    for sid, tenant in rows:
        if not isinstance(sid, str) or not _HEX32.fullmatch(sid):
            log.error("semcache: skipping invalid scope record %r in %s", str(sid)[:40], where)
            continue
        name: str | None = None
        if isinstance(tenant, str) and 0 < len(tenant) <= MAX_TENANT:
            try:
                tenant.encode("utf-8")
                name = tenant
            except UnicodeEncodeError:
                pass  # a lone surrogate: unknown, never matched
        out[sid] = name
    return out


def check_counters(rows: Sequence[tuple[object, object]]) -> dict[str, int]:
    """Validate ``(name, value)`` counter rows: known names, non-negative ints (others dropped)."""
    out = dict.fromkeys(COUNTER_NAMES, 0)
    for name, value in rows:
        if name in out and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
            out[str(name)] = value
    return out


def counter_deltas(deltas: Mapping[str, int]) -> dict[str, int]:
    """The positive deltas of known counters in ``deltas`` (what a store adds)."""
    return {k: int(v) for k, v in deltas.items() if k in COUNTER_NAMES and int(v) > 0}


def check_vector(data: object, dim: int | None = None) -> FloatArray:
    """Validate a stored vector: float32 bytes (or array), finite, unit norm.

    Parameters
    ----------
    data : bytes or array-like
        Raw little-endian float32 bytes, or an array of shape (d,).
    dim : int, optional
        Expected width.

    Returns
    -------
    float32 array, shape (d,), a private copy.

    Raises
    ------
    SerializationError
        Wrong type or length, NaN/infinity, or a norm further than
        :data:`NORM_TOLERANCE` from 1.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if not raw or len(raw) % 4:
            raise SerializationError(f"a vector of {len(raw)} bytes is not float32")
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        try:
            vec = np.array(data, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"vector is not numeric: {exc}") from exc
        if vec.ndim != 1 or vec.size == 0:
            raise SerializationError(f"vector has shape {vec.shape}, expected (d,)")
    if dim is not None and vec.shape[0] != dim:
        raise SerializationError(f"vector is {vec.shape[0]}-d, expected {dim}-d")
    if not np.isfinite(vec).all():
        raise SerializationError("vector holds NaN or infinity")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise SerializationError(f"vector norm is {norm:.6g}, not 1")
    return vec


def _json_depth_ok(value: object, limit: int) -> bool:
    """Whether ``value`` nests no deeper than ``limit`` (iterative: no recursion to overflow)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth > limit:
                return False
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)
    return True


def _check_text(text: str, what: str, exc_type: type[Exception]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise exc_type(f"{what} holds a lone surrogate and cannot be stored as UTF-8: {exc}") from exc


def dumps_completion(prompt: str, completion: JSONValue) -> str:
    """JSON text of a stored (prompt, completion), validated before anything is written.

    Raises
    ------
    InvalidPromptError
        ``prompt`` is not valid Unicode (a lone surrogate).
    SerializationError
        ``completion`` is not JSON-serialisable, holds NaN/infinity or a lone
        surrogate, or nests deeper than :data:`MAX_JSON_DEPTH`.
    """
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"a prompt must be a str, not {type(prompt).__name__}")
    _check_text(prompt, "the prompt", InvalidPromptError)
    if not _json_depth_ok(completion, MAX_JSON_DEPTH):
        raise SerializationError(f"the completion nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = json.dumps({"prompt": prompt, "completion": completion}, allow_nan=False,
                          ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"completion is not JSON-serialisable: {exc}") from exc
    _check_text(text, "the completion", SerializationError)
    return text


def loads_completion(text: object, entry_id: int | None = None) -> tuple[str, JSONValue]:
    """Inverse of :func:`dumps_completion`, validating what was read.

    Raises
    ------
    SerializationError
        Not UTF-8 text, not JSON, too deep, or not ``{"prompt": str, "completion": ...}``.
    """
    what = "stored completion" if entry_id is None else f"stored completion {entry_id}"
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(f"{what} is not UTF-8: {exc}") from exc
    if not isinstance(text, str):
        raise SerializationError(f"{what} is {type(text).__name__}, not text")
    _check_text(text, what, SerializationError)  # lone surrogates from a bad byte
    # Cheap bound before parsing: json.loads recurses once per bracket.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and not _bracket_depth_ok(text):
        raise SerializationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SerializationError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or set(obj) != {"prompt", "completion"} \
            or not isinstance(obj["prompt"], str):
        raise SerializationError(f"{what} is not a {{prompt, completion}} record")
    if "\\ud" in text or "\\uD" in text:
        # A JSON escape may decode to a lone surrogate, which no caller can encode.
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError(f"{what} holds a lone surrogate: {exc}") from exc
    return obj["prompt"], obj["completion"]


def _bracket_depth_ok(text: str) -> bool:
    """Bracket nesting of JSON text (ignoring brackets inside strings) within the limit."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


# ----------------------------------------------------------------- the store
class Store(abc.ABC):
    """Where entries, settings and blobs live; see the module docstring.

    Every method raises :class:`~semcache.errors.StoreError` (or
    :class:`~semcache.errors.StoreLockedError`) when the backend fails, and
    :class:`~semcache.errors.SerializationError` when a value cannot be encoded
    or a record read back cannot be decoded. Nothing else escapes.
    """

    #: For messages and logs; never holds a password.
    where: str = "store"

    def __init__(self) -> None:
        self._skip_lock = threading.Lock()
        #: Records that failed validation on read and were skipped (never served).
        self.skipped = 0

    def _skip(self, entry_id: object, exc: Exception) -> None:
        """Count and log a record that failed validation."""
        with self._skip_lock:
            self.skipped += 1
        log.error("semcache: skipping invalid record %s in %s: %s", entry_id, self.where, exc)

    # settings and blobs (shared by every process/node on this store)
    @abc.abstractmethod
    def load_settings(self) -> dict[str, Any] | None:
        """The stored settings, or None when the store has none yet."""

    @abc.abstractmethod
    def init_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Store ``settings`` if none exist yet; return the stored ones.

        Race-free: two processes creating the store at once agree on one ``store_id``.
        """

    @abc.abstractmethod
    def save_settings(self, settings: dict[str, Any]) -> None:
        """Replace the stored settings."""

    @abc.abstractmethod
    def get_blob(self, name: str) -> bytes | None:
        """An opaque blob (e.g. the fitted projection), or None."""

    @abc.abstractmethod
    def set_blob(self, name: str, data: bytes) -> None:
        """Store an opaque blob."""

    # entries: every write is ONE transaction and appends to the change log
    @abc.abstractmethod
    def put_many(self, rows: list[Row]) -> list[int]:
        """Write entries in one transaction; return their new ids, in order.

        Rows are validated first (:func:`check_meta`, :func:`check_vector`,
        :func:`dumps_completion`): a bad row raises before anything is written.
        """

    @abc.abstractmethod
    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete entries in one transaction; return the ids that existed."""

    @abc.abstractmethod
    def update_meta(self, entry_id: int, meta: EntryMeta) -> bool:
        """Rewrite an entry's metadata (vector unchanged); False when it is gone."""

    @abc.abstractmethod
    def get_completion(self, entry_id: int) -> tuple[str, JSONValue] | None:
        """(stored prompt, completion) of an entry; None when it is gone.

        Raises :class:`~semcache.errors.SerializationError` when the record is corrupt.
        """

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry and blob (settings stay); logs one CLEARED record."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections/files. Idempotent."""

    # the change log: positions are in COMMIT order
    @abc.abstractmethod
    def head(self) -> int:
        """Newest change-log position."""

    @abc.abstractmethod
    def changes(self, since: int) -> ChangeBatch:
        """Changes after position ``since`` (see :class:`ChangeBatch`).

        A reader that has seen position p never later receives a change with
        position <= p. ``items`` is None when the log no longer reaches back to
        ``since`` (compacted, or head < since): the caller reloads with
        :meth:`load_all`.
        """

    @abc.abstractmethod
    def load_all(self, dim: int | None = None, fingerprint: str | None = None) -> Loaded:
        """Every live valid entry as of one position, read in one consistent transaction.

        Linear in live entries (one scan, no per-entry round trip). Rows whose
        vector is not ``dim`` wide are skipped; with ``dim=None`` the most common
        width among the rows of embedder ``fingerprint`` is kept (among all rows
        when it has none). Skipped rows of another fingerprint are not counted as
        invalid: they were written by another embedder, not corrupted.
        """

    def load_digests(self) -> Digests:
        """Ids, scopes, keys, fingerprints and vector digests of every live entry.

        Used to verify a snapshot row by row. This default reads everything through
        :meth:`load_all`; backends override it with a scan that skips the vectors.
        """
        loaded = self.load_all()
        order = np.argsort(loaded.ids, kind="stable").tolist()
        return Digests(
            head=loaded.head,
            ids=loaded.ids[order],
            metas=[loaded.metas[i] for i in order],
            vhash=vector_digests(loaded.vectors[order]) if order else np.zeros(0, np.uint64),
            skipped=loaded.skipped,
        )

    # who a scope belongs to, and the counters: small side tables, not in the log
    @abc.abstractmethod
    def note_scopes(self, tenants: Mapping[str, str | None]) -> None:
        """Remember the tenant of each scope id (scope id -> ``Scope.tenant``).

        Scope ids are hashes; this is what lets a tenant's entries be found again
        (``purge(tenant=...)``, ``semcache purge --tenant``). A scope id hashes its
        tenant, so a scope's tenant never changes: the first record is kept.
        """

    @abc.abstractmethod
    def scope_tenants(self) -> dict[str, str | None]:
        """Every scope id noted so far and its tenant (None: no tenant, or unknown)."""

    @abc.abstractmethod
    def add_counters(self, deltas: Mapping[str, int]) -> None:
        """Add a process's counts (names in :data:`COUNTER_NAMES`) to the store's totals."""

    @abc.abstractmethod
    def load_counters(self) -> tuple[dict[str, int], float | None]:
        """The store's counter totals, and the Unix time counting started (None: never)."""

    def compact(self) -> int:
        """Drop change-log records older than the retention horizon; return how many.

        Optional: a store without compaction keeps its whole log.
        """
        return 0

    def usable(self) -> bool:
        """The cache serves only while this is True (local stores: always)."""
        return True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def majority_dim(lengths: Sequence[int]) -> int | None:
    """The most common vector width, None for no rows.

    ``lengths`` are in entry order; a tie goes to the width written first, so a
    directory stays its first embedder's when another one with the same fingerprint
    but another width wrote as many entries.
    """
    if not lengths:
        return None
    values, first, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_index=True,
                                      return_counts=True)
    best = counts == counts.max()
    return int(values[best][int(np.argmin(first[best]))])


#: Change-log operation codes (stored as small ints).
OP_PUT, OP_UPDATE, OP_DELETE, OP_CLEAR = 1, 2, 3, 4


def fold_log(records: Sequence[tuple[int, int]]) -> list[tuple[int, bool]]:
    """Reduce change-log records to what a reader must apply, in order.

    Parameters
    ----------
    records : sequence of (entry_id, op)
        In log order; ``op`` one of ``OP_PUT``, ``OP_UPDATE``, ``OP_DELETE``, ``OP_CLEAR``.

    Returns
    -------
    list of (entry_id, present)
        ``present`` True: load the entry's current state (put or update, the last
        record per id wins); False: it was deleted. ``(CLEARED, False)`` marks a
        clear, and nothing before the last clear is kept. Linear time.
    """
    start = 0
    for k in range(len(records) - 1, -1, -1):
        if records[k][1] == OP_CLEAR:
            start = k
            break
    last: dict[int, int] = {}
    tail = records[start:]
    for k, (entry_id, _) in enumerate(tail):
        last[entry_id] = k
    out: list[tuple[int, bool]] = []
    for k, (entry_id, op) in enumerate(tail):
        if op == OP_CLEAR:
            out.append((CLEARED, False))
        elif last[entry_id] == k:
            out.append((entry_id, op != OP_DELETE))
    return out
