"""Distance-sensitive Bloom filter: a local "nothing within the threshold" answer.

From FLINNG's distance-sensitive Bloom filter (paper 002 in ``shared/papers``):
``m`` bit arrays, array ``j`` addressed by its own LSH function ``g_j``, the
concatenation of ``L`` hashes of one family. A vector is inserted by setting
bit ``g_j(v)`` of every array; a query's *score* is the number of arrays whose
bit ``g_j(q)`` is set, and the filter answers "near" when the score is at
least ``t``. The LSH family here is SimHash (signed random projections): one
hash collides for two vectors at angle ``theta`` with probability
``1 - theta / pi``, so an array collides with probability ``(1 - theta/pi)**L``.

Theorem 1 of the paper, with ``S_H`` the collision probability of one hash at
the near similarity, ``S_L`` at the far one and ``N`` stored vectors:

* a query with a stored vector at similarity ``>= S_H`` is reported near with
  probability ``p >= 1 - exp(-2 m (S_H**L - t/m)**2)`` (when ``t/m < S_H**L``);
* a query whose stored vectors are all at similarity ``<= S_L`` is reported
  near with probability ``q <= exp(-2 m (t/m - N S_L**L)**2)``
  (when ``t/m > N S_L**L``).

:func:`theorem1_bounds` computes both, :func:`theorem1_t` the largest ``t``
whose ``p`` bound meets a target. That ``t`` is a safe start and usually
loose (the bound is a Hoeffding tail at the worst near similarity, and it is
often ``0``: nothing answered locally), so :meth:`calibrate` then sets ``t``
from the scope's own data: the share of near pairs (real pairs at cosine
``>= threshold`` among the stored vectors, found by exact search on a sample,
scored leave-one-out, plus copies of stored vectors perturbed to exactly the
threshold) that the filter would reject stays at or under ``target_loss``.

Layout: each array holds ``2**log_b`` bits. With ``L <= log_b`` the ``L``-bit
code is the address (the paper's layout, ``2**L`` bits per array); with a
longer code it is hashed into the array, so the memory is chosen
independently of ``L``. A query may also *probe* the codes with its
``probes`` least certain signs flipped, one at a time (multi-probe LSH): near
vectors' codes mostly differ exactly there, so probing raises the near score
more than the far one.

Deletes, ``deletes=``

``"counting"``
    8-bit counters instead of bits (8x the memory); :meth:`remove` takes the
    vector's counters down. A counter that reached 255 sticks (it may hold
    more than it counts) so a remove never hides a stored vector.
``"rebuild"``
    Plain packed bits. :meth:`remove` only counts: a stale bit can only make
    the filter say "near" for nothing (the query goes to the engine, which
    answers correctly), never hide a stored vector, so removing is safe to
    defer; :attr:`stale_fraction` tells the owner when to :meth:`rebuild`
    from the store.

The filter never answers a lookup: "near" means "ask the index/engine",
"not near" means "no stored vector is within the threshold" with the
calibrated loss rate.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from semcache._types import FloatArray
from semcache.errors import ConfigError, IndexStateError
from semcache.index import dsbf_kernels as K
from semcache.projection.base import BaseProjection

__all__ = [
    "DistanceSensitiveBloomFilter",
    "ScopeFilters",
    "simhash_collision",
    "theorem1_bounds",
    "theorem1_t",
]

I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_DELETES = ("counting", "rebuild")


def simhash_collision(cosine: float) -> float:
    """Probability that one signed random projection agrees on two vectors at ``cosine``."""
    c = min(1.0, max(-1.0, float(cosine)))
    return 1.0 - math.acos(c) / math.pi


def theorem1_bounds(
    m: int, L: int, t: int, near_cosine: float, far_cosine: float, n: int
) -> tuple[float, float]:
    """Theorem 1's bounds for ``t`` of ``m`` arrays of ``L``-hash SimHash codes.

    Parameters
    ----------
    m, L, t : int
        Arrays, hashes per array, threshold on the score.
    near_cosine : float
        Similarity a true hit has at least (the cache threshold).
    far_cosine : float
        Similarity every stored vector has at most for a "far" query.
    n : int
        Stored vectors (the ``N`` of the union bound).

    Returns
    -------
    p_lower : float
        Lower bound on the probability a near query is reported near
        (``0`` where the theorem says nothing: ``t/m >= S_H**L``).
    q_upper : float
        Upper bound on the probability a far query is reported near
        (``1`` where the theorem says nothing: ``t/m <= N S_L**L``).
    """
    sh = simhash_collision(near_cosine) ** L
    sl = n * simhash_collision(far_cosine) ** L
    r = t / m
    p = 1.0 - math.exp(-2.0 * m * (sh - r) ** 2) if r < sh else 0.0
    q = math.exp(-2.0 * m * (r - sl) ** 2) if r > sl else 1.0
    return p, q


def theorem1_t(m: int, L: int, near_cosine: float, target_loss: float) -> int:
    """Largest ``t`` whose Theorem 1 bound keeps a near query's rejection at or under ``target_loss``.

    ``1 - exp(-2 m (S_H**L - t/m)**2) >= 1 - target_loss`` gives
    ``t <= m (S_H**L - sqrt(ln(1/target_loss) / (2 m)))``. Returns ``0`` when
    no positive ``t`` is covered (the filter would then answer nothing).
    """
    sh = simhash_collision(near_cosine) ** L
    t = m * (sh - math.sqrt(math.log(1.0 / target_loss) / (2.0 * m)))
    return max(0, math.floor(t))


class DistanceSensitiveBloomFilter:
    """``m`` SimHash-addressed bit arrays over one scope's unit vectors.

    Parameters
    ----------
    dim : int
        Width of the vectors.
    m : int
        Number of arrays (LSH functions).
    L : int
        Signed projections concatenated per array, 1..64.
    log_bits : int
        log2 of each array's size in bits, 6..30. ``None``: ``L`` (the
        paper's direct layout; then ``L`` must be at least 6).
    threshold : float
        Cosine a stored vector must reach to be a hit, in (-1, 1].
    t : int
        Initial score threshold, 1..m (set by :meth:`calibrate`).
    probes : int
        Extra codes a query checks per array (its least certain signs
        flipped one at a time), 0..L.
    deletes : {"counting", "rebuild"}
        How :meth:`remove` works (see the module docstring).
    seed : int
        Seed of the random projections.
    planes : ndarray of float32, shape (dim, m * L), optional
        The projection directions; default Gaussian (SimHash). See
        :meth:`from_projection` for the cache's learned projection.
    offsets : ndarray of float32, shape (m * L,), optional
        Subtracted from the projected coordinates before their sign is taken
        (a projection's centring); default zeros.
    """

    def __init__(
        self,
        dim: int,
        *,
        m: int = 16,
        L: int = 20,
        log_bits: int | None = None,
        threshold: float = 0.9,
        t: int = 1,
        probes: int = 0,
        deletes: str = "rebuild",
        seed: int = 0,
        planes: FloatArray | None = None,
        offsets: FloatArray | None = None,
    ) -> None:
        for name, val, lo, hi in (("dim", dim, 1, 1 << 20), ("m", m, 1, 4096), ("L", L, 1, 64)):
            if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
                raise ConfigError(f"{name} must be an int in [{lo}, {hi}], got {val!r}")
        log_b = L if log_bits is None else log_bits
        if isinstance(log_b, bool) or not isinstance(log_b, int) or not 6 <= log_b <= 30:
            raise ConfigError(f"log_bits must be an int in [6, 30] (L when None), got {log_b!r}")
        if not isinstance(threshold, (int, float)) or not -1.0 < float(threshold) <= 1.0:
            raise ConfigError(f"threshold must be a cosine in (-1, 1], got {threshold!r}")
        if isinstance(probes, bool) or not isinstance(probes, int) or not 0 <= probes <= L:
            raise ConfigError(f"probes must be an int in [0, L={L}], got {probes!r}")
        if deletes not in _DELETES:
            raise ConfigError(f"deletes must be one of {_DELETES}, got {deletes!r}")
        self.dim = dim
        self.m = m
        self.L = L
        self.log_bits = log_b
        self.threshold = float(threshold)
        self.probes = probes
        self.deletes = deletes
        self.t = 1
        self.set_t(t)
        planes_given = planes is not None
        if planes is None:
            rng = np.random.default_rng(seed)
            planes = rng.standard_normal((dim, m * L)).astype(np.float32)
        else:
            planes = np.ascontiguousarray(planes, dtype=np.float32)
            if planes.shape != (dim, m * L):
                raise ConfigError(f"planes must have shape ({dim}, {m * L}), got {planes.shape}")
        self.planes: FloatArray = planes
        if offsets is None:
            offsets = np.zeros(m * L, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.float32)
        if offsets.shape != (m * L,) or not np.isfinite(offsets).all():
            raise ConfigError(f"offsets must be finite with shape ({m * L},), got {offsets.shape}")
        self.offsets: FloatArray = offsets
        #: Name of the LSH family (``"simhash"``, ``"learned"`` or ``"custom"``).
        self.family = "custom" if planes_given else "simhash"
        self._words = np.zeros((0, 0), dtype=np.uint64)
        self._counts = np.zeros((0, 0), dtype=np.uint8)
        self._clear_arrays()
        self.n = 0
        self.removed = 0
        #: Theorem 1's ``t`` for the last calibration target (``None`` before).
        self.theorem_t: int | None = None
        #: Share of calibration near pairs the calibrated ``t`` rejects.
        self.calibrated_loss: float | None = None

    # -- state ----------------------------------------------------------------

    def _clear_arrays(self) -> None:
        size = 1 << self.log_bits
        if self.deletes == "counting":
            self._counts = np.zeros((self.m, size), dtype=np.uint8)
        else:
            self._words = np.zeros((self.m, size // 64), dtype=np.uint64)

    def set_t(self, t: int) -> None:
        """Set the score threshold (1..m) by hand."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= int(t) <= self.m:
            raise ConfigError(f"t must be an int in [1, m={self.m}], got {t!r}")
        self.t = int(t)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the projection planes not counted)."""
        return int(self._counts.nbytes if self.deletes == "counting" else self._words.nbytes)

    @property
    def bits_per_entry(self) -> float:
        """Memory of the arrays per live entry, in bits (``inf`` when empty)."""
        live = self.n - (self.removed if self.deletes == "rebuild" else 0)
        return 8.0 * self.nbytes / live if live > 0 else math.inf

    @property
    def stale_fraction(self) -> float:
        """Share of the inserted vectors removed since the last (re)build (``"rebuild"`` mode)."""
        return self.removed / self.n if self.n else 0.0

    def fill(self) -> float:
        """Share of set bits (counters above zero), over all arrays."""
        if self.deletes == "counting":
            return float(np.count_nonzero(self._counts)) / self._counts.size
        bits = np.unpackbits(self._words.view(np.uint8))
        return float(bits.mean()) if bits.size else 0.0

    # -- input ----------------------------------------------------------------

    def _check(self, vectors: FloatArray) -> FloatArray:
        a = np.asarray(vectors)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise IndexStateError(f"vectors must have shape (n, {self.dim}), got {np.shape(vectors)}")
        if not np.issubdtype(a.dtype, np.floating):
            raise IndexStateError(f"vectors must be floating point, got {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.size and not np.isfinite(a).all():
            raise IndexStateError("vectors contain NaN or inf")
        return a

    def _project(self, a: FloatArray) -> FloatArray:
        proj: FloatArray = np.ascontiguousarray(a @ self.planes)
        if self.offsets.any():
            proj -= self.offsets
        return proj

    def _addresses(self, a: FloatArray) -> npt.NDArray[np.int64]:
        """Addresses (n, m) of rows ``a``, projected a block at a time.

        The (rows, m * L) float32 projection of a whole 100k-row rebuild with
        m * L = 5120 would take 2 GB at once; blocks keep it near 64 MB.
        """
        step = max(1, (1 << 24) // (self.m * self.L))
        out = np.empty((len(a), self.m), dtype=np.int64)
        for s in range(0, len(a), step):
            proj = self._project(a[s : s + step])
            out[s : s + step] = K.dsbf_addresses(proj, self.m, self.L, self.log_bits)
        return out

    def _score_into(self, a: FloatArray, counts: npt.NDArray[np.uint8] | None, own: int, out: I32) -> None:
        """Scores of rows ``a`` into ``out``, a block at a time (``counts``: score counters, not bits)."""
        step = max(1, (1 << 24) // (self.m * self.L))
        for s in range(0, len(a), step):
            proj = self._project(a[s : s + step])
            part = out[s : s + step]
            if counts is not None:
                K.dsbf_score_counts(proj, self.m, self.L, self.log_bits, self.probes, counts, own, part)
            else:
                K.dsbf_score_bits(proj, self.m, self.L, self.log_bits, self.probes, self._words, part)

    @classmethod
    def from_projection(
        cls,
        projection: BaseProjection,
        *,
        m: int = 16,
        L: int = 20,
        seed: int = 0,
        **kwargs: object,
    ) -> DistanceSensitiveBloomFilter:
        """A filter hashing the signs of random rotations of a fitted projection's output.

        Array bits are ``sign(((v - mean) @ C.T) @ g)`` for Gaussian ``g`` in
        the projection's output space: SimHash in the space where the cache's
        learned projection keeps paraphrases close. Folded into one
        ``(dim, m * L)`` matrix and offset, so a query still costs one BLAS call.

        Parameters
        ----------
        projection : BaseProjection
            A fitted projection (``mean_`` (dim,), ``components_`` (k, dim)).
        m, L, seed
            As in the constructor (``seed`` draws the rotations).
        **kwargs
            Other constructor arguments (``log_bits``, ``threshold``, ``t``,
            ``probes``, ``deletes``).
        """
        if not projection.is_fitted():
            raise ConfigError("from_projection needs a fitted projection")
        comp = np.asarray(projection.components_, dtype=np.float64)
        mean = np.asarray(projection.mean_, dtype=np.float64)
        rng = np.random.default_rng(seed)
        g = rng.standard_normal((comp.shape[0], m * L))
        planes = (comp.T @ g).astype(np.float32)
        offsets = (mean @ comp.T @ g).astype(np.float32)
        f = cls(comp.shape[1], m=m, L=L, seed=seed, planes=planes, offsets=offsets, **kwargs)  # type: ignore[arg-type]
        f.family = "learned"
        return f

    # -- updates --------------------------------------------------------------

    def add(self, vectors: FloatArray) -> None:
        """Insert rows: ``O(m)`` array writes each after one projection.

        Parameters
        ----------
        vectors : ndarray of float, shape (n, dim) or (dim,)
        """
        a = self._check(vectors)
        if not len(a):
            return
        addr = self._addresses(a)
        if self.deletes == "counting":
            K.dsbf_count_add(addr, self._counts)
        else:
            K.dsbf_set_bits(addr, self._words)
        self.n += len(a)

    def remove(self, vectors: FloatArray) -> None:
        """Delete rows that were inserted.

        ``"counting"``: their counters go down. ``"rebuild"``: only counted
        (see :attr:`stale_fraction`); the bits stay, which can only send more
        queries to the engine.

        Raises
        ------
        IndexStateError
            ``"counting"`` mode, when a counter of a row is already zero (the
            row was never added); nothing is changed then.
        """
        a = self._check(vectors)
        if not len(a):
            return
        if self.deletes == "rebuild":
            self.removed = min(self.n, self.removed + len(a))
            return
        addr = self._addresses(a)
        # Check first so a bad call changes nothing.
        if np.any(self._counts[np.arange(self.m)[None, :], addr] == 0):
            raise IndexStateError("remove() of a vector that was never added (a counter is zero)")
        K.dsbf_count_remove(addr, self._counts)
        self.n -= len(a)

    def rebuild(self, vectors: FloatArray) -> None:
        """Clear the arrays and insert ``vectors`` (e.g. every live vector of the store)."""
        a = self._check(vectors)
        self._clear_arrays()
        self.n = 0
        self.removed = 0
        self.add(a)

    # -- queries --------------------------------------------------------------

    def scores(self, vectors: FloatArray) -> I32:
        """Per query, the number of arrays (0..m) reporting a set bit.

        Parameters
        ----------
        vectors : ndarray of float, shape (n, dim) or (dim,)

        Returns
        -------
        ndarray of int32, shape (n,)
        """
        a = self._check(vectors)
        out = np.zeros(len(a), dtype=np.int32)
        if len(a):
            self._score_into(a, self._counts if self.deletes == "counting" else None, 0, out)
        return out

    def might_contain(self, vectors: FloatArray) -> BoolArray:
        """``True`` where a stored vector may be within the threshold (ask the engine).

        ``False`` means "no stored vector at cosine >= threshold" up to the
        calibrated loss: the lookup can be answered as a miss locally.

        Parameters
        ----------
        vectors : ndarray of float, shape (n, dim) or (dim,)

        Returns
        -------
        ndarray of bool, shape (n,)
        """
        out: BoolArray = self.scores(vectors) >= self.t
        return out

    # -- calibration ----------------------------------------------------------

    def near_scores(
        self,
        stored: FloatArray,
        *,
        sample: int = 2000,
        perturbed: int | None = None,
        min_near: int = 2000,
        seed: int = 0,
    ) -> tuple[I32, I32]:
        """Scores near queries would get against a filter of ``stored``.

        Parameters
        ----------
        stored : ndarray of float, shape (n, dim)
            The vectors the filter holds (unit rows).
        sample : int
            Stored vectors searched exactly for a neighbour at cosine
            ``>= threshold`` among the others; each one found is a real near
            pair, scored leave-one-out (its own bits taken out).
        perturbed : int, optional
            Stored vectors copied at exactly the threshold cosine in a random
            direction (the hardest near query), scored against the filter.
            ``None``: as many as the real pairs fall short of ``min_near``.
        min_near : int
            Near queries wanted in all (see ``perturbed``).
        seed : int
            Seed of the sample and the perturbations.

        Returns
        -------
        real : ndarray of int32, shape (k,)
            Scores of the real near pairs (``k <= sample``).
        synthetic : ndarray of int32, shape (p,)
            Scores of the threshold-cosine copies.
        """
        x = self._check(stored)
        n = len(x)
        rng = np.random.default_rng(seed)
        addr = self._addresses(x)
        # Counters of everything stored, so each sampled row's own
        # contribution can be left out (bits cannot tell how many set them).
        counts = np.zeros((self.m, 1 << self.log_bits), dtype=np.uint8)
        K.dsbf_count_add(addr, counts)
        idx = rng.choice(n, size=min(sample, n), replace=False) if n else np.zeros(0, np.int64)
        has_near = np.zeros(len(idx), dtype=bool)
        for s in range(0, len(idx), 512):
            block = idx[s : s + 512]
            sims = x[block] @ x.T
            sims[np.arange(len(block)), block] = -np.inf
            # An exact duplicate of the row is a near pair like any other.
            has_near[s : s + len(block)] = sims.max(axis=1) >= self.threshold - 1e-6
        near_idx = idx[has_near]
        real = np.zeros(len(near_idx), dtype=np.int32)
        if len(near_idx):
            self._score_into(np.ascontiguousarray(x[near_idx]), counts, 1, real)
        k = max(0, min_near - len(real)) if perturbed is None else perturbed
        synth = np.zeros(0, dtype=np.int32)
        if k and n:
            base = x[rng.choice(n, size=k, replace=True)].astype(np.float64)
            base /= np.linalg.norm(base, axis=1, keepdims=True)
            noise = rng.standard_normal(base.shape)
            noise -= (noise * base).sum(axis=1, keepdims=True) * base
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            c = self.threshold
            q = (c * base + math.sqrt(max(0.0, 1.0 - c * c)) * noise).astype(np.float32)
            synth = np.zeros(k, dtype=np.int32)
            self._score_into(q, counts, 0, synth)
        return real, synth

    def calibrate(
        self,
        stored: FloatArray,
        *,
        target_loss: float = 0.005,
        sample: int = 2000,
        perturbed: int | None = None,
        min_near: int = 2000,
        seed: int = 0,
    ) -> int:
        """Set ``t`` from the scope's own data; returns it.

        ``t`` becomes the largest score threshold that rejects at most
        ``target_loss`` of the near queries of :meth:`near_scores` (the real
        near pairs among ``stored``, topped up to ``min_near`` with
        threshold-cosine copies, which are harder than real pairs), and never
        less than 1. :attr:`theorem_t` records Theorem 1's ``t`` for the same
        target and :attr:`calibrated_loss` the share actually rejected at the
        chosen ``t`` (above the target only when even ``t = 1`` rejects more:
        the filter cannot meet the target with these ``m, L, log_bits``, and
        the owner should not use it).

        Parameters
        ----------
        stored : ndarray of float, shape (n, dim)
            The vectors the filter holds.
        target_loss : float
            Share of true hits the filter may reject, in (0, 1).
        sample, perturbed, min_near, seed
            As in :meth:`near_scores`.

        Returns
        -------
        int
            The new ``t``.
        """
        if not isinstance(target_loss, float) or not 0.0 < target_loss < 1.0:
            raise ConfigError(f"target_loss must be a float in (0, 1), got {target_loss!r}")
        real, synth = self.near_scores(
            stored, sample=sample, perturbed=perturbed, min_near=min_near, seed=seed
        )
        allv = np.concatenate([real, synth])
        self.theorem_t = theorem1_t(self.m, self.L, self.threshold, target_loss)
        if not len(allv):
            self.set_t(max(1, self.theorem_t))
            self.calibrated_loss = None
            return self.t
        best = 1
        for t in range(1, self.m + 1):
            if float(np.mean(allv < t)) <= target_loss:
                best = t
            else:
                break
        self.set_t(best)
        self.calibrated_loss = float(np.mean(allv < best))
        return self.t

    def __repr__(self) -> str:
        return (
            f"DistanceSensitiveBloomFilter(m={self.m}, L={self.L}, log_bits={self.log_bits}, "
            f"t={self.t}, probes={self.probes}, deletes={self.deletes!r}, n={self.n})"
        )


class _Scope:
    """One scope's filter and the ids it holds."""

    __slots__ = ("calibrated", "capacity", "filter", "ids")

    def __init__(self, filt: DistanceSensitiveBloomFilter, capacity: int) -> None:
        self.filter = filt
        self.capacity = capacity
        self.ids: set[int] = set()
        self.calibrated = False


