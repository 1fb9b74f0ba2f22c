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
import dataclasses
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
    "META_KINDS",
    "NORM_TOLERANCE",
    "SEAL_MOD",
    "ChangeBatch",
    "Digests",
    "EntryMeta",
    "Loaded",
    "Row",
    "Seal",
    "Store",
    "StoredEntry",
    "check_columns",
    "check_counters",
    "check_meta",
    "check_scope_tenants",
    "check_vector",
    "counter_deltas",
    "dumps_completion",
    "loads_completion",
    "meta_columns",
    "metas_from_columns",
    "row_digest",
    "row_digests",
    "seal_of",
    "str_digests",
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
    # 32-bit products (wrapping) summed in 64 bits, a few thousand rows at a time: no
    # (n, d) temporary (a 200k x 384 one costs more in page faults than the arithmetic).
    words = arr.view("<u4")
    h = np.empty(n, dtype=np.uint64)
    step = max(1, (1 << 21) // max(d, 1))
    buf = np.empty((min(step, n), d), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for s in range(0, n, step):
            w = words[s : s + step]
            t = buf[: len(w)]
            np.multiply(w, mul, out=t)
            t.sum(axis=1, dtype=np.uint64, out=h[s : s + len(w)])
        h += np.uint64(d)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return np.asarray(h, dtype=np.uint64).reshape(n)


def vector_digest(vector: FloatArray) -> bytes:
    """:func:`vector_digests` of one vector, as 8 little-endian bytes (the stored ``vhash``)."""
    return vector_digests(np.asarray(vector, np.float32)[None, :]).astype("<u8").tobytes()


# ------------------------------------------------------------ row digests and seals
#: Row digests and the store's seal live in [0, 2**62): the seal is their sum modulo
#: 2**62, which SQLite can keep in a signed 64-bit integer without overflow.
SEAL_MOD = 1 << 62

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_NONE = np.uint64(0x6A09E667F3BCC909)  # a field that is None
_STR_MUL: list[npt.NDArray[np.uint32]] = []


def _mix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser, vectorised: every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * _MIX1
        h = h ^ (h >> np.uint64(27))
        h = h * _MIX2
        return h ^ (h >> np.uint64(31))


def _meta_kinds() -> dict[str, str]:
    """Column kind of each :class:`EntryMeta` field: ``str``, ``float`` or ``int`` (each maybe None)."""
    kinds: dict[str, str] = {}
    for f in dataclasses.fields(EntryMeta):
        ann = str(f.type)
        kind = "str" if "str" in ann else "float" if "float" in ann else "int" if (
            "int" in ann or "bool" in ann) else ""
        if not kind:  # a new field of another type must get a column encoding first
            raise TypeError(f"EntryMeta.{f.name}: no column encoding for {ann}")
        kinds[f.name] = kind
    return kinds


#: Field name -> column kind, in :class:`EntryMeta` order (what columns and digests cover).
META_KINDS: dict[str, str] = _meta_kinds()


def str_digests(strings: npt.NDArray[np.str_]) -> npt.NDArray[np.uint64]:
    """64-bit digest of each string of a fixed-width unicode array, vectorised.

    A position-dependent multiply-sum of the UCS-4 code points plus the length, then
    mixed: the same string gives the same digest whatever the array's width (padding
    contributes nothing), so one row hashed at write time matches the same row
    hashed inside a 200k-row snapshot.

    Parameters
    ----------
    strings : unicode array, shape (n,)

    Returns
    -------
    uint64 array, shape (n,)
    """
    arr = np.ascontiguousarray(strings, dtype=np.str_)
    n = arr.shape[0]
    width = arr.dtype.itemsize // 4
    if n == 0:
        return np.zeros(0, np.uint64)
    if width == 0:
        return _mix(np.zeros(n, np.uint64))
    while len(_STR_MUL) < width:
        k = len(_STR_MUL)
        odd = np.random.default_rng([0x5C0DE, k]).integers(1, 2**32, size=1, dtype=np.uint64)
        _STR_MUL.append(np.asarray(odd | np.uint64(1), dtype=np.uint32))
    mul = np.concatenate(_STR_MUL[:width])
    codes = arr.view("<u4").reshape(n, width)
    with np.errstate(over="ignore"):
        # 32-bit products (wrapping) summed in 64 bits: no (n, width) uint64 temporary.
        h = (codes * mul).sum(axis=1, dtype=np.uint64)
        h = h + np.char.str_len(arr).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return _mix(h)


def meta_columns(metas: Sequence[EntryMeta]) -> dict[str, np.ndarray]:
    """The metadata as columns (what a snapshot stores; inverse: :func:`metas_from_columns`).

    A ``str`` field becomes ``<name>/u`` (the distinct values, unicode) and ``<name>/c``
    (int32 codes, -1 for None); a ``float`` field float64 with NaN for None (a stored
    value is always finite); an ``int`` field int64.
    """
    cols: dict[str, np.ndarray] = {}
    n = len(metas)
    for name, kind in META_KINDS.items():
        values = [getattr(m, name) for m in metas]
        if kind == "str":
            table: dict[str, int] = {}
            codes = np.fromiter((-1 if v is None else table.setdefault(v, len(table)) for v in values),
                                dtype=np.int32, count=n)
            cols[f"{name}/u"] = np.array(list(table), dtype=np.str_) if table else np.zeros(0, "<U1")
            cols[f"{name}/c"] = codes
        elif kind == "float":
            cols[name] = np.fromiter((np.nan if v is None else v for v in values), dtype=np.float64,
                                     count=n)
        else:
            cols[name] = np.fromiter(values, dtype=np.int64, count=n)
    return cols


def metas_from_columns(cols: dict[str, np.ndarray], n: int) -> list[EntryMeta]:
    """:class:`EntryMeta` objects from :func:`meta_columns` (not validated: see :func:`check_columns`)."""
    fields: list[list[Any]] = []
    for name, kind in META_KINDS.items():
        if kind == "str":
            uniq: list[Any] = cols[f"{name}/u"].tolist()
            codes = cols[f"{name}/c"]
            if (codes < 0).any():
                uniq.append(None)  # code -1 indexes the appended None
            fields.append([uniq[c] for c in codes.tolist()])
        elif kind == "float":
            col = cols[name]
            values: list[Any] = col.tolist()
            if np.isnan(col).any():
                values = [None if v != v else v for v in values]
            fields.append(values)
        else:
            fields.append(cols[name].tolist())
    out = list(map(EntryMeta, *fields)) if fields else []
    if len(out) != n:
        raise SerializationError(f"metadata columns hold {len(out)} rows, expected {n}")
    return out


def check_columns(cols: dict[str, np.ndarray], n: int) -> None:
    """:func:`check_meta` for columns, vectorised (every row, every field).

    Raises
    ------
    SerializationError
        A missing column, a wrong dtype or length, or any value :func:`check_meta` rejects.
    """
    for name, kind in META_KINDS.items():
        if kind == "str":
            uniq, codes = cols.get(f"{name}/u"), cols.get(f"{name}/c")
            if uniq is None or codes is None or uniq.dtype.kind != "U" or uniq.ndim != 1 \
                    or codes.dtype != np.int32 or codes.shape != (n,):
                raise SerializationError(f"metadata column {name!r} is missing or malformed")
            if n and (codes.min() < -1 or codes.max() >= len(uniq)):
                raise SerializationError(f"metadata column {name!r} has codes out of range")
            if name in ("scope", "key"):
                # 32 lowercase hex chars, checked on the code points (keys are ~all distinct).
                cp = np.ascontiguousarray(uniq).view("<u4").reshape(len(uniq), -1)
                hexes = ((cp >= 48) & (cp <= 57)) | ((cp >= 97) & (cp <= 102))
                if len(uniq) and (cp.shape[1] != 32 or not hexes.all()):
                    raise SerializationError(f"a {name} is not 32 lowercase hex chars")
            else:
                for v in uniq.tolist():
                    if not v or len(v) > _MAX_FINGERPRINT or not v.isprintable():
                        raise SerializationError(f"{name} {v[:40]!r} is not a short printable string")
            optional = "None" in str(next(f.type for f in dataclasses.fields(EntryMeta) if f.name == name))
            if n and not optional and codes.min() < 0:
                raise SerializationError(f"metadata column {name!r} holds None")
        else:
            col = cols.get(name)
            want = np.float64 if kind == "float" else np.int64
            if col is None or col.dtype != want or col.shape != (n,):
                raise SerializationError(f"metadata column {name!r} is missing or malformed")
            if kind == "float":
                optional = "None" in str(next(f.type for f in dataclasses.fields(EntryMeta)
                                              if f.name == name))
                finite = np.isfinite(col)
                if not (finite | (np.isnan(col) if optional else False)).all():
                    raise SerializationError(f"metadata column {name!r} is not finite")
                if name == "threshold" and (np.abs(col[finite]) > 1.0).any():
                    raise SerializationError("a threshold is not in [-1, 1]")
            elif n and (col.min() < 0 or col.max() >= 2**62):
                raise SerializationError(f"metadata column {name!r} holds a negative count")


def row_digests(ids: IdArray, cols: dict[str, np.ndarray], vhash: npt.NDArray[np.uint64]
                ) -> npt.NDArray[np.uint64]:
    """Digest of each whole row (id, every metadata field, vector digest), in [0, 2**62).

    The store keeps the sum of its rows' digests modulo 2**62 (its *seal*), updated
    in the same transaction as every write; a snapshot whose rows sum to the same
    seal holds the same rows (the sum does not depend on row order).

    Parameters
    ----------
    ids : int64 array, shape (n,)
    cols : :func:`meta_columns` of the n rows
    vhash : uint64 array, shape (n,) — :func:`vector_digests` of the n vectors

    Returns
    -------
    uint64 array, shape (n,), each < 2**62
    """
    n = len(ids)
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(ids, np.int64).view(np.uint64) ^ np.uint64(0x243F6A8885A308D3))
        for j, (name, kind) in enumerate(META_KINDS.items()):
            if kind == "str":
                uniq, codes = cols[f"{name}/u"], cols[f"{name}/c"]
                table = np.append(str_digests(uniq), _NONE)  # code -1 -> _NONE
                v = table[codes] if n else np.zeros(0, np.uint64)
            elif kind == "float":
                col = np.asarray(cols[name], np.float64) + 0.0  # -0.0 -> 0.0, as SQLite stores it
                v = np.where(np.isnan(col), _NONE, col.view(np.uint64))
            else:
                v = np.asarray(cols[name], np.int64).view(np.uint64)
            h = _mix(h * np.uint64(0x100000001B3) + v + np.uint64(j + 1))
        h = _mix(h ^ np.asarray(vhash, np.uint64))
    return h >> np.uint64(2)


def seal_of(digests: npt.NDArray[np.uint64]) -> int:
    """The seal of a set of rows: the sum of their :func:`row_digests` modulo 2**62."""
    return int(digests.sum(dtype=np.uint64)) % SEAL_MOD if len(digests) else 0


def row_digest(entry_id: int, meta: EntryMeta, vhash: bytes) -> int:
    """:func:`row_digests` of one row (what the store writes with it); ``vhash`` 8 bytes."""
    return int(row_digests(np.array([entry_id], np.int64), meta_columns([meta]),
                           np.frombuffer(vhash, "<u8").astype(np.uint64))[0])


@dataclass(frozen=True)
class Seal:
    """A store's seal at log position ``head``: ``rows`` live rows whose digests sum to ``value``.

    ``clean`` is False when the rows were changed other than through the store
    (the database edited directly): the seal then proves nothing until resealed.
    """

    head: int
    rows: int
    value: int
    clean: bool


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


def check_counters(rows: Sequence[tuple[object, object]]) -> tuple[dict[str, int], float | None]:
    """Validate ``(name, value)`` counter rows: known names, non-negative ints (others dropped).

    Returns the counts and the Unix time counting started (the ``since`` row; None: never),
    what :meth:`Store.load_counters` returns.
    """
    out = dict.fromkeys(COUNTER_NAMES, 0)
    since: float | None = None
    for name, value in rows:
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if name in out and 0 <= value < 2**62:
            out[str(name)] = value
        elif name == "since" and value > 0:
            since = float(value)
    return out, since


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

    def retain(self, name: str, pos: int | None) -> None:
        """Ask compaction to keep the change log after ``pos`` for ``name`` (e.g. a snapshot).

        A snapshot taken at ``pos`` is usable only while the log reaches back to it. The
        hold expires like a silent reader's; ``pos=None`` releases it. Default: no-op (a
        store that compacts by age alone).
        """
        return None

    def sealed_changes(self, since: int) -> tuple[ChangeBatch, Seal] | None:
        """:meth:`changes` and the store's :class:`Seal` at the batch's head, in one transaction.

        What lets a snapshot that carries metadata be trusted without reading every row
        (see ``docs/store.md``). None (this default): the store keeps no seal, and a
        snapshot is verified row by row against :meth:`load_digests` instead.
        """
        return None

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
