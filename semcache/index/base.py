"""The contract every index implements.

An index is a *candidate generator*: given a query it returns the ids of stored
entries that may have cosine similarity at or above a threshold with it. It may
return false candidates (the cache re-ranks every candidate by exact
full-dimension cosine before serving anything) but every candidate it misses is
a hit the cache loses, so approximate indexes are judged by recall against
:class:`~semcache.index.exact.ExactIndex`.

Indexes see two views of each entry:

``low``
    the entry's projected coordinates, shape ``(n, m)``, from the cache's
    projection (PCA, learned, or identity). Grid-like indexes hash these.
``full``
    the L2-normalised embedding, shape ``(n, d)``. Exact search uses it;
    approximate indexes may ignore it.

Ids are non-negative ``int64`` assigned by the cache; an index never invents them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from semcache._types import FloatArray, IdArray
from semcache.errors import IndexStateError

__all__ = ["Index", "as_ids", "check_batch"]


@runtime_checkable
class Index(Protocol):
    """Structural type of an index (see the module docstring for the contract)."""

    def add(self, ids: IdArray | int, low: FloatArray, full: FloatArray) -> None:
        """Insert entries.

        Parameters
        ----------
        ids : ndarray of int64, shape (n,), or int
            New, distinct ids not already in the index. An int is the id of
            a single row (n = 1), as a cache inserts after a miss.
        low : ndarray of float32, shape (n, m)
            Projected coordinates.
        full : ndarray of float32, shape (n, d)
            L2-normalised embeddings.
        """
        ...

    def remove(self, ids: IdArray) -> None:
        """Remove entries; ids that are not present are ignored."""
        ...

    def candidates(self, q_low: FloatArray, q_full: FloatArray, threshold: float) -> IdArray:
        """Ids of entries that may have ``cos(q_full, full) >= threshold``.

        Parameters
        ----------
        q_low : ndarray of float32, shape (m,)
        q_full : ndarray of float32, shape (d,)
            L2-normalised query embedding.
        threshold : float
            Cosine similarity in [-1, 1].

        Returns
        -------
        ndarray of int64, shape (k,)
            Candidate ids, in any order, no duplicates.
        """
        ...

    def __len__(self) -> int:
        """Number of entries held."""
        ...


def as_ids(ids: IdArray | int) -> IdArray:
    """``ids`` as a C-contiguous int64 array of shape (n,); an int is one id.

    Raises
    ------
    IndexStateError
        An id does not fit int64.
    """
    try:
        return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    except OverflowError as exc:
        raise IndexStateError(f"ids must fit int64: {exc}") from None


def check_batch(
    ids: IdArray | int, low: FloatArray, full: FloatArray
) -> tuple[IdArray, FloatArray, FloatArray]:
    """Validate and normalise the arguments of :meth:`Index.add`.

    Returns C-contiguous ``int64`` ids and ``float32`` arrays, so numba kernels
    can take them without copies.

    Raises
    ------
    IndexStateError
        Shapes disagree, arrays are not 1-D/2-D, ids repeat, or an id is
        negative or does not fit int64.
    """
    ids_a = as_ids(ids)
    if (ids_a < 0).any():
        raise IndexStateError("ids must be non-negative")
    low_a = np.ascontiguousarray(low, dtype=np.float32)
    full_a = np.ascontiguousarray(full, dtype=np.float32)
    if low_a.ndim != 2 or full_a.ndim != 2:
        raise IndexStateError(
            f"low and full must be 2-D, got shapes {low_a.shape} and {full_a.shape}"
        )
    if not (len(ids_a) == low_a.shape[0] == full_a.shape[0]):
        raise IndexStateError(
            f"ids, low and full disagree on the number of rows: "
            f"{len(ids_a)}, {low_a.shape[0]}, {full_a.shape[0]}"
        )
    if len(np.unique(ids_a)) != len(ids_a):
        raise IndexStateError("ids given to add() must be distinct")
    return ids_a, low_a, full_a
