"""Numba kernels of the grid index (:mod:`semcache.index.grid`): its pool of cells, inserts, removes,
the multi-probe lookup with its int8 filter, and lookup plans (every table of a grid in one call).

Shared helpers (the compile decorator, hash tables, prefetching) are in
:mod:`semcache.index._kernels_common`, whose docstring describes the layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.extending import intrinsic, overload
from numba.np.numpy_support import carray

from semcache.index._kernels_common import (
    _PREFETCH_BYTES,
    F32,
    F64,
    I8,
    I64,
    Int,
    _address,
    _cell_of,
    _kernel,
    _mix,
    _offset_of,
    _pack,
    _prefetch,
    _prefetch_rows,
    _table_delete_slot,
    _table_put,
    table_find,
    table_slots,
)

__all__ = [
    "PLAN_ARRAYS",
    "PLAN_WIDTH",
    "STOP_CLASH",
    "STOP_RANGE",
    "STOP_ROOM",
    "cell_code",
    "codes_of_ids",
    "filter_rows",
    "filter_vec",
    "grid_build",
    "grid_codes",
    "grid_compact",
    "grid_index_ids",
    "grid_insert",
    "grid_lookup",
    "grid_packed_rows",
    "grid_query",
    "grid_query_binary",
    "grid_remove",
    "plan_row",
    "quantize_into",
]

# ---------------------------------------------------------------------------
# Multiprobe grid.
#
# Entries live in a pool of rows, one contiguous block per cell, so scanning a
# cell reads consecutive memory: ``pvec[p]`` is the stored vector of row ``p``
# and ``pids[p]`` its id; the id table maps the id back to its cell and its
# offset in the cell's block (see ``_pack``).
# ``cells[c] = (start, count, capacity, code)``.
# A full cell moves to a block twice as large at the end of the pool (the old
# block becomes dead space), which keeps inserts amortised O(1); offsets
# survive the move, so no id is re-indexed. When the pool's end is full, the
# live rows are copied into a fresh pool (``grid_compact``), dead blocks left
# behind.
# ``meta = [n_items, n_cells, pool_top, pool_dead, status]``; ``status`` says
# why an insert stopped early (``STOP_*``).
#
# Stored vectors are int8: ``round(v * qinv)`` with one scale for every
# coordinate, so squared distances in stored units are ``qinv**2`` times
# the real ones and the filter compares against a scaled radius. A quarter of the
# float32 bytes, and the rounding error (at most ``0.5 / qinv`` per coordinate)
# is added to the filter radius by the caller.
# ---------------------------------------------------------------------------

_START = 0
_COUNT = 1
_CAP = 2
_CODE = 3

#: ``meta[4]`` after :func:`grid_insert` stopped early: an array is full,
#: a row does not fit the int8 range, or an id is already present.
STOP_ROOM = 0
STOP_RANGE = 1
STOP_CLASH = 2
_Q_MAX = 127.0


@_kernel("int64(float32[::1], float32, int8[::1])")
def quantize_into(vec: F32, qinv: float, out: I8) -> int:
    """``out = round(vec * qinv)``; returns 0 (and leaves ``out`` undefined) if a value overflows int8.

    Parameters
    ----------
    vec : ndarray of float32, shape (w,)
    qinv : float
        Stored units per projected unit.
    out : ndarray of int8, shape (w,)
    """
    for t in range(vec.shape[0]):
        x = np.float32(np.rint(vec[t] * qinv))
        if not (-_Q_MAX <= x <= _Q_MAX):  # also catches NaN
            return 0
        out[t] = np.int8(x)
    return 1



@_kernel("void(float32[::1], float32[::1], float32[:, ::1], int64, float32[::1], float64[::1])")
def filter_vec(low: F32, b: F32, T: F32, mapped: int, out: F32, acc: F64) -> None:
    """The vector a row is stored and filtered as.

    With a recovered linear map (``mapped == 1``) the row's projected
    coordinates become orthonormal coordinates ``z = (low - b) @ T`` of the
    unit embedding in the projection's row space, plus its residual norm
    ``sqrt(1 - |z|^2)``; Euclidean distance between two such vectors is a lower
    bound of the distance between the embeddings (see :mod:`semcache.index.grid`).
    Otherwise (``mapped == 0``) the vector is ``low`` itself (zero-padded to
    the output width).

    Parameters
    ----------
    low : ndarray of float32, shape (k,)
    b : ndarray of float32, shape (k,)
    T : ndarray of float32, shape (k, r)
    mapped : int
    out : ndarray of float32, shape (r + 1,) or (k,)
    acc : ndarray of float64, shape (r,) or longer
        Scratch for the sums (the caller's, so a row allocates nothing).
    """
    k = low.shape[0]
    r = out.shape[0] - 1
    if mapped == 0:
        for j in range(r + 1):
            out[j] = low[j] if j < k else np.float32(0.0)
        return
    # Row i of T is contiguous, so adding low's terms one row at a time runs
    # over all r sums at once in SIMD lanes; a sum per output (a dot product
    # down a column of T) is one long chain of dependent additions, and took
    # 3.3x as long at k = r = 32. Each sum still adds its terms in order i = 0,
    # 1, ..., so the result is bit for bit the same.
    for j in range(r):
        acc[j] = 0.0
    for i in range(k):
        d = low[i] - b[i]
        for j in range(r):
            acc[j] += d * T[i, j]
    sq = 0.0
    for j in range(r):
        out[j] = acc[j]
        sq += acc[j] * acc[j]
    out[r] = np.sqrt(max(0.0, 1.0 - sq))


@_kernel("void(float32[::1], float32[::1], float32[:, ::1], int64, float32, float32[::1])")
def _query_vec(q_low: F32, b: F32, T: F32, mapped: int, qinv: float, q_vec: F32) -> None:
    """The query's vector as the filter compares it: :func:`filter_vec`, in stored units."""
    filter_vec(q_low, b, T, mapped, q_vec, np.empty(T.shape[1], dtype=np.float64))
    for t in range(q_vec.shape[0]):
        q_vec[t] *= qinv


@_kernel("int64(float32[::1], float32[:, ::1], int64)")
def cell_code(low: F32, edges: F32, grid: int) -> int:
    """Cell code of one row (see :func:`grid_codes`)."""
    code = np.int64(0)
    mult = np.int64(1)
    for j in range(edges.shape[0]):
        x = low[j]
        # The edges ascend, so the cell coordinate is the number of edges at or
        # below x. Counted without a branch: which side of an edge a row falls
        # is a coin toss that a branch predictor loses half the time.
        c = np.int64(0)
        for e in range(edges.shape[1]):
            c += np.int64(x >= edges[j, e])
        code += c * mult
        mult *= grid
    return int(code)


@_kernel("int64[::1](float32[:, ::1], float32[:, ::1], int64)")
def grid_codes(low: F32, edges: F32, grid: int) -> I64:
    """Cell code of each row.

    Parameters
    ----------
    low : ndarray of float32, shape (n, k)
        Projected coordinates; the first ``m`` columns are hashed.
    edges : ndarray of float32, shape (m, grid - 1)
        Inner cell boundaries per dimension, ascending.
    grid : int
        Cells per dimension ``G``.

    Returns
    -------
    ndarray of int64, shape (n,)
        ``sum_j c_j G^j`` with ``c_j`` the cell coordinate along dimension j.
    """
    n = low.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = cell_code(low[i], edges, grid)
    return out


@_kernel("float32[:, ::1](float32[:, ::1], int64[::1])")
def take_columns(a: F32, cols: I64) -> F32:
    """``a[:, cols]``, C-contiguous.

    A table whose hashed coordinates are not the first reorders every batch
    it inserts, and NumPy's column indexing plus the copy back to C order
    took 3.1 us for a 64-row flush of the insert buffer (32 columns), this
    loop 1.5 us; 1.4 against 0.7 us for one row.
    """
    out = np.empty((a.shape[0], cols.shape[0]), dtype=np.float32)
    for i in range(a.shape[0]):
        for j in range(cols.shape[0]):
            out[i, j] = a[i, cols[j]]
    return out


@_kernel("int64(int64, float64)")
def _block_cap(count: int, slack: float) -> int:
    """Rows of a cell block built or compacted for ``count`` rows: ``count * slack + 2`` to spare."""
    return int(count + np.int64(count * slack) + 2)


@_kernel("void(int8[:, ::1], int64, int8[:, ::1], int64)")
def _copy_row(src: I8, i: int, dst: I8, j: int) -> None:
    """``dst[j] = src[i]``, one byte at a time.

    The row assignment itself builds two array views and a generic copy for
    every row: moving the blocks of a 20k-row pool took 26 ns a row that
    way and 6-9 ns with this loop (widths 32 and 33).
    """
    for t in range(src.shape[1]):
        dst[j, t] = src[i, t]


@_kernel(
    "int64(int64[::1], int64[::1], int8[:, ::1], int64[::1], int64[:, ::1], int64[::1],"
    " int8[:, ::1], int64[::1], int64[::1], float64)"
)
def grid_build(
    order: I64,
    codes_sorted: I64,
    vecs: I8,
    ids: I64,
    cells: I64,
    meta: I64,
    pvec: I8,
    pids: I64,
    ctab: I64,
    slack: float,
) -> int:
    """Bulk-load sorted rows into empty grid arrays (one block per cell).

    Parameters
    ----------
    order : ndarray of int64, shape (n,)
        Row order that sorts the rows by cell code.
    codes_sorted : ndarray of int64, shape (n,)
        Cell codes in that order.
    vecs : ndarray of int8, shape (n, w)
        Stored (quantised) vectors, unsorted.
    ids : ndarray of int64, shape (n,)
        Entry ids (unsorted).
    cells : ndarray of int64, shape (cell_cap, 4)
        Cell table to fill; ``cell_cap`` >= number of distinct codes.
    meta : ndarray of int64, shape (4,)
    pvec, pids : pool arrays, first dimension >= total block size.
    ctab : ndarray of int64, shape (2 * slots,)
        Empty cell hash table, ``slots`` >= 2x the number of cells.
    slack : float
        Each block gets ``count * slack + 2`` rows of room for later inserts.

    Returns
    -------
    int
        Pool rows used. Ids are indexed afterwards by :func:`grid_index_ids`.
    """
    n = order.shape[0]
    n_cells = 0
    top = 0
    i = 0
    while i < n:
        j = i
        code = codes_sorted[i]
        while j < n and codes_sorted[j] == code:
            j += 1
        count = j - i
        cap = _block_cap(count, slack)
        c = n_cells
        cells[c, _START] = top
        cells[c, _COUNT] = count
        cells[c, _CAP] = cap
        cells[c, _CODE] = code
        _table_put(ctab, code, c)
        for r in range(count):
            src = order[i + r]
            _copy_row(vecs, src, pvec, top + r)
            pids[top + r] = ids[src]
        n_cells += 1
        top += cap
        i = j
    meta[0] = n
    meta[1] = n_cells
    meta[2] = top
    meta[3] = 0
    return int(top)


@_kernel("void(int64[::1], int64[:, ::1], int64[::1], int64[::1])")
def grid_index_ids(pids: I64, cells: I64, meta: I64, itab: I64) -> None:
    """Fill the (empty) id table from the live rows of every cell.

    Parameters
    ----------
    pids : ndarray of int64, shape (pool_cap,)
    cells : ndarray of int64, shape (cell_cap, 4)
    meta : ndarray of int64, shape (4,)
    itab : ndarray of int64, shape (2 * slots,)
        Empty id table; each id gets its packed ``(cell, offset)`` (see :func:`_pack`).
    """
    for c in range(meta[1]):
        start = cells[c, _START]
        for p in range(start, start + cells[c, _COUNT]):
            _table_put(itab, pids[p], _pack(c, p - start))


@_kernel(
    "int64[::1](float32[:, ::1], int64[::1], float32[:, ::1], int64, int64[:, ::1], int8[:, ::1],"
    " int64[::1], int64[::1], int64[::1])"
)
def _prefetch_insert(
    low: F32, ids: I64, edges: F32, grid: int, cells: I64, pvec: I8, pids: I64, ctab: I64,
    itab: I64,
) -> I64:
    """Start loading, for every row of a batch at once, the places inserting it will write.

    Those are a row's id table slot and the end of its cell's block in the
    stored vectors and ids: random places of arrays far larger than the
    caches once a table holds ~100k rows. Inserted one row after another,
    each row waits for them in turn (its cell's block only once its cell is
    known); asked for all rows first, in two passes (id slots and cell table
    slots, then the blocks), the waits overlap. Measured with a lookup
    before every single insert, as a cache inserts after a miss, in one
    process against the kernel without it: at 1M entries a flush of 64 rows
    into two tables went from 177 to 123 us (median) and a single insert
    from 6.3 to 5.0 us on average; 4% at 92k.

    Returns
    -------
    ndarray of int64, shape (n,)
        The rows' cell codes (:func:`cell_code`), which the insert reuses.
    """
    n = low.shape[0]
    imask = np.uint64(table_slots(itab) - 1)
    cmask = np.uint64(table_slots(ctab) - 1)
    itab_at = itab.ctypes.data
    ctab_at = ctab.ctypes.data
    codes = np.empty(n, dtype=np.int64)
    for i in range(n):
        _prefetch(itab_at + 16 * np.int64(_mix(ids[i]) & imask))
        codes[i] = cell_code(low[i], edges, grid)
        _prefetch(ctab_at + 16 * np.int64(_mix(codes[i]) & cmask))
    w = pvec.shape[1]
    pvec_at = pvec.ctypes.data
    pids_at = pids.ctypes.data
    for i in range(n):
        slot = table_find(ctab, codes[i])
        if slot >= 0:
            c = ctab[2 * slot + 1]
            end = cells[c, _START] + cells[c, _COUNT]
            _prefetch(pvec_at + end * w)
            _prefetch(pids_at + 8 * end)
    return codes


@_kernel(
    "int64(float32[:, ::1], int64[::1], float32[:, ::1], int64, float32[::1], float32[:, ::1],"
    " int64, float32, int64[:, ::1], int64[::1], int8[:, ::1], int64[::1], int64[::1], int64[::1],"
    " float32[::1], int8[::1])"
)
def grid_insert(
    low: F32,
    ids: I64,
    edges: F32,
    grid: int,
    b: F32,
    T: F32,
    mapped: int,
    qinv: float,
    cells: I64,
    meta: I64,
    pvec: I8,
    pids: I64,
    ctab: I64,
    itab: I64,
    vec: F32,
    qvec: I8,
) -> int:
    """Insert rows one by one (amortised O(1) each).

    Parameters
    ----------
    low : ndarray of float32, shape (n, k)
        Projected coordinates of the new rows.
    ids : ndarray of int64, shape (n,)
        New ids (the caller checked they are absent).
    edges, grid
        Cell boundaries and cells per dimension (see :func:`grid_codes`).
    b, T, mapped
        Map to the stored vectors (see :func:`filter_vec`).
    qinv : float
        Quantisation scale of the stored vectors (see the module comment).
    cells, meta, pvec, pids, ctab, itab
        Grid state (see the module docstring and comment).
    vec : ndarray of float32, shape (w,)
    qvec : ndarray of int8, shape (w,)
        Scratch rows (passed in so a single insert allocates nothing).

    Returns
    -------
    int
        Number of rows inserted. Fewer than ``n`` means the kernel stopped
        before touching the row it stopped at, for the reason in ``meta[4]``:
        an array is full (``STOP_ROOM``: the caller grows it and resumes), the
        row's stored vector overflows int8 (``STOP_RANGE``: the caller
        rescales), or its id is present (``STOP_CLASH``).
    """
    n = low.shape[0]
    prefetched = n > 1 and 8 * itab.shape[0] >= _PREFETCH_BYTES
    if prefetched:
        codes = _prefetch_insert(low, ids, edges, grid, cells, pvec, pids, ctab, itab)
    else:
        codes = np.empty(0, dtype=np.int64)
    acc = np.empty(T.shape[1], dtype=np.float64)
    for i in range(n):
        if table_find(itab, ids[i]) >= 0:
            meta[4] = STOP_CLASH
            return int(i)
        filter_vec(low[i], b, T, mapped, vec, acc)
        if quantize_into(vec, qinv, qvec) == 0:
            meta[4] = STOP_RANGE
            return int(i)
        meta[4] = STOP_ROOM
        # Keep the id table at most 3/4 full and the cell table at most half
        # full, so probe runs stay short (see semcache.index.grid._id_slots).
        if 4 * (meta[0] + 1) > 3 * table_slots(itab):
            return int(i)
        code = codes[i] if prefetched else cell_code(low[i], edges, grid)
        slot = table_find(ctab, code)
        if slot < 0:
            if meta[1] >= cells.shape[0] or 2 * (meta[1] + 1) > table_slots(ctab):
                return int(i)
            if meta[2] + 4 > pvec.shape[0]:
                return int(i)
            c = meta[1]
            cells[c, _START] = meta[2]
            cells[c, _COUNT] = 0
            cells[c, _CAP] = 4
            cells[c, _CODE] = code
            meta[2] += 4
            meta[1] += 1
            _table_put(ctab, code, c)
        else:
            c = ctab[2 * slot + 1]
        count = cells[c, _COUNT]
        if count == cells[c, _CAP]:
            # Move the block to the end of the pool with twice the room.
            new_cap = max(4, 2 * count)
            if meta[2] + new_cap > pvec.shape[0]:
                return int(i)
            old = cells[c, _START]
            new = meta[2]
            for r in range(count):
                _copy_row(pvec, old + r, pvec, new + r)
                pids[new + r] = pids[old + r]
            meta[3] += cells[c, _CAP]
            meta[2] += new_cap
            cells[c, _START] = new
            cells[c, _CAP] = new_cap
        pos = cells[c, _START] + count
        for t in range(qvec.shape[0]):  # as in _copy_row
            pvec[pos, t] = qvec[t]
        pids[pos] = ids[i]
        _table_put(itab, ids[i], _pack(c, count))
        cells[c, _COUNT] = count + 1
        meta[0] += 1
    return int(n)


@_kernel(
    "int64(int64[::1], int64[:, ::1], int64[::1], int8[:, ::1], int64[::1], int64[::1])"
)
def grid_remove(
    ids: I64,
    cells: I64,
    meta: I64,
    pvec: I8,
    pids: I64,
    itab: I64,
) -> int:
    """Remove entries by id (O(1) each); absent and negative ids are ignored.

    The last row of the cell moves into the hole, so blocks never have gaps.
    The removed row's cell comes from its id table value, and the moved row
    stays in that cell at its new position.

    Returns
    -------
    int
        Number of entries removed.
    """
    removed = 0
    for i in range(ids.shape[0]):
        slot = table_find(itab, ids[i])
        if slot < 0:
            continue
        val = itab[2 * slot + 1]
        c = _cell_of(val)
        offset = _offset_of(val)
        _table_delete_slot(itab, slot)
        start = cells[c, _START]
        last = cells[c, _COUNT] - 1
        if offset != last:
            _copy_row(pvec, start + last, pvec, start + offset)
            pids[start + offset] = pids[start + last]
            _table_put(itab, pids[start + offset], _pack(c, offset))
        cells[c, _COUNT] -= 1
        meta[0] -= 1
        removed += 1
    return removed


@_kernel("int64(int64[:, ::1], int64[::1], float64)")
def grid_packed_rows(cells: I64, meta: I64, slack: float) -> int:
    """Pool rows the blocks take once compacted by :func:`grid_compact`."""
    top = 0
    for c in range(meta[1]):
        top += _block_cap(cells[c, _COUNT], slack)
    return int(top)


@_kernel(
    "int64(int64[:, ::1], int64[::1], int8[:, ::1], int64[::1], int8[:, ::1], int64[::1], float64)"
)
def grid_compact(
    cells: I64,
    meta: I64,
    pvec: I8,
    pids: I64,
    new_pvec: I8,
    new_pids: I64,
    slack: float,
) -> int:
    """Copy the live rows into a fresh pool, dropping dead blocks.

    Rows keep their order within each block, so the id table stays valid
    (its values count from the block's start, see :func:`_pack`). Each block
    gets the room of a built one, ``count * slack + 2`` rows.

    Returns
    -------
    int
        New pool top, or -1 (and nothing changed) when the new pool is
        shorter than :func:`grid_packed_rows`.
    """
    if grid_packed_rows(cells, meta, slack) > min(new_pvec.shape[0], new_pids.shape[0]):
        return -1
    top = 0
    for c in range(meta[1]):
        count = cells[c, _COUNT]
        start = cells[c, _START]
        cap = _block_cap(count, slack)
        for r in range(count):
            _copy_row(pvec, start + r, new_pvec, top + r)
            new_pids[top + r] = pids[start + r]
        cells[c, _START] = top
        cells[c, _CAP] = cap
        top += cap
    meta[2] = top
    meta[3] = 0
    return int(top)


@_kernel("int64(float64[::1], int64[::1], int64, int64)")
def _heap_push(node_cost: F64, heap: I64, hsize: int, node: int) -> int:
    """Sift ``node`` (keyed by ``node_cost[node]``) up the min-heap of ``hsize`` nodes.

    Returns the new heap size.
    """
    cost = node_cost[node]
    pos = hsize
    while pos > 0:
        parent = (pos - 1) // 2
        if node_cost[heap[parent]] > cost:
            heap[pos] = heap[parent]
            pos = parent
        else:
            break
    heap[pos] = node
    return hsize + 1


@_kernel("int64(float64[::1], int64[::1], int64)")
def _heap_pop(node_cost: F64, heap: I64, hsize: int) -> int:
    """Remove the cheapest node from the min-heap of ``hsize >= 1`` nodes and return it.

    The heap then holds ``hsize - 1`` nodes.
    """
    top = heap[0]
    hsize -= 1
    if hsize > 0:
        last = heap[hsize]
        pos = 0
        cl = node_cost[last]
        while True:
            left = 2 * pos + 1
            if left >= hsize:
                break
            right = left + 1
            child = left
            if right < hsize and node_cost[heap[right]] < node_cost[heap[left]]:
                child = right
            if node_cost[heap[child]] < cl:
                heap[pos] = heap[child]
                pos = child
            else:
                break
        heap[pos] = last
    return int(top)


# ---------------------------------------------------------------------------
# Integer pre-filter of the scans. A row's float distance to the query
# converts its 32 int8 coordinates to float and sums their squared
# differences: ~3.4 ns a row. Its distance to the query rounded to integers
# takes one multiply-add of int16 pairs (pmaddwd on x86) and ~1.8 ns, and a
# bound on it (see _query_int) rejects most rows, so the float distance is
# computed only for the few that may lie in the filter ball. Measured on 2,400
# rows of width 32 (a 10k lookup's budget), 1% inside the ball: 1.8 against
# 3.4 ns a row, the same rows kept.
# ---------------------------------------------------------------------------

#: Row widths with an integer pre-filter; rows of other widths are scanned in float only.
_INT_WIDTHS = (16, 32, 64)


def _int_sq_dist(pvec: I8, p: Int, q_int: npt.NDArray[np.int16]) -> int:
    """``sum((pvec[p] - q_int) ** 2)`` for a row of a width in ``_INT_WIDTHS``, else -1.

    This Python version runs under ``NUMBA_DISABLE_JIT``; compiled code gets
    the vector intrinsic of :func:`_int_sq_dist_intrinsic` for the width.
    """
    if pvec.shape[1] not in _INT_WIDTHS:
        return -1
    diff = pvec[p].astype(np.int64) - q_int
    return int(diff @ diff)


def _int_sq_dist_intrinsic(width: int) -> Any:
    """The compiled ``_int_sq_dist`` for rows of ``width`` int8 coordinates (LLVM vector code)."""

    @intrinsic
    def sq_dist(typingctx: Any, pvec: Any, p: Any, q_int: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i32 = ir.IntType(32)
            rows = context.make_array(signature.args[0])(context, builder, args[0])
            query = context.make_array(signature.args[2])(context, builder, args[2])
            start = builder.gep(rows.data, [builder.mul(args[1], ir.Constant(ir.IntType(64), width))])
            v8 = builder.load(
                builder.bitcast(start, ir.VectorType(ir.IntType(8), width).as_pointer()), align=1
            )
            q16 = builder.load(
                builder.bitcast(query.data, ir.VectorType(ir.IntType(16), width).as_pointer()),
                align=2,
            )
            # int8 rows and a query clipped to the int8 range: differences fit int16.
            diff = builder.sub(builder.sext(v8, ir.VectorType(ir.IntType(16), width)), q16)
            wide = builder.sext(diff, ir.VectorType(i32, width))
            acc = builder.mul(wide, wide)
            n = width
            pairs = True
            while n > 1:
                half = n // 2
                # Adjacent lanes first: the x86 backend turns that sum of
                # products into one pmaddwd (the halves first measured 3.0 ns
                # a row against 1.8); then halves.
                lo = list(range(0, n, 2)) if pairs else list(range(half))
                hi = list(range(1, n, 2)) if pairs else list(range(half, n))
                pairs = False
                lanes = ir.VectorType(i32, half)
                acc = builder.add(
                    builder.shuffle_vector(acc, acc, ir.Constant(lanes, lo)),
                    builder.shuffle_vector(acc, acc, ir.Constant(lanes, hi)),
                )
                n = half
            return builder.sext(builder.extract_element(acc, i32(0)), ir.IntType(64))

        return nb.types.int64(pvec, nb.types.int64, q_int), codegen

    return sq_dist


_int_sq_dist_16: Any = _int_sq_dist_intrinsic(16)
_int_sq_dist_32: Any = _int_sq_dist_intrinsic(32)
_int_sq_dist_64: Any = _int_sq_dist_intrinsic(64)


@overload(_int_sq_dist)
def _int_sq_dist_overload(pvec: Any, p: Any, q_int: Any) -> Callable[..., Any]:
    # numba wants the implementation's parameters annotated as the typing one's.
    def impl(pvec: Any, p: Any, q_int: Any) -> Any:
        w = pvec.shape[1]
        if w == 32:
            return _int_sq_dist_32(pvec, p, q_int)
        if w == 16:
            return _int_sq_dist_16(pvec, p, q_int)
        if w == 64:
            return _int_sq_dist_64(pvec, p, q_int)
        return -1  # no integer path: -1 exceeds no bound, so the float distance decides

    return impl


@_kernel("int64(float32[::1], float32, int16[::1])")
def _query_int(q_vec: F32, filter_r2: float, q_int: npt.NDArray[np.int16]) -> int:
    """Round the query's vector into ``q_int``; return the pre-filter's bound, or -1 for none.

    The lookup kernels allocate ``q_int`` (~20 ns) instead of taking it from
    the caller like their other scratch: passing it would add an array to
    every lookup plan, and having this kernel allocate and return it made
    10k lookups ~1 us slower (measured).

    ``a = q_int`` is ``q = q_vec`` rounded and clipped to the int8 range. A
    row ``p`` inside the filter ball, ``|p - q|**2 <= filter_r2``, has
    ``|p - a| <= |p - q| + |q - a|`` (triangle inequality), so its integer
    distance ``|p - a|**2`` is at most ``(sqrt(filter_r2) + |q - a|)**2``:
    a row above that bound is outside the ball, and the scan keeps exactly the
    rows it keeps without the pre-filter. The bound gets a margin for the
    float rounding of the float distance. -1 (scan in float only) when the
    width has no integer path, the radius or the query is not finite, or
    the bound lets every row through.
    """
    w = q_vec.shape[0]
    if w not in _INT_WIDTHS:
        return -1
    if not np.isfinite(filter_r2) or filter_r2 < 0.0:
        return -1
    off2 = 0.0
    for t in range(w):
        x = np.float64(q_vec[t])
        if not np.isfinite(x):
            return -1
        r = min(max(np.round(x), -_Q_MAX - 1.0), _Q_MAX)
        q_int[t] = np.int16(r)
        off2 += (x - r) * (x - r)
    root = np.sqrt(np.float64(filter_r2) * (1.0 + 1e-5)) + np.sqrt(off2)
    bound = root * root * (1.0 + 1e-9) + 1.0
    if bound >= w * (2.0 * _Q_MAX + 1.0) ** 2:
        return -1
    return int(bound)


@_kernel(
    "int64(int8[:, ::1], int64[::1], int64, int64, float32[::1], float32, int64[::1], int64, int64,"
    " int16[::1], int64)",
    reassoc=True,
)
def _scan_rows(
    pvec: I8, pids: I64, start: int, count: int, q_vec: F32, filter_r2: float, out: I64,
    n_out: int, n_prev: int, q_int: npt.NDArray[np.int16], int_r2: int,
) -> int:
    """Append to ``out`` the ids of pool rows ``start .. start + count`` inside the filter ball.

    ``n_out`` ids are already in ``out``; an id among its first ``n_prev``
    (found by another table of a multi-table grid) is not added again.
    ``q_int`` and ``int_r2`` are the integer pre-filter's query and bound
    (:func:`_query_int`; ``int_r2 < 0``: none). Returns the new number of ids
    found, which may exceed ``len(out)``: ids past its end are counted, not
    written, so the caller can ask for a longer array.
    """
    w = pvec.shape[1]
    for p in range(start, start + count):
        if int_r2 >= 0 and _int_sq_dist(pvec, p, q_int) > int_r2:
            continue
        # One branch-free SIMD sum per row: an early exit on a short prefix
        # measured 2.5x slower (branch misses and a loop LLVM no longer
        # vectorises).
        d2 = np.float32(0.0)
        for t in range(w):
            diff = np.float32(pvec[p, t]) - q_vec[t]
            d2 += diff * diff
        if d2 <= filter_r2:
            pid = pids[p]
            seen = False
            # Few rows pass the filter, so a linear check is cheap.
            for u in range(n_prev):
                if out[u] == pid:
                    seen = True
                    break
            if seen:
                continue
            if n_out < out.shape[0]:
                out[n_out] = pid
            n_out += 1
    return n_out


@_kernel(
    "int64(float32[::1], float32[:, ::1], int64[::1], int64, int64[::1], float32[::1],"
    " float32[:, ::1], int64, float32, float32, int64[::1], int64)",
    reassoc=True,
)
def filter_rows(
    q_vec: F32, rows: F32, ids: I64, n_rows: int, perm: I64, b: F32, T: F32, mapped: int,
    qinv: float, filter_r2: float, out: I64, n_out: int,
) -> int:
    """Append to ``out`` the ids of float rows outside a grid that pass its filter.

    The lookup walks call this for rows not in the grid (a multi-table
    grid's insert buffer): each row is taken to the grid's column order and
    stored form as an insert would, without the int8 rounding, and kept
    under the same radius, which already allows for that rounding.

    Parameters
    ----------
    q_vec : ndarray of float32, shape (w,)
        The query's stored vector in stored units (see :func:`_query_vec`).
    rows : ndarray of float32, shape (cap, k)
        Projected rows in the caller's column order; the first ``n_rows`` count.
    ids : ndarray of int64, shape (cap,)
    n_rows : int
    perm : ndarray of int64, shape (k,)
        Grid column ``j`` is caller column ``perm[j]``.
    b, T, mapped, qinv
        The grid's map to stored vectors and its scale (see :func:`filter_vec`).
    filter_r2 : float
        Squared filter radius in stored units.
    out : ndarray of int64
    n_out : int
        Ids already in ``out``.

    Returns
    -------
    int
        The new number of ids found; as in :func:`_scan_rows`, it may exceed
        ``len(out)``.
    """
    if n_rows == 0:
        return n_out
    k = perm.shape[0]
    w = q_vec.shape[0]
    # Unmapped rows are their own stored vectors (zero-padded): no copies then.
    row = np.empty(k if mapped else 0, dtype=np.float32)
    vec = np.empty(w if mapped else 0, dtype=np.float32)
    acc = np.empty(T.shape[1] if mapped else 0, dtype=np.float64)
    for r in range(n_rows):
        if mapped:
            for j in range(k):
                row[j] = rows[r, perm[j]]
            filter_vec(row, b, T, mapped, vec, acc)
        d2 = np.float32(0.0)
        for t in range(w):
            x = vec[t] if mapped else (rows[r, perm[t]] if t < k else np.float32(0.0))
            diff = x * qinv - q_vec[t]
            d2 += diff * diff
        if d2 <= filter_r2:
            if n_out < out.shape[0]:
                out[n_out] = ids[r]
            n_out += 1
    return n_out


@_kernel(
    "int64(int64, int64[::1], int64[:, ::1], int8[:, ::1], int64[::1], float32[::1],"
    " float32, int64[::1], int64, int64, int64[::1], int16[::1], int64)"
)
def _visit_cell(
    code: Int, ctab: I64, cells: I64, pvec: I8, pids: I64, q_vec: F32,
    filter_r2: float, out: I64, n_out: int, n_prev: int, stats: I64,
    q_int: npt.NDArray[np.int16], int_r2: int,
) -> int:
    """Scan the cell with ``code``, if it is occupied, through the filter (see :func:`_scan_rows`).

    Adds 1 to ``stats[0]`` (occupied cells visited) and the cell's rows to
    ``stats[1]`` (rows scanned) when it is; returns the new number of ids found.
    """
    slot = table_find(ctab, code)
    if slot < 0:
        return n_out
    c = ctab[2 * slot + 1]
    count = cells[c, _COUNT]
    if count <= 0:
        return n_out
    stats[0] += 1
    stats[1] += count
    return _scan_rows(pvec, pids, cells[c, _START], count, q_vec, filter_r2, out, n_out, n_prev,
                      q_int, int_r2)


@_kernel("int64(int64[::1], float64[::1], int64[::1], int64, int64, int64, int64, float64, int64, int64)")
def _push_node(
    work_i: I64, node_cost: F64, heap: I64, base: int, m: int, j: int, step: int, cost: float,
    node: int, hsize: int,
) -> int:
    """Add probe node ``node``: the node stored at ``base`` moved to ``step`` along ``j``.

    Writes its step vector and last-moved dimension into ``work_i`` and its cost
    into ``node_cost``, sifts it up the min-heap ``heap`` of ``hsize`` nodes, and
    returns the new heap size (see :func:`grid_query` for the node layout).
    """
    nb_ = node * (m + 2)
    for t in range(m):
        work_i[nb_ + t] = work_i[base + t]
    work_i[nb_ + j] = step
    work_i[nb_ + m] = j
    node_cost[node] = cost
    return _heap_push(node_cost, heap, hsize, node)


@_kernel(
    "int64(float32[::1], float32[::1], float32[:, ::1], int64, float32, float32[:, ::1],"
    " int64, float64, float32, int64, int64, int64, int64[:, ::1], int64[::1], int8[:, ::1],"
    " int64[::1], int64[::1], int64[::1], float64[::1], int64[::1], int64[::1],"
    " int64[::1], float32[::1], int64[::1], int64, float32[:, ::1], int64[::1], int64, int64[::1])",
    reassoc=True,
)
def grid_query(
    q_low: F32,
    b: F32,
    T: F32,
    mapped: int,
    qinv: float,
    edges: F32,
    grid: int,
    probe_r2: float,
    filter_r2: float,
    max_cells: int,
    max_points: int,
    orthant: int,
    cells: I64,
    meta: I64,
    pvec: I8,
    pids: I64,
    ctab: I64,
    out: I64,
    work_f: F64,
    work_i: I64,
    stats: I64,
    heap: I64,
    q_vec: F32,
    hs: I64,
    n_prev: int,
    x_rows: F32,
    x_ids: I64,
    n_x: int,
    x_perm: I64,
) -> int:
    """Candidates of one query: best-first multiprobe, then the ball filter.

    Cells are visited in increasing lower bound of the distance from
    the query to the cell box in the ``m`` hashed dimensions: the home cell
    first, then neighbours by wall distance (the paper's orthant order is the
    special case of one step per dimension). Every visit stops at
    ``probe_r2``, after ``max_cells`` occupied cells, or once ``max_points``
    rows were scanned; empty cells cost a hash lookup and are not counted, so a
    query in an empty region walks on to the nearest occupied cells (the
    fallback of the paper, without its O(G^m) BFS table). Rows of the visited
    cells are kept when their stored vector lies within ``sqrt(filter_r2)``
    of the query's own vector.

    Parameters
    ----------
    q_low : ndarray of float32, shape (k,)
        Query's projected coordinates (the first m are hashed).
    b, T, mapped
        Map to the stored vectors (see :func:`filter_vec`).
    qinv : float
        Quantisation scale of the stored vectors.
    edges : ndarray of float32, shape (m, G - 1)
    grid : int
        ``G``.
    probe_r2 : float
        Visit no cell whose lower bound exceeds this (squared, projected units).
    filter_r2 : float
        Squared radius of the filter ball in stored units (``inf`` keeps
        every row).
    max_cells, max_points : int
        Probe budget.
    orthant : int
        1 restricts the probe to the paper's scheme: one step per dimension,
        towards the side of the home cell's midpoint the query lies on.
    cells, meta, pvec, pids, ctab
        Grid state.
    out : ndarray of int64, shape (cap,)
        Receives candidate ids.
    work_f : ndarray of float64, shape (nodes,)
    work_i : ndarray of int64, shape (nodes * (m + 2),)
        Scratch space for the probe heap; the walk stops when it is full.
    stats : ndarray of int64, shape (3,)
        Receives (occupied cells visited, rows scanned, cells popped).
    heap : ndarray of int64, shape (nodes,)
    q_vec : ndarray of float32, shape (w,)
    hs : ndarray of int64, shape (2 m,)
        More scratch. All scratch is owned by the caller and reused, so a
        lookup allocates nothing but the pre-filter's rounded query (see
        :func:`_query_int`; a fresh heap per lookup cost more than the scan of
        a small index).
    n_prev : int
        Ids already in ``out`` (from the other tables of a multi-table grid):
        kept, and not added again.
    x_rows, x_ids, n_x, x_perm
        Rows outside the grid that the lookup filters too, after the walk
        (see :func:`filter_rows`); ``n_x = 0`` for none. They count as scanned.

    Returns
    -------
    int
        Number of ids in ``out`` (``n_prev`` included), or ``-(needed)`` if
        it is too short.
    """
    m = edges.shape[0]
    _query_vec(q_low, b, T, mapped, qinv, q_vec)
    q_int = np.empty(q_vec.shape[0], dtype=np.int16)
    int_r2 = _query_int(q_vec, filter_r2, q_int)
    # Per dimension, the squared scaled gap from the query to the walls of the
    # cells below (steps -1, -2, ...) and above (+1, +2, ...) its home cell.
    # Options along dim j are encoded as signed steps; option cost is
    # monotone in |step| on each side, so the best-first frontier only ever
    # needs to extend a dimension by one step outward.
    home = hs[:m]
    side = hs[m : 2 * m]
    for j in range(m):
        x = q_low[j]
        c = 0
        while c < grid - 1 and x >= edges[j, c]:
            c += 1
        home[j] = c
        # Side of the home cell's midpoint (outer cells: towards the inside).
        if c == 0:
            side[j] = 1
        elif c == grid - 1:
            side[j] = -1
        else:
            side[j] = 1 if 2.0 * x >= edges[j, c - 1] + edges[j, c] else -1

    # Best-first enumeration of cells as vectors of per-dimension steps.
    # Each heap node is a step vector; successors move one dimension j >= the
    # node's last-moved dimension one step further out (on the side already
    # chosen, or start either side if the step is 0). This canonical order
    # reaches every step vector exactly once.
    cap_nodes = min(work_f.shape[0], work_i.shape[0] // (m + 2), heap.shape[0])
    # Node storage in work_i: [steps (m) | last_dim | heap payload unused]
    node_cost = work_f
    n_nodes = 0
    hsize = 0

    # Root: all zeros.
    for j in range(m):
        work_i[j] = 0
    work_i[m] = 0
    node_cost[0] = 0.0
    n_nodes = 1
    heap[0] = 0
    hsize = 1

    n_out = n_prev
    stats[0] = 0
    stats[1] = 0
    n_cells = meta[1]
    pops = 0
    while hsize > 0:
        top = _heap_pop(node_cost, heap, hsize)
        hsize -= 1
        cost = node_cost[top]
        if cost > probe_r2:
            break
        pops += 1
        base = top * (m + 2)
        # Cell code of this node.
        code = np.int64(0)
        mult = np.int64(1)
        for j in range(m):
            code += (home[j] + work_i[base + j]) * mult
            mult *= grid
        if n_cells > 0:
            n_out = _visit_cell(
                code, ctab, cells, pvec, pids, q_vec, filter_r2, out, n_out, n_prev, stats,
                q_int, int_r2,
            )
            if stats[0] >= max_cells or stats[1] >= max_points:
                break
        # Push successors.
        lastdim = work_i[base + m]
        for j in range(lastdim, m):
            s = work_i[base + j]
            if s == 0:
                # Start moving along j: try both directions.
                for direction in (-1, 1):
                    if orthant == 1 and direction != side[j]:
                        continue
                    nc = home[j] + direction
                    if nc < 0 or nc > grid - 1:
                        continue
                    gap = (
                        q_low[j] - edges[j, nc] if direction < 0 else edges[j, home[j]] - q_low[j]
                    )
                    ncost = cost + gap * gap
                    if ncost > probe_r2 or n_nodes >= cap_nodes:
                        continue
                    hsize = _push_node(work_i, node_cost, heap, base, m, j, direction, ncost,
                                       n_nodes, hsize)
                    n_nodes += 1
            elif j == lastdim and orthant == 0:
                # Extend the last-moved dimension one more step outward.
                direction = 1 if s > 0 else -1
                nc = home[j] + s + direction
                if nc < 0 or nc > grid - 1:
                    continue
                if direction < 0:
                    gap_new = (q_low[j] - edges[j, nc])
                    gap_old = (q_low[j] - edges[j, nc + 1])
                else:
                    gap_new = (edges[j, nc - 1] - q_low[j])
                    gap_old = (edges[j, nc - 2] - q_low[j]) if nc >= 2 else 0.0
                ncost = cost - gap_old * gap_old + gap_new * gap_new
                if ncost > probe_r2 or n_nodes >= cap_nodes:
                    continue
                hsize = _push_node(work_i, node_cost, heap, base, m, j, s + direction, ncost,
                                   n_nodes, hsize)
                n_nodes += 1
    stats[2] = pops
    n_out = filter_rows(q_vec, x_rows, x_ids, n_x, x_perm, b, T, mapped, qinv, filter_r2, out, n_out)
    stats[1] += n_x
    if n_out > out.shape[0]:
        return int(-n_out)
    return int(n_out)


@_kernel(
    "int64(float32[::1], float32[::1], float32[:, ::1], int64, float32, float32[:, ::1],"
    " float64, float32, int64, int64, int64[:, ::1], int8[:, ::1], int64[::1],"
    " int64[::1], int64[::1], float64[::1], int64[::1], int64[::1], int64[::1],"
    " float32[::1], int64[::1], float64[::1], int64, float32[:, ::1], int64[::1], int64, int64[::1])",
    reassoc=True,
)
def grid_query_binary(
    q_low: F32,
    b: F32,
    T: F32,
    mapped: int,
    qinv: float,
    edges: F32,
    probe_r2: float,
    filter_r2: float,
    max_cells: int,
    max_points: int,
    cells: I64,
    pvec: I8,
    pids: I64,
    ctab: I64,
    out: I64,
    work_f: F64,
    work_i: I64,
    stats: I64,
    heap: I64,
    q_vec: F32,
    order: I64,
    gap2: F64,
    n_prev: int,
    x_rows: F32,
    x_ids: I64,
    n_x: int,
    x_perm: I64,
) -> int:
    """Candidates of one query on a two-slice grid (``G = 2``), probed best-first.

    With two slices per dimension a cell is a bit vector, and a cell's wall
    distance from the query is the sum of the squared gaps ``gap2[j]`` of the
    bits it flips. Cells are enumerated in increasing wall distance by the
    shift/expand scheme of multi-probe LSH (Lv et al., VLDB 2007): with the
    dimensions sorted by gap, a flip set whose largest sorted position is
    ``i`` has two successors, *shift* (``i`` -> ``i + 1``) and *expand*
    (add ``i + 1``); both cost at least as much, and every flip set is
    reached exactly once from the empty set (the home cell). A node is thus
    three words (cost, code, position) and a pop pushes at most two nodes,
    where the general walk of :func:`grid_query` copies a step vector per
    successor. Cheap probing is what lets the grid use many dimensions
    (``2**m`` cells, most of them small or empty) and scan few rows.

    Parameters are those of :func:`grid_query` without ``grid``,
    ``orthant``, ``meta`` (an occupied cell is one with rows, whatever the
    cell count) and ``hs``, except:

    edges : ndarray of float32, shape (m, 1)
        The boundary of each hashed dimension.
    work_f : ndarray of float64, shape (nodes,)
        Node costs.
    work_i : ndarray of int64, shape (2 * nodes,)
        Node (code, position) pairs.
    order : ndarray of int64, shape (m,)
    gap2 : ndarray of float64, shape (m,)
        Scratch: the dimensions sorted by squared gap, and the gaps.
    n_prev : int
        Ids already in ``out`` (from the other tables of a multi-table grid):
        kept, and not added again.

    Returns
    -------
    int
        Number of ids in ``out`` (``n_prev`` included), or ``-(needed)`` if
        it is too short.
    """
    m = edges.shape[0]
    _query_vec(q_low, b, T, mapped, qinv, q_vec)
    q_int = np.empty(q_vec.shape[0], dtype=np.int16)
    int_r2 = _query_int(q_vec, filter_r2, q_int)
    home = np.int64(0)
    for j in range(m):
        g = np.float64(q_low[j]) - np.float64(edges[j, 0])
        if g >= 0.0:
            home |= np.int64(1) << j
        gap2[j] = g * g
        # Insertion sort of the dimensions by gap (m is small).
        pos = j
        while pos > 0 and gap2[order[pos - 1]] > gap2[j]:
            order[pos] = order[pos - 1]
            pos -= 1
        order[pos] = j
    cap_nodes = min(work_f.shape[0], work_i.shape[0] // 2, heap.shape[0])
    # Root: the empty flip set (the home cell), at sorted position -1.
    work_f[0] = 0.0
    work_i[0] = home
    work_i[1] = -1
    heap[0] = 0
    hsize = 1
    n_nodes = 1
    n_out = n_prev
    stats[0] = 0
    stats[1] = 0
    pops = 0
    # The walk runs one occupied cell ahead of the scan: it pops (and expands)
    # nodes until it reaches the next occupied cell, starts loading that
    # cell's rows (_prefetch_rows), and only then scans the cell found before.
    # Pops and pushes are those of a walk that scans each cell as it pops it,
    # in the same order, so the same cells are scanned; the last one found may
    # go unscanned when the budget runs out.
    # A pool that fits the caches gains nothing from prefetching, which then
    # only adds instructions (see _PREFETCH_BYTES).
    prefetch = pvec.shape[0] * pvec.shape[1] >= _PREFETCH_BYTES
    waiting = -1  # occupied cell found and not yet scanned
    waiting_pops = 0  # pops up to and including it
    while True:
        found = -1
        while hsize > 0:
            top = _heap_pop(work_f, heap, hsize)
            hsize -= 1
            cost = work_f[top]
            if cost > probe_r2:
                hsize = 0  # every node left costs at least as much
                break
            pops += 1
            code = work_i[2 * top]
            i = work_i[2 * top + 1]
            slot = table_find(ctab, code)
            if slot >= 0 and cells[ctab[2 * slot + 1], _COUNT] > 0:
                found = ctab[2 * slot + 1]
            if i + 1 < m:
                nxt = order[i + 1]
                # Expand: also flip the next dimension.
                ncost = cost + gap2[nxt]
                if ncost <= probe_r2 and n_nodes < cap_nodes:
                    work_f[n_nodes] = ncost
                    work_i[2 * n_nodes] = code ^ (np.int64(1) << nxt)
                    work_i[2 * n_nodes + 1] = i + 1
                    hsize = _heap_push(work_f, heap, hsize, n_nodes)
                    n_nodes += 1
                # Shift: flip the next dimension instead of the last one.
                if i >= 0:
                    cur = order[i]
                    ncost = cost - gap2[cur] + gap2[nxt]
                    if ncost <= probe_r2 and n_nodes < cap_nodes:
                        work_f[n_nodes] = ncost
                        work_i[2 * n_nodes] = code ^ (np.int64(1) << cur) ^ (np.int64(1) << nxt)
                        work_i[2 * n_nodes + 1] = i + 1
                        hsize = _heap_push(work_f, heap, hsize, n_nodes)
                        n_nodes += 1
            if found >= 0:
                break
        if found >= 0 and prefetch:
            _prefetch_rows(pvec, cells[found, _START], cells[found, _COUNT])
        if waiting >= 0:
            # Inline, not a helper kernel: a call passes every array again
            # (grid_query's visits through two nested calls cost it 9% at 10k).
            count = cells[waiting, _COUNT]
            stats[0] += 1
            stats[1] += count
            n_out = _scan_rows(pvec, pids, cells[waiting, _START], count, q_vec, filter_r2, out,
                               n_out, n_prev, q_int, int_r2)
            if stats[0] >= max_cells or stats[1] >= max_points:
                pops = waiting_pops
                break
        if found < 0:
            break
        waiting = found
        waiting_pops = pops
    stats[2] = pops
    n_out = filter_rows(q_vec, x_rows, x_ids, n_x, x_perm, b, T, mapped, qinv, filter_r2, out, n_out)
    stats[1] += n_x
    if n_out > out.shape[0]:
        return int(-n_out)
    return int(n_out)


# ---------------------------------------------------------------------------
# Lookup plans: every table of a grid in one kernel call.
# ---------------------------------------------------------------------------
#
# Entering a kernel unboxes each array argument, ~35 ns apiece, and a
# table's lookup kernel takes 20 arrays: a two-table lookup that entered it
# once per table spent more time passing arguments, and in the Python around
# two calls, than in probing. A plan is one int64 row per table holding its
# settings and, for each of its arrays, the data address and shape;
# grid_lookup rebuilds the arrays from the addresses (no copies) and runs
# every table, so a lookup passes 5 arrays whatever the number of tables.
# Measured in one process against the per-table calls, with the same
# candidates (1,000 held-out QQP queries): a two-table lookup went from 17.9
# to 15.0 us (p50) at 10k real rows and from 40.2 to 38.0 us at 92k. The
# owner keeps the arrays alive next to the plan and drops the plan whenever
# one is replaced (see grid.LookupPlan).

#: Plan row: these settings first, then (address, rows, columns) per array.
_PLAN_BINARY = 0
_PLAN_MAPPED = 1
_PLAN_GRID = 2
_PLAN_ORTHANT = 3
_PLAN_PROBE_CELLS = 4
_PLAN_HEAD = 5

#: The arrays of a plan row, in order, with their dtypes and dimensions.
PLAN_ARRAYS: tuple[tuple[str, type[np.generic], int], ...] = (
    ("b", np.float32, 1),
    ("T", np.float32, 2),
    ("edges", np.float32, 2),
    ("cells", np.int64, 2),
    ("meta", np.int64, 1),
    ("pvec", np.int8, 2),
    ("pids", np.int64, 1),
    ("ctab", np.int64, 1),
    ("work_f", np.float64, 1),
    ("work_i", np.int64, 1),
    ("stats", np.int64, 1),
    ("heap", np.int64, 1),
    ("q_vec", np.float32, 1),
    ("order", np.int64, 1),
    ("gap2", np.float64, 1),
    ("hs", np.int64, 1),
    ("perm", np.int64, 1),
    ("q_row", np.float32, 1),
)
(_A_B, _A_T, _A_EDGES, _A_CELLS, _A_META, _A_PVEC, _A_PIDS, _A_CTAB, _A_WORK_F, _A_WORK_I,
 _A_STATS, _A_HEAP, _A_QVEC, _A_ORDER, _A_GAP2, _A_HS, _A_PERM, _A_QROW) = range(len(PLAN_ARRAYS))
PLAN_WIDTH = _PLAN_HEAD + 3 * len(PLAN_ARRAYS)


def plan_row(settings: tuple[int, ...], arrays: tuple[npt.NDArray[Any], ...]) -> I64:
    """One table's plan row, after checking every array against :data:`PLAN_ARRAYS`.

    The check is what makes the addresses safe to read as those types: an
    array of another dtype, shape or layout is refused here, not misread in
    the kernel.

    Parameters
    ----------
    settings : tuple of int
        (binary walk, mapped, G, orthant, at most this many cells).
    arrays : tuple of ndarray
        In the order of :data:`PLAN_ARRAYS`; the caller keeps them alive as
        long as the row is used.

    Returns
    -------
    ndarray of int64, shape (PLAN_WIDTH,)
    """
    if len(settings) != _PLAN_HEAD or len(arrays) != len(PLAN_ARRAYS):
        raise ValueError("a plan row takes 5 settings and one array per PLAN_ARRAYS entry")
    row = np.zeros(PLAN_WIDTH, dtype=np.int64)
    row[:_PLAN_HEAD] = settings
    for i, (arr, (name, dtype, ndim)) in enumerate(zip(arrays, PLAN_ARRAYS, strict=True)):
        if arr.dtype != dtype or arr.ndim != ndim or not arr.flags.c_contiguous:
            raise ValueError(
                f"plan array {name} must be C-contiguous {np.dtype(dtype).name} with {ndim} "
                f"dimension(s), got {arr.dtype.name} {arr.shape}"
            )
        base = _PLAN_HEAD + 3 * i
        row[base] = arr.ctypes.data
        row[base + 1] = arr.shape[0]
        row[base + 2] = arr.shape[1] if ndim == 2 else 1
    return row



@_kernel("float32[::1](int64[::1], int64)")
def _plan_f32(row: I64, i: int) -> F32:
    base = _PLAN_HEAD + 3 * i
    return carray(_address(row[base]), (row[base + 1],), np.float32)


@_kernel("float32[:, ::1](int64[::1], int64)")
def _plan_f32_2d(row: I64, i: int) -> F32:
    base = _PLAN_HEAD + 3 * i
    return carray(_address(row[base]), (row[base + 1], row[base + 2]), np.float32)


@_kernel("float64[::1](int64[::1], int64)")
def _plan_f64(row: I64, i: int) -> F64:
    base = _PLAN_HEAD + 3 * i
    return carray(_address(row[base]), (row[base + 1],), np.float64)


@_kernel("int64[::1](int64[::1], int64)")
def _plan_i64(row: I64, i: int) -> I64:
    base = _PLAN_HEAD + 3 * i
    return carray(_address(row[base]), (row[base + 1],), np.int64)


@_kernel("int64[:, ::1](int64[::1], int64)")
def _plan_i64_2d(row: I64, i: int) -> I64:
    base = _PLAN_HEAD + 3 * i
    return carray(_address(row[base]), (row[base + 1], row[base + 2]), np.int64)


@_kernel("int8[:, ::1](int64[::1], int64)")
def _plan_i8_2d(row: I64, i: int) -> I8:
    base = _PLAN_HEAD + 3 * i
    return carray(_address(row[base]), (row[base + 1], row[base + 2]), np.int8)


@_kernel(
    "int64(float32[::1], int64[:, ::1], float64[:, ::1], int64, int64[::1], float32[:, ::1],"
    " int64[::1], int64)",
    reassoc=True,
)
def grid_lookup(
    q_low: F32, plan: I64, params: F64, max_points: int, out: I64, x_rows: F32, x_ids: I64,
    n_x: int,
) -> int:
    """Candidates of one query over every table of a plan, without duplicates.

    Each table takes the query in its own column order and runs
    :func:`grid_query_binary` or :func:`grid_query`, keeping the ids the
    tables before it found.

    Parameters
    ----------
    q_low : ndarray of float32, shape (k,)
        The query's projected coordinates, in the caller's column order.
    plan : ndarray of int64, shape (tables, PLAN_WIDTH)
        Rows from :func:`plan_row`.
    params : ndarray of float64, shape (tables, 3)
        Per table: int8 scale ``qinv``, squared probe radius, squared filter
        radius in stored units.
    max_points : int
        Rows each table may scan.
    out : ndarray of int64
        Receives the ids.
    x_rows, x_ids, n_x
        Rows outside the tables, in the caller's column order, that the first
        table filters too (a multi-table grid's insert buffer; see
        :func:`filter_rows`).

    Returns
    -------
    int
        Number of ids in ``out``, or ``-(needed)`` if it is too short.
    """
    n_out = 0
    for t in range(plan.shape[0]):
        row = plan[t]
        perm = _plan_i64(row, _A_PERM)
        q_row = _plan_f32(row, _A_QROW)
        for j in range(perm.shape[0]):
            q_row[j] = q_low[perm[j]]
        # float64 here; the kernels take float32 (the signature converts).
        qinv = params[t, 0]
        filter_r2 = params[t, 2]
        n_rows = n_x if t == 0 else 0
        if row[_PLAN_BINARY]:
            n_out = grid_query_binary(
                q_row, _plan_f32(row, _A_B), _plan_f32_2d(row, _A_T), row[_PLAN_MAPPED], qinv,
                _plan_f32_2d(row, _A_EDGES), params[t, 1], filter_r2, row[_PLAN_PROBE_CELLS],
                max_points, _plan_i64_2d(row, _A_CELLS), _plan_i8_2d(row, _A_PVEC),
                _plan_i64(row, _A_PIDS), _plan_i64(row, _A_CTAB), out,
                _plan_f64(row, _A_WORK_F), _plan_i64(row, _A_WORK_I), _plan_i64(row, _A_STATS),
                _plan_i64(row, _A_HEAP), _plan_f32(row, _A_QVEC), _plan_i64(row, _A_ORDER),
                _plan_f64(row, _A_GAP2), n_out, x_rows, x_ids, n_rows, perm,
            )
        else:
            n_out = grid_query(
                q_row, _plan_f32(row, _A_B), _plan_f32_2d(row, _A_T), row[_PLAN_MAPPED], qinv,
                _plan_f32_2d(row, _A_EDGES), row[_PLAN_GRID], params[t, 1], filter_r2,
                row[_PLAN_PROBE_CELLS], max_points, row[_PLAN_ORTHANT],
                _plan_i64_2d(row, _A_CELLS), _plan_i64(row, _A_META), _plan_i8_2d(row, _A_PVEC),
                _plan_i64(row, _A_PIDS), _plan_i64(row, _A_CTAB), out, _plan_f64(row, _A_WORK_F),
                _plan_i64(row, _A_WORK_I), _plan_i64(row, _A_STATS), _plan_i64(row, _A_HEAP),
                _plan_f32(row, _A_QVEC), _plan_i64(row, _A_HS), n_out, x_rows, x_ids, n_rows,
                perm,
            )
        if n_out < 0:
            return n_out
    return n_out


@_kernel("int64[::1](int64[::1], int64[::1], int64[:, ::1])")
def codes_of_ids(ids: I64, itab: I64, cells: I64) -> I64:
    """Cell code of each id, -1 for ids not in the index.

    Parameters
    ----------
    ids : ndarray of int64, shape (n,)
    itab : ndarray of int64, shape (2 * slots,)
        Id table (the cell of each row is in its value, see :func:`_pack`).
    cells : ndarray of int64, shape (cell_cap, 4)
    """
    out = np.full(ids.shape[0], -1, dtype=np.int64)
    for i in range(ids.shape[0]):
        slot = table_find(itab, ids[i])
        if slot >= 0:
            out[i] = cells[_cell_of(itab[2 * slot + 1]), _CODE]
    return out


