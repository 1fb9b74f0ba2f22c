"""Multiprobe grid index over projected embeddings, with an exact ball filter.

How a lookup works
------------------
1. **Cells.** The first ``m`` projected coordinates are cut by per-dimension
   quantile boundaries into ``G`` slices each, so every slice holds about the
   same share of the data (min/max boundaries leave most cells nearly empty and
   a few overfull). Only occupied cells exist: a hash table maps a cell's code
   to a block of rows, and the rows of a cell are stored contiguously.
2. **Probe.** Cells are visited best-first by the lower bound of the distance
   from the query to the cell box (its *wall distance*, summed over
   dimensions), from the home cell outwards. The walk stops at a probe radius,
   or after ``n_probe`` occupied cells or ``max_scan`` scanned rows. Empty cells
   are skipped and the walk goes on, which is the paper's nearest-occupied-cell
   fallback without a precomputed O(G^m) BFS table. ``probe="orthant"`` gives
   the paper's scheme (home cell plus the orthant cells by wall distance).
3. **Filter.** Every row of a visited cell passes a ball test on a short vector
   before it becomes a candidate, so the cache re-ranks tens of rows instead of
   thousands. Short vectors are stored as int8 with one scale (a quarter of
   the bytes of float32, which also quarters the memory traffic of a scan;
   the rounding error is added to the filter radius) and tested with one SIMD
   sum per row.

The exact filter
----------------
The cache's projection is linear: ``low = x @ W + b``. On the first large add
the index recovers ``W`` and ``b`` by least squares from the ``(full, low)``
rows it is given, checks on held-out rows that the map is exact, and keeps an
orthonormal basis ``U`` of its row space. Each row is stored as
``v = (z, s)`` with ``z = x @ U`` and ``s = sqrt(1 - |z|^2)`` the norm of the
part of the unit embedding outside that space. For unit ``x`` and ``q``,
``|x - q|^2 = |z_x - z_q|^2 + |r_x - r_q|^2 >= |v_x - v_q|^2``, and
``cos(x, q) >= t`` means ``|x - q|^2 <= 2 - 2t``, so rows with
``|v_x - v_q|^2 > 2 - 2t`` cannot be hits: the filter never loses one. (A
projection that is not linear disables the filter; candidates are then the
rows of the visited cells.)

The probe radius
----------------
The same bound applied to the ``m`` hashed coordinates gives a probe radius
that loses nothing either, but in 8 dimensions it reaches most cells. The
radius actually used is calibrated from the data: the index mines near-duplicate
pairs among the rows of its calibration set (exact cosine, found through the
filter), measures ``rho = |low_x - low_q|_m / |x - q|`` for each, and probes to
``quantile(rho, probe_quantile) * sqrt(2 - 2t)``; when there are too few pairs
it falls back to the lossless radius.

Streaming
---------
Inserts and deletes are amortised O(1) (see :mod:`semcache.index.grid_kernels`).
Until ``min_calibration`` rows have been seen everything sits in one cell with
the filter off (a scan, which is what an index that small should do anyway),
and the index keeps their embeddings to calibrate from. Boundaries are refitted
when the index has grown ``recalibrate_growth`` times since the last fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from semcache._types import FloatArray, IdArray
from semcache.errors import ConfigError, IndexStateError
from semcache.index import _kernels_common as KC
from semcache.index import grid_kernels as K
from semcache.index.base import as_ids, check_batch

__all__ = ["GridIndex", "LinearMap", "fit_linear_map", "mine_near_pairs", "quantise", "scan_budget"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LinearMap:
    """A projection ``low = x @ W + b`` recovered from data, in usable form.

    Attributes
    ----------
    b : ndarray of float32, shape (k,)
        Intercept.
    T : ndarray of float32, shape (k, r)
        ``z = (low - b) @ T`` are orthonormal coordinates of ``x`` in the map's
        row space (rank ``r``).
    Tinv : ndarray of float32, shape (r, k)
        ``low = z @ Tinv + b``.
    tol2 : float
        Slack added to squared filter radii for float32 rounding, measured on
        held-out rows.
    """

    b: FloatArray
    T: FloatArray
    Tinv: FloatArray
    tol2: float

    def to_z(self, low: FloatArray) -> FloatArray:
        """Orthonormal coordinates, shape (n, r), of projected rows (n, k)."""
        return np.ascontiguousarray((low - self.b) @ self.T, dtype=np.float32)

    def reordered(self, cols: npt.NDArray[np.int64]) -> LinearMap:
        """The same map for projected rows whose columns are reordered to ``low[:, cols]``."""
        return LinearMap(
            b=np.ascontiguousarray(self.b[cols]),
            T=np.ascontiguousarray(self.T[cols]),
            Tinv=np.ascontiguousarray(self.Tinv[:, cols]),
            tol2=self.tol2,
        )

    def lipschitz(self, m: int) -> float:
        """Largest factor by which the first ``m`` coordinates of ``low`` stretch ``|Δx|``."""
        if m == 0:
            return 0.0
        return float(np.linalg.norm(self.Tinv[:, :m].astype(np.float64), ord=2))


def fit_linear_map(full: FloatArray, low: FloatArray, *, seed: int = 0) -> LinearMap | None:
    """Recover a linear projection from rows and their projections.

    Parameters
    ----------
    full : ndarray of float32, shape (n, d)
        Unit embeddings; ``n`` must exceed ``d + 1`` by a margin for held-out checks.
    low : ndarray of float32, shape (n, k)
        Their projections.
    seed : int
        Seed of the fit / held-out split.

    Returns
    -------
    LinearMap or None
        None when the rows do not determine a map or the projection is not
        linear (held-out error above 1e-3 of the coordinates' spread).
    """
    n, d = full.shape
    if n < d + 64:
        return None
    rng = np.random.default_rng(seed)
    # A linear map is pinned down by a few times d rows; more only costs time.
    perm = rng.permutation(n)[: max(4 * d, 2048)]
    n_fit = max(d + 32, int(0.75 * len(perm)))
    fit, val = perm[:n_fit], perm[n_fit:]
    F = np.hstack([full[fit].astype(np.float64), np.ones((len(fit), 1))])
    # Directions the rows barely span are not determined by them; the cutoff
    # gives the minimum-norm map there instead of noise with a huge norm
    # (which would inflate the Lipschitz bound of the exact probe radius).
    beta, *_ = np.linalg.lstsq(F, low[fit].astype(np.float64), rcond=1e-3)
    W, b = beta[:d], beta[d]
    pred = full[val].astype(np.float64) @ W + b
    spread = float(np.std(low[fit].astype(np.float64))) + 1e-12
    if float(np.max(np.abs(pred - low[val]))) > 1e-3 * spread:
        return None
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    keep = 1e-6 * S[0] < S if S.size and S[0] > 0 else np.zeros(0, dtype=bool)
    if not keep.any():
        return None
    S, Vt, U = S[keep], Vt[keep], U[:, keep]
    T = (Vt.T / S).astype(np.float32)
    Tinv = (S[:, None] * Vt).astype(np.float32)
    bm = b.astype(np.float32)
    # How far float32 arithmetic puts the stored vector from the exact one.
    z_low = (low[val] - bm) @ T
    z_full = full[val].astype(np.float64) @ U
    err = float(np.max(np.linalg.norm(z_low - z_full, axis=1))) if len(val) else 0.0
    err = 2.0 * err + 1e-5  # z and the residual norm each carry this error
    return LinearMap(b=bm, T=np.ascontiguousarray(T), Tinv=np.ascontiguousarray(Tinv), tol2=err)


def stored_vectors(low: FloatArray, lmap: LinearMap | None, width: int) -> FloatArray:
    """The vectors rows are stored as (see the module docstring), shape (n, width)."""
    out = np.zeros((low.shape[0], width), dtype=np.float32)
    if lmap is None:
        w = min(width, low.shape[1])
        out[:, :w] = low[:, :w]
        return out
    z = lmap.to_z(low)
    out[:, :-1] = z
    out[:, -1] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(z.astype(np.float64) ** 2, axis=1)))
    return out


_QMAX = 127.0
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)


def quantise(vecs: FloatArray, qinv: float) -> npt.NDArray[np.int8]:
    """Stored form of float vectors: ``round(vecs * qinv)`` as int8 (clipped to the range).

    The index picks ``qinv`` so nothing is clipped; the rounding error, at
    most ``0.5 / qinv`` per coordinate, is added to the filter radius.
    """
    q = np.rint(vecs.astype(np.float64) * qinv)
    return np.ascontiguousarray(np.clip(q, -_QMAX, _QMAX).astype(np.int8))


def mine_near_pairs(
    full: FloatArray,
    threshold: float,
    *,
    n_queries: int = 1000,
    max_refs: int = 30_000,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Pairs of rows with cosine >= ``threshold``: each sampled query's matches.

    Exact cosine of ``n_queries`` sampled rows against up to ``max_refs`` rows
    (one BLAS product per block, ~10 GFlop at the defaults: about a second on
    one core, paid once per calibration).

    Parameters
    ----------
    full : ndarray of float32, shape (n, d)
        Unit embeddings.
    threshold : float
    n_queries, max_refs : int
        Sample sizes.
    seed : int

    Returns
    -------
    a, b : ndarray of int64, shape (p,)
        Row pairs (query row, matching row), ``a != b``.
    cos : ndarray of float32, shape (p,)
    """
    n = full.shape[0]
    rng = np.random.default_rng(seed)
    refs = np.arange(n) if n <= max_refs else np.sort(rng.choice(n, max_refs, replace=False))
    qs = refs if len(refs) <= n_queries else rng.choice(refs, n_queries, replace=False)
    A: list[npt.NDArray[np.int64]] = []
    B: list[npt.NDArray[np.int64]] = []
    C: list[npt.NDArray[np.float32]] = []
    R = np.ascontiguousarray(full[refs])
    for i in range(0, len(qs), 256):
        qb = qs[i : i + 256]
        sims = full[qb] @ R.T
        qi, rj = np.nonzero(sims >= threshold)
        a, b = qb[qi], refs[rj]
        keep = a != b
        A.append(a[keep])
        B.append(b[keep])
        C.append(sims[qi, rj][keep].astype(np.float32))
    if not A:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(A), np.concatenate(B), np.concatenate(C)


def _same_order(a: npt.NDArray[np.int64] | None, b: npt.NDArray[np.int64] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a, b))