class ScopeFilters:
    """Per-scope distance-sensitive Bloom filters for a search-in-engine mode.

    Meant to sit in front of a remote vector search (``index="pgvector"``):
    before a lookup crosses the network, :meth:`maybe_near` says whether the
    scope may hold a vector within the threshold. ``False`` is answered
    locally as a miss; ``True`` means "ask the engine". It never answers a hit.

    What ``False`` promises:

    * the scope is unknown or holds no live entry: exactly true;
    * otherwise, the scope's filter was calibrated (:meth:`rebuild`) and the
      query scored under its ``t``: true except for at most about
      ``target_loss`` of true hits (the calibrated rate, measured on the
      scope's own near pairs at :meth:`rebuild`).

    A scope that has entries but no calibrated filter yet always answers
    ``True``. Adds after a rebuild only set more bits, so they can only turn
    answers to ``True`` (never hide an entry); removes leave their bits (a
    stale bit costs an engine query, never a wrong answer) until the owner
    calls :meth:`rebuild` with the live vectors, which :meth:`needs_rebuild`
    suggests when the scope has grown past the size its arrays were built for,
    a quarter of it is stale, or it has enough entries to calibrate.

    Not thread-safe: the owner serialises calls per instance (as it already
    does for the log it follows).

    Parameters
    ----------
    dim : int
        Embedding width.
    threshold : float
        The cache's similarity threshold (cosine), in (-1, 1].
    target_loss : float
        Share of true hits a calibrated filter may reject, in (0, 1).
    m, L : int
        Arrays and hashes per array (see :class:`DistanceSensitiveBloomFilter`).
    bits_per_entry : int
        Memory budget of the arrays per entry at a rebuild (>= 1); the arrays
        are a power of two, so they take between half and all of it.
    min_calibrate : int
        Entries a scope needs before :meth:`needs_rebuild` asks for the first
        calibration (smaller scopes always ask the engine).
    projection : BaseProjection, optional
        A fitted projection: hash signs of random rotations of its output
        (:meth:`DistanceSensitiveBloomFilter.from_projection`) instead of
        SimHash on the embeddings.
    seed : int
        Seed of the hash functions (each scope uses the same functions).
    """

    def __init__(
        self,
        dim: int,
        *,
        threshold: float = 0.9,
        target_loss: float = 0.005,
        m: int = 32,
        L: int = 12,
        bits_per_entry: int = 64,
        min_calibrate: int = 256,
        projection: BaseProjection | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(target_loss, float) or not 0.0 < target_loss < 1.0:
            raise ConfigError(f"target_loss must be a float in (0, 1), got {target_loss!r}")
        for name, val in (("m", m), ("bits_per_entry", bits_per_entry), ("min_calibrate", min_calibrate)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ConfigError(f"{name} must be a positive int, got {val!r}")
        self.dim = dim
        self.threshold = float(threshold)
        self.target_loss = target_loss
        self.m = m
        self.L = L
        self.bits_per_entry = bits_per_entry
        self.min_calibrate = min_calibrate
        self.projection = projection
        self.seed = seed
        self._scopes: dict[str, _Scope] = {}
        # Fail on bad settings now, not at a scope's first add.
        self._new_filter(min_calibrate)

    # -- internals --------------------------------------------------------------

    def _new_filter(self, capacity: int) -> DistanceSensitiveBloomFilter:
        # floor: the arrays never take more than bits_per_entry per entry at a
        # rebuild (between half and all of it).
        log_bits = min(30, max(6, math.floor(math.log2(max(1, capacity) * self.bits_per_entry / self.m))))
        kw: dict[str, object] = {"log_bits": log_bits, "threshold": self.threshold}
        if self.projection is not None:
            return DistanceSensitiveBloomFilter.from_projection(
                self.projection, m=self.m, L=self.L, seed=self.seed, **kw
            )
        return DistanceSensitiveBloomFilter(self.dim, m=self.m, L=self.L, seed=self.seed, **kw)  # type: ignore[arg-type]

    @staticmethod
    def _scope_key(scope: str) -> str:
        if not isinstance(scope, str):
            raise IndexStateError(f"scope must be a str, got {type(scope).__name__}")
        return scope

    @staticmethod
    def _entry_id(entry_id: int) -> int:
        if isinstance(entry_id, bool) or not isinstance(entry_id, (int, np.integer)):
            raise IndexStateError(f"entry_id must be an int, got {entry_id!r}")
        return int(entry_id)

    # -- updates ----------------------------------------------------------------

    def add(self, scope: str, entry_id: int, vector: FloatArray) -> None:
        """Record a stored entry: ``O(m)`` bit writes after one projection.

        Parameters
        ----------
        scope : str
        entry_id : int
            The store's id of the entry (unique within the scope).
        vector : ndarray of float, shape (dim,)
            The entry's unit embedding.

        Raises
        ------
        IndexStateError
            Bad vector, or ``entry_id`` already live in ``scope``.
        """
        key = self._scope_key(scope)
        eid = self._entry_id(entry_id)
        st = self._scopes.get(key)
        if st is not None and eid in st.ids:
            raise IndexStateError(f"entry {eid} is already in scope {key!r}")
        if np.shape(vector) != (self.dim,):
            raise IndexStateError(f"vector must have shape ({self.dim},), got {np.shape(vector)}")
        if st is None:
            st = _Scope(self._new_filter(self.min_calibrate), self.min_calibrate)
        st.filter.add(np.asarray(vector).reshape(1, -1))
        self._scopes[key] = st
        st.ids.add(eid)

    def remove(self, scope: str, entry_id: int) -> None:
        """Forget a deleted entry (its bits stay until :meth:`rebuild`).

        Raises
        ------
        IndexStateError
            ``entry_id`` is not live in ``scope``.
        """
        key = self._scope_key(scope)
        eid = self._entry_id(entry_id)
        st = self._scopes.get(key)
        if st is None or eid not in st.ids:
            raise IndexStateError(f"entry {eid} is not in scope {key!r}")
        st.ids.discard(eid)
        st.filter.removed = min(st.filter.n, st.filter.removed + 1)

    def rebuild(self, scope: str, entry_ids: npt.ArrayLike, vectors: FloatArray) -> None:
        """Rebuild a scope's filter from its live entries and calibrate ``t`` on them.

        Parameters
        ----------
        scope : str
        entry_ids : array-like of int, shape (n,)
            Every live entry of the scope (from the store).
        vectors : ndarray of float, shape (n, dim)
            Their unit embeddings.
        """
        key = self._scope_key(scope)
        ids = np.asarray(entry_ids).reshape(-1)
        if not np.issubdtype(ids.dtype, np.integer) and ids.size:
            raise IndexStateError(f"entry_ids must be integers, got {ids.dtype}")
        a = np.asarray(vectors)
        if a.ndim != 2 or len(a) != len(ids):
            raise IndexStateError(f"vectors must have shape ({len(ids)}, {self.dim}), got {a.shape}")
        if len(np.unique(ids)) != len(ids):
            raise IndexStateError("entry_ids must be unique")
        if not len(ids):
            self._scopes.pop(key, None)
            return
        filt = self._new_filter(max(self.min_calibrate, len(ids)))
        # Sized for the rebuild's count; growth past twice that asks for the next rebuild.
        capacity = 2 * max(self.min_calibrate, len(ids))
        filt.add(a)
        st = _Scope(filt, capacity)
        st.ids = {int(i) for i in ids}
        if len(ids) >= self.min_calibrate:
            filt.calibrate(np.ascontiguousarray(a, dtype=np.float32), target_loss=self.target_loss)
            # A filter whose even t = 1 rejects more near pairs than allowed
            # stays uncalibrated: it always asks the engine.
            st.calibrated = filt.calibrated_loss is not None and filt.calibrated_loss <= self.target_loss
        self._scopes[key] = st

    # -- queries ----------------------------------------------------------------

    def maybe_near(self, scope: str, query: FloatArray) -> bool:
        """``False`` when ``scope`` holds no entry within the threshold of ``query``.

        Parameters
        ----------
        scope : str
        query : ndarray of float, shape (dim,)
            Unit query embedding.

        Returns
        -------
        bool
            ``False``: answer the lookup as a miss without the engine.
            ``True``: ask the engine.
        """
        st = self._scopes.get(self._scope_key(scope))
        q = np.asarray(query)
        if st is None or not st.ids:
            if q.shape != (self.dim,):
                raise IndexStateError(f"query must have shape ({self.dim},), got {q.shape}")
            return False
        if not st.calibrated:
            st.filter._check(q)  # same input errors whatever the state
            return True
        return bool(st.filter.might_contain(q.reshape(1, -1) if q.ndim == 1 else q)[0])

    def needs_rebuild(self, scope: str) -> bool:
        """Whether :meth:`rebuild` would help the scope (first calibration, growth, deletes)."""
        st = self._scopes.get(self._scope_key(scope))
        if st is None:
            return False
        live = len(st.ids)
        if not st.calibrated:
            return live >= self.min_calibrate
        return st.filter.n > st.capacity or st.filter.stale_fraction > 0.25

    def stats(self, scope: str) -> dict[str, float | int | bool]:
        """Live entries, calibrated ``t`` and loss, bits per entry of one scope."""
        st = self._scopes.get(self._scope_key(scope))
        if st is None:
            return {"entries": 0, "calibrated": False}
        f = st.filter
        return {
            "entries": len(st.ids),
            "calibrated": st.calibrated,
            "t": f.t,
            "calibrated_loss": float("nan") if f.calibrated_loss is None else f.calibrated_loss,
            "bits_per_entry": 8.0 * f.nbytes / max(1, len(st.ids)),
        }

    def scopes(self) -> list[str]:
        """Scopes with a filter."""
        return list(self._scopes)
