"""Numba kernels of the two-table grid (:mod:`semcache.index.multigrid`): its insert buffer.

The tables themselves run the grid's kernels (:mod:`semcache.index.grid_kernels`).
"""

from __future__ import annotations

import numpy as np

from semcache.index._kernels_common import (
    F32,
    I64,
    _kernel,
    table_find,
)

__all__ = [
    "buffer_drop",
    "buffer_put",
    "buffer_put_key",
]

@_kernel(
    "int64(float32[:, ::1], int64, float32[:, ::1], int64, int64[::1], float32[:, ::1],"
    " int64[::1], int64)"
)
def buffer_put_key(
    low: F32, key: int, full: F32, d: int, itab: I64, buf_low: F32, buf_ids: I64, n_buf: int,
) -> int:
    """Append one row to an insert buffer after checking it as an insert would.

    One call does all the checks and the copy: entering a kernel costs more
    than all of them, so a single insert enters just this one (arguments of
    another dtype or layout fail the kernel's signature instead).

    Parameters
    ----------
    low : ndarray of float32, shape (1, k)
    key : int
        The row's id.
    full : ndarray of float32, shape (1, d)
        Only its shape is checked.
    d : int
        Width of the full vectors of the index.
    itab : ndarray of int64, shape (2 * slots,)
        Id table of a grid holding every other row.
    buf_low : ndarray of float32, shape (cap, k)
    buf_ids : ndarray of int64, shape (cap,)
    n_buf : int
        Rows in the buffer (less than ``cap``).

    Returns
    -------
    int
        1 when the row was appended. Otherwise nothing was written, and: -1
        the id is negative, -2 it is in the grid or the buffer, -3 the
        arguments are not one row of the index's widths, -4 the row is not
        finite.
    """
    k = buf_low.shape[1]
    if low.shape[0] != 1 or low.shape[1] != k or full.shape[0] != 1 or full.shape[1] != d:
        return -3
    if key < 0:
        return -1
    for j in range(k):
        if not np.isfinite(low[0, j]):
            return -4
    if table_find(itab, key) >= 0:
        return -2
    for r in range(n_buf):
        if buf_ids[r] == key:
            return -2
    for j in range(k):
        buf_low[n_buf, j] = low[0, j]
    buf_ids[n_buf] = key
    return 1


@_kernel(
    "int64(float32[:, ::1], int64[::1], float32[:, ::1], int64, int64[::1], float32[:, ::1],"
    " int64[::1], int64)"
)
def buffer_put(
    low: F32, ids: I64, full: F32, d: int, itab: I64, buf_low: F32, buf_ids: I64, n_buf: int,
) -> int:
    """:func:`buffer_put_key` with the id as an array of one, shape (1,) (else -3)."""
    if ids.shape[0] != 1:
        return -3
    return buffer_put_key(low, ids[0], full, d, itab, buf_low, buf_ids, n_buf)


@_kernel("int64(int64[::1], float32[:, ::1], int64[::1], int64)")
def buffer_drop(ids: I64, buf_low: F32, buf_ids: I64, n_buf: int) -> int:
    """Remove the rows with these ids from an insert buffer; returns the rows left.

    The last row moves into each hole, so the live rows stay the first ones.
    Absent ids are ignored.
    """
    for i in range(ids.shape[0]):
        key = ids[i]
        for r in range(n_buf):
            if buf_ids[r] == key:
                n_buf -= 1
                buf_ids[r] = buf_ids[n_buf]
                for j in range(buf_low.shape[1]):
                    buf_low[r, j] = buf_low[n_buf, j]
                break
    return n_buf