def _relative_order(old: npt.NDArray[np.int64] | None, new: npt.NDArray[np.int64] | None,
                    k: int) -> npt.NDArray[np.int64]:
    """Columns of rows in order ``old`` that give them in order ``new`` (None: as given)."""
    inv_old = np.argsort(old) if old is not None else np.arange(k)
    return inv_old[new] if new is not None else inv_old


def _pool_array(shape: int | tuple[int, int], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A zeroed pool array whose pages are all touched now.

    ``np.zeros`` maps zero pages lazily, so the first write to each page of a
    pool's spare room (where full cells move) would fault then; with
    transparent huge pages one such fault zeroes 2 MB and cost a single
    insert 100-400 us at 1M entries. Touching the pages here moves that cost
    to the (re)build, which pays a full copy of the pool anyway.
    """
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def scan_budget(n: int, share: float, min_scan: int) -> int:
    """Rows a lookup of ``n`` entries may scan: ``share`` of them, at least ``min_scan``.

    ``share >= 1`` lifts the bound (every row, and one more so the walk never
    stops on it).
    """
    return max(min_scan, int(share * n)) if share < 1.0 else n + 1


def _pow2(n: int) -> int:
    return 1 << max(4, (max(2, n) - 1).bit_length())


def _table(slots: int) -> npt.NDArray[np.int64]:
    """An empty hash table of ``slots`` slots (a power of two).

    One int64 array of ``2 * slots``, key of slot ``s`` at ``2 * s`` (``-1``:
    empty) and its value at ``2 * s + 1`` (see :mod:`semcache.index.grid_kernels`).
    """
    return np.full(2 * slots, -1, dtype=np.int64)


def _slots(table: npt.NDArray[np.int64]) -> int:
    """Number of slots of a hash table made by :func:`_table` (half its length)."""
    return len(table) // 2


def _id_slots(n: int) -> int:
    """Slots of an id table for ``n`` ids: a power of two at most 3/4 full.

    The id tables are the largest structure after the stored vectors (16 bytes a
    slot: the id and its row's packed cell and position; one table per grid);
    at most half full they cost up to 64 bytes an entry just past a power of
    two, which alone would break the 15% memory budget of a two-table index.
    Linear probing at 3/4 load still finds an id in ~2.5 probes, and only
    inserts and deletes look ids up.
    """
    return _pow2((4 * n) // 3 + 2)


#: Spare pool rows past the blocks after a build or a compaction, as a share
#: of the entries: full cells move there (see :func:`_end_room`).
END_ROOM = 0.125


def _end_room(n: int) -> int:
    """Spare pool rows past the blocks for ``n`` entries."""
    return int(END_ROOM * n) + 64


def _ids_overfull(n: int, slots: int) -> bool:
    """True when ``n`` ids would fill an id table of ``slots`` beyond 3/4."""
    return 4 * n > 3 * slots


#: The lookup kernel, entered without numba's dispatcher (see LookupPlan.run).
_GRID_LOOKUP = KC.entry_point(K.grid_lookup)


class LookupPlan:
    """The lookup of one or more grids as one kernel call (:func:`~semcache.index.grid_kernels.grid_lookup`).

    It stacks the grids' plan rows and keeps the parts they came from, which
    keeps every array they point into alive. A grid drops its part when an
    attribute is rebound (``GridIndex.__setattr__``); the next run sees a
    part that is not the one it holds and restacks, so a plan never reads an
    array the grid has replaced. The radii of a threshold are kept until then.

    Parameters
    ----------
    grids : list of GridIndex
        The tables, in the order their candidates are collected.
    """

    def __init__(self, grids: list[GridIndex]) -> None:
        self._grids = grids
        self._parts: list[tuple[Any, ...]] = []
        self._rows = np.zeros((0, K.PLAN_WIDTH), dtype=np.int64)
        self._params: dict[float, F64] = {}
        self._no_rows = np.zeros((0, 1), dtype=np.float32)
        self._no_ids = np.zeros(0, dtype=np.int64)

    def run(self, q: FloatArray, threshold: float, max_points: int, out: IdArray,
            extra: tuple[FloatArray, IdArray, int] | None = None) -> int:
        """Collect the candidates of query ``q`` into ``out``.

        ``q`` must be a float32 C-contiguous row of the grids' width and
        ``out`` an int64 array: the kernel is entered without type checks
        (:func:`~semcache.index._kernels_common.entry_point`). ``extra`` is (rows,
        ids, n) of rows outside the grids that the first grid filters too.

        Returns the number of ids in ``out``, or ``-(needed)`` when it is too short.
        """
        parts = self._parts
        stale = len(parts) != len(self._grids)
        if not stale:
            for g, part in zip(self._grids, parts, strict=True):
                if g._lookup is not part:
                    stale = True
                    break
        if stale:
            parts = self._parts = [g._lookup_part() for g in self._grids]
            self._rows = np.ascontiguousarray(np.stack([p[0] for p in parts]))
            self._params.clear()
        params = self._params.get(threshold)
        if params is None:
            if len(self._params) >= 64:  # callers that vary the threshold freely
                self._params.clear()
            params = np.array([g._lookup_params(threshold) for g in self._grids],
                              dtype=np.float64)
            self._params[threshold] = params
        if extra is None:
            return int(_GRID_LOOKUP(q, self._rows, params, max_points, out, self._no_rows,
                                    self._no_ids, 0))
        return int(_GRID_LOOKUP(q, self._rows, params, max_points, out, *extra))


class GridIndex:
    """Multiprobe grid over the first ``m`` projected coordinates (see the module docstring).

    Parameters
    ----------
    m : int
        Number of projected coordinates hashed into the grid (<= k). The
        default ``m=6, grid=3, max_scan=0.15`` is the fastest single-grid
        setting measured with recall >= 0.995 of threshold hits at 0.85, 0.9
        and 0.95 on the QQP corpus (``benchmarks/lab/grid_budget_bench.py``,
        N = 92k: .9975 / 1 / 1; 0.1 gives .994 at 0.85), with a learned
        projection of width 32. Two grids over different coordinates do
        better (:class:`~semcache.index.multigrid.MultiGridIndex`).
    grid : int
        Cells per dimension ``G`` (``G**m`` must fit in int64).
    probe : {"calibrated", "exact", "orthant"}
        How far to probe: to the calibrated radius, to the lossless radius, or
        the paper's orthant scheme (cells by wall distance, budget only).
    probe_quantile : float
        Quantile of the near-pair stretch ratio used for the calibrated probe radius.
    probe_margin : float
        Factor on the calibrated probe and filter radii.
    n_probe : int
        At most this many occupied cells per lookup.
    max_scan : float
        At most this share of the entries is scanned per lookup (the walk stops
        after the cell that crosses it). This budget, not the radius, is what
        bounds lookup cost: on MiniLM embeddings the calibrated ball reaches a
        large share of the cells, while the cells nearest the query hold
        nearly all the hits.
    min_scan : int
        The budget is never below this many rows: scanning a couple of
        thousand short vectors costs tens of microseconds, and small indexes
        have cells too coarse for a 15% budget to reach every hit.
    filter : {"calibrated", "exact", "none"}
        ``"calibrated"``: rows are stored as their projected coordinates and
        kept within the calibrated radius (never beyond the lossless one);
        ``"exact"``: rows are stored as ``(z, s)`` and kept within the lossless
        radius of the module docstring; ``"none"``: every row of a visited cell.
    filter_quantile : float
        Quantile of the near-pair ratio used for the calibrated filter radius.
        The quantile is raised by its standard error over the calibration
        pairs, ``sqrt(q (1 - q) / pairs)``: there are only a few hundred to a
        thousand pairs, so a thin tail's sample quantile is noisy and the
        radius should lean wide when they are fewest. Every row the filter
        keeps costs an exact 384-d re-rank, and the ratio's last 0.5% is a
        long tail: with two tables on 92k real rows (912 pairs), 0.995 keeps
        128 rows per lookup at cosine 0.85 where 0.999 without the correction
        kept 290, at the same recall (1 / 1 / 1; 0.98 is the first to lose a
        hit); on 10k rows (265 pairs) it keeps the recall of 0.999, which the
        uncorrected 0.995 did not (one miss of 99 hits at 0.9)
        (``benchmarks/lab/filter_quantile_bench.py``).
    calibration_threshold : float
        Cosine from which rows count as near-duplicates when calibrating.
    min_pairs : int
        Fewer near pairs than this: use the lossless radii.
    min_calibration : int
        Rows needed before the first calibration (must exceed the embedding
        width for the map to be recovered).
    recalibrate_growth : float
        Refit the boundaries when the index has grown this much.
    slack : float
        Spare room per cell block at a build or a compaction, as a share of
        its rows. A row inserted into a full block moves the block to the
        end of the pool with twice the room, leaving its old place dead;
        when the pool's end is full, the live rows are copied into a fresh
        pool (dead blocks dropped, every block back to this room). So while
        entries come in, the pool holds at most ``1 + slack + END_ROOM`` rows
        an entry (plus 2 a cell), and it is copied about every ``slack * n``
        inserts; deletes shrink it once it is twice that. Measured with two
        tables on 10k real rows, 2,000 single inserts and their deletes (the
        churn of ``benchmarks/index_bench.py``), then 4,000 more inserts:
        0.25 leaves the index 12.1% beyond the raw vectors after the churn
        and 11.9% after the inserts (11.1% right after the build) and copies
        each table's pool once in the 2,000 inserts; 0.125 leaves 11.4% and
        11.5% (10.4%) but copies it twice.
    random_state : int
        Seed of every sample.
    block : int
        Which block of coordinates is hashed: with ``m`` hashed coordinates
        (after ``cell_rows``), coordinates ``block * m .. block * m + m - 1``
        (wrapping around past the last one). Table ``t`` of a
        :class:`~semcache.index.multigrid.MultiGridIndex` hashes block ``t``,
        so the tables hash disjoint coordinates; the filter uses all of them.
    cell_rows : int, optional
        When set, each calibration hashes only as many coordinates (at most
        ``m``) as give cells of about this many rows: ``round(log_G(n /
        cell_rows))``. A scan costs a few ns per row and tens to hundreds per
        cell visited, so cells far smaller than ~100 rows cost more in probing
        than they save in scanning, and far larger ones scan rows the
        filter rejects anyway.

    Attributes
    ----------
    n_pairs_ : int
        Near pairs the last calibration found.
    last_stats : ndarray of int64, shape (3,)
        (occupied cells visited, rows scanned, cells popped) of the last lookup.
    """

    kind = "grid"
    _lookup: tuple[Any, ...] | None = None
    _plan: LookupPlan | None = None

    def __init__(
        self,
        m: int = 6,
        grid: int = 3,
        probe: str = "calibrated",
        probe_quantile: float = 0.999,
        probe_margin: float = 1.1,
        n_probe: int = 1 << 20,
        max_scan: float = 0.15,
        min_scan: int = 2048,
        filter: str = "calibrated",
        filter_quantile: float = 0.995,
        calibration_threshold: float = 0.8,
        min_pairs: int = 50,
        min_calibration: int = 1024,
        recalibrate_growth: float = 4.0,
        slack: float = 0.25,
        random_state: int = 0,
        block: int = 0,
        cell_rows: int | None = None,
    ) -> None:
        if not isinstance(m, int) or m < 1:
            raise ConfigError(f"m must be a positive int, got {m!r}")
        if not isinstance(grid, int) or grid < 2:
            raise ConfigError(f"grid must be an int >= 2, got {grid!r}")
        if m * math.log2(grid) > 62:
            raise ConfigError(f"grid**m = {grid}**{m} does not fit in int64")
        if probe not in ("calibrated", "exact", "orthant"):
            raise ConfigError(f"probe must be 'calibrated', 'exact' or 'orthant', got {probe!r}")
        if filter not in ("calibrated", "exact", "none"):
            raise ConfigError(f"filter must be 'calibrated', 'exact' or 'none', got {filter!r}")
        if not (0.0 < probe_quantile <= 1.0 and 0.0 < filter_quantile <= 1.0) or probe_margin <= 0:
            raise ConfigError("quantiles must be in (0, 1] and probe_margin > 0")
        if n_probe < 1 or not 0.0 < max_scan <= 1.0 or min_scan < 1:
            raise ConfigError("n_probe and min_scan must be >= 1 and max_scan in (0, 1]")
        if recalibrate_growth <= 1.0 or min_calibration < 2 or slack < 0:
            raise ConfigError("recalibrate_growth must be > 1, min_calibration >= 2, slack >= 0")
        if not isinstance(block, int) or block < 0:
            raise ConfigError(f"block must be a non-negative int, got {block!r}")
        if cell_rows is not None and (not isinstance(cell_rows, int) or cell_rows < 1):
            raise ConfigError(f"cell_rows must be None or a positive int, got {cell_rows!r}")
        self.m = m
        self.grid = grid
        self.probe = probe
        self.probe_quantile = probe_quantile
        self.probe_margin = probe_margin
        self.n_probe = n_probe
        self.max_scan = max_scan
        self.min_scan = min_scan
        self.filter = filter
        self.filter_quantile = filter_quantile
        self.calibration_threshold = calibration_threshold
        self.min_pairs = min_pairs
        self.min_calibration = min_calibration
        self.recalibrate_growth = recalibrate_growth
        self.slack = slack
        self.random_state = random_state
        self.block = block
        self.cell_rows = cell_rows

        self._k: int | None = None
        # Column order that puts the hashed coordinates first (None: as given),
        # set by each calibration. Distances are the same in any column order,
        # so everything inside works on permuted rows.
        self._perm: npt.NDArray[np.int64] | None = None
        self._d: int | None = None
        self._map: LinearMap | None = None
        self._rho: float | None = None  # calibrated stretch ratio of the probe
        self._rho_by_m: F64 | None = None  # ... for every number of hashed coordinates
        self._rho_filter: float | None = None  # and of the filter
        self._rho_exact = math.inf
        self._lip_k = math.inf
        self.n_pairs_ = 0
        self._calibrated_at = 0
        self._recalibrate_at = 0
        # Rows kept (full, low) until a calibration succeeds.
        self._res_full: list[FloatArray] = []
        self._res_low: list[FloatArray] = []
        self._res_ids: list[IdArray] = []
        self._res_n = 0
        # Stored vectors are int8 in units of 1 / _qinv (see quantise());
        # _qerr bounds the rounding error per coordinate, in projected units.
        self._qinv = 1.0
        self._qerr = 0.0
        self._m_eff = 0
        self._edges = np.zeros((0, grid - 1), dtype=np.float32)
        self._b = np.zeros(1, dtype=np.float32)
        self._T = np.zeros((1, 1), dtype=np.float32)
        self._mapped = 0
        self._width = 2
        self._alloc_empty(2)
        self._out = np.empty(256, dtype=np.int64)
        #: (occupied cells visited, rows scanned, cells popped) of the last lookup.
        self.last_stats = np.zeros(3, dtype=np.int64)
        self._work_f = np.empty(1, dtype=np.float64)
        self._work_i = np.empty(1, dtype=np.int64)
        self._size_work()

    def __getstate__(self) -> dict[str, Any]:
        # Addresses mean nothing in a copy (pickle or deepcopy): a copy holds
        # no plan row, so its plan (which sees that its parts are no longer
        # the grids' own) restacks from the copy's arrays at the first lookup.
        state = dict(self.__dict__)
        state["_lookup"] = None
        return state

    def __setattr__(self, name: str, value: object) -> None:
        # A lookup reads the grid's arrays through a plan row of their
        # addresses (see _lookup_part). Rebinding any attribute may replace
        # one of them or change a radius, so the row is dropped and the next
        # lookup builds it again; arrays changed in place (what inserts and
        # removes do) keep their addresses.
        object.__setattr__(self, name, value)
        if name != "_lookup":
            object.__setattr__(self, "_lookup", None)

    # ------------------------------------------------------------------ state

    def _alloc_empty(self, width: int, pool: int = 64, cells: int = 16) -> None:
        self._meta = np.zeros(5, dtype=np.int64)
        self._cells = np.zeros((cells, 4), dtype=np.int64)
        self._ctab = _table(_pow2(2 * cells))  # cell code -> cell number
        self._pvec = _pool_array((pool, width), np.int8)
        self._pids = _pool_array(pool, np.int64)
        self._itab = _table(64)  # id -> its row's packed (cell, offset in the cell's block)

    def _size_work(self) -> None:
        """Scratch of the lookup and insert kernels, allocated once per calibration.

        The probe enumerates every cell at most once, so ``G**m`` heap nodes
        always suffice; beyond 16k nodes the walk stops pushing, which only
        matters for grids far finer than the data.
        """
        m = max(1, self._m_eff)
        nodes = int(min(self.grid**m, 16_384, 64 * m + 8 * min(self.n_probe, 4096) * m))
        nodes = max(nodes, 2)
        self._work_f = np.empty(nodes, dtype=np.float64)
        # A node of the general walk is a step vector; the binary walk's is
        # (code, position).
        binary = self.grid == 2 and self.probe != "orthant"
        self._work_i = np.empty(nodes * (2 if binary else m + 2), dtype=np.int64)
        self._heap = np.empty(nodes, dtype=np.int64)
        self._hs = np.empty(2 * m, dtype=np.int64)
        self._vec_f = np.empty(max(self._width, 1), dtype=np.float32)
        self._vec_q = np.empty(max(self._width, 1), dtype=np.int8)
        # The query in this grid's column order, and that order (see grid_lookup).
        self._q_row = np.empty(max(self._k or 0, 1), dtype=np.float32)
        self._ident = np.arange(max(self._k or 0, 1), dtype=np.int64)
        self._order = np.empty(m, dtype=np.int64)
        self._gap2 = np.empty(m, dtype=np.float64)

    def __len__(self) -> int:
        return int(self._meta[0])

    def __contains__(self, entry_id: object) -> bool:
        if not isinstance(entry_id, int | np.integer):
            return False
        return bool(KC.table_find(self._itab, int(entry_id)) >= 0)  # a negative id is never found

    @property
    def calibrated(self) -> bool:
        """True once cell boundaries (and the filter map, if linear) have been fitted."""
        return self._m_eff > 0

    def stats(self) -> dict[str, float]:
        """Sizes for reports: entries, cells, pool rows, bytes of index arrays."""
        n = len(self)
        nbytes = sum(
            a.nbytes
            for a in (
                self._cells, self._ctab, self._pvec, self._pids, self._itab, self._edges,
                self._work_f, self._work_i, self._heap, self._out,
            )
        )
        nbytes += sum(a.nbytes for a in self._res_full) + sum(a.nbytes for a in self._res_low)
        nbytes += sum(a.nbytes for a in self._res_ids)
        return {
            "entries": float(n),
            "cells": float(self._meta[1]),
            "pool_rows": float(self._meta[2]),
            "pool_dead": float(self._meta[3]),
            "bytes": float(nbytes),
            "bytes_per_entry": float(nbytes) / max(1, n),
            "rho": float(self._rho) if self._rho is not None else math.nan,
            "rho_filter": float(self._rho_filter) if self._rho_filter is not None else math.nan,
            "rho_exact": float(self._rho_exact),
            "pairs": float(self.n_pairs_),
        }

    # --------------------------------------------------------------- growing

    def _grow_for(self, n_new: int) -> None:
        """Make room so an insert of ``n_new`` rows is unlikely to stop early."""
        need = int(self._meta[0]) + n_new
        if _ids_overfull(need, _slots(self._itab)):
            self._rehash_ids(_id_slots(need))

    def _rehash_ids(self, slots: int) -> None:
        table = _table(slots)
        KC.table_rehash(self._itab, table)
        self._itab = table

    def _grow_cells(self) -> None:
        n_cells = int(self._meta[1])
        if n_cells >= len(self._cells):
            grown = np.zeros((2 * len(self._cells), 4), dtype=np.int64)
            grown[:n_cells] = self._cells[:n_cells]
            self._cells = grown
        if 2 * (n_cells + 1) > _slots(self._ctab):
            table = _table(2 * _slots(self._ctab))
            KC.table_rehash(self._ctab, table)
            self._ctab = table

    def _repack(self) -> None:
        """Copy the live rows into a fresh pool sized for them, with room at its end.

        It is how the pool grows (:meth:`_make_room`) and shrinks
        (:meth:`_give_back`): dead blocks (the old places of moved cells) are
        left behind and every block gets the room of a built one, so right
        after it the pool holds at most ``1 + slack + END_ROOM`` rows an
        entry, plus 2 a cell.
        """
        cap = K.grid_packed_rows(self._cells, self._meta, self.slack) + _end_room(int(self._meta[0]))
        pvec = _pool_array((cap, self._width), np.int8)
        pids = _pool_array(cap, np.int64)
        top = K.grid_compact(self._cells, self._meta, self._pvec, self._pids, pvec, pids, self.slack)
        assert top >= 0, "the new pool is sized by grid_packed_rows"
        self._pvec, self._pids = pvec, pids

    def _pool_rows(self, n: int, n_cells: int) -> int:
        """Pool rows for ``n`` entries in ``n_cells`` cells: every block's room, then the end's.

        What a build allocates, and at least what a repack does
        (:func:`~semcache.index.grid_kernels.grid_packed_rows` rounds each block down).
        """
        return int(n * (1 + self.slack)) + 2 * n_cells + _end_room(n)

    def _give_back(self) -> None:
        """Shrink the pool and the id table once most of their entries are gone.

        Only when the entries would fit twice over in what a repack or a
        rehash makes (amortised O(1) a delete, as growing is an insert): a
        cache that expires most of its entries does not keep their memory.
        """
        live = int(self._meta[0])
        pool = len(self._pids)
        slots = _slots(self._itab)
        # Most deletes shrink nothing, so the cheap test goes first: _pool_rows
        # is more than (1 + slack) rows an entry, so a pool of at most twice
        # that is never more than twice what a repack makes. This took a
        # delete's Python time in _give_back from 1.6 to 0.4 us.
        if pool > 2 * (1.0 + self.slack) * live and pool > 2 * self._pool_rows(
            live, int(self._meta[1])
        ):
            self._repack()
        if slots > 64 and 16 * live < 3 * slots:  # under 3/16 full: half the 3/8 after a doubling
            self._rehash_ids(max(64, _id_slots(live)))

    # ------------------------------------------------------------ calibration

    def _live(self) -> tuple[IdArray, FloatArray]:
        """Ids and stored vectors of all live rows."""
        n_cells = int(self._meta[1])
        blocks = [
            (int(s), int(c)) for s, c in self._cells[:n_cells, :2].tolist() if c > 0
        ]
        if not blocks:
            return np.zeros(0, np.int64), np.zeros((0, self._width), np.float32)
        idx = np.concatenate([np.arange(s, s + c) for s, c in blocks])
        return self._pids[idx], self._pvec[idx].astype(np.float32) / np.float32(self._qinv)

    def _low_of(self, vecs: FloatArray) -> FloatArray:
        """Projected coordinates of stored vectors (inverse of :func:`stored_vectors`)."""
        if not self._mapped or self._map is None:
            assert self._k is not None
            return np.ascontiguousarray(vecs[:, : self._k])
        return np.ascontiguousarray(vecs[:, :-1] @ self._map.Tinv + self._map.b, dtype=np.float32)

    def _calibrate(
        self, full: FloatArray | None, low: FloatArray | None, ids_of: IdArray | None = None
    ) -> None:
        """Fit the map and probe radius (when embeddings are given) and rebuild.

        Parameters
        ----------
        full, low : arrays of shape (n, d), (n, k) or None
            Rows with embeddings to learn the map and near-pair ratios from;
            None keeps the current map and ratios and only refits boundaries.
        ids_of : ndarray of int64, shape (n,), optional
            Ids of those rows when they are every row ever added (the first
            calibration): the live ones are rebuilt from their exact
            coordinates rather than from int8 stored vectors, whose rounding
            error a recovered map could stretch.
        """
        assert self._k is not None
        if ids_of is not None and low is not None:
            # Last occurrence of each id (an id may be removed and re-added).
            rev = ids_of[::-1]
            _, first = np.unique(rev, return_index=True)
            rows = len(ids_of) - 1 - first
            live = K.codes_of_ids(ids_of[rows], self._itab, self._cells) >= 0
            rows = np.sort(rows[live])
            ids, low_all = ids_of[rows], np.ascontiguousarray(low[rows])
            exact_rows = True
        else:
            ids, vecs = self._live()
            low_all = self._low_of(vecs)
            exact_rows = False
        m = min(self.m, self._k)
        if self.cell_rows is not None:
            # As many hashed coordinates as give cells of about cell_rows rows.
            fit = math.log(max(len(ids), 1) / self.cell_rows) / math.log(self.grid)
            m = int(min(m, max(1, round(fit))))
        perm = self._perm_for(m)
        if not _same_order(perm, self._perm):
            rel = _relative_order(self._perm, perm, self._k)
            low_all = np.ascontiguousarray(low_all[:, rel])
            if low is not None:
                low = np.ascontiguousarray(low[:, rel])
            if self._map is not None:
                self._map = self._map.reordered(rel)
            self._perm = perm
        if full is not None and low is not None and self.filter != "none" and self._map is None:
            self._map = fit_linear_map(full, low, seed=self.random_state)
        if full is not None and low is not None and self._rho_by_m is None:
            self._fit_rho(full, low)
        if self._rho_by_m is not None:
            self._rho = float(self._rho_by_m[m - 1])
        rng = np.random.default_rng(self.random_state)
        sample = low_all if len(low_all) <= 200_000 else low_all[
            rng.choice(len(low_all), 200_000, replace=False)
        ]
        self._edges = self._fit_edges(sample, m)
        self._m_eff = m
        if self._map is not None:
            self._rho_exact = self._map.lipschitz(m)
            self._lip_k = self._map.lipschitz(self._k)
        if self._map is not None and self.filter == "exact":
            self._b, self._T, self._mapped = self._map.b, self._map.T, 1
            self._width = self._map.T.shape[1] + 1
        else:
            self._b = np.zeros(self._k, dtype=np.float32)
            self._T = np.zeros((self._k, 1), dtype=np.float32)
            self._mapped = 0
            self._width = self._k
        self._calibrated_at = len(ids)
        self._recalibrate_at = int(self.recalibrate_growth * max(1, len(ids)))
        self._size_work()
        self._set_scale(low_all, exact_rows)
        self._bulk_build(ids, low_all)
        self._after_build()

    def _perm_for(self, m: int) -> npt.NDArray[np.int64] | None:
        """Column order hashing block ``self.block`` of ``m`` coordinates (None: as given)."""
        assert self._k is not None
        off = (self.block * m) % self._k
        return np.roll(np.arange(self._k, dtype=np.int64), -off) if off else None

    def _set_scale(self, low: FloatArray, exact_rows: bool) -> None:
        """Choose the int8 scale for rows ``low`` and update the rounding-error bound.

        ``(z, s)`` vectors lie in the unit ball, so their scale is fixed;
        projected coordinates get twice the largest magnitude seen, so later
        rows rarely overflow (one that does triggers :meth:`_rescale`). More
        headroom would cost precision: measured on QQP, twice the maximum lets
        1.7x as many rows through the filter as float32 vectors would, four
        times 2.5x (still well under a thousandth of the rows).

        When ``low`` was read back from stored vectors, the current scale is
        kept if it still holds them: re-rounding a value to the grid it came
        from is exact, while a new scale adds a second rounding error, which
        stays in the bound.
        """
        top = 0.0
        if self._mapped:
            assert self._map is not None
            bound = 1.0 + 2.0 * math.sqrt(self._map.tol2) + 1e-3
        else:
            w = min(self._width, low.shape[1]) if low.ndim == 2 else 0
            top = float(np.max(np.abs(low[:, :w]))) if low.size and w else 0.0
            if not math.isfinite(top):
                raise IndexStateError("projected coordinates must be finite")
            bound = 2.0 * top if top > 0 else 1.0
        qinv = _QMAX / bound
        if exact_rows:
            self._qerr = 0.5 / qinv
        elif qinv != self._qinv and (self._mapped or top * self._qinv > _QMAX):
            self._qerr += 0.5 / qinv
        else:
            return
        self._qinv = qinv

    def _rescale(self, low: FloatArray) -> None:
        """Widen the int8 range to hold rows ``low`` too, and rebuild."""
        if not np.isfinite(low).all():
            raise IndexStateError("projected coordinates must be finite")
        ids, vecs = self._live()
        low_all = self._low_of(vecs)
        both = np.concatenate([low_all, low]) if len(low_all) else low
        self._set_scale(both, exact_rows=False)
        self._bulk_build(ids, low_all)
        self._after_build()

    def _fit_edges(self, low_all: FloatArray, m: int) -> FloatArray:
        """Inner cell boundaries, shape (m, G - 1): per-dimension quantiles.

        Quantiles give every slice the same share of the rows, where min/max
        boundaries would leave the outer cells nearly empty and the middle
        ones overfull.
        """
        qs = np.arange(1, self.grid) / self.grid
        if len(low_all) == 0:
            return np.zeros((m, self.grid - 1), dtype=np.float32)
        edges = np.quantile(low_all[:, :m].astype(np.float64), qs, axis=0).T
        return np.ascontiguousarray(edges, dtype=np.float32)

    def _after_build(self) -> None:
        """Hook for subclasses that derive structures from the cell table."""

    def _fit_rho(self, full: FloatArray, low: FloatArray) -> None:
        """Calibrate the probe and filter stretch ratios from near-duplicate pairs.

        For pairs ``(x, y)`` with cosine >= ``calibration_threshold`` the ratios
        ``|low_x - low_y|_m / |x - y|`` (hashed coordinates) and
        ``|v_x - v_y| / |x - y|`` (stored vectors) are nearly independent of the
        cosine (measured on QQP: the 99.9% quantile drifts down slightly as the
        cosine rises), so a quantile over pairs from the lowest threshold of
        interest gives radii for every threshold above it.
        """
        assert self._k is not None
        a, b, cos = mine_near_pairs(full, self.calibration_threshold, seed=self.random_state)
        # Identical embeddings say nothing about the stretch (0/0).
        keep = cos < 1.0 - 1e-6
        a, b, cos = a[keep], b[keep], cos[keep]
        self.n_pairs_ = len(a)
        if len(a) < self.min_pairs:
            return
        dfull = np.sqrt(np.maximum(2.0 - 2.0 * cos.astype(np.float64), 1e-12))
        # The ratio for every possible number m of hashed coordinates (each m
        # hashes its own block, see ``block``), so a recalibration that changes
        # m (see ``cell_rows``) needs no embeddings.
        k = self._k
        diff2 = (low[a] - low[b]).astype(np.float64) ** 2
        if self._perm is not None:
            diff2 = diff2[:, np.argsort(self._perm)]  # back to the projection's order
        dlow = np.empty((len(a), k))
        for mm in range(1, k + 1):
            cols = (self.block * mm + np.arange(mm)) % k
            dlow[:, mm - 1] = np.sqrt(diff2[:, cols].sum(axis=1))
        if self.filter == "exact" and self._map is not None:
            vecs = stored_vectors(low, self._map, self._map.T.shape[1] + 1)
        else:
            vecs = low
        dvec = np.linalg.norm((vecs[a] - vecs[b]).astype(np.float64), axis=1)
        self._rho_by_m = np.quantile(dlow / dfull[:, None], self.probe_quantile, axis=0)
        # The pairs are few (a few hundred to a thousand), so the sample
        # quantile of a tail this thin is noisy: take one standard error above
        # it, so that with fewer pairs the radius leans wide (265 pairs at 10k
        # rows: about the largest ratio; 912 at 92k: the third largest).
        q = self.filter_quantile
        q = min(1.0, q + math.sqrt(q * (1.0 - q) / len(a)))
        self._rho_filter = float(np.quantile(dvec / dfull, q))

    def _bulk_build(self, ids: IdArray, low: FloatArray) -> None:
        n = len(ids)
        vecs = quantise(
            stored_vectors(low, self._map if self._mapped else None, self._width), self._qinv
        )
        codes = K.grid_codes(np.ascontiguousarray(low), self._edges, self.grid)
        order = np.argsort(codes, kind="stable").astype(np.int64)
        codes_sorted = np.ascontiguousarray(codes[order])
        n_cells = int(np.count_nonzero(np.diff(codes_sorted))) + 1 if n else 0
        # Spare rows past the blocks: the first full cells relocate into
        # them instead of forcing a copy of the whole pool.
        self._alloc_empty(self._width, pool=self._pool_rows(n, n_cells), cells=max(16, 2 * n_cells))
        self._ctab = _table(_pow2(4 * max(n_cells, 8)))
        # Sized for the rows there are (see _id_slots); the first inserts past
        # 3/4 load double it, amortised O(1) like every other growth here.
        self._itab = _table(_id_slots(max(n, 16)))
        if n:
            K.grid_build(
                order, codes_sorted, vecs, np.ascontiguousarray(ids, dtype=np.int64),
                self._cells, self._meta, self._pvec, self._pids, self._ctab, self.slack,
            )
            K.grid_index_ids(self._pids, self._cells, self._meta, self._itab)

    # ------------------------------------------------------------- protocol

    def add(self, ids: IdArray | int, low: FloatArray, full: FloatArray) -> None:
        """Insert entries (see :class:`~semcache.index.base.Index`).

        Raises
        ------
        IndexStateError
            Shapes disagree with each other or with earlier rows, or an id
            repeats or is already present.
        """
        if isinstance(ids, int):
            ids = as_ids(ids)  # then the single-row path applies as to an array of one
        if self._single_row(ids, low, full):
            self._insert_row(ids, low)
            return
        ids_a, low_a, full_a = check_batch(ids, low, full)
        n = len(ids_a)
        if n == 0:
            return
        if self._k is None:
            self._k, self._d = low_a.shape[1], full_a.shape[1]
            self._width = self._k
            self._alloc_empty(self._width)
            self._size_work()
            self._set_scale(low_a, exact_rows=True)
        if low_a.shape[1] != self._k or full_a.shape[1] != self._d:
            raise IndexStateError(
                f"expected rows of widths ({self._k}, {self._d}), "
                f"got ({low_a.shape[1]}, {full_a.shape[1]})"
            )
        if self._perm is not None:
            low_a = K.take_columns(low_a, self._perm)
        clash = ids_a[K.codes_of_ids(ids_a, self._itab, self._cells) >= 0]
        if len(clash):
            raise IndexStateError(f"ids already in the index: {clash[:5].tolist()}")
        total = len(self) + n
        if not self.calibrated:
            self._insert(ids_a, low_a)
            self._res_full.append(full_a.copy())
            self._res_low.append(low_a.copy())
            self._res_ids.append(ids_a.copy())
            self._res_n += n
            if total >= self.min_calibration:
                res_full = np.concatenate(self._res_full)
                res_low = np.concatenate(self._res_low)
                res_ids = np.concatenate(self._res_ids)
                self._res_full, self._res_low, self._res_ids, self._res_n = [], [], [], 0
                self._calibrate(res_full, res_low, res_ids)
            return
        if total >= self.recalibrate_growth * max(1, self._calibrated_at):
            self._insert(ids_a, low_a)
            # A large batch can also teach the ratio when the first one could not.
            use = n >= self.min_calibration and self._rho_by_m is None
            self._calibrate(full_a if use else None, low_a if use else None)
            return
        self._insert(ids_a, low_a)

    def _single_row(self, ids: IdArray, low: FloatArray, full: FloatArray) -> bool:
        """True for one row already in kernel form, once calibrated: the cache's insert after a miss.

        Everything :func:`check_batch` and the clash scan would do for it is
        either implied by these checks or done by the insert kernel (clash),
        and they cost several times the insert itself.
        """
        # Identity tests on the dtypes and one stride (a single row is C-contiguous
        # when its items are adjacent): the == and .flags forms cost more than
        # the insert kernel itself. Arrays they miss take the checked path.
        return bool(
            self._m_eff
            and type(low) is np.ndarray
            and type(ids) is np.ndarray
            and type(full) is np.ndarray
            and low.dtype is _F32
            and ids.dtype is _I64
            and low.shape == (1, self._k)
            and ids.shape == (1,)
            and full.shape == (1, self._d)
            and low.strides[1] == 4
        )

    def _insert_row(self, ids: IdArray, low: FloatArray) -> None:
        """Insert a row that passed :meth:`_single_row` (recalibrating when due)."""
        if ids[0] < 0:
            raise IndexStateError("ids must be non-negative")
        self._insert_checked(ids, low)

    def _insert_checked(self, ids: IdArray, low: FloatArray) -> None:
        """Insert rows of the index's widths with non-negative ids (recalibrating when due).

        Parameters
        ----------
        ids : ndarray of int64, shape (n,)
        low : ndarray of float32, shape (n, k)
            In the caller's column order.
        """
        if self._perm is not None:
            low = K.take_columns(low, self._perm)
        self._insert(ids, low)
        if self._meta[0] >= self._recalibrate_at:
            self._calibrate(None, None)

    def _insert(self, ids: IdArray, low: FloatArray) -> None:
        if len(ids) == 1 and K.grid_insert(
            low, ids, self._edges, self.grid, self._b, self._T, self._mapped, self._qinv,
            self._cells, self._meta, self._pvec, self._pids, self._ctab, self._itab,
            self._vec_f, self._vec_q,
        ) == 1:
            # The common case, one row that fits. A kernel that stops early has
            # changed nothing, and the loop below grows what is full and retries.
            return
        if _ids_overfull(int(self._meta[0]) + len(ids), _slots(self._itab)):
            self._grow_for(len(ids))
        done = 0
        n = len(ids)
        while done < n:
            step = K.grid_insert(
                low[done:] if done else low, ids[done:] if done else ids, self._edges,
                self.grid, self._b, self._T, self._mapped, self._qinv,
                self._cells, self._meta, self._pvec, self._pids, self._ctab, self._itab,
                self._vec_f, self._vec_q,
            )
            done += int(step)
            if done < n:
                status = int(self._meta[4])
                if status == K.STOP_CLASH:
                    # Only a single-row add reaches here with a present id
                    # (batches are checked first), so nothing was inserted.
                    raise IndexStateError(f"ids already in the index: [{int(ids[done])}]")
                if status == K.STOP_RANGE:
                    self._rescale(np.ascontiguousarray(low[done:]))
                else:
                    self._make_room()

    def _make_room(self) -> None:
        """Grow what stopped :func:`~semcache.index.grid_kernels.grid_insert` (a retry grows the rest)."""
        if _ids_overfull(int(self._meta[0]) + 1, _slots(self._itab)):
            self._rehash_ids(2 * _slots(self._itab))
            return
        n_cells = int(self._meta[1])
        if n_cells >= len(self._cells) or 2 * (n_cells + 1) > _slots(self._ctab):
            self._grow_cells()
            return
        # Else the pool is short for a new block or a relocated one. Not
        # growing it for the other two spares a copy of every row.
        self._repack()

    def remove(self, ids: IdArray) -> None:
        """Remove entries; absent ids are ignored."""
        ids_a = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids_a) and self._meta[0]:
            self._remove_checked(ids_a)

    def _remove_checked(self, ids: IdArray) -> None:
        """Remove ``ids``, C-contiguous int64 of shape (n,) (absent and negative ones are skipped).

        A multi-table grid converts the ids once for all its tables.
        """
        K.grid_remove(ids, self._cells, self._meta, self._pvec, self._pids, self._itab)
        self._give_back()

    def radii(self, threshold: float) -> tuple[float, float]:
        """Squared (probe, filter) radii for a cosine threshold.

        ``sqrt(2 - 2t)`` is the largest distance between unit embeddings with
        cosine >= t; the exact radii stretch it by the map's Lipschitz factor
        (probe) or not at all (filter, see the module docstring), the
        calibrated ones by the measured near-pair quantiles times the margin,
        never beyond the exact ones. The filter radius also covers the int8
        rounding of stored vectors (both are in projected units; the kernels
        compare in stored units, see :meth:`_stored_r2`).
        """
        base = math.sqrt(max(0.0, 2.0 - 2.0 * float(threshold)))
        tol = math.sqrt(self._map.tol2) if self._map is not None else 0.0
        # Stored (z, s) vectors are never farther apart than the embeddings;
        # stored projected coordinates at most the map's Lipschitz factor more.
        lip = 1.0 if self._mapped else self._lip_k
        exact_filter = lip * (base + tol) if math.isfinite(lip) else math.inf
        if self.filter == "none":
            filt = math.inf
        elif self.filter == "calibrated" and self._rho_filter is not None:
            filt = min(exact_filter, self._rho_filter * self.probe_margin * base + lip * tol)
        else:
            filt = exact_filter
        # Stored vectors are rounded to int8: a row may look farther than it
        # is by at most the norm of its rounding error.
        filt += math.sqrt(self._width) * self._qerr
        rx = self._rho_exact
        exact_probe = rx * (base + tol) if math.isfinite(rx) else math.inf
        if self.probe == "orthant":
            probe = math.inf
        elif self.probe == "calibrated" and self._rho is not None:
            probe = min(exact_probe, self._rho * self.probe_margin * base + rx * tol)
        else:
            probe = exact_probe
        return probe * probe, filt * filt

    def _stored_r2(self, r2: float) -> float:
        """A squared radius in projected units, in the stored int8 units the kernels use."""
        return r2 * self._qinv * self._qinv if math.isfinite(r2) else math.inf

    def candidates(self, q_low: FloatArray, q_full: FloatArray, threshold: float) -> IdArray:
        """Ids that may have ``cos >= threshold`` with the query (see the module docstring).

        Parameters
        ----------
        q_low : ndarray of float32, shape (k,)
        q_full : ndarray of float32, shape (d,)
            Unused: the filter works on the projected coordinates.
        threshold : float

        Returns
        -------
        ndarray of int64, shape (c,)
        """
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        q = self._query_row(q_low)
        plan = self._plan
        if plan is None:
            plan = self._plan = LookupPlan([self])
        max_points = self._budget(self.max_scan)
        while True:
            got = plan.run(q, threshold, max_points, self._out)
            if got >= 0:
                return self._out[:got].copy()
            self._out = np.empty(2 * (-got) + 64, dtype=np.int64)

    def _query_row(self, q_low: FloatArray) -> FloatArray:
        """The query's projected coordinates as the lookup kernel takes them.

        Float32, C order, of the width the index was built with.
        """
        q = np.ascontiguousarray(q_low, dtype=np.float32).reshape(-1)
        if q.shape[0] != self._k:
            raise IndexStateError(f"expected a {self._k}-d query, got {q.shape[0]}-d")
        return q

    def _budget(self, share: float) -> int:
        """Rows a lookup may scan when ``share`` of the entries is allowed."""
        return scan_budget(len(self), share, self.min_scan)

    def _lookup_params(self, threshold: float) -> tuple[float, float, float]:
        """(int8 scale, squared probe radius, squared filter radius in stored units) of a lookup."""
        probe_r2, filt_r2 = self.radii(threshold)
        return self._qinv, probe_r2, self._stored_r2(filt_r2)

    def _lookup_part(self) -> tuple[Any, ...]:
        """This grid's plan row and the arrays it points into, kept until an attribute changes.

        Returns
        -------
        tuple
            (row of :func:`~semcache.index.grid_kernels.plan_row`, the arrays).
            Whoever runs the row holds the tuple, so every address in it
            stays valid even after the grid replaces an array.
        """
        part = self._lookup
        if part is not None:
            return part
        binary = self.grid == 2 and self.probe != "orthant" and bool(self._m_eff)
        settings = (int(binary), int(self._mapped), self.grid, int(self.probe == "orthant"),
                    self.n_probe)
        perm = self._ident if self._perm is None else self._perm
        arrays = (self._b, self._T, self._edges, self._cells, self._meta, self._pvec, self._pids,
                  self._ctab, self._work_f, self._work_i, self.last_stats, self._heap,
                  self._vec_f, self._order, self._gap2, self._hs, perm, self._q_row)
        part = (K.plan_row(settings, arrays), arrays)
        self._lookup = part
        return part
