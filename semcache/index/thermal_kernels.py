"""Numba kernels of the thermal bloom index (:mod:`semcache.index.thermal`): the dense field.

Its cells are a grid's (:mod:`semcache.index.grid_kernels`).
"""

from __future__ import annotations

import numpy as np

from semcache.index._kernels_common import (
    F32,
    F64,
    I8,
    I32,
    I64,
    _kernel,
    table_find,
)
from semcache.index.grid_kernels import (
    _COUNT,
    _START,
    _query_int,
    _query_vec,
    _scan_rows,
)

__all__ = [
    "thermal_add_patch",
    "thermal_climb",
    "thermal_gather",
    "thermal_occupy",
]

# ---------------------------------------------------------------------------
# Thermal bloom field (dense, m <= 3 dimensions, flat index sum_j c_j G^j).
# ---------------------------------------------------------------------------


@_kernel("void(float64[::1], int64, int64, int64, float64[::1], float64)")
def thermal_add_patch(field: F64, code: int, grid: int, m: int, w1d: F64, sign: float) -> None:
    """Add ``sign`` times the separable Gaussian kernel centred on one cell.

    This is the local re-diffusion of a streaming insert (``sign=+1``) or
    delete (``-1``): with zero padding outside the grid, the full field is
    exactly the sum of these patches over occupied cells, which is what
    ``scipy.ndimage.gaussian_filter(mode="constant")`` computes on the
    occupancy array.

    Parameters
    ----------
    field : ndarray of float64, shape (G**m,)
    code : int
        Flat cell index.
    grid, m : int
    w1d : ndarray of float64, shape (2 * radius + 1,)
        Normalised 1-D kernel.
    sign : float
    """
    rad = (w1d.shape[0] - 1) // 2
    c0 = code % grid
    c1 = (code // grid) % grid if m > 1 else 0
    c2 = (code // (grid * grid)) % grid if m > 2 else 0
    lo0, hi0 = max(0, c0 - rad), min(grid - 1, c0 + rad)
    lo1, hi1 = (max(0, c1 - rad), min(grid - 1, c1 + rad)) if m > 1 else (0, 0)
    lo2, hi2 = (max(0, c2 - rad), min(grid - 1, c2 + rad)) if m > 2 else (0, 0)
    for i2 in range(lo2, hi2 + 1):
        f2 = w1d[i2 - c2 + rad] if m > 2 else 1.0
        for i1 in range(lo1, hi1 + 1):
            f1 = f2 * (w1d[i1 - c1 + rad] if m > 1 else 1.0)
            base = i2 * grid * grid + i1 * grid
            for i0 in range(lo0, hi0 + 1):
                field[base + i0] += sign * f1 * w1d[i0 - c0 + rad]


@_kernel("int64(int64[::1], int64, int32[::1], float64[::1], int64, int64, float64[::1])")
def thermal_occupy(
    codes: I64, delta: int, occ: I32, field: F64, grid: int, m: int, w1d: F64
) -> int:
    """Count rows into / out of cells; re-diffuse locally where occupancy flips.

    Parameters
    ----------
    codes : ndarray of int64, shape (n,)
        Flat cell index per row (-1 rows are skipped).
    delta : int
        +1 for inserted rows, -1 for removed ones.
    occ : ndarray of int32, shape (G**m,)
        Rows per cell.
    field, grid, m, w1d
        See :func:`thermal_add_patch`.

    Returns
    -------
    int
        Number of cells whose occupancy flipped (patches applied).
    """
    flips = 0
    for i in range(codes.shape[0]):
        c = codes[i]
        if c < 0:
            continue
        before = occ[c]
        occ[c] = before + delta
        if before == 0 and delta > 0:
            thermal_add_patch(field, c, grid, m, w1d, 1.0)
            flips += 1
        elif before + delta == 0 and delta < 0:
            thermal_add_patch(field, c, grid, m, w1d, -1.0)
            flips += 1
    return flips


@_kernel("int64(float64[::1], int64, int64, int64, int64)")
def thermal_climb(field: F64, code: int, grid: int, m: int, max_steps: int) -> int:
    """Steepest strictly-uphill walk on the field from a cell to a local maximum.

    The reference algorithm steps by the sign of a central-difference gradient
    and never checks that the field went up, so on plateaus and ridges it
    oscillates until its step cap. Here every step moves to the neighbour
    (of the 3^m - 1) with the highest field value, only if that value is
    strictly higher than the current one; otherwise the walk stops, so it
    terminates at a local maximum (or after ``max_steps``) and never revisits a
    cell.

    Returns
    -------
    int
        Flat index of the final cell.
    """
    cur = code
    for _ in range(max_steps):
        c0 = cur % grid
        c1 = (cur // grid) % grid if m > 1 else 0
        c2 = (cur // (grid * grid)) % grid if m > 2 else 0
        best = cur
        best_v = field[cur]
        r1 = 1 if m > 1 else 0
        r2 = 1 if m > 2 else 0
        for d2 in range(-r2, r2 + 1):
            i2 = c2 + d2
            if i2 < 0 or i2 >= grid:
                continue
            for d1 in range(-r1, r1 + 1):
                i1 = c1 + d1
                if i1 < 0 or i1 >= grid:
                    continue
                for d0 in range(-1, 2):
                    i0 = c0 + d0
                    if i0 < 0 or i0 >= grid:
                        continue
                    nb_ = i2 * grid * grid + i1 * grid + i0
                    if field[nb_] > best_v:
                        best_v = field[nb_]
                        best = nb_
        if best == cur:
            break
        cur = best
    return int(cur)


@_kernel("float64(float32[::1], float64[::1], float64[::1], int64, int64, int64, int64, float64)")
def _gap(
    q_low: F32, lo: F64, width: F64, grid: int, j: int, i: int, d: int, cell_scale: float
) -> float:
    # Squared gap along dimension j from the query (metric mode) or from the
    # centre cell (cell mode) to cell i.
    if cell_scale > 0:
        return float(d * d)
    x = float(q_low[j])
    left = lo[j] + i * width[j]
    right = left + width[j]
    # Outer cells extend to infinity: points beyond the bounds are clamped in.
    if i == 0:
        left = -np.inf
    if i == grid - 1:
        right = np.inf
    if x < left:
        return (left - x) ** 2  # type: ignore[no-any-return]
    if x > right:
        return (x - right) ** 2  # type: ignore[no-any-return]
    return 0.0


@_kernel(
    "int64(float32[::1], float32[::1], float32[:, ::1], int64, float32, float64[::1], float64[::1],"
    " int64, int64, float64, float32, float64, int32[::1], int64[:, ::1], int8[:, ::1],"
    " int64[::1], int64[::1], int64[::1])",
    reassoc=True,
)
def thermal_gather(
    q_low: F32,
    b: F32,
    T: F32,
    mapped: int,
    qinv: float,
    lo: F64,
    width: F64,
    grid: int,
    centre: int,
    r2: float,
    filter_r2: float,
    cell_scale: float,
    occ: I32,
    cells: I64,
    pvec: I8,
    pids: I64,
    ctab: I64,
    out: I64,
) -> int:
    """Candidates from the cells near a centre cell.

    With ``cell_scale == 0`` the neighbourhood is metric: cells whose box lies
    within ``sqrt(r2)`` of the query point (lower bound over the box, in
    projected units). With ``cell_scale > 0`` it is the paper's radius-r
    neighbourhood of ``centre`` in cell units: cells whose index offset has
    squared length <= ``r2``. Rows are kept when their stored vector lies
    within ``sqrt(filter_r2)`` of the query's.

    Parameters
    ----------
    q_low : ndarray of float32, shape (k,)
    b, T, mapped
        Map to the stored vectors (see :func:`filter_vec`).
    qinv : float
        Quantisation scale of the stored vectors (``filter_r2`` is in stored units).
    lo, width : ndarray of float64, shape (m,)
        Lower corner and cell width of the uniform grid per dimension.
    grid : int
    centre : int
        Flat index of the centre cell.
    r2, filter_r2 : float
    cell_scale : float
    occ : ndarray of int32, shape (G**m,)
    cells, pvec, pids, ctab
        Cell blocks (same layout as the grid index).
    out : ndarray of int64
        Receives ids.

    Returns
    -------
    int
        Ids written, or ``-(needed)`` when ``out`` is too short.
    """
    m = lo.shape[0]
    q_vec = np.empty(pvec.shape[1], dtype=np.float32)
    _query_vec(q_low, b, T, mapped, qinv, q_vec)
    q_int = np.empty(pvec.shape[1], dtype=np.int16)
    int_r2 = _query_int(q_vec, filter_r2, q_int)
    cc = np.zeros(3, dtype=np.int64)
    cc[0] = centre % grid
    if m > 1:
        cc[1] = (centre // grid) % grid
    if m > 2:
        cc[2] = (centre // (grid * grid)) % grid
    # Per-dimension reach in cells, and the gap to each reachable cell.
    reach = np.zeros(3, dtype=np.int64)
    for j in range(m):
        if cell_scale > 0:
            reach[j] = np.int64(np.floor(np.sqrt(r2)))
        else:
            reach[j] = np.int64(np.ceil(np.sqrt(r2) / width[j])) + 1
    n_out = 0
    for d2 in range(-reach[2], reach[2] + 1):
        i2 = cc[2] + d2
        if i2 < 0 or i2 >= grid:
            continue
        g2 = _gap(q_low, lo, width, grid, 2, i2, d2, cell_scale) if m > 2 else 0.0
        if g2 > r2:
            continue
        for d1 in range(-reach[1], reach[1] + 1):
            i1 = cc[1] + d1
            if i1 < 0 or i1 >= grid:
                continue
            g1 = g2 + (_gap(q_low, lo, width, grid, 1, i1, d1, cell_scale) if m > 1 else 0.0)
            if g1 > r2:
                continue
            for d0 in range(-reach[0], reach[0] + 1):
                i0 = cc[0] + d0
                if i0 < 0 or i0 >= grid:
                    continue
                g0 = g1 + _gap(q_low, lo, width, grid, 0, i0, d0, cell_scale)
                if g0 > r2:
                    continue
                code = i2 * grid * grid + i1 * grid + i0
                if occ[code] == 0:
                    continue
                slot = table_find(ctab, code)
                if slot < 0:
                    continue
                c = ctab[2 * slot + 1]
                n_out = _scan_rows(
                    pvec, pids, cells[c, _START], cells[c, _COUNT], q_vec, filter_r2, out, n_out, 0,
                    q_int, int_r2,
                )
    if n_out > out.shape[0]:
        return int(-n_out)
    return int(n_out)

