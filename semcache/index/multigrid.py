"""Several multiprobe grids over disjoint blocks of projected coordinates.

Why more than one grid
----------------------
A lookup of a single grid scans every row of the cells nearest the query until
its budget runs out, and the budget needed for high recall is set by the few
near-duplicate pairs that a cell boundary separates in *some* hashed
coordinate. A second grid over other coordinates rarely separates the same
pair, so two grids scanned to half the budget each find more than one grid
scanned to the whole of it (the multi-table idea of locality-sensitive
hashing; each table keeps the grid's probe order and exact filter).

Measured by ``benchmarks/lab/grid_budget_bench.py`` (learned projection of width
32, 2,000 held-out QQP queries, recall of the exact best match at cosine
>= 0.85 / 0.9 / 0.95):

* N = 92k real rows: two binary grids reach 1 / 1 / 1 scanning 8% of the
  rows (0.05 ms); one binary grid over 10 coordinates reaches .996 / .998 / 1
  at 10%, the paper-style 6-d grid with 3 slices .9975 / 1 / 1 at 14.6%
  (0.07 ms).
* N = 1M (real rows plus synthetic paraphrase structure): two grids reach
  .995 / .998 / 1 at 2.4% (0.23 ms), the 6-d grid the same at 10% (0.38 ms).

Each table stores its own copy of the rows' short vectors (int8, 32 bytes a
row) so that every scan stays sequential in memory; the id sets of the tables
are always the same.

Insert buffer
-------------
A single-row insert, the cache's insert after a miss, spends almost all its
time entering the compiled kernels, not in them: at N = 92k a one-row call of
the insert kernel, with the grid's 16 arguments, takes 1.4 us, while one call
on 2,000 rows takes 0.17 us a row (``benchmarks/lab/insert_buffer_bench.py``).
So single rows wait in a small buffer (``buffer`` rows, float32, the caller's
column order), checked and copied by one kernel call
(:func:`~semcache.index.multigrid_kernels.buffer_put`), and go into every table in one
batch when it fills. The first table's lookup kernel filters the buffered rows
as it filters its own (:func:`~semcache.index.grid_kernels.filter_rows`), so a
buffered row is found as soon as it is added. Batch adds empty the buffer
first; tables recalibrate only inside inserts, so never while rows wait.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from semcache._types import FloatArray, IdArray
from semcache.errors import ConfigError, IndexStateError
from semcache.index import multigrid_kernels as K
from semcache.index.base import as_ids
from semcache.index.grid import GridIndex, LookupPlan, scan_budget

__all__ = ["MultiGridIndex"]

# Bound once: a buffered insert is ~2 us, and each lookup of a module attribute counts.
_BUFFER_PUT_KEY = K.buffer_put_key
_BUFFER_PUT = K.buffer_put


class MultiGridIndex:
    """``tables`` grids over consecutive blocks of the projected coordinates.

    With ``m`` coordinates hashed per table, table ``t`` hashes coordinates
    ``t * m .. t * m + m - 1`` (each table's filter uses all ``k``). The
    projections put their most telling coordinates first, so consecutive
    blocks beat equal groups of ``k`` (measured with ``grid_budget_bench.py``
    while choosing: at N = 92k, tables over 0-9 and 10-19 reached with 4.1k
    rows scanned the recall that 0-9 and 16-25 reached with 7.3k).

    Parameters
    ----------
    tables : int
        Number of grids.
    m : int
        At most this many coordinates hashed per table; past the projection
        width the blocks wrap around, so tables then share coordinates.
    grid : int
        Cells per dimension; 2 uses the cheap bit-vector probe of
        :func:`semcache.index.grid_kernels.grid_query_binary`.
    cell_rows : int or None
        Each table hashes as many coordinates as give cells of about this many
        rows (see :class:`~semcache.index.grid.GridIndex`); None: always ``m``.
    scan_scale : float
        A lookup scans at most ``scan_scale * sqrt(n)`` rows over all tables
        together (each table its part): measured with cells of ~96 rows, the
        rows needed for recall >= 0.995 grow like the square root of ``n``,
        not in proportion to it (``benchmarks/lab/grid_budget_bench.py``: the
        default reaches 1 / 1 / 1 at 0.85 / 0.9 / 0.95 with 7.3k rows, 8%, at
        n = 92k real rows, and .995 / .998 / 1 with 24k rows, 2.4%, at 1M rows
        with synthetic paraphrase structure).
    max_scan : float or None
        When set, a share of the entries to scan instead (the
        :class:`~semcache.index.grid.GridIndex` budget).
    min_scan : int
        Rows scanned at least per lookup, over all tables together. It sets
        the budget below ~7k entries, where ``scan_scale * sqrt(n)`` is
        smaller; on 5k, 10k and 20k real rows a floor of 2,048 kept the
        recall of 4,096 and cut lookups by 10-25%
        (``grid_budget_bench.py --sizes 5k,10k,20k``).
    buffer : int
        Single-row inserts wait in a buffer of this many rows before going
        into the tables in one batch (see the module docstring); 0 inserts
        each row into every table at once. Every lookup also filters the
        buffered rows, inside the first table's lookup kernel. Measured at
        N = 92k (``benchmarks/lab/insert_buffer_bench.py``): a single insert takes
        1.8 us on average with 64 (flushes included) against 6.1 us with 0,
        and a lookup 0.047 ms with 63 rows waiting against 0.044 ms with
        none. 256 saves little more on inserts (1.6 us) and costs lookups
        more (0.052 ms with 255 rows waiting): what is left is entering the
        buffering kernel and the per-row work of the batch inserts.
    **params
        Passed to every :class:`~semcache.index.grid.GridIndex` (``probe``,
        ``filter``, quantiles, calibration settings...).
    """

    kind = "multigrid"

    def __init__(
        self,
        tables: int = 2,
        m: int = 16,
        grid: int = 2,
        cell_rows: int | None = 96,
        scan_scale: float = 24.0,
        max_scan: float | None = None,
        min_scan: int = 2048,
        buffer: int = 64,
        **params: object,
    ) -> None:
        if not isinstance(tables, int) or tables < 1:
            raise ConfigError(f"tables must be a positive int, got {tables!r}")
        if max_scan is not None and not 0.0 < max_scan <= 1.0:
            raise ConfigError(f"max_scan must be None or in (0, 1], got {max_scan!r}")
        if not scan_scale > 0 or not isinstance(min_scan, int) or min_scan < 1:
            raise ConfigError("scan_scale must be > 0 and min_scan an int >= 1")
        if not isinstance(buffer, int) or buffer < 0:
            raise ConfigError(f"buffer must be an int >= 0, got {buffer!r}")
        if "block" in params:
            raise ConfigError("block is set per table by MultiGridIndex")
        self.tables = tables
        self.m = m
        self.grid = grid
        self.cell_rows = cell_rows
        self.scan_scale = scan_scale
        self.max_scan = max_scan
        self.min_scan = min_scan
        self.buffer = buffer
        self.params = dict(params)
        # The tables' own budgets are unused: candidates() passes its own.
        self._grids = [
            GridIndex(m=m, grid=grid, cell_rows=cell_rows, block=t, **params)  # type: ignore[arg-type]
            for t in range(tables)
        ]
        self._first = self._grids[0]  # holds every id (the buffer's checks read its id table)
        # Every table's lookup in one kernel call.
        self._plan = LookupPlan(self._grids)
        self._out = np.empty(256, dtype=np.int64)
        # The insert buffer: its first _buf_n rows and ids are live. It is
        # allocated once the first table is calibrated; _buf_d (the full
        # vectors' width) is 0 until then, and always with buffer=0.
        self._buf_low = np.zeros((0, 0), dtype=np.float32)
        self._buf_ids = np.zeros(0, dtype=np.int64)
        self._buf_n = 0
        self._buf_d = 0

    def __len__(self) -> int:
        return len(self._first) + self._buf_n

    def __contains__(self, entry_id: object) -> bool:
        if (self._buf_n and isinstance(entry_id, int | np.integer)
                and bool((self._buf_ids[: self._buf_n] == int(entry_id)).any())):
            return True
        return entry_id in self._first

    @property
    def last_stats(self) -> npt.NDArray[np.int64]:
        """(occupied cells visited, rows scanned, cells popped) of the last lookup, over all tables.

        Summed when read, not during the lookup: the three small array
        operations that did it in every lookup took 7% of one at 10k entries.
        """
        out = np.zeros(3, dtype=np.int64)
        for g in self._grids:
            out += g.last_stats
        return out

    @property
    def calibrated(self) -> bool:
        """True once every table has fitted its cell boundaries."""
        return all(g.calibrated for g in self._grids)

    def add(self, ids: IdArray | int, low: FloatArray, full: FloatArray) -> None:
        """Insert entries into every table (see :class:`~semcache.index.base.Index`).

        Raises
        ------
        IndexStateError
            As :meth:`GridIndex.add <semcache.index.grid.GridIndex.add>`; the
            first table checks everything before anything is inserted, so a
            refused batch leaves every table unchanged.
        """
        if self._buf_d:
            # An int id spares its caller a one-element array, which cost a
            # fifth of a buffered insert (0.4 of ~2 us).
            # The kernels return Python ints (numba boxes int64 so): no int() around them.
            try:
                if isinstance(ids, int):
                    status = _BUFFER_PUT_KEY(low, ids, full, self._buf_d, self._first._itab,
                                             self._buf_low, self._buf_ids, self._buf_n)
                else:
                    status = _BUFFER_PUT(low, ids, full, self._buf_d, self._first._itab,
                                         self._buf_low, self._buf_ids, self._buf_n)
            except (TypeError, OverflowError):
                # Not float32 / int64 C-contiguous arrays, or an int beyond
                # int64: the checked path says which.
                status = -3
            if status == 1:
                self._buf_n += 1
                if self._buf_n == self.buffer:
                    self.flush()
                return
            if status == -1:
                raise IndexStateError("ids must be non-negative")
            if status == -2:
                raise IndexStateError(f"ids already in the index: {np.ravel(ids)[:1].tolist()}")
            if status == -4:
                raise IndexStateError("low has non-finite values")
        if isinstance(ids, int):
            ids = as_ids(ids)  # the paths below take arrays, as GridIndex.add does
        first = self._first
        if not self.buffer and first._single_row(ids, low, full):
            # Checked once: every table holds the same ids and widths.
            for g in self._grids:
                g._insert_row(ids, low)
            return
        self.flush()
        for g in self._grids:
            g.add(ids, low, full)
        if self.buffer and not self._buf_d and first.calibrated:
            # From now on single rows can wait in the buffer (widths never change).
            assert first._k is not None and first._d is not None
            self._buf_low = np.zeros((self.buffer, first._k), dtype=np.float32)
            self._buf_ids = np.zeros(self.buffer, dtype=np.int64)
            self._buf_d = first._d

    def flush(self) -> None:
        """Move the buffered rows into every table (the buffer is then empty)."""
        n = self._buf_n
        if not n:
            return
        # Views: the tables copy what they keep, and nothing refills the buffer meanwhile.
        ids = self._buf_ids[:n]
        low = self._buf_low[:n]
        for g in self._grids:
            g._insert_checked(ids, low)
        self._buf_n = 0

    def remove(self, ids: IdArray) -> None:
        """Remove entries from the buffer and every table; absent ids are ignored."""
        ids_a = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if self._buf_n:
            self._buf_n = K.buffer_drop(ids_a, self._buf_low, self._buf_ids, self._buf_n)
        if len(ids_a) and len(self._first):
            # Converted once here: that was a third of a single delete in each table.
            for g in self._grids:
                g._remove_checked(ids_a)

    def candidates(self, q_low: FloatArray, q_full: FloatArray, threshold: float) -> IdArray:
        """Union of the tables' candidates, without duplicates.

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
        q = self._first._query_row(q_low)
        budget = self._budget(n) // self.tables
        # Buffered rows are in no table: the first one filters them too.
        extra = (self._buf_low, self._buf_ids, self._buf_n) if self._buf_n else None
        while True:
            got = self._plan.run(q, threshold, budget, self._out, extra)
            if got >= 0:
                return self._out[:got].copy()
            self._out = np.empty(2 * (-got) + 64, dtype=np.int64)

    def _budget(self, n: int) -> int:
        """Rows one lookup may scan over all tables when they hold ``n`` entries."""
        if self.max_scan is not None:
            return scan_budget(n, self.max_scan, self.min_scan)
        return max(self.min_scan, int(self.scan_scale * math.sqrt(n)))

    def stats(self) -> dict[str, float]:
        """Sizes for reports: entries, cells and bytes summed over the tables."""
        per = [g.stats() for g in self._grids]
        out = dict(per[0])
        for key in ("cells", "pool_rows", "pool_dead", "bytes"):
            out[key] = float(sum(p[key] for p in per))
        out["entries"] = float(len(self))
        out["buffered"] = float(self._buf_n)
        out["bytes"] += self._buf_low.nbytes + self._buf_ids.nbytes
        out["bytes_per_entry"] = out["bytes"] / max(1, len(self))
        out["tables"] = float(self.tables)
        return out
