"""Numba kernels of :class:`~semcache.index.dsbf.DistanceSensitiveBloomFilter`.

Each kernel has an explicit signature, is compiled ahead of first use and kept
on disk (``cache=True``) like the other index kernels, and releases the GIL.
The projections themselves (``vectors @ planes``) are one BLAS call made by the
caller; the kernels turn projected rows into array addresses and read or write
the arrays.

Addressing: array ``j`` of a row uses the signs of projected coordinates
``j*L .. j*L+L-1`` as an ``L``-bit code. When ``2**L`` fits the array
(``L <= log_b``) the code *is* the address (the paper's layout); otherwise the
code is mixed with ``j`` (splitmix64 finaliser) and its top ``log_b`` bits are
the address, so arrays of a fixed size take codes of any length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba as nb
import numpy as np

__all__ = [
    "dsbf_addresses",
    "dsbf_count_add",
    "dsbf_count_remove",
    "dsbf_score_bits",
    "dsbf_score_counts",
    "dsbf_set_bits",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def _kernel(signature: str) -> Callable[[_F], _F]:
    """``numba.njit`` with an explicit signature, on-disk cache and no GIL, typed for mypy."""
    return cast(Callable[[_F], _F], nb.njit(signature, cache=True, nogil=True))


@_kernel("int64(uint64, int64, int64, int64)")
def address_of(code: np.uint64, j: int, L: int, log_b: int) -> int:
    """Address in array ``j`` of an ``L``-bit code, for arrays of ``2**log_b`` bits."""
    if log_b >= L:
        return int(code)
    # splitmix64 finaliser of (code, j): codes that differ in one bit land far
    # apart, and array j's addresses are independent of array k's.
    z = code + np.uint64(j + 1) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return int(z >> np.uint64(64 - log_b))


@_kernel("int64[:, :](float32[:, :], int64, int64, int64)")
def dsbf_addresses(proj: Any, m: int, L: int, log_b: int) -> Any:
    """Addresses of every row in every array.

    Parameters
    ----------
    proj : ndarray of float32, shape (n, m * L)
        Projected rows.
    m, L, log_b : int
        Arrays, bits per code, log2 of an array's size in bits.

    Returns
    -------
    ndarray of int64, shape (n, m)
    """
    n = proj.shape[0]
    out = np.empty((n, m), dtype=np.int64)
    for i in range(n):
        for j in range(m):
            code = np.uint64(0)
            base = j * L
            for b in range(L):
                if proj[i, base + b] >= 0.0:
                    code |= np.uint64(1) << np.uint64(b)
            out[i, j] = address_of(code, j, L, log_b)
    return out


@_kernel("void(int64[:, :], uint64[:, :])")
def dsbf_set_bits(addr: Any, words: Any) -> None:
    """Set the bits of ``addr`` (n, m) in the packed arrays ``words`` (m, 2**log_b / 64)."""
    n, m = addr.shape
    for i in range(n):
        for j in range(m):
            a = addr[i, j]
            words[j, a >> 6] |= np.uint64(1) << np.uint64(a & 63)


@_kernel("void(int64[:, :], uint8[:, :])")
def dsbf_count_add(addr: Any, counts: Any) -> None:
    """Add one to the counters of ``addr`` (n, m); a counter at 255 sticks there."""
    n, m = addr.shape
    for i in range(n):
        for j in range(m):
            a = addr[i, j]
            c = counts[j, a]
            if c < 255:
                counts[j, a] = c + 1


@_kernel("int64(int64[:, :], uint8[:, :])")
def dsbf_count_remove(addr: Any, counts: Any) -> int:
    """Take one from the counters of ``addr`` (n, m).

    A stuck counter (255) is left alone: it may hold more entries than it
    counts, and clearing it could hide one (a false negative). Returns the
    number of counters found at zero, which means the caller removed a
    vector it never added; they stay at zero.
    """
    n, m = addr.shape
    bad = 0
    for i in range(n):
        for j in range(m):
            a = addr[i, j]
            c = counts[j, a]
            if c == 0:
                bad += 1
            elif c < 255:
                counts[j, a] = c - 1
    return bad


@_kernel("void(float32[:, :], int64, int64, int64, int64, uint64[:, :], int32[:])")
def dsbf_score_bits(proj: Any, m: int, L: int, log_b: int, probes: int, words: Any, out: Any) -> None:
    """Per row, the number of arrays whose bit (or one of its probes) is set.

    With ``probes = k > 0`` an array also counts when the code with one of
    the row's ``k`` least certain signs (smallest ``|projection|``) flipped is
    set: a near vector's code most often differs exactly there.

    Parameters
    ----------
    proj : ndarray of float32, shape (n, m * L)
    m, L, log_b, probes : int
    words : ndarray of uint64, shape (m, 2**log_b // 64)
    out : ndarray of int32, shape (n,)
        Receives the scores, in [0, m].
    """
    n = proj.shape[0]
    mag = np.empty(L, dtype=np.float32)
    for i in range(n):
        score = 0
        for j in range(m):
            code = np.uint64(0)
            base = j * L
            for b in range(L):
                v = proj[i, base + b]
                mag[b] = abs(v)
                if v >= 0.0:
                    code |= np.uint64(1) << np.uint64(b)
            a = address_of(code, j, L, log_b)
            hit = (words[j, a >> 6] >> np.uint64(a & 63)) & np.uint64(1)
            if hit == 0 and probes > 0:
                order = np.argsort(mag)
                for p in range(min(probes, L)):
                    flipped = code ^ (np.uint64(1) << np.uint64(order[p]))
                    a = address_of(flipped, j, L, log_b)
                    if (words[j, a >> 6] >> np.uint64(a & 63)) & np.uint64(1):
                        hit = np.uint64(1)
                        break
            if hit:
                score += 1
        out[i] = score


@_kernel("void(float32[:, :], int64, int64, int64, int64, uint8[:, :], int64, int32[:])")
def dsbf_score_counts(
    proj: Any, m: int, L: int, log_b: int, probes: int, counts: Any, own: int, out: Any
) -> None:
    """:func:`dsbf_score_bits` over counters (a counter above zero is a set bit).

    ``own = 1`` scores rows that are themselves in the counters *without*
    their own contribution (leave-one-out: the row's own address counts only
    when its counter is above one), which is how calibration asks "would this
    stored vector's near neighbour have been let through by everything else?".
    ``own = 0`` is a plain query.
    """
    n = proj.shape[0]
    mag = np.empty(L, dtype=np.float32)
    for i in range(n):
        score = 0
        for j in range(m):
            code = np.uint64(0)
            base = j * L
            for b in range(L):
                v = proj[i, base + b]
                mag[b] = abs(v)
                if v >= 0.0:
                    code |= np.uint64(1) << np.uint64(b)
            a = address_of(code, j, L, log_b)
            hit = counts[j, a] > own
            if not hit and probes > 0:
                order = np.argsort(mag)
                for p in range(min(probes, L)):
                    flipped = code ^ (np.uint64(1) << np.uint64(order[p]))
                    if counts[j, address_of(flipped, j, L, log_b)] > 0:
                        hit = True
                        break
            if hit:
                score += 1
        out[i] = score
